"""COCO results files (a JSON list of detections, from any tool): read with validation, write.

An entry is ``{"image_id", "category_id", "score", "segmentation" and/or "bbox"}``; ``bbox`` is COCO
``[x, y, w, h]``, ``segmentation`` a compressed RLE (``counts`` string) of the image's size. As a
leniency, uncompressed RLE (``counts`` list) and polygon lists are accepted and converted.

Every problem raises :class:`~maskkit.errors.DataError` naming the file and the entry index: not
JSON, empty, not a list, an entry that is not an object, unknown ``image_id`` or ``category_id``,
a missing or non-finite ``score``, a bad ``bbox``, or a malformed RLE. Compressed RLE strings are
checked completely (vectorised: characters, run lengths >= 0 adding up to ``h × w``) because
pycocotools would write out of bounds when decoding a corrupt one.

``maskkit eval`` reads a file straight into per-image prediction columns (:func:`read_results_table`,
:func:`results_to_columns`): the usual shape is checked column by column, anything else entry by entry
(:func:`validate_results`, which names the problem); both give the same columns.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pycocotools import mask as mask_utils

from maskkit.data.formats import read_annotations
from maskkit.data.images import decode_image_bytes, read_image
from maskkit.errors import DataError
from maskkit.evaluation import coco
from maskkit.evaluation.base import Columns, box_areas
from maskkit.fileio import atomic_write_json
from maskkit.perf import gc_paused
from maskkit.structures import Masks
from maskkit.structures.masks import rle_to_string

T = TypeVar("T")


def read_results(
    path: str | Path, image_sizes: Mapping[int, tuple[int, int]], category_ids: Iterable[int]
) -> list[dict[str, Any]]:
    """Read and validate a COCO results file against the ground truth's images and categories.

    Returns the entries with ``segmentation`` normalised to compressed RLE (``counts`` bytes) and
    ``bbox`` as a list of 4 floats (each only when given).
    """
    with gc_paused():
        return validate_results(_load_json(path), image_sizes, category_ids, source=path)


def _load_json(path: str | Path) -> Any:
    """The parsed JSON of a results file (:class:`DataError` when unreadable, empty or not JSON)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read results: {exc.strerror or exc}", file=path) from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid JSON: not UTF-8 text ({exc.reason})", file=path) from exc
    if not text.strip():
        raise DataError("empty file (expected a JSON list of detections)", file=path)
    with gc_paused():
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", file=path) from exc


