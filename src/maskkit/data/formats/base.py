"""The format registry: each format module registers ``detect``, ``read`` and ``write``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from maskkit.data.annotations import AnnotationSet
from maskkit.data.paths import confined, dataset_root, ensure_inside_root
from maskkit.errors import DataError


@dataclass
class ConversionReport:
    """What a writer did: counts, and every instance it had to change (never silently)."""

    format: str
    destination: Path
    images: int = 0
    instances: int = 0
    changes: Counter[str] = field(default_factory=Counter)
    """Reason -> number of instances changed for that reason (e.g. ``"hole filled"``)."""
    notes: list[str] = field(default_factory=list)

    def note(self, count: int, text: str) -> None:
        """Add ``text`` to the notes when ``count`` (of what it tells about) is nonzero."""
        if count:
            self.notes.append(text)

    def note_renumbered(self, ids: list[int], how: str) -> None:
        """Note that the written category ``ids`` (in writing order) are not ``1..K`` and become ``how`` on reading."""
        if ids != list(range(1, len(ids) + 1)):
            self.notes.append(f"category ids become {how} when read back")

    def change(self, reason: str, count: int = 1) -> None:
        self.changes[reason] += count

    @property
    def lossless(self) -> bool:
        return not self.changes

    def summary(self) -> str:
        lines = [f"wrote {self.images} images, {self.instances} instances as {self.format} to {self.destination}"]
        if self.changes:
            for reason, n in sorted(self.changes.items()):
                lines.append(f"  changed {n} instance(s): {reason}")
        else:
            lines.append("  lossless: no instance changed")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


Detector = Callable[[Path], bool]
Reader = Callable[[Path], AnnotationSet]
Writer = Callable[[AnnotationSet, Path], ConversionReport]


@dataclass(frozen=True)
class FormatSpec:
    """A registered annotation format."""

    name: str
    detect: Detector
    read: Reader
    write: Writer | None
    description: str


_FORMATS: dict[str, FormatSpec] = {}


def register_format(
    name: str, *, detect: Detector, read: Reader, write: Writer | None, description: str
) -> FormatSpec:
    """Register a format; later registrations of the same name replace earlier ones."""
    spec = FormatSpec(name, detect, read, write, description)
    _FORMATS[name] = spec
    return spec


# Detection order: specific detectors first; formats registered elsewhere come after these.
_BUILTIN = ("coco", "yolo", "labelme", "voc", "labelimg", "dsb", "labelimages", "masks")


def formats() -> dict[str, FormatSpec]:
    """All registered formats, in detection order (independent of import order)."""
    _load_builtin()
    order = [n for n in _BUILTIN if n in _FORMATS] + [n for n in _FORMATS if n not in _BUILTIN]
    return {n: _FORMATS[n] for n in order}


def detect_format(path: str | Path) -> str:
    """The name of the first registered format whose detector accepts ``path``."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or folder", file=path)
    for spec in formats().values():
        try:
            if spec.detect(path):
                return spec.name
        except OSError:
            continue
    names = ", ".join(formats())
    raise DataError(f"cannot tell the annotation format (known: {names})", file=path)


_ROOT_FROM_READER = ("voc", "yolo")
"""Formats whose reader sets ``aset.root`` for a file it is given (a split file, a data YAML)."""


def read_annotations(
    path: str | Path,
    format: str | None = None,
    *,
    root: str | Path | None = None,
    allow_outside_root: bool = False,
    reader: Reader | None = None,
) -> AnnotationSet:
    """Read any supported annotation source; the format is detected when not given.

    ``root`` is the dataset root every image must resolve inside (see :mod:`maskkit.data.paths`):
    by default ``path`` when it is a folder, else the root the reader found for the file (a VOC
    split file's VOC root, a YOLO YAML's ``path:``), else the file's folder. An image outside it
    is a DataError unless ``allow_outside_root``; then the set is returned with ``aset.root`` set
    so that ``validate`` can report such images. ``reader`` replaces the format's reader.
    """
    path = Path(path)
    name = format or detect_format(path)
    spec = formats().get(name)
    if spec is None:
        raise DataError(f"unknown format {name!r}; known: {', '.join(formats())}", file=path)
    # headers of images outside the root are not even read (a VOC split file's or a YOLO YAML's root is
    # only known once its reader has located it: those two are checked after reading)
    early = root or (dataset_root(path) if path.is_dir() or name not in _ROOT_FROM_READER else None)
    with confined(None if allow_outside_root else early):
        aset = (reader or spec.read)(path)
    aset.format = name
    aset.root = Path(root) if root is not None else (aset.root or dataset_root(path))
    ensure_inside_root(aset, allow_outside_root)
    return aset


def write_annotations(aset: AnnotationSet, dst: str | Path, format: str) -> ConversionReport:
    """Write an annotation set in ``format`` to ``dst``; returns what changed."""
    spec = formats().get(format)
    if spec is None or spec.write is None:
        writable = [n for n, s in formats().items() if s.write is not None]
        raise DataError(f"cannot write format {format!r}; writable: {', '.join(writable)}", file=dst)
    for record in aset.images:  # a reader keeps unknown sizes (0) for validate; no writer can use them
        if record.height <= 0 or record.width <= 0:
            raise DataError("image size unknown (no width/height in the annotations and the image file cannot "
                            "tell them)", file=record.source or record.file_name, image=record.file_name)
    return spec.write(aset, Path(dst))


_LOADED = False


def _load_builtin() -> None:
    """Import the built-in format modules (each registers itself)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib

    for mod in ("coco", "yolo", "labelme", "voc", "labelimg", "dsb", "labelimages"):
        try:
            importlib.import_module(f"maskkit.data.formats.{mod}")
        except ModuleNotFoundError as exc:  # a format module not written yet
            if exc.name != f"maskkit.data.formats.{mod}":
                raise
