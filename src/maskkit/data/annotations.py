"""The format-neutral annotated dataset that every reader returns and every writer takes.

``AnnotationSet`` = categories + image records, each record holding :class:`Instances` whose
``labels`` are the dataset's own category ids (possibly non-contiguous, as in COCO). Fields a
format carries beyond these (COCO ``info``/``licenses``, per-image ``license``, per-annotation
``attributes``, LabelMe ``flags``) live in ``extra`` dicts so writers can put them back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskkit.structures import Instances, Masks


@dataclass
class Category:
    """One category: ``id`` is the dataset's own id, ``name`` must be unique."""

    id: int
    name: str
    supercategory: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageRecord:
    """One image and its instances.

    ``file_name`` is relative to the set's ``image_root`` (COCO semantics). ``data`` holds the
    encoded image bytes when the source embeds them (LabelMe ``imageData``) instead of a file.
    ``instances`` fields: ``boxes``, ``labels`` (category ids), ``masks`` (may be absent for
    box-only sources), ``iscrowd``, ``ids`` (annotation ids), ``extras`` (list of dicts).
    """

    id: int
    file_name: str
    height: int
    width: int
    instances: Instances
    extra: dict[str, Any] = field(default_factory=dict)
    data: bytes | None = None
    source: str | None = None
    """The annotation file this record came from (for error messages)."""
    problems: dict[str, str] = field(default_factory=dict)
    """What the reader had to ignore or guess, by validate check name (e.g. ``image-size-unknown``);
    reported by ``maskkit validate``, never written."""

    def __post_init__(self) -> None:
        self.height = int(self.height)
        self.width = int(self.width)


@dataclass
class AnnotationSet:
    """A whole annotated dataset (one split) in a format-neutral form."""

    categories: list[Category]
    images: list[ImageRecord]
    image_root: Path
    source: Path | None = None
    format: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None
    """The dataset root the user passed: image files must resolve inside it (:mod:`maskkit.data.paths`).
    ``None`` (a set built in code): not confined."""

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.images)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.categories]

    def category_by_id(self) -> dict[int, Category]:
        return {c.id: c for c in self.categories}

    def image_path(self, record: ImageRecord) -> Path:
        """Absolute path of a record's image file."""
        return (self.image_root / record.file_name).resolve()

    def num_instances(self) -> int:
        return sum(len(r.instances) for r in self.images)


def new_instances(
    height: int,
    width: int,
    labels: Sequence[int] | np.ndarray,
    masks: Masks | None,
    boxes: np.ndarray | None = None,
    iscrowd: Sequence[bool] | np.ndarray | None = None,
    ids: Sequence[int] | np.ndarray | None = None,
    extras: list[dict[str, Any]] | None = None,
) -> Instances:
    """Build annotation instances with every conventional field present.

    Boxes default to the tight boxes of the masks; at least one of ``masks``/``boxes`` is needed.
    """
    n = len(labels)
    if boxes is None:
        if masks is None:
            raise ValueError("new_instances needs masks or boxes")
        boxes = masks.boxes()
    inst = Instances(
        (height, width),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(n, 4),
        labels=np.asarray(labels, dtype=np.int64).reshape(n),
        iscrowd=np.asarray(iscrowd if iscrowd is not None else [False] * n, dtype=bool).reshape(n),
        ids=np.asarray(ids if ids is not None else np.arange(1, n + 1), dtype=np.int64).reshape(n),
        extras=list(extras) if extras is not None else [{} for _ in range(n)],
    )
    if masks is not None:
        inst.masks = masks
    return inst
