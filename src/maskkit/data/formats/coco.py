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

import itertools
import json
import re
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from pycocotools import mask as mask_utils

from maskkit.data.annotations import AnnotationSet, Category, ImageRecord, new_instances
from maskkit.data.copyimages import place_images
from maskkit.data.formats.base import ConversionReport, register_format
from maskkit.data.formats.polygonize import has_mask
from maskkit.data.images import image_size
from maskkit.errors import DataError
from maskkit.fileio import atomic_write_text
from maskkit.perf import gc_paused
from maskkit.structures import Masks
from maskkit.structures.boxes import xywh_to_xyxy, xyxy_to_xywh
from maskkit.structures.masks import BitMask, MaskItem, PolygonMask, RLEMask, rle_to_string

__all__ = ["ANNOTATIONS_FILE", "detect_coco", "find_coco_json", "looks_like_coco", "read_coco", "write_coco"]

ANNOTATIONS_FILE = "annotations.json"
_CORE_ANN = ("id", "image_id", "category_id", "segmentation", "bbox", "iscrowd")
_CORE_IMG = ("id", "file_name", "height", "width")
_CORE_CAT = ("id", "name", "supercategory")
_TOP = ("images", "annotations", "categories")
_STANDARD_ANN = frozenset((*_CORE_ANN, "area"))
_NO_BOX = [0.0] * 4
_INT64 = (-(2**63), 2**63 - 1)
_Entry = tuple[int, str, int, int]
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
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits, absurd nesting
        raise DataError(f"cannot parse JSON ({type(exc).__name__}: {exc})", file=path) from None
    if not isinstance(doc, dict):
        raise DataError("a COCO file must hold a JSON object", file=path)
    for key in ("images", "annotations"):
        if not isinstance(doc.get(key), list):
            raise DataError(f"missing or invalid {key!r} list (not a COCO instances file)", file=path)
    if not isinstance(doc.get("categories", []), list):
        raise DataError("'categories' must be a list", file=path)
    return doc


def _int(value: Any, what: str) -> int:
    """An id/size as ``int`` (integral floats accepted); ValueError for anything else or beyond int64."""
    if isinstance(value, float) and value.is_integer():  # False for inf and nan
        value = int(value)
    if type(value) is not int or not _INT64[0] <= value <= _INT64[1]:
        raise ValueError(f"{what} must be an integer, got {value!r}"[:200])
    return value


def _image_root(folder: Path, images: list[Any], probe: int = 20) -> Path:
    """The JSON's folder or ``<folder>/images``: decided by the first of ``probe`` file names found."""
    sub = folder / "images"
    for img in images[:probe]:
        name = str(img.get("file_name", "")) if isinstance(img, dict) else ""
        if name and (folder / name).is_file():
            return folder
        if name and (sub / name).is_file():
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


def _rle_item(seg: dict[str, Any], h: int, w: int) -> RLEMask | None:
    """The RLE mask of a segmentation dict; ``None`` when its size differs from the image (kept, not used)."""
    size, counts = seg.get("size"), seg.get("counts")
    if type(size) is not list or len(size) != 2 or not isinstance(counts, str | list):
        raise ValueError("RLE segmentation needs 'size' [h, w] and 'counts' (string or list)")
    if size != [h, w]:
        return None
    if type(counts) is list:
        arr = np.array(counts) if counts else np.zeros(0, np.int64)
        if arr.dtype.kind not in "iu" or arr.ndim != 1 or (arr.size and arr.min() < 0):
            raise ValueError("uncompressed RLE counts must be non-negative integers")
    return RLEMask(seg)


def _polygon_parts(seg: list[Any]) -> list[list[Any]]:
    """The parts of a polygon segmentation (a single flat list is one part), type-checked only."""
    if seg and type(seg[0]) is not list:
        seg = [seg]  # a single flat polygon, as some tools write it
    for part in seg:
        if type(part) is not list or len(part) % 2:
            raise ValueError("a polygon part must be a flat list with an even number of coordinates")
    return seg


