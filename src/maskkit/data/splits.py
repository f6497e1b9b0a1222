"""Datasets with splits: the dataset YAML, loading it, and converting whole datasets.

A dataset YAML (``dataset.yaml``) is a superset of Ultralytics' ``data.yaml``::

    path: .            # optional root; relative to the YAML's folder (default: that folder)
    train: train       # each split: a path (relative to the root) to a source of ANY format
    val: images/val    # e.g. a YOLO images folder, a COCO folder or JSON, a LabelMe folder
    test: ...
    names: [cat, dog]  # or {0: cat, 1: dog}

:func:`load_dataset` accepts such a YAML (or a folder holding ``dataset.yaml``, or a YOLO folder
whose ``data.yaml`` names distinct splits), a folder with ``train/``, ``val/``, ``test/``
subfolders that are sources themselves, or any single source (one split, ``train``). Splits
pointing at the same source are loaded once (the later name becomes an alias), so Ultralytics'
``train: images`` / ``val: images`` is not a train/val leak.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from maskkit.data.annotations import AnnotationSet, Category
from maskkit.data.dataset_yaml import (
    DATA_YAML,
    DATASET_YAML,
    SPLITS,
    dataset_root,
    load_yaml,
    parse_names,
    split_paths,
    write_dataset_yaml,
)
from maskkit.data.formats.base import ConversionReport, detect_format, formats, read_annotations, write_annotations
from maskkit.data.formats.yolo import read_yolo
from maskkit.data.paths import ensure_entry_inside
from maskkit.errors import DataError

__all__ = [
    "DATASET_YAML",
    "SPLITS",
    "DatasetSplits",
    "convert_dataset",
    "dataset_yaml_for",
    "load_dataset",
    "write_dataset_yaml",
]



@dataclass
class DatasetSplits:
    """The splits of a dataset (``train``/``val``/``test``, those present) and its class names."""

    splits: dict[str, AnnotationSet]
    names: list[str]
    """Class names in category-id order (from the YAML's ``names`` when given)."""
    root: Path
    yaml_path: Path | None = None
    sources: dict[str, Path] = field(default_factory=dict)
    """The annotation source each split was read from."""
    aliases: dict[str, str] = field(default_factory=dict)
    """Splits that name the same source as an earlier split (``{"val": "train"}``): not loaded twice."""
    problems: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """Problems of the dataset itself for ``maskkit validate``, by check name: ``(message, file)``."""


def load_split(path: str | Path, split: str, *, allow_outside_root: bool = False) -> AnnotationSet:
    """The ``split`` of a dataset (YAML, split folders; aliases honoured) or the only split of a single source."""
    ds = load_dataset(path, allow_outside_root=allow_outside_root)
    name = ds.aliases.get(split, split)
    if name in ds.splits:
        return ds.splits[name]
    if len(ds.splits) == 1:
        return next(iter(ds.splits.values()))
    raise DataError(f"the dataset has no {split!r} split (it has {', '.join(ds.splits)})", file=path)



def dataset_yaml_for(path: str | Path) -> Path | None:
    """The dataset YAML ``path`` stands for, if any.

    A YAML file; a folder's ``dataset.yaml``; or a folder's ``data.yaml`` when it names at least
    two distinct split sources (a YOLO folder whose splits are all ``images`` is one source).
    """
    path = Path(path)
    if path.is_file():
        return path if path.suffix.lower() in (".yaml", ".yml") else None
    if (path / DATASET_YAML).is_file():
        return path / DATASET_YAML
    data_yaml = path / DATA_YAML
    if data_yaml.is_file():
        try:
            paths = split_paths(data_yaml, load_yaml(data_yaml))
        except DataError:
            return None
        if len({p.resolve() for p in paths.values()}) >= 2:
            return data_yaml
    return None


def _split_folders(path: Path) -> dict[str, Path]:
    """``train/``, ``val/``, ``test/`` subfolders that are annotation sources themselves."""
    out = {}
    for split in SPLITS:
        sub = path / split
        if sub.is_dir():
            try:
                detect_format(sub)
            except DataError:
                continue
            out[split] = sub
    return out


def _read(path: Path, fmt: str | None, names: Any, root: Path, allow_outside_root: bool) -> AnnotationSet:
    fmt = fmt or detect_format(path)
    reader = (lambda p: read_yolo(p, names=names)) if fmt == "yolo" and names is not None else None
    return read_annotations(path, fmt, root=root, allow_outside_root=allow_outside_root, reader=reader)


def load_dataset(path: str | Path, format: str | None = None, *, allow_outside_root: bool = False) -> DatasetSplits:
    """Load a dataset YAML, a folder of split folders, or a single source (-> split ``train``).

    ``format`` forces the annotation format of every split (detected otherwise). The dataset root
    (:mod:`maskkit.data.paths`) is the YAML's root (its ``path:``, else its folder), the folder of
    split folders, or the single source's root; a split entry or an image resolving outside it is a
    DataError unless ``allow_outside_root`` (``validate`` loads with it and reports them instead).
    """
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or folder", file=path)
    yaml_path = dataset_yaml_for(path)
    names_doc = None
    if yaml_path is not None:
        doc = load_yaml(yaml_path)
        sources, root, names_doc = split_paths(yaml_path, doc), dataset_root(yaml_path, doc), doc.get("names")
        for split, src in sources.items():
            ensure_entry_inside(src, root, f"split {split!r} entry {doc[split]!r}", yaml_path, allow_outside_root)
    elif path.is_dir() and (folders := _split_folders(path)):
        sources, root = folders, path
    else:
        aset = read_annotations(path, format, allow_outside_root=allow_outside_root)
        root = path if path.is_dir() else path.parent
        return DatasetSplits({"train": aset}, _names(aset.categories), root, sources={"train": path})
    splits: dict[str, AnnotationSet] = {}
    aliases: dict[str, str] = {}
    seen: dict[Path, str] = {}
    for split, src in sources.items():
        key = src.resolve()
        if key in seen:
            aliases[split] = seen[key]
            continue
        seen[key] = split
        splits[split] = _read(src, format, names_doc, root, allow_outside_root)
    problems: dict[str, tuple[str, str | None]] = {}
    if names_doc is not None:
        names = _names(parse_names(names_doc, yaml_path))
    else:
        names = _names(merge_categories(list(splits.values())))
        if yaml_path is not None:
            shown = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
            problems["dataset-yaml-without-names"] = (
                f"no 'names' in the dataset YAML: the class names come from the annotations ({shown or 'none'})",
                str(yaml_path))
    return DatasetSplits(splits, names, root, yaml_path, sources, aliases, problems)


def _names(categories: Sequence[Category]) -> list[str]:
    return [c.name for c in sorted(categories, key=lambda c: c.id)]


def merge_categories(sets: Sequence[AnnotationSet]) -> list[Category]:
    """The union of the sets' categories by id (first definition wins), sorted by id."""
    by_id: dict[int, Category] = {}
    for aset in sets:
        for c in aset.categories:
            by_id.setdefault(c.id, c)
    return [by_id[i] for i in sorted(by_id)]


def is_dataset(path: str | Path) -> bool:
    """Whether ``path`` is a dataset with splits (rather than one annotation source)."""
    path = Path(path)
    return dataset_yaml_for(path) is not None or (path.is_dir() and bool(_split_folders(path)))


def convert_dataset(
    src: str | Path, dst: str | Path, to: str, from_format: str | None = None, *, allow_outside_root: bool = False
) -> list[tuple[str | None, ConversionReport]]:
    """Convert a source (to ``DST``) or a dataset with splits (each to ``DST/<split>/`` + ``DST/dataset.yaml``).

    Returns ``(split or None, report)`` pairs. Categories are unified across splits first so
    that every split is written with the same class list (and the same YOLO class indices).
    Images outside the dataset root are refused unless ``allow_outside_root``; only files that
    decode as images are copied either way.
    """
    src, dst = Path(src), Path(dst)
    spec = formats().get(to)
    if spec is None or spec.write is None:
        writable = sorted(n for n, s in formats().items() if s.write is not None)
        raise DataError(f"cannot write format {to!r}; writable: {', '.join(writable)}")
    if from_format is not None and from_format not in formats():
        raise DataError(f"unknown format {from_format!r}; known: {', '.join(formats())}")
    if not is_dataset(src):
        aset = read_annotations(src, from_format, allow_outside_root=allow_outside_root)
        return [(None, write_annotations(aset, dst, to))]
    ds = load_dataset(src, from_format, allow_outside_root=allow_outside_root)
    cats = merge_categories(list(ds.splits.values()))
    reports: list[tuple[str | None, ConversionReport]] = []
    rel: dict[str, str] = {}
    for split, aset in ds.splits.items():
        reports.append((split, write_annotations(replace(aset, categories=cats), dst / split, to)))
        rel[split] = f"{split}/images" if to == "yolo" else split
    rel.update({alias: rel[target] for alias, target in ds.aliases.items()})
    contiguous = [c.id for c in cats] == list(range(len(cats)))
    names: Sequence[str] | dict[int, str] = [c.name for c in cats] if contiguous or to == "yolo" else {
        c.id: c.name for c in cats
    }
    write_dataset_yaml(dst / DATASET_YAML, rel, names)
    return reports
