"""Dataset statistics: counts per class, COCO size buckets, instances per image, image sizes.

Everything is computed from RLE / polygon areas through pycocotools, never from dense masks, so it
scales to large datasets. :class:`DatasetStats` is a plain dataclass of JSON-friendly values.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from maskkit.data.annotations import AnnotationSet
from maskkit.data.formats.yolo import find_orphan_labels
from maskkit.structures import Instances, Masks
from maskkit.structures.boxes import box_area

SMALL_AREA = 32**2
"""COCO: an instance is *small* below this area (pixels)."""
LARGE_AREA = 96**2
"""COCO: an instance is *large* at or above this area (pixels)."""

MASK_KINDS = ("polygon", "rle", "bitmap", "box-only")


@dataclass
class ClassStats:
    """Counts for one category."""

    id: int
    name: str
    instances: int = 0
    images: int = 0
    """Number of images containing at least one instance of the class."""


@dataclass
class DatasetStats:
    """Summary statistics of one annotation set (JSON-serialisable via :meth:`to_dict`)."""

    images: int
    instances: int
    classes: list[ClassStats]
    size_buckets: dict[str, int]
    """``small`` (< 32²), ``medium``, ``large`` (>= 96²) by mask area (box area for box-only)."""
    instances_per_image: dict[str, float]
    """``min``, ``median``, ``mean``, ``max``."""
    image_sizes: list[dict[str, int]]
    """Distinct image sizes ``{"height", "width", "count"}``, most frequent first."""
    crowd: int
    mask_kinds: dict[str, int]
    """Instances per mask representation: ``polygon``, ``rle``, ``bitmap``, ``box-only``."""
    empty_images: int = 0
    notes: list[str] = field(default_factory=list)
    """Things about the source the counts leave out (e.g. YOLO label files without an image)."""
    areas: list[float] = field(default_factory=list, repr=False)
    """Per-instance area in pixels (for histograms)."""
    per_image: list[int] = field(default_factory=list, repr=False)
    """Number of instances of every image."""

    def to_dict(self, raw: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; ``raw`` includes the per-instance areas and per-image counts."""
        d = asdict(self)
        if not raw:
            d.pop("areas")
            d.pop("per_image")
        return d

    @property
    def size_range(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """``((min_h, min_w), (max_h, max_w))`` over all images, or ``None`` for no images."""
        if not self.image_sizes:
            return None
        hs = [s["height"] for s in self.image_sizes]
        ws = [s["width"] for s in self.image_sizes]
        return (min(hs), min(ws)), (max(hs), max(ws))


def instance_areas(inst: Instances) -> np.ndarray:
    """Areas of one image's instances: mask pixel areas, or box areas when there are no masks."""
    masks: Masks | None = inst.get("masks")
    if masks is not None:
        return masks.areas()
    return box_area(inst.boxes)


def source_notes(aset: AnnotationSet) -> list[str]:
    """Format-specific remarks: YOLO label files that have no image (readers skip them)."""
    if aset.format != "yolo":
        return []

    orphans = find_orphan_labels(aset)
    if not orphans:
        return []
    lines = sum(sum(1 for line in p.read_text(errors="replace").splitlines() if line.strip()) for p in orphans)
    names = ", ".join(p.name for p in orphans[:3]) + (" ..." if len(orphans) > 3 else "")
    return [f"{len(orphans)} YOLO label file(s) without an image ({lines} annotation lines) not counted: {names}"]


def dataset_stats(aset: AnnotationSet) -> DatasetStats:
    """Compute :class:`DatasetStats` for ``aset`` (labels unknown to its categories are counted too)."""
    classes = {c.id: ClassStats(c.id, c.name) for c in aset.categories}
    kinds: Counter[str] = Counter()
    sizes: Counter[tuple[int, int]] = Counter()
    areas: list[np.ndarray] = []
    per_image: list[int] = []
    crowd = 0
    for rec in aset.images:
        inst = rec.instances
        n = len(inst)
        per_image.append(n)
        sizes[(rec.height, rec.width)] += 1
        if not n:
            continue
        labels = np.asarray(inst.labels, dtype=np.int64)
        for label, count in zip(*np.unique(labels, return_counts=True), strict=True):
            cs = classes.get(int(label))
            if cs is None:
                cs = classes[int(label)] = ClassStats(int(label), f"<unknown id {int(label)}>")
            cs.instances += int(count)
            cs.images += 1
        masks = inst.get("masks")
        if masks is None:
            kinds["box-only"] += n
        else:
            kinds.update(masks.kinds())
        areas.append(instance_areas(inst))
        if inst.has("iscrowd"):
            crowd += int(np.count_nonzero(inst.iscrowd))

    all_areas = np.concatenate(areas) if areas else np.zeros(0)
    counts = np.asarray(per_image, dtype=np.float64)
    ipi = (
        {
            "min": float(counts.min()),
            "median": float(np.median(counts)),
            "mean": float(counts.mean()),
            "max": float(counts.max()),
        }
        if len(counts)
        else {"min": 0.0, "median": 0.0, "mean": 0.0, "max": 0.0}
    )
    return DatasetStats(
        images=len(aset.images),
        instances=len(all_areas),
        classes=sorted(classes.values(), key=lambda c: c.id),
        size_buckets={
            "small": int(np.count_nonzero(all_areas < SMALL_AREA)),
            "medium": int(np.count_nonzero((all_areas >= SMALL_AREA) & (all_areas < LARGE_AREA))),
            "large": int(np.count_nonzero(all_areas >= LARGE_AREA)),
        },
        instances_per_image=ipi,
        image_sizes=[
            {"height": h, "width": w, "count": c} for (h, w), c in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        crowd=crowd,
        mask_kinds={k: int(kinds.get(k, 0)) for k in MASK_KINDS},
        empty_images=int(np.count_nonzero(counts == 0)),
        notes=source_notes(aset),
        areas=[float(a) for a in all_areas],
        per_image=[int(n) for n in per_image],
    )
