"""Dense training targets built from instance annotations (target dicts of the model contract)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from maskkit.errors import DataError
from maskkit.structures.labels import IGNORE_INDEX


def semantic_from_instances(
    target: Mapping[str, Tensor], size: tuple[int, int] | None = None, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """H x W int64 class map (0 background) painted from a target's ``masks`` (N x H x W) and ``labels`` (1..K).

    Larger instances are painted first so smaller ones stay visible where masks overlap; crowd
    instances (``iscrowd``, when present) become ``ignore_index``. ``size`` (h, w) is checked against the masks.
    """
    masks = target.get("masks")
    if masks is None:
        raise DataError("a semantic target needs instance masks (box-only annotations cannot be painted)")
    masks = torch.as_tensor(masks)
    if masks.dim() != 3 or (size is not None and tuple(masks.shape[-2:]) != tuple(size)):
        want = "H x W" if size is None else f"{size[0]} x {size[1]}"
        raise DataError(f"instance masks have shape {tuple(masks.shape)}, expected N x {want}")
    out = torch.zeros(masks.shape[-2:], dtype=torch.int64, device=masks.device)
    if len(masks) == 0:
        return out
    fg = masks.bool()
    values = torch.as_tensor(target["labels"]).to(device=masks.device, dtype=torch.int64).clone()
    if target.get("iscrowd") is not None:
        values[torch.as_tensor(target["iscrowd"]).to(device=masks.device, dtype=torch.bool)] = ignore_index
    for i in torch.argsort(fg.flatten(1).sum(1), descending=True, stable=True).tolist():
        out[fg[i]] = values[i]
    return out


# -- bottom-up targets: instance borders and per-instance normalised distance --------------------------


def checked_semantic_target(
    target: Mapping[str, Tensor], size: tuple[int, int], num_classes: int, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """A target's ``semantic`` class map (painted from its instances when absent), checked against the image
    ``size`` (h, w) and the classes ``0..num_classes`` plus ``ignore_index``; a ``DataError`` says what is wrong."""
    sem = target.get("semantic")
    sem = semantic_from_instances(target, size, ignore_index) if sem is None else torch.as_tensor(sem)
    if sem.dim() != 2 or tuple(sem.shape) != tuple(size):
        raise DataError(f"semantic target has shape {tuple(sem.shape)} but the image is {size[0]}x{size[1]}")
    bad = (sem < 0) | ((sem > num_classes) & (sem != ignore_index))
    if bool(bad.any()):
        raise DataError(f"semantic target holds class {int(sem[bad][0])}; expected 0..{num_classes} or {ignore_index}")
    return sem


def instance_id_map(masks: Tensor | np.ndarray) -> np.ndarray:
    """``H x W`` int32 map of ``N x H x W`` masks: ``i + 1`` where mask ``i`` is, 0 elsewhere.

    Overlaps are resolved like :func:`semantic_from_instances`: larger masks are painted first, so the
    smaller one wins. Each mask is painted inside its bounding box only.
    """
    m = np.asarray(masks.cpu() if isinstance(masks, Tensor) else masks)
    if m.ndim != 3:
        raise DataError(f"instance masks have shape {m.shape}, expected N x H x W")
    ids = np.zeros(m.shape[1:], dtype=np.int32)
    rows: np.ndarray = np.any(m, axis=2)
    cols: np.ndarray = np.any(m, axis=1)
    crops = []
    for i in np.flatnonzero(rows.any(axis=1)):
        y = np.flatnonzero(rows[i])
        x = np.flatnonzero(cols[i])
        sl = (slice(y[0], y[-1] + 1), slice(x[0], x[-1] + 1))
        crop = m[i][sl] != 0
        crops.append((-int(np.count_nonzero(crop)), int(i), sl, crop))
    for _, k, sl, crop in sorted(crops, key=lambda c: (c[0], c[1])):  # larger first, then index order
        ids[sl][crop] = k + 1
    return ids


def boundary_from_ids(ids: np.ndarray) -> np.ndarray:
    """Bool ``H x W``: pixels with a 4-neighbour of another id, i.e. both sides of every border (2 px thick).

    Borders between touching instances and between instances and background count; the image edge does not.
    """
    p = np.pad(ids, 1, mode="edge")
    c = p[1:-1, 1:-1]
    return (c != p[:-2, 1:-1]) | (c != p[2:, 1:-1]) | (c != p[1:-1, :-2]) | (c != p[1:-1, 2:])


def normalised_distance(ids: np.ndarray, boundary: np.ndarray | None = None) -> np.ndarray:
    """Float32 ``H x W``: each pixel's distance to its instance's border, scaled per piece to ``(0, 1]``.

    One Euclidean distance transform for the whole image (the inner border pixels of every instance are
    its zeros, so distances never reach into a neighbour), then each connected piece of each instance
    (occlusion can cut an instance in pieces) is divided by its own maximum: 1 on its medial axis
    peak, ``1 / max`` on its border pixels, 0 on background.
    """
    import cv2
    from skimage.measure import label as label_components

    fg = ids > 0
    if not fg.any():
        return np.zeros(ids.shape, dtype=np.float32)
    if boundary is None:
        boundary = boundary_from_ids(ids)
    interior = (fg & ~boundary).astype(np.uint8)
    dist = cv2.distanceTransform(interior, cv2.DIST_L2, cv2.DIST_MASK_5) + 1.0
    pieces = label_components(ids, background=0, connectivity=1)
    peak = np.zeros(int(pieces.max()) + 1, dtype=np.float32)
    np.maximum.at(peak, pieces.ravel(), dist.ravel())
    peak[0] = 1.0
    return np.where(fg, dist / peak[pieces], 0.0).astype(np.float32)


def bottomup_targets(masks: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Border map (bool ``H x W``) and normalised distance map (float32 ``H x W``) of ``N x H x W`` masks.

    See :func:`boundary_from_ids` and :func:`normalised_distance`; about 1 ms for a 160 x 160 image.
    """
    ids = instance_id_map(masks)
    boundary = boundary_from_ids(ids)
    return boundary, normalised_distance(ids, boundary)
