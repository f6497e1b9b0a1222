"""Pascal VOC (instance segmentation and detection); LabelImg's XML folders are :mod:`.labelimg`.

VOC root layout (format ``voc``)::

    JPEGImages/<id>.jpg                    images (other suffixes accepted)
    SegmentationObject/<id>.png            palette PNG: pixel = instance index 1..254, 0 background, 255 void
    SegmentationClass/<id>.png             palette PNG: pixel = class index, 0 background, 255 void
    Annotations/<id>.xml                   optional boxes: object i <-> instance index i + 1
    ImageSets/Segmentation/<split>.txt     optional image id lists
    class_names.txt                        optional class list (line = class index; else the 20 VOC classes)

Images read from a root: the ids listed in ``ImageSets/Segmentation/*.txt`` when any exist, else every
id with a ``SegmentationObject`` PNG or an ``Annotations`` XML; a split file
(``ImageSets/<task>/<split>.txt``) reads just its ids. An instance's class is its XML object's
``name``, else the majority of ``SegmentationClass`` over its pixels. XML objects without pixels are
box-only instances (a ``PolygonMask`` without parts). The void region (255) is kept per image as a
string RLE in ``record.extra["voc_void"]`` (and ``"voc_class_void"`` when the class PNG's void differs)
so that the writer can put it back. XML fields (``pose``, ``truncated``, ``difficult``, …) live in
``extras["voc"]``. XML boxes are 1-based inclusive pixel indices: ``xyxy = (xmin - 1, ymin - 1,
xmax, ymax)``.

The writer paints instances largest first into one label per pixel (so small objects in front of big
ones survive); index ``k`` is still the k-th written instance in the original order. VOC cannot hold
overlaps nor more than 254 instances per image: every instance that loses pixels to an overlapping
one is reported, one covered completely (or beyond 254) is dropped and counted. Crowd regions become
void (255).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from maskkit.data.annotations import AnnotationSet, ImageRecord, new_instances
from maskkit.data.copyimages import dest_names, place_images
from maskkit.data.formats.base import ConversionReport, register_format
from maskkit.data.formats.polygonize import has_mask
from maskkit.data.formats.vocxml import (
    XmlCategories,
    box_instances,
    build_xml,
    class_list,
    parse_xml,
    read_text,
    xml_extra,
    xml_size,
)
from maskkit.data.images import is_image_file
from maskkit.data.palette import read_index_png, write_index_png
from maskkit.errors import DataError
from maskkit.fileio import atomic_write_text
from maskkit.structures import Masks
from maskkit.structures.masks import PolygonMask, RLEMask, rle_to_string
from maskkit.structures.rle import encode_bitmap

FORMAT = "voc"
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
MAX_INSTANCES = 254


# -- detection -------------------------------------------------------------------------------------
def is_voc_root(path: Path) -> bool:
    """A folder with ``JPEGImages`` plus ``SegmentationObject`` or ``Annotations``."""
    has_labels = (path / "SegmentationObject").is_dir() or (path / "Annotations").is_dir()
    return (path / "JPEGImages").is_dir() and has_labels


def _split_root(path: Path) -> Path | None:
    """The VOC root of a split file ``root/ImageSets/<task>/<split>.txt``."""
    if path.suffix == ".txt" and path.parent.parent.name == "ImageSets" and is_voc_root(path.parents[2]):
        return path.parents[2]
    return None


def detect(path: Path) -> bool:
    """A VOC root (``JPEGImages`` plus ``SegmentationObject`` or ``Annotations``) or one of its split files."""
    return (path.is_dir() and is_voc_root(path)) or (path.is_file() and _split_root(path) is not None)


# -- reading ---------------------------------------------------------------------------------------
def _voc_ids(path: Path) -> tuple[Path, list[str]]:
    split_root = _split_root(path) if path.is_file() else None
    if split_root is not None:
        return split_root, _read_ids(path)
    root = path
    split_files = sorted((root / "ImageSets" / "Segmentation").glob("*.txt"))
    if split_files:
        return root, sorted({i for f in split_files for i in _read_ids(f)})
    stems = {p.stem for p in (root / "SegmentationObject").glob("*.png")}
    stems |= {p.stem for p in (root / "Annotations").glob("*.xml")}
    return root, sorted(stems)


def _read_ids(txt: Path) -> list[str]:
    # detection split files may carry a second column (``id  1``/``id -1`` per-class lists)
    return list(dict.fromkeys(ln.split()[0] for ln in read_text(txt).splitlines() if ln.strip()))


def _void_extra(obj: np.ndarray, cls: np.ndarray | None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    void = obj == 255
    if void.any():
        extra["voc_void"] = rle_to_string(encode_bitmap(void))
    if cls is not None:
        cvoid = cls == 255
        if not np.array_equal(cvoid, void):
            extra["voc_class_void"] = rle_to_string(encode_bitmap(cvoid))
    return extra


def _segmented_instances(obj: np.ndarray, cls: np.ndarray | None, xml: dict[str, Any] | None, cats: XmlCategories,
                         png: Path) -> tuple[list[int], list[Any], list[Any], list[dict[str, Any]]]:
    """Instances of one SegmentationObject image: labels, mask items, boxes (or None), extras."""
    h, w = obj.shape
    present = np.bincount(obj.reshape(-1), minlength=256)
    objects = xml["objects"] if xml else []
    n = max(len(objects), max((k for k in range(1, 255) if present[k]), default=0))
    votes = None
    if cls is not None:
        if cls.shape != obj.shape:
            raise DataError(f"SegmentationClass is {cls.shape[1]}x{cls.shape[0]}, SegmentationObject {w}x{h}",
                            file=png)
        votes = np.bincount(obj.reshape(-1).astype(np.int64) * 256 + cls.reshape(-1), minlength=65536)
        votes = votes.reshape(256, 256)
        votes[:, 0] = votes[:, 255] = 0
    labels, items, boxes, extras = [], [], [], []
    for k in range(1, n + 1):
        o = objects[k - 1] if k <= len(objects) else None
        if o is None and not present[k]:
            continue
        if o is not None:
            label = cats.id(o["name"])
        elif votes is not None and votes[k].any():
            label = int(votes[k].argmax())
        else:
            label = 0  # no class information: an unknown category, for validation to report
        labels.append(label)
        items.append(RLEMask(encode_bitmap(obj == k)) if present[k] else PolygonMask([], h, w))
        boxes.append(o["box"] if o is not None else None)
        extras.append({"voc": o["fields"]} if o is not None else {})
    return labels, items, boxes, extras


def _image_names(folder: Path) -> dict[str, str]:
    return {p.stem: p.name for p in sorted(folder.glob("*")) if is_image_file(p)} if folder.is_dir() else {}


def read(path: Path) -> AnnotationSet:
    """Read a VOC root (or one split file of it)."""
    root, ids = _voc_ids(Path(path))
    seg_dir, cls_dir, ann_dir = root / "SegmentationObject", root / "SegmentationClass", root / "Annotations"
    xmls = {stem: parse_xml(ann_dir / f"{stem}.xml") for stem in ids if (ann_dir / f"{stem}.xml").is_file()}
    used = sorted({o["name"] for x in xmls.values() for o in x["objects"]})
    cats = XmlCategories(class_list(root, VOC_CLASSES if cls_dir.is_dir() or set(used) <= set(VOC_CLASSES) else None))
    for name in used:
        cats.id(name)
    jpegs = _image_names(root / "JPEGImages")
    images, ann_id = [], 1
    for img_id, stem in enumerate(ids, start=1):
        file_name = f"JPEGImages/{jpegs.get(stem, stem + '.jpg')}"
        xf = ann_dir / f"{stem}.xml"
        xml = xmls.get(stem)
        png = seg_dir / f"{stem}.png"
        extra: dict[str, Any] = {}
        problems: dict[str, str] = {}
        if xml:
            extra["voc"] = xml_extra(xml)
        if png.is_file():
            obj = read_index_png(png)
            cpng = cls_dir / f"{stem}.png"
            cls = read_index_png(cpng) if cpng.is_file() else None
            if cls is None and cls_dir.is_dir():
                problems["missing-class-png"] = (
                    f"SegmentationClass/{stem}.png is missing: classes come from the XML only"
                    f"{'' if xml else ' (there is none: the instances get no class)'}")
            h, w = obj.shape
            labels, items, boxes, extras = _segmented_instances(obj, cls, xml, cats, png)
            masks = Masks(items, h, w)
            box_arr = masks.boxes()
            for i, b in enumerate(boxes):
                if b is not None:
                    box_arr[i] = b
            inst = new_instances(h, w, labels, masks, box_arr, ids=list(range(ann_id, ann_id + len(labels))),
                                 extras=extras)
            extra.update(_void_extra(obj, cls))
            source = png
        else:
            h, w = xml_size(xml, root / file_name, xf)
            inst = box_instances(h, w, xml["objects"] if xml else [], cats, ann_id)
            source = xf
        ann_id += len(inst)
        images.append(ImageRecord(img_id, file_name, h, w, inst, extra=extra, source=str(source), problems=problems))
    return AnnotationSet(cats.categories(), images, image_root=root, source=Path(path), format=FORMAT, root=root)


# -- writing ---------------------------------------------------------------------------------------
def _paint(rec: ImageRecord, class_index: dict[int, int], report: ConversionReport
           ) -> tuple[np.ndarray, np.ndarray, list[int]] | None:
    """Object and class index images of one record; returns them and the written instance order."""
    inst, h, w = rec.instances, rec.height, rec.width
    masks = inst.get("masks")
    if masks is None:
        return None
    labels = np.zeros((h, w), dtype=np.int32)  # instance number i + 1 before renumbering; -1 void
    cls = np.zeros((h, w), dtype=np.uint8)
    if rec.extra.get("voc_void"):
        labels[mask_utils.decode(rec.extra["voc_void"]).astype(bool)] = -1
    cvoid = rec.extra.get("voc_class_void") or rec.extra.get("voc_void")
    if cvoid:
        cls[mask_utils.decode(cvoid).astype(bool)] = 255
    crowd = inst.iscrowd if inst.has("iscrowd") else np.zeros(len(inst), dtype=bool)
    masked = [i for i in range(len(inst)) if has_mask(inst, i)]
    for i in masked:
        if crowd[i]:  # crowd regions first, as void: every instance is painted over them
            bm = masks.bitmap(i)
            labels[bm] = -1
            cls[bm] = 255
            report.change("crowd region written as void (255): no crowd flag in VOC")
    areas = np.zeros(len(inst), dtype=np.int64)
    solid = [i for i in masked if not crowd[i]]
    areas[solid] = masks[solid].areas().astype(np.int64) if solid else []
    for i in sorted(solid, key=lambda j: -areas[j]):  # largest first: small objects stay visible on top
        bm = masks.bitmap(i)
        labels[bm] = i + 1
        cls[bm] = class_index.get(int(inst.labels[i]), 0)
    kept = np.bincount(labels[labels > 0].reshape(-1), minlength=len(inst) + 1)[1:]
    order = []
    for i in range(len(inst)):
        if crowd[i]:
            continue
        if areas[i] and not kept[i]:
            report.change("dropped: completely covered by smaller instances (VOC has one label per pixel)")
            continue
        if kept[i] < areas[i]:
            report.change("overlap: pixels given to a smaller overlapping instance")
        order.append(i)
    for i in order[MAX_INSTANCES:]:
        pixels = labels == i + 1
        labels[pixels] = 0
        cls[pixels] = 0
        report.change(f"dropped: more than {MAX_INSTANCES} instances in one image")
    order = order[:MAX_INSTANCES]
    lut = np.zeros(len(inst) + 2, dtype=np.uint8)
    lut[-1] = 255  # index -1 (void)
    for k, i in enumerate(order, start=1):
        lut[i + 1] = k
    return lut[labels], cls, order


def _voc_names(aset: AnnotationSet) -> list[str]:
    """Flat ``JPEGImages`` file names: the safe names of :func:`dest_names` reduced to their base names,
    or (when base names repeat) with the sub-folders joined by ``_``."""
    rels = [PurePosixPath(n) for n in dest_names(aset, unique_stems=True)]
    if len({r.stem for r in rels}) == len(rels):
        return [r.name for r in rels]
    out: list[str] = []
    for r in rels:
        name, k = "_".join(r.parts), 1
        while name.lower() in (o.lower() for o in out):
            k += 1
            name = f"{'_'.join(r.with_suffix('').parts)}_{k}{r.suffix}"
        out.append(name)
    return out


def write(aset: AnnotationSet, dst: Path) -> ConversionReport:
    """Write a VOC root (see the module docstring)."""
    dst = Path(dst)
    report = ConversionReport(FORMAT, dst)
    cats = aset.categories
    if len(cats) > MAX_INSTANCES:
        raise DataError(f"VOC class PNGs hold at most {MAX_INSTANCES} classes, the set has {len(cats)}", file=dst)
    class_index = {c.id: k for k, c in enumerate(cats, start=1)}
    names = {c.id: c.name for c in cats}
    files = _voc_names(aset)
    stems = [PurePosixPath(f).stem for f in files]
    place_images(aset, dst / "JPEGImages", report, names=files)
    for rec, stem, fname in zip(aset.images, stems, files, strict=True):
        inst = rec.instances
        painted = _paint(rec, class_index, report)
        if painted is not None:
            obj, cls, order = painted
            write_index_png(dst / "SegmentationObject" / f"{stem}.png", obj)
            write_index_png(dst / "SegmentationClass" / f"{stem}.png", cls)
        else:
            crowd = inst.iscrowd if inst.has("iscrowd") else np.zeros(len(inst), dtype=bool)
            order = [i for i in range(len(inst)) if not crowd[i]]
            if crowd.any():
                report.change("crowd box dropped: no crowd flag in VOC", int(crowd.sum()))
        objects = []
        extras = inst.get("extras") or [{} for _ in range(len(inst))]
        for i in order:
            lab = int(inst.labels[i])
            if lab not in names:
                report.change("unknown category id written as its number")
            objects.append({"name": names.get(lab, str(lab)), "box": inst.boxes[i].tolist(),
                            "fields": (extras[i] or {}).get("voc") or {}})
        voc = rec.extra.get("voc") or {}
        xml = build_xml(fname, rec.height, rec.width, int(voc.get("depth", 3)), voc.get("xml") or {}, objects,
                        painted is not None)
        atomic_write_text(dst / "Annotations" / f"{stem}.xml", xml)
        report.images += 1
        report.instances += len(order)
    atomic_write_text(dst / "class_names.txt", "\n".join(["_background_", *(c.name for c in cats)]) + "\n")
    atomic_write_text(dst / "ImageSets" / "Segmentation" / "default.txt", "\n".join(stems) + "\n" if stems else "")
    report.note_renumbered([c.id for c in cats], "class indices 1..K (category order)")
    return report


register_format(FORMAT, detect=detect, read=read, write=write,
                description="Pascal VOC root: SegmentationObject/Class palette PNGs, Annotations XML boxes")
