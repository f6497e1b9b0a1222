"""Instance-label images: one integer image per image, pixel value = instance id, 0 = background.

Layout (format ``labelimages``; ``maskkit convert --to masks`` writes it)::

    root/images/<name>.<ext>          any image (8/16-bit, TIFF, sub-folders allowed)
    root/labels/<name>.png|.tif       (or root/masks/) same relative path and stem as the image
    root/classes.json                 optional class map (also read as class_map.json)

Label images are 8- or 16-bit single-channel PNGs (palette PNGs give their indices) or TIFFs
(any integer type, e.g. 32-bit). Label values become annotation ``ids``; each instance's mask
is read straight into RLE, never as N dense masks. The class map schema is in
:mod:`.maskfiles`; here the image key is the image path below ``images/`` without its suffix
(the stem in a flat folder) and the instance key is the label value as a string. Without a class
map every instance is category 1 ``"object"`` (or the given ``names``). The writer paints
overlapping instances smaller-on-top and reports every instance that loses pixels; the lossless
one-PNG-per-instance layout is :mod:`.dsb`.
"""

from __future__ import annotations

import glob
import io
import os
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from maskkit.data.annotations import AnnotationSet, ImageRecord, new_instances
from maskkit.data.copyimages import place_images
from maskkit.data.formats.base import ConversionReport, register_format, write_annotations
from maskkit.data.formats.maskfiles import (
    ClassMap,
    Names,
    drawable,
    image_entry,
    instance_entry,
    load_class_map,
    note_polygons,
    read_label_array,
    write_class_map,
)
from maskkit.data.images import image_size, is_image_file
from maskkit.errors import DataError
from maskkit.fileio import atomic_write_bytes
from maskkit.structures import Instances, Masks
from maskkit.structures.rle import label_image_to_rles

LABEL_DIRS = ("labels", "masks")


