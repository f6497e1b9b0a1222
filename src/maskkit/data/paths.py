"""Confining image paths to the dataset root.

Every image path an annotation file names (COCO ``file_name``, LabelMe ``imagePath``, VOC/LabelImg
``<filename>``/``<path>``, files in a YOLO images folder, dataset-YAML split entries) must resolve,
after ``..`` and symlinks, inside the *dataset root* the user passed:

* a folder: that folder;
* an annotation file (COCO JSON, LabelMe JSON, VOC XML, ...): its folder;
* a dataset YAML: its ``path:`` folder (relative to the YAML), else the YAML's folder — the same
  root its split entries are resolved against.

The root itself may be a symlink (it is resolved too). Readers stay lenient: they keep such
records, :func:`outside_root` lists them, ``maskkit validate`` reports them (``E501``/``E502``) and
:func:`ensure_inside_root` refuses them unless the caller passes ``allow_outside_root=True``
(``--allow-outside-root`` on the command line). While :func:`confined` is active, image headers
outside the root are not even read (:func:`check_confined`).
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from maskkit.data.annotations import AnnotationSet, ImageRecord
from maskkit.errors import DataError

__all__ = [
    "ALLOW_FLAG",
    "check_confined",
    "confined",
    "dataset_root",
    "ensure_inside_root",
    "is_inside",
    "outside_root",
    "source_outside_root",
]

ALLOW_FLAG = "--allow-outside-root"

_ACTIVE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("maskkit_confined_root", default=None)


def _resolve(path: str | Path) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare the absolute, unresolved path
        return Path(os.path.abspath(path))


def is_inside(path: str | Path, root: str | Path) -> bool:
    """Whether ``path`` resolves (``..``, symlinks) to ``root`` or below it (``root`` resolved too)."""
    return _resolve(path).is_relative_to(_resolve(root))


def dataset_root(path: str | Path) -> Path:
    """The root of a source path as the user gave it: a folder itself, a file's folder."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def _refusal(what: str, resolved: Path, root: Path) -> str:
    return f"{what} resolves to {resolved}, outside the dataset root {_resolve(root)} (pass {ALLOW_FLAG} to accept)"


@contextmanager
def confined(root: str | Path | None) -> Iterator[None]:
    """While active, :func:`check_confined` refuses files outside ``root`` (``None``: no confinement)."""
    token = _ACTIVE.set(_resolve(root) if root is not None else None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def check_confined(path: str | Path) -> None:
    """DataError when a :func:`confined` block is active and ``path`` lies outside its root."""
    root = _ACTIVE.get()
    if root is not None and not is_inside(path, root):
        raise DataError(_refusal("image path", _resolve(path), root), file=path)


def outside_root(aset: AnnotationSet) -> list[tuple[ImageRecord, Path]]:
    """Records whose image file resolves outside ``aset.root``, with the resolved path.

    Records with embedded image bytes, and sets without a root (built in code), are never outside.
    """
    if aset.root is None:
        return []
    root = _resolve(aset.root)
    out = []
    for record in aset.images:
        if record.data is not None or not isinstance(record.file_name, str):
            continue
        resolved = _resolve(Path(aset.image_root) / record.file_name)
        if not resolved.is_relative_to(root):
            out.append((record, resolved))
    return out


def source_outside_root(aset: AnnotationSet) -> Path | None:
    """The resolved annotation source of a set when it lies outside ``aset.root`` (a dataset-YAML entry)."""
    if aset.root is None or aset.source is None:
        return None
    resolved = _resolve(aset.source)
    return None if resolved.is_relative_to(_resolve(aset.root)) else resolved


def ensure_inside_root(aset: AnnotationSet, allow_outside_root: bool = False) -> None:
    """Refuse (DataError naming the annotation file and entry) a set with an image outside its root."""
    if allow_outside_root:
        return
    bad = outside_root(aset)
    if not bad or aset.root is None:  # (never outside without a root)
        return
    record, resolved = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    raise DataError(
        _refusal(f"image path {record.file_name!r}", resolved, aset.root) + more,
        file=record.source or aset.source,
        image=record.id,
    )


def ensure_entry_inside(path: Path, root: Path, entry: str, file: Path, allow_outside_root: bool = False) -> None:
    """Refuse a dataset-YAML entry (``split 'val'``) whose path resolves outside ``root``."""
    if not allow_outside_root and not is_inside(path, root):
        raise DataError(_refusal(entry, _resolve(path), root), file=file)
