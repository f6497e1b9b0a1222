"""Star-convex polygons (StarDist, Schmidt et al. 2018): ray-distance targets and polygon NMS, as Numba kernels.

A star-convex polygon is a centre pixel and ``n`` distances along rays at the angles ``2 pi k / n``
(``k = 0..n-1``; ray ``k`` points along ``(dy, dx) = (sin, cos)`` of its angle, ``y`` down). Distances are in
pixels from the pixel centre to the object outline (pixel edges).

* :func:`star_distances`: for every object pixel of an instance label map, the distance along each ray to the
  outline: march in unit steps until the nearest pixel holds another label (or lies outside the image), then
  bisect that last step to 1/32 px. A disc of radius ``r`` gets ``r + 0.5`` from its centre along the axes.
* :func:`polygon_nms`: the candidates (a centre pixel, its rays and its object probability) sorted by
  probability; each one is rasterised (pixel centres inside its polygon; the ray sector of each pixel offset comes
  from a table, so no trigonometry per pixel) and accepted unless its IoU with an accepted
  polygon exceeds the threshold. Accepted polygons paint an instance map first come, first kept, so where
  two overlap the more probable one keeps the pixels (as StarDist renders them). The IoU with an accepted
  polygon counts the pixels it kept, so it is exact unless accepted polygons overlap each other.

Both kernels compile with Numba on first use (cached on disk). This module imports Numba: the models import it
lazily, when they first compute targets or decode.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)


def ray_angles(n_rays: int) -> np.ndarray:
    """The ``n_rays`` ray angles ``2 pi k / n`` (float64)."""
    return 2.0 * np.pi * np.arange(n_rays) / n_rays


@_jit
def _star_distances_kernel(ids: np.ndarray, sin: np.ndarray, cos: np.ndarray,
                           out: np.ndarray) -> None:  # pragma: no cover (compiled)
    height, width = ids.shape
    for i in range(height):
        for j in range(width):
            value = ids[i, j]
            if value == 0:
                continue
            for k in range(sin.shape[0]):
                dy, dx = sin[k], cos[k]
                t = 0.0
                while _same(ids, value, i + (t + 1.0) * dy, j + (t + 1.0) * dx):
                    t += 1.0
                lo, hi = t, t + 1.0  # inside at lo, outside at hi: bisect to 1/32 px
                for _ in range(5):
                    mid = 0.5 * (lo + hi)
                    if _same(ids, value, i + mid * dy, j + mid * dx):
                        lo = mid
                    else:
                        hi = mid
                out[k, i, j] = 0.5 * (lo + hi)


@_jit
def _same(ids: np.ndarray, value: int, y: float, x: float) -> bool:  # pragma: no cover (compiled)
    """Whether the pixel nearest to ``(y, x)`` lies in the image and holds ``value``."""
    ii = math.floor(y + 0.5)
    jj = math.floor(x + 0.5)
    return 0 <= ii < ids.shape[0] and 0 <= jj < ids.shape[1] and ids[ii, jj] == value


@_jit
def _inside(py: float, px: float, k: int, vy: np.ndarray, vx: np.ndarray) -> bool:  # pragma: no cover (compiled)
    """Whether the offset ``(py, px)`` from a polygon's centre, in the sector between rays ``k`` and ``k + 1``, lies
    inside the polygon of vertices ``(vy, vx)``: on the centre's side of the edge between those two vertices."""
    k2 = (k + 1) % vy.shape[0]
    ay, ax, ey, ex = vy[k], vx[k], vy[k2] - vy[k], vx[k2] - vx[k]
    side_o = ex * (-ay) - ey * (-ax)  # the sign of (b - a) x (p - a) against that of the centre, (b - a) x (0 - a)
    return side_o != 0.0 and (ex * (py - ay) - ey * (px - ax)) * side_o >= 0.0


@_jit
def _sectors(reach: int, n_rays: int) -> np.ndarray:  # pragma: no cover (compiled)
    """``(2 reach + 1)^2`` table: the ray sector ``k`` (angle in ``[2 pi k / n, 2 pi (k + 1) / n)``) of every
    integer offset from a centre (so the NMS needs no ``atan2`` per pixel)."""
    table = np.zeros((2 * reach + 1, 2 * reach + 1), np.int64)
    step = 2.0 * math.pi / n_rays
    for i in range(2 * reach + 1):
        for j in range(2 * reach + 1):
            theta = math.atan2(i - reach, j - reach)
            if theta < 0.0:
                theta += 2.0 * math.pi
            table[i, j] = int(theta / step) % n_rays
    return table


