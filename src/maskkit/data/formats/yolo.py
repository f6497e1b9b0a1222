"""YOLO-seg (Ultralytics) text labels: read and write.

Layout: ``root/data.yaml`` (optional) + ``root/images/<split?>/x.jpg`` + ``root/labels/<split?>/x.txt``.
A label path is the image path with its last ``images`` component replaced by ``labels`` and
the suffix by ``.txt`` (as Ultralytics does). Each line is ``class x1 y1 x2 y2 ...`` (a polygon,
coordinates normalised to [0, 1]) or, with exactly 4 numbers after the class, a YOLO box
``class cx cy w h`` -> a box-only instance (a set may mix both). An image without a label file
has no instances. Class ``i`` becomes category id ``i``; names come from ``data.yaml`` ``names``
(list or dict), else ``classes.txt``, else ``class_<i>``.

Detection: a folder with ``data.yaml`` whose ``images/`` and ``labels/`` exist; a folder with
``images/`` and ``labels/`` holding ``.txt`` files; an images folder whose ``labels``
counterpart holds ``.txt`` files (``root/images/train2017``) or which lies in a root with
``data.yaml`` and ``labels/`` (a split without labels); or a YAML file whose root has both.

Writing (``DST/data.yaml`` without a ``path`` key, ``train``/``val`` = ``images``; ``DST/images/``;
``DST/labels/``, one ``.txt`` per image, empty for images without instances): category ids are
sorted and mapped to ``0..K-1`` (names written in that order); coordinates have 6 decimals and
are clipped to [0, 1]. Several parts and holes become one polygon joined by zero-width bridges
(:func:`~.polygonize.merge_parts`, like Ultralytics' ``merge_multi_segment``); RLE/bitmap masks
are traced along pixel edges (:mod:`.polygonize`). Every written line is checked against the source
mask: a single-ring polygon whose written vertices keep pycocotools' vertex quantisation fills the
same pixels by construction (the fill depends only on the quantised vertices); every other line is
rasterised back from its text with pycocotools and compared. Bridges and holes survive the even-odd
fill, and vertices are rounded to the 6-decimal neighbour that keeps pycocotools' quantisation,
so this is pixel-exact in practice; a polygon whose pixels would still change (overlapping parts,
clipping) is re-traced from its pixels. Instances are reported (``ConversionReport.changes``)
when their pixels change anyway, when they are crowd regions or box lines, or when they cannot
be written (empty mask, unknown category): nothing is dropped silently. Note that Ultralytics
rasterises with ``cv2.fillPoly``, which also paints polygon edges (masks ~0.5 px fatter, bridges
visible as 1-px lines) — true of any YOLO-seg data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pycocotools import mask as mask_utils

from maskkit.data.annotations import AnnotationSet, Category, ImageRecord, new_instances
from maskkit.data.copyimages import place_images
from maskkit.data.dataset_yaml import DATA_YAML, load_yaml, parse_names, yaml_root
from maskkit.data.formats.base import ConversionReport, register_format
from maskkit.data.formats.polygonize import has_mask, mask_contours, merge_parts, polygon_to_rle
from maskkit.data.images import image_size, is_image_file
from maskkit.errors import DataError
from maskkit.fileio import atomic_write_bytes, atomic_write_text
from maskkit.structures import Instances, Masks
from maskkit.structures.masks import PolygonMask

__all__ = [
    "DATA_YAML",
    "detect_yolo",
    "find_orphan_labels",
    "label_path",
    "read_yolo",
    "write_yolo",
]

CROWD = "crowd RLE region written as polygon"
BOX_LINE = "box-only instance written as box line"
EMPTY = "empty mask: not written"
EMPTY_BOX = "box-only instance with an empty box: not written"
UNKNOWN = "category id not in the category list: not written"
MULTI = "multi-part object joined by bridges"
HOLES = "hole(s) filled/bridged"
TRACED = "mask traced as polygon changed pixels"
ROUNDED = "polygon coordinates clipped to the image"


# -- paths and names ----------------------------------------------------------------------------
def label_path(image: Path) -> Path:
    """Ultralytics' label path of an image: last ``/images/`` -> ``/labels/``, suffix -> ``.txt``."""
    s = str(image)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in s:
        s = sb.join(s.rsplit(sa, 1))
    return Path(s.rsplit(".", 1)[0] + ".txt")


def _labels_dir(images_dir: Path) -> Path | None:
    parts = images_dir.parts
    if "images" not in parts:
        return None
    k = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:k], "labels", *parts[k + 1 :])


def _has_txt(folder: Path | None) -> bool:
    return folder is not None and folder.is_dir() and next(folder.rglob("*.txt"), None) is not None


