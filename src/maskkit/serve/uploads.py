"""Uploads: the body-size limit (enforced while the body arrives) and bounded image decoding.

:class:`BodyLimit` is a pure ASGI middleware: a declared ``Content-Length`` above the limit is refused
at once, and a body of unknown length (chunked) is counted as it arrives and refused (413) as soon as it
passes the limit, before the application (or python-multipart) sees or spools any of it.

:func:`decode_upload` accepts a short list of formats only (recognised by their magic bytes, not the
declared type), checks the pixel count from the header before decoding (:func:`maskkit.data.images.open_bounded`,
Pillow's own limit an error), and refuses truncated files.
"""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np

from maskkit.data.images import open_bounded, to_rgb_uint8
from maskkit.errors import DataError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ACCEPTED_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "image/webp", "application/octet-stream")
"""Content types ``POST /v1/predict`` accepts as a raw body or as the type of an uploaded part
(``application/octet-stream``: the format is recognised from the bytes)."""

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"), (b"RIFF", "WEBP"),
)
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")


class UploadError(Exception):
    """A client error about the upload: HTTP ``status``, a short ``code`` and a message naming the problem."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_body(code: str, message: str) -> dict[str, str]:
    """The JSON body of every error response: ``{"error": code, "detail": message}``."""
    return {"error": code, "detail": message}


def media_type(content_type: str | None) -> str:
    """``image/png`` of ``image/png; charset=x`` (lower case, no parameters; empty when missing)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_content_type(content_type: str | None, what: str = "body") -> None:
    """415 unless ``content_type`` is one of :data:`ACCEPTED_TYPES` (a missing part type is accepted)."""
    kind = media_type(content_type)
    if kind and kind not in ACCEPTED_TYPES:
        raise UploadError(415, "unsupported_media_type",
                          f"{what} content type {kind!r} is not accepted (use {', '.join(ACCEPTED_TYPES)} "
                          "or multipart/form-data with a 'file' part)")


def sniff_format(data: bytes) -> str | None:
    """The accepted format whose magic bytes ``data`` starts with (None when none)."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic) and (fmt != "WEBP" or data[8:12] == b"WEBP"):
            return fmt
    return None


def decode_upload(data: bytes, max_pixels: int, name: str = "upload") -> np.ndarray:
    """``H×W×3`` uint8 RGB of uploaded image bytes; :class:`UploadError` (4xx) naming the problem otherwise."""
    if not data:
        raise UploadError(400, "empty_body", f"{name} is empty (0 bytes): send an image")
    fmt = sniff_format(data)
    if fmt is None:
        raise UploadError(415, "not_an_image",
                          f"{name} is not an image in an accepted format ({', '.join(FORMATS)}): "
                          f"it starts with {data[:8]!r}")
    try:
        with open_bounded(io.BytesIO(data), name, max_pixels) as im:
            if im.format not in FORMATS:
                raise UploadError(415, "not_an_image", f"{name} is {im.format}, not one of {', '.join(FORMATS)}")
            if im.size[0] < 1 or im.size[1] < 1:
                raise UploadError(400, "zero_size", f"{name} has no pixels ({im.size[0]}x{im.size[1]})")
            im.load()  # Pillow refuses truncated data (LOAD_TRUNCATED_IMAGES stays off)
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                return to_rgb_uint8(np.asarray(im))
            return np.asarray(im.convert("RGB"))
    except UploadError:
        raise
    except DataError as exc:
        if "above the limit" in exc.problem:  # the server's limit is --max-pixels, not the environment variable
            problem = exc.problem.split(" (raise it with")[0]
            raise UploadError(413, "too_many_pixels", f"{name}: {problem} (judged from the header; the server's "
                              f"--max-pixels is {max_pixels:,})") from None
        raise UploadError(400, "bad_image", f"{name}: {exc.problem}") from None
    except Exception as exc:  # Pillow raises many types for broken files
        text = " ".join(str(exc).split())[:200]
        code = "truncated_image" if "truncated" in text.lower() or isinstance(exc, EOFError) else "bad_image"
        raise UploadError(400, code, f"{name} cannot be decoded as {fmt} ({type(exc).__name__}: {text})") from None


class BodyLimit:
    """ASGI middleware: refuse (413, JSON) request bodies above ``max_bytes`` while they are received.

    The body is collected in memory up to the limit (never spooled to disk here) and replayed to the
    application; a ``Content-Length`` above the limit is refused before reading anything.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, paths: tuple[str, ...] = ("/",)) -> None:
        self.app, self.max_bytes, self.paths = app, int(max_bytes), paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.paths):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        declared = headers.get("content-length", "")
        if declared.strip().isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, int(declared))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._refuse(send, None)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, send: Send, declared: int | None) -> None:
        got = f"Content-Length {declared:,}" if declared is not None else "the body"
        body = json.dumps(error_body("body_too_large", f"{got} is above the limit of {self.max_bytes:,} bytes "
                                     "(start the server with a larger --max-bytes to accept it)")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
