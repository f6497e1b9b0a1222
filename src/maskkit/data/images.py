"""Reading images of any depth and channel count, and their sizes without decoding.

Every decode is bounded: the pixel count in the file header is checked against
:func:`max_image_pixels` (default ``2**28``; ``MASKKIT_MAX_IMAGE_PIXELS`` or
:func:`set_max_image_pixels` change it) before any pixel is decoded, and a file above it is a
:class:`~maskkit.errors.DataError` naming the file, its size and the limit. Pillow's own
decompression-bomb limit is kept equal to it, its warning turned into an error.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from maskkit.data.paths import check_confined
from maskkit.errors import DataError

if TYPE_CHECKING:
    from PIL.ImageFile import ImageFile

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
TIFF_SUFFIXES = (".tif", ".tiff")

DEFAULT_MAX_IMAGE_PIXELS = 2**28
"""Pixels (height x width, all planes) an image may have to be decoded whole (about 16k x 16k)."""
DEFAULT_MAX_TILED_PIXELS = 2**34
"""Pixels an image may have for tiled prediction, which reads it window by window (about 131k x 131k)."""
MAX_PIXELS_ENV = "MASKKIT_MAX_IMAGE_PIXELS"
MAX_TILED_PIXELS_ENV = "MASKKIT_MAX_TILED_PIXELS"

TILED_TIFF_HINT = (
    "; tiled prediction reads windows of tiled or striped TIFFs only: convert it to a tiled TIFF, e.g. "
    "`vips tiffsave IN OUT.tif --tile --tile-width 512 --tile-height 512 --compression deflate --bigtiff` "
    "(libvips streams it) or `python -c \"import tifffile; tifffile.imwrite('OUT.tif', tifffile.imread('IN'), "
    "tile=(512, 512), compression='zlib', bigtiff=True)\"` (needs the memory to hold it once)"
)
"""How to make a too-large image windowable, for messages."""

_limits: dict[str, int | None] = {"whole": None, "tiled": None}


class ImageTooLargeError(DataError):
    """An image whose header claims more pixels than the limit allows: refused before decoding."""

    def with_hint(self, hint: str) -> ImageTooLargeError:
        """The same error with ``hint`` appended to the problem."""
        return ImageTooLargeError(self.problem + hint, self.file, self.image, self.annotation)


def _limit(kind: str, env: str, default: int) -> int:
    cached = _limits[kind]
    if cached is not None:
        return int(cached)
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = int(float(raw))
    except ValueError:
        raise DataError(f"{env}={raw!r} is not a number of pixels") from None
    if value <= 0:
        raise DataError(f"{env}={raw!r} must be a positive number of pixels")
    return value


def max_image_pixels() -> int:
    """The pixel limit of whole-image decodes (set value, else ``MASKKIT_MAX_IMAGE_PIXELS``, else ``2**28``)."""
    return _limit("whole", MAX_PIXELS_ENV, DEFAULT_MAX_IMAGE_PIXELS)


def max_tiled_pixels() -> int:
    """The pixel limit of tiled prediction (set value, else ``MASKKIT_MAX_TILED_PIXELS``, else ``2**34``)."""
    return max(_limit("tiled", MAX_TILED_PIXELS_ENV, DEFAULT_MAX_TILED_PIXELS), max_image_pixels())


def set_max_image_pixels(whole: int | None = None, tiled: int | None = None) -> None:
    """Set the pixel limits for this process (``None`` goes back to the environment/default)."""
    _limits["whole"], _limits["tiled"] = whole, tiled


def check_pixels(height: int, width: int, file: str | Path | None, limit: int | None = None,
                 planes: int = 1, hint: str = "", env: str = MAX_PIXELS_ENV) -> None:
    """ImageTooLargeError naming ``file`` when ``height x width (x planes)`` exceeds ``limit`` (default: whole)."""
    limit = max_image_pixels() if limit is None else limit
    pixels = int(height) * int(width) * max(int(planes), 1)
    if pixels > limit:
        stack = f" x {planes} planes" if planes > 1 else ""
        raise ImageTooLargeError(
            f"image is {width}x{height}{stack} (WxH) = {pixels:,} pixels, above the limit of {limit:,} "
            f"(raise it with {env}=N if you trust the file){hint}",
            file=file,
        )


_pillow_state = {"configured": False}
"""Whether :func:`_pillow` has turned Pillow's bomb warning into an error (once per process)."""


