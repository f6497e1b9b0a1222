"""LabelMe JSON (4.x and 5.x): one ``*.json`` per image, usually beside the image.

Reading
    * ``polygon`` / ``rectangle`` / ``circle`` shapes become polygon parts (a rectangle is its 4
      corners with the drawn box; a circle is approximated by a polygon); ``mask`` shapes (5.x: a
      base64 PNG of the region between the 2 points) become full-size RLE.
    * Shapes with the same ``(label, group_id)`` form one object (LabelMe's own rule); a group
      mixing polygons and masks becomes the RLE union. ``group_id: null`` shapes are separate objects.
    * ``point`` / ``line`` / ``linestrip`` and unknown shape types are not objects: they are kept
      in ``record.extra["labelme"]["other_shapes"]`` and written back unchanged.
    * Labels like ``__ignore__`` (``_name_`` style) stay ordinary categories (``iscrowd`` false,
      ``Category.extra["ignore_label"] = True`` so validation can flag them); they get the last ids.
    * Category ids ``1..K``: the order of a ``labels.txt`` in (or one level above) the JSON folder or
      the given folder when it lists every label used (``_background_`` and unused ``_name_`` labels
      skipped), otherwise the sorted label names.
    * Embedded ``imageData`` is kept in ``record.data`` only when ``imagePath`` is not an existing
      image file.
    * Shape/file fields (``flags``, ``description``, unknown keys, the drawn rectangle/circle
      points) are kept in ``extras["labelme"]`` so writing back is lossless.

Writing: ``DST/images/<file_name>`` with ``DST/images/<stem>.json`` beside it (``imagePath``
relative, ``imageData`` null, version 5.5.0) and ``DST/labels.txt``. Polygons stay polygons (a
multi-part object is several shapes sharing a ``group_id``), rectangles/circles are written back as
such when unchanged, RLE/bitmap masks become ``mask`` shapes (lossless), box-only instances become
rectangles, crowd regions carry the shape flag ``{"iscrowd": true}`` (read back as ``iscrowd``).
Boxes of masked instances are not stored (LabelMe derives them from the shapes): a box further than
1 px from its mask's extent is counted in a report note.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from pycocotools import mask as mask_utils

from maskkit.data.annotations import AnnotationSet, Category, ImageRecord, new_instances
from maskkit.data.copyimages import place_images, sniff_image_suffix
from maskkit.data.formats.base import ConversionReport, register_format
from maskkit.data.formats.polygonize import has_mask
from maskkit.data.images import image_size, is_image_file, open_bounded
from maskkit.errors import DataError
from maskkit.fileio import atomic_write_json, atomic_write_text
from maskkit.structures import Masks
from maskkit.structures.masks import PolygonMask, RLEMask

FORMAT = "labelme"
VERSION = "5.5.0"
POLYGON_TYPES = ("polygon", "rectangle", "circle")
OBJECT_TYPES = (*POLYGON_TYPES, "mask")
OTHER_TYPES = ("point", "points", "line", "linestrip")
"""Shape types LabelMe draws that are not objects (kept, not used for training)."""
_FILE_KEYS = ("shapes", "imagePath", "imageData", "imageHeight", "imageWidth")
_SHAPE_ORDER = ("label", "points", "group_id", "description", "shape_type", "flags", "mask")


def is_special_label(name: str) -> bool:
    """``_background_`` / ``__ignore__``-style labels (LabelMe's conventions for non-classes)."""
    return len(name) > 2 and name.startswith("_") and name.endswith("_")


# -- detection -------------------------------------------------------------------------------------
def _is_labelme_json(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
            # LabelMe writes "shapes" near the top: skip parsing big JSONs (COCO files) that lack it
            if b'"shapes"' not in head and path.stat().st_size > (32 << 20):
                return False
            doc = json.loads(head + f.read())
    except (OSError, ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return False
    return isinstance(doc, dict) and "shapes" in doc and "imagePath" in doc


def detect(path: Path) -> bool:
    """A LabelMe JSON file, or a folder whose first ``*.json`` (or ``*/*.json``) is one."""
    if path.is_file():
        return path.suffix.lower() == ".json" and _is_labelme_json(path)
    if not path.is_dir():
        return False
    for pattern in ("*.json", "*/*.json", "*/*/*.json"):  # what the writer makes: DST/images/[sub/]x.json
        first = next(iter(sorted(path.glob(pattern))), None)
        if first is not None:
            return _is_labelme_json(first)
    return False


# -- geometry shared by reader and writer ------------------------------------------------------------
def _points(shape: dict[str, Any], jf: Path, index: int) -> np.ndarray:
    try:
        pts = np.asarray(shape.get("points", []), dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError("points must be a list of [x, y] numbers", file=jf, annotation=f"shape {index}") from None
    if pts.size == 0:
        return np.zeros((0, 2))
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise DataError("points must be a list of [x, y] pairs", file=jf, annotation=f"shape {index}")
    return pts


def rectangle_polygon(points: np.ndarray) -> np.ndarray:
    """The 4 corners of the box spanned by a rectangle shape's points."""
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def circle_polygon(points: np.ndarray) -> np.ndarray:
    """Polygon approximation of a circle shape (centre, point on the circumference): a vertex every ~2 px."""
    (cx, cy), (px, py) = points[0], points[1]
    r = math.hypot(px - cx, py - cy)
    n = int(min(256, max(16, math.ceil(math.pi * r))))
    t = 2 * np.pi * np.arange(n) / n
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


class _Where(TypedDict):
    """Where a LabelMe shape problem is: the keyword arguments of :class:`DataError`."""

    file: Path
    annotation: str


def _decode_mask_shape(shape: dict[str, Any], pts: np.ndarray, h: int, w: int, jf: Path, index: int) -> np.ndarray:
    """Full-size bool mask of a ``mask`` shape (base64 PNG of the region between its 2 points)."""
    where = _Where(file=jf, annotation=f"shape {index}")
    if len(pts) != 2 or not isinstance(shape.get("mask"), str):
        raise DataError("a mask shape needs 2 points and a base64 PNG 'mask'", **where)
    if not (np.isfinite(pts).all() and np.abs(pts).max() < 2**31):
        raise DataError("mask shape points must be finite pixel coordinates", **where)
    try:
        with open_bounded(io.BytesIO(base64.b64decode(shape["mask"], validate=False)), jf) as im:
            crop = np.array(im).astype(bool)
    except (binascii.Error, OSError, ValueError) as exc:
        raise DataError(f"bad base64 PNG mask ({exc})", **where) from None
    except DataError as exc:  # above the pixel limit
        raise DataError(exc.problem, **where) from None
    if crop.ndim == 3:
        crop = np.any(crop, axis=2)
    (x1, y1), (x2, y2) = pts.astype(int)
    if crop.shape != (y2 - y1 + 1, x2 - x1 + 1):
        raise DataError(f"mask is {crop.shape[1]}x{crop.shape[0]} but its points span {x2 - x1 + 1}x{y2 - y1 + 1}",
                        **where)
    full = np.zeros((h, w), dtype=bool)
    ys, xs = slice(max(y1, 0), min(y2 + 1, h)), slice(max(x1, 0), min(x2 + 1, w))
    if ys.start < ys.stop and xs.start < xs.stop:  # pixels outside the image are dropped
        full[ys, xs] = crop[ys.start - y1 : ys.stop - y1, xs.start - x1 : xs.stop - x1]
    return full


def _encode_mask_shape(bitmap: np.ndarray, bbox: tuple[int, int, int, int]) -> str:
    """Base64 PNG (1-bit, as LabelMe writes it) of ``bitmap[y1:y2+1, x1:x2+1]``."""
    from PIL import Image

    x1, y1, x2, y2 = bbox
    crop = np.zeros((y2 - y1 + 1, x2 - x1 + 1), dtype=bool)
    src = bitmap[max(y1, 0) : y2 + 1, max(x1, 0) : x2 + 1]
    crop[max(y1, 0) - y1 : max(y1, 0) - y1 + src.shape[0], max(x1, 0) - x1 : max(x1, 0) - x1 + src.shape[1]] = src
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _part_of(shape_type: str, pts: np.ndarray) -> np.ndarray:
    if shape_type == "rectangle" and len(pts) >= 2:
        return rectangle_polygon(pts)
    if shape_type == "circle" and len(pts) >= 2:
        return circle_polygon(pts)
    return pts


# -- reading ---------------------------------------------------------------------------------------
def _load_json(jf: Path) -> Any:
    try:
        with open(jf, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as exc:
        raise DataError(f"malformed JSON ({exc})", file=jf) from None
    except RecursionError:
        raise DataError("malformed JSON (nested too deeply)", file=jf) from None
    except OSError as exc:
        raise DataError(f"cannot read ({exc})", file=jf) from None


def _image_source(doc: dict[str, Any], jf: Path, root: Path) -> tuple[str, bytes | None, tuple[int, int] | None]:
    """``(file_name relative to root, embedded bytes or None, (h, w) from the image or None)``."""
    rel = str(doc.get("imagePath") or "").replace("\\", "/")
    candidate = jf.parent / rel if rel else None
    if candidate is not None and candidate.is_file() and is_image_file(candidate):
        return os.path.relpath(candidate, root).replace(os.sep, "/"), None, None
    data = None
    size = None
    if doc.get("imageData"):
        try:
            data = base64.b64decode(doc["imageData"])
            with open_bounded(io.BytesIO(data), jf) as im:
                w, h = im.size
        except (binascii.Error, OSError, ValueError, TypeError) as exc:
            raise DataError(f"imageData is not an image ({type(exc).__name__})", file=jf) from None
        size = (h, w)
        name = Path(rel).name if rel and is_image_file(Path(rel)) else jf.stem + sniff_image_suffix(data)
        candidate = jf.parent / name
    elif candidate is None:
        raise DataError("no imagePath and no imageData", file=jf)
    return os.path.relpath(candidate, root).replace(os.sep, "/"), data, size


def _embedded_problem(image_data: Any, file_name: str) -> str:
    """Why ``imageData`` is not an image (it is not used: ``imagePath`` names an existing image)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(base64.b64decode(image_data))) as im:
            im.size  # noqa: B018 - the header parses
        return ""
    except (binascii.Error, OSError, ValueError, TypeError) as exc:
        return f"imageData is not an image ({type(exc).__name__}); the image file {file_name!r} is used instead"


def _meta(shape: dict[str, Any], drop: tuple[str, ...]) -> dict[str, Any]:
    meta = {k: v for k, v in shape.items() if k not in ("label", "group_id", *drop)}
    if isinstance(meta.get("flags"), dict) and "iscrowd" in meta["flags"]:
        meta["flags"] = {k: v for k, v in meta["flags"].items() if k != "iscrowd"}
    return meta


def _read_file(doc: dict[str, Any], jf: Path, root: Path
               ) -> tuple[dict[str, Any], list[str], list[Any], list[Any], list[bool], list[dict[str, Any]]]:
    """One JSON -> record fields, and per object: label name, mask item, box (or None), crowd, extras."""
    file_name, data, size = _image_source(doc, jf, root)
    h, w = doc.get("imageHeight"), doc.get("imageWidth")
    if not isinstance(h, int) or not isinstance(w, int):
        if size is None:
            size = image_size(root / file_name)
        h, w = size
    groups: dict[Any, list[int]] = {}
    other: list[dict[str, Any]] = []
    problems: dict[str, str] = {}
    if doc.get("imageData") and data is None and (bad := _embedded_problem(doc["imageData"], file_name)):
        problems["invalid-embedded-image"] = bad
    unknown: list[str] = []
    for i, shape in enumerate(doc["shapes"]):
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            raise DataError("a shape must be an object with a string 'label'", file=jf, annotation=f"shape {i}")
        if (shape.get("shape_type") or "polygon") not in OBJECT_TYPES:
            if shape.get("shape_type") not in OTHER_TYPES:
                unknown.append(f"shape {i} ({shape['label']!r}) has shape_type {shape.get('shape_type')!r}"[:200])
            other.append(shape)
            continue
        gid = shape.get("group_id")
        if not isinstance(gid, int | float | str | None):
            raise DataError("group_id must be a number or null", file=jf, annotation=f"shape {i}")
        groups.setdefault((shape["label"], gid) if gid is not None else ("", i, None), []).append(i)
    names, items, boxes, crowd, extras = [], [], [], [], []
    for members in groups.values():
        shapes = [doc["shapes"][i] for i in members]
        types = [s.get("shape_type") or "polygon" for s in shapes]
        pts = [_points(s, jf, i) for s, i in zip(shapes, members, strict=True)]
        for t, p, i in zip(types, pts, members, strict=True):
            if t in ("rectangle", "circle") and len(p) < 2:
                raise DataError(f"a {t} shape needs 2 points", file=jf, annotation=f"shape {i}")
        parts = [_part_of(t, p) for t, p in zip(types, pts, strict=True)]
        box = None
        if "mask" not in types:
            item: Any = PolygonMask(parts, h, w)
            metas = [_meta(s, ("points",) if t == "polygon" else ()) for s, t in zip(shapes, types, strict=True)]
            if types == ["rectangle"]:
                box = np.concatenate([pts[0].min(axis=0), pts[0].max(axis=0)])
        else:
            rles = [
                mask_utils.encode(np.asfortranarray(_decode_mask_shape(s, p, h, w, jf, i), dtype=np.uint8))
                if t == "mask" else PolygonMask([part], h, w).to_rle()
                for s, t, p, part, i in zip(shapes, types, pts, parts, members, strict=True)
            ]
            item = RLEMask(mask_utils.merge(rles) if len(rles) > 1 else rles[0])
            metas = [_meta(s, ("mask",) if len(shapes) == 1 else ()) for s in shapes]
        names.append(shapes[0]["label"])
        items.append(item)
        boxes.append(box)
        crowd.append(any(isinstance(s.get("flags"), dict) and bool(s["flags"].get("iscrowd")) for s in shapes))
        extras.append({"labelme": {"group_id": shapes[0].get("group_id"), "shapes": metas}})
    file_extra = {k: v for k, v in doc.items() if k not in _FILE_KEYS}
    if other:
        file_extra["other_shapes"] = other
    if unknown:
        problems["unknown-shape-type"] = (f"{'; '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}: "
                                          f"not an object type ({', '.join(OBJECT_TYPES)}), ignored")
    rec = {"file_name": file_name, "height": h, "width": w, "data": data, "source": str(jf),
           "extra": {"labelme": file_extra}, "problems": problems}
    return rec, names, items, boxes, crowd, extras


def _label_order(folders: list[Path], used: set[str]) -> list[str]:
    """Category names in id order (see the module docstring)."""
    for folder in dict.fromkeys(folders):
        txt = folder / "labels.txt"
        if txt.is_file():
            try:
                text = txt.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"cannot read the label list ({exc})", file=txt) from None
            listed = [ln.strip() for ln in text.splitlines() if ln.strip()]
            if used <= set(listed):
                names = list(dict.fromkeys(n for n in listed if not is_special_label(n) or n in used))
                return [n for n in names if not is_special_label(n)] + [n for n in names if is_special_label(n)]
    return sorted(n for n in used if not is_special_label(n)) + sorted(n for n in used if is_special_label(n))


def read(path: Path) -> AnnotationSet:
    """Read a LabelMe JSON file or a folder of them (recursively, in sorted path order)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob("*.json"))
    # image root: the deepest folder holding every JSON (``DST/images`` for what the writer wrote)
    root = Path(os.path.commonpath([f.parent for f in files])) if files else path
    parsed, skipped = [], []
    for jf in files:
        doc = _load_json(jf)
        if isinstance(doc, dict) and "shapes" in doc and ("imagePath" in doc or path.is_file()):
            if not isinstance(doc["shapes"], list):
                raise DataError("'shapes' must be a list", file=jf)
            parsed.append(_read_file(doc, jf, root))
        elif path.is_file():
            raise DataError("not a LabelMe file: needs an object with a 'shapes' list", file=jf)
        else:  # another JSON in the folder (e.g. a config): not LabelMe, skipped
            skipped.append(os.path.relpath(jf, root))
    used = {n for p in parsed for n in p[1]}
    top = path.parent if path.is_file() else path
    order = _label_order([root, root.parent, top, top.parent], used)
    categories = [Category(i + 1, n, extra={"ignore_label": True} if is_special_label(n) else {})
                  for i, n in enumerate(order)]
    ids = {c.name: c.id for c in categories}
    images, ann_id = [], 1
    for img_id, (rec, names, items, boxes, crowd, extras) in enumerate(parsed, start=1):
        h, w = rec["height"], rec["width"]
        masks = Masks(items, h, w)
        box_arr = masks.boxes()
        for i, b in enumerate(boxes):
            if b is not None:
                box_arr[i] = b
        inst = new_instances(h, w, [ids[n] for n in names], masks, box_arr, crowd,
                             list(range(ann_id, ann_id + len(names))), extras)
        ann_id += len(names)
        images.append(ImageRecord(img_id, instances=inst, **rec))
    info = {"skipped_files": skipped} if skipped else {}
    return AnnotationSet(categories, images, image_root=root, source=path, format=FORMAT, info=info)


# -- writing ---------------------------------------------------------------------------------------
def _shape(label: str, points: Any, gid: Any, shape_type: str, meta: dict[str, Any], crowd: bool,
           mask: str | None = None) -> dict[str, Any]:
    flags = dict(meta.get("flags") or {})
    if crowd:
        flags["iscrowd"] = True
    out: dict[str, Any] = {
        "label": label,
        "points": np.asarray(points, dtype=np.float64).reshape(-1, 2).tolist(),
        "group_id": gid,
        "description": meta.get("description", ""),
        "shape_type": shape_type,
        "flags": flags,
        "mask": mask,
    }
    for k in sorted(meta):
        if k not in _SHAPE_ORDER:
            out[k] = meta[k]
    return out


def _polygon_shapes(item: PolygonMask, metas: list[dict[str, Any]], label: str, gid: Any, crowd: bool
                    ) -> list[dict[str, Any]]:
    aligned = len(metas) == len(item.parts) and all(m.get("shape_type", "polygon") in POLYGON_TYPES for m in metas)
    shapes = []
    for j, part in enumerate(item.parts):
        meta = metas[j] if aligned else (metas[0] if metas and len(item.parts) == 1 else {})
        stype = meta.get("shape_type", "polygon")
        if stype in ("rectangle", "circle") and "points" in meta:
            orig = np.asarray(meta["points"], dtype=np.float64).reshape(-1, 2)
            same = len(orig) >= 2 and _part_of(stype, orig).shape == part.shape
            if same and np.array_equal(_part_of(stype, orig), part):
                shapes.append(_shape(label, orig, gid, stype, meta, crowd))
                continue
        meta = {k: v for k, v in meta.items() if k not in ("points", "shape_type")}
        shapes.append(_shape(label, part, gid, "polygon", meta, crowd))
    return shapes


def _mask_shapes(rle: dict[str, Any], metas: list[dict[str, Any]], label: str, gid: Any, crowd: bool,
                 h: int, w: int) -> list[dict[str, Any]]:
    full = len(metas) > 1 and all(("mask" in m) if m.get("shape_type") == "mask" else ("points" in m) for m in metas)
    if full:  # a mixed group read from LabelMe: write its shapes back if the pixels are unchanged
        parts = []
        for m in metas:
            pts = np.asarray(m["points"], dtype=np.float64).reshape(-1, 2)
            if m.get("shape_type") == "mask":
                try:
                    bm = _decode_mask_shape(m, pts, h, w, Path("<memory>"), 0)
                except DataError:
                    full = False
                    break
                parts.append(mask_utils.encode(np.asfortranarray(bm, dtype=np.uint8)))
            else:
                parts.append(PolygonMask([_part_of(m.get("shape_type", "polygon"), pts)], h, w).to_rle())
        if full and mask_utils.merge(parts)["counts"] == rle["counts"]:
            return [_shape(label, m["points"], gid, m.get("shape_type", "polygon"), m, crowd, m.get("mask"))
                    for m in metas]
    bitmap = mask_utils.decode(rle).astype(bool)
    ys, xs = np.nonzero(bitmap)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())) if len(xs) else (0, 0, 0, 0)
    meta = metas[0] if len(metas) == 1 and metas[0].get("shape_type") == "mask" else {}
    if "points" in meta:  # keep the drawn region when it still holds every pixel
        (x1, y1), (x2, y2) = np.asarray(meta["points"], dtype=np.float64).reshape(-1, 2)[:2].astype(int)
        if x1 <= bbox[0] and y1 <= bbox[1] and x2 >= bbox[2] and y2 >= bbox[3]:
            bbox = (x1, y1, x2, y2)
    meta = {k: v for k, v in meta.items() if k not in ("points", "mask", "shape_type")}
    corners = [[bbox[0], bbox[1]], [bbox[2], bbox[3]]]
    return [_shape(label, corners, gid, "mask", meta, crowd, _encode_mask_shape(bitmap, bbox))]


def write(aset: AnnotationSet, dst: Path) -> ConversionReport:
    """Write LabelMe JSON beside copies of the images under ``dst/images`` (see the module docstring)."""
    dst = Path(dst)
    report = ConversionReport(FORMAT, dst)
    names = place_images(aset, dst / "images", report, unique_stems=True)  # unique stems: one JSON each
    cats = aset.category_by_id()
    box_only, box_moved, unknown = 0, 0, set()
    for rec, name in zip(aset.images, names, strict=True):
        inst = rec.instances
        n = len(inst)
        extras = inst.get("extras") or [{} for _ in range(n)]
        metas = [(e.get("labelme") or {}) if isinstance(e, dict) else {} for e in extras]
        masks = inst.get("masks")
        labels = []
        for lab in inst.labels.tolist():
            if lab in cats:
                labels.append(cats[lab].name)
            else:
                labels.append(str(lab))
                unknown.add(str(lab))
                report.change("unknown category id written as its number as the label")
        # group ids: keep the stored ones where (label, group_id) stays unique, else allocate new ones
        taken = {(labels[i], metas[i].get("group_id")) for i in range(n) if metas[i].get("group_id") is not None}
        next_gid = 1 + max([g for _, g in taken if isinstance(g, int)], default=-1)
        seen: set[Any] = set()
        shapes: list[dict[str, Any]] = []
        extents = masks.boxes() if masks is not None else None
        for i in range(n):
            item = masks[i] if masks is not None else None
            gid = metas[i].get("group_id")
            needs_gid = (isinstance(item, PolygonMask) and len(item.parts) > 1) or len(metas[i].get("shapes", [])) > 1
            if (gid is None and needs_gid) or (gid is not None and (labels[i], gid) in seen):
                while (labels[i], next_gid) in taken or (labels[i], next_gid) in seen:
                    next_gid += 1
                gid = next_gid
            if gid is not None:
                seen.add((labels[i], gid))
            stored = list(metas[i].get("shapes") or [])
            crowd = bool(inst.iscrowd[i]) if inst.has("iscrowd") else False
            if not has_mask(inst, i):
                meta = stored[0] if len(stored) == 1 else {}
                meta = {k: v for k, v in meta.items() if k not in ("points", "mask", "shape_type")}
                box = np.asarray(inst.boxes[i], dtype=np.float64).reshape(2, 2)
                shapes.append(_shape(labels[i], box, gid, "rectangle", meta, crowd))
                box_only += 1
                continue
            if isinstance(item, PolygonMask):
                new = _polygon_shapes(item, stored, labels[i], gid, crowd)
            else:
                new = _mask_shapes(masks.rle(i), stored, labels[i], gid, crowd, rec.height, rec.width)
            shapes.extend(new)
            rect = [s["points"] for s in new if s["shape_type"] == "rectangle"]
            assert extents is not None  # has_mask: the image has masks
            extent = np.concatenate(np.sort(rect[0], axis=0)) if len(new) == 1 and rect else extents[i]
            box_moved += int(np.abs(np.asarray(inst.boxes[i]) - extent).max() > 1)
        file_extra = dict((rec.extra or {}).get("labelme") or {})
        shapes.extend(file_extra.pop("other_shapes", []))
        doc: dict[str, Any] = {"version": VERSION, "flags": file_extra.pop("flags", {}) or {}, "shapes": shapes}
        for k in sorted(file_extra):
            if k != "version":
                doc[k] = file_extra[k]
        doc.update(imagePath=Path(name).name, imageData=None, imageHeight=rec.height, imageWidth=rec.width)
        atomic_write_json(dst / "images" / Path(name).with_suffix(".json"), doc, indent=2)
        report.images += 1
        report.instances += n
    voids = sum(1 for r in aset.images if r.extra.get("voc_void") or r.extra.get("voc_class_void"))
    report.note(voids, f"{voids} image(s) have a VOC void region, which LabelMe cannot hold (not written)")
    report.note(box_moved, f"{box_moved} box(es) differ from their mask's extent by > 1 px: not stored in LabelMe")
    report.note(box_only, f"{box_only} box-only instance(s) written as rectangle shapes (read back with a box mask)")
    # labels.txt as LabelMe's own tools expect it (``__ignore__``, ``_background_``, classes): fixes the ids
    regular = [c for c in aset.categories if not is_special_label(c.name)]
    special = [c for c in aset.categories if is_special_label(c.name)]
    labels_txt = list(dict.fromkeys(["__ignore__", "_background_", *(c.name for c in regular + special)]))
    atomic_write_text(dst / "labels.txt", "\n".join([*labels_txt, *sorted(unknown)]) + "\n")
    report.note_renumbered([c.id for c in regular + special], "1..K (labels.txt order, _name_ labels last)")
    return report


register_format(FORMAT, detect=detect, read=read, write=write,
                description="LabelMe JSON per image (polygon/rectangle/circle/mask shapes, group_id parts)")
