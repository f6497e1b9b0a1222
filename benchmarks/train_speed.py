"""Training-loop overhead on CPU: images/s of ``maskkit.train`` against a plain torchvision loop.

Both sides train the same model (same initial state dict), on the same images in the same order
(maskkit's ``InstanceDataset`` with the same transforms, so only the loop differs), with the same
batch size, image size, optimiser (AdamW, maskkit's param groups and per-step LR schedule) and
``torch.set_num_threads(--threads)``:

* **A, engine**: ``maskkit.train(config)`` with validation off (``data.val_fraction=0``, the source has
  no val split), no gradient clipping and no ``curves.png`` (extras a plain loop does not do), but
  everything else as shipped: ``steps.csv`` row and TensorBoard scalars every step, the rich progress
  bar (rendered as on a terminal: ``TTY_COMPATIBLE=1``, into /dev/null), deterministic algorithms,
  run files and checkpoints. ``steps.csv`` has no timestamps, so the benchmark wraps the engine's
  per-step ``RunLogger.log_step`` and ``EpochProgress.update`` calls: the time (wall and process CPU)
  after the progress update is the end of the step, and the time inside both is its logging cost.
* **B, plain**: ``DataLoader`` over the same dataset, ``model.train()``, ``loss = sum(loss_dict.values())``,
  ``zero_grad``/``backward``/``step``/``scheduler.step()``, a timestamp after each step.

All runs share one process (no import cost per run); between runs B resets what an engine run
changes globally (``torch.use_deterministic_algorithms``, threads, seed). Speed = images of steps
``warmup+1 .. warmup+steps`` / the time between the end of step ``warmup`` and the end of step
``warmup+steps`` (setup, the first steps and the engine's epoch-end work are outside the window
unless ``steps`` spans several epochs); the same window in process CPU seconds gives a second
measure that other processes on the machine disturb less. Runs are interleaved (AB, BA, AB, ...)
and the median over ``--repeats`` is reported. ``overhead = (B - A) / B``.

Data: ``--data`` (dataset YAML or any source), else the shared DSB 2018 nuclei subset when present,
else ``maskkit.data.synth.write_synthetic``. The first ``(warmup+steps)*batch`` images (by file
name) are written once as COCO to a temporary folder that both sides read.

Run: ``python benchmarks/train_speed.py [--model maskrcnn_effl0_fpn --model maskrcnn_r18_fpn]
[--steps 10] [--warmup 3] [--batch 2] [--imgsz 384] [--repeats 3] [--data PATH] [--set key=value]``.

``--compare`` and ``--levers`` measure the models instead of the loop (:mod:`train_compare`): plain torchvision
Mask R-CNN vs maskkit default vs maskkit fast (the recipe's ``model.speed`` levers), images/s and the loss and
val mask AP after the same number of steps (``--steps``, default 200); and each speed lever's CPU time per step
(``--levers``, default 4 steps x 2 repeats):
``python benchmarks/train_speed.py --compare [--config configs/dsb2018.yaml] [--steps 200] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

DSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018-stage1-train-subset" / "stage1_train"
DEFAULT_MODELS = ("maskrcnn_effl0_fpn", "maskrcnn_r18_fpn")
QUICK_SET = ("model.freeze_backbone=true", "model.options.box_batch_size_per_image=32",
             "model.options.rpn_pre_nms_top_n_train=200", "model.options.rpn_post_nms_top_n_train=100",
             "output.tensorboard=false")
"""``--quick``: small heads, a frozen backbone (small optimiser state and checkpoint), no TensorBoard import."""
OFFLINE_BACKBONES = ("maskrcnn_effl0_fpn",)
"""Models whose ImageNet backbone loads offline (the others start from random weights)."""


def _train_compare() -> Any:
    """The sibling ``benchmarks/train_compare.py``, loaded by path (this script also runs as a loaded module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_compare", Path(__file__).with_name("train_compare.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_compare", module)
    spec.loader.exec_module(module)
    return module


# -- shared setup ------------------------------------------------------------------------------
def base_config(spec: dict[str, Any]) -> Any:
    """The run's ``TrainConfig`` (both sides take model, augment, optim, batch size and seed from it)."""
    from maskkit.config import load_config

    overrides: dict[str, Any] = {
        "model.name": spec["model"], "model.pretrained_backbone": False, "model.weights": spec["init"],
        "data.path": spec["data"], "data.val_fraction": 0.0, "data.batch_size": spec["batch"], "data.workers": 0,
        "augment.min_size": [spec["imgsz"]], "augment.max_size": spec["imgsz"] * 2, "augment.channels": 3,
        "schedule.epochs": spec["epochs"], "output.out": spec["out"], "output.plots": False, "device": "cpu",
        "threads": spec["threads"], "seed": 0,
    }
    cfg = load_config(None, {**overrides, **spec["set"]})
    if "optim.grad_clip" not in spec["set"]:
        cfg.optim.grad_clip = None  # a plain loop does not clip (load_config skips None values)
    return cfg


def prepare_data(args: argparse.Namespace, work: Path) -> tuple[Path, str, int]:
    """Write the benchmark's images as COCO under ``work``; returns (folder, description, image count)."""
    from maskkit.data.formats.base import write_annotations
    from maskkit.data.splits import load_dataset

    need = (args.warmup + args.steps) * args.batch
    if args.data:
        src, what = Path(args.data), str(args.data)
    elif DSB.is_dir() and not args.synthetic:
        src, what = DSB, "DSB 2018 nuclei subset (shared)"
    else:
        from maskkit.data.synth import write_synthetic

        size = max(args.imgsz, 32)
        src, what = work / "synth", f"synthetic (write_synthetic, {size}x{size})"
        write_synthetic(src, images=need, size=size, seed=0, workers=1)
    aset = load_dataset(src).splits["train"]
    records = sorted(aset.images, key=lambda r: r.file_name)[:need]
    records = records[: max(len(records) // args.batch, 1) * args.batch]  # whole batches in every epoch
    out = work / "data"
    write_annotations(replace(aset, images=records), out, "coco")
    return out, what, len(records)


def save_initial_weights(spec: dict[str, Any]) -> None:
    """One state dict per model, loaded by both sides."""
    import torch

    from maskkit.engine.data import load_train_data
    from maskkit.fileio import atomic_write_bytes
    from maskkit.models.factory import build_model

    cfg = base_config({**spec, "init": None})
    torch.manual_seed(0)
    model = build_model(cfg, len(load_train_data(cfg).categories), pretrained=spec["model"] in OFFLINE_BACKBONES)

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write_bytes(spec["init"], buf.getvalue())


# -- the two sides ----------------------------------------------------------------------------------------
_CLOCK: dict[str, list[Any]] = {"stamps": [], "logging": []}


def _install_step_clock() -> None:
    """Note the time after each engine step's logging (``steps.csv`` row, TensorBoard, progress bar).

    ``on_step`` calls ``RunLogger.log_step`` then ``EpochProgress.update``: the end of ``update`` is the
    end of the step. Also sums the time spent inside both calls.
    """
    from maskkit.engine import logging as run_logging

    if getattr(run_logging.EpochProgress.update, "_clocked", False):
        return

    def timed(fn: Any, stamp: bool) -> Any:
        def wrapper(self: Any, row: Any) -> None:
            t = time.perf_counter()
            fn(self, row)
            _CLOCK["logging"].append(time.perf_counter() - t)
            if stamp:
                _CLOCK["stamps"].append((time.perf_counter(), time.process_time()))

        wrapper._clocked = True  # type: ignore[attr-defined]
        return wrapper

    run_logging.RunLogger.log_step = timed(run_logging.RunLogger.log_step, False)  # type: ignore[method-assign]
    run_logging.EpochProgress.update = timed(run_logging.EpochProgress.update, True)  # type: ignore[method-assign]


@contextlib.contextmanager
def _terminal() -> Any:
    """Rich renders as on a terminal (live refresh), into /dev/null."""
    env = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "120"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_engine(spec: dict[str, Any]) -> dict[str, Any]:
    """Side A: ``maskkit.train``."""
    import torch

    import maskkit

    _install_step_clock()
    _CLOCK["stamps"], _CLOCK["logging"] = [], []
    torch.set_num_threads(spec["threads"])
    cfg = base_config(spec)
    with _terminal():
        t0 = time.perf_counter()
        result = maskkit.train(cfg)
        wall = time.perf_counter() - t0
    return {"stamps": [(w - t0, c) for w, c in _CLOCK["stamps"]], "wall": wall, "bad_steps": result.bad_steps,
            "logging": list(_CLOCK["logging"])}


def _plain_setup(spec: dict[str, Any]) -> Any:
    """Dataset, loader (the engine's order), model with the initial weights, optimiser and schedule."""
    from types import SimpleNamespace

    import torch
    from torch.utils.data import DataLoader

    from maskkit.data.dataset import InstanceDataset, collate_fn
    from maskkit.engine.data import load_train_data
    from maskkit.engine.schedule import build_optimizer, build_scheduler
    from maskkit.models.factory import build_model

    torch.use_deterministic_algorithms(False)  # torch's default (an engine run before set it)
    torch.set_num_threads(spec["threads"])
    cfg = base_config(spec)
    torch.manual_seed(cfg.seed)
    data = load_train_data(cfg)
    dataset = InstanceDataset.from_config(data.train, cfg.augment, train=True)
    model = build_model(cfg, len(data.categories), pretrained=False)
    model.load_state_dict(torch.load(spec["init"], weights_only=True))
    total = spec["warmup"] + spec["steps"]
    # The engine's order: a permutation seeded with seed + epoch per epoch.
    order = [i for e in range(spec["epochs"])
             for i in torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.seed + e)).tolist()]
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, sampler=order, collate_fn=collate_fn)
    optimizer = build_optimizer(model, cfg.optim)
    return SimpleNamespace(cfg=cfg, model=model, loader=loader, optimizer=optimizer, total=total,
                           scheduler=build_scheduler(optimizer, cfg.optim, total), device=torch.device("cpu"))


