"""The inner loop: optimiser steps over one epoch (validation lives in :mod:`maskkit.engine.validation`)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from maskkit.errors import MaskkitError

log = logging.getLogger("maskkit.train")


@dataclass
class StepContext:
    """What a training step needs: model (maybe DDP-wrapped), optimiser, schedule, scaler, EMA and options."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    loss_weights: dict[str, float]
    grad_clip: float | None
    max_bad_steps: int
    scaler: torch.amp.GradScaler | None = None
    ema: Any = None
    amp: bool = False
    semi: Any = None
    """A :class:`~maskkit.engine.semisup.SemiSupervised` adding ``loss_unsup`` to every step (None: supervised)."""
    adversarial: Any = None
    """``(model, images, targets) -> images``: adversarial examples mixed into each batch (None: off)."""


@dataclass
class EpochState:
    """Progress through the run (saved in every checkpoint)."""

    epoch: int = 0
    batch: int = 0
    """Batches of ``epoch`` already trained (a resume skips them)."""
    step: int = 0
    bad_steps: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    """Running sums of this epoch's loss terms (and ``n``, the steps summed)."""


def to_device(
    images: list[torch.Tensor], targets: list[dict[str, Any]], device: torch.device
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
               for t in targets]
    return images, targets


def weighted_total(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The sum of the loss terms, each multiplied by its weight (missing weights are 1)."""
    # a tensor for the non-empty loss dicts models return (sum() starts from the int 0)
    return cast(torch.Tensor, sum(weights.get(k, 1.0) * v for k, v in losses.items()))


def train_epoch(
    ctx: StepContext,
    batches: Iterable[tuple[list[torch.Tensor], list[dict[str, Any]]]],
    state: EpochState,
    on_step: Callable[[dict[str, Any]], None],
) -> None:
    """Run the optimiser over ``batches``; ``on_step(row)`` after every step (logging, progress, checkpoints).

    ``row`` holds ``epoch``, ``step``, ``lr``, ``loss``, each loss term, ``seconds`` (the step's wall time,
    from the batch's arrival to the optimiser update; data loading excluded) and ``data_seconds`` (the wait for
    the batch since the previous step ended, or since the loop started).

    A non-finite loss skips its step (no update, the schedule still advances) and is counted; more
    than ``max_bad_steps`` of them stop the run with a :class:`MaskkitError`.
    """
    ctx.model.train()
    ready = time.perf_counter()
    for images, targets in batches:
        t0 = time.perf_counter()
        images, targets = to_device(images, targets, ctx.device)
        if ctx.adversarial is not None:
            images = ctx.adversarial(ctx.model, images, targets)
        with torch.autocast(ctx.device.type, enabled=ctx.amp):
            losses = ctx.model(images, targets)
            if ctx.semi is not None:
                losses = {**losses, **ctx.semi.losses(ctx.model, state.step, ctx.loss_weights)}
        total = weighted_total(losses, ctx.loss_weights)
        ctx.optimizer.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(total))
        if finite:
            if ctx.scaler is not None:
                ctx.scaler.scale(total).backward()
                ctx.scaler.unscale_(ctx.optimizer)
            else:
                total.backward()
            if ctx.grad_clip:
                params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, ctx.grad_clip)
            if ctx.scaler is not None:
                ctx.scaler.step(ctx.optimizer)
                ctx.scaler.update()
            else:
                ctx.optimizer.step()
            if ctx.ema is not None:
                ctx.ema.update(unwrap(ctx.model))
        else:
            state.bad_steps += 1
            log.warning("step %d: non-finite loss (%s); step skipped (%d so far)", state.step + 1,
                        {k: float(v.detach()) for k, v in losses.items()}, state.bad_steps)
            if state.bad_steps > ctx.max_bad_steps:
                raise MaskkitError(
                    f"training diverged: {state.bad_steps} steps with a non-finite loss (more than "
                    f"optim.max_bad_steps={ctx.max_bad_steps}); lower optim.lr, raise optim.warmup_steps "
                    "or check the annotations (maskkit validate)"
                )
        lr = ctx.optimizer.param_groups[0]["lr"]
        ctx.scheduler.step()
        state.step += 1
        state.batch += 1
        row: dict[str, Any] = {"epoch": state.epoch, "step": state.step, "lr": float(lr), "loss": float(total.detach())}
        row.update({k: float(v.detach()) for k, v in losses.items()})
        row["seconds"] = time.perf_counter() - t0
        row["data_seconds"] = t0 - ready
        if finite:
            for k, v in row.items():
                if k not in ("epoch", "step", "lr", "seconds", "data_seconds"):
                    state.sums[k] = state.sums.get(k, 0.0) + v
            state.sums["n"] = state.sums.get("n", 0.0) + 1
        on_step(row)
        ready = time.perf_counter()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) \
        else model


def metric_value(metrics: dict[str, Any], key: str) -> float | None:
    """A dotted metric (``segm.AP``) of a metrics dict; None when absent or undefined."""
    node: Any = metrics
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if not isinstance(node, int | float) or not math.isfinite(node) or node < 0:
        return None
    return float(node)
