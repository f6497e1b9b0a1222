"""Checks on image records and their files."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from maskkit.data.validate.context import ImageContext, SplitContext, repeats
from maskkit.data.validate.registry import Hit, check


@check("E101", "missing-image", "error", "image", "The image file does not exist (and no image data is embedded).")
def missing_image(img: ImageContext) -> Iterator[Hit]:
    facts = img.facts
    if facts is not None and not facts.exists:
        yield Hit("image file not found", file=img.image_file)


@check("E102", "unreadable-image", "error", "image", "The image file exists but its header or pixels cannot be read.")
def unreadable_image(img: ImageContext) -> Iterator[Hit]:
    facts = img.facts
    if facts is not None and facts.error:
        yield Hit(facts.error, file=img.image_file)


@check("E103", "truncated-image", "error", "image",
       "The image file is cut off (its pixels do not decode to the end, or no end marker): training fails "
       "on it or sees grey. Found by a full decode (skipped with --no-hash).")
def truncated_image(img: ImageContext) -> Iterator[Hit]:
    facts = img.facts
    if facts is not None and facts.truncated and not facts.error:
        yield Hit(facts.truncated, file=img.image_file)


@check("E104", "image-size-mismatch", "error", "image",
       "The width/height in the annotations differ from the image's real size, or are not positive.")
def image_size_mismatch(img: ImageContext) -> Iterator[Hit]:
    facts, rec = img.facts, img.record
    if "image-size-unknown" in rec.problems:
        return  # reported by its own check
    if rec.height <= 0 or rec.width <= 0:
        yield Hit(f"annotation gives a size of {rec.width}x{rec.height} (WxH), which is not positive")
        return
    if facts is None or facts.size is None:
        return
    h, w = facts.size
    if (h, w) != (rec.height, rec.width):
        swapped = " (width and height swapped: EXIF rotation?)" if (w, h) == (rec.height, rec.width) else ""
        yield Hit(
            f"annotation says {rec.width}x{rec.height} (WxH), the image file is {w}x{h}{swapped}",
            file=img.image_file,
        )


@check("I105", "empty-image", "info", "image", "An image without any annotated instance (pure background).")
def empty_image(img: ImageContext) -> Iterator[str]:
    if len(img.instances) == 0:
        yield "no instances"


@check("E106", "duplicate-image-id", "error", "split", "Two image records of one split share an image id.")
def duplicate_image_id(split: SplitContext) -> Iterator[Hit]:
    for rec, other in repeats(split.aset.images, lambda r: r.id):
        yield Hit(f"image id {rec.id} is also used by {other.file_name!r}", record=rec)


@check("E107", "duplicate-file-name", "error", "split",
       "Two image records of one split point to the same file: training sees the image twice, each time "
       "with only its own record's annotations (the others' objects count as background).")
def duplicate_file_name(split: SplitContext) -> Iterator[Hit]:
    for rec, other in repeats(split.aset.images, lambda r: r.file_name):
        yield Hit(f"file name also used by image id {other.id} ({len(other.instances)} annotation(s) there, "
                  f"{len(rec.instances)} here)", record=rec)


@check("W108", "duplicate-image-content", "warning", "split",
       "Two different image files of one split have identical bytes (SHA-1).")
def duplicate_image_content(split: SplitContext) -> Iterator[Hit]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, facts in enumerate(split.facts):
        if facts is not None and facts.sha1 is not None:
            groups[facts.sha1].append(i)
    for sha1, idx in groups.items():
        first = split.aset.images[idx[0]]
        for i in idx[1:]:
            rec = split.aset.images[i]
            if rec.file_name != first.file_name:
                yield Hit(f"same bytes as {first.file_name!r} (image id {first.id}, sha1 {sha1[:12]})", record=rec)
