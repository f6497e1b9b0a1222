"""Reading what the image checks need from each image file, once.

The header gives the size. With hashing on, the file's bytes are read once for their SHA-1 and
truncation markers and decoded completely (JPEGs at a reduced scale, draft mode), which finds
files cut off midway; the decoded image also gives the perceptual hash when near-duplicates are
looked for.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

from maskkit.data.annotations import AnnotationSet, ImageRecord
from maskkit.data.images import image_size, open_bounded, read_image, to_rgb_uint8
from maskkit.data.paths import is_inside
from maskkit.data.validate.context import ImageFacts
from maskkit.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

PHASH_DECODE_SIZE = 128
"""Images are decoded at (at least) this size for the perceptual hash (which works at 32x32)."""


def read_facts(aset: AnnotationSet, record: ImageRecord, hashes: bool, phash: bool) -> ImageFacts:
    """Facts about one record's image; never raises for bad files (problems go into the facts)."""
    if record.data is not None:
        facts = ImageFacts(path=None)
        data = bytes(record.data)
        blob: bytes | None = data
        facts.size, facts.error = _size_from_bytes(data)
    else:
        path = aset.image_path(record)
        facts = ImageFacts(path=path)
        if aset.root is not None and not is_inside(path, aset.root):
            facts.outside_root = True  # reported by image-outside-root; nothing outside the root is read
            return facts
        if not path.is_file():
            facts.exists = False
            return facts
        try:
            facts.size = image_size(path)
        except DataError as exc:
            facts.error = exc.problem
        blob = None
        if hashes:
            try:
                blob = path.read_bytes()
            except OSError as exc:
                facts.error = facts.error or f"cannot read file ({exc.strerror or exc})"
    if blob is None or not hashes:
        return facts
    facts.sha1 = hashlib.sha1(blob).hexdigest()
    facts.truncated = truncation(blob)
    if facts.error is None:
        try:
            im = decode_pixels(blob, facts.path)
            if phash:
                facts.phash = perceptual_hash(im)
        except Exception as exc:  # any decoder failure is a finding (with its cause), not a crash
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if "truncated" in message.lower() or isinstance(exc, EOFError):
                facts.truncated = facts.truncated or f"pixels cannot be decoded ({message})"
            else:
                facts.error = f"pixels cannot be decoded ({message})"
    return facts


def _size_from_bytes(blob: bytes) -> tuple[tuple[int, int] | None, str | None]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as im:
            return (int(im.size[1]), int(im.size[0])), None
    except Exception as exc:  # PIL raises many types for garbage bytes
        return None, f"embedded image data cannot be read ({exc})"


def truncation(blob: bytes) -> str | None:
    """Why the bytes look cut off (JPEG without end-of-image marker, PNG without IEND), or ``None``."""
    if blob[:3] == b"\xff\xd8\xff" and b"\xff\xd9" not in blob[-4096:]:
        return f"JPEG has no end-of-image marker ({len(blob)} bytes)"
    if blob[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in blob[-64:]:
        return f"PNG has no IEND chunk ({len(blob)} bytes)"
    return None


def decode_pixels(blob: bytes, path: Path | None = None) -> Image.Image:
    """Decode every pixel of an image (JPEGs at 1/2..1/8 scale: still the whole stream, a fraction of
    the cost); raises on a cut-off or corrupt file. Returns the (downsized) decoded image."""
    from PIL import Image

    if path is not None and path.suffix.lower() in (".tif", ".tiff"):
        return Image.fromarray(to_rgb_uint8(read_image(path)))
    im = open_bounded(io.BytesIO(blob), path)
    im.draft("RGB" if im.mode in ("RGB", "YCbCr", "CMYK") else im.mode, (PHASH_DECODE_SIZE, PHASH_DECODE_SIZE))
    im.load()
    return im


def perceptual_hash(im: Image.Image) -> int:
    """64-bit DCT perceptual hash (``imagehash.phash``) of a downsized greyscale version of the image."""
    import imagehash

    im = im.convert("L")
    im.thumbnail((PHASH_DECODE_SIZE, PHASH_DECODE_SIZE))
    return int(str(imagehash.phash(im)), 16)
