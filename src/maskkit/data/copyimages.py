"""Place the image files (or embedded image bytes) of an annotation set into ``DST/images``.

Every writer that produces a folder layout uses :func:`place_images`: it picks a deterministic
relative name for each record (its ``file_name`` when that is safe, else a de-duplicated
variant), copies the file atomically (skipping an identical copy already there) and writes
embedded bytes (LabelMe ``imageData``). Only files that decode as images (a bounded header read
and integrity check, :func:`~maskkit.data.images.image_problem`) are copied; missing files and
non-images are noted in the report, never fatal.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from maskkit.data.annotations import AnnotationSet, ImageRecord
from maskkit.data.formats.base import ConversionReport
from maskkit.data.images import image_problem, is_image_file
from maskkit.fileio import atomic_write_bytes

__all__ = ["copy_file_atomic", "dest_names", "place_images", "sniff_image_suffix"]

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8", ".jpg"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"GIF8", ".gif"),
)
_MISSING_SHOWN = 5


def sniff_image_suffix(data: bytes) -> str:
    """File suffix of encoded image bytes from their magic number (``.png`` when unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in _MAGIC if data.startswith(magic)), ".png")


def _safe_rel(record: ImageRecord) -> PurePosixPath:
    rel = PurePosixPath(record.file_name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.name:
        rel = PurePosixPath(rel.name or f"image_{record.id}")
    if record.data is not None and not is_image_file(Path(rel.name)):
        rel = rel.with_name(rel.name + sniff_image_suffix(record.data))
    return rel


def dest_names(aset: AnnotationSet, unique_stems: bool = False) -> list[str]:
    """Relative POSIX names (below ``images/``) for every record, in order, without collisions.

    A record keeps its ``file_name`` unless it is absolute or climbs out with ``..`` (then its
    base name is used). Clashing names (case-insensitive; with ``unique_stems`` also the same
    path without suffix, as YOLO label files need) get ``_<image id>`` appended to the stem.
    """
    used: set[str] = set()
    out = []
    for record in aset.images:
        rel = _safe_rel(record)
        candidate, k = rel, 0
        while True:
            key = (candidate.with_suffix("") if unique_stems else candidate).as_posix().lower()
            if key not in used:
                break
            k += 1
            tag = f"_{record.id}" if k == 1 else f"_{record.id}_{k}"
            candidate = rel.with_name(f"{rel.stem}{tag}{rel.suffix}")
        used.add(key)
        out.append(candidate.as_posix())
    return out


def copy_file_atomic(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` via a temporary file and rename; no-op if ``dest`` is identical (no fsync)."""
    if dest.exists() and (dest.resolve() == src.resolve() or filecmp.cmp(src, dest, shallow=False)):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def place_images(
    aset: AnnotationSet,
    images_dir: str | Path,
    report: ConversionReport,
    unique_stems: bool = False,
    names: Sequence[str] | None = None,
) -> list[str]:
    """Copy every record's image into ``images_dir``; returns the new relative file names.

    ``names`` gives the relative destination of each record (a layout with its own naming, e.g.
    VOC's flat names or DSB's ``<sample>/images/<sample>.png``); by default :func:`dest_names`.
    Embedded bytes (``record.data``) are written as they are. A missing source file is counted in
    a report note (the annotations are still written). Copies are atomic but not fsync-ed one by
    one (bulk files: a killed process still never leaves a half-written image).
    """
    images_dir = Path(images_dir)
    names = list(names) if names is not None else dest_names(aset, unique_stems=unique_stems)
    if len(names) != len(aset.images):
        raise ValueError(f"place_images: {len(names)} names for {len(aset.images)} images")
    missing: list[str] = []
    not_images: list[str] = []
    for record, name in zip(aset.images, names, strict=True):
        dest = images_dir / name
        if record.data is not None:
            if not (dest.is_file() and dest.read_bytes() == record.data):
                atomic_write_bytes(dest, record.data, fsync=False)
            continue
        src = Path(aset.image_root) / record.file_name  # image_path() without resolve(): one stat less each
        if not src.is_file():
            missing.append(str(aset.image_path(record)))
        elif (problem := image_problem(src)) is not None:
            not_images.append(f"{aset.image_path(record)} ({problem})")
        else:
            copy_file_atomic(src, dest)
    for items, what in ((missing, "missing"), (not_images, "not decodable as images")):
        if items:
            shown = ", ".join(items[:_MISSING_SHOWN]) + (" ..." if len(items) > _MISSING_SHOWN else "")
            report.notes.append(f"{len(items)} image file(s) {what}, not copied: {shown}")
    return names
