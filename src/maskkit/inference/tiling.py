"""Tiled prediction for images larger than the model's input: windows in, stitched instances out.

* :func:`iter_tiles` – overlapping tile windows covering an image, each with the ``core`` it owns.
* windows of the image are read through :mod:`maskkit.data.windows` (:func:`open_image_windows`), which
  decodes only what a window touches where the file allows it.
* :func:`predict_tiled` – runs any ``predictor.predict(tile_array) -> Instances`` over the tiles and
  stitches objects cut by seams by mask overlap (:mod:`maskkit.inference.stitching` documents the
  rules). Peak memory grows with the tile size and the output, not with the image.
* :func:`write_label_image` – an instance-label TIFF (tiled, compressed) written band by band.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from maskkit.data.windows import ArrayWindows, ImageWindows, open_image_windows
from maskkit.errors import ConfigError, DataError
from maskkit.inference.stitching import Stitcher
from maskkit.structures import Instances
from maskkit.structures.rle import counts_to_crop, uncompressed_counts


class InstancePredictor(Protocol):
    """Anything with ``predict(H×W×C array) -> Instances`` (masks in the array's coordinates)."""

    def predict(self, image: np.ndarray) -> Instances: ...


# -- tiles -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tile:
    """One window ``[y0, y1) × [x0, x1)`` of the tile grid; ``core`` ``(y0, x0, y1, x1)`` is the part it owns."""

    index: int
    row: int
    col: int
    y0: int
    x0: int
    y1: int
    x1: int
    core: tuple[int, int, int, int]


def _axis(size: int, tile: int, overlap: int) -> tuple[list[int], list[int]]:
    """Tile starts along one axis (evenly spread, overlaps >= ``overlap``) and the cuts between cores."""
    if size <= tile:
        return [0], [0, size]
    n = math.ceil((size - tile) / (tile - overlap)) + 1
    starts = [round(i * (size - tile) / (n - 1)) for i in range(n)]
    cuts = [0, *[(starts[i + 1] + starts[i] + tile) // 2 for i in range(n - 1)], size]
    return starts, cuts


def iter_tiles(height: int, width: int, tile: int = 1024, overlap: int = 128) -> Iterator[Tile]:
    """Row-major tiles of at most ``tile × tile`` covering the image, neighbours overlapping by >= ``overlap``.

    Tiles have the full size wherever the image allows (the last ones are spread back, not cut);
    each tile's core extends to the middle of its overlaps, so the cores partition the image.
    Stitching needs overlapping tiles: with ``overlap=0`` objects cut by a seam cannot be matched.
    """
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ConfigError(f"tiling needs tile >= 1 and 0 <= overlap < tile (got tile={tile}, overlap={overlap})")
    if height < 1 or width < 1:
        raise DataError(f"cannot tile an empty image ({height}x{width})")
    ys, ycuts = _axis(height, tile, overlap)
    xs, xcuts = _axis(width, tile, overlap)
    for r, y in enumerate(ys):
        for c, x in enumerate(xs):
            core = (ycuts[r], xcuts[c], ycuts[r + 1], xcuts[c + 1])
            yield Tile(r * len(xs) + c, r, c, y, x, min(y + tile, height), min(x + tile, width), core)


# -- prediction --------------------------------------------------------------------------------------------
def predict_tiled(
    predictor: InstancePredictor,
    image: str | Path | np.ndarray | ImageWindows,
    tile: int = 1024,
    overlap: int = 128,
    *,
    match_threshold: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
    stats: dict[str, Any] | None = None,
) -> Instances:
    """Predict instances on an image of any size, tile by tile, and stitch them by mask overlap.

    ``predictor.predict(array)`` gets each ``tile × tile`` window (``H×W×C``, the image's dtype) and
    returns ``Instances`` with masks in the window's coordinates. The result is in full-image
    coordinates with RLE masks, sorted by score. Objects of any size are stitched; ``overlap`` should
    be at least four times the width of the strip along tile borders where the model is unreliable
    (matching looks at the middle half of each overlap, and each output pixel comes from the tile
    whose core holds it, half an overlap away from that tile's inner borders). ``progress(done,
    total)`` is called after each tile; ``stats`` (a dict) receives counts and the seconds spent
    reading, in the predictor and stitching.
    """
    windows: ImageWindows
    if isinstance(image, ImageWindows):
        windows = image
    elif isinstance(image, np.ndarray):
        windows = ArrayWindows(image)
    else:
        windows = open_image_windows(image)
    owned = windows is not image
    times = {"time_read": 0.0, "time_model": 0.0}

    def predicted(tiles: list[Tile]) -> Iterator[tuple[Tile, Instances]]:
        for k, t in enumerate(tiles):
            t0 = time.perf_counter()
            arr = windows.read(t.y0, t.y1, t.x0, t.x1)
            t1 = time.perf_counter()
            inst = predictor.predict(arr)
            times["time_read"] += t1 - t0
            times["time_model"] += time.perf_counter() - t1
            yield t, inst
            if progress is not None:
                progress(k + 1, len(tiles))

    try:
        t0 = time.perf_counter()
        tiles = list(iter_tiles(windows.height, windows.width, tile, overlap))
        result, counts = stitch_tiles(windows.height, windows.width, tiles, predicted(tiles), overlap, match_threshold)
        if stats is not None:
            spent = time.perf_counter() - t0
            stats.update(counts, **times, time_stitch=spent - times["time_read"] - times["time_model"],
                         tiles=len(tiles), objects=len(result), source=windows.source)
        return result
    finally:
        if owned:
            windows.close()


def stitch_tiles(height: int, width: int, tiles: list[Tile], predictions: Iterable[tuple[Tile, Instances]],
                 overlap: int, match_threshold: float = 0.5) -> tuple[Instances, dict[str, int]]:
    """Stitch per-tile predictions (``(tile, Instances in the tile's coordinates)``, consumed one by one) of the
    ``tiles`` of one ``height × width`` image into full-image instances, as :func:`predict_tiled` does.

    Returns the instances and the stitcher's counts. One tile: its prediction is the answer as it is.
    Feed the tiles in a fixed order (e.g. their index order) for bit-identical results run after run.
    """
    stitcher = Stitcher(height, width, tiles, match_threshold, margin=overlap // 4)
    single = None
    for t, inst in predictions:
        if len(tiles) == 1:
            single = inst  # one tile: the predictor's output is already the answer
        else:
            stitcher.add(t, inst)
    return (single if single is not None else stitcher.result()), dict(stitcher.stats)


# -- writing ----------------------------------------------------------------------------------------------------
def write_label_image(instances: Instances, path: str | Path, tile: int = 256) -> Path:
    """Write ``instances`` as an instance-label TIFF (0 background, ``i + 1`` = instance ``i``), atomically.

    Tiled, zlib-compressed BigTIFF, built one band of ``tile`` rows at a time from the RLEs: memory
    grows with the band and the number of objects crossing it, not with the image. Where masks
    overlap the higher-scoring instance wins. ``uint16`` up to 65535 instances, else ``uint32``.
    """
    import tifffile
    from pycocotools import mask as mask_utils

    path = Path(path)
    h, w = instances.image_size
    n = len(instances)
    dtype = np.uint16 if n < 65535 else np.uint32
    masks = instances.masks
    scores = np.asarray(instances.get("scores", np.zeros(n)), dtype=np.float64)
    boxes = mask_utils.toBbox(masks.to_rles()).reshape(-1, 4).astype(np.int64) if n else np.zeros((0, 4), np.int64)
    order = np.lexsort((-np.arange(n), scores)) if n else np.zeros(0, np.int64)  # paint low scores first

    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)

    def tiles() -> Iterator[np.ndarray]:
        counts: dict[int, Any] = {}  # uncompressed runs of the objects crossing the current band
        for by in range(0, h, tile):
            bh_band = min(tile, h - by)
            band = np.zeros((bh_band, w), dtype=dtype)
            sel = np.nonzero((boxes[:, 2] > 0) & (boxes[:, 1] < by + bh_band) & (boxes[:, 1] + boxes[:, 3] > by))[0]
            sel = sel[np.argsort(rank[sel])]
            counts = {int(i): counts.get(int(i)) for i in sel}
            for i in sel.tolist():
                x, y, bw, bh = (int(v) for v in boxes[i])
                if counts[i] is None:
                    counts[i] = uncompressed_counts([masks.rle(i)])[0]
                ya, yb = max(y, by), min(y + bh, by + bh_band)
                crop = counts_to_crop(counts[i], h, (ya, x, yb, x + bw))
                band[ya - by:yb - by, x:x + bw][crop] = i + 1
            for bx in range(0, w, tile):
                yield band[:, bx:bx + tile]

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, tiles(), shape=(h, w), dtype=dtype, tile=(tile, tile), compression="zlib",
                         bigtiff=True, photometric="minisblack", metadata=None)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
