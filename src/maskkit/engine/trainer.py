"""``fit(config)``: one training run, from data and model setup to the run folder's logs and checkpoints.

The pieces live in their own modules (data order, model/weights, optimiser/schedule, inner loops,
logging, checkpoints); this module wires them together, owns the epoch loop, validation cadence,
best/last checkpoints, early stopping and resuming.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maskkit.config import TrainConfig, save_config
from maskkit.data.dataset import InstanceDataset
from maskkit.engine import run_state
from maskkit.engine.adversarial import adversarial_training
from maskkit.engine.data import (
    RUN_IMAGES,
    EpochBatchSampler,
    TrainData,
    load_train_data,
    make_loader,
    split_record,
    steps_per_epoch,
)
from maskkit.engine.distributed import DistInfo, barrier, broadcast_object, cleanup, init_distributed
from maskkit.engine.ema import ModelEMA
from maskkit.engine.logging import EpochProgress, RunLogger, plot_curves
from maskkit.engine.loop import EpochState, StepContext, metric_value, train_epoch, unwrap
from maskkit.engine.schedule import build_optimizer, build_scheduler, lr_factor
from maskkit.engine.sync_batchnorm import sync_batchnorm
from maskkit.engine.validation import SUMMARY_METRICS, apply_tuning, evaluate, validation_loss
from maskkit.errors import ConfigError
from maskkit.fileio import atomic_write_json
from maskkit.models import model_info
from maskkit.models.checkpoint import load_checkpoint, save_checkpoint
from maskkit.models.factory import build_model, load_weights, resolve_device, uses_semantic_targets

log = logging.getLogger("maskkit.train")


@dataclass
class TrainResult:
    """What a run produced (``maskkit.train`` returns it)."""

    out: Path
    last: Path
    best: Path | None
    metrics: dict[str, Any]
    """The last validation's ``metrics.json`` dict (empty without validation)."""
    best_metric: float | None
    best_epoch: int | None
    epochs: int
    steps: int
    stopped_early: bool = False
    bad_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Best:
    value: float | None = None
    epoch: int | None = None
    stale: int = 0

    def update(self, value: float | None, epoch: int) -> bool:
        if value is not None and (self.value is None or value > self.value):
            self.value, self.epoch, self.stale = value, epoch, 0
            return True
        self.stale += 1
        return False


def validation_metric(cfg: TrainConfig) -> str:
    """The metric picking ``best.pt``: the configured one, else mIoU for semantic models and mask AP otherwise."""
    if cfg.schedule.metric:
        return cfg.schedule.metric
    return "semantic.miou" if model_info(cfg.model.name).task == "semantic" else "segm.AP"


def seed_everything(seed: int, deterministic: bool, threads: int | None) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resume_path(path: str | Path) -> Path:
    """``last.pt`` of a run folder, or the checkpoint file itself."""
    path = Path(path)
    return path / "last.pt" if path.is_dir() else path


def _write_run_files(out: Path, cfg: TrainConfig, data: TrainData) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    atomic_write_json(out / "classes.json", {"names": data.class_names, "category_ids": data.category_ids}, indent=2)
    atomic_write_json(out / "versions.json", {"versions": run_state.package_versions(), "git": run_state.git_commit()},
                      indent=2)
    if data.skipped:
        log.warning("skipped %d image(s) that fail to decode (data.skip_bad_images), e.g. %s; list in %s",
                    len(data.skipped), data.skipped[0], out / "skipped_images.json")
        atomic_write_json(out / "skipped_images.json", {"count": len(data.skipped), "images": data.skipped}, indent=2)
    atomic_write_json(out / RUN_IMAGES, split_record(data, cfg), indent=2)


