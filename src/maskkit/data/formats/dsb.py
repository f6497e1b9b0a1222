"""One binary PNG per instance: the Kaggle Data Science Bowl 2018 layout (format ``dsb``).

::

    root/<sample>/images/<sample>.png     the image (one per sample folder)
    root/<sample>/masks/<mask>.png        one instance each, 0 = background, any other value = object
    root/classes.json                     optional class map (schema in :mod:`.labelimages`)

Instances may overlap. In ``classes.json`` the image key is the sample folder name and the
instance key is the mask file stem; mask stems are kept in the instance ``extras`` as
``mask_file`` so writing back restores the names. Annotation ids default to 1..N in mask-name
order. Without a class map every instance is category 1 ``"nucleus"``. Also accepted: a single
sample folder, and a parent folder holding exactly one such root (e.g. the Kaggle download
folder holding ``stage1_train/``).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from maskkit.data.annotations import AnnotationSet, ImageRecord, new_instances
from maskkit.data.copyimages import place_images, sniff_image_suffix
from maskkit.data.formats import maskfiles
from maskkit.data.formats.base import ConversionReport, register_format
from maskkit.data.formats.labelimages import detect_label_images
from maskkit.data.images import image_size, is_image_file
from maskkit.errors import DataError
from maskkit.fileio import atomic_write_png
from maskkit.structures import Masks
from maskkit.structures.rle import RLE, transposed

DEFAULT_CLASS = "nucleus"


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_sample(path: Path) -> bool:
    return (path / "images").is_dir() and (path / "masks").is_dir()


def _is_root(path: Path, probe: int = 3) -> bool:
    """Sample folders below ``path``: the first few all have ``images/``, one at least ``masks/``."""
    if (path / "images").is_dir():
        return False
    subs = _subdirs(path)[:probe]
    return bool(subs) and all((s / "images").is_dir() for s in subs) and any(_is_sample(s) for s in subs)


def locate(path: Path) -> tuple[Path, list[Path]] | None:
    """``(root, sample folders)`` of a DSB root, a single sample, or a parent of exactly one root."""
    if not path.is_dir():
        return None
    if _is_root(path):
        return path, [s for s in _subdirs(path) if (s / "images").is_dir()]
    if _is_sample(path) and not detect_label_images(path):
        return path.parent, [path]
    children = _subdirs(path)
    if 0 < len(children) <= 10:
        roots = [c for c in children if _is_root(c)]
        if len(roots) == 1:
            return locate(roots[0])
    return None


def detect_dsb(path: Path) -> bool:
    """Sample folders each holding ``images/`` and ``masks/`` (or a parent of one such folder)."""
    return locate(path) is not None


def _mask_rle(path: Path, size: tuple[int, int], file_name: str) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    arr = maskfiles.read_label_array(path)
    if arr.shape != size:
        raise DataError(f"mask is {arr.shape[1]}x{arr.shape[0]} but its image is {size[1]}x{size[0]}",
                        file=path, image=file_name)
    rle: RLE = mask_utils.encode((transposed(arr) != 0).view(np.uint8).T)  # Fortran-ordered H×W
    return rle


def read_dsb(path: str | Path, names: maskfiles.Names = None) -> AnnotationSet:
    """Read the one-PNG-per-instance layout into RLE masks (mask stems kept as ``mask_file``)."""
    found = locate(Path(path))
    if found is None:
        raise DataError("expected sample folders each holding images/ and masks/", file=path)
    root, samples = found
    cmap = maskfiles.load_class_map(root, DEFAULT_CLASS, names)
    records: list[ImageRecord] = []
    for sample in samples:
        key = sample.name
        images = sorted(p for p in (sample / "images").iterdir() if is_image_file(p))
        if len(images) > 1:
            raise DataError(f"expected one image, found {len(images)}", file=sample / "images")
        mask_dir = sample / "masks"
        masks = [p for p in mask_dir.iterdir() if is_image_file(p)] if mask_dir.is_dir() else []
        masks.sort(key=lambda p: (p.stem, p.name))  # ids 1..N in mask-name order
        if images:
            file_name = f"{key}/images/{images[0].name}"
            h, w = image_size(images[0])
        elif masks:  # image missing: kept so that validation reports it
            file_name = f"{key}/images/{key}.png"
            h, w = maskfiles.read_label_array(masks[0]).shape
        else:
            continue
        rles: list[RLE] = []
        cats: list[int] = []
        crowd: list[bool] = []
        ids: list[int] = []
        extras: list[dict[str, Any]] = []
        for j, m in enumerate(masks, 1):
            rles.append(_mask_rle(m, (h, w), file_name))
            c, k, a, e = cmap.resolve(key, m.stem, j)
            cats.append(c)
            crowd.append(k)
            ids.append(a)
            extras.append({"mask_file": m.stem, **e})
        inst = new_instances(h, w, cats, Masks.from_rles(rles, h, w), iscrowd=crowd, ids=ids, extras=extras)
        meta = cmap.images.get(key, {})
        records.append(ImageRecord(meta.get("id", len(records) + 1), file_name, h, w, inst,
                                   extra=dict(meta.get("extra", {})), source=str(mask_dir)))
    return AnnotationSet(cmap.categories, records, root, source=Path(path), format="dsb", info=cmap.info)


def _unique(name: str, used: set[str], fallback: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        name = fallback
    out, n = name, 1
    while out.lower() in used:
        n += 1
        out = f"{name}_{n}"
    used.add(out.lower())
    return out


def _image_name(record: ImageRecord, sample: str) -> str:
    """``<sample>/images/<sample><suffix>``: the record's suffix, or one sniffed from embedded bytes."""
    suffix = PurePosixPath(record.file_name.replace("\\", "/")).suffix
    if record.data is not None and not is_image_file(Path(f"x{suffix}")):
        suffix = sniff_image_suffix(record.data)
    return f"{sample}/images/{sample}{suffix}"


