"""Optimiser and per-step learning-rate schedule (linear warm-up, then cosine, step or constant)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from maskkit.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters; no weight decay on norms and biases."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """The LR multiplier of step ``s`` (0-based): linear warm-up, then the configured decay."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    milestones = sorted(int(f * total_steps) for f in cfg.step_milestones)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return 0.001 + (1.0 - 0.001) * step / warmup
        if cfg.scheduler == "cosine":
            span = max(total_steps - warmup, 1)
            t = min(max(step - warmup, 0) / span, 1.0)
            return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))
        if cfg.scheduler == "step":
            return cfg.gamma ** sum(step >= m for m in milestones)
        return 1.0

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` (call ``scheduler.step()`` after every optimiser step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, total_steps))
