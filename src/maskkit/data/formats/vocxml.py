"""VOC annotation XML (also LabelImg's): parsing to plain data and writing it back."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from maskkit.errors import DataError

_OBJ_KEYS = ("name", "bndbox")


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
    size = fields.get("size") if isinstance(fields.get("size"), dict) else {}
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
