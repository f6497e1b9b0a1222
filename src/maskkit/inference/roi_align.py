"""RoIAlign for CPU inference on channels-last features: torchvision's results, several times faster
(3-4x on R50-FPN shapes, ``benchmarks/roi_align_speed.py``).

torchvision's CPU ``roi_align`` kernel is scalar and single-threaded over NCHW planes: on a
Mask R-CNN R50-FPN at 640x480 it takes ~20 % of the inference time (1000 proposals x 256 channels
x 7 x 7 bins x 4 samples). :func:`multiscale_roi_align` computes the same thing as torchvision's
``MultiScaleRoIAlign`` (same level mapping, same float32 sample positions, weights and summation
order, so the outputs are bit-identical; tests check it) with the Numba kernel of
:mod:`maskkit.models.cpu_kernels` (shared with training, which adds its backward) that reads the
channels-last (NHWC) features the optimised backbone produces and vectorises over channels.

Numba is optional: without it (or for non-float32, non-CPU or non-channels-last inputs) the pooler
of the model itself runs. The kernel is compiled on first use (about a second, then cached on disk).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maskkit.models.cpu_kernels import roi_align_kernels


def _kernel() -> Any:
    """The compiled Numba forward kernel (:func:`maskkit.models.cpu_kernels.roi_align_kernels`), or None."""
    kernels = roi_align_kernels()
    return kernels[0] if kernels is not None else None


def available() -> bool:
    """Whether the fast kernel can run (Numba installed)."""
    return _kernel() is not None


def _nhwc(x: Tensor) -> np.ndarray | None:
    """The ``B x H x W x C`` float32 NumPy view of a channels-last CPU tensor (None if it is not one)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or x.requires_grad:
        return None
    v = x.permute(0, 2, 3, 1)
    return v.numpy() if v.is_contiguous() else None


def multiscale_roi_align(pooler: Any, features: dict[str, Tensor], boxes: Sequence[Tensor],
                         image_sizes: Sequence[tuple[int, int]]) -> Tensor:
    """``pooler(features, boxes, image_sizes)`` for a torchvision ``MultiScaleRoIAlign``, on the fast kernel
    when it applies (channels-last float32 CPU features, Numba installed), else by the pooler itself."""
    kernel = _kernel()
    names = list(pooler.featmap_names)
    views = [_nhwc(features[k]) for k in names] if kernel is not None else [None]
    ready = [v for v in views if v is not None]
    if len(ready) < len(views) or any(b.dtype != torch.float32 or b.device.type != "cpu" for b in boxes):
        return pooler(features, list(boxes), list(image_sizes))
    if pooler.scales is None or pooler.map_levels is None:  # the pooler infers its levels on first use
        pooler(features, [b[:0] for b in boxes], list(image_sizes))
    out_h, out_w = (int(s) for s in pooler.output_size)
    rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
    channels = ready[0].shape[-1]
    result = torch.zeros((len(rois), channels, out_h, out_w), dtype=torch.float32)
    if not len(rois):
        return result
    levels = pooler.map_levels(list(boxes)) if len(ready) > 1 else torch.zeros(len(rois), dtype=torch.int64)
    out, rois_np, levels_np = result.numpy(), rois.numpy(), levels.numpy()
    for level, (view, scale) in enumerate(zip(ready, pooler.scales, strict=True)):
        rows = np.flatnonzero(levels_np == level)
        if len(rows):
            kernel(view, np.ascontiguousarray(rois_np[rows]), rows.astype(np.int64), np.float32(scale), out_h,
                   out_w, int(pooler.sampling_ratio), out)
    return result
