"""Random access to windows of an image file, decoding only what a window touches where the file allows it.

:func:`open_image_windows` returns a reader (:class:`ImageWindows`) for an image file:

* uncompressed TIFF (and ``.npy``): :class:`RawWindows`, a short-lived memory map of the window's rows;
* tiled or stripped compressed TIFF: :class:`TiffSegmentWindows`, decoding only the TIFF tiles/strips
  the window touches (an LRU cache keeps one band of them, so neighbouring windows do not decode
  twice; a TIFF stored as one compressed strip can only be decoded whole, once);
* other formats (PNG, JPEG, BMP, WebP) cannot be decoded partially: :class:`ArrayWindows` over the
  image read once, in its own dtype (a 16k x 16k RGB PNG holds 768 MiB); convert such images to
  tiled TIFF to stay bounded.

Used by tiled prediction (:mod:`maskkit.inference.tiling`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from maskkit.data.images import (
    MAX_TILED_PIXELS_ENV,
    TILED_TIFF_HINT,
    ImageTooLargeError,
    check_pixels,
    max_image_pixels,
    max_tiled_pixels,
    read_image,
)
from maskkit.errors import DataError

__all__ = ["ArrayWindows", "ImageWindows", "RawWindows", "TiffSegmentWindows", "open_image_windows"]


class ImageWindows:
    """Random access to windows of an image: ``read(y0, y1, x0, x1) -> (h, w, C)`` array in the image's dtype."""

    height: int
    width: int
    channels: int
    dtype: np.dtype
    source: str = "array"

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release files and caches."""

    def __enter__(self) -> ImageWindows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.height}x{self.width}x{self.channels} {self.dtype}, {self.source})"


class ArrayWindows(ImageWindows):
    """Windows of an in-memory (or user-provided ``np.memmap``) ``H×W`` or ``H×W×C`` array."""

    def __init__(self, array: np.ndarray, source: str = "array") -> None:
        arr = np.asarray(array) if not isinstance(array, np.memmap) else array
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise DataError(f"expected an H×W or H×W×C image, got shape {arr.shape}", file=source)
        self.array = arr
        self.height, self.width, self.channels = (int(v) for v in arr.shape)
        self.dtype = arr.dtype
        self.source = source

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.ascontiguousarray(self.array[y0:y1, x0:x1])


class RawWindows(ImageWindows):
    """Windows of an uncompressed array stored contiguously in a file (TIFF, ``.npy``).

    Each read maps the file, copies the window and unmaps it, so the pages it touched leave the
    process's resident memory (a long-lived memory map would keep every page read so far resident).
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype, channels_first: bool) -> None:
        self.path, self.offset, self.shape, self.file_dtype = path, int(offset), tuple(shape), np.dtype(dtype)
        self.channels_first = channels_first
        self.height, self.width, self.channels = _hwc(self.shape, channels_first)
        self.dtype = self.file_dtype.newbyteorder("=")
        self.source = f"{path} (memory-mapped windows)"

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        m = np.memmap(self.path, dtype=self.file_dtype, mode="r", offset=self.offset, shape=self.shape)
        if len(self.shape) == 2:
            out = np.array(m[y0:y1, x0:x1, None], dtype=self.dtype)
        elif self.channels_first:
            out = np.ascontiguousarray(np.moveaxis(np.array(m[:, y0:y1, x0:x1], dtype=self.dtype), 0, -1))
        else:
            out = np.array(m[y0:y1, x0:x1], dtype=self.dtype)
        del m  # the last reference: unmapped now, so the touched pages leave the resident set
        return out


