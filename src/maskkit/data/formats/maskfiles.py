"""Pieces shared by the mask-file layouts (:mod:`.labelimages`, :mod:`.dsb`): the class map, label arrays.

``classes.json`` schema (every key optional)::

    {
      "categories": [{"id": 1, "name": "cell", "supercategory": "..."}],  # or "names": ["cell", ...] (ids 1..N)
      "instances": {                      # image key -> instance key -> class
        "<image key>": {"<instance key>": 2,            # category id
                        "<instance key>": "cell",       # or category name
                        "<instance key>": {"category_id": 2, "iscrowd": true, "id": 17, "extra": {...}}}
      },
      "images": {"<image key>": {"id": 5, "extra": {...}}},   # original image ids / extra fields
      "info": {...}                                            # dataset-level info
    }

Keys are defined by each layout (label images: image path without suffix / label value; per-instance
PNGs: sample folder / mask file stem). ``"id"`` overrides the annotation id a layout infers.
Instances not listed get the first category; a category name not in the list is added. A file
without an ``"instances"`` key may list the images at the top level (``{"<stem>": {"<id>": "cell"}}``).
Without a class map every instance is category 1 with the layout's default name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskkit.data.annotations import AnnotationSet, Category, ImageRecord
from maskkit.data.formats.base import ConversionReport
from maskkit.data.images import open_bounded, read_image
from maskkit.errors import DataError
from maskkit.fileio import atomic_write_json
from maskkit.structures import Masks

CLASS_FILES = ("classes.json", "class_map.json")
_RESERVED = {"names", "categories", "instances", "images", "info"}
Names = Sequence[str] | dict[int, str] | None


# -- class map ----------------------------------------------------------------------------------
@dataclass
class ClassMap:
    """A parsed ``classes.json``: categories plus per-image, per-instance entries."""

    categories: list[Category]
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def resolve(self, image: str, key: str, default_id: int) -> tuple[int, bool, int, dict[str, Any]]:
        """``(category id, iscrowd, annotation id, extra)`` of one instance."""
        value = self.instances.get(image, {}).get(key)
        if value is None:
            return self.categories[0].id, False, default_id, {}
        if isinstance(value, dict):
            cls = value.get("category_id", value.get("class", self.categories[0].id))
            ann_id, extra = value.get("id", default_id), value.get("extra", {})
            if not isinstance(ann_id, int) or isinstance(ann_id, bool) or not isinstance(extra, dict):
                raise DataError("instance entry needs an integer 'id' and an object 'extra'",
                                file=self.path, image=image, annotation=key)
            return self._category(cls, image, key), bool(value.get("iscrowd", False)), ann_id, dict(extra)
        return self._category(value, image, key), False, default_id, {}

    def _category(self, value: Any, image: str, key: str) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value  # unknown ids are kept for `maskkit validate` to report
        if isinstance(value, str):
            for c in self.categories:
                if c.name == value:
                    return c.id
            new = Category(max(c.id for c in self.categories) + 1, value)
            self.categories.append(new)
            return new.id
        raise DataError(f"class must be a category id or name, got {value!r}", file=self.path, image=image,
                        annotation=key)


def _parse_categories(doc: dict[str, Any], path: Path | None) -> list[Category]:
    if "categories" in doc:
        cats = []
        for c in doc["categories"] if isinstance(doc["categories"], list) else [None]:
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
                raise DataError("'categories' must be a list of {\"id\": int, \"name\": str}", file=path)
            rest = {k: v for k, v in c.items() if k not in ("id", "name", "supercategory")}
            cats.append(Category(c["id"], c["name"], c.get("supercategory"), rest))
        return cats
    return names_to_categories(doc.get("names"), path)


def names_to_categories(names: Any, path: Path | None = None) -> list[Category]:
    """Categories from a ``names`` list (ids 1..N) or ``{id: name}`` mapping."""
    if names is None:
        return []
    try:
        if isinstance(names, dict):
            return [Category(int(k), str(v)) for k, v in sorted(names.items(), key=lambda kv: int(kv[0]))]
        if isinstance(names, list | tuple):
            return [Category(i, str(n)) for i, n in enumerate(names, 1)]
    except ValueError:
        pass
    raise DataError("'names' must be a list of class names or an {id: name} mapping", file=path)


def load_class_map(root: Path, default_name: str, names: Names = None) -> ClassMap:
    """Read ``root/classes.json`` (or ``class_map.json``); defaults when absent."""
    path = next((root / n for n in CLASS_FILES if (root / n).is_file()), None)
    doc: Any = {}
    if path is not None:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise DataError(f"cannot parse class map ({type(exc).__name__}: {exc})", file=path) from None
        if not isinstance(doc, dict):
            raise DataError("class map must be a JSON object", file=path)
    cats = _parse_categories(doc, path) or names_to_categories(names) or [Category(1, default_name)]
    if "instances" in doc:
        inst = doc["instances"]
    else:
        inst = {k: v for k, v in doc.items() if k not in _RESERVED and isinstance(v, dict)}
    images, info = doc.get("images", {}), doc.get("info", {})
    for what, value in (("instances", inst), ("images", images)):
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise DataError(f"'{what}' must map image keys to objects", file=path)
    if not isinstance(info, dict):
        raise DataError("'info' must be an object", file=path)
    return ClassMap(cats, inst, images, info, path)


def category_entries(categories: Sequence[Category]) -> list[dict[str, Any]]:
    """``categories`` as written to ``classes.json``."""
    out = []
    for c in categories:
        d: dict[str, Any] = {"id": int(c.id), "name": c.name}
        if c.supercategory is not None:
            d["supercategory"] = c.supercategory
        d.update(c.extra)
        out.append(d)
    return out


def instance_entry(category: int, iscrowd: bool, ann_id: int | None, extra: dict[str, Any], default: int) -> Any:
    """The compact ``classes.json`` value of one instance (``None`` when everything is default)."""
    if not iscrowd and ann_id is None and not extra:
        return None if category == default else int(category)
    d: dict[str, Any] = {"category_id": int(category)}
    if iscrowd:
        d["iscrowd"] = True
    if ann_id is not None:
        d["id"] = int(ann_id)
    if extra:
        d["extra"] = extra
    return d


def write_class_map(path: Path, aset: AnnotationSet, instances: dict[str, dict[str, Any]],
                    images: dict[str, dict[str, Any]]) -> None:
    """Write ``classes.json`` deterministically (keys in sorted order)."""
    doc: dict[str, Any] = {"categories": category_entries(aset.categories)}
    doc["instances"] = {k: instances[k] for k in sorted(instances) if instances[k]}
    if images:
        doc["images"] = {k: images[k] for k in sorted(images)}
    if aset.info:
        doc["info"] = aset.info
    atomic_write_json(path, doc, indent=1)


def image_entry(record: ImageRecord, default_id: int) -> dict[str, Any] | None:
    """Original image id / extra fields of a record, when they differ from what a reader infers."""
    d: dict[str, Any] = {}
    if record.id != default_id:
        d["id"] = int(record.id)
    if record.extra:
        d["extra"] = record.extra
    return d or None


# -- label arrays <-> RLE ---------------------------------------------------------------------------
def read_label_array(path: Path) -> np.ndarray:
    """A single-channel integer ``H×W`` array from a label PNG/TIFF (DataError otherwise)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            arr = read_image(path)  # H×W×1 for a label TIFF (pixel limit checked first)
        else:
            with open_bounded(path) as im:
                arr = np.asarray(im)  # palette PNGs give indices, 16-bit PNGs uint16
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read label image ({type(exc).__name__}: {exc})", file=path) from None
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:2])
    if arr.ndim != 2:
        raise DataError(f"label image must have one channel (instance id per pixel), got shape {arr.shape}; "
                        "colour label images are not supported", file=path)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise DataError("label image holds non-integer values", file=path)
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise DataError(f"label image has unsupported type {arr.dtype}", file=path)
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise DataError("label image holds negative instance ids", file=path)
    return arr


def drawable(record: ImageRecord, report: ConversionReport) -> tuple[Masks | None, list[int]]:
    """The record's masks and the indices of the instances that can be written as pixels."""
    inst = record.instances
    masks = inst.get("masks")
    if masks is None:
        if len(inst):
            report.change("box without mask not written", len(inst))
        return None, []
    if (masks.height, masks.width) != (record.height, record.width):
        raise DataError(f"masks are {masks.width}x{masks.height} but the image is {record.width}x{record.height}",
                        file=record.source, image=record.file_name)
    return masks, list(range(len(inst)))


def note_polygons(aset: AnnotationSet, report: ConversionReport) -> None:
    """Note (once) how many polygon masks were rasterised: same pixels as COCO's, vertices not kept."""
    n = sum(r.instances.masks.kinds().count("polygon") for r in aset.images if r.instances.has("masks"))
    report.note(n, f"{n} polygon mask(s) rasterised to pixels")
