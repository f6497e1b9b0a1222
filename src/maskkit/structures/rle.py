"""COCO RLE codecs that pycocotools does not provide, all working on runs rather than dense full-size masks.

* :func:`crop_to_rle` – a boolean crop placed in a larger image -> full-image RLE (cost ~ the crop);
* :func:`counts_to_crop` – uncompressed runs -> a boolean crop of any box (cost ~ the runs + the crop);
* :func:`label_image_to_rles` / :func:`rles_to_label_image` – instance-label image <-> RLEs in one
  pass over the runs (not one pass per instance);
* :func:`rle_areas` – pixel areas of many RLEs (pycocotools' ``area`` overflows for more than 255
  RLEs per call under NumPy 2: called in chunks);
* run-length helpers: :func:`run_bounds`, :func:`uncompressed_counts`, :func:`transposed`,
  :func:`encode_bitmap`, :func:`empty_rle`.

COCO RLE runs go column by column (Fortran order) and alternate background/foreground, starting
with background.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict[str, Any]
"""A COCO RLE dict: ``{"size": [h, w], "counts": bytes | str | list[int]}``."""

AREA_CHUNK = 255
"""pycocotools' ``area`` raises OverflowError for more RLEs than this per call under NumPy 2."""


def empty_rle(height: int, width: int) -> RLE:
    """Compressed RLE of an all-zero ``height×width`` mask (no dense array is built)."""
    rle: RLE = mask_utils.frPyObjects({"size": [height, width], "counts": [height * width]}, height, width)
    return rle


def encode_bitmap(bitmap: np.ndarray) -> RLE:
    """Compressed RLE of one dense ``H×W`` mask (nonzero = foreground)."""
    rle: RLE = mask_utils.encode(np.asfortranarray(bitmap, dtype=np.uint8))
    return rle


def transposed(arr: np.ndarray) -> np.ndarray:
    """C-contiguous transpose of a 2-D array (OpenCV's is several times faster than NumPy's copy)."""
    if arr.dtype in (np.uint8, np.uint16, np.int16, np.int32):
        import cv2  # deferred: OpenCV is a slow import and only this path needs it

        return cv2.transpose(np.ascontiguousarray(arr))
    return np.ascontiguousarray(arr.T)


def rle_areas(rles: Sequence[RLE]) -> np.ndarray:
    """Pixel areas (float64) of compressed RLEs, computed in chunks of :data:`AREA_CHUNK`."""
    if not len(rles):
        return np.zeros(0, dtype=np.float64)
    chunks = [mask_utils.area(list(rles[i:i + AREA_CHUNK])) for i in range(0, len(rles), AREA_CHUNK)]
    return np.concatenate(chunks).astype(np.float64)


