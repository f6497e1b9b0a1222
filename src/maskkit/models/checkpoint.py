"""Checkpoint files: atomic saves and weights-only loads.

A checkpoint is a plain dict of tensors and JSON-like values (so ``torch.load(weights_only=True)``
can read it): ``model``, ``optimizer``, ``scheduler``, ``scaler``, ``ema``, ``rng``, ``epoch``,
``step``, ``config`` (the resolved config as a dict), ``class_names``, ``category_ids``, ``versions``, ``git``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from maskkit.errors import DataError
from maskkit.fileio import atomic_write_bytes


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Serialise ``state`` and write it atomically (a kill mid-write keeps the previous file)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code execution)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("checkpoint not found", file=path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise DataError(f"cannot load checkpoint ({type(exc).__name__}: {exc})", file=path) from None
