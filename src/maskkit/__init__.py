"""maskkit: instance and semantic segmentation, from annotations to deployment."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Predictor", "__version__", "explain", "load", "train"]

_LAZY = {
    "train": "maskkit.engine.api",
    "load": "maskkit.inference.predictor",
    "Predictor": "maskkit.inference.predictor",
    "explain": "maskkit.explanations.api",
}


def __getattr__(name: str) -> Any:
    """``train``, ``load``, ``Predictor`` and ``explain`` import torch on first use (``import maskkit`` stays light)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'maskkit' has no attribute {name!r}")
