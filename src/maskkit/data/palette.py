"""The Pascal VOC colour palette and palette-PNG reading/writing for index images."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np

from maskkit.data.images import open_bounded
from maskkit.errors import DataError
from maskkit.fileio import atomic_write_bytes


@lru_cache(maxsize=1)
def voc_palette() -> np.ndarray:
    """The standard 256-colour VOC palette as a ``(256, 3)`` uint8 array (index 255 is the void colour)."""
    idx = np.arange(256)
    pal = np.zeros((256, 3), dtype=np.int64)
    c = idx.copy()
    for shift in range(7, -1, -1):  # VOC's bit-interleaving: bits of the index spread over R, G, B
        for ch in range(3):
            pal[:, ch] |= ((c >> ch) & 1) << shift
        c >>= 3
    return pal.astype(np.uint8)


def write_index_png(path: str | Path, index: np.ndarray) -> None:
    """Write a ``H×W`` uint8 index image as a VOC-palette PNG (PIL ``P`` mode), atomically."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(index, dtype=np.uint8), mode="P")
    im.putpalette(voc_palette().reshape(-1).tolist())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def read_index_png(path: str | Path) -> np.ndarray:
    """Read an index PNG as ``H×W`` uint8 indices.

    Palette (``P``) and grey images give their values; RGB images drawn with the VOC palette are
    mapped back to indices (a colour outside the palette is a :class:`DataError`).
    """
    path = Path(path)
    try:
        with open_bounded(path) as im:
            mode = im.mode
            if mode in ("P", "L"):
                return np.array(im, dtype=np.uint8)
            if mode in ("I", "I;16"):
                arr = np.array(im)
                if arr.max(initial=0) > 255:
                    raise DataError("index image has values above 255", file=path)
                return arr.astype(np.uint8)
            rgb = np.array(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read index PNG ({exc})", file=path) from None
    return rgb_to_index(rgb, path)


def rgb_to_index(rgb: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """Map a ``H×W×3`` image drawn with the VOC palette back to its indices."""
    pal = voc_palette().astype(np.int64)
    keys = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = {int(k): i for i, k in reversed(list(enumerate(keys)))}  # first index wins on duplicates
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    colours, inverse = np.unique(packed.reshape(-1), return_inverse=True)
    mapped = np.empty(len(colours), dtype=np.uint8)
    for j, colour in enumerate(colours.tolist()):
        if colour not in lut:
            r, g, b = colour >> 16, (colour >> 8) & 255, colour & 255
            raise DataError(f"colour ({r}, {g}, {b}) is not in the VOC palette", file=source)
        mapped[j] = lut[colour]
    return mapped[inverse].reshape(packed.shape)