def _check_annotation(ann: dict[str, Any], h: int, w: int) -> None:
    """Raise ValueError/KeyError naming what is wrong with one annotation (the slow, precise path)."""
    seg = ann.get("segmentation")
    if isinstance(seg, dict):
        _rle_item(seg, h, w)
    elif isinstance(seg, list):
        for part in _polygon_parts(seg):
            arr = np.asarray(part, dtype=np.float64)
            if arr.ndim != 1:
                raise ValueError("a polygon part must be a flat list of numbers")
    elif seg is not None:
        raise ValueError(f"segmentation must be a polygon list or an RLE dict, got {type(seg).__name__}")
    bbox = ann.get("bbox")
    if bbox is not None:
        if type(bbox) is not list or len(bbox) != 4:
            raise ValueError(f"bbox must be [x, y, w, h], got {bbox!r}"[:200])
        if np.asarray(bbox, dtype=np.float64).shape != (4,):
            raise ValueError(f"bbox must hold 4 numbers, got {bbox!r}"[:200])
    _int(ann["category_id"], "category_id")
    _int(ann["id"], "annotation id")
    bool(ann.get("iscrowd", 0))


def _raise_first_problem(groups: list[list[dict[str, Any]]], entries: list[_Entry], path: Path,
                         cause: BaseException) -> NoReturn:
    for (img_id, _, h, w), anns in zip(entries, groups, strict=True):
        for ann in anns:
            try:
                _check_annotation(ann, h, w)
            except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
                problem = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
                raise DataError(problem, file=path, image=img_id, annotation=ann.get("id")) from None
    raise DataError(f"cannot read the annotations ({type(cause).__name__}: {cause})", file=path) from None


def _extras(ann: dict[str, Any]) -> dict[str, Any]:
    keys = ann.keys()
    if keys == _STANDARD_ANN:
        return {"area": ann["area"]}
    return {k: v for k, v in ann.items() if k not in _CORE_ANN}


