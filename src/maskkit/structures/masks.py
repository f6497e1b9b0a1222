"""Per-instance masks that keep their source representation and convert lazily.

Three representations exist, one class each:

* :class:`PolygonMask` – one or more polygon parts (COCO ``segmentation`` lists, LabelMe shapes).
* :class:`RLEMask` – COCO run-length encoding, compressed (``counts`` string/bytes) or
  uncompressed (``counts`` list of ints). RLE is the canonical pixel form.
* :class:`BitMask` – a dense boolean ``H×W`` array.

:class:`Masks` is the per-image container (one entry per instance). Conversions go through
pycocotools so that rasterisation is identical to what COCO evaluation uses, and nothing ever
builds a dense ``N×H×W`` array unless asked (:meth:`Masks.to_bitmaps`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from maskkit.structures.rle import RLE as RLE
from maskkit.structures.rle import empty_rle, encode_bitmap, rle_areas, rles_to_label_image


def _as_parts(parts: Iterable[Any]) -> list[np.ndarray]:
    out = []
    for p in parts:
        if type(p) is np.ndarray and p.dtype == np.float64 and p.ndim == 2 and p.shape[1] == 2:
            out.append(p)  # already (K, 2) float64 (readers hand over row slices of one array): no copy
        elif len(p):
            out.append(np.asarray(p, dtype=np.float64).reshape(-1, 2))
        else:
            out.append(np.zeros((0, 2)))
    return out


@dataclass(eq=False)
class PolygonMask:
    """A mask given by polygon parts; each part is a ``(K, 2)`` float array of ``x, y`` points.

    Several parts form one object (an occluded object drawn in pieces). Parts are filled with the
    even-odd rule of pycocotools and united, so COCO polygon semantics are kept exactly.
    """

    parts: list[np.ndarray]
    height: int
    width: int

    def __init__(self, parts: Iterable[Any], height: int, width: int) -> None:
        self.parts = _as_parts(parts)
        self.height = int(height)
        self.width = int(width)

    @classmethod
    def from_coco(cls, segmentation: list[list[float]], height: int, width: int) -> PolygonMask:
        """Build from a COCO polygon list ``[[x1, y1, x2, y2, ...], ...]``."""
        return cls([np.asarray(s, dtype=np.float64).reshape(-1, 2) for s in segmentation], height, width)

    def to_coco(self) -> list[list[float]]:
        """COCO polygon list (flat ``x, y`` lists)."""
        return [p.reshape(-1).tolist() for p in self.parts]  # parts are float64: Python floats

    def valid_parts(self) -> list[np.ndarray]:
        """Parts with at least 3 points (fewer cannot enclose area) and finite coordinates."""
        return [p for p in self.parts if len(p) >= 3 and np.isfinite(p).all()]

    def to_rle(self) -> RLE:
        # pycocotools allocates per pixel of every edge: clip absurd coordinates (garbage input) so that
        # they cannot exhaust memory; coordinates within 8 image sizes of the image are never touched.
        limit = 8 * max(self.height, self.width, 1) + 64
        parts = [np.clip(p, -limit, limit).reshape(-1).tolist() for p in self.valid_parts()]
        if not parts:
            return empty_rle(self.height, self.width)
        # A flat list of exactly 4 numbers would be read as a box by frPyObjects; valid parts have >= 6.
        rles: list[RLE] = mask_utils.frPyObjects(parts, self.height, self.width)
        merged: RLE = mask_utils.merge(rles) if len(rles) > 1 else rles[0]
        return merged


@dataclass(eq=False)
class RLEMask:
    """A COCO RLE mask, compressed or uncompressed (as read; compressed on demand)."""

    rle: RLE

    @property
    def height(self) -> int:
        return int(self.rle["size"][0])

    @property
    def width(self) -> int:
        return int(self.rle["size"][1])

    @property
    def compressed(self) -> bool:
        return not isinstance(self.rle["counts"], list)

    def to_rle(self) -> RLE:
        rle = self.rle
        if isinstance(rle["counts"], list):
            compressed: RLE = mask_utils.frPyObjects(rle, self.height, self.width)
            return compressed
        if isinstance(rle["counts"], str):
            return {"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}
        return rle


@dataclass(eq=False)
class BitMask:
    """A dense boolean mask of the full image size."""

    array: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array).astype(bool, copy=False)
        if self.array.ndim != 2:
            raise ValueError(f"BitMask needs a 2-D array, got shape {self.array.shape}")

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    def to_rle(self) -> RLE:
        return encode_bitmap(self.array)


MaskItem = PolygonMask | RLEMask | BitMask


def rle_to_string(rle: RLE) -> RLE:
    """Compressed RLE with ``counts`` as ``str`` (JSON-serialisable)."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def decode_rle(rle: RLE) -> np.ndarray:
    """Decode one compressed RLE to a boolean ``H×W`` array."""
    bitmap: np.ndarray = mask_utils.decode(rle).astype(bool)
    return bitmap


