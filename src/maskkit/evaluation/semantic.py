"""Semantic segmentation metrics from a streaming confusion matrix.

``confusion[i, j]`` counts pixels of GT class ``i`` predicted as class ``j`` (rows GT, columns prediction),
accumulated with ``np.bincount``; GT pixels equal to ``ignore_index`` are skipped. From it:

* per-class IoU ``TP / (TP + FP + FN)`` and Dice/F1 ``2TP / (2TP + FP + FN)``: ``nan`` for a class absent
  from both GT and prediction;
* ``miou`` / ``mean_dice``: means over the classes present in the GT **or** the prediction (the non-nan
  entries), so a class predicted but absent from the GT counts with IoU 0;
* ``pixel_accuracy`` = correct / valid pixels; ``mean_accuracy`` = mean per-class recall over classes
  present in the GT; ``fwiou`` = sum over classes of (GT pixel frequency × IoU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from maskkit.errors import DataError
from maskkit.evaluation.base import ImageStore, MaskEvaluator, Pairing, PreparedImage
from maskkit.evaluation.matching import safe_div
from maskkit.structures import Masks


class SemanticAccumulator:
    """Confusion-matrix accumulator for ``num_classes`` classes labelled ``0 .. num_classes-1``.

    Args:
        num_classes: number of classes.
        ignore_index: GT value excluded from every metric (255 by default; ``None`` for none).
        class_names: optional names, used as keys of ``per_class`` in :meth:`result`.
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, class_names: Sequence[str] | None = None
    ) -> None:
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else None
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.confusion[:] = 0

    def add(self, gt_map: np.ndarray, pred_map: np.ndarray) -> None:
        """Add one ``H×W`` pair of integer class maps (GT ``ignore_index`` pixels are skipped).

        Raises ``DataError`` on shape mismatch or class values outside ``[0, num_classes)`` at valid pixels.
        """
        gt, pred = np.asarray(gt_map), np.asarray(pred_map)
        if gt.shape != pred.shape:
            raise DataError(f"GT map is {gt.shape} but prediction is {pred.shape}")
        if not (np.issubdtype(gt.dtype, np.integer) and np.issubdtype(pred.dtype, np.integer)):
            raise DataError(f"class maps must be integer arrays, got {gt.dtype} and {pred.dtype}")
        valid = gt != self.ignore_index if self.ignore_index is not None else np.ones(gt.shape, dtype=bool)
        g, p = gt[valid].astype(np.int64), pred[valid].astype(np.int64)
        n = self.num_classes
        for name, arr in (("GT", g), ("prediction", p)):
            if arr.size and (arr.min() < 0 or arr.max() >= n):
                bad = arr[(arr < 0) | (arr >= n)][0]
                raise DataError(f"{name} class value {bad} outside 0..{n - 1} (ignore_index={self.ignore_index})")
        self.confusion += np.bincount(g * n + p, minlength=n * n).reshape(n, n)

    def result(self) -> dict[str, Any]:
        """Metrics dict.

        Keys: ``miou``, ``mean_dice``, ``pixel_accuracy``, ``mean_accuracy``, ``fwiou`` (floats, ``nan`` when
        undefined), ``iou``, ``dice``, ``accuracy`` (per-class lists, ``nan`` for absent classes),
        ``per_class`` (``{name or index: {"iou", "dice", "accuracy", "gt_pixels", "pred_pixels"}}``),
        ``confusion_matrix`` (``num_classes × num_classes`` int64 array, rows GT, columns prediction),
        ``num_pixels``.
        """
        cm = self.confusion.astype(np.float64)
        tp = np.diag(cm)
        gt_px, pred_px = cm.sum(axis=1), cm.sum(axis=0)
        total = cm.sum()
        iou = safe_div(tp, gt_px + pred_px - tp)
        dice = safe_div(2 * tp, gt_px + pred_px)
        acc = safe_div(tp, gt_px)
        names: Sequence[str | int] = self.class_names or list(range(self.num_classes))
        per_class = {
            names[c]: {
                "iou": float(iou[c]),
                "dice": float(dice[c]),
                "accuracy": float(acc[c]),
                "gt_pixels": int(gt_px[c]),
                "pred_pixels": int(pred_px[c]),
            }
            for c in range(self.num_classes)
        }
        return {
            "miou": _nanmean(iou),
            "mean_dice": _nanmean(dice),
            "pixel_accuracy": safe_div(tp.sum(), total),
            "mean_accuracy": _nanmean(acc),
            "fwiou": float(np.nansum(gt_px / total * iou)) if total else float("nan"),
            "iou": iou.tolist(),
            "dice": dice.tolist(),
            "accuracy": acc.tolist(),
            "per_class": per_class,
            "confusion_matrix": self.confusion.copy(),
            "num_pixels": int(total),
        }


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


class SemanticEvaluator(MaskEvaluator):
    """The ``semantic`` section: instances painted into class maps (background 0, crowd GT ignored,
    predictions ``>= score_threshold`` with higher scores on top) scored by :class:`SemanticAccumulator`.
    Needs the store's categories; without them it reports nothing."""

    def __init__(self, store: ImageStore | None = None, score_threshold: float = 0.5) -> None:
        super().__init__(store, score_threshold)
        self.reset()

    def reset(self) -> None:
        super().reset()
        cats = self.store.categories
        self._class_index = {c["id"]: i + 1 for i, c in enumerate(cats)}  # 0 = background
        names = ["background", *(c["name"] for c in cats)]
        self._ignore = 255 if len(names) < 255 else -1
        self.accumulator = SemanticAccumulator(len(names), ignore_index=self._ignore, class_names=names)

    def add(self, image: PreparedImage, pairing: Pairing) -> None:
        if not self._class_index:
            return
        g, d, keep = image.gt, image.dt, pairing.keep
        self.accumulator.add(self._class_map(g.masks(image.size), g.labels, g.gt_crowd),
                             self._class_map(d.masks(image.size)[keep], d.labels[keep], None, d.dt_scores[keep]))

    def _class_map(self, masks: Masks, labels: np.ndarray, crowd: np.ndarray | None,
                   scores: np.ndarray | None = None) -> np.ndarray:
        """Paint instances into an ``H×W`` class-index map (higher scores on top; crowd GT = ignore)."""
        out = np.zeros((masks.height, masks.width), dtype=np.uint8 if self._ignore == 255 else np.int32)
        order = np.argsort(scores, kind="stable") if scores is not None else range(len(masks))
        for i in order:
            value = self._ignore if crowd is not None and crowd[i] else self._class_index.get(int(labels[i]), 0)
            out[masks.bitmap(int(i))] = value
        return out

    def evaluate(self) -> dict[str, Any]:
        if not self._class_index:
            return {}
        return {"semantic": {**self.accumulator.result(), "score_threshold": self.score_threshold}}
