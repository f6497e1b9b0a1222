"""What ``maskkit predict`` runs on: image and video files from paths, folders and globs, and their ids.

A SOURCE is an image or video file, a folder (searched **recursively**, hidden files and folders
skipped) or a glob pattern (``"data/*.png"``, ``"data/**/*.tif"``; quote it so the shell leaves
it alone). Each file gets a *key*: its path relative to the folder (or to the fixed part of the
glob) without suffix, or the file's stem for a file given directly. Keys name the outputs
(``overlays/<key>.jpg``, ``results/<key>.json``, ...) so sub-folders are kept; clashing keys
(``a.png`` and ``a.tif``) get the suffix appended (``a_tif``). Files are processed in key order.

COCO image ids come from a dataset (:func:`dataset_image_ids`: matched by path, then by relative
file name, then by unique base name) or are ``1..N`` in key order (:func:`sequential_ids`).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskkit.data.images import IMAGE_SUFFIXES, is_image_file
from maskkit.errors import DataError
from maskkit.inference.video import VIDEO_SUFFIXES, is_video_file

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class SourceItem:
    """One input file: absolute ``path``, unique output ``key`` (POSIX, no suffix), ``kind`` image or video."""

    path: Path
    key: str
    kind: str


def _kind(path: Path) -> str | None:
    if is_image_file(path):
        return "image"
    if is_video_file(path):
        return "video"
    return None


def _visible_files(folder: Path, skip: Path | None) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() != skip)
        yield from (here / f for f in sorted(filenames) if not f.startswith("."))


def _glob_base(pattern: str) -> Path:
    """The folder part of ``pattern`` before its first wildcard."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _expand(spec: str, skip: Path | None) -> list[tuple[Path, str]]:
    """``(file, key)`` pairs of one SOURCE argument."""
    path = Path(spec)
    if path.is_file():
        if _kind(path) is None:
            raise DataError(f"not an image or video file (images: {', '.join(IMAGE_SUFFIXES)}; videos: "
                            f"{', '.join(VIDEO_SUFFIXES)})", file=path)
        return [(path, path.stem)]
    if path.is_dir():
        base, files = path, _visible_files(path, skip)
    elif _GLOB_CHARS & set(spec):
        base = _glob_base(spec)
        files = (Path(p) for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_file())
    else:
        raise DataError("source not found (give an image, a video, a folder or a quoted glob pattern)", file=path)
    out = []
    for f in files:
        if _kind(f) is None or (skip is not None and skip in f.resolve().parents):
            continue
        try:
            rel = f.relative_to(base)
        except ValueError:  # cannot happen for glob results below base; keep the name then
            rel = Path(f.name)
        out.append((f, rel.with_suffix("").as_posix()))
    if not out:
        raise DataError("no images or videos found" + (" (folders are searched recursively)" if path.is_dir()
                                                       else " matching the pattern"), file=spec)
    return out


def collect_sources(specs: Sequence[str | Path], exclude: str | Path | None = None) -> list[SourceItem]:
    """Every image and video of the SOURCE arguments, in key order (see the module docstring).

    Files below ``exclude`` (the output folder, so a rerun does not predict on its own overlays)
    are skipped; a file named twice is taken once.
    """
    if not specs:
        raise DataError("give at least one SOURCE (an image, a video, a folder or a glob pattern)")
    skip = Path(exclude).resolve() if exclude is not None else None
    seen: set[Path] = set()
    used: set[str] = set()
    items = []
    for spec in specs:
        for f, key in _expand(str(spec), skip):
            resolved = f.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            unique = key
            if unique.lower() in used:
                unique = f"{key}_{f.suffix.lstrip('.').lower()}"
                k = 2
                while unique.lower() in used:
                    unique, k = f"{key}_{f.suffix.lstrip('.').lower()}_{k}", k + 1
            used.add(unique.lower())
            items.append(SourceItem(resolved, unique, _kind(f) or "image"))
    return sorted(items, key=lambda it: it.key)


def sequential_ids(keys: Sequence[str]) -> dict[str, int]:
    """Image ids ``1..N`` in sorted key order."""
    return {k: i for i, k in enumerate(sorted(keys), start=1)}


def dataset_image_ids(files: dict[str, Path], aset: Any) -> tuple[dict[str, int], list[str]]:
    """Image ids of files (``key -> path``) taken from an ``AnnotationSet``; returns ids and unmatched keys.

    A file matches a record by its resolved path, else when its path ends with the record's
    ``file_name``, else by base name when exactly one record has that name.
    """
    by_path = {aset.image_path(r): r.id for r in aset.images}
    by_rel = {r.file_name.replace("\\", "/"): r.id for r in aset.images}
    names: dict[str, list[int]] = {}
    for r in aset.images:
        names.setdefault(Path(r.file_name).name, []).append(r.id)
    ids, missing = {}, []
    for key, path in files.items():
        path = Path(path).resolve()
        found = by_path.get(path)
        if found is None:
            posix = path.as_posix()
            found = next((i for rel, i in by_rel.items() if posix.endswith("/" + rel.lstrip("./"))), None)
        if found is None and len(names.get(path.name, [])) == 1:
            found = names[path.name][0]
        if found is None:
            missing.append(key)
        else:
            ids[key] = found
    return ids, missing


def category_id_map(category_ids: Sequence[int], class_names: Sequence[str], categories: Sequence[Any]
                    ) -> tuple[dict[int, int], list[str]]:
    """Model category id -> dataset category id, matched by class name; returns the map and notes.

    A class the dataset does not have keeps the model's id (noted).
    """
    by_name = {c.name: c.id for c in categories}
    mapping, notes = {}, []
    for cid, name in zip(category_ids, class_names, strict=True):
        mapping[int(cid)] = int(by_name.get(name, cid))
        if name not in by_name:
            notes.append(f"class {name!r} is not in the dataset: its predictions keep category id {cid}")
    return mapping, notes
