"""TorchScript export: the graph module traced (``torch.jit.trace``); its shape arithmetic is traced as tensor
ops, so any batch size and image size run (checked by the tests)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


def export_torchscript(graph: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> None:
    """Write ``graph`` traced on ``example`` to ``path``."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, example, check_trace=False)
        torch.jit.save(traced, str(path))
