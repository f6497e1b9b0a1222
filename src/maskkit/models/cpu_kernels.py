"""Numba CPU kernels of the two-stage detectors: RoIAlign on channels-last features (forward and backward)
and the RPN's anchor matching without the ``gt x anchors`` IoU matrix.

* :func:`roi_align_kernels` -> ``(forward, backward)``. The forward is torchvision's ``roi_align``
  (``aligned=False``) on ``B x H x W x C`` float32 features, vectorised over channels, with the same float32
  sample positions, weights and summation order (bit-identical outputs); the backward scatters the output
  gradient to the same samples with the same weights. torchvision's CPU kernels loop over NCHW planes one
  scalar at a time (its backward was ~12 % of a nuclei Mask R-CNN training step).
* :func:`match_kernel`: torchvision's ``box_iou`` + ``Matcher`` (thresholds, low-quality matches) fused into
  two passes over the box pairs that share a cell of a grid over the ground truth (the others do not overlap),
  never storing the ``gt x anchors`` matrix (30 M floats for 369 nuclei at 576 px, ~0.5 s per image in torch).

Each getter returns None when Numba is not installed; kernels compile on first use (cached on disk).
"""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def roi_align_kernels() -> tuple[Any, Any] | None:
    """The compiled ``(forward, backward)`` RoIAlign kernels, or None without Numba."""
    try:
        import numba
        import numpy as np
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True, inline="always")
    def _sample(y: Any, x: Any, height: int, width: int) -> Any:  # pragma: no cover (compiled)
        """torchvision's bilinear corners and weights of one sample; ``valid`` False outside the map."""
        f32 = np.float32
        if y < f32(-1.0) or y > f32(height) or x < f32(-1.0) or x > f32(width):
            return False, 0, 0, 0, 0, f32(0.0), f32(0.0), f32(0.0), f32(0.0)
        yy = max(y, f32(0.0))
        xx = max(x, f32(0.0))
        y_lo, x_lo = int(yy), int(xx)
        if y_lo >= height - 1:
            y_lo = y_hi = height - 1
            yy = f32(y_lo)
        else:
            y_hi = y_lo + 1
        if x_lo >= width - 1:
            x_lo = x_hi = width - 1
            xx = f32(x_lo)
        else:
            x_hi = x_lo + 1
        ly = yy - f32(y_lo)
        lx = xx - f32(x_lo)
        hy = f32(1.0) - ly
        hx = f32(1.0) - lx
        return True, y_lo, y_hi, x_lo, x_hi, hy * hx, hy * lx, ly * hx, ly * lx

    @numba.njit(cache=True, nogil=True, inline="always")
    def _geometry(rois: Any, r: int, scale: Any, out_h: int, out_w: int, sampling_ratio: int) -> Any:
        f32 = np.float32  # pragma: no cover (compiled)
        x0 = rois[r, 1] * scale
        y0 = rois[r, 2] * scale
        roi_w = max(rois[r, 3] * scale - x0, f32(1.0))
        roi_h = max(rois[r, 4] * scale - y0, f32(1.0))
        bin_w = roi_w / f32(out_w)
        bin_h = roi_h / f32(out_h)
        grid_h = sampling_ratio if sampling_ratio > 0 else int(np.ceil(bin_h))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(np.ceil(bin_w))
        count = f32(max(grid_h * grid_w, 1))
        return int(rois[r, 0]), x0, y0, bin_w, bin_h, grid_h, grid_w, count

    @numba.njit(cache=True, nogil=True)
    def forward(feat: Any, rois: Any, rows: Any, scale: Any, out_h: int, out_w: int, sampling_ratio: int,
                out: Any) -> None:  # pragma: no cover (compiled)
        """``out[rows[r], :, ph, pw]`` = RoIAlign of ``rois[r]`` (``b, x1, y1, x2, y2``) on ``feat`` (NHWC)."""
        f32 = np.float32
        _, height, width, channels = feat.shape
        acc = np.zeros(channels, dtype=np.float32)
        for r in range(rois.shape[0]):
            b, x0, y0, bin_w, bin_h, grid_h, grid_w, count = _geometry(rois, r, scale, out_h, out_w, sampling_ratio)
            row = rows[r]
            for ph in range(out_h):
                for pw in range(out_w):
                    acc[:] = 0.0
                    for iy in range(grid_h):
                        y = y0 + f32(ph) * bin_h + f32(iy + 0.5) * bin_h / f32(grid_h)
                        for ix in range(grid_w):
                            x = x0 + f32(pw) * bin_w + f32(ix + 0.5) * bin_w / f32(grid_w)
                            ok, y_lo, y_hi, x_lo, x_hi, w1, w2, w3, w4 = _sample(y, x, height, width)
                            if not ok:
                                continue
                            for c in range(channels):
                                acc[c] += (w1 * feat[b, y_lo, x_lo, c] + w2 * feat[b, y_lo, x_hi, c]
                                           + w3 * feat[b, y_hi, x_lo, c] + w4 * feat[b, y_hi, x_hi, c])
                    for c in range(channels):
                        out[row, c, ph, pw] = acc[c] / count

    @numba.njit(cache=True, nogil=True)
    def backward(grad_out: Any, rois: Any, rows: Any, scale: Any, sampling_ratio: int,
                 grad_feat: Any) -> None:  # pragma: no cover (compiled)
        """Adds to ``grad_feat`` (NHWC) the gradient of :func:`forward` for ``grad_out`` (``R x oh x ow x C``)."""
        f32 = np.float32
        _, height, width, channels = grad_feat.shape
        out_h, out_w = grad_out.shape[1], grad_out.shape[2]
        g = np.zeros(channels, dtype=np.float32)
        for r in range(rois.shape[0]):
            b, x0, y0, bin_w, bin_h, grid_h, grid_w, count = _geometry(rois, r, scale, out_h, out_w, sampling_ratio)
            row = rows[r]
            for ph in range(out_h):
                for pw in range(out_w):
                    for c in range(channels):
                        g[c] = grad_out[row, ph, pw, c] / count
                    for iy in range(grid_h):
                        y = y0 + f32(ph) * bin_h + f32(iy + 0.5) * bin_h / f32(grid_h)
                        for ix in range(grid_w):
                            x = x0 + f32(pw) * bin_w + f32(ix + 0.5) * bin_w / f32(grid_w)
                            ok, y_lo, y_hi, x_lo, x_hi, w1, w2, w3, w4 = _sample(y, x, height, width)
                            if not ok:
                                continue
                            for c in range(channels):
                                grad_feat[b, y_lo, x_lo, c] += w1 * g[c]
                                grad_feat[b, y_lo, x_hi, c] += w2 * g[c]
                                grad_feat[b, y_hi, x_lo, c] += w3 * g[c]
                                grad_feat[b, y_hi, x_hi, c] += w4 * g[c]

    return forward, backward