# -- the label-image layout -------------------------------------------------------------------------
def _files(folder: Path) -> list[Path]:
    """Image files below ``folder``, sorted by relative path."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath, f) for f in filenames if not f.startswith(".") and is_image_file(Path(f)))
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def _key(path: Path, folder: Path) -> str:
    return path.relative_to(folder).with_suffix("").as_posix()


def _label_dir(root: Path, probe: int = 20) -> Path | None:
    """``labels/`` or ``masks/`` whose first files are label images matching images (not YOLO .txt)."""
    images = root / "images"
    if not images.is_dir():
        return None
    for name in LABEL_DIRS:
        folder = root / name
        if not folder.is_dir():
            continue
        seen, matched = 0, False
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for f in sorted(filenames):
                if f.startswith("."):
                    continue
                p = Path(dirpath, f)
                if p.suffix.lower() == ".txt":
                    return None  # YOLO labels
                if is_image_file(p) and not matched:
                    rel = p.relative_to(folder).with_suffix("")
                    matched = any(is_image_file(q) for q in (images / rel).parent.glob(glob.escape(rel.name) + ".*"))
                seen += 1
                if seen >= probe:
                    break
            if seen >= probe:
                break
        if matched:
            return folder
    return None


def _by_key(folder: Path, clash: str) -> dict[str, Path]:
    """The image files below ``folder`` by key; DataError ``clash`` (formatted with ``key`` and both names)
    when two share a key."""
    out: dict[str, Path] = {}
    for p in _files(folder):
        key = _key(p, folder)
        if key in out:
            raise DataError(clash.format(out[key].name, p.name, key=key), file=p.parent)
        out[key] = p
    return out


def detect_label_images(path: Path) -> bool:
    """A folder with ``images/`` and ``labels/`` (or ``masks/``) holding label images named like the images."""
    return path.is_dir() and _label_dir(path) is not None


def instances_from_label(labels: np.ndarray, cmap: ClassMap, image_key: str) -> Instances:
    """Annotation instances of one label image (ids and classes resolved through the class map)."""
    h, w = labels.shape
    rles, ids = label_image_to_rles(labels)
    cats: list[int] = []
    crowd: list[bool] = []
    ann_ids: list[int] = []
    extras: list[dict[str, Any]] = []
    for v in ids.tolist():
        c, k, a, e = cmap.resolve(image_key, str(v), v)
        cats.append(c)
        crowd.append(k)
        ann_ids.append(a)
        extras.append(e)
    return new_instances(h, w, cats, Masks.from_rles(rles, h, w), iscrowd=crowd, ids=ann_ids, extras=extras)


def read_label_images(path: str | Path, names: Names = None) -> AnnotationSet:
    """Read the label-image layout; ``names`` (e.g. from a dataset YAML) name the classes without a class map."""
    root = Path(path)
    img_dir = root / "images"
    lbl_dir = _label_dir(root) or next((root / n for n in LABEL_DIRS if (root / n).is_dir()), None)
    if not img_dir.is_dir() or lbl_dir is None:
        raise DataError("expected an images/ folder beside a labels/ (or masks/) folder", file=root)
    cmap = load_class_map(root, "object", names)
    labels = _by_key(lbl_dir, "two label images for one image: {} and {}")
    records: list[ImageRecord] = []
    for key, img in _by_key(img_dir, "two images share the name {key!r}: {} and {}").items():
        h, w = image_size(img)
        lbl = labels.pop(key, None)
        records.append(_record(cmap, key, img.relative_to(img_dir).as_posix(), lbl, (h, w), len(records) + 1))
    for key, lbl in sorted(labels.items()):  # label without image: kept so that validation reports it
        records.append(_record(cmap, key, key + lbl.suffix, lbl, None, len(records) + 1))
    return AnnotationSet(cmap.categories, records, img_dir, source=root, format="labelimages", info=cmap.info)


def _record(cmap: ClassMap, key: str, file_name: str, label: Path | None, size: tuple[int, int] | None,
            default_id: int) -> ImageRecord:
    meta = cmap.images.get(key, {})
    if label is None:
        h, w = size or (0, 0)
        inst = new_instances(h, w, [], Masks.empty(h, w))
    else:
        arr = read_label_array(label)
        h, w = size or arr.shape
        if arr.shape != (h, w):
            raise DataError(f"label image is {arr.shape[1]}x{arr.shape[0]} but its image is {w}x{h}",
                            file=label, image=file_name)
        inst = instances_from_label(arr, cmap, key)
    return ImageRecord(meta.get("id", default_id), file_name, h, w, inst, extra=dict(meta.get("extra", {})),
                       source=str(label) if label else None)


# -- writing ------------------------------------------------------------------------------------------
def _label_values(ids: np.ndarray) -> tuple[np.ndarray, bool]:
    """Label value per instance: the annotation ids when usable (unique, 1..2**32-1), else 1..N."""
    if len(ids) and (ids.min() < 1 or ids.max() > 2**32 - 1 or len(np.unique(ids)) != len(ids)):
        return np.arange(1, len(ids) + 1, dtype=np.int64), True
    return ids.astype(np.int64), False


def _encode_label(values: np.ndarray) -> tuple[str, bytes]:
    """Suffix and file bytes: uint8/uint16 PNG, uint32 TIFF above 65535."""
    peak = int(values.max()) if values.size else 0
    if peak > 65535:
        import tifffile

        buf = io.BytesIO()
        tifffile.imwrite(buf, values.astype(np.uint32), compression="zlib")
        return ".tif", buf.getvalue()
    import cv2

    ok, data = cv2.imencode(".png", values.astype(np.uint8 if peak <= 255 else np.uint16))
    if not ok:
        raise OSError("cannot encode label PNG")
    return ".png", data.tobytes()


def write_label_images(aset: AnnotationSet, dst: str | Path, layout: str = "labels") -> ConversionReport:
    """Write ``DST/images/``, ``DST/labels/<stem>.png|.tif`` and ``DST/classes.json``.

    Overlapping instances lose pixels to the smaller instance painted on top (reported per
    instance; fully hidden ones are counted and not written). ``layout="per-instance"`` writes
    the lossless one-PNG-per-instance layout instead (:func:`.dsb.write_instance_pngs`).
    """
    if layout == "per-instance":  # the registered ``dsb`` writer (dsb.py imports this module, not the reverse)
        return write_annotations(aset, dst, "dsb")
    if layout != "labels":
        raise DataError(f"unknown masks layout {layout!r} (use 'labels' or 'per-instance')", file=dst)
    dst = Path(dst)
    report = ConversionReport("labelimages", dst)
    names = place_images(aset, dst / "images", report, unique_stems=True)  # labels are matched by stem
    default_ids = {k: i for i, k in enumerate(sorted(names), 1)}
    default_cat = aset.categories[0].id if aset.categories else 1
    instances: dict[str, dict[str, Any]] = {}
    images: dict[str, dict[str, Any]] = {}
    renumbered = 0
    for rec, name in zip(aset.images, names, strict=True):
        key = PurePosixPath(name).with_suffix("").as_posix()
        entry = image_entry(rec, default_ids[name])
        if entry:
            images[key] = entry
        masks, todo = drawable(rec, report)
        inst = rec.instances
        values, renum = _label_values(np.asarray(inst.get("ids", np.arange(1, len(inst) + 1))))
        renumbered += len(values) if renum else 0
        lut = np.concatenate(([0], values))
        if masks is not None and todo:
            areas = masks.areas()
            empty = [i for i in todo if areas[i] == 0]
            if empty:
                report.change("empty mask not written", len(empty))
            todo = sorted((i for i in todo if areas[i] > 0), key=lambda i: -areas[i])  # smaller ones on top
            index = masks.label_image(todo)
            written = np.bincount(index.reshape(-1), minlength=len(inst) + 1)[1:]
            hidden = sum(1 for i in todo if written[i] == 0)
            clipped = sum(1 for i in todo if 0 < written[i] < areas[i])
            if clipped:
                report.change("overlap: pixels assigned to one instance", clipped)
            if hidden:
                report.change("overlap: instance fully hidden by others, not written", hidden)
            label = lut[index]
        else:
            todo, written, label = [], np.zeros(len(inst), np.int64), np.zeros((rec.height, rec.width), np.int64)
        suffix, data = _encode_label(label)
        atomic_write_bytes(dst / "labels" / (key + suffix), data, fsync=False)  # bulk files: atomic, no fsync
        entries = {}
        for i in sorted((i for i in todo if written[i] > 0), key=lambda i: values[i]):
            extra = inst.extras[i] if inst.has("extras") else {}
            ann_id = int(inst.ids[i]) if renum else None
            e = instance_entry(int(inst.labels[i]), bool(inst.iscrowd[i]), ann_id, extra, default_cat)
            if e is not None:
                entries[str(values[i])] = e
        instances[key] = entries
        report.images += 1
        report.instances += sum(1 for i in todo if written[i] > 0)
    if renumbered:
        report.notes.append(f"{renumbered} annotation id(s) not usable as label values: label values renumbered, "
                            "ids kept in classes.json")
    note_polygons(aset, report)
    write_class_map(dst / "classes.json", aset, instances, images)
    return report


def write_masks(aset: AnnotationSet, dst: Path) -> ConversionReport:
    """The ``--to masks`` writer: label images (see :func:`write_label_images`)."""
    return write_label_images(aset, dst)


register_format(
    "labelimages",
    detect=detect_label_images,
    read=read_label_images,
    write=write_masks,
    description="instance-label images: images/ + labels/ (or masks/) PNG/TIFF, pixel = instance id",
)
register_format(
    "masks",
    detect=lambda path: False,  # alias: detection reports "labelimages"
    read=read_label_images,
    write=write_masks,
    description="alias of labelimages (the --to masks writer)",
)