def run_bounds(counts: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)`` flat column-major pixel indices of the foreground runs of uncompressed counts."""
    bounds = np.cumsum(np.asarray(counts, dtype=np.int64))
    ends = bounds[1::2]
    return bounds[0::2][: len(ends)], ends


def uncompressed_counts(rles: Sequence[RLE]) -> list[Any]:
    """Uncompressed run lengths of compressed RLEs (faster-coco-eval's C++ decoder)."""
    from faster_coco_eval import mask_api_new_cpp as fast_mask  # deferred: a slow import (~0.1 s)

    return [r["counts"] for r in fast_mask.toUncompressedRLE(list(rles))] if rles else []


def crop_to_rle(crop: np.ndarray, y0: int, x0: int, height: int, width: int) -> RLE:
    """Compressed full-image RLE of a boolean ``crop`` placed at ``(y0, x0)`` in a ``height×width`` image.

    The crop must lie inside the image. Equal to ``mask_utils.encode`` of the pasted full mask, but
    the cost grows with the crop's area and its number of runs, not with the image size.
    """
    h, w = crop.shape
    total = height * width
    if crop.size == 0 or not crop.any():
        return empty_rle(height, width)
    padded = np.zeros((w, h + 2), dtype=np.int8)  # column-major runs: one row per image column
    padded[:, 1:-1] = crop.T
    d = np.diff(padded, axis=1)
    sc, sr = np.nonzero(d == 1)
    ec, er = np.nonzero(d == -1)
    starts = (sc.astype(np.int64) + x0) * height + sr + y0
    ends = (ec.astype(np.int64) + x0) * height + er + y0
    if h == height:  # runs that fill a column continue into the next one
        join = ends[:-1] == starts[1:]
        if join.any():
            starts = starts[np.concatenate(([True], ~join))]
            ends = ends[np.concatenate((~join, [True]))]
    counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
    counts[0] = starts[0]
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[1::2] = ends - starts
    counts[-1] = total - ends[-1]
    if counts[-1] == 0:  # a run up to the last pixel: pycocotools writes no trailing empty run
        counts = counts[:-1]
    rle: RLE = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return rle


def counts_to_crop(counts: Sequence[int] | np.ndarray, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean crop ``box = (y0, x0, y1, x1)`` of an uncompressed RLE of an image ``height`` pixels tall.

    Works on the runs only: cost grows with the runs and the crop area, not with the image size.
    """
    y0, x0, y1, x1 = box
    h, w = y1 - y0, x1 - x0
    starts, ends = run_bounds(counts)
    first, last = starts // height, (ends - 1) // height
    if len(starts) and (first == last).all() and (ends > starts).all():  # no run crosses a column (small masks)
        col, r0, r1 = first, starts - first * height - y0, ends - first * height - y0
    else:
        keep = ends > starts
        starts, ends, first, last = starts[keep], ends[keep], first[keep], last[keep]
        n = last - first + 1  # a run spanning columns is split into one segment per column
        seg_run = np.repeat(np.arange(len(starts)), n)
        col = first[seg_run] + np.arange(len(seg_run)) - np.repeat(np.cumsum(n) - n, n)
        r0 = np.maximum(starts[seg_run], col * height) - col * height - y0
        r1 = np.minimum(ends[seg_run], (col + 1) * height) - col * height - y0
    if len(col) and (r0.min() < 0 or r1.max() > h or col.min() < x0 or col.max() >= x1):  # clip to the box
        r0, r1 = np.maximum(r0, 0), np.minimum(r1, h)
        sel = (col >= x0) & (col < x1) & (r1 > r0)
        col, r0, r1 = col[sel], r0[sel], r1[sel]
    base = (col - x0) * h
    marks = np.zeros(w * h + 1, dtype=np.int8)
    marks[base + r0] = 1  # starts are unique, and so are ends; an end meeting the next start cancels it
    marks[base + r1] -= 1
    return np.cumsum(marks[:-1], dtype=np.int8).reshape(w, h).T.astype(bool)


def label_image_to_rles(labels: np.ndarray) -> tuple[list[RLE], np.ndarray]:
    """Compressed RLEs of every instance of a label image (0 = background), in id order, and the ids.

    One pass over the column-major runs of the image: runs are grouped by id and turned into
    COCO uncompressed counts, which pycocotools compresses. Cost grows with pixels + runs, not
    pixels × instances.
    """
    h, w = labels.shape
    flat = transposed(labels).reshape(-1)  # COCO RLE runs column by column
    if flat.size == 0:
        return [], np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [flat.size]))
    values = flat[starts]
    fg = values != 0
    order = np.argsort(values[fg], kind="stable")  # runs of one id stay in image order
    starts, ends, values = starts[fg][order], ends[fg][order], values[fg][order]
    ids, first = np.unique(values, return_index=True)
    prev_end = np.roll(ends, 1)
    prev_end[first] = 0
    counts = np.empty(2 * len(starts), dtype=np.int64)
    counts[0::2] = starts - prev_end
    counts[1::2] = ends - starts
    bounds = np.append(first, len(starts))
    objs = []
    for a, b in itertools.pairwise(bounds):
        c, tail = counts[2 * a:2 * b], flat.size - ends[b - 1]
        objs.append({"size": [h, w], "counts": np.append(c, tail) if tail else c})
    rles = mask_utils.frPyObjects(objs, h, w) if objs else []
    return rles, ids.astype(np.int64)


def rles_to_label_image(rles: Sequence[RLE], values: Sequence[int], height: int, width: int) -> np.ndarray:
    """``height×width`` int32 image painting ``rles[k]`` with ``values[k]`` in turn (later wins), 0 elsewhere."""
    canvas = np.zeros(height * width, dtype=np.int32)  # column-major, like RLE
    for value, counts in zip(values, uncompressed_counts(rles), strict=True):
        starts, ends = run_bounds(counts)
        lengths = ends - starts
        offsets = np.cumsum(lengths) - lengths  # flat pixel index of every foreground pixel, run by run
        canvas[np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))] = value
    return canvas.reshape(width, height).T