@dataclass
class _Source:
    images_dir: Path
    root: Path
    yaml_path: Path | None = None


def _locate(path: Path) -> _Source | None:
    """Where the images of a YOLO source are, or None if ``path`` is not one."""
    if path.is_file():
        if path.suffix.lower() not in (".yaml", ".yml"):
            return None
        root = yaml_root(path, load_yaml(path))
        if (root / "images").is_dir() and (root / "labels").is_dir():
            return _Source(root / "images", root, path)
        return None
    if not path.is_dir():
        return None
    if (path / "images").is_dir() and (path / "labels").is_dir():
        yml = path / DATA_YAML
        if yml.is_file() or _has_txt(path / "labels"):
            return _Source(path / "images", path, yml if yml.is_file() else None)
    labels = _labels_dir(path)
    if labels is None:
        return None
    parts = path.parts
    root = Path(*parts[: len(parts) - 1 - parts[::-1].index("images")])
    yml = root / DATA_YAML
    # An images folder with label files, or a label-less split (background only) of a YOLO root.
    if _has_txt(labels) or (yml.is_file() and (root / "labels").is_dir()):
        return _Source(path, root, yml if yml.is_file() else None)
    return None


def detect_yolo(path: Path) -> bool:
    try:
        return _locate(path) is not None
    except DataError:
        return False


def _categories(src: _Source, labels_seen: set[int]) -> list[Category]:
    if src.yaml_path is not None:
        doc = load_yaml(src.yaml_path)
        if "names" in doc:
            return parse_names(doc["names"], src.yaml_path)
    for folder in (src.root, _labels_dir(src.images_dir), src.root / "labels"):
        if folder is not None and (folder / "classes.txt").is_file():
            try:
                lines = (folder / "classes.txt").read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"cannot read class names ({exc})", file=folder / "classes.txt") from None
            return [Category(i, n.strip()) for i, n in enumerate(x for x in lines if x.strip())]
    return [Category(i, f"class_{i}") for i in range(max(labels_seen, default=-1) + 1)]


# -- reading ------------------------------------------------------------------------------------
def _parse_labels(path: Path, h: int, w: int) -> list[tuple[int, np.ndarray | None, np.ndarray | None]]:
    """``(class, polygon xy in pixels or None, box xyxy or None)`` per line of one label file."""
    out: list[tuple[int, np.ndarray | None, np.ndarray | None]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read label file ({exc})", file=path) from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            values = np.asarray(line.split(), dtype=np.float64)
        except ValueError:
            raise DataError("a label line must hold numbers only", file=path, annotation=f"line {n}") from None
        cls, coords = values[0], values[1:]
        if not np.isfinite(cls) or cls != int(cls) or not 0 <= cls < 2**31:
            raise DataError(f"class {cls:g} is not a non-negative integer below 2^31", file=path,
                            annotation=f"line {n}")
        if len(coords) == 4:
            cx, cy, bw, bh = coords * [w, h, w, h]
            out.append((int(cls), None, np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])))
        elif len(coords) % 2:
            raise DataError(f"odd number of coordinates ({len(coords)})", file=path, annotation=f"line {n}")
        else:
            out.append((int(cls), coords.reshape(-1, 2) * [w, h], None))
    return out


def read_yolo(path: str | Path, names: Sequence[str] | dict[int, str] | None = None) -> AnnotationSet:
    """Read a YOLO-seg source (root folder, images folder or data YAML); ``names`` overrides class names."""
    path = Path(path)
    src = _locate(path)
    if src is None:
        raise DataError("not a YOLO source (need images/ and labels/ folders or a data.yaml)", file=path)
    files = sorted((p for p in src.images_dir.rglob("*") if is_image_file(p) and p.is_file()),
                   key=lambda p: p.relative_to(src.images_dir).as_posix())
    parsed = []
    for img in files:
        h, w = image_size(img)
        lab = label_path(img)
        parsed.append((img, h, w, _parse_labels(lab, h, w) if lab.is_file() else []))
    with_masks = any(poly is not None for *_, lines in parsed for _, poly, _ in lines)
    records, next_id = [], 1
    for k, (img, h, w, lines) in enumerate(parsed):
        labels = [c for c, _, _ in lines]
        items = [PolygonMask([] if poly is None else [poly], h, w) for _, poly, _ in lines]
        masks = Masks(items, h, w) if with_masks else None
        boxes = masks.boxes() if masks is not None else np.zeros((len(lines), 4), np.float32)
        for i, (_, _, box) in enumerate(lines):
            if box is not None:
                boxes[i] = box
        ids = list(range(next_id, next_id + len(lines)))
        next_id += len(lines)
        inst = new_instances(h, w, labels, masks, boxes=boxes, ids=ids)
        rel = img.relative_to(src.images_dir).as_posix()
        records.append(ImageRecord(k + 1, rel, h, w, inst, source=str(label_path(img))))
    seen = {c for *_, lines in parsed for c, _, _ in lines}
    cats = parse_names(names) if names is not None else _categories(src, seen)
    return AnnotationSet(cats, records, src.images_dir, source=src.yaml_path or src.root, format="yolo",
                         root=src.root if path.is_file() else None)  # a data YAML: its ``path:`` folder


