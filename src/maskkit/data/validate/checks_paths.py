"""Checks on where files are: images and split sources must stay inside the dataset root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from maskkit.data.paths import source_outside_root
from maskkit.data.validate.context import ImageContext, SplitContext
from maskkit.data.validate.registry import Hit, check


@check("E501", "image-outside-root", "error", "image",
       "An image path (COCO file_name, LabelMe imagePath, VOC filename/path, a symlink...) resolves outside the "
       "dataset root; convert/train/eval/predict refuse it unless --allow-outside-root.")
def image_outside_root(img: ImageContext) -> Iterator[Hit]:
    facts = img.facts
    if facts is not None and facts.outside_root:
        root = Path(img.split.aset.root or ".").resolve()
        yield Hit(f"image path {img.record.file_name!r} resolves to {facts.path}, outside the dataset root {root}",
                  file=img.annotation_file)


@check("E502", "split-outside-root", "error", "split",
       "A dataset-YAML split entry resolves outside the dataset root (its path: folder, else the YAML's folder).")
def split_outside_root(split: SplitContext) -> Iterator[Hit]:
    resolved = source_outside_root(split.aset)
    if resolved is not None:
        root = Path(split.aset.root or ".").resolve()
        yield Hit(f"split source resolves to {resolved}, outside the dataset root {root}")
