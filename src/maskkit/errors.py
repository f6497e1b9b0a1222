"""Errors that reach users: each names the file, the image, the annotation and the problem."""

from __future__ import annotations

from pathlib import Path


class MaskkitError(Exception):
    """Base class of errors shown to users without a traceback."""

    exit_code = 2


class DataError(MaskkitError):
    """Unusable input data: names the file and, where known, the image and the annotation."""

    def __init__(
        self,
        problem: str,
        file: str | Path | None = None,
        image: str | int | None = None,
        annotation: str | int | None = None,
    ) -> None:
        self.problem = problem
        self.file = str(file) if file is not None else None
        self.image = image
        self.annotation = annotation
        super().__init__(self.describe())

    def describe(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.image is not None:
            where.append(f"image {self.image}")
        if self.annotation is not None:
            where.append(f"annotation {self.annotation}")
        return (": ".join([", ".join(where), self.problem])) if where else self.problem


class ConfigError(MaskkitError):
    """An invalid configuration or command-line combination."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line.

    An error raised inside a DataLoader worker is re-raised by torch with the worker's traceback
    in its message (``Caught DataError in DataLoader worker process 0. Original Traceback ...``):
    only the original message (its last line) is kept.
    """
    text = str(exc)
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if last.startswith(f"{type(exc).__module__}.") else last
    return " ".join(text.split())