class _Checkpointer:
    """Builds checkpoint dicts of the live objects and writes ``last.pt``/``best.pt`` (rank 0 only)."""

    def __init__(self, out: Path, cfg: TrainConfig, data: TrainData, ctx: StepContext, dinfo: DistInfo) -> None:
        self.out, self.ctx, self.dinfo = out, ctx, dinfo
        self.meta = {"config": cfg.model_dump(mode="json"), "class_names": data.class_names,
                     "category_ids": data.category_ids, "versions": run_state.package_versions(),
                     "git": run_state.git_commit()}

    def state(self, st: EpochState, best: _Best, summary: dict[str, Any]) -> dict[str, Any]:
        c = self.ctx
        return {
            "model": unwrap(c.model).state_dict(),
            "optimizer": c.optimizer.state_dict(),
            "scheduler": c.scheduler.state_dict(),
            "scaler": c.scaler.state_dict() if c.scaler is not None else None,
            "ema": c.ema.state_dict() if c.ema is not None else None,
            "semi": c.semi.state_dict() if c.semi is not None else None,
            "rng": run_state.rng_state(),
            "epoch": st.epoch, "batch": st.batch, "step": st.step, "bad_steps": st.bad_steps,
            "sums": dict(st.sums),
            "best": {"value": best.value, "epoch": best.epoch, "stale": best.stale},
            "metrics": summary,
            **self.meta,
        }

    def save(self, st: EpochState, best: _Best, summary: dict[str, Any], is_best: bool = False) -> None:
        if not self.dinfo.is_main:
            return
        state = self.state(st, best, summary)
        save_checkpoint(self.out / "last.pt", state)
        if is_best:
            save_checkpoint(self.out / "best.pt", state)


def _restore(ckpt: dict[str, Any], ctx: StepContext, st: EpochState, best: _Best) -> None:
    unwrap(ctx.model).load_state_dict(ckpt["model"])
    ctx.optimizer.load_state_dict(ckpt["optimizer"])
    ctx.scheduler.load_state_dict(ckpt["scheduler"])
    if ctx.scaler is not None and ckpt.get("scaler"):
        ctx.scaler.load_state_dict(ckpt["scaler"])
    if ctx.ema is not None and ckpt.get("ema"):
        ctx.ema.load_state_dict(ckpt["ema"])
    if ctx.semi is not None and ckpt.get("semi"):
        ctx.semi.load_state_dict(ckpt["semi"], unwrap(ctx.model))
    st.epoch, st.batch, st.step = int(ckpt["epoch"]), int(ckpt["batch"]), int(ckpt["step"])
    st.bad_steps, st.sums = int(ckpt.get("bad_steps", 0)), dict(ckpt.get("sums", {}))
    b = ckpt.get("best") or {}
    best.value, best.epoch, best.stale = b.get("value"), b.get("epoch"), int(b.get("stale", 0))


class _Budget:
    """The wall-clock budget of ``schedule.max_minutes`` (``seconds`` None: unlimited)."""

    def __init__(self, minutes: float | None, shared: bool = False) -> None:
        self.seconds = minutes * 60.0 if minutes else None
        self.start = time.monotonic()
        self.shared: float | None = 0.0 if shared else None
        """Under DDP the LR schedule reads rank 0's elapsed share as of the last epoch end (see ``share``), so
        every replica takes the same optimiser steps."""

    def elapsed(self) -> float:
        """This process's elapsed share of the budget."""
        return 0.0 if self.seconds is None else (time.monotonic() - self.start) / self.seconds

    def fraction(self) -> float:
        """The elapsed share the LR schedule uses."""
        return self.elapsed() if self.shared is None else self.shared

    def share(self, dinfo: DistInfo) -> None:
        """Adopt rank 0's elapsed share (a collective: every rank calls it at the same point)."""
        if self.shared is not None:
            self.shared = float(broadcast_object(self.elapsed(), dinfo))

    def over(self) -> bool:
        return self.seconds is not None and self.elapsed() >= 1.0

    def until(self, batches: Any) -> Any:
        """The batches until the step that crosses the budget (that step still runs)."""
        for batch in batches:
            yield batch
            if self.over():
                return


def _build_context(cfg: TrainConfig, model: nn.Module, device: torch.device, total_steps: int,
                   budget: _Budget | None = None) -> StepContext:
    optimizer = build_optimizer(model, cfg.optim)
    if budget is not None and budget.seconds is not None:
        # Progress is the larger of steps and elapsed time, so the schedule decays by the deadline.
        factor = lr_factor(cfg.optim, total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: factor(max(s, int(budget.fraction() * total_steps))))
    else:
        scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    amp = cfg.optim.amp and device.type == "cuda"
    return StepContext(
        model=model, optimizer=optimizer, scheduler=scheduler,
        device=device, loss_weights=dict(cfg.loss_weights), grad_clip=cfg.optim.grad_clip,
        max_bad_steps=cfg.optim.max_bad_steps, scaler=torch.amp.GradScaler("cuda") if amp else None,
        ema=ModelEMA(model, cfg.optim.ema_decay) if cfg.optim.ema else None, amp=amp,
        adversarial=adversarial_training(cfg),
    )