class Masks(Sequence[MaskItem]):
    """The masks of one image: a list of mask items of any representation, all of one size.

    Conversions are lazy and cached per item; the compressed RLE is the canonical pixel form.
    """

    def __init__(self, items: Iterable[MaskItem], height: int, width: int) -> None:
        self.items: list[MaskItem] = list(items)
        self.height = int(height)
        self.width = int(width)
        self._rle_cache: list[RLE | None] = [None] * len(self.items)
        for i, m in enumerate(self.items):
            if (m.height, m.width) != (self.height, self.width):
                raise ValueError(
                    f"mask {i} has size {m.height}x{m.width}, expected {self.height}x{self.width}"
                )

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_rles(cls, rles: Iterable[RLE], height: int, width: int) -> Masks:
        return cls([RLEMask(r) for r in rles], height, width)

    @classmethod
    def from_bitmaps(cls, bitmaps: np.ndarray | Iterable[np.ndarray], height: int, width: int) -> Masks:
        return cls([BitMask(b) for b in bitmaps], height, width)

    @classmethod
    def from_label_image(cls, labels: np.ndarray) -> tuple[Masks, np.ndarray]:
        """Split an instance-label image (0 = background) into masks; returns masks and their label ids."""
        ids = np.unique(labels)
        ids = ids[ids != 0]
        h, w = labels.shape[:2]
        return cls([BitMask(labels == i) for i in ids], h, w), ids

    @classmethod
    def empty(cls, height: int, width: int) -> Masks:
        return cls([], height, width)

    # -- sequence protocol --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[MaskItem]:
        return iter(self.items)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, int | np.integer):
            return self.items[int(index)]
        idx = _normalise_index(index, len(self))
        sub = Masks([self.items[i] for i in idx], self.height, self.width)
        sub._rle_cache = [self._rle_cache[i] for i in idx]
        return sub

    def __repr__(self) -> str:
        kinds = {type(m).__name__ for m in self.items}
        return f"Masks(n={len(self)}, size={self.height}x{self.width}, kinds={sorted(kinds)})"

    @staticmethod
    def cat(masks: Sequence[Masks]) -> Masks:
        if not masks:
            raise ValueError("cannot concatenate an empty list of Masks")
        out = Masks([m for ms in masks for m in ms.items], masks[0].height, masks[0].width)
        out._rle_cache = [c for ms in masks for c in ms._rle_cache]
        return out

    # -- conversions --------------------------------------------------------------------------
    def rle(self, i: int) -> RLE:
        """Compressed RLE (``counts`` bytes) of instance ``i``, cached."""
        cached = self._rle_cache[i]
        if cached is None:
            cached = self.items[i].to_rle()
            self._rle_cache[i] = cached
        return cached

    def to_rles(self) -> list[RLE]:
        """Compressed RLEs of all instances."""
        return [self.rle(i) for i in range(len(self))]

    def bitmap(self, i: int) -> np.ndarray:
        """Dense boolean ``H×W`` mask of instance ``i``."""
        item = self.items[i]
        if isinstance(item, BitMask):
            return item.array
        return decode_rle(self.rle(i))

    def to_bitmaps(self, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Dense ``N×H×W`` boolean array, or its ``(y0, x0, y1, x1)`` window only (``N×(y1-y0)×(x1-x0)``).
        Memory grows with N×H×W: prefer RLE for large images."""
        y0, x0, y1, x1 = window if window is not None else (0, 0, self.height, self.width)
        if not len(self):
            return np.zeros((0, y1 - y0, x1 - x0), dtype=bool)
        stacked: np.ndarray = mask_utils.decode(self.to_rles())
        return np.moveaxis(stacked[y0:y1, x0:x1], -1, 0).astype(bool, order="C")

    def areas(self) -> np.ndarray:
        """Pixel areas (float64) of all instances."""
        return rle_areas(self.to_rles())

    def label_image(self, order: Sequence[int]) -> np.ndarray:
        """``H×W`` int32 image of instance index + 1, painting ``order`` in turn (later wins); from the RLEs."""
        return rles_to_label_image([self.rle(i) for i in order], [i + 1 for i in order], self.height, self.width)

    def decoded(self) -> Masks:
        """The same masks as dense :class:`BitMask` items (each decoded once here), RLEs cached so far kept.

        For consumers that need every mask as a bitmap several times; memory grows with N×H×W.
        """
        out = Masks([BitMask(self.bitmap(i)) for i in range(len(self))], self.height, self.width)
        out._rle_cache = list(self._rle_cache)
        return out

    def boxes(self) -> np.ndarray:
        """Tight XYXY boxes of the mask pixels (``(N, 4)`` float32; empty masks give zeros)."""
        if not len(self):
            return np.zeros((0, 4), dtype=np.float32)
        xywh: np.ndarray = mask_utils.toBbox(self.to_rles()).astype(np.float32).reshape(-1, 4)
        xywh[:, 2:] += xywh[:, :2]
        return xywh

    def crop_and_resize(self, boxes: np.ndarray, size: int) -> np.ndarray:
        """Crop each mask to its XYXY box and resize to ``size×size`` (float32 in [0, 1]).

        This is what mask heads are trained on; it decodes one instance at a time.
        """
        import cv2

        out = np.zeros((len(self), size, size), dtype=np.float32)
        for i, box in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
            x0, y0, x1, y1 = box
            w, h = max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)
            # Affine map from the box to the size×size grid, aligning pixel centres; bilinear sampling.
            sx, sy = size / w, size / h
            mat = np.array([[sx, 0, 0.5 * sx - 0.5 - x0 * sx], [0, sy, 0.5 * sy - 0.5 - y0 * sy]])
            src = self.bitmap(i).astype(np.float32)
            out[i] = cv2.warpAffine(src, mat, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
        return out

    def kinds(self) -> list[str]:
        """Representation name per instance: ``polygon``, ``rle`` or ``bitmap``."""
        names = {PolygonMask: "polygon", RLEMask: "rle", BitMask: "bitmap"}
        return [names[type(m)] for m in self.items]


def _normalise_index(index: Any, n: int) -> list[int]:
    if isinstance(index, slice):
        return list(range(n))[index]
    arr = np.asarray(index)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise IndexError(f"boolean index of shape {arr.shape} for {n} instances")
        return np.nonzero(arr)[0].tolist()
    return [int(i) if i >= 0 else int(i) + n for i in arr.reshape(-1)]


def masks_iou(a: Masks, b: Masks) -> np.ndarray:
    """Pairwise mask IoU (``len(a) × len(b)``) computed on RLE, never densely."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), dtype=np.float64)
    return np.asarray(mask_utils.iou(a.to_rles(), b.to_rles(), [0] * len(b)), dtype=np.float64)
