"""Annotation formats: read any of them into an :class:`AnnotationSet`, write it back losslessly."""

from maskkit.data.formats.base import (
    ConversionReport,
    FormatSpec,
    detect_format,
    formats,
    read_annotations,
    register_format,
    write_annotations,
)

__all__ = [
    "ConversionReport",
    "FormatSpec",
    "detect_format",
    "formats",
    "read_annotations",
    "register_format",
    "write_annotations",
]