ValidationHook = Callable[[int, dict[str, Any]], bool]
"""``on_validation(epoch, metrics) -> stop``: called on rank 0 after each validation (``epoch`` 0-based, as in
``results.csv``) with the metrics the run's choices are made on (``tune.split``); a true return ends the run
after that epoch is saved, like early stopping (a hyperparameter search prunes trials through it)."""


def fit(cfg: TrainConfig, resume: str | Path | None = None, on_validation: ValidationHook | None = None) -> TrainResult:
    """Train ``cfg`` (or continue the run whose ``last.pt``/folder is ``resume``); see the module docstring."""
    ckpt = load_checkpoint(resume_path(resume)) if resume is not None else None
    device = resolve_device(cfg.device)
    dinfo = init_distributed(device)
    seed_everything(cfg.seed, cfg.deterministic, cfg.threads)
    out = Path(cfg.output.out)
    data = load_train_data(cfg)
    if ckpt is not None and list(ckpt["category_ids"]) != data.category_ids:
        raise ConfigError(f"cannot resume: the checkpoint's categories {ckpt['category_ids']} differ from the "
                          f"data's {data.category_ids}")
    model = build_model(cfg, len(data.categories))
    if cfg.model.weights and ckpt is None:
        report = load_weights(model, cfg.model.weights)
        log.info("weights %s: %s", cfg.model.weights, report.summary())
    model.to(device)
    if dinfo.enabled and cfg.sync_batchnorm:
        model = sync_batchnorm(model, device)

    semantic = uses_semantic_targets(cfg)
    metric_key = validation_metric(cfg)
    train_ds = InstanceDataset.from_config(data.train, cfg.augment, train=True, semantic=semantic)
    bs = cfg.data.batch_size
    per_epoch = steps_per_epoch(len(train_ds), bs, dinfo.world_size)
    budget = _Budget(cfg.schedule.max_minutes, shared=dinfo.enabled)
    ctx = _build_context(cfg, model, device, per_epoch * cfg.schedule.epochs, budget)
    if data.unlabeled is not None:
        if dinfo.enabled:
            raise ConfigError("semi-supervised training (data.unlabeled) runs in one process, not distributed")
        from maskkit.engine.semisup import SemiSupervised

        ctx.semi = SemiSupervised(cfg, data.unlabeled, data.class_names, device)
    st, best = EpochState(), _Best()
    if ckpt is not None:
        _restore(ckpt, ctx, st, best)
        log.info("resuming %s at epoch %d, batch %d (step %d)", resume, st.epoch + 1, st.batch, st.step)
    if dinfo.enabled:
        ctx.model = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    if ckpt is None and dinfo.enabled:
        torch.manual_seed(cfg.seed + dinfo.rank)  # different augmentations per rank
    if ckpt is not None:
        run_state.set_rng_state(ckpt["rng"])

    logger = None
    if dinfo.is_main:
        _write_run_files(out, cfg, data)
        logger = RunLogger(out, cfg.output.tensorboard, purge_step=st.step + 1 if ckpt is not None else None)
        if ckpt is not None:
            logger.truncate(st.step, st.epoch)
        log.info("training %s on %d images (%d val, %s%s%s), %d classes, %d steps/epoch, device %s",
                 cfg.model.name, len(data.train), len(data.val) if data.val else 0, data.val_source,
                 f"; {len(data.tune)} held back to tune and choose on" if data.tune else "",
                 f"; {len(data.unlabeled)} unlabeled" if data.unlabeled else "",
                 len(data.categories), per_epoch, device)
    saver = _Checkpointer(out, cfg, data, ctx, dinfo)
    val = _Validation(cfg, data, device, dinfo, semantic) if data.val or data.tune else None
    metrics: dict[str, Any] = {}
    summary: dict[str, Any] = dict(ckpt.get("metrics") or {}) if ckpt is not None else {}
    stopped = False
    every = cfg.schedule.save_every_steps

    def on_step(row: dict[str, Any]) -> None:
        if logger is not None:
            logger.log_step(row)
        progress.update(row)
        if every and st.step % every == 0:
            saver.save(st, best, summary)

    epochs = cfg.schedule.epochs
    while st.epoch < epochs and not stopped:
        t0 = time.perf_counter()
        sampler = EpochBatchSampler(len(train_ds), bs, cfg.seed, st.epoch, st.batch, dinfo.rank, dinfo.world_size)
        loader = make_loader(train_ds, sampler, cfg.data.workers, cfg.seed + st.epoch)
        with EpochProgress(cfg.output.progress and dinfo.is_main, st.epoch, epochs, per_epoch, st.batch) as progress:
            train_epoch(ctx, loader if dinfo.enabled else budget.until(loader), st, on_step)
        out_of_time = broadcast_object(budget.over(), dinfo)
        budget.share(dinfo)
        # A budget that cuts the epoch short leaves it unfinished in last.pt: a resume with a larger budget
        # continues it from the next batch instead of skipping the rest.
        cut_short = out_of_time and st.batch < len(sampler.batches)
        n = max(st.sums.get("n", 0.0), 1.0)
        row: dict[str, Any] = {"epoch": st.epoch, "step": st.step, "lr": ctx.optimizer.param_groups[0]["lr"]}
        row.update({f"train/{k}": v / n for k, v in st.sums.items() if k != "n"})
        is_best = requested_stop = False
        last_epoch = st.epoch + 1 == epochs or out_of_time
        if val is not None and ((st.epoch + 1) % cfg.schedule.val_every == 0 or last_epoch):
            eval_model = ctx.ema.module if ctx.ema is not None else unwrap(ctx.model)
            models = [unwrap(ctx.model), ctx.ema.module if ctx.ema is not None else None]
            metrics, val_row, chosen_on = val.run(eval_model, models, ctx.loss_weights)
            grid = (metrics.get("tuning") or {}).pop("grid", None)
            if dinfo.is_main:
                atomic_write_json(out / "metrics.json", metrics, indent=2)
                if grid and logger is not None:
                    logger.log_tuning(grid, st.epoch, st.step, val.choice_split)
            row.update(val_row)
            summary = {k: val_row[k] for k in SUMMARY_METRICS if k in val_row}
            value = broadcast_object(metric_value(chosen_on, metric_key), dinfo)
            is_best = best.update(value, st.epoch)
            if on_validation is not None:
                requested_stop = broadcast_object(bool(on_validation(st.epoch, chosen_on)) if dinfo.is_main
                                                  else False, dinfo)
            shown = ("val/loss", "segm.AP", "bbox.AP", "semantic.", "train_slice/segm.AP")
            log.info("epoch %d/%d: %s", st.epoch + 1, epochs, ", ".join(
                f"{k}={v:.4f}" for k, v in row.items() if k.startswith(shown) and isinstance(v, float)
                and "/loss_" not in k))
        row["time"] = round(time.perf_counter() - t0, 3)
        if logger is not None:
            logger.log_epoch(row)
        if not cut_short:
            st.epoch, st.batch, st.sums = st.epoch + 1, 0, {}
        saver.save(st, best, summary, is_best=is_best)
        stopped = bool(cfg.schedule.patience is not None and best.stale >= cfg.schedule.patience
                       and st.epoch < epochs)
        stopped = broadcast_object(stopped, dinfo)
        if stopped and dinfo.is_main:
            log.info("early stopping: %s did not improve for %d epochs (best %.4f at epoch %d)",
                     cfg.schedule.metric, best.stale, best.value or float("nan"), (best.epoch or 0) + 1)
        if requested_stop and st.epoch < epochs and not stopped:
            stopped = True
            if dinfo.is_main:
                log.info("stopped after epoch %d by the on_validation callback", st.epoch)
        if out_of_time and (cut_short or st.epoch < epochs):
            stopped = True
            if dinfo.is_main:
                log.info("time budget of %g minutes reached after %d steps: stopping", cfg.schedule.max_minutes,
                         st.step)
    barrier(dinfo)
    if dinfo.enabled:
        _write_rank_checksum(out, unwrap(ctx.model), dinfo)
    history: list[dict[str, Any]] = []
    if logger is not None:
        history = logger.results
        logger.close()
        if cfg.output.plots:
            plot_curves(out / "results.csv", out)
    cleanup(dinfo)
    best_path = out / "best.pt"
    return TrainResult(out=out, last=out / "last.pt", best=best_path if best_path.is_file() else None,
                       metrics=metrics, best_metric=best.value, best_epoch=best.epoch, epochs=st.epoch,
                       steps=st.step, stopped_early=stopped, bad_steps=st.bad_steps, history=history)


