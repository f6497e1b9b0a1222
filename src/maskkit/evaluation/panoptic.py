"""Panoptic quality for "things" (Kirillov et al., "Panoptic Segmentation", CVPR 2019) on instance masks.

Per image and class, GT and predicted instances of that class match when ``IoU > 0.5`` (strictly; such
matches are unique for non-overlapping segments, and an optimal one-to-one assignment is used in case
overlapping instance masks make them ambiguous). Over the dataset, per class:

* ``SQ = sum(IoU of matches) / TP`` (0 when TP = 0), ``RQ = TP / (TP + FP/2 + FN/2)``, ``PQ = SQ * RQ``;
* the overall ``pq``/``sq``/``rq`` are the plain means over classes with ``TP + FP + FN > 0`` (as the
  ``panopticapi`` does).

Crowd GT (``gt_iscrowd``) are never matched and never FN; an unmatched prediction whose area lies more than
half inside the union of the crowd regions of its class is dropped instead of counted as FP (the
``panopticapi`` rule, without VOID pixels, which instance masks do not have). IoU is pycocotools' on RLE.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from maskkit.errors import DataError
from maskkit.evaluation.base import ImageStore, MaskEvaluator, Pairing, PreparedImage
from maskkit.evaluation.matching import LabelInput, MaskInput, as_labels, as_masks, check_same_size, match_at_threshold
from maskkit.structures.masks import masks_iou

MATCH_IOU = float(np.nextafter(0.5, 1.0))
"""Smallest float above 0.5: ``iou >= MATCH_IOU`` is exactly ``iou > 0.5``."""


class PanopticAccumulator:
    """Streaming PQ/SQ/RQ for thing classes; keeps ``[TP, FP, FN, IoU sum]`` per class only.

    Args:
        crowd_overlap: fraction of a prediction's area inside same-class crowd regions above which an
            unmatched prediction is ignored (0.5 as in ``panopticapi``).
    """

    def __init__(self, crowd_overlap: float = 0.5) -> None:
        self.crowd_overlap = crowd_overlap
        self._stats: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(4, dtype=np.float64))
        self.num_images = 0

    def add(self, gt_masks: MaskInput, pred_masks: MaskInput, gt_labels: LabelInput = None,
            pred_labels: LabelInput = None, gt_iscrowd: Sequence[bool] | np.ndarray | None = None) -> None:
        """Add one image. Labels default to one class (0); ``gt_iscrowd`` defaults to all False."""
        g, p = as_masks(gt_masks), as_masks(pred_masks)
        check_same_size(g, p)
        gl, pl = as_labels(gt_labels, len(g), "gt_labels"), as_labels(pred_labels, len(p), "pred_labels")
        crowd = np.zeros(len(g), dtype=bool) if gt_iscrowd is None else np.asarray(gt_iscrowd, dtype=bool).ravel()
        if len(crowd) != len(g):
            raise DataError(f"gt_iscrowd has {len(crowd)} flags for {len(g)} masks")
        regular = np.flatnonzero(~crowd)

        def inside(c: int, pred_idx: np.ndarray) -> int:
            return self._inside_crowd(g, p, np.flatnonzero(crowd & (gl == c)), pred_idx)

        self.add_iou(masks_iou(g[regular], p), gl[regular], pl, inside if crowd.any() else None)

    def add_iou(self, iou: np.ndarray, gt_labels: np.ndarray, pred_labels: np.ndarray,
                inside_crowd: Callable[[int, np.ndarray], int] | None = None) -> None:
        """:meth:`add` from the class-agnostic mask IoU of the non-crowd GT × predictions and int labels;
        ``inside_crowd(label, pred_indices)`` counts unmatched predictions lying mostly in that class's crowd."""
        gl, pl = gt_labels, pred_labels
        iou = np.where(gl[:, None] == pl[None, :], iou, 0.0)
        gi, pi = match_at_threshold(iou, MATCH_IOU)
        matched_pred = np.zeros(len(pl), dtype=bool)
        matched_pred[pi] = True
        classes, inv = np.unique(np.concatenate([gl, pl]), return_inverse=True)
        n = len(classes)
        g_c, p_c = inv[: len(gl)], inv[len(gl) :]
        tp = np.bincount(g_c[gi], minlength=n)
        fn = np.bincount(g_c, minlength=n) - tp
        fp = np.bincount(p_c[~matched_pred], minlength=n)
        matched_iou = iou[gi, pi]
        for j, c in enumerate(classes.tolist()):
            s = self._stats[c]
            s[0] += tp[j]
            if tp[j]:
                s[3] += float(matched_iou[g_c[gi] == j].sum())
            s[2] += fn[j]
            lost = 0
            if inside_crowd is not None and fp[j]:
                lost = inside_crowd(c, np.flatnonzero((p_c == j) & ~matched_pred))
            s[1] += fp[j] - lost
        self.num_images += 1

    def _inside_crowd(self, g: Any, p: Any, crowd_idx: np.ndarray, pred_idx: np.ndarray) -> int:
        """How many predictions ``pred_idx`` lie mostly (> crowd_overlap of their area) in the crowd union."""
        if not len(crowd_idx) or not len(pred_idx):
            return 0
        rles = g.to_rles()
        region = mask_utils.merge([rles[i] for i in crowd_idx]) if len(crowd_idx) > 1 else rles[crowd_idx[0]]
        # iscrowd=1 makes pycocotools return |pred ∩ region| / |pred|.
        frac = np.asarray(mask_utils.iou([p.rle(int(i)) for i in pred_idx], [region], [1])).reshape(-1)
        return int(np.count_nonzero(frac > self.crowd_overlap))

    def result(self) -> dict[str, Any]:
        """``{"pq", "sq", "rq", "num_classes", "num_images", "per_class": {label: {"pq", "sq", "rq",
        "tp", "fp", "fn"}}}``; overall values are means over classes with any TP/FP/FN (``nan`` if none)."""
        per: dict[int, dict[str, float]] = {}
        for c in sorted(self._stats):
            tp, fp, fn, iou_sum = self._stats[c]
            if tp + fp + fn == 0:
                continue
            sq = iou_sum / tp if tp else 0.0
            rq = tp / (tp + 0.5 * fp + 0.5 * fn)
            per[c] = {"pq": sq * rq, "sq": sq, "rq": rq, "tp": int(tp), "fp": int(fp), "fn": int(fn)}
        out: dict[str, Any] = {}
        for name in ("pq", "sq", "rq"):
            out[name] = float(np.mean([v[name] for v in per.values()])) if per else float("nan")
        out.update(num_classes=len(per), num_images=self.num_images, per_class=per)
        return out


class PanopticEvaluator(MaskEvaluator):
    """The ``panoptic`` section: :class:`PanopticAccumulator` over the predictions scoring ``>= score_threshold``."""

    def __init__(self, store: ImageStore | None = None, score_threshold: float = 0.5) -> None:
        super().__init__(store, score_threshold)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.accumulator = PanopticAccumulator()

    def add(self, image: PreparedImage, pairing: Pairing) -> None:
        g, d = image.gt, image.dt
        crowd, keep = g.gt_crowd, pairing.keep
        inside = None
        if crowd.any():
            def inside(c: int, pred_idx: np.ndarray) -> int:
                gm, dm = g.masks(image.size), d.masks(image.size)[keep]
                return self.accumulator._inside_crowd(gm, dm, np.flatnonzero(crowd & (g.labels == c)), pred_idx)

        self.accumulator.add_iou(pairing.iou, g.labels[pairing.regular], d.labels[keep], inside)

    def evaluate(self) -> dict[str, Any]:
        if not self.accumulator.num_images:
            return {}
        return {"panoptic": {**self.accumulator.result(), "score_threshold": self.score_threshold}}
