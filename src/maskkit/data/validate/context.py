"""What the checks look at: options, per-image file facts, and lazy views of splits, images and instances.

Views compute derived values (mask RLE, area, tight box) once and cache them, so several checks
can share them. They never rasterise a mask whose data is broken (bad RLE counts, non-finite or
absurd polygon coordinates, a size that differs from the image): such masks get ``rle = None``
and the check for that problem reports it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from maskkit.data.annotations import AnnotationSet, Category, ImageRecord
from maskkit.structures import Instances, Masks, PolygonMask, RLEMask

T = TypeVar("T")


class Uninterpretable(Exception):
    """A record field of the wrong type or shape: reported as ``E200 invalid-annotation`` (a data error)."""


_FIELD_ERRORS = (TypeError, ValueError, IndexError, KeyError, OverflowError, AttributeError)


def _field(what: str, read: Callable[[], T]) -> T:
    """``read()``, turning a failure on garbage data into :class:`Uninterpretable` naming ``what``."""
    try:
        return read()
    except _FIELD_ERRORS as exc:
        raise Uninterpretable(f"{what} cannot be interpreted ({type(exc).__name__}: {exc})"[:300]) from None


@dataclass(frozen=True)
class ValidateOptions:
    """Thresholds of the checks."""

    box_iou: float = 0.7
    """Annotated box vs the mask's tight box: IoU below this is a mismatch..."""
    box_tolerance: float = 2.0
    """...and so is any side differing by more than this many pixels."""
    tiny_area: float = 4.0
    """Instances with fewer pixels than this (but more than zero) are tiny."""
    duplicate_iou: float = 0.95
    """Two same-class masks in one image overlapping more than this are duplicates."""
    phash_distance: int = 4
    """Perceptual-hash Hamming distance at or below which two images are near-duplicates."""
    outside_tolerance: float = 1.0
    """Coordinates up to this many pixels beyond the image border are accepted."""
    hashes: bool = True
    """Read image files to hash them (duplicate, near-duplicate and truncation checks)."""


@dataclass
class ImageFacts:
    """What reading an image file told us (header size, hashes); filled once per record."""

    path: Path | None
    """The image file, or ``None`` when the image is embedded in the annotation file."""
    exists: bool = True
    size: tuple[int, int] | None = None
    """``(height, width)`` from the header."""
    error: str | None = None
    """Why the header or pixels could not be read."""
    truncated: str | None = None
    outside_root: bool = False
    """The file resolves outside the dataset root: it was not read at all."""
    sha1: str | None = None
    phash: int | None = None
    crash: str | None = None
    """An unexpected exception while reading the facts (a bug: reported as an internal error)."""


def rle_counts_problem(rle: dict[str, Any]) -> str | None:
    """Why an RLE's ``counts`` are inconsistent with its ``size`` (``None`` when fine).

    Checked in Python before pycocotools sees the RLE: its decoder trusts the counts and
    would write past the mask for counts that sum to more than ``h*w``.
    """
    size = rle.get("size")
    if not isinstance(size, list | tuple) or len(size) != 2:
        return f"RLE size {size!r} is not [height, width]"
    h, w = (int(v) for v in size)
    if h < 0 or w < 0:
        return f"RLE size [{h}, {w}] is negative"
    counts = rle.get("counts")
    if isinstance(counts, list | tuple | np.ndarray):
        values = [int(c) for c in counts]
    elif isinstance(counts, str | bytes):
        raw = counts.encode("ascii") if isinstance(counts, str) else counts
        decoded = _decode_counts_string(raw)
        if decoded is None:
            return "RLE counts string is cut off mid-number"
        values = decoded
    else:
        return f"RLE counts of type {type(counts).__name__}"
    if any(v < 0 for v in values):
        return f"RLE has negative run lengths (first {min(values)})"
    total = sum(values)
    if total != h * w:
        return f"RLE run lengths sum to {total}, the {h}x{w} mask has {h * w} pixels"
    return None


