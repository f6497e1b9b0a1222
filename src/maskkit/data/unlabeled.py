"""Unlabeled images for semi-supervised training: every image file below one folder, labels ignored.

:func:`load_unlabeled` walks the folder (sorted, hidden entries skipped) and returns an
:class:`~maskkit.data.annotations.AnnotationSet` whose records have no instances, so that
:class:`~maskkit.data.dataset.InstanceDataset` loads, normalises and transforms them like training images.
Label files are never read: folders named like label folders (``labels``, ``masks``, ``annotations``;
e.g. the masks of a DSB 2018 layout or a label-image dataset) are skipped and non-image files ignored.
Files that resolve outside the folder (symlinks, ``..``) are refused unless ``allow_outside_root``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from maskkit.data.annotations import AnnotationSet, ImageRecord, new_instances
from maskkit.data.formats.labelimages import LABEL_DIRS
from maskkit.data.images import image_size, is_image_file
from maskkit.data.paths import confined, ensure_inside_root
from maskkit.errors import DataError

_NO_BOXES = np.zeros((0, 4), dtype=np.float32)

SKIPPED_DIRS = frozenset((*LABEL_DIRS, "annotations", "label"))
"""Folder names whose files are labels, never unlabeled images."""


def unlabeled_files(folder: str | Path) -> list[Path]:
    """The image files below ``folder`` (see the module docstring), sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("unlabeled images: not a folder" if folder.exists() else "unlabeled images: folder not found",
                        file=folder)
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in SKIPPED_DIRS)
        out.extend(Path(dirpath, f) for f in filenames if not f.startswith(".") and is_image_file(Path(f)))
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def load_unlabeled(folder: str | Path, allow_outside_root: bool = False) -> AnnotationSet:
    """The unlabeled images below ``folder`` as records without instances (sizes read from the file headers).

    A ``DataError`` names the folder when it holds no image, or the file whose header cannot be read or that
    resolves outside the folder.
    """
    folder = Path(folder)
    files = unlabeled_files(folder)
    if not files:
        raise DataError("unlabeled images: no image files in the folder (label folders are skipped)", file=folder)
    aset = AnnotationSet(categories=[], images=[], image_root=folder, source=folder, format="unlabeled", root=folder)
    for i, path in enumerate(files, start=1):
        aset.images.append(ImageRecord(id=i, file_name=path.relative_to(folder).as_posix(), height=0, width=0,
                                       instances=new_instances(0, 0, [], None, boxes=_NO_BOXES)))
    ensure_inside_root(aset, allow_outside_root)  # before any header outside the folder is read
    with confined(None if allow_outside_root else folder):
        for record, path in zip(aset.images, files, strict=True):
            h, w = image_size(path)
            record.height, record.width = h, w
            record.instances = new_instances(h, w, [], None, boxes=_NO_BOXES)
    return aset
