"""COCO instances JSON: read and write losslessly.

Reading keeps everything: polygons (several parts), RLE with compressed string counts or
uncompressed list counts (each mask kept in its representation as read), ``iscrowd``,
non-contiguous category ids, images without annotations, and every extra field — top-level
keys other than images/annotations/categories go to ``AnnotationSet.info``, extra image keys
to ``ImageRecord.extra``, extra category keys to ``Category.extra`` and extra annotation keys
(``attributes``, track ids, ...) to the instance's ``extras`` dict.

Boxes and areas: the file's ``bbox`` is kept (XYWH -> XYXY; recomputed from the mask only when
absent). The file's ``area`` is preserved as ``extras["area"]`` and written back unchanged; when
an instance has no stored area (other sources) the writer computes it: mask pixel area, or the
box area for box-only instances. Non-COCO writers should ignore ``extras["area"]``.

Detection: a ``.json`` file containing ``"images":`` and ``"annotations":`` keys (a byte scan,
no parse), or a folder holding ``annotations.json`` (the COCO layout) or exactly one such JSON.
Image root: the JSON's folder, or ``<folder>/images`` when the file names are found there.

Writing: ``DST/annotations.json`` + the images copied to ``DST/images/``; categories sorted by
id; bitmap masks as compressed RLE (string counts). COCO expresses every mask; box-only
instances get ``segmentation: []`` and are reported.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from maskkit.data.annotations import AnnotationSet, Category, ImageRecord, new_instances
from maskkit.data.copyimages import place_images
from maskkit.data.formats.base import ConversionReport, register_format
from maskkit.data.formats.polygonize import has_mask
from maskkit.data.images import image_size
from maskkit.errors import DataError
from maskkit.fileio import atomic_write_text
from maskkit.structures import Masks
from maskkit.structures.boxes import xywh_to_xyxy, xyxy_to_xywh
from maskkit.structures.masks import BitMask, MaskItem, PolygonMask, RLEMask, rle_to_string

__all__ = ["ANNOTATIONS_FILE", "detect_coco", "find_coco_json", "looks_like_coco", "read_coco", "write_coco"]

ANNOTATIONS_FILE = "annotations.json"
_CORE_ANN = ("id", "image_id", "category_id", "segmentation", "bbox", "iscrowd")
_CORE_IMG = ("id", "file_name", "height", "width")
_CORE_CAT = ("id", "name", "supercategory")
_TOP = ("images", "annotations", "categories")
_KEY = re.compile(rb'"(images|annotations)"\s*:')
BOX_ONLY = "box-only instance (no mask): written with empty segmentation"


# -- detection ----------------------------------------------------------------------------------
def looks_like_coco(path: Path, chunk: int = 1 << 20) -> bool:
    """Cheap check: a JSON object with ``"images":`` and ``"annotations":`` keys (streamed, not parsed)."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    found: set[bytes] = set()
    tail = b""
    with open(path, "rb") as f:
        head = f.read(chunk)
        if not head.lstrip().startswith(b"{"):
            return False
        block = head
        while block:
            data = tail + block
            found.update(m.group(1) for m in _KEY.finditer(data))
            if len(found) == 2:
                return True
            tail = data[-32:]
            block = f.read(chunk)
    return False


def find_coco_json(path: Path) -> Path | None:
    """The COCO JSON a path stands for: itself, ``<folder>/annotations.json``, or a folder's only COCO JSON."""
    if path.is_file():
        return path if looks_like_coco(path) else None
    if not path.is_dir():
        return None
    layout = path / ANNOTATIONS_FILE
    if layout.is_file():
        return layout if looks_like_coco(layout) else None
    jsons = sorted(p for p in path.glob("*.json") if p.is_file())
    if len(jsons) == 1 and looks_like_coco(jsons[0]):
        return jsons[0]
    return None


def detect_coco(path: Path) -> bool:
    return find_coco_json(path) is not None