def validate_results(
    data: Any,
    image_sizes: Mapping[int, tuple[int, int]],
    category_ids: Iterable[int],
    source: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Validate parsed COCO results (see :func:`read_results`); ``source`` names them in errors."""
    if isinstance(data, dict) and "annotations" in data:
        raise DataError("this is a COCO dataset (has 'annotations'), not a results list", file=source)
    if not isinstance(data, list):
        raise DataError(f"results must be a JSON list of detections, got {type(data).__name__}", file=source)
    cats = {int(c) for c in category_ids}
    out = []
    compressed: list[int] = []
    for i, entry in enumerate(data):
        def bad(problem: str, entry_index: int = i) -> DataError:
            return DataError(problem, file=source, annotation=f"entry {entry_index}")

        if not isinstance(entry, dict):
            raise bad(f"entry is a {type(entry).__name__}, expected an object")
        image_id = _int(entry.get("image_id"))
        if image_id is None or image_id not in image_sizes:
            raise bad(f"unknown image_id {entry.get('image_id')!r} (not in the ground truth)")
        category_id = _int(entry.get("category_id"))
        if category_id is None or category_id not in cats:
            raise bad(f"unknown category_id {entry.get('category_id')!r} (known: {sorted(cats)})")
        score = entry.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float) or not _finite(score):
            raise bad(f"score must be a finite number, got {score!r}")
        if "bbox" not in entry and "segmentation" not in entry:
            raise bad("entry has neither 'bbox' nor 'segmentation'")
        det: dict[str, Any] = {"image_id": image_id, "category_id": category_id, "score": float(score)}
        if "bbox" in entry:
            det["bbox"] = _bbox(entry["bbox"], bad)
        if "segmentation" in entry:
            det["segmentation"], is_string = _segmentation(entry["segmentation"], image_sizes[image_id], bad)
            if is_string:
                compressed.append(i)
        out.append(det)
    if compressed:
        rles = [out[i]["segmentation"] for i in compressed]
        for k in np.flatnonzero(~compressed_rles_valid(rles)):
            raise DataError("malformed compressed RLE: run lengths do not decode to the mask size",
                            file=source, annotation=f"entry {compressed[k]}")
    return out


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _finite(value: int | float) -> bool:
    """Whether a number is finite as a float (an int beyond the float range is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _bbox(value: Any, bad: Any) -> list[float]:
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise bad(f"bbox must be [x, y, w, h], got {value!r}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and _finite(v) for v in value):
        raise bad(f"bbox must hold 4 finite numbers, got {value!r}")
    if value[2] < 0 or value[3] < 0:
        raise bad(f"bbox width and height must be >= 0, got {value!r}")
    return [float(v) for v in value]


def _segmentation(value: Any, size: tuple[int, int], bad: Any) -> tuple[dict[str, Any], bool]:
    """Compressed RLE of a segmentation (bytes counts) and whether its string still needs checking."""
    h, w = int(size[0]), int(size[1])
    if isinstance(value, dict):
        rle_size = value.get("size")
        counts = value.get("counts")
        if not isinstance(rle_size, list | tuple) or [_int(v) for v in rle_size] != [h, w]:
            raise bad(f"RLE size {rle_size!r} does not match the image size [{h}, {w}]")
        if isinstance(counts, str):
            try:
                return {"size": [h, w], "counts": counts.encode("ascii")}, True
            except UnicodeEncodeError:
                raise bad("malformed compressed RLE: non-ASCII counts") from None
        if isinstance(counts, list):
            if not all(_int(c) is not None and c >= 0 for c in counts) or sum(counts) != h * w:
                raise bad(f"malformed uncompressed RLE: counts must be integers >= 0 adding up to {h * w}")
            return mask_utils.frPyObjects({"size": [h, w], "counts": [int(c) for c in counts]}, h, w), False
        raise bad(f"RLE counts must be a string or a list, got {type(counts).__name__}")
    if isinstance(value, list) and value and all(isinstance(p, list) for p in value):
        parts = [p for p in value if len(p) >= 6]
        if not all(len(p) % 2 == 0 and all(isinstance(v, int | float) for v in p) for p in value) or not parts:
            raise bad("malformed polygon segmentation (need flat [x1, y1, x2, y2, ...] lists of >= 3 points)")
        return mask_utils.merge(mask_utils.frPyObjects(parts, h, w)), False
    raise bad("segmentation must be an RLE object or a polygon list")


def compressed_rles_valid(rles: Sequence[dict[str, Any]]) -> np.ndarray:
    """Which compressed RLEs (``counts`` bytes) decode to valid runs adding up to ``h × w``.

    Implements pycocotools' ``rleFrString`` (6-bit groups of 5 value bits + continuation bit, sign
    bit on the last group, counts from the third on stored as deltas to the one two places before)
    over all strings at once.
    """
    totals = np.fromiter((int(r["size"][0]) * int(r["size"][1]) for r in rles), dtype=np.int64, count=len(rles))
    return _counts_valid([r["counts"] for r in rles], totals)


def _counts_valid(strings: Sequence[bytes], totals: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """:func:`compressed_rles_valid` of RLE strings and their mask sizes ``h × w`` (in chunks of RLEs: the
    per-character temporaries then stay small, twice as fast as one pass over 100,000 masks)."""
    if len(strings) > chunk:
        chunks: np.ndarray = np.concatenate([_counts_valid(strings[i : i + chunk], totals[i : i + chunk], chunk)
                                             for i in range(0, len(strings), chunk)])
        return chunks
    n = len(strings)
    lens = np.fromiter(map(len, strings), dtype=np.int64, count=n)
    ok: np.ndarray = (lens > 0) | (totals == 0)
    if not lens.sum():
        return ok
    raw = np.frombuffer(b"".join(strings), dtype=np.uint8)
    owner = np.repeat(np.arange(n), lens)
    ok[owner[(raw < 48) | (raw > 111)]] = False
    c = (raw - 48) & 63
    ends = np.cumsum(lens)[lens > 0] - 1
    term = (c & 0x20) == 0
    ok[owner[ends[~term[ends]]]] = False  # a string must not end inside a value
    term[ends] = True
    starts = np.flatnonzero(np.concatenate(([True], term[:-1])))
    group_len = np.diff(np.append(starts, len(c)))
    ok[owner[starts[group_len > 12]]] = False  # more than 60 bits: no real mask
    k = np.arange(len(c)) - np.repeat(starts, group_len)
    x = np.add.reduceat((c & 0x1F).astype(np.int64) << (5 * np.minimum(k, 11)), starts)
    last = starts + group_len - 1
    negative = (c[last] & 0x10) != 0
    x[negative] -= np.int64(1) << (5 * np.minimum(group_len[negative], 12))
    rle_of = owner[starts]
    per_rle = np.bincount(rle_of, minlength=n)
    first = np.concatenate(([0], np.cumsum(per_rle)[:-1]))
    m = np.arange(len(x)) - first[rle_of]  # index of the count within its RLE
    counts = x
    for parity in (0, 1):  # counts[m] = x[m] + counts[m - 2] for m > 2: cumulative sums per RLE and parity
        sel = np.flatnonzero((m >= 1) & (m % 2 == parity))
        if len(sel):
            cs = np.cumsum(x[sel])
            sub = np.bincount(rle_of[sel], minlength=n)
            off = np.cumsum(sub) - sub
            before = np.where(off > 0, cs[np.maximum(off - 1, 0)], 0)
            counts[sel] = cs - np.repeat(before, sub)
    has = per_rle > 0
    ok[rle_of[counts < 0]] = False
    sums = np.zeros(n, dtype=np.int64)
    sums[has] = np.add.reduceat(counts, first[has])
    valid: np.ndarray = ok & (sums == totals)
    return valid


@dataclass
class ResultsTable:
    """Validated COCO results, column by column (entry order kept)."""

    image_ids: np.ndarray  # int64
    category_ids: np.ndarray  # int64
    scores: np.ndarray  # float64
    boxes: np.ndarray  # (N, 4) COCO [x, y, w, h] float64, zeros where an entry has no bbox
    has_box: np.ndarray  # bool
    counts: list[bytes | None]  # compressed RLE of each entry's segmentation (None: none given)

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_results(cls, results: Sequence[dict[str, Any]]) -> ResultsTable:
        """From :func:`validate_results`' entries."""
        n = len(results)
        boxes = np.zeros((n, 4), dtype=np.float64)
        has_box = np.array(["bbox" in r for r in results], dtype=bool)
        if has_box.any():
            boxes[has_box] = [r["bbox"] for r in results if "bbox" in r]
        return cls(np.array([r["image_id"] for r in results], dtype=np.int64).reshape(n),
                   np.array([r["category_id"] for r in results], dtype=np.int64).reshape(n),
                   np.array([r["score"] for r in results], dtype=np.float64).reshape(n), boxes, has_box,
                   [r["segmentation"]["counts"] if "segmentation" in r else None for r in results])


def read_results_table(
    path: str | Path, image_sizes: Mapping[int, tuple[int, int]], category_ids: Iterable[int]
) -> ResultsTable:
    """:func:`read_results` as a :class:`ResultsTable`: the usual file (every entry an object with int ids,
    a number score, a ``[x, y, w, h]`` list and/or a compressed RLE) is checked column-wise; anything
    else goes through :func:`validate_results`, entry by entry (which names the problem)."""
    cats = {int(c) for c in category_ids}
    with gc_paused():
        data = _load_json(path)
        table = _table_if_plain(data, image_sizes, cats)
        if table is None:
            table = ResultsTable.from_results(validate_results(data, image_sizes, cats, source=path))
    return table


_MISSING = object()


def _types(values: Iterable[Any]) -> set[type]:
    return set(map(type, values))


def _table_if_plain(data: Any, image_sizes: Mapping[int, tuple[int, int]], cats: set[int]) -> ResultsTable | None:
    """The table of well-formed results in the usual shape, or ``None`` (not that shape, or a problem)."""
    if type(data) is not list or not data or _types(data) != {dict}:
        return None
    image_ids = [e.get("image_id") for e in data]
    category_ids = [e.get("category_id") for e in data]
    scores = [e.get("score") for e in data]
    if _types(image_ids) != {int} or _types(category_ids) != {int} or not _types(scores) <= {int, float}:
        return None
    boxes = [e.get("bbox", _MISSING) for e in data]
    segs = [e.get("segmentation", _MISSING) for e in data]
    has_box = np.fromiter((b is not _MISSING for b in boxes), dtype=bool, count=len(data))
    has_seg = np.fromiter((g is not _MISSING for g in segs), dtype=bool, count=len(data))
    if not (has_box | has_seg).all() or (has_seg.any() and not has_seg.all()):
        return None
    try:
        ids = np.array(image_ids, dtype=np.int64)
        labels = np.array(category_ids, dtype=np.int64)
        score = np.array(scores, dtype=np.float64)
        xywh = np.zeros((len(data), 4), dtype=np.float64)
        given = [b for b in boxes if b is not _MISSING]
        if given:
            if _types(given) != {list} or set(map(len, given)) != {4}:
                return None
            if not _types(itertools.chain.from_iterable(given)) <= {int, float}:
                return None
            xywh[has_box] = given
    except OverflowError:
        return None
    known = np.fromiter(image_sizes, dtype=np.int64, count=len(image_sizes))
    if not (np.isin(ids, known).all() and np.isin(labels, np.fromiter(cats, np.int64, len(cats))).all()
            and np.isfinite(score).all() and np.isfinite(xywh).all() and (xywh[:, 2:] >= 0).all()):
        return None
    counts: list[bytes | None] = [None] * len(data)
    if has_seg.any():
        if _types(segs) != {dict}:
            return None
        strings = [g.get("counts") for g in segs]
        sizes = [g.get("size") for g in segs]
        if _types(strings) != {str} or _types(sizes) != {list} or set(map(len, sizes)) != {2}:
            return None
        if not _types(itertools.chain.from_iterable(sizes)) <= {int}:
            return None
        expected = np.array([image_sizes[i] for i in image_ids], dtype=np.int64).reshape(-1, 2)
        if not (np.array(sizes, dtype=np.int64) == expected).all():
            return None
        try:
            encoded = [c.encode("ascii") for c in strings]
        except UnicodeEncodeError:
            return None
        if not _counts_valid(encoded, expected[:, 0] * expected[:, 1]).all():
            return None
        counts = list(encoded)
    return ResultsTable(ids, labels, score, xywh, has_box, counts)


def results_to_columns(
    table: ResultsTable, image_sizes: Mapping[int, tuple[int, int]]
) -> tuple[dict[int, Columns], list[str]]:
    """Per-image prediction :class:`~maskkit.evaluation.base.Columns` of validated results (boxes XYXY).

    Masks are kept only when every entry has a ``segmentation``; boxes missing from entries come
    from the mask extents (as pycocotools' ``loadRes`` does). Returns the columns and notes.
    """
    notes: list[str] = []
    n = len(table)
    if not n:
        return {}, notes
    with_seg = np.array([c is not None for c in table.counts], dtype=bool)
    with_masks = bool(with_seg.all())
    if not with_masks and with_seg.any():
        notes.append(f"{int((~with_seg).sum())} results have no segmentation: masks ignored, bbox only")
    if with_masks and not table.has_box.all():
        notes.append("results without bbox: boxes taken from the mask extents (as pycocotools' loadRes does)")
    xyxy = table.boxes.copy()
    xyxy[:, 2:] += xyxy[:, :2]
    xyxy[~table.has_box] = 0.0
    order = np.argsort(table.image_ids, kind="stable")
    ids, starts = np.unique(table.image_ids[order], return_index=True)
    if with_masks:
        per_image = np.array([image_sizes[i] for i in ids.tolist()], dtype=np.int64).reshape(-1, 2)
        sizes = per_image[np.searchsorted(ids, table.image_ids)].tolist()
        areas = coco.rle_areas([{"size": s, "counts": c} for s, c in zip(sizes, table.counts, strict=True)])
    out = {}
    for image_id, idx in zip(ids.tolist(), np.split(order, starts[1:]), strict=True):
        h, w = image_sizes[image_id]
        boxes = xyxy[idx]
        counts: list[bytes] | None = None
        if with_masks:
            counts = [table.counts[i] for i in idx.tolist()]
            no_box = np.flatnonzero(~table.has_box[idx])
            if len(no_box):
                boxes[no_box] = Masks.from_rles([{"size": [h, w], "counts": counts[i]} for i in no_box], h, w
                                                ).boxes().astype(np.float64)
        out[image_id] = Columns(labels=table.category_ids[idx], boxes=boxes,
                                areas=areas[idx] if with_masks else box_areas(boxes), counts=counts,
                                scores=table.scores[idx])
    return out, notes


def read_results_source(
    gt: str | Path, pred: str | Path, allow_outside_root: bool = False
) -> tuple[Any, dict[int, Columns], list[str], str]:
    """A ground truth (any annotation source) and a COCO results file, ready to evaluate as pycocotools would.

    Returns the GT ``AnnotationSet``, the predictions by image id (prediction
    :class:`~maskkit.evaluation.base.Columns`, which ``InstanceEvaluator.process`` takes as outputs),
    notes, and the predictions' area convention for the size buckets that pycocotools' ``loadRes``
    applies to this file (:func:`maskkit.evaluation.coco.loadres_areas`: the box area when the first
    entry has a bbox; pass it as ``InstanceEvaluator(detection_areas=...)``).
    """
    aset = read_annotations(gt, allow_outside_root=allow_outside_root)
    sizes = {r.id: (r.height, r.width) for r in aset.images}
    table = read_results_table(pred, sizes, [c.id for c in aset.categories])
    preds, notes = results_to_columns(table, sizes)
    if not len(table):
        notes.append(f"{pred} holds no detections")
    areas = "box" if len(table) and table.has_box[0] else "mask"
    if areas == "box" and any(c is not None for c in table.counts):
        notes.append("size buckets (APs/APm/APl, ARs/ARm/ARl) use each result's bbox area, also for segm, "
                     "as pycocotools' loadRes does for results with a bbox")
    return aset, preds, notes, areas


def write_results(path: str | Path, results: Sequence[dict[str, Any]]) -> None:
    """Write a COCO results list (RLE ``counts`` bytes become str), atomically."""
    safe = [{**r, "segmentation": rle_to_string(r["segmentation"])} if "segmentation" in r else r for r in results]
    atomic_write_json(path, safe)


def image_loader(aset: Any) -> Callable[[int], np.ndarray | None]:
    """``image_id -> image`` for an ``AnnotationSet`` (embedded bytes or the file; ``None`` if unreachable)."""
    records = {r.id: r for r in aset.images}

    def load(image_id: int) -> np.ndarray | None:
        rec = records.get(image_id)
        if rec is None:
            return None
        return read_record_image(rec.data, rec.source, aset.image_path(rec))

    return load


def readable(value: T | None, aset: Any, rec: Any) -> T:
    """``value`` (a record's image, or its prediction streamed from Ray), or a ``DataError`` naming the record's
    image file when it was not found or could not be read (``None``)."""
    if value is None:
        raise DataError("image file not found or unreadable", file=aset.image_path(rec))
    return value


def read_record_image(data: bytes | None, source: str | None, path: Path) -> np.ndarray | None:
    """An image record's pixels: its embedded ``data`` (from ``source``), else the file; ``None`` if unreachable."""
    try:
        if data is not None:
            return decode_image_bytes(data, source)
        return read_image(path) if path.is_file() else None
    except (DataError, OSError):
        return None
