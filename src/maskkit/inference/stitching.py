"""Stitching per-tile instance predictions into whole-image instances by mask overlap.

The design (used by :func:`maskkit.inference.tiling.predict_tiled`):

* **Ownership.** Every pixel is *owned* by exactly one tile: the overlap between two neighbouring
  tiles is cut in the middle, so each tile owns its ``core`` rectangle (``Tile.core``), which lies at
  least ``overlap / 2`` pixels from any of the tile's inner borders. A tile's prediction is trusted
  only in its core, where the model saw enough context; the noisy strip along a tile's inner
  border (truncated objects, eroded or dilated edges, spurious slivers) never reaches the output.
* **Fragments.** Each predicted mask of a tile is a *fragment*: a boolean crop plus its offset in
  the full image (never a full-size array). Its contribution to the output is its core part,
  encoded right away as a full-image RLE.
* **Matching.** Two fragments of different tiles are the same object when, inside the *trusted
  zone* ``Z`` of the two tiles (the intersection of their windows, less a ``margin`` along each
  tile's inner borders, so it still contains the seam), their masks overlap: ``|f ∩ g ∩ Z| /
  min(|f ∩ Z|, |g ∩ Z|) >= match_threshold`` (intersection over the smaller area, both clipped to
  ``Z``: the part of an object one tile sees truncated matches the whole object seen by the other,
  and a dilated or eroded edge along a tile border is no evidence). Only objects crossing a seam
  need to match: one that stays on one side is owned whole by that side's tile, and the other
  tile's view of it has no core part. Matches are joined with union-find,
  so an object spanning 3+ tiles (longer than the overlap, or sitting on a tile corner) is merged once.
  Duplicates lying entirely inside an overlap zone match the same way.
* **Conflicts.** When one fragment ``x`` matches several fragments of the same other tile (one
  tile sees one object where the other sees two), the tile owning more of ``x``'s pixels decides:
  ``x``'s own tile -> merge them all (e.g. a U-shaped object whose arms only join outside the other
  tile); the other tile -> keep only the best match (e.g. two touching cells merged by a truncated view).
* **Output.** An object's mask is the union of its fragments' core parts (``pycocotools`` RLE merge,
  never dense); its score is the core-area-weighted mean of the fragment scores, its label the
  score x area weighted vote. Objects whose core parts are all empty (seen only in strips owned by
  tiles that did not detect them) are dropped. The flip side of trusting the owner: an object that
  one tile misses entirely comes out cut at that tile's core boundary.

Memory: fragment crops are freed as soon as every tile overlapping theirs has been added, so
at any time only about one row of tiles' crops is held, plus the output RLEs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pycocotools import mask as mask_utils

from maskkit.errors import MaskkitError
from maskkit.structures import RLE, Instances, Masks
from maskkit.structures.masks import BitMask
from maskkit.structures.rle import counts_to_crop, crop_to_rle, uncompressed_counts


class TileLike(Protocol):
    """What the stitcher needs of a tile: its window, its owned core, and its index (read-only)."""

    @property
    def index(self) -> int: ...

    @property
    def y0(self) -> int: ...

    @property
    def x0(self) -> int: ...

    @property
    def y1(self) -> int: ...

    @property
    def x1(self) -> int: ...

    @property
    def core(self) -> tuple[int, int, int, int]: ...


def mask_crops(masks: Masks) -> list[tuple[int, int, np.ndarray] | None]:
    """Each mask as ``(y0, x0, crop)``: its tight bounding box crop (``None`` when empty)."""
    out: list[tuple[int, int, np.ndarray] | None] = [None] * len(masks)
    rle_idx = []
    for i, item in enumerate(masks.items):
        if isinstance(item, BitMask):
            ys, xs = np.nonzero(item.array.any(axis=1))[0], np.nonzero(item.array.any(axis=0))[0]
            if len(ys):
                out[i] = (int(ys[0]), int(xs[0]), item.array[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1].copy())
        else:
            rle_idx.append(i)
    if rle_idx:
        rles = [masks.rle(i) for i in rle_idx]
        boxes = mask_utils.toBbox(rles).reshape(-1, 4).astype(np.int64)
        for i, counts, (x, y, bw, bh) in zip(rle_idx, uncompressed_counts(rles), boxes, strict=True):
            if bw > 0 and bh > 0:
                out[i] = (int(y), int(x), counts_to_crop(counts, masks.height, (y, x, y + bh, x + bw)))
    return out


# -- the stitcher ----------------------------------------------------------------------------------------
@dataclass(eq=False, slots=True)
class _Fragment:
    tile: int
    y0: int
    x0: int
    crop: np.ndarray | None  # freed once every tile overlapping this one has been added
    score: float
    label: int
    core_rle: RLE | None
    core_area: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        assert self.crop is not None
        return self.y0, self.x0, self.y0 + self.crop.shape[0], self.x0 + self.crop.shape[1]

    def window(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """The crop restricted to a global ``(y0, x0, y1, x1)`` box (clipped to the crop)."""
        assert self.crop is not None
        y0, x0, y1, x1 = box
        return self.crop[max(y0 - self.y0, 0):max(y1 - self.y0, 0), max(x0 - self.x0, 0):max(x1 - self.x0, 0)]


def _intersect(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    y0, x0, y1, x1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (y0, x0, y1, x1) if y1 > y0 and x1 > x0 else None


def _window(t: TileLike) -> tuple[int, int, int, int]:
    return t.y0, t.x0, t.y1, t.x1


class Stitcher:
    """Collects per-tile predictions (:meth:`add`) and merges them into full-image instances (:meth:`result`).

    ``tiles`` is the complete tile list (windows and cores, e.g. from :func:`~maskkit.inference.tiling.iter_tiles`);
    tiles may be added in any order, each once. ``stats`` counts tiles, fragments, matches and conflicts.
    """

    def __init__(
        self, height: int, width: int, tiles: Sequence[TileLike], match_threshold: float = 0.5, margin: int = 0
    ) -> None:
        self.height, self.width = int(height), int(width)
        self.tiles = {t.index: t for t in tiles}
        self.match_threshold = float(match_threshold)
        self.margin = int(margin)
        self._frags: list[_Fragment] = []
        self._parent: list[int] = []
        self._by_tile: dict[int, list[int]] = {}
        win = np.array([_window(t) for t in tiles], dtype=np.int64).reshape(-1, 4)
        index = np.array([t.index for t in tiles], dtype=np.int64)
        self._neighbours: dict[int, list[int]] = {}
        for k, t in enumerate(tiles):  # tiles whose windows intersect this one's
            hit = (win[:, 0] < win[k, 2]) & (win[k, 0] < win[:, 2]) & (win[:, 1] < win[k, 3]) & (win[k, 1] < win[:, 3])
            hit[k] = False
            self._neighbours[t.index] = index[hit].tolist()
        self._waiting = {i: len(n) for i, n in self._neighbours.items()}  # neighbours not yet added
        self.stats = {"tiles": 0, "fragments": 0, "matches": 0, "conflicts": 0}

    # -- union-find -----------------------------------------------------------------------------------
    def _find(self, i: int) -> int:
        parent = self._parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    # -- adding tiles -----------------------------------------------------------------------------------
    def add(self, tile: TileLike, instances: Instances) -> None:
        """Add one tile's predictions (``Instances`` in the tile's coordinates, with ``masks``)."""
        if tile.index in self._by_tile:
            raise ValueError(f"tile {tile.index} was added twice")
        th, tw = tile.y1 - tile.y0, tile.x1 - tile.x0
        masks = instances.get("masks")
        if masks is None:
            raise MaskkitError("tiled prediction needs instance masks; the model predicts none (boxes only?)")
        if len(instances) and (masks.height, masks.width) != (th, tw):
            raise ValueError(f"predicted masks are {masks.height}x{masks.width}, the tile is {th}x{tw}")
        n = len(instances)
        scores = np.asarray(instances.get("scores", np.ones(n)), dtype=np.float64).reshape(-1)
        labels = np.asarray(instances.get("labels", np.zeros(n)), dtype=np.int64).reshape(-1)
        ids = []
        for k, item in enumerate(mask_crops(masks) if n else []):
            if item is None:
                continue
            y, x, crop = item
            frag = _Fragment(tile.index, tile.y0 + y, tile.x0 + x, crop, float(scores[k]), int(labels[k]), None, 0)
            core = _intersect(frag.box, tile.core)
            if core is not None:
                part = frag.window(core)
                frag.core_area = int(np.count_nonzero(part))
                if frag.core_area:
                    frag.core_rle = crop_to_rle(part, core[0], core[1], self.height, self.width)
            ids.append(len(self._frags))
            self._parent.append(len(self._frags))
            self._frags.append(frag)
        self._by_tile[tile.index] = ids
        self.stats["tiles"] += 1
        self.stats["fragments"] += len(ids)
        for u in self._neighbours[tile.index]:
            if u in self._by_tile:
                self._match(self.tiles[u], tile)
                self._release(u)
        self._waiting[tile.index] = sum(u not in self._by_tile for u in self._neighbours[tile.index])
        if not self._waiting[tile.index]:
            self._free(tile.index)

    def _release(self, u: int) -> None:
        self._waiting[u] -= 1
        if self._waiting[u] == 0:
            self._free(u)

    def _free(self, t: int) -> None:
        for i in self._by_tile[t]:
            self._frags[i].crop = None

    def _match(self, a: TileLike, b: TileLike) -> None:
        """Match the fragments of two overlapping tiles inside their common window."""
        zone = _intersect(_window(a), _window(b))
        if zone is None:
            return
        m = self.margin  # evidence only from the part of the overlap that both tiles see well
        y0, x0, y1, x1 = zone
        zone = _intersect((y0 + m if y0 else y0, x0 + m if x0 else x0, y1 - m if y1 < self.height else y1,
                           x1 - m if x1 < self.width else x1), zone)
        if zone is None:
            return
        fa = [i for i in self._by_tile[a.index] if _intersect(self._frags[i].box, zone)]
        fb = [i for i in self._by_tile[b.index] if _intersect(self._frags[i].box, zone)]
        if not fa or not fb:
            return
        za = {i: int(np.count_nonzero(self._frags[i].window(zone))) for i in fa}
        zb = {j: int(np.count_nonzero(self._frags[j].window(zone))) for j in fb}
        ba = np.array([self._frags[i].box for i in fa])
        bb = np.array([self._frags[j].box for j in fb])
        cand = np.nonzero(
            (np.maximum(ba[:, None, 0], bb[None, :, 0]) < np.minimum(ba[:, None, 2], bb[None, :, 2]))
            & (np.maximum(ba[:, None, 1], bb[None, :, 1]) < np.minimum(ba[:, None, 3], bb[None, :, 3]))
        )
        pairs: dict[tuple[int, int], int] = {}
        for p, q in zip(*cand, strict=True):
            i, j = fa[p], fb[q]
            both = _intersect(self._frags[i].box, self._frags[j].box)
            box = _intersect(both, zone) if both else None
            if box is None:
                continue
            inter = int(np.count_nonzero(self._frags[i].window(box) & self._frags[j].window(box)))
            smaller = min(za[i], zb[j])
            if inter and smaller and inter / smaller >= self.match_threshold:
                pairs[(i, j)] = inter
        pairs = self._resolve(pairs, a, b, side=0)
        pairs = self._resolve(pairs, b, a, side=1)
        for i, j in pairs:
            self._union(i, j)
        self.stats["matches"] += len(pairs)

    def _resolve(self, pairs: dict[tuple[int, int], int], own: TileLike, other: TileLike,
                 side: int) -> dict[tuple[int, int], int]:
        """One fragment of ``own`` matching several of ``other``: the tile owning more of it decides."""
        partners: dict[int, list[tuple[int, int]]] = {}
        for pair in pairs:
            partners.setdefault(pair[side], []).append(pair)
        for x, its in partners.items():
            if len(its) < 2:
                continue
            self.stats["conflicts"] += 1
            frag = self._frags[x]
            mine = _intersect(frag.box, own.core)
            theirs = _intersect(frag.box, other.core)
            n_mine = int(np.count_nonzero(frag.window(mine))) if mine else 0
            n_theirs = int(np.count_nonzero(frag.window(theirs))) if theirs else 0
            if n_theirs > n_mine:  # the other tile's view (separate objects) wins: keep the best match only
                best = max(its, key=lambda pr: pairs[pr])
                for pr in its:
                    if pr != best:
                        del pairs[pr]
        return pairs

    # -- the result -------------------------------------------------------------------------------------
    def result(self) -> Instances:
        """Merged instances in full-image coordinates (RLE masks), sorted by decreasing score."""
        groups: dict[int, list[int]] = {}
        for i, frag in enumerate(self._frags):
            if frag.core_area:
                groups.setdefault(self._find(i), []).append(i)
        rles, scores, labels = [], [], []
        for members in groups.values():
            frags = [self._frags[i] for i in members]
            area = np.array([f.core_area for f in frags], dtype=np.float64)
            score = np.array([f.score for f in frags])
            votes: dict[int, float] = {}
            for f, a, s in zip(frags, area, score, strict=True):
                votes[f.label] = votes.get(f.label, 0.0) + a * s
            labels.append(max(sorted(votes), key=lambda k: votes[k]))
            scores.append(float((area * score).sum() / area.sum()))
            parts = [f.core_rle for f in frags]
            rles.append(parts[0] if len(parts) == 1 else mask_utils.merge(parts, intersect=False))
        if not rles:
            return Instances.from_masks(Masks.empty(self.height, self.width), np.zeros(0, np.int64), np.zeros(0))
        order = np.argsort(-np.asarray(scores), kind="stable")
        masks = Masks.from_rles([rles[i] for i in order], self.height, self.width)
        return Instances.from_masks(masks, np.asarray(labels)[order], np.asarray(scores)[order])