# -- reading ------------------------------------------------------------------------------------
def _load(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read file ({exc})", file=path) from None
    if not isinstance(doc, dict):
        raise DataError("a COCO file must hold a JSON object", file=path)
    for key in ("images", "annotations"):
        if not isinstance(doc.get(key), list):
            raise DataError(f"missing or invalid {key!r} list (not a COCO instances file)", file=path)
    if not isinstance(doc.get("categories", []), list):
        raise DataError("'categories' must be a list", file=path)
    return doc


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _image_root(folder: Path, images: list[dict[str, Any]]) -> Path:
    sub = folder / "images"
    for img in images[:50]:
        name = str(img.get("file_name", ""))
        if (folder / name).is_file():
            return folder
        if (sub / name).is_file():
            return sub
    return sub if sub.is_dir() else folder


def _categories(doc: dict[str, Any], path: Path) -> list[Category]:
    cats = []
    for k, c in enumerate(doc.get("categories", [])):
        try:
            if not isinstance(c, dict) or "id" not in c or "name" not in c:
                raise ValueError("a category needs 'id' and 'name'")
            extra = {key: v for key, v in c.items() if key not in _CORE_CAT}
            cats.append(Category(_int(c["id"], "category id"), str(c["name"]), c.get("supercategory"), extra))
        except ValueError as exc:
            raise DataError(f"category #{k}: {exc}", file=path) from None
    return cats


def _mask(seg: Any, h: int, w: int) -> MaskItem:
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not isinstance(size, list) or len(size) != 2 or not isinstance(counts, str | list):
            raise ValueError("RLE segmentation needs 'size' [h, w] and 'counts' (string or list)")
        if [int(size[0]), int(size[1])] != [h, w]:
            raise ValueError(f"RLE size {size} differs from the image size [{h}, {w}]")
        if isinstance(counts, list) and not all(isinstance(c, int) and c >= 0 for c in counts):
            raise ValueError("uncompressed RLE counts must be non-negative integers")
        return RLEMask(seg)
    if not isinstance(seg, list):
        raise ValueError(f"segmentation must be a polygon list or an RLE dict, got {type(seg).__name__}")
    if seg and not isinstance(seg[0], list):
        seg = [seg]  # a single flat polygon, as some tools write it
    parts = []
    for part in seg:
        arr = np.asarray(part, dtype=np.float64)
        if arr.ndim != 1 or len(arr) % 2:
            raise ValueError("a polygon part must be a flat list with an even number of coordinates")
        parts.append(arr.reshape(-1, 2))
    return PolygonMask(parts, h, w)


def _instances(h: int, w: int, image_id: int, anns: list[dict[str, Any]], with_masks: bool, path: Path) -> Any:
    labels, items, boxes, crowd, ids, extras = [], [], [], [], [], []
    for ann in anns:
        try:
            seg = ann.get("segmentation")
            item = _mask(seg, h, w) if seg is not None else PolygonMask([], h, w)
            bbox = ann.get("bbox")
            if bbox is not None:
                if not isinstance(bbox, list) or len(bbox) != 4:
                    raise ValueError(f"bbox must be [x, y, w, h], got {bbox!r}")
                box = xywh_to_xyxy(np.asarray(bbox, dtype=np.float64))[0]
            elif isinstance(item, PolygonMask) and not item.parts:
                box = np.zeros(4, np.float32)
            else:
                box = xywh_to_xyxy(mask_utils.toBbox(item.to_rle()))[0]
            labels.append(_int(ann["category_id"], "category_id"))
            crowd.append(bool(ann.get("iscrowd", 0)))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            problem = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise DataError(problem, file=path, image=image_id, annotation=ann.get("id")) from None
        items.append(item)
        boxes.append(box)
        ids.append(ann["id"])
        extras.append({k: v for k, v in ann.items() if k not in _CORE_ANN})
    masks = Masks(items, h, w) if with_masks else None
    boxes_arr = np.asarray(boxes, np.float32).reshape(-1, 4)
    return new_instances(h, w, labels, masks, boxes=boxes_arr, iscrowd=crowd, ids=ids, extras=extras)


def _image_entry(img: Any, k: int, root: Path, path: Path) -> tuple[int, str, int, int]:
    """``(id, file_name, height, width)`` of one ``images`` entry (size from the file if absent)."""
    try:
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise ValueError("an image needs 'id' and 'file_name'")
        img_id = _int(img["id"], "image id")
        if "height" in img and "width" in img:
            return img_id, str(img["file_name"]), _int(img["height"], "height"), _int(img["width"], "width")
        h, w = image_size(root / str(img["file_name"]))
        return img_id, str(img["file_name"]), h, w
    except (ValueError, DataError) as exc:
        problem = exc.problem if isinstance(exc, DataError) else str(exc)
        where = img.get("id", f"#{k}") if isinstance(img, dict) else f"#{k}"
        raise DataError(problem, file=path, image=where) from None


def read_coco(path: str | Path) -> AnnotationSet:
    """Read a COCO instances JSON (or a folder in the COCO layout)."""
    path = Path(path)
    json_path = find_coco_json(path) or path
    doc = _load(json_path)
    root = _image_root(json_path.parent, doc["images"])
    entries = [_image_entry(img, k, root, json_path) for k, img in enumerate(doc["images"])]
    grouped: dict[int, list[dict[str, Any]]] = {}
    for img_id, *_ in entries:
        if img_id in grouped:
            raise DataError(f"duplicate image id {img_id}", file=json_path, image=img_id)
        grouped[img_id] = []
    with_masks = False
    for k, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict) or "id" not in ann or "image_id" not in ann:
            ann_id = ann.get("id", f"#{k}") if isinstance(ann, dict) else f"#{k}"
            raise DataError("an annotation needs 'id' and 'image_id'", file=json_path, annotation=ann_id)
        try:
            _int(ann["id"], "annotation id")
            target = grouped[_int(ann["image_id"], "image_id")]
        except (ValueError, KeyError) as exc:
            problem = f"image_id {ann['image_id']!r} is not in 'images'" if isinstance(exc, KeyError) else str(exc)
            raise DataError(problem, file=json_path, annotation=ann["id"]) from None
        target.append(ann)
        with_masks = with_masks or bool(ann.get("segmentation"))
    records = []
    for (img_id, file_name, h, w), img in zip(entries, doc["images"], strict=True):
        inst = _instances(h, w, img_id, grouped[img_id], with_masks, json_path)
        extra = {key: v for key, v in img.items() if key not in _CORE_IMG}
        records.append(ImageRecord(img_id, file_name, h, w, inst, extra, source=str(json_path)))
    info = {k: v for k, v in doc.items() if k not in _TOP}
    return AnnotationSet(_categories(doc, json_path), records, root, source=json_path, format="coco", info=info)