def write_instance_pngs(aset: AnnotationSet, dst: str | Path) -> ConversionReport:
    """Write ``DST/<sample>/images/<sample>.<ext>``, ``DST/<sample>/masks/<mask>.png`` (0/255), ``DST/classes.json``.

    Lossless for overlapping instances; crowd flags, ids and classes go to ``classes.json``.
    """
    dst = Path(dst)
    report = ConversionReport("dsb", dst)
    used: set[str] = set()
    samples = [_unique(PurePosixPath(r.file_name.replace("\\", "/")).stem, used, str(r.id)) for r in aset.images]
    default_ids = {s: i for i, s in enumerate(sorted(samples), 1)}
    default_cat = aset.categories[0].id if aset.categories else 1
    instances: dict[str, dict[str, Any]] = {}
    images: dict[str, dict[str, Any]] = {}
    place_images(aset, dst, report, names=[_image_name(r, s) for r, s in zip(aset.images, samples, strict=True)])
    for rec, sample in zip(aset.images, samples, strict=True):
        (dst / sample / "masks").mkdir(parents=True, exist_ok=True)
        entry = maskfiles.image_entry(rec, default_ids[sample])
        if entry:
            images[sample] = entry
        masks, todo = maskfiles.drawable(rec, report)
        inst = rec.instances
        mask_used: set[str] = set()
        names = {}
        for i in todo:
            extra = inst.extras[i] if inst.has("extras") else {}
            names[i] = _unique(str(extra.get("mask_file", "")), mask_used, str(int(inst.ids[i])))
        order = {name: j for j, name in enumerate(sorted(names.values()), 1)}
        entries = {}
        for i in todo:
            assert masks is not None  # drawable() gives indices only with masks
            mask_png = masks.bitmap(i).astype(np.uint8) * 255
            atomic_write_png(dst / sample / "masks" / f"{names[i]}.png", mask_png, fsync=False)
            extra = {k: v for k, v in (inst.extras[i] if inst.has("extras") else {}).items() if k != "mask_file"}
            ann_id = int(inst.ids[i])
            e = maskfiles.instance_entry(int(inst.labels[i]), bool(inst.iscrowd[i]),
                               None if ann_id == order[names[i]] else ann_id, extra, default_cat)
            if e is not None:
                entries[names[i]] = e
        instances[sample] = {k: entries[k] for k in sorted(entries)}
        report.images += 1
        report.instances += len(todo)
    maskfiles.note_polygons(aset, report)
    maskfiles.write_class_map(dst / "classes.json", aset, instances, images)
    return report


register_format(
    "dsb",
    detect=detect_dsb,
    read=read_dsb,
    write=write_instance_pngs,
    description="one binary PNG per instance (Kaggle DSB 2018): <id>/images/<id>.png + <id>/masks/*.png",
)
