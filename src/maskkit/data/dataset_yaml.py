"""Dataset YAML files (maskkit's ``dataset.yaml``, a superset of Ultralytics' ``data.yaml``): read and write.

The schema (documented in :mod:`maskkit.data.splits`, which loads whole datasets from it)::

    path: .            # optional root; relative to the YAML's folder (default: that folder)
    train: train       # each split: a path (relative to the root) to a source of any format
    val: images/val
    names: [cat, dog]  # or {0: cat, 1: dog}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from maskkit.data.annotations import Category
from maskkit.errors import DataError
from maskkit.fileio import atomic_write_text

__all__ = [
    "DATASET_YAML",
    "DATA_YAML",
    "SPLITS",
    "dataset_root",
    "load_yaml",
    "parse_names",
    "split_paths",
    "write_dataset_yaml",
    "yaml_root",
]

DATASET_YAML = "dataset.yaml"
DATA_YAML = "data.yaml"
"""Ultralytics' name for it (a YOLO folder's YAML)."""
SPLITS = ("train", "val", "test")


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping (data.yaml / dataset.yaml); DataError naming the file otherwise."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        raise DataError(f"cannot read YAML ({type(exc).__name__}: {exc})", file=path) from None
    if not isinstance(doc, dict):
        raise DataError("a dataset YAML must be a mapping", file=path)
    return doc


def yaml_root(path: Path, doc: dict[str, Any]) -> Path:
    """The root a data YAML's paths are relative to: its ``path`` (relative to the YAML) or its folder."""
    base = doc.get("path")
    if not base:
        return path.parent
    root = Path(str(base)).expanduser()
    return root if root.is_absolute() else (path.parent / root)


def parse_names(names: Any, file: Path | None = None) -> list[Category]:
    """Categories from a ``names`` entry: a list (ids 0..K-1) or a ``{id: name}`` mapping."""
    if isinstance(names, list | tuple):
        return [Category(i, str(n)) for i, n in enumerate(names)]
    if isinstance(names, dict):
        try:
            return sorted((Category(int(k), str(v)) for k, v in names.items()), key=lambda c: c.id)
        except (TypeError, ValueError):
            raise DataError("'names' keys must be integer class ids", file=file) from None
    raise DataError(f"'names' must be a list or a mapping, got {type(names).__name__}", file=file)


def dataset_root(yaml_path: Path, doc: dict[str, Any]) -> Path:
    """The existing dataset root of a dataset YAML (its ``path:``, else its folder); DataError otherwise."""
    root = yaml_root(yaml_path, doc)
    if not root.is_dir() and doc.get("path") and Path(str(doc["path"])).is_dir():
        root = Path(str(doc["path"]))  # an Ultralytics-style path relative to where it runs
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist", file=yaml_path)
    return root


def split_paths(yaml_path: Path, doc: dict[str, Any]) -> dict[str, Path]:
    """The existing source path of each split a dataset YAML names; DataError for a missing or unsupported one."""
    root = dataset_root(yaml_path, doc)
    out: dict[str, Path] = {}
    for split in SPLITS:
        value = doc.get(split)
        if value in (None, ""):
            continue
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, str):
            raise DataError(f"split {split!r} must be one path (lists of paths are not supported)", file=yaml_path)
        path = root / value
        if not path.exists() and value.startswith("../"):
            path = root / value[3:]  # as Ultralytics does
        if not path.exists():
            raise DataError(f"split {split!r}: {path} does not exist", file=yaml_path)
        if path.is_file() and path.suffix.lower() == ".txt":
            raise DataError(f"split {split!r}: image-list .txt files are not supported; give a folder", file=yaml_path)
        out[split] = path
    if not out:
        raise DataError("a dataset YAML needs at least one of train/val/test", file=yaml_path)
    return out


def write_dataset_yaml(
    path: str | Path, splits: Mapping[str, str], names: Sequence[str] | Mapping[int, str]
) -> Path:
    """Write a dataset YAML: split -> path relative to the YAML's folder, and the class names.

    No ``path`` key is written: Ultralytics resolves a relative ``path`` against its own
    datasets folder, while without it paths are relative to the YAML (here and there).
    """
    path = Path(path)
    doc: dict[str, Any] = {s: str(splits[s]) for s in SPLITS if s in splits}
    doc.update({s: str(p) for s, p in splits.items() if s not in doc})
    doc["names"] = {int(k): str(v) for k, v in sorted(names.items())} if isinstance(names, Mapping) else list(names)
    text = "# maskkit dataset YAML: split paths are relative to this file's folder\n"
    atomic_write_text(path, text + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path
