"""VOC annotation XML (also LabelImg's): parsing to plain data, writing it back, and what both readers share
(class lists, category ids by name, box-only instances, image sizes)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maskkit.data.annotations import Category, new_instances
from maskkit.data.images import image_size
from maskkit.errors import DataError
from maskkit.structures import Instances

_OBJ_KEYS = ("name", "bndbox")
BACKGROUND_NAMES = ("_background_", "background", "__background__")


def _elem_value(elem: ET.Element) -> Any:
    """An element as plain data: text for leaves, else a dict (repeated tags become lists)."""
    if len(elem) == 0:
        return (elem.text or "").strip()
    out: dict[str, Any] = {}
    for child in elem:
        value = _elem_value(child)
        if child.tag in out:
            if not isinstance(out[child.tag], list):
                out[child.tag] = [out[child.tag]]
            out[child.tag].append(value)
        else:
            out[child.tag] = value
    return out


def _add_value(parent: ET.Element, tag: str, value: Any) -> None:
    """Inverse of :func:`_elem_value`."""
    if isinstance(value, list):
        for v in value:
            _add_value(parent, tag, v)
        return
    elem = ET.SubElement(parent, tag)
    if isinstance(value, dict):
        for k, v in value.items():
            _add_value(elem, k, v)
    else:
        elem.text = str(value)


def _num(value: Any, xf: Path, where: str, key: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"<{key}> must be a number, got {value!r}", file=xf, annotation=where) from None


def parse_xml(xf: Path) -> dict[str, Any]:
    """A VOC/LabelImg XML as ``{"fields": {...}, "size": (h, w) or None, "objects": [...]}``.

    Each object is ``{"name", "box": XYXY 0-based, "fields": other object children}``.
    """
    try:
        root = ET.parse(xf).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"malformed XML ({exc})", file=xf) from None
    if root.tag != "annotation":
        raise DataError(f"not a VOC annotation: root element is <{root.tag}>", file=xf)
    fields = _elem_value(root)
    if not isinstance(fields, dict):
        fields = {}
    objects = fields.pop("object", [])
    objects = objects if isinstance(objects, list) else [objects]
    size = fields.get("size")
    if not isinstance(size, dict):
        size = {}
    h = _num(size.get("height", 0) or 0, xf, "size", "height")
    w = _num(size.get("width", 0) or 0, xf, "size", "width")
    out = []
    for i, obj in enumerate(objects):
        where = f"object {i}"
        if not isinstance(obj, dict) or not obj.get("name") or not isinstance(obj.get("bndbox"), dict):
            raise DataError("an <object> needs <name> and <bndbox>", file=xf, annotation=where)
        bb = obj["bndbox"]
        xmin, ymin, xmax, ymax = (_num(bb.get(k), xf, where, k) for k in ("xmin", "ymin", "xmax", "ymax"))
        out.append({"name": str(obj["name"]), "box": [xmin - 1, ymin - 1, xmax, ymax],
                    "fields": {k: v for k, v in obj.items() if k not in _OBJ_KEYS}})
    return {"fields": fields, "size": (int(h), int(w)) if h > 0 and w > 0 else None, "objects": out}


def _fmt(v: float) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() else np.format_float_positional(np.float32(v), trim="-")


def build_xml(filename: str, h: int, w: int, depth: int, fields: dict[str, Any], objects: list[dict[str, Any]],
              segmented: bool) -> str:
    """A VOC annotation XML (objects: ``name``, ``box`` XYXY 0-based, ``fields``)."""
    root = ET.Element("annotation")
    known = ("folder", "filename", "path", "size", "segmented")
    _add_value(root, "folder", fields.get("folder", "JPEGImages"))
    _add_value(root, "filename", filename)
    for k, v in fields.items():
        if k not in known:
            _add_value(root, k, v)
    _add_value(root, "size", {"width": w, "height": h, "depth": depth})
    _add_value(root, "segmented", int(segmented))
    for obj in objects:
        extra = obj.get("fields") or {}
        o = ET.SubElement(root, "object")
        _add_value(o, "name", obj["name"])
        for key, default in (("pose", "Unspecified"), ("truncated", 0), ("difficult", 0)):
            _add_value(o, key, extra.get(key, default))
        for k, v in extra.items():
            if k not in ("pose", "truncated", "difficult"):
                _add_value(o, k, v)
        x0, y0, x1, y1 = obj["box"]
        _add_value(o, "bndbox", {"xmin": _fmt(x0 + 1), "ymin": _fmt(y0 + 1), "xmax": _fmt(x1), "ymax": _fmt(y1)})
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def xml_extra(xml: dict[str, Any]) -> dict[str, Any]:
    """Image-level XML fields to write back (``filename``/``path``/``size`` are rewritten)."""
    fields = xml["fields"]
    out: dict[str, Any] = {"xml": {k: v for k, v in fields.items() if k not in ("filename", "path", "size")}}
    size = fields.get("size")
    if isinstance(size, dict) and str(size.get("depth", "")).isdigit():
        out["depth"] = int(size["depth"])
    return out


# -- shared by the VOC and LabelImg readers ---------------------------------------------------------
def is_voc_xml(path: Path) -> bool:
    """Whether the file starts like a VOC annotation XML (an ``<annotation>`` root)."""
    with open(path, "rb") as f:
        head = f.read(2048)
    return re.search(rb"<annotation[\s>]", head) is not None


def read_text(path: Path) -> str:
    """A UTF-8 text file; DataError naming it when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read text file ({exc})", file=path) from None


def class_list(root: Path, default: Sequence[str] | None) -> list[str] | None:
    """Class names by index (index 0 = background) from ``class_names.txt``, else ``default`` after it."""
    for name in ("class_names.txt", "classes.txt"):
        txt = root / name
        if txt.is_file():
            names = [ln.strip() for ln in read_text(txt).splitlines() if ln.strip()]
            return names if names and names[0] in BACKGROUND_NAMES else ["_background_", *names]
    return ["_background_", *default] if default is not None else None


class XmlCategories:
    """Category ids by name: the class list first (id = class index), then new names in order of use."""

    def __init__(self, class_list: list[str] | None) -> None:
        self.names = list(class_list or ["_background_"])
        self.fixed = len(self.names)
        self.ids = {n: i for i, n in enumerate(self.names) if i > 0}

    def id(self, name: str) -> int:
        if name not in self.ids:
            self.ids[name] = len(self.names)
            self.names.append(name)
        return self.ids[name]

    def categories(self) -> list[Category]:
        return [Category(i, n) for i, n in enumerate(self.names) if i > 0]


def box_instances(h: int, w: int, objects: list[dict[str, Any]], cats: XmlCategories, first_id: int) -> Instances:
    """Box-only instances of XML objects."""
    return new_instances(h, w, [cats.id(o["name"]) for o in objects], None,
                         np.asarray([o["box"] for o in objects], dtype=np.float32).reshape(-1, 4),
                         ids=list(range(first_id, first_id + len(objects))),
                         extras=[{"voc": o["fields"]} for o in objects])


def xml_size(xml: dict[str, Any] | None, image: Path, xf: Path) -> tuple[int, int]:
    """``(h, w)`` from the XML's ``<size>``, else from the image file; DataError naming the XML otherwise."""
    if xml and xml["size"]:
        h, w = xml["size"]
        return h, w
    if image.is_file():
        return image_size(image)
    raise DataError(f"image size unknown: no <size> and no image at {image}", file=xf)