def find_orphan_labels(aset: AnnotationSet) -> list[Path]:
    """Label files of a YOLO set without an image (Ultralytics ignores them; so does the reader)."""
    labels = _labels_dir(Path(aset.image_root))
    if labels is None or not labels.is_dir():
        return []
    used = {label_path(aset.image_path(r)) for r in aset.images}
    return sorted(p for p in labels.rglob("*.txt") if p.name != "classes.txt" and p.resolve() not in used)


# -- writing ------------------------------------------------------------------------------------
def _fmt(values: np.ndarray) -> list[str]:
    return [f"{v:.6f}" for v in np.clip(values, 0.0, 1.0)]


@dataclass
class _Encoded:
    line: str | None
    reason: str | None = None
    iou: float = 1.0
    bridged: bool = False
    retraced: bool = False


def _compare(a: dict[str, Any], b: dict[str, Any]) -> float:
    """1.0 when two RLEs cover the same pixels, else their IoU (< 1.0)."""
    inter = float(mask_utils.area(mask_utils.merge([a, b], intersect=True)))
    area_a, area_b = float(mask_utils.area(a)), float(mask_utils.area(b))
    if inter == area_a == area_b:
        return 1.0
    return min(inter / (area_a + area_b - inter), 1.0 - 1e-12)


