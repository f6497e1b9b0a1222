"""Data layer: annotation formats, validation, statistics, synthetic data and the torch dataset."""

from maskkit.data.annotations import AnnotationSet, Category, ImageRecord, new_instances
from maskkit.data.formats import ConversionReport, detect_format, read_annotations, write_annotations

__all__ = [
    "AnnotationSet",
    "Category",
    "ConversionReport",
    "ImageRecord",
    "detect_format",
    "new_instances",
    "read_annotations",
    "write_annotations",
]