class TiffSegmentWindows(ImageWindows):
    """Windows of a tiled or stripped (possibly compressed) TIFF, decoding only the segments they touch."""

    def __init__(self, path: Path, tif: Any, pages: list[Any], cache_bytes: int | None = None) -> None:
        self.path, self.tif, self.pages = path, tif, pages
        key = pages[0].keyframe
        self.sep, _, length, width, self.contig = (int(v) for v in key.shaped)
        self.height, self.width = length, width
        self.channels = len(pages) * self.sep * self.contig
        self.dtype = np.dtype(key.dtype).newbyteorder("=")
        self.seg_h: int
        self.seg_w: int
        self.seg_h, self.seg_w = (key.tilelength, key.tilewidth) if key.is_tiled else (key.rowsperstrip, width)
        self.seg_h = min(self.seg_h, length) or length
        self.rows, self.cols = math.ceil(length / self.seg_h), math.ceil(width / self.seg_w)
        if any(len(p.dataoffsets) != self.sep * self.rows * self.cols for p in pages):
            raise ValueError("unexpected TIFF segment layout")
        self.decode_args: dict[str, Any] = {"_fullsize": bool(key.is_tiled)}
        if key.compression in {6, 7, 34892, 33007}:  # JPEG
            self.decode_args.update(jpegtables=pages[0].jpegtables, jpegheader=key.jpegheader)
        band = (self.seg_h + 1280) * width * self.channels * self.dtype.itemsize
        self.cache_bytes = cache_bytes if cache_bytes is not None else int(min(max(1.25 * band, 32 << 20), 1 << 30))
        self._cache: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self._cached = 0
        kind = "tiles" if key.is_tiled else "strips"
        self.source = f"{path} ({kind} of {self.seg_h}x{self.seg_w}, decoded per window)"

    def _segments(self, page_i: int, indices: list[int]) -> None:
        page = self.pages[page_i]
        missing = [i for i in indices if (page_i, i) not in self._cache]
        if missing:
            fh = self.tif.filehandle
            offsets = [page.dataoffsets[i] for i in missing]
            counts = [page.databytecounts[i] for i in missing]
            decode = page.keyframe.decode
            for data, index in fh.read_segments(offsets, counts, indices=missing, sort=True, flat=True):
                seg = decode(data, index, **self.decode_args)[0]
                self._cache[(page_i, index)] = seg
                self._cached += seg.nbytes if seg is not None else 0
        for i in indices:
            self._cache.move_to_end((page_i, i))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        out = np.zeros((y1 - y0, x1 - x0, self.channels), dtype=self.dtype)
        r0, r1 = y0 // self.seg_h, (y1 - 1) // self.seg_h
        c0, c1 = x0 // self.seg_w, (x1 - 1) // self.seg_w
        per_sep = self.rows * self.cols
        for p in range(len(self.pages)):
            wanted = [s * per_sep + r * self.cols + c for s in range(self.sep)
                      for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]
            self._segments(p, wanted)
            for idx in wanted:
                seg = self._cache[(p, idx)]
                if seg is None:
                    continue  # empty segment: zeros
                s, rc = divmod(idx, per_sep)
                r, c = divmod(rc, self.cols)
                sy, sx = r * self.seg_h, c * self.seg_w
                ya, yb = max(y0, sy), min(y1, sy + seg.shape[1], self.height)
                xa, xb = max(x0, sx), min(x1, sx + seg.shape[2], self.width)
                ch = (p * self.sep + s) * self.contig
                out[ya - y0:yb - y0, xa - x0:xb - x0, ch:ch + self.contig] = seg[0, ya - sy:yb - sy, xa - sx:xb - sx]
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, seg = self._cache.popitem(last=False)
            self._cached -= seg.nbytes if seg is not None else 0
        return out

    def close(self) -> None:
        self._cache.clear()
        self._cached = 0
        self.tif.close()


def _hwc(shape: tuple[int, ...], channels_first: bool) -> tuple[int, int, int]:
    if len(shape) == 2:
        return shape[0], shape[1], 1
    return (shape[1], shape[2], shape[0]) if channels_first else (shape[0], shape[1], shape[2])