def _plain_step(b: Any, images: list[Any], targets: list[dict[str, Any]]) -> None:
    """One step of the plain loop."""
    import torch

    images = [im.to(b.device) for im in images]
    targets = [{k: v.to(b.device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    loss_dict = b.model(images, targets)
    loss = sum(loss_dict.values())
    b.optimizer.zero_grad()
    loss.backward()
    b.optimizer.step()
    b.scheduler.step()


def run_plain(spec: dict[str, Any]) -> dict[str, Any]:
    """Side B: the loop a torchvision user writes, over the same dataset, model and optimiser."""
    t0 = time.perf_counter()
    b = _plain_setup(spec)
    stamps: list[tuple[float, float]] = []
    b.model.train()
    for images, targets in b.loader:
        _plain_step(b, images, targets)
        stamps.append((time.perf_counter() - t0, time.process_time()))
        if len(stamps) == b.total:
            break
    return {"stamps": stamps, "wall": time.perf_counter() - t0, "bad_steps": 0, "logging": []}


def run_paired(spec: dict[str, Any], work: Path) -> list[tuple[float, float, float, float]]:
    """``--paired``: the engine's inner loop and the plain step alternate on the same batches (ABBA).

    One model, optimiser and schedule; each batch is trained twice, once by ``maskkit.engine.loop.train_epoch``
    (the engine's step: deterministic mode as configured, ``steps.csv``/TensorBoard row, a progress bar
    opened for that step) and once by the plain step (deterministic mode off). Loading the batch is not
    timed. Returns ``(A wall, A CPU, B wall, B CPU)`` seconds per pair.
    """
    import torch

    from maskkit.engine.logging import EpochProgress, RunLogger
    from maskkit.engine.loop import EpochState, StepContext, train_epoch

    b = _plain_setup(spec)
    cfg = b.cfg
    ctx = StepContext(model=b.model, optimizer=b.optimizer, scheduler=b.scheduler, device=b.device,
                      loss_weights=dict(cfg.loss_weights), grad_clip=cfg.optim.grad_clip,
                      max_bad_steps=cfg.optim.max_bad_steps)
    out = work / "runs" / "paired"
    out.mkdir(parents=True, exist_ok=True)
    logger, state = RunLogger(out, cfg.output.tensorboard), EpochState()

    def engine_step(batch: Any) -> None:
        torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
        with _terminal(), EpochProgress(cfg.output.progress, 0, 1, b.total) as progress:
            def on_step(row: dict[str, Any]) -> None:
                logger.log_step(row)
                progress.update(row)

            train_epoch(ctx, [batch], state, on_step)

    def plain_step(batch: Any) -> None:
        torch.use_deterministic_algorithms(False)
        b.model.train()
        _plain_step(b, *batch)

    pairs = []
    for i, batch in enumerate(b.loader):
        if i == b.total:
            break
        times = {}
        for side in ("AB" if i % 2 == 0 else "BA"):
            w, c = time.perf_counter(), time.process_time()
            (engine_step if side == "A" else plain_step)(batch)
            times[side] = (time.perf_counter() - w, time.process_time() - c)
        if i >= spec["warmup"]:
            pairs.append((*times["A"], *times["B"]))
        print(f"  {spec['model']} pair {i + 1}/{b.total}{' (warm-up)' if i < spec['warmup'] else ''}: engine "
              f"{times['A'][0]:.2f} s ({times['A'][1]:.2f} CPU s), plain {times['B'][0]:.2f} s "
              f"({times['B'][1]:.2f} CPU s)", flush=True)
    logger.close()
    return pairs


def measure(side: str, spec: dict[str, Any], work: Path, tag: str) -> dict[str, float]:
    """One run of a side; speed over the timed window."""
    spec = {**spec, "out": str(work / "runs" / tag)}
    result = (run_engine if side == "A" else run_plain)(spec)
    shutil.rmtree(work / "runs" / tag, ignore_errors=True)
    gc.collect()
    s, w, n = result["stamps"], spec["warmup"], spec["steps"]
    if len(s) < w + n:
        sys.exit(f"{tag}: only {len(s)} steps ran, {w + n} needed")
    steps = [b[0] - a[0] for a, b in zip(s[w - 1 : w + n - 1], s[w : w + n], strict=True)]
    images = n * spec["batch"]
    return {"ips": images / (s[w + n - 1][0] - s[w - 1][0]),
            "cpu_per_image": (s[w + n - 1][1] - s[w - 1][1]) / images, "step": statistics.median(steps),
            "first": s[0][0], "after": result["wall"] - s[-1][0],
            "logging_ms": 1000 * sum(result["logging"]) / len(s), "bad_steps": result["bad_steps"]}


def parse_set(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--set wants key=value, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append",
                        help=f"model name, repeatable (default: {', '.join(DEFAULT_MODELS)})")
    parser.add_argument("--steps", type=int, help="timed steps per run (default 10; --compare 200, --levers 4)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them (>= 1)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--imgsz", type=int, default=384, help="training shortest edge (longest capped at 2x)")
    parser.add_argument("--repeats", type=int, help="A and B runs per model (interleaved; default 3, --levers 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads of both sides")
    parser.add_argument("--data", help="dataset YAML or source (default: shared DSB subset, else synthetic)")
    parser.add_argument("--synthetic", action="store_true", help="synthetic data even when the DSB subset exists")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: synthetic 64 px images, maskrcnn_r18_fpn, batch 1, 1+1 steps, 1 repeat")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override for both sides (engine-only fields affect A only)")
    parser.add_argument("--paired", action="store_true",
                        help="instead of whole runs: the engine's step and the plain step alternate on the same "
                             "batches in one model (warmup + steps pairs per model)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, data, weights)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--compare", action="store_true",
                      help="torchvision vs maskkit default vs maskkit fast: speed and val mask AP after --steps steps")
    mode.add_argument("--levers", action="store_true", help="CPU time per step of each model.speed lever")
    train_compare = _train_compare()
    train_compare.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.compare or args.levers:
        args.mode = "compare" if args.compare else "levers"
        args.steps = args.steps or (200 if args.compare else 4)
        args.repeats = args.repeats or 2
        args.warmup = args.warmup if args.warmup != 3 else 5
        train_compare.run(args)
        return
    args.steps, args.repeats = args.steps or 10, args.repeats or 3
    if args.quick:
        args.model, args.synthetic = args.model or ["maskrcnn_r18_fpn"], True
        args.steps, args.warmup, args.batch, args.imgsz, args.repeats = 1, 1, 1, 64, 1
        args.set = [*QUICK_SET, *args.set]
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    models = args.model or list(DEFAULT_MODELS)
    overrides = parse_set(args.set)
    work = Path(tempfile.mkdtemp(prefix="maskkit-train-speed-"))
    try:
        t = time.perf_counter()
        data, what, n_images = prepare_data(args, work)
        epochs = -(-(args.warmup + args.steps) * args.batch // n_images)
        print(f"data: {what}; {n_images} images -> {data} ({time.perf_counter() - t:.1f} s); "
              f"batch {args.batch}, imgsz {args.imgsz}, {args.warmup} warm-up + {args.steps} timed steps, "
              f"{args.threads} threads, {args.repeats} repeats, {epochs} epoch(s) per engine run")
        common = {"data": str(data), "batch": args.batch, "imgsz": args.imgsz, "epochs": epochs,
                  "threads": args.threads, "warmup": args.warmup, "steps": args.steps, "set": overrides,
                  "out": str(work / "runs" / "init")}
        specs = {m: {**common, "model": m, "init": str(work / f"{m}_init.pt")} for m in models}
        for spec in specs.values():
            save_initial_weights(spec)
        if args.paired:
            print_paired({m: run_paired(specs[m], work) for m in models}, args)
            return
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for r in range(args.repeats):
            for m in models:
                for side in ("AB" if r % 2 == 0 else "BA"):
                    res = measure(side, specs[m], work, f"{m}_{side}{r}")
                    results.setdefault((m, side), []).append(res)
                    print(f"  repeat {r + 1}/{args.repeats} {m} {'engine' if side == 'A' else 'plain '}: "
                          f"{res['ips']:.3f} images/s, {res['cpu_per_image']:.3f} CPU s/image "
                          f"(median step {res['step']:.3f} s)", flush=True)
        print_table(models, results, args)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def print_table(models: list[str], results: dict[tuple[str, str], list[dict[str, float]]],
                args: argparse.Namespace) -> None:
    def med(rs: list[dict[str, float]], key: str) -> float:
        return statistics.median(x[key] for x in rs)

    print()
    print("| model              | loop              | images/s (median) | min - max     | CPU s/image | step (s) "
          "| logging ms/step | to 1st step end (s) | after last step (s) | overhead (wall) | overhead (CPU) |")
    print("|--------------------|-------------------|-------------------|---------------|-------------|----------"
          "|-----------------|---------------------|---------------------|-----------------|----------------|")
    for m in models:
        a, b = results[(m, "A")], results[(m, "B")]
        for rs, name, is_a in ((b, "plain torchvision", False), (a, "maskkit.train", True)):
            ips = [x["ips"] for x in rs]
            over_wall = over_cpu = ""
            if is_a:
                over_wall = f"{100 * (med(b, 'ips') - med(a, 'ips')) / med(b, 'ips'):+.1f} %"
                ca, cb = med(a, "cpu_per_image"), med(b, "cpu_per_image")
                over_cpu = f"{100 * (ca - cb) / ca:+.1f} %"
            print(f"| {m:<18} | {name:<17} | {statistics.median(ips):17.3f} | {min(ips):5.3f} - {max(ips):5.3f} | "
                  f"{med(rs, 'cpu_per_image'):11.3f} | {med(rs, 'step'):8.3f} | "
                  f"{med(rs, 'logging_ms') if is_a else 0.0:15.2f} | {med(rs, 'first'):19.1f} | "
                  f"{med(rs, 'after'):19.1f} | {over_wall:>15} | {over_cpu:>14} |")
    bad = sum(x["bad_steps"] for rs in results.values() for x in rs)
    print(f"\noverhead (wall) = (plain - engine) / plain of the median images/s over {args.repeats} interleaved "
          f"repeats of {args.steps} timed steps (batch {args.batch}); overhead (CPU) = the same from process CPU "
          "seconds per image (speed = 1 / CPU s per image), less sensitive to other processes on the machine; "
          "positive = engine slower. logging ms/step = time inside the engine's steps.csv/TensorBoard row and "
          "progress-bar update per step. to 1st step end = setup (data, model, weights, run files) plus the first "
          "step; after last step = epoch end (engine: results.csv, last.pt, TensorBoard close)."
          + (f" WARNING: {bad} non-finite steps were skipped by the engine." if bad else ""))


def print_paired(pairs: dict[str, list[tuple[float, float, float, float]]], args: argparse.Namespace) -> None:
    """The ``--paired`` table: per-pair overhead ``(t_A - t_B) / t_A`` (= (speed_B - speed_A) / speed_B)."""

    def q(xs: list[float]) -> tuple[float, float, float]:
        qs = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
        return qs[0], statistics.median(xs), qs[2]

    print()
    print("| model              | engine step (s) | plain step (s) | overhead wall: median [IQR]  "
          "| engine CPU (s) | plain CPU (s) | overhead CPU: median [IQR]   |")
    print("|--------------------|-----------------|----------------|------------------------------"
          "|----------------|---------------|------------------------------|")
    for m, ps in pairs.items():
        ow = q([100 * (aw - bw) / aw for aw, _, bw, _ in ps])
        oc = q([100 * (ac - bc) / ac for _, ac, _, bc in ps])
        print(f"| {m:<18} | {statistics.median(p[0] for p in ps):15.3f} | {statistics.median(p[2] for p in ps):14.3f} "
              f"| {ow[1]:+6.1f} % [{ow[0]:+6.1f}, {ow[2]:+6.1f}] % | {statistics.median(p[1] for p in ps):14.3f} "
              f"| {statistics.median(p[3] for p in ps):13.3f} | {oc[1]:+6.1f} % [{oc[0]:+6.1f}, {oc[2]:+6.1f}] % |")
    print(f"\n{args.steps} timed pairs per model after {args.warmup} warm-up pairs (batch {args.batch}, order ABBA); "
          "each pair trains one batch with the engine's loop.train_epoch (+ steps.csv/TensorBoard row, progress bar, "
          "deterministic mode as configured) and with the plain step. overhead = (engine - plain) / engine time; "
          "positive = engine slower.")


if __name__ == "__main__":
    main()