def _write_rank_checksum(out: Path, model: nn.Module, dinfo: DistInfo) -> None:
    """``ranks/rank<N>.json``: a checksum of this rank's parameters (replicas must agree)."""
    with torch.no_grad():
        total = sum(float(p.double().sum()) for p in model.parameters())
        sq = sum(float(p.double().pow(2).sum()) for p in model.parameters())
    atomic_write_json(out / "ranks" / f"rank{dinfo.rank}.json", {"rank": dinfo.rank, "sum": total, "sumsq": sq})


class _Validator:
    """Val loss (train mode, BatchNorm frozen, no grad) and metrics (eval mode) of one image set, each rank on
    its share."""

    def __init__(self, cfg: TrainConfig, aset: Any, categories: list[Any], device: torch.device, dinfo: DistInfo,
                 semantic: bool, name: str) -> None:
        self.cfg, self.categories, self.device, self.dinfo, self.name = cfg, categories, device, dinfo, name
        self.records = {r.id: r for r in aset.images}
        self.loss_ds = InstanceDataset.from_config(aset, cfg.augment, train=False, semantic=semantic)
        self.eval_ds = InstanceDataset(aset, None, semantic=semantic, **cfg.augment.image_options())
        self.bs = cfg.data.val_batch_size or cfg.data.batch_size

    def _loader(self, ds: Any) -> Any:
        d = self.dinfo
        sampler = EpochBatchSampler(len(ds), self.bs, 0, 0, shuffle=False, rank=d.rank, world_size=d.world_size,
                                    drop_uneven=False)
        return make_loader(ds, sampler, self.cfg.data.workers, 0)

    def run(self, model: nn.Module, weights: dict[str, float], tune: bool,
            loss: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(metrics.json dict, results row)``; both empty on ranks other than 0."""
        row: dict[str, Any] = {}
        if loss and self.cfg.schedule.val_loss:
            losses = validation_loss(model, self._loader(self.loss_ds), self.device, weights, self.dinfo)
            row.update({f"val/{k}": v for k, v in losses.items()})
        metrics = evaluate(model, self._loader(self.eval_ds), self.records, self.categories, self.device,
                           self.cfg.schedule.max_dets, self.dinfo, tune=tune, split=self.name)
        for key in SUMMARY_METRICS:
            v = metric_value(metrics, key)
            if v is not None:
                row[key] = v
        return metrics, row


class _Validation:
    """One validation: the choices (thresholds, the ``best.pt`` metric) on the tuning slice when the run holds
    one back (``tune.split: train_slice``), else on val; then the val metrics, with the chosen thresholds."""

    def __init__(self, cfg: TrainConfig, data: TrainData, device: torch.device, dinfo: DistInfo,
                 semantic: bool) -> None:
        def make(aset: Any, name: str) -> _Validator | None:
            return _Validator(cfg, aset, data.categories, device, dinfo, semantic, name) if aset else None

        self.dinfo, self.tune_thresholds = dinfo, cfg.schedule.tune_thresholds
        self.val, self.slice = make(data.val, "val"), make(data.tune, "train_slice")
        self.choice_split = "train_slice" if self.slice is not None else "val"

    def run(self, model: nn.Module, models: list[nn.Module | None],
            weights: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """``(metrics.json dict, results row, the metrics the choices are made on)`` (empty off rank 0)."""
        if self.slice is None:
            assert self.val is not None
            metrics, row = self.val.run(model, weights, tune=self.tune_thresholds, loss=True)
            apply_tuning(models, metrics, self.dinfo)
            return metrics, row, metrics
        chosen_on, slice_row = self.slice.run(model, weights, tune=self.tune_thresholds, loss=False)
        apply_tuning(models, chosen_on, self.dinfo)
        row = {f"train_slice/{k}": v for k, v in slice_row.items()}
        if self.val is None:
            return chosen_on, row, chosen_on
        metrics, val_row = self.val.run(model, weights, tune=False, loss=True)
        if self.dinfo.is_main:
            if "tuning" in chosen_on:
                metrics["tuning"] = {**chosen_on["tuning"], "split": "train_slice"}
            metrics["train_slice"] = dict(slice_row)
        return metrics, {**val_row, **row}, chosen_on