@_jit
def _polygon_nms_kernel(cy: np.ndarray, cx: np.ndarray, dists: np.ndarray, sin: np.ndarray, cos: np.ndarray,
                        threshold: float, min_area: int, labels: np.ndarray,
                        kept: np.ndarray) -> int:  # pragma: no cover (compiled)
    height, width = labels.shape
    n_rays = sin.shape[0]
    big = math.ceil(dists.max()) + 1
    sector = _sectors(big, n_rays)
    areas = np.zeros(cy.shape[0] + 1, np.int64)
    hits = np.zeros(cy.shape[0] + 1, np.int64)
    touched = np.zeros(cy.shape[0] + 1, np.int64)
    vy = np.empty(n_rays)
    vx = np.empty(n_rays)
    n_accepted = 0
    for c in range(cy.shape[0]):
        d = dists[c]
        reach = d.max()
        if reach <= 0.0:
            continue
        for k in range(n_rays):
            vy[k] = d[k] * sin[k]
            vx[k] = d[k] * cos[k]
        y0 = max(cy[c] - math.ceil(reach), 0)
        y1 = min(cy[c] + math.ceil(reach), height - 1)
        x0 = max(cx[c] - math.ceil(reach), 0)
        x1 = min(cx[c] + math.ceil(reach), width - 1)
        area = 0
        n_touched = 0
        for y in range(y0, y1 + 1):
            for x in range(x0, x1 + 1):
                py, px = y - cy[c], x - cx[c]
                if (py == 0 and px == 0) or _inside(py, px, sector[py + big, px + big], vy, vx):
                    area += 1
                    owner = labels[y, x]
                    if owner > 0:
                        if hits[owner] == 0:
                            touched[n_touched] = owner
                            n_touched += 1
                        hits[owner] += 1
        suppressed = area < max(min_area, 1)
        for t in range(n_touched):
            owner = touched[t]
            inter = hits[owner]
            if inter / (area + areas[owner] - inter) > threshold:
                suppressed = True
            hits[owner] = 0
        if suppressed:
            continue
        n_accepted += 1
        areas[n_accepted] = area
        kept[n_accepted - 1] = c
        for y in range(y0, y1 + 1):
            for x in range(x0, x1 + 1):
                py, px = y - cy[c], x - cx[c]
                if labels[y, x] == 0 and ((py == 0 and px == 0)
                                          or _inside(py, px, sector[py + big, px + big], vy, vx)):
                    labels[y, x] = n_accepted
    return n_accepted


def star_distances(ids: np.ndarray, n_rays: int = 32) -> np.ndarray:
    """``n_rays x H x W`` float32 distances from every object pixel of the label map ``ids`` to its outline along
    each ray (0 on the background); see the module docstring."""
    labels = np.ascontiguousarray(ids, dtype=np.int32)
    angles = ray_angles(n_rays)
    out = np.zeros((n_rays, *labels.shape), np.float32)
    _star_distances_kernel(labels, np.sin(angles), np.cos(angles), out)
    return out


def polygon_nms(centres: np.ndarray, dists: np.ndarray, probs: np.ndarray, shape: tuple[int, int],
                iou_threshold: float, min_area: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Greedy NMS of star-convex candidates, most probable first; returns the ``H x W`` int32 instance map of the
    accepted polygons (``1..n`` in order of acceptance) and the indices of the accepted candidates (``(n,)``).

    ``centres``: ``N x 2`` (y, x) pixels (rounded to integers); ``dists``: ``N x n_rays``; ``probs``: ``(N,)``.
    Polygons with fewer than ``min_area`` pixels are dropped before they can suppress others.
    """
    labels = np.zeros(shape, np.int32)
    if not len(probs):
        return labels, np.zeros(0, np.int64)
    order = np.argsort(-np.asarray(probs), kind="stable")
    c = np.rint(np.asarray(centres, np.float64)[order]).astype(np.int64).reshape(-1, 2)
    d = np.ascontiguousarray(np.asarray(dists, np.float64)[order].reshape(len(c), -1))
    angles = ray_angles(d.shape[1])
    kept = np.zeros(len(c), np.int64)
    n = int(_polygon_nms_kernel(np.ascontiguousarray(c[:, 0]), np.ascontiguousarray(c[:, 1]), d,
                                   np.sin(angles), np.cos(angles), float(iou_threshold), int(min_area), labels, kept))
    return labels, order[kept[:n]]