def _open_tiff(path: Path) -> ImageWindows:
    import tifffile  # deferred: a slow import, needed for TIFFs only

    try:
        tif = tifffile.TiffFile(path)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise DataError(f"cannot read TIFF ({exc})", file=path) from None
    try:
        series = tif.series[0]
        shape, axes = tuple(int(v) for v in series.shape), series.axes
        if len(shape) == 2:
            channels_first = False
        elif len(shape) == 3 and axes[1:] == "YX" and shape[0] <= 16:
            channels_first = True
        elif len(shape) == 3 and axes[:2] == "YX":
            channels_first = False
        else:
            raise DataError(f"not a single 2-D image (TIFF axes {axes}, shape {shape}); tiling needs one plane",
                            file=path)
        height, width, _ = _hwc(shape, channels_first)
        check_pixels(height, width, path, max_tiled_pixels(), env=MAX_TILED_PIXELS_ENV)
        offset = series.dataoffset
        reader: ImageWindows | None = None
        if offset is not None:
            dtype = np.dtype(tif.byteorder + series.dtype.char) if series.dtype.itemsize > 1 else series.dtype
            tif.close()
            reader = RawWindows(path, offset, shape, dtype, channels_first)
        else:
            pages = [p for p in series.pages if p is not None]
            key = pages[0].keyframe
            if key is not None and (key.is_tiled or key.rowsperstrip):  # no keyframe: read whole below
                reader = TiffSegmentWindows(path, tif, pages)
                if (reader.height, reader.width, reader.channels) != _hwc(shape, channels_first):
                    reader = None
                elif reader.seg_h * reader.seg_w > max_image_pixels():  # one strip holding (nearly) everything
                    kind = "tile" if key.is_tiled else "strip"
                    check_pixels(reader.seg_h, reader.seg_w, path, hint=f" in one compressed {kind}: any window "
                                 f"decodes all of it{TILED_TIFF_HINT}")
    except DataError:
        tif.close()
        raise
    except (ValueError, AttributeError, IndexError, KeyError, NotImplementedError):
        reader = None  # a layout the segment reader does not know: read it whole below
    if reader is not None:
        try:
            reader.read(0, 1, 0, 1)  # fail now, with the file named, if a codec is missing
        except Exception as exc:
            reader.close()
            raise DataError(f"cannot decode TIFF ({type(exc).__name__}: {exc})", file=path) from None
        return reader
    tif.close()
    return _read_whole(path, "TIFF layout not windowable")


def _read_whole(path: Path, why: str) -> ImageWindows:
    """The whole image as windows (within the whole-image pixel limit, else refused with how to convert it)."""
    try:
        return ArrayWindows(read_image(path), source=f"{path} (read whole: {why})")
    except ImageTooLargeError as exc:
        raise exc.with_hint(f" ({why}){TILED_TIFF_HINT}") from None


def _open_npy(path: Path) -> ImageWindows:
    try:
        m = np.load(path, mmap_mode="r")  # header only: the mapping is dropped right away
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read .npy file ({exc})", file=path) from None
    if not isinstance(m, np.memmap):
        raise DataError("not a plain .npy array", file=path)
    shape, dtype, offset, fortran = m.shape, m.dtype, m.offset, not m.flags.c_contiguous
    del m
    if fortran or len(shape) not in (2, 3) or dtype.hasobject:
        raise DataError(f"expected a C-ordered H×W or H×W×C array, got shape {shape}", file=path)
    check_pixels(shape[0], shape[1], path, max_tiled_pixels(), env=MAX_TILED_PIXELS_ENV)
    return RawWindows(path, offset, shape, dtype, channels_first=False)


def open_image_windows(path: str | Path) -> ImageWindows:
    """A windowed reader for an image file (see the module docstring for what is read partially)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("image file not found", file=path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _open_tiff(path)
    if suffix == ".npy":
        return _open_npy(path)
    return _read_whole(path, f"no partial decoding for {suffix}")