def _decode_counts_string(s: bytes) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``)."""
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


@dataclass
class SplitContext:
    """One split: its name, annotation set, and the file facts of its images (by record index)."""

    name: str
    aset: AnnotationSet
    options: ValidateOptions
    facts: list[ImageFacts | None] = field(default_factory=list)

    @cached_property
    def categories(self) -> dict[int, Category]:
        return self.aset.category_by_id()

    @property
    def annotation_file(self) -> str | None:
        return str(self.aset.source) if self.aset.source is not None else None


@dataclass
class DatasetContext:
    """All splits, in the order given (train before val before test)."""

    splits: list[SplitContext]
    options: ValidateOptions
    problems: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """Problems of the dataset as a whole, by check name: ``(message, file)`` (e.g. a YAML without names)."""


class ImageContext:
    """One image record of a split, with its file facts and lazy instance views."""

    def __init__(self, split: SplitContext, index: int) -> None:
        self.split = split
        self.index = index
        self.record: ImageRecord = split.aset.images[index]
        self.options = split.options

    @property
    def facts(self) -> ImageFacts | None:
        return self.split.facts[self.index] if self.index < len(self.split.facts) else None

    @property
    def annotation_file(self) -> str | None:
        return self.record.source or self.split.annotation_file

    @property
    def image_file(self) -> str:
        facts = self.facts
        if facts is not None and facts.path is not None:
            return str(facts.path)
        try:
            return str(self.split.aset.image_root / self.record.file_name)
        except TypeError:  # a file name of the wrong type
            return str(self.record.file_name)

    @property
    def instances(self) -> Instances:
        return self.record.instances

    @cached_property
    def masks(self) -> Masks | None:
        masks: Masks | None = self.instances.get("masks")
        return masks

    @cached_property
    def views(self) -> list[InstanceView]:
        return [InstanceView(self, i) for i in range(_field("instances", lambda: len(self.instances)))]


class InstanceView:
    """One annotation of an image, with cached geometry for the checks."""

    def __init__(self, image: ImageContext, index: int) -> None:
        self.image = image
        self.index = index

    @cached_property
    def ann_id(self) -> int | None:
        ids = self.image.instances.get("ids")
        return _field("annotation id", lambda: int(ids[self.index])) if ids is not None else None

    @cached_property
    def label(self) -> int:
        return _field("category id", lambda: int(self.image.instances.labels[self.index]))

    @cached_property
    def box(self) -> np.ndarray:
        """The annotated XYXY box (float64)."""
        return _field("box", lambda: np.asarray(self.image.instances.boxes[self.index], dtype=np.float64).reshape(4))

    @cached_property
    def iscrowd(self) -> bool:
        crowd = self.image.instances.get("iscrowd")
        return _field("iscrowd", lambda: bool(crowd[self.index])) if crowd is not None else False

    @cached_property
    def item(self) -> PolygonMask | RLEMask | Any | None:
        masks = self.image.masks
        return _field("mask", lambda: masks.items[self.index]) if masks is not None else None

    @cached_property
    def points(self) -> np.ndarray | None:
        """All polygon vertices as ``(K, 2)`` float64 (``None`` for non-polygon masks)."""
        item = self.item
        if not isinstance(item, PolygonMask):
            return None
        parts = _field("polygon", lambda: [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in item.parts])
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, 2))

    # -- problems that make the mask unusable (each reported by its own check) --------------
    @cached_property
    def size_problem(self) -> str | None:
        item, rec = self.item, self.image.record
        if item is None:
            return None
        extras = self.image.instances.get("extras")
        raw = extras[self.index].get("invalid_segmentation") if extras is not None else None
        if isinstance(raw, dict):  # kept by the COCO reader: an RLE of another size than its image
            return f"RLE size {raw.get('size')!r} differs from the image record's size [{rec.height}, {rec.width}]"
        if _field("mask size", lambda: (item.height, item.width) != (rec.height, rec.width)):
            return f"mask is {item.height}x{item.width} (HxW) but the image record is {rec.height}x{rec.width}"
        return None

    @cached_property
    def rle_problem(self) -> str | None:
        item = self.item
        return _field("RLE", lambda: rle_counts_problem(item.rle)) if isinstance(item, RLEMask) else None

    @cached_property
    def coords_unusable(self) -> bool:
        """Non-finite or absurdly far polygon coordinates (rasterising them could exhaust memory)."""
        pts = self.points
        if pts is None or not len(pts):
            return False
        if not np.isfinite(pts).all():
            return True
        rec = self.image.record
        limit = 10 * max(rec.height, rec.width, 1) + 1000
        return bool(np.abs(pts).max() > limit)

    @cached_property
    def extent(self) -> np.ndarray | None:
        """XYXY extent of the finite polygon points, or of the annotated box for other masks; or ``None``."""
        xy = self.points if self.points is not None and len(self.points) else self.box.reshape(2, 2)
        xy = xy[np.isfinite(xy).all(axis=1)]
        if not len(xy):
            return None
        return np.concatenate([xy.min(axis=0), xy.max(axis=0)])

    @cached_property
    def outside(self) -> str | None:
        """``"entirely"`` or ``"partly"`` when the coordinates leave the image (beyond the tolerance)."""
        ext, rec = self.extent, self.image.record
        if ext is None or rec.height <= 0 or rec.width <= 0:
            return None  # no image size: reported by image-size-mismatch / image-size-unknown
        x0, y0, x1, y1 = ext
        if x1 < 0 or y1 < 0 or x0 > rec.width or y0 > rec.height:
            return "entirely"
        tol = self.image.options.outside_tolerance
        if x0 < -tol or y0 < -tol or x1 > rec.width + tol or y1 > rec.height + tol:
            return "partly"
        return None

    # -- pixel geometry ----------------------------------------------------------------------
    @cached_property
    def rle(self) -> dict[str, Any] | None:
        """Compressed RLE of the mask, or ``None`` without a usable mask."""
        rec = self.image.record
        if self.item is None or self.size_problem or self.rle_problem or self.coords_unusable:
            return None
        if rec.height <= 0 or rec.width <= 0:
            return None  # reported by image-size-mismatch
        masks = self.image.masks
        if masks is None:  # item is None then: returned above already
            return None
        return _field("mask", lambda: masks.rle(self.index))

    @cached_property
    def area(self) -> float | None:
        from pycocotools import mask as mask_utils

        return float(mask_utils.area(self.rle)) if self.rle is not None else None

    @cached_property
    def mask_box(self) -> np.ndarray | None:
        """Tight XYXY box of the mask pixels (``None`` without a usable, non-empty mask)."""
        from pycocotools import mask as mask_utils

        if self.rle is None or not self.area:
            return None
        x, y, w, h = (float(v) for v in mask_utils.toBbox(self.rle))
        return np.array([x, y, x + w, y + h])


def repeats(items: Iterable[T], key: Callable[[T], Hashable]) -> Iterator[tuple[T, T]]:
    """``(item, first)`` for each item whose key an earlier item already had (``first``: the earliest of them)."""
    first: dict[Hashable, T] = {}
    for item in items:
        k = key(item)
        if k in first:
            yield item, first[k]
        else:
            first[k] = item


def fmt_num(v: float) -> str:
    """A number for messages: integers without decimals, others with up to two."""
    v = float(v)
    if not np.isfinite(v):
        return str(v)
    return str(round(v)) if abs(v - round(v)) < 1e-6 else f"{v:.2f}".rstrip("0").rstrip(".")


def fmt_box(box: np.ndarray) -> str:
    return "[" + ", ".join(fmt_num(v) for v in np.asarray(box).reshape(-1)) + "]"