# -- writing ------------------------------------------------------------------------------------
def _float32(values: np.ndarray) -> list[float]:
    """Floats printed at float32 precision (boxes are float32: ``473.07`` stays ``473.07``)."""
    return [float(str(np.float32(v))) for v in values]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, bytes):
        return obj.decode("ascii", errors="replace")
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _segmentation(masks: Masks, i: int) -> Any:
    item = masks[i]
    if isinstance(item, PolygonMask):
        return item.to_coco()
    if isinstance(item, RLEMask) and not item.compressed:
        return {"size": [item.height, item.width], "counts": [int(c) for c in item.rle["counts"]]}
    if isinstance(item, RLEMask | BitMask):
        return rle_to_string(masks.rle(i))
    raise TypeError(f"unknown mask type {type(item).__name__}")


def _unique_or_renumbered(values: list[int], what: str, report: ConversionReport) -> list[int]:
    if len(set(values)) == len(values):
        return values
    report.notes.append(f"{what} ids were not unique: renumbered 1..{len(values)}")
    return list(range(1, len(values) + 1))


def write_coco(aset: AnnotationSet, dst: str | Path) -> ConversionReport:
    """Write ``DST/annotations.json`` and copy the images to ``DST/images/`` (deterministic)."""
    dst = Path(dst)
    report = ConversionReport("coco", dst)
    names = place_images(aset, dst / "images", report)
    image_ids = _unique_or_renumbered([r.id for r in aset.images], "image", report)
    old_ids = [int(i) for r in aset.images for i in r.instances.get("ids", [])]
    ann_ids = _unique_or_renumbered(old_ids, "annotation", report)
    if len(ann_ids) != aset.num_instances():  # some reader left out the ids field
        ann_ids = list(range(1, aset.num_instances() + 1))
    known = {c.id for c in aset.categories}
    images, annotations, unknown = [], [], 0
    next_ann = iter(ann_ids)
    for rec, name, img_id in zip(aset.images, names, image_ids, strict=True):
        images.append({"id": img_id, "file_name": name, "height": rec.height, "width": rec.width}
                      | {k: v for k, v in rec.extra.items() if k not in _CORE_IMG})
        inst = rec.instances
        n = len(inst)
        if not n:
            continue
        masks = inst.get("masks")
        xywh = xyxy_to_xywh(inst.boxes)
        crowd = inst.get("iscrowd", np.zeros(n, bool))
        extras = inst.get("extras", [{} for _ in range(n)])
        for i in range(n):
            ann: dict[str, Any] = {"id": next(next_ann), "image_id": img_id, "category_id": int(inst.labels[i])}
            unknown += ann["category_id"] not in known
            if has_mask(inst, i):
                ann["segmentation"] = _segmentation(masks, i)
                area = float(mask_utils.area(masks.rle(i)))
            else:
                ann["segmentation"] = []
                area = float(max(xywh[i, 2], 0) * max(xywh[i, 3], 0))
                report.change(BOX_ONLY)
            stored = extras[i].get("area")
            ann["area"] = stored if isinstance(stored, int | float) and not isinstance(stored, bool) else area
            ann["bbox"] = _float32(xywh[i])
            ann["iscrowd"] = int(bool(crowd[i]))
            ann.update({k: v for k, v in extras[i].items() if k not in ann})
            annotations.append(ann)
    if unknown:
        report.notes.append(f"{unknown} annotation(s) use category ids not in the category list (kept)")
    categories = [
        {"id": c.id, "name": c.name, "supercategory": c.supercategory}
        | {k: v for k, v in c.extra.items() if k not in _CORE_CAT}
        for c in sorted(aset.categories, key=lambda c: c.id)
    ]
    doc = {k: v for k, v in aset.info.items() if k not in _TOP}
    doc.update(images=images, annotations=annotations, categories=categories)
    text = json.dumps(doc, ensure_ascii=False, default=_json_default)
    atomic_write_text(dst / ANNOTATIONS_FILE, text + "\n")
    report.images, report.instances = len(images), len(annotations)
    return report


register_format(
    "coco",
    detect=detect_coco,
    read=read_coco,
    write=write_coco,
    description="COCO instances JSON (polygons, RLE, iscrowd); written as DST/annotations.json + DST/images/",
)
