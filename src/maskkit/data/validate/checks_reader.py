"""Checks reporting what a reader had to ignore or guess (``ImageRecord.problems``, dataset problems).

A reader keeps such data readable (so the rest can be checked) and notes the problem under the
name of the check that reports it.
"""

from __future__ import annotations

from collections.abc import Iterator

from maskkit.data.validate.context import DatasetContext, ImageContext
from maskkit.data.validate.registry import Hit, Severity, check


def _record_problem(code: str, name: str, severity: Severity, description: str) -> None:
    """Register an image check yielding the reader's note ``record.problems[name]``."""

    def func(img: ImageContext) -> Iterator[str]:
        message = img.record.problems.get(name)
        if message:
            yield message

    func.__name__ = name.replace("-", "_")
    check(code, name, severity, "image", description)(func)


_record_problem("E109", "image-size-unknown", "error",
                "A COCO image entry without width/height whose image file cannot tell them (missing or unreadable).")
_record_problem("W110", "invalid-embedded-image", "warning",
                "LabelMe imageData that is not an image; the file named by imagePath is used instead.")
_record_problem("E111", "missing-class-png", "error",
                "A VOC image without its SegmentationClass PNG: classes come from the XML only, instances "
                "without an XML object get no class.")
_record_problem("E216", "unknown-shape-type", "error",
                "A LabelMe shape whose shape_type is unknown (a typo?): it is not an object and is ignored.")


@check("W403", "dataset-yaml-without-names", "warning", "dataset",
       "The dataset YAML has no class names: they come from the annotations (numbers for YOLO sources).")
def dataset_yaml_without_names(ds: DatasetContext) -> Iterator[Hit]:
    problem = ds.problems.get("dataset-yaml-without-names")
    if problem:
        first = ds.splits[0] if ds.splits else None
        yield Hit(problem[0], split=first.name if first else None, file=problem[1])