def _masks(groups: list[list[dict[str, Any]]], entries: list[_Entry]) -> tuple[list[MaskItem], list[int]]:
    """Mask items of all annotations (image by image), and the indices of those whose RLE size differs from
    their image.

    Polygon coordinates of the whole file are converted in one ``np.array`` call and handed to
    :class:`PolygonMask` as ``(K, 2)`` row slices (no per-part conversion).
    """
    flat: list[Any] = []
    ends: list[int] = []
    polys: list[tuple[int, int, int]] = []  # (flat annotation index, first part, end part)
    items: list[Any] = []
    invalid: list[int] = []
    empty_parts: list[Any] = []
    for (_, _, h, w), anns in zip(entries, groups, strict=True):
        for ann in anns:
            seg = ann.get("segmentation")
            if type(seg) is list:
                first = len(ends)
                for part in _polygon_parts(seg):
                    flat += part
                    ends.append(len(flat))
                polys.append((len(items), first, len(ends)))
                items.append((h, w))
            elif type(seg) is dict:
                item: RLEMask | PolygonMask | None = _rle_item(seg, h, w)
                if item is None:
                    invalid.append(len(items))
                    item = PolygonMask(empty_parts, h, w)
                items.append(item)
            elif seg is None:
                items.append(PolygonMask(empty_parts, h, w))
            else:
                raise ValueError("segmentation must be a polygon list or an RLE dict")
    xy = np.array(flat, dtype=np.float64)
    if xy.ndim != 1:
        raise ValueError("polygon coordinates must be numbers")
    xy = xy.reshape(-1, 2)
    bounds = np.concatenate(([0], np.asarray(ends, dtype=np.int64) // 2)).tolist()
    parts = [xy[a:b] for a, b in itertools.pairwise(bounds)]
    for k, first, end in polys:
        h, w = items[k]
        items[k] = PolygonMask(parts[first:end], h, w)
    return items, invalid


def _columns(ordered: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """``labels, ids, iscrowd, boxes`` (XYXY float64) of all annotations, and which ones have no ``bbox``."""
    labels = [a["category_id"] for a in ordered]
    if not all(type(v) is int for v in labels):
        labels = [_int(v, "category_id") for v in labels]
    labels_arr = np.array(labels, dtype=np.int64)
    ids_arr = np.array([a["id"] for a in ordered], dtype=np.int64)
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in ordered], dtype=bool)
    bboxes = [a.get("bbox") for a in ordered]
    missing = [k for k, b in enumerate(bboxes) if b is None]
    if missing:
        bboxes = [_NO_BOX if b is None else b for b in bboxes]
    boxes = np.array(bboxes, dtype=np.float64) if bboxes else np.zeros((0, 4))
    if boxes.shape != (len(ordered), 4):
        raise ValueError("a bbox must be [x, y, w, h]")
    boxes[:, 2:] += boxes[:, :2]
    return labels_arr, ids_arr, crowd, boxes, missing


def _records(doc: dict[str, Any], entries: list[_Entry], groups: list[list[dict[str, Any]]], with_masks: bool,
             path: Path) -> list[ImageRecord]:
    ordered = [ann for anns in groups for ann in anns]
    try:
        labels, ids, crowd, boxes, missing = _columns(ordered)
        items, invalid = _masks(groups, entries)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        _raise_first_problem(groups, entries, path, exc)
    extras = [_extras(a) for a in ordered]
    for k in invalid:
        extras[k]["invalid_segmentation"] = ordered[k]["segmentation"]
    for k in np.flatnonzero([a.get("iscrowd", 0) not in (0, 1) for a in ordered]).tolist():
        extras[k]["iscrowd"] = ordered[k]["iscrowd"]  # kept as read for validate (read as a bool)
    for k in missing:  # no bbox in the file: the mask's tight box
        boxes[k] = xywh_to_xyxy(mask_utils.toBbox(items[k].to_rle()))[0]
    records, start = [], 0
    for (img_id, file_name, h, w), anns, img in zip(entries, groups, doc["images"], strict=True):
        end = start + len(anns)
        masks = Masks(items[start:end], h, w) if with_masks else None
        inst = new_instances(h, w, labels[start:end], masks,
                             boxes=boxes[start:end], iscrowd=crowd[start:end], ids=ids[start:end],
                             extras=extras[start:end])
        extra = {key: v for key, v in img.items() if key not in _CORE_IMG}
        problems = {}
        if (h, w) == (0, 0) and not ("height" in img and "width" in img):
            problems["image-size-unknown"] = "the image entry has no width/height and the image file cannot tell them"
        records.append(ImageRecord(img_id, file_name, h, w, inst, extra, source=str(path), problems=problems))
        start = end
    return records


def _image_entry(img: Any, k: int, root: Path, path: Path) -> _Entry:
    """``(id, file_name, height, width)`` of one ``images`` entry (size from the file if absent)."""
    try:
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise ValueError("an image needs 'id' and 'file_name'")
        img_id = _int(img["id"], "image id")
        if "height" in img and "width" in img:
            return img_id, str(img["file_name"]), _int(img["height"], "height"), _int(img["width"], "width")
        try:
            h, w = image_size(root / str(img["file_name"]))
        except DataError:  # no size anywhere: kept as 0x0 for validate to report (image-size-unknown)
            h, w = 0, 0
        return img_id, str(img["file_name"]), h, w
    except (ValueError, DataError) as exc:
        problem = exc.problem if isinstance(exc, DataError) else str(exc)
        where = img.get("id", f"#{k}") if isinstance(img, dict) else f"#{k}"
        raise DataError(problem, file=path, image=where) from None


def _group_index(ann: Any, k: int, index: dict[int, int], path: Path) -> int:
    """The record index an annotation belongs to (DataError naming the annotation otherwise)."""
    if not isinstance(ann, dict) or "id" not in ann or "image_id" not in ann:
        ann_id = ann.get("id", f"#{k}") if isinstance(ann, dict) else f"#{k}"
        raise DataError("an annotation needs 'id' and 'image_id'", file=path, annotation=ann_id)
    try:
        _int(ann["id"], "annotation id")
        return index[_int(ann["image_id"], "image_id")]
    except (ValueError, KeyError) as exc:
        problem = f"image_id {ann['image_id']!r} is not in 'images'" if isinstance(exc, KeyError) else str(exc)
        raise DataError(problem, file=path, annotation=ann["id"] if _scalar(ann["id"]) else f"#{k}") from None


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float | str) and len(str(value)) < 50


def _read(json_path: Path) -> AnnotationSet:
    doc = _load(json_path)
    root = _image_root(json_path.parent, doc["images"])
    entries = [_image_entry(img, k, root, json_path) for k, img in enumerate(doc["images"])]
    index: dict[int, int] = {}
    for k, (img_id, *_) in enumerate(entries):
        index.setdefault(img_id, k)  # duplicate image ids: both records kept (validate reports E106)
    groups: list[list[dict[str, Any]]] = [[] for _ in entries]
    with_masks = False
    for k, ann in enumerate(doc["annotations"]):
        try:
            image_id = ann["image_id"]
            fast = type(image_id) is int and type(ann["id"]) is int
        except (TypeError, KeyError, IndexError):
            fast = False
        g = index.get(image_id) if fast else None
        groups[g if g is not None else _group_index(ann, k, index, json_path)].append(ann)
        if not with_masks and ann.get("segmentation"):
            with_masks = True
    records = _records(doc, entries, groups, with_masks, json_path)
    info = {k: v for k, v in doc.items() if k not in _TOP}
    return AnnotationSet(_categories(doc, json_path), records, root, source=json_path, format="coco", info=info)


