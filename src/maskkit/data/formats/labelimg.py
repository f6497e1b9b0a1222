"""LabelImg (format ``labelimg``, read-only): a folder of VOC XML files next to the images -> box-only instances.

Each XML's image is found by its ``filename`` (beside the XML, or in a VOC root's ``JPEGImages`` when
given its ``Annotations``), then its ``path``, then the XML's stem with an image suffix. Classes: a
``class_names.txt``/``classes.txt`` beside the XMLs (line = class index), then new names in order of
use. XML fields live in ``extras["voc"]`` (objects) and ``extra["voc"]`` (images), as for VOC. The XML
itself is :mod:`.vocxml`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from maskkit.data.annotations import AnnotationSet, ImageRecord
from maskkit.data.formats.base import register_format
from maskkit.data.formats.voc import is_voc_root
from maskkit.data.formats.vocxml import (
    XmlCategories,
    box_instances,
    class_list,
    is_voc_xml,
    parse_xml,
    xml_extra,
    xml_size,
)
from maskkit.data.images import is_image_file

LABELIMG = "labelimg"


def detect_labelimg(path: Path) -> bool:
    """A VOC XML file, or a folder (not a VOC root) whose first ``*.xml`` has an ``<annotation>`` root."""
    if path.is_file():
        return path.suffix.lower() == ".xml" and is_voc_xml(path)
    if not path.is_dir() or is_voc_root(path):
        return False
    first = next(iter(sorted(path.glob("*.xml"))), None)
    return first is not None and is_voc_xml(first)


def _find_image(xml: dict[str, Any], xf: Path) -> Path:
    fields = xml["fields"]
    candidates = []
    if fields.get("filename"):  # beside the XML, or in a VOC root's JPEGImages when given its Annotations
        candidates += [xf.parent / str(fields["filename"]), xf.parent.parent / "JPEGImages" / str(fields["filename"])]
    if fields.get("path"):
        p = Path(str(fields["path"]).replace("\\", "/"))
        candidates += [xf.parent / p.name, p]
    candidates += [xf.with_suffix(s) for s in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")]
    for c in candidates:
        if c.is_file() and is_image_file(c):
            return c
    return candidates[0]


def read_labelimg(path: Path) -> AnnotationSet:
    """Read a LabelImg folder of VOC XML files (or one XML file): box-only instances."""
    path = Path(path)
    root = path.parent if path.is_file() else path
    files = [path] if path.is_file() else sorted(path.glob("*.xml"))
    parsed = [(xf, parse_xml(xf)) for xf in files]
    listed = class_list(root, None)
    used = sorted({o["name"] for _, x in parsed for o in x["objects"]})
    cats = XmlCategories(listed)
    for name in used:
        cats.id(name)
    images, ann_id = [], 1
    for img_id, (xf, xml) in enumerate(parsed, start=1):
        image = _find_image(xml, xf)
        h, w = xml_size(xml, image, xf)
        inst = box_instances(h, w, xml["objects"], cats, ann_id)
        ann_id += len(inst)
        extra = {"voc": xml_extra(xml)}
        file_name = os.path.relpath(image, root).replace(os.sep, "/")
        images.append(ImageRecord(img_id, file_name, h, w, inst, extra=extra, source=str(xf)))
    return AnnotationSet(cats.categories(), images, image_root=root, source=path, format=LABELIMG)


register_format(
    LABELIMG,
    detect=detect_labelimg,
    read=read_labelimg,
    write=None,
    description="LabelImg / VOC XML boxes beside the images (read-only, box-only)",
)
