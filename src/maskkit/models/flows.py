"""Flow fields (Cellpose, Stringer et al. 2021): diffusion-flow targets, flow following and end-point clustering.

* :func:`diffusion_flows`: per instance, heat diffuses from a centre pixel (the mask pixel nearest to its
  centroid, so it lies inside even non-convex shapes) over the mask pixels of its bounding crop: ``2 (h + w)``
  iterations of adding one unit at the centre, then replacing every mask pixel by the mean of its 3 x 3
  neighbourhood, where pixels outside the mask stay 0 (an absorbing outline). The flow is the central-difference
  gradient of ``log(1 + T)``, normalised to unit length: it points along the mask towards the centre, also
  around bends. One Numba kernel for all instances (bounding crops only); a 256 x 256 crop with 30 nuclei takes
  a few milliseconds.
* :func:`follow_flows`: Euler integration of the foreground pixels' positions through the (bilinearly
  interpolated) flow field, vectorised over all pixels with ``grid_sample`` (one step per iteration moves up to
  one pixel).
* :func:`cluster_endpoints`: the end points' histogram, box-smoothed over 3 x 3; its local maxima over 5 x 5
  with at least ``min_count`` end points seed a watershed of the smoothed histogram over its support; every
  pixel takes the basin its end point lies in (end points in a basin without a seed: background).
* :func:`flow_errors`: per instance, the mean squared difference between the predicted flows and the flows of
  the instance's own mask (:func:`diffusion_flows`): implausible shapes have a large error.

This module imports Numba: the models import it lazily, when they first compute targets or decode.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.measure import label as label_components
from skimage.segmentation import watershed

_jit = numba.njit(cache=True, nogil=True)


@_jit
def _diffusion_kernel(ids: np.ndarray, n: int, out: np.ndarray) -> None:  # pragma: no cover (compiled)
    height, width = ids.shape
    y0 = np.full(n + 1, height, np.int64)
    y1 = np.full(n + 1, -1, np.int64)
    x0 = np.full(n + 1, width, np.int64)
    x1 = np.full(n + 1, -1, np.int64)
    sy = np.zeros(n + 1)
    sx = np.zeros(n + 1)
    count = np.zeros(n + 1, np.int64)
    for i in range(height):
        for j in range(width):
            v = ids[i, j]
            if v > 0:
                y0[v] = min(y0[v], i)
                y1[v] = max(y1[v], i)
                x0[v] = min(x0[v], j)
                x1[v] = max(x1[v], j)
                sy[v] += i
                sx[v] += j
                count[v] += 1
    for v in range(1, n + 1):
        m = count[v]
        if m == 0:
            continue
        h = y1[v] - y0[v] + 1
        w = x1[v] - x0[v] + 1
        my, mx = sy[v] / m, sx[v] / m
        ys = np.empty(m, np.int64)
        xs = np.empty(m, np.int64)
        p = 0
        best = np.inf
        cy, cx = 0, 0
        for i in range(y0[v], y1[v] + 1):
            for j in range(x0[v], x1[v] + 1):
                if ids[i, j] == v:
                    ys[p] = i - y0[v] + 1  # crop coordinates with a 1 px zero margin
                    xs[p] = j - x0[v] + 1
                    p += 1
                    d = (i - my) ** 2 + (j - mx) ** 2
                    if d < best:
                        best = d
                        cy, cx = i - y0[v] + 1, j - x0[v] + 1
        heat = np.zeros((h + 2, w + 2))
        nxt = np.zeros((h + 2, w + 2))
        for _ in range(2 * (h + w)):
            heat[cy, cx] += 1.0
            for q in range(m):
                y, x = ys[q], xs[q]
                nxt[y, x] = (heat[y - 1, x - 1] + heat[y - 1, x] + heat[y - 1, x + 1] + heat[y, x - 1] + heat[y, x]
                             + heat[y, x + 1] + heat[y + 1, x - 1] + heat[y + 1, x] + heat[y + 1, x + 1]) / 9.0
            for q in range(m):
                heat[ys[q], xs[q]] = nxt[ys[q], xs[q]]
        for q in range(m):
            heat[ys[q], xs[q]] = math.log(1.0 + heat[ys[q], xs[q]])
        for q in range(m):
            y, x = ys[q], xs[q]
            dy = heat[y + 1, x] - heat[y - 1, x]
            dx = heat[y, x + 1] - heat[y, x - 1]
            norm = math.sqrt(dy * dy + dx * dx)
            if norm > 0.0:
                out[0, y - 1 + y0[v], x - 1 + x0[v]] = dy / norm
                out[1, y - 1 + y0[v], x - 1 + x0[v]] = dx / norm


def diffusion_flows(ids: np.ndarray) -> np.ndarray:
    """``2 x H x W`` float32 unit flows ``(dy, dx)`` of the instance label map ``ids`` (0 on the background and at
    each centre); see the module docstring."""
    labels = np.ascontiguousarray(ids, dtype=np.int32)
    out = np.zeros((2, *labels.shape), np.float32)
    n = int(labels.max()) if labels.size else 0
    if n > 0:
        _diffusion_kernel(labels, n, out)
    return out


def follow_flows(flows: torch.Tensor, fg: np.ndarray, steps: int) -> np.ndarray:
    """End points ``N x 2`` (y, x; float32) after ``steps`` Euler steps through ``flows`` (``2 x H x W``, ``(dy,
    dx)`` per pixel) of the ``N`` foreground pixels of ``fg`` (in ``np.nonzero`` order)."""
    h, w = fg.shape
    start = np.stack(np.nonzero(fg), 1).astype(np.float32)
    if not len(start) or steps <= 0:
        return start
    pos = torch.from_numpy(start)
    field = flows.detach().float().cpu()[None]  # 1 x 2 x H x W
    # grid_sample coordinates (align_corners=True): -1 at the first pixel centre, +1 at the last
    scale = torch.tensor([2.0 / max(h - 1, 1), 2.0 / max(w - 1, 1)])
    upper = torch.tensor([h - 1.0, w - 1.0])
    for _ in range(int(steps)):
        grid = (pos * scale - 1.0).flip(-1)[None, None]  # 1 x 1 x N x 2 as (x, y)
        step = F.grid_sample(field, grid, mode="bilinear", align_corners=True)[0, :, 0].T  # N x 2 (dy, dx)
        pos = torch.minimum(torch.clamp(pos + step, min=0.0), upper)
    return pos.numpy()


def cluster_endpoints(ends: np.ndarray, fg: np.ndarray, min_count: int = 3) -> np.ndarray:
    """The ``H x W`` int32 instance map of foreground pixels (``fg``, in ``np.nonzero`` order of ``ends``) grouped
    by where their flows end; see the module docstring."""
    h, w = fg.shape
    labels = np.zeros((h, w), np.int32)
    if not len(ends):
        return labels
    iy = np.clip(np.rint(ends[:, 0]).astype(np.int64), 0, h - 1)
    ix = np.clip(np.rint(ends[:, 1]).astype(np.int64), 0, w - 1)
    hist = np.bincount(iy * w + ix, minlength=h * w).reshape(h, w).astype(np.float32)
    smooth = ndimage.uniform_filter(hist, size=3, mode="constant") * 9.0
    seeds = (smooth == ndimage.maximum_filter(smooth, size=5, mode="constant")) & (smooth >= min_count)
    markers = label_components(seeds, connectivity=2).astype(np.int32)
    if not markers.any():
        return labels
    basins = watershed(-smooth, markers, mask=smooth > 0)
    labels[fg] = basins[iy, ix]
    return labels


def flow_errors(labels: np.ndarray, flows: np.ndarray, n: int) -> np.ndarray:
    """Per instance ``1..n`` of ``labels``, the mean over its pixels of ``|predicted - own-mask flow|^2``
    (``flows``: the predicted ``2 x H x W`` unit flows)."""
    if n == 0:
        return np.zeros(0)
    own = diffusion_flows(labels)
    sq = ((np.asarray(flows, np.float32) - own) ** 2).sum(0)
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:]
    sums = np.bincount(flat, weights=sq.ravel(), minlength=n + 1)[1:]
    return sums / np.maximum(counts, 1)