def read_coco(path: str | Path) -> AnnotationSet:
    """Read a COCO instances JSON (or a folder in the COCO layout).

    Content problems are kept for ``maskkit validate``: duplicate image ids give two records
    (annotations attach to the first), and an RLE whose size differs from its image keeps its
    raw segmentation in ``extras["invalid_segmentation"]`` with an empty mask in its place.
    """
    path = Path(path)
    json_path = find_coco_json(path) or path
    with gc_paused():
        return _read(json_path)


# -- writing ------------------------------------------------------------------------------------
def _float32_rows(values: np.ndarray) -> list[list[float]]:
    """Floats printed at float32 precision (boxes are float32: ``473.07`` stays ``473.07``), all rows at once."""
    rows: list[list[float]] = np.asarray(values, dtype=np.float32).astype("U32").astype(np.float64).tolist()
    return rows


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
    if isinstance(item, RLEMask):
        counts = item.rle["counts"]
        if isinstance(counts, list):
            return {"size": [item.height, item.width], "counts": counts}  # json writes NumPy ints via default
        if isinstance(counts, str):
            return {"size": [item.height, item.width], "counts": counts}
    if isinstance(item, RLEMask | BitMask):
        return rle_to_string(masks.rle(i))
    raise TypeError(f"unknown mask type {type(item).__name__}")


def _stored_area(extra: dict[str, Any]) -> float | None:
    area = extra.get("area")
    return area if isinstance(area, int | float) and not isinstance(area, bool) else None


def _unique_or_renumbered(values: list[int], what: str, report: ConversionReport) -> list[int]:
    if len(set(values)) == len(values):
        return values
    report.notes.append(f"{what} ids were not unique: renumbered 1..{len(values)}")
    return list(range(1, len(values) + 1))


def write_coco(aset: AnnotationSet, dst: str | Path) -> ConversionReport:
    """Write ``DST/annotations.json`` and copy the images to ``DST/images/`` (deterministic)."""
    with gc_paused():
        return _write(aset, Path(dst))


def _write(aset: AnnotationSet, dst: Path) -> ConversionReport:
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
    all_boxes = [r.instances.boxes for r in aset.images if len(r.instances)]
    xywh_rows = _float32_rows(xyxy_to_xywh(np.concatenate(all_boxes))) if all_boxes else []
    row = 0
    for rec, name, img_id in zip(aset.images, names, image_ids, strict=True):
        images.append({"id": img_id, "file_name": name, "height": rec.height, "width": rec.width}
                      | {k: v for k, v in rec.extra.items() if k not in _CORE_IMG})
        inst = rec.instances
        n = len(inst)
        if not n:
            continue
        masks = inst.get("masks")
        labels = inst.labels.tolist()
        crowd = inst.get("iscrowd", np.zeros(n, bool)).tolist()
        extras = inst.get("extras", [{} for _ in range(n)])
        for i in range(n):
            box, extra = xywh_rows[row + i], extras[i]
            ann: dict[str, Any] = {"id": next(next_ann), "image_id": img_id, "category_id": labels[i]}
            unknown += labels[i] not in known
            area = _stored_area(extra)  # computed (rasterising) only when the source has none
            if "invalid_segmentation" in extra:  # kept as read (an RLE of another size than its image)
                ann["segmentation"] = extra["invalid_segmentation"]
            elif has_mask(inst, i):
                ann["segmentation"] = _segmentation(masks, i)
                if area is None:
                    area = float(mask_utils.area(masks.rle(i)))
            else:
                ann["segmentation"] = []
                report.change(BOX_ONLY)
            ann["area"] = area if area is not None else max(box[2], 0) * max(box[3], 0)
            ann["bbox"] = box
            ann["iscrowd"] = int(crowd[i])
            if len(extra) > 1 or (extra and "area" not in extra):
                ann.update({k: v for k, v in extra.items() if k not in ann and k != "invalid_segmentation"})
            annotations.append(ann)
        row += n
    report.note(unknown, f"{unknown} annotation(s) use category ids not in the category list (kept)")
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
