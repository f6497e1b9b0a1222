"""Model outputs -> :class:`~maskkit.structures.Instances` (dataset category ids, RLE masks).

Mask R-CNN-style outputs carry ``masks`` (``N×1×H×W`` probabilities); dense models (semantic,
bottom-up) carry an ``instance_map`` (``H×W``, ``i + 1`` where instance ``i`` is) instead, and
optionally ``instance_ids`` (row ``i``'s region id in the map, when several rows share a region:
one per plausible class).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from maskkit.structures import Instances, Masks
from maskkit.structures.rle import label_image_to_rles


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
    if "instance_map" in output:
        ids = region_ids(output, len(labels))
        rles = instance_map_to_rles(output["instance_map"], int(ids.max(initial=0)))
        fields["masks"] = Masks.from_rles([rles[i - 1] for i in ids.tolist()], h, w)
    elif "masks" in output:
        fields["masks"] = Masks.from_rles(masks_to_rles(output["masks"], mask_threshold), h, w)
    return Instances((h, w), **fields)


def region_ids(output: dict[str, torch.Tensor], n: int) -> np.ndarray:
    """Each output row's region id in ``instance_map`` (``instance_ids``, else ``1..n``), int64."""
    ids = output.get("instance_ids")
    if ids is None:
        return np.arange(1, n + 1, dtype=np.int64)
    return ids.detach().cpu().numpy().astype(np.int64).reshape(-1)


def instance_map_to_rles(instance_map: torch.Tensor | np.ndarray, n: int) -> list[dict[str, Any]]:
    """Compressed RLEs of instances ``0..n-1`` of an ``H×W`` map holding ``i + 1`` (empty RLE if absent)."""
    imap = instance_map.detach().cpu().numpy() if isinstance(instance_map, torch.Tensor) else np.asarray(instance_map)
    h, w = imap.shape
    rles, ids = label_image_to_rles(imap.astype(np.int32, copy=False))
    by_id = dict(zip(ids.tolist(), rles, strict=True))
    empty = None
    out = []
    for i in range(n):
        rle = by_id.get(i + 1)
        if rle is None:
            if empty is None:
                empty = mask_utils.encode(np.zeros((h, w, 1), dtype=np.uint8, order="F"))[0]
            rle = empty
        out.append(rle)
    return out
