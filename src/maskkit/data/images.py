"""Reading images of any depth and channel count, and their sizes without decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskkit.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image to ``H×W×C`` (C >= 1), keeping its dtype (uint8, uint16, float32).

    Colour images come back as RGB(A); TIFFs are read with tifffile (multi-channel, 16-bit).
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
            if arr.ndim == 3 and arr.shape[0] < min(arr.shape[1:]) and arr.shape[0] <= 4 < arr.shape[2]:
                arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) -> (H, W, C)
        else:
            import cv2

            arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise OSError("not a readable image")
            if arr.ndim == 3 and arr.shape[2] == 3:
                arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
            elif arr.ndim == 3 and arr.shape[2] == 4:
                arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image ({exc})", file=path) from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def decode_image_bytes(data: bytes, source: str | Path | None = None) -> np.ndarray:
    """Decode encoded image bytes (e.g. LabelMe ``imageData``) to ``H×W×C`` RGB."""
    import cv2

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


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` from the file header, without decoding the pixels."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
                axes = tif.series[0].axes
                return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            return int(h), int(w)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read image header ({exc})", file=path) from None


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """A displayable ``H×W×3`` uint8 version of any image (16-bit stretched, grey repeated)."""
    img = image
    if img.ndim == 2:
        img = img[:, :, None]
    if img.dtype != np.uint8:
        f = img.astype(np.float32)
        lo, hi = np.percentile(f, 0.5), np.percentile(f, 99.5)
        img = np.clip((f - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])
