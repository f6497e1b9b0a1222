"""Conventions of per-pixel label maps shared by the data pipeline, the models and the metrics."""

from __future__ import annotations

IGNORE_INDEX = 255
"""Semantic label of pixels that no loss or metric counts (VOC's void/border pixels, padding)."""
