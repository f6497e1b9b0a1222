"""Property-based tests: random damage to valid inputs of every reader gives a DataError naming the file
(and the entry where there is one), never another exception.

Fixed budget (a fixed ``@seed``: the same examples every run, ``max_examples`` per reader); failing
examples are saved in ``.hypothesis/`` (replayed first on the next run) and printed as a reproduction blob.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from maskkit.data.formats import read_annotations, write_annotations
from maskkit.data.synth import generate
from maskkit.errors import DataError

FUZZ = settings(
    max_examples=200,
    deadline=None,
    print_blob=True,
    database=DirectoryBasedExampleDatabase(str(Path(__file__).resolve().parents[1] / ".hypothesis")),
    suppress_health_check=[HealthCheck.too_slow],
)
READERS = {  # format -> (writer format, path read relative to the written folder)
    "coco": ("coco", "."),
    "yolo": ("yolo", "."),
    "labelme": ("labelme", "."),
    "voc": ("voc", "."),
    "labelimages": ("masks", "."),
}
_BASE: dict[str, Path] = {}
NEST = "@nest@"
GARBAGE_LINES = ["0 nan 1 2", "x y z", "1 0.5", "-3 0 0 1 1 1 0", "<a><b>", "   ", "9" * 40]


def _base(fmt: str) -> Path:
    """A small valid dataset written in ``fmt`` (made once per session)."""
    if fmt not in _BASE:
        root = Path(tempfile.mkdtemp(prefix=f"maskkit-fuzz-{fmt}-"))
        write_annotations(generate(2, size=32, seed=5), root / "data", READERS[fmt][0])
        _BASE[fmt] = root / "data"
    return _BASE[fmt]


@contextmanager
def _copy(fmt: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "data"
        shutil.copytree(_base(fmt), dst)
        yield dst


# -- damage ------------------------------------------------------------------------------------------
WRONG = st.sampled_from([None, "x", -1, 1e308, float("nan"), [], {}, [[1, "a"]], True, 2**70])


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:6]):
            out += _paths(v, (*prefix, i))
    return out


def _mutate_json(doc: Any, data: st.DataObject) -> tuple[Any, bool]:
    """The document with one value damaged, and whether that value sits inside a list item (an entry)."""
    paths = [p for p in _paths(doc) if p]
    if not paths:
        return data.draw(WRONG), False
    path = data.draw(st.sampled_from(paths))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    op = data.draw(st.sampled_from(["wrong", "delete", "nest"]))
    if op == "delete":
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    elif op == "nest":  # replaced by deeply nested brackets in the text (json.dumps cannot nest that deep)
        parent[path[-1]] = f"{NEST}{data.draw(st.sampled_from([50, 5000]))}"
    else:
        parent[path[-1]] = data.draw(WRONG)
    return doc, op != "nest" and any(isinstance(k, int) for k in path[:-1])  # deep nesting: a file-level error


ENTRY_WORDS = re.compile(r"\b(line|shape|object|annotation|image|entry|category|categories|polygon)\b", re.I)


def _damage(root: Path, data: st.DataObject) -> tuple[Path, bool]:
    """Damage one file of ``root``; returns it and whether the damage sits in one entry (a JSON value below a
    list item, or an inserted text line), so that the error must name the entry too."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    target = data.draw(st.sampled_from(files))
    blob = target.read_bytes()
    ops = ["truncate", "flip", "empty"]
    if target.suffix == ".json" or target.suffix in (".xml", ".txt", ".yaml"):
        ops += ["text"] * 2
    op = data.draw(st.sampled_from(ops))
    in_entry = False
    if op == "truncate":
        target.write_bytes(blob[: data.draw(st.integers(0, max(len(blob) - 1, 0)))])
    elif op == "flip" and blob:
        pos = data.draw(st.integers(0, len(blob) - 1))
        target.write_bytes(blob[:pos] + bytes([blob[pos] ^ data.draw(st.integers(1, 255))]) + blob[pos + 1 :])
    elif op == "empty":
        target.write_bytes(b"")
    elif target.suffix == ".json":
        doc, in_entry = _mutate_json(json.loads(blob), data)
        text = json.dumps(doc)
        target.write_text(re.sub(f'"{NEST}(\\d+)"', lambda m: "[" * int(m[1]) + "0" + "]" * int(m[1]), text))
    else:
        lines = blob.decode("utf-8", errors="replace").splitlines()
        garbage = data.draw(st.sampled_from(GARBAGE_LINES))
        lines.insert(data.draw(st.integers(0, len(lines))), garbage)
        target.write_text("\n".join(lines))
        in_entry = target.suffix == ".txt"  # a YOLO label line; XML/YAML damage is a file-level parse error
    return target, in_entry


def _check_read(root: Path, fmt: str, in_entry: bool) -> None:
    try:
        read_annotations(root, fmt)
    except DataError as exc:
        assert exc.file, f"DataError without a file: {exc}"
        assert str(exc).strip()
        if in_entry:
            named = exc.image is not None or exc.annotation is not None or ENTRY_WORDS.search(exc.problem)
            assert named, f"DataError does not name the damaged entry: {exc}"


@pytest.mark.parametrize("fmt", sorted(READERS))
def test_damaged_input_gives_data_error(fmt: str) -> None:
    @FUZZ
    @seed(13)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        with _copy(fmt) as root:
            _, in_entry = _damage(root, data)
            _check_read(root, fmt, in_entry)

    run()


def test_valid_inputs_read() -> None:
    for fmt in READERS:
        assert len(read_annotations(_base(fmt), fmt).images) == 2
