"""Inference: :class:`Predictor` (checkpoint -> ``Instances``) and drawing helpers."""

from __future__ import annotations

from typing import Any

__all__ = ["Predictor", "load"]


def __getattr__(name: str) -> Any:
    """Import torch only when a predictor is asked for."""
    if name in __all__:
        from maskkit.inference import predictor  # deferred: torch

        return getattr(predictor, name)
    raise AttributeError(f"module 'maskkit.inference' has no attribute {name!r}")
