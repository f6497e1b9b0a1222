"""torchvision detection outputs -> :class:`~maskkit.structures.Instances` (dataset category ids, RLE masks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from maskkit.structures import Instances, Masks


def masks_to_rles(probs: torch.Tensor, threshold: float = 0.5) -> list[dict[str, Any]]:
    """Compressed COCO RLEs of ``N×1×H×W`` (or ``N×H×W``) mask probabilities thresholded at ``threshold``."""
    if probs.ndim == 4:
        probs = probs[:, 0]
    binary = (probs > threshold).to(torch.uint8).cpu().numpy()
    if not len(binary):
        return []
    return mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))


def to_instances(
    output: dict[str, torch.Tensor],
    image_size: tuple[int, int],
    category_ids: Sequence[int],
    mask_threshold: float = 0.5,
) -> Instances:
    """One image's torchvision output as ``Instances``: boxes XYXY, labels = category ids, scores, masks."""
    h, w = int(image_size[0]), int(image_size[1])
    ids = np.asarray(category_ids, dtype=np.int64)
    labels = output["labels"].detach().cpu().numpy().astype(np.int64)
    fields: dict[str, Any] = {
        "boxes": output["boxes"].detach().float().cpu().numpy().reshape(-1, 4),
        "labels": ids[labels - 1] if len(labels) else np.zeros(0, np.int64),
        "scores": output["scores"].detach().float().cpu().numpy(),
    }
    if "masks" in output:
        fields["masks"] = Masks.from_rles(masks_to_rles(output["masks"], mask_threshold), h, w)
    return Instances((h, w), **fields)
