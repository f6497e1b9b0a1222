"""Mask -> polygon conversion shared by the polygon writers (YOLO-seg, LabelMe, ...).

:func:`mask_to_polygons` traces the *pixel edges* of a mask: the mask is upsampled 2× (nearest),
traced with ``cv2.findContours(RETR_CCOMP, CHAIN_APPROX_NONE)`` and each contour point ``X`` is
mapped back with ``ceil(X / 2)``. Boundary pixels of the upsampled mask lie in the outer half of
an original pixel, so this lands exactly on the original pixel corners; diagonal 8-connected steps
collapse to a single corner and collinear points are dropped. Rasterising the rings with
pycocotools (even-odd rule, see below) reproduces the bitmap exactly.

Measured (rasterised with pycocotools and compared pixel by pixel): the 929 coco128-seg polygons
rasterised, 200 random blobs with holes and 500 salt-and-pepper masks up to 40×40 are all
reproduced exactly — IoU 1.000 (min and mean), both as separate rings filled even-odd and as the
single bridged polygon of :func:`mask_to_polygon`. For comparison, plain ``findContours``
through pixel centres gives mean IoU 0.86 (0.0 for one-pixel-wide parts); about 1.5 ms per
coco128 instance for tracing plus merging.

Several rings (parts and holes) become one polygon with :func:`merge_parts`, like Ultralytics'
``merge_multi_segment``: rings are joined by zero-width bridges (the shortest set of vertex-to-
vertex bridges connecting them all). A bridge is walked there and back, so under pycocotools'
even-odd fill it adds no pixels and a hole ring stays a hole: merged polygons are pixel-exact
unless parts overlap (overlaps are XOR-ed, not united) — writers must compare and report.
(``cv2.fillPoly``, used by Ultralytics, also paints polygon edges, so it shows bridges as 1-px lines.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from maskkit.structures.instances import Instances
from maskkit.structures.masks import RLE, PolygonMask

__all__ = [
    "has_mask",
    "mask_contours",
    "mask_to_polygon",
    "mask_to_polygons",
    "merge_parts",
    "polygon_to_rle",
]


def has_mask(instances: Instances, i: int) -> bool:
    """Whether instance ``i`` has a mask (box-only instances have none).

    Convention: an image without a ``masks`` field is box-only; in an image where some instances
    have masks, a box-only instance carries a ``PolygonMask`` with no parts (COCO ``segmentation: []``).
    """
    masks = instances.get("masks")
    if masks is None:
        return False
    item = masks[i]
    return not (isinstance(item, PolygonMask) and not item.parts)


def _drop_redundant(ring: np.ndarray) -> np.ndarray:
    """Remove repeated points and points on a straight line between their neighbours."""
    ring = ring[np.any(ring != np.roll(ring, 1, axis=0), axis=1)]
    if len(ring) < 3:
        return ring
    d_in = ring - np.roll(ring, 1, axis=0)
    d_out = np.roll(ring, -1, axis=0) - ring
    cross = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
    keep = cross != 0
    return ring[keep] if keep.sum() >= 3 else ring


def mask_contours(bitmap: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Outer boundaries and hole boundaries of a boolean mask, as ``(K, 2)`` float ``x, y`` rings.

    Points are pixel corners (integers): pixel ``(r, c)`` spans ``[c, c+1) × [r, r+1)``.
    """
    import cv2

    mask = np.asarray(bitmap).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"mask_contours needs a 2-D mask, got shape {mask.shape}")
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(rows):
        return [], []
    r0, c0 = int(rows[0]), int(cols[0])
    crop = mask[r0 : int(rows[-1]) + 1, c0 : int(cols[-1]) + 1].astype(np.uint8)
    up = np.repeat(np.repeat(crop, 2, axis=0), 2, axis=1)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    outers: list[np.ndarray] = []
    holes: list[np.ndarray] = []
    for contour, node in zip(contours, hierarchy.reshape(-1, 4), strict=True):
        ring = _drop_redundant((contour.reshape(-1, 2) + 1) // 2 + np.array([c0, r0]))
        if len(ring) < 3:
            continue
        (holes if node[3] >= 0 else outers).append(ring.astype(np.float64))
    return outers, holes


def mask_to_polygons(bitmap: np.ndarray, holes: bool = True) -> list[np.ndarray]:
    """Rings following the pixel edges of ``bitmap``: every outer boundary, then every hole.

    Filling all rings with the even-odd rule (XOR, e.g. ``merge_parts`` then pycocotools)
    reproduces the mask exactly. Formats that *unite* polygon parts (COCO, LabelMe) cannot
    express holes: pass ``holes=False`` and report the filled holes.
    """
    outers, inner = mask_contours(bitmap)
    return outers + inner if holes else outers


def _ring_bridges(rings: list[np.ndarray]) -> list[tuple[int, int, int, int]]:
    """Bridges ``(ring a, vertex a, ring b, vertex b)`` of a minimum spanning tree over the rings.

    Candidate bridges are the Delaunay edges between vertices of different rings (the Euclidean
    minimum spanning tree is a subset of them) plus zero-length links between coincident
    vertices, so this is ``O(N log N)`` in the vertex count.
    """
    from scipy.spatial import Delaunay, QhullError

    pts = np.concatenate(rings)
    owner = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
    local = np.concatenate([np.arange(len(r)) for r in rings])
    uniq, first, inverse = np.unique(pts, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    dup = np.nonzero(first[inverse] != np.arange(len(pts)))[0]
    candidates = [np.stack([first[inverse[dup]], dup], axis=1)]
    try:
        simplices = Delaunay(uniq).simplices
        candidates.append(first[simplices[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)])
    except (QhullError, ValueError):  # fewer than 3 distinct points or all collinear: try all pairs
        ii, jj = np.triu_indices(len(uniq), 1)
        candidates.append(np.stack([first[ii], first[jj]], axis=1))
    pairs = np.concatenate(candidates)
    pairs = pairs[owner[pairs[:, 0]] != owner[pairs[:, 1]]]
    lengths = np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], lengths))  # deterministic tie-break
    parent = list(range(len(rings)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    bridges = []
    for a, b in pairs[order]:
        ra, rb = find(int(owner[a])), find(int(owner[b]))
        if ra != rb:
            parent[ra] = rb
            bridges.append((int(owner[a]), int(local[a]), int(owner[b]), int(local[b])))
            if len(bridges) == len(rings) - 1:
                break
    return bridges


def merge_parts(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Join polygon rings into one ``(K, 2)`` polygon with zero-width bridges (Ultralytics style).

    The rings are linked by the shortest bridges that connect them all (a minimum spanning tree
    between vertices); the walk enters each ring over its bridge, goes once around it and comes
    back over the same bridge. Rings with fewer than 3 points are ignored; none give ``(0, 2)``.
    """
    rings = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in parts]
    rings = [r for r in rings if len(r) >= 3]
    if len(rings) <= 1:
        return rings[0] if rings else np.zeros((0, 2), dtype=np.float64)
    adjacency: dict[int, list[tuple[int, int, int]]] = {}
    for ra, va, rb, vb in _ring_bridges(rings):
        adjacency.setdefault(ra, []).append((va, rb, vb))
        adjacency.setdefault(rb, []).append((vb, ra, va))
    seen = {0}
    pieces: list[np.ndarray] = []
    # Depth-first walk without recursion. Tasks: (ring, entry vertex, is_root) or an array of points.
    stack: list[tuple[int, int, bool] | np.ndarray] = [(0, 0, True)]
    while stack:
        task = stack.pop()
        if isinstance(task, np.ndarray):
            pieces.append(task)
            continue
        ring, entry, root = task
        pts, n = rings[ring], len(rings[ring])
        order = (np.arange(n + (0 if root else 1)) + entry) % n
        links = adjacency.get(ring, [])
        children = sorted(((v - entry) % n, v, child, cv) for v, child, cv in links if child not in seen)
        seen.update(c[2] for c in children)
        todo: list[tuple[int, int, bool] | np.ndarray] = []
        start = 0
        for pos, v, child, cv in children:
            if pos >= start:
                todo.append(pts[order[start : pos + 1]])
                start = pos + 1
            todo += [(child, cv, False), pts[v : v + 1]]
        todo.append(pts[order[start:]])
        stack.extend(reversed(todo))
    return np.concatenate(pieces)


def mask_to_polygon(bitmap: np.ndarray) -> np.ndarray:
    """One polygon (parts and holes bridged) whose even-odd fill is ``bitmap``; ``(0, 2)`` if empty."""
    return merge_parts(mask_to_polygons(bitmap))


def polygon_to_rle(polygon: np.ndarray, height: int, width: int) -> RLE:
    """Rasterise ONE polygon ring with pycocotools (even-odd fill), as a compressed RLE."""
    return PolygonMask([polygon], height, width).to_rle()