def _pillow() -> Any:
    """PIL.Image with its decompression-bomb limit equal to ours and its warning an error."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_image_pixels()
    if not _pillow_state["configured"]:
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
        _pillow_state["configured"] = True
    return Image


def _pil_open(source: str | Path | io.BytesIO, file: str | Path | None) -> ImageFile:
    """``Image.open`` (lazy: header only) with Pillow's bomb check reported as our pixel-limit error."""
    Image = _pillow()
    try:
        im: ImageFile = Image.open(source)
        return im
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow names the pixel count, not the size
        pixels = f"{int(found.group(1)):,} pixels" if found else "more pixels"
        raise ImageTooLargeError(f"image header claims {pixels}, above the limit of {max_image_pixels():,} "
                                 f"(raise it with {MAX_PIXELS_ENV}=N if you trust the file)", file=file) from None


def _tiff_dims(tif: Any) -> tuple[int, int, int]:
    """``(height, width, planes)`` of a TIFF's first series (planes: every non-channel axis but Y, X)."""
    series = tif.series[0]
    shape, axes = tuple(int(v) for v in series.shape), series.axes
    h, w = shape[axes.index("Y")], shape[axes.index("X")]
    planes = math.prod(n for n, a in zip(shape, axes, strict=True) if a not in "YXSC")
    return h, w, planes


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image to ``H×W×C`` (C >= 1), keeping its dtype (uint8, uint16, float32).

    Colour images come back as RGB(A); TIFFs are read with tifffile (multi-channel, 16-bit). The
    header is checked against ``max_pixels`` (default :func:`max_image_pixels`) before decoding.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                h, w, planes = _tiff_dims(tif)
                check_pixels(h, w, path, max_pixels, planes)
                arr = tif.asarray()
            if arr.ndim == 3 and arr.shape[0] < min(arr.shape[1:]) and arr.shape[0] <= 4 < arr.shape[2]:
                arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) -> (H, W, C)
        else:
            import cv2

            h, w = image_size(path)
            check_pixels(h, w, path, max_pixels)
            decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if decoded is None:
                raise OSError("not a readable image")
            arr = decoded
            if arr.ndim == 3 and arr.shape[2] == 3:
                arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
            elif arr.ndim == 3 and arr.shape[2] == 4:
                arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read image ({exc})", file=path) from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def decode_image_bytes(data: bytes, source: str | Path | None = None) -> np.ndarray:
    """Decode encoded image bytes (e.g. LabelMe ``imageData``) to ``H×W×C`` RGB (size checked first)."""
    import cv2

    try:
        with _pil_open(io.BytesIO(data), source) as im:
            w, h = im.size
    except (OSError, ValueError) as exc:
        raise DataError(f"embedded image data cannot be decoded ({exc})", file=source) from None
    check_pixels(h, w, source)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DataError("embedded image data cannot be decoded", file=source)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def open_bounded(
    path: str | Path | io.BytesIO, file: str | Path | None = None, max_pixels: int | None = None
) -> ImageFile:
    """``PIL.Image.open`` whose size has been checked against the pixel limit (decode it after this)."""
    file = file if file is not None else (path if not isinstance(path, io.BytesIO) else None)
    im = _pil_open(path, file)
    try:
        check_pixels(im.size[1], im.size[0], file, max_pixels)
    except DataError:
        im.close()
        raise
    return im


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` from the file header, without decoding the pixels.

    Pillow refuses headers beyond the pixel limit (a DataError); TIFF headers of any size are read.
    """
    path = Path(path)
    check_confined(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                h, w, _ = _tiff_dims(tif)
                return h, w
        with _pil_open(path, path) as im:
            w, h = im.size
            return int(h), int(w)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read image header ({exc})", file=path) from None


def image_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a decodable image within the pixel limit (``None`` when it is).

    Reads the header and runs the format's integrity check (Pillow ``verify``: PNG chunk CRCs,
    structure) without decoding the pixels; TIFFs are checked through tifffile's header parse.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                h, w, planes = _tiff_dims(tif)
            check_pixels(h, w, path, planes=planes)
            return None
        with open_bounded(path) as im:
            im.verify()
        return None
    except DataError as exc:
        return exc.problem
    except Exception as exc:  # Pillow/tifffile raise many types for non-images
        return f"not a decodable image ({type(exc).__name__}: {exc})"


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """A displayable ``H×W×3`` uint8 version of any image (16-bit stretched, grey repeated)."""
    img = image
    if img.ndim == 2:
        img = img[:, :, None]
    if img.dtype != np.uint8:
        f = img.astype(np.float32)
        lo, hi = np.percentile(f, 0.5), np.percentile(f, 99.5)
        img = np.clip((f - lo) / np.maximum(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])
