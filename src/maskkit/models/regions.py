"""An instance label map and class probabilities -> the eval output of the bottom-up family.

Every bottom-up decoder (seeded watershed, star-convex polygons, flow following) ends with an ``H x W`` map
holding ``j`` where region ``j`` is; :func:`region_outputs` turns it into the output contract documented in
:mod:`maskkit.models.bottomup`: one row per (region, class) pair with ``instance_ids``, ``labels``, ``scores``,
``boxes``, plus ``instance_map`` (regions renumbered by their primary score) and ``sem_seg``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from maskkit.models.watershed import instance_boxes, instance_stats

SCORE_HALF_AREA = 30.0
"""Instances of this many pixels get half the confidence of large ones: fragments rank last."""
SECONDARY_CLASS_MIN = 0.01
"""A region is also output as every other class whose mean probability over it reaches this (as Mask R-CNN
outputs a box per class above its score threshold): an object of an ambiguous class still counts for AP
when the first choice is wrong (+0.017 mask AP on the demo), at a low score that a ``--conf`` filter drops."""


def area_confidence(areas: np.ndarray) -> np.ndarray:
    """``area / (area + SCORE_HALF_AREA)``: the default per-region confidence (fragments rank last)."""
    return areas / (areas + SCORE_HALF_AREA)


def region_outputs(imap: np.ndarray, fg_classes: np.ndarray, sem_seg: Tensor,
                   confidence: np.ndarray | None = None) -> dict[str, Tensor]:
    """The eval output dict of ``imap`` (int ``H x W``, regions ``1..n``) and ``fg_classes`` (``K x H x W``
    foreground class probabilities; ``sem_seg`` is passed through).

    A row's score is the mean probability of its class over the region times the region's ``confidence``
    (``(n,)``; default :func:`area_confidence`).
    """
    imap = imap.astype(np.int32, copy=False)
    n = int(imap.max()) if imap.size else 0
    areas, means = instance_stats(imap, n, fg_classes)  # means: K x n
    conf = area_confidence(areas) if confidence is None else np.asarray(confidence, np.float64).reshape(n)
    primary = means.argmax(0) if n else np.zeros(0, dtype=np.int64)
    best = means.max(0) if n else np.zeros(0)
    order = np.argsort(-best, kind="stable")  # regions renumbered by their primary score
    remap = np.zeros(n + 1, dtype=np.int32)
    remap[order + 1] = np.arange(1, n + 1, dtype=np.int32)
    # one row per (region, class) whose mean probability reaches SECONDARY_CLASS_MIN, plus the primary class
    cls, reg = np.nonzero((means >= SECONDARY_CLASS_MIN) | (np.arange(len(means))[:, None] == primary[None]))
    scores = means[cls, reg] * conf[reg]
    rows = np.lexsort((cls, remap[reg + 1], -scores))  # by score, then region, then class
    cls, reg, scores = cls[rows], reg[rows], scores[rows]
    boxes = instance_boxes(imap, n)
    return {
        "boxes": torch.from_numpy(boxes[reg].reshape(-1, 4)),
        "labels": torch.from_numpy((cls + 1).astype(np.int64)),
        "scores": torch.from_numpy(scores.astype(np.float32)),
        "instance_ids": torch.from_numpy(remap[reg + 1].astype(np.int64)),
        "instance_map": torch.from_numpy(remap[imap]),
        "sem_seg": sem_seg,
    }