def _normalise(px: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Normalised ``(K, 2)`` coordinates in millionths, the pixel values a reader gets back, and whether
    every vertex keeps pycocotools' quantisation.

    pycocotools rasterises vertices quantised as ``(int)(5 x + 0.5)``; COCO-grid coordinates
    (``45.3``) sit exactly on those boundaries, so plain rounding can move one across. Where it
    would, the neighbouring 6-decimal value on the right side is used instead. ``size`` is ``[w, h]``.
    """
    micro = np.round(np.clip(px / size, 0.0, 1.0) * 1e6).astype(np.int64)
    want = np.trunc(5 * px + 0.5)
    ok = np.trunc(5 * (micro / 1e6 * size) + 0.5) == want
    if not ok.all():
        for step in (-1, 1):
            cand = np.clip(micro + step, 0, 1_000_000)
            fix = ~ok & (np.trunc(5 * (cand / 1e6 * size) + 0.5) == want)
            micro[fix] = cand[fix]
            ok |= fix
    return micro, micro / 1e6 * size, bool(ok.all())


def _line(cls: int, micro: np.ndarray) -> str:
    """``class x1 y1 ...`` with 6 decimals (one ``%`` format per line: the same text as per-value formatting)."""
    values = (micro.reshape(-1) / 1e6).tolist()
    return f"{cls} " + " ".join(["%.6f"] * len(values)) % tuple(values)


def _polygon_line(cls: int, poly: np.ndarray, h: int, w: int, source: Callable[[], dict[str, Any]],
                  sole_ring: bool = False) -> tuple[str, float]:
    """The label line of a polygon, and how its text rasterises compared with the source mask.

    pycocotools' polygon fill depends only on the quantised vertices, so when ``poly`` is the
    source's only ring (``sole_ring``) and every written vertex keeps its quantisation, the line
    is pixel-exact by construction; otherwise it is rasterised and compared with ``source()``.
    """
    micro, back, kept = _normalise(poly, np.array([w, h], dtype=np.float64))
    iou = 1.0 if sole_ring and kept else _compare(polygon_to_rle(back, h, w), source())
    return _line(cls, micro), iou


def _encode(inst: Instances, i: int, cls: int | None) -> _Encoded:
    """Encode instance ``i`` as one label line, with the reason it changed (if it did)."""
    h, w = inst.image_size
    if cls is None:
        return _Encoded(None, UNKNOWN)
    if not has_mask(inst, i):
        x0, y0, x1, y1 = np.asarray(inst.boxes[i], dtype=np.float64)
        if x1 <= x0 or y1 <= y0:
            return _Encoded(None, EMPTY_BOX)
        box = np.array([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])
        return _Encoded(" ".join([str(cls), *_fmt(box)]), BOX_LINE)
    masks: Masks = inst.masks
    item = masks[i]

    def source() -> dict[str, Any]:
        return masks.rle(i)
    tried: list[tuple[_Encoded, bool, bool]] = []  # (encoding, several parts, holes)
    if isinstance(item, PolygonMask):
        # As drawn (parts bridged). If that changes pixels (overlapping parts are XOR-ed by the
        # even-odd fill; clipping to the image bends edges), the mask is re-traced from its pixels.
        rings = item.valid_parts()
        if not rings:
            return _Encoded(None, EMPTY)
        line, iou = _polygon_line(cls, merge_parts(rings), h, w, source, sole_ring=len(rings) == 1)
        tried.append((_Encoded(line, None, iou, bridged=len(rings) > 1), len(rings) > 1, False))
    if not tried or tried[0][0].iou < 1.0:
        outers, inner = mask_contours(masks.bitmap(i))
        if outers:
            line, iou = _polygon_line(cls, merge_parts(outers + inner), h, w, source)
            enc = _Encoded(line, None, iou, len(outers) + len(inner) > 1, retraced=bool(tried))
            tried.append((enc, len(outers) > 1, bool(inner)))
    if not tried:
        return _Encoded(None, EMPTY)
    best, multi, holes = max(tried, key=lambda t: t[0].iou)  # the first (as drawn) on ties
    if best.iou < 1.0:
        as_drawn = isinstance(item, PolygonMask) and not best.retraced
        best.reason = MULTI if multi else HOLES if holes else ROUNDED if as_drawn else TRACED
    if bool(inst.get("iscrowd", np.zeros(len(inst), bool))[i]):
        best.reason = CROWD
    return best


def write_yolo(aset: AnnotationSet, dst: str | Path) -> ConversionReport:
    """Write ``DST/data.yaml``, ``DST/images/`` and ``DST/labels/`` (one ``.txt`` per image)."""
    dst = Path(dst)
    report = ConversionReport("yolo", dst)
    cats = sorted(aset.categories, key=lambda c: c.id)
    index = {c.id: k for k, c in enumerate(cats)}
    if [c.id for c in cats] != list(range(len(cats))):
        pairs = ", ".join(f"{c.id}->{k}" for k, c in enumerate(cats[:8])) + (", ..." if len(cats) > 8 else "")
        report.notes.append(f"category ids mapped to YOLO classes in id order: {pairs}")
    names = place_images(aset, dst / "images", report, unique_stems=True)
    ious: list[float] = []
    bridged = retraced = dropped_extras = 0
    for rec, name in zip(aset.images, names, strict=True):
        inst = rec.instances
        lines = []
        for i in range(len(inst)):
            enc = _encode(inst, i, index.get(int(inst.labels[i])))
            if enc.reason:
                report.change(enc.reason)
            if enc.line is None:
                continue
            lines.append(enc.line)
            bridged += enc.bridged and enc.iou == 1.0
            retraced += enc.retraced and enc.iou == 1.0
            if enc.iou < 1.0:
                ious.append(enc.iou)
        extras = inst.get("extras", [])
        dropped_extras += sum(1 for e in extras if any(k != "area" for k in e))
        report.instances += len(lines)
        text = "\n".join(lines) + "\n" if lines else ""
        # Thousands of small files: no fsync each (still atomic: a killed process never leaves half a file).
        atomic_write_bytes(dst / "labels" / Path(name).with_suffix(".txt"), text.encode("utf-8"), fsync=False)
    report.images = len(aset.images)
    report.note(bridged, f"{bridged} multi-part/holed mask(s) written as one bridged polygon (pixel-exact)")
    report.note(retraced, f"{retraced} polygon(s) re-traced along pixel edges to stay pixel-exact")
    if ious:
        report.notes.append(f"changed instances: IoU with the source mean {np.mean(ious):.4f}, min {min(ious):.4f}")
    report.note(dropped_extras,
                f"YOLO has no place for extra annotation fields: dropped on {dropped_extras} instance(s)")
    doc = {"train": "images", "val": "images", "nc": len(cats), "names": {k: c.name for k, c in enumerate(cats)}}
    header = "# YOLO-seg dataset written by maskkit; paths are relative to this file's folder\n"
    atomic_write_text(dst / DATA_YAML, header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return report


register_format(
    "yolo",
    detect=detect_yolo,
    read=read_yolo,
    write=write_yolo,
    description="YOLO-seg txt (Ultralytics): data.yaml + images/ + labels/, normalised polygons or boxes",
)
