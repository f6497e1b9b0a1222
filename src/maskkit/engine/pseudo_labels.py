"""Pseudo-labels: a teacher's eval-mode predictions turned into training targets of the model contract.

* Instance models (Mask R-CNN, Panoptic FPN): the instances whose score reaches their class's threshold, with
  their masks binarised at 0.5 and tight boxes recomputed from them (Unbiased Teacher style).
* Dense models (semantic, bottom-up): per-pixel ``semantic`` targets, :data:`IGNORE_INDEX` where the class
  probability is below the threshold of the predicted class; the decoded instances (``instance_map``) as masks,
  with the pixels where instances and the class map disagree ignored too.
* Panoptic FPN gets both: its instances and a dense ``semantic`` target.

:class:`ClassThresholds` holds the per-class thresholds (index 0: background), fixed or adaptive (FlexMatch-style,
see :class:`~maskkit.config.SemiConfig`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from maskkit.data.dataset import mask_boxes_and_areas
from maskkit.errors import ConfigError
from maskkit.structures.labels import IGNORE_INDEX

BACKGROUND = "background"


def base_thresholds(threshold: float, class_thresholds: Mapping[str, float], class_names: Sequence[str]) -> Tensor:
    """``K + 1`` thresholds (background first) from the default and the per-class-name ones."""
    known = {BACKGROUND, *class_names}
    unknown = sorted(set(class_thresholds) - known)
    if unknown:
        raise ConfigError(f"semi.class_thresholds names unknown classes {unknown}; the classes are "
                          f"{[BACKGROUND, *class_names]}")
    bad = {k: v for k, v in class_thresholds.items() if not 0.0 < float(v) < 1.0}
    if bad:
        raise ConfigError(f"semi.class_thresholds must lie in (0, 1), got {bad}")
    names = [BACKGROUND, *class_names]
    return torch.tensor([float(class_thresholds.get(n, threshold)) for n in names], dtype=torch.float32)


class ClassThresholds:
    """Per-class confidence thresholds (``K + 1``, index 0 background), fixed or adaptive.

    Adaptive (FlexMatch's idea, normalised per class for imbalanced data): :meth:`observe` keeps running
    (``momentum``) counts of the teacher's predictions per class and of those reaching the base threshold; a
    class's learning status ``b`` is its confident share divided by the best class's, and its threshold is
    ``base * b / (2 - b)``, never below ``floor`` (nor above ``base``). Classes never predicted keep ``base``.
    """

    def __init__(self, base: Tensor, adaptive: bool = False, floor: float = 0.5, momentum: float = 0.99) -> None:
        self.base = base.float().clone()
        self.adaptive, self.floor, self.momentum = adaptive, float(floor), float(momentum)
        self.predicted = torch.zeros_like(self.base, dtype=torch.float64)
        self.confident = torch.zeros_like(self.base, dtype=torch.float64)
        self.observed = 0

    def current(self) -> Tensor:
        """The thresholds now (``K + 1`` floats)."""
        if not self.adaptive or self.observed == 0:
            return self.base.clone()
        seen = self.predicted > 0
        share = torch.where(seen, self.confident / self.predicted.clamp(min=1e-12), torch.zeros_like(self.predicted))
        best = float(share[seen].max()) if bool(seen.any()) else 0.0
        if best <= 0:
            return self.base.clone()
        b = (share / best).float()
        scaled = self.base * b / (2.0 - b)
        out = torch.maximum(scaled, torch.minimum(self.base, torch.full_like(self.base, self.floor)))
        return torch.where(seen, out, self.base)

    def observe(self, classes: Tensor, confidences: Tensor) -> None:
        """Count predictions of ``classes`` (ints ``0..K``) with their ``confidences``."""
        classes = classes.reshape(-1).to("cpu", torch.int64)
        confidences = confidences.reshape(-1).to("cpu", torch.float32)
        k = len(self.base)
        pred = torch.bincount(classes, minlength=k).double()
        conf = torch.bincount(classes[confidences >= self.base[classes]], minlength=k).double()
        m = self.momentum if self.observed else 0.0
        self.predicted = m * self.predicted + (1 - m) * pred
        self.confident = m * self.confident + (1 - m) * conf
        self.observed += 1

    def state_dict(self) -> dict[str, Any]:
        return {"predicted": self.predicted.tolist(), "confident": self.confident.tolist(), "observed": self.observed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.predicted = torch.tensor(state["predicted"], dtype=torch.float64)
        self.confident = torch.tensor(state["confident"], dtype=torch.float64)
        self.observed = int(state["observed"])


def _instance_fields(masks: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Target fields of ``N x H x W`` uint8 masks: tight boxes and areas; empty masks dropped."""
    boxes, areas = mask_boxes_and_areas(masks.numpy())
    keep = torch.from_numpy(areas > 0)
    return {"boxes": torch.from_numpy(boxes)[keep], "labels": labels[keep].to(torch.int64), "masks": masks[keep],
            "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64), "area": torch.from_numpy(areas)[keep]}


def dense_semantic(probs: Tensor, thresholds: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(semantic target, argmax classes, confidences)`` of ``(K+1) x H x W`` class probabilities: the argmax
    class, :data:`IGNORE_INDEX` where its probability is below its class's threshold."""
    conf, cls = probs.float().max(0)
    sem = torch.where(conf >= thresholds.to(probs.device)[cls], cls, torch.full_like(cls, IGNORE_INDEX))
    return sem, cls, conf


def instance_pseudo_target(pred: Mapping[str, Tensor], thresholds: Tensor, mask_threshold: float = 0.5,
                           pixel_thresholds: Tensor | None = None) -> dict[str, Tensor]:
    """Training target of an instance model's prediction (``boxes``, ``labels``, ``scores``, ``masks`` ``N x 1 x
    H x W`` probabilities; ``sem_seg`` for Panoptic FPN): the instances reaching ``thresholds[label]``."""
    scores, labels = pred["scores"].float().cpu(), pred["labels"].cpu().to(torch.int64)
    keep = scores >= thresholds[labels]
    masks = pred["masks"].detach().cpu()[keep]
    masks = (masks.reshape(len(masks), *masks.shape[-2:]) >= mask_threshold).to(torch.uint8)
    target = _instance_fields(masks, labels[keep])
    if "sem_seg" in pred:
        target["semantic"] = dense_semantic(pred["sem_seg"].detach().cpu(),
                                            pixel_thresholds if pixel_thresholds is not None else thresholds)[0]
    return target


def dense_pseudo_target(pred: Mapping[str, Tensor], thresholds: Tensor) -> dict[str, Tensor]:
    """Training target of a dense model's prediction (``sem_seg`` class probabilities, ``instance_map``): see the
    module docstring. Regions take the majority class of their confident pixels; regions without one are dropped."""
    sem, cls, _ = dense_semantic(pred["sem_seg"].detach().cpu(), thresholds)
    imap = pred.get("instance_map")
    if imap is None:
        return {"semantic": sem}
    imap = imap.cpu().to(torch.int64)
    sem = torch.where((imap > 0) != (cls > 0), torch.full_like(sem, IGNORE_INDEX), sem)
    k = int(pred["sem_seg"].shape[0])
    n = int(imap.max()) if imap.numel() else 0
    valid = (sem > 0) & (sem != IGNORE_INDEX) & (imap > 0)
    counts = torch.bincount(imap[valid] * k + sem[valid], minlength=(n + 1) * k).reshape(n + 1, k)[1:]
    ids = torch.nonzero(counts.sum(1) > 0).flatten()
    labels = counts[ids].argmax(1)
    masks = (imap[None] == (ids + 1)[:, None, None]).to(torch.uint8)
    return {**_instance_fields(masks, labels), "semantic": sem}


def pseudo_target(pred: Mapping[str, Tensor], thresholds: Tensor,
                  pixel_thresholds: Tensor | None = None) -> dict[str, Tensor]:
    """:func:`instance_pseudo_target` for predictions with ``masks``, else :func:`dense_pseudo_target`."""
    if "masks" in pred:
        return instance_pseudo_target(pred, thresholds, pixel_thresholds=pixel_thresholds)
    return dense_pseudo_target(pred, pixel_thresholds if pixel_thresholds is not None else thresholds)


def observe_prediction(pred: Mapping[str, Tensor], instances: ClassThresholds, pixels: ClassThresholds) -> None:
    """Feed one prediction's confidences to the adaptive thresholds: instance scores and/or pixel probabilities."""
    if "masks" in pred:
        instances.observe(pred["labels"], pred["scores"])
    if "sem_seg" in pred:
        conf, cls = pred["sem_seg"].detach().float().max(0)
        pixels.observe(cls, conf)

