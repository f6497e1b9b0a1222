"""Instance-label image folders as an evaluation source (``maskkit eval --gt-labels --pred-labels``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from maskkit.data.annotations import AnnotationSet, Category, ImageRecord, new_instances
from maskkit.data.formats import read_annotations
from maskkit.data.formats.maskfiles import read_label_array
from maskkit.data.images import is_image_file, read_image
from maskkit.errors import DataError
from maskkit.structures import Instances, Masks
from maskkit.structures.rle import label_image_to_rles


def _label_tools() -> tuple[Callable[[Path], np.ndarray], Callable[[np.ndarray], list[dict[str, Any]]]]:
    """(read a label image, split it into RLEs): the labelimages format module's, else a minimal pair."""
    try:
        return read_label_array, lambda labels: label_image_to_rles(labels)[0]
    except ImportError:  # pragma: no cover - the format module ships with maskkit
        def split(labels: np.ndarray) -> list[dict[str, Any]]:
            return Masks.from_label_image(labels)[0].to_rles()

        return (lambda p: read_image(p)), split


def _label_files(folder: Path) -> dict[str, Path]:
    sub = next((folder / n for n in ("labels", "masks") if (folder / n).is_dir()), folder)
    files = sorted(p for p in sub.rglob("*") if p.is_file() and is_image_file(p))
    out: dict[str, Path] = {}
    for p in files:
        key = p.relative_to(sub).with_suffix("").as_posix()
        if key in out:
            raise DataError(f"two label images share the name {key!r}: {out[key].name}, {p.name}", file=sub)
        out[key] = p
    return out


def read_label_folders(gt_dir: str | Path, pred_dir: str | Path) -> tuple[Any, dict[int, Instances], list[str]]:
    """Ground truth and predictions from instance-label images (0 = background), paired by file name.

    ``gt_dir`` is the labelimages layout (``images/`` + ``labels/``; then the images are reachable
    for the error gallery) or a plain folder of label images; ``pred_dir`` a folder of label images
    (or one with ``labels/``) named like the GT ones (relative path without suffix, e.g. the stem).
    Predicted label images carry no scores and no classes: every instance gets score 1.0 (AP then
    reflects one operating point; matching F1 / DSB score / AJI are the natural metrics) and the
    first GT category. Returns the GT ``AnnotationSet``, predictions by image id, and notes.
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for d in (gt_dir, pred_dir):
        if not d.is_dir():
            raise DataError("not a folder of label images", file=d)
    read, split = _label_tools()
    notes = ["prediction label images have no scores: every predicted instance scored 1.0"]
    if (gt_dir / "images").is_dir():
        aset = read_annotations(gt_dir, format="labelimages")
        keys = [Path(r.file_name).with_suffix("").as_posix() for r in aset.images]
    else:
        records = []
        files = _label_files(gt_dir)
        keys = list(files)
        for i, path in enumerate(files.values()):
            labels = read(path)
            h, w = labels.shape[:2]
            rles = split(labels)
            inst = new_instances(h, w, [1] * len(rles), Masks.from_rles(rles, h, w))
            records.append(ImageRecord(i + 1, path.name, h, w, inst, source=str(path)))
        aset = AnnotationSet([Category(1, "object")], records, gt_dir, source=gt_dir, format="labelimages")
        notes.append("ground truth is a plain folder of label images: no image files for the error gallery")
    if not aset.images:
        raise DataError("no label images found", file=gt_dir)
    category = aset.categories[0].id
    if len(aset.categories) > 1:
        notes.append(f"prediction label images have no classes: all predictions get category {category}")
    preds_by_key = _label_files(pred_dir)
    stems = {Path(k).name: p for k, p in preds_by_key.items()}
    preds: dict[int, Instances] = {}
    missing = 0
    for rec, key in zip(aset.images, keys, strict=True):
        pred_path = preds_by_key.pop(key) if key in preds_by_key else stems.get(Path(key).name)
        if pred_path is None:
            missing += 1
            continue
        labels = read(pred_path)
        if labels.shape[:2] != (rec.height, rec.width):
            raise DataError(f"prediction is {labels.shape[1]}x{labels.shape[0]}, ground truth "
                            f"{rec.width}x{rec.height}", file=pred_path)
        rles = split(labels)
        masks = Masks.from_rles(rles, rec.height, rec.width)
        preds[rec.id] = Instances.from_masks(masks, [category] * len(rles), np.ones(len(rles)))
    if missing:
        notes.append(f"{missing} ground-truth images have no prediction label image (scored as no detections)")
    return aset, preds, notes