@cache
def match_kernel() -> Any:
    """The compiled fused IoU matcher, or None without Numba.

    ``match(gt, anchors, high, low, allow_low_quality, out)`` writes into ``out`` (int64, one per anchor) what
    ``Matcher(high, low, allow_low_quality)(box_iou(gt, anchors))`` returns: the best gt (first on ties),
    -1 below ``low``, -2 between the thresholds, and every anchor reaching a gt's highest IoU keeps its best gt.
    """
    try:
        import numba
        import numpy as np
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True, inline="always")
    def _iou(gt: Any, g: Any, area_g: Any, anchors: Any, a: Any, area_a: Any) -> Any:  # pragma: no cover
        f32 = np.float32
        w = min(gt[g, 2], anchors[a, 2]) - max(gt[g, 0], anchors[a, 0])
        h = min(gt[g, 3], anchors[a, 3]) - max(gt[g, 1], anchors[a, 1])
        inter = max(w, f32(0.0)) * max(h, f32(0.0))
        return inter / (area_g + area_a - inter)

    @numba.njit(cache=True, nogil=True)
    def _grid(gt: Any) -> Any:  # pragma: no cover (compiled)
        """Buckets of gt indices on a square grid over the gts' extent (each gt in every cell its box touches)."""
        f32 = np.float32
        x0, y0 = gt[:, 0].min(), gt[:, 1].min()
        size = max(((gt[:, 2] - gt[:, 0]).mean() + (gt[:, 3] - gt[:, 1]).mean()) / f32(2.0), f32(8.0))
        nx = int((gt[:, 2].max() - x0) / size) + 1
        ny = int((gt[:, 3].max() - y0) / size) + 1
        counts = np.zeros(nx * ny + 1, dtype=np.int64)
        for g in range(gt.shape[0]):
            for cy in range(int((gt[g, 1] - y0) / size), min(int((gt[g, 3] - y0) / size), ny - 1) + 1):
                for cx in range(int((gt[g, 0] - x0) / size), min(int((gt[g, 2] - x0) / size), nx - 1) + 1):
                    counts[cy * nx + cx + 1] += 1
        starts = np.cumsum(counts)
        items = np.empty(starts[-1], dtype=np.int64)
        fill = starts[:-1].copy()
        for g in range(gt.shape[0]):
            for cy in range(int((gt[g, 1] - y0) / size), min(int((gt[g, 3] - y0) / size), ny - 1) + 1):
                for cx in range(int((gt[g, 0] - x0) / size), min(int((gt[g, 2] - x0) / size), nx - 1) + 1):
                    items[fill[cy * nx + cx]] = g
                    fill[cy * nx + cx] += 1
        return x0, y0, size, nx, ny, starts, items

    @numba.njit(cache=True, nogil=True, inline="always")
    def _cells(box: Any, x0: Any, y0: Any, size: Any, nx: int, ny: int) -> Any:  # pragma: no cover (compiled)
        """The grid cells ``box`` touches: ``(cx0, cx1, cy0, cy1)``, inclusive; empty ranges off the grid."""
        f32 = np.float32
        if box[2] < x0 or box[3] < y0:
            return 0, -1, 0, -1
        cx0 = int(max(box[0] - x0, f32(0.0)) / size)
        cy0 = int(max(box[1] - y0, f32(0.0)) / size)
        return cx0, min(int((box[2] - x0) / size), nx - 1), cy0, min(int((box[3] - y0) / size), ny - 1)

    @numba.njit(cache=True, nogil=True)
    def match(gt: Any, anchors: Any, high: Any, low: Any, allow_low_quality: bool,
              out: Any) -> None:  # pragma: no cover (compiled)
        f32 = np.float32
        n_gt, n_a = gt.shape[0], anchors.shape[0]
        area_g = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
        area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
        x0, y0, size, nx, ny, starts, items = _grid(gt)
        seen = np.full(n_gt, -1, dtype=np.int64)
        best_gt = np.zeros(n_gt, dtype=np.float32)  # IoU 0 with the anchors that touch no cell of the gt
        best_val = np.zeros(n_a, dtype=np.float32)
        for a in range(n_a):  # pairs that share no cell do not overlap: IoU 0, the first gt (index 0) on ties
            val, arg = f32(0.0), 0
            cx0, cx1, cy0, cy1 = _cells(anchors[a], x0, y0, size, nx, ny)
            for cy in range(cy0, cy1 + 1):
                for cx in range(cx0, cx1 + 1):
                    for k in range(starts[cy * nx + cx], starts[cy * nx + cx + 1]):
                        g = items[k]
                        if seen[g] == a:
                            continue
                        seen[g] = a
                        v = _iou(gt, g, area_g[g], anchors, a, area_a[a])
                        if v > val or (v == val and v > f32(0.0) and g < arg):
                            val, arg = v, g
                        if v > best_gt[g]:
                            best_gt[g] = v
            best_val[a] = val
            out[a] = arg
        low_quality = np.zeros(n_a, dtype=np.bool_)
        if allow_low_quality:
            seen[:] = -1
            unmatched = np.flatnonzero(best_gt == f32(0.0))  # such a gt's best is 0: every anchor at IoU 0
            for a in range(n_a):
                for g in unmatched:
                    if _iou(gt, g, area_g[g], anchors, a, area_a[a]) == f32(0.0):
                        low_quality[a] = True
                if low_quality[a]:
                    continue
                cx0, cx1, cy0, cy1 = _cells(anchors[a], x0, y0, size, nx, ny)
                for cy in range(cy0, cy1 + 1):
                    for cx in range(cx0, cx1 + 1):
                        for k in range(starts[cy * nx + cx], starts[cy * nx + cx + 1]):
                            g = items[k]
                            if seen[g] == a:
                                continue
                            seen[g] = a
                            if best_gt[g] > f32(0.0) and _iou(gt, g, area_g[g], anchors, a, area_a[a]) == best_gt[g]:
                                low_quality[a] = True
        for a in range(n_a):
            if low_quality[a]:
                continue
            if best_val[a] < low:
                out[a] = -1
            elif best_val[a] < high:
                out[a] = -2

    return match
