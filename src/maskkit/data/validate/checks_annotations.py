"""Checks on single annotations (geometry, masks, boxes) and on annotations of one image or split."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator

import numpy as np

from maskkit.data.validate.context import ImageContext, InstanceView, SplitContext, fmt_box, fmt_num
from maskkit.data.validate.registry import Hit, check
from maskkit.structures import PolygonMask
from maskkit.structures.boxes import box_iou


@check("W201", "polygon-too-few-points", "warning", "instance",
       "A polygon part with fewer than 3 points: it encloses no area and is dropped when rasterised.")
def polygon_too_few_points(inst: InstanceView) -> Iterator[str]:
    if not isinstance(inst.item, PolygonMask):
        return
    parts = inst.item.parts
    bad = [f"part {i} has {len(p)} point{'s' if len(p) != 1 else ''}" for i, p in enumerate(parts) if len(p) < 3]
    if bad:
        yield f"polygon {', '.join(bad)} (of {len(parts)} part{'s' if len(parts) != 1 else ''}; 3 needed)"


@check("W202", "self-intersecting-polygon", "warning", "instance",
       "A polygon part whose edges cross (touching at a point is fine); the fill may differ from the drawing.")
def self_intersecting_polygon(inst: InstanceView) -> Iterator[str]:
    if not isinstance(inst.item, PolygonMask):
        return
    import shapely
    from shapely.validation import explain_validity

    for i, part in enumerate(inst.item.parts):
        part = np.asarray(part, dtype=np.float64).reshape(-1, 2)
        if len(part) < 3 or not np.isfinite(part).all():
            continue
        poly = shapely.Polygon(part)
        if not poly.is_valid:
            reason = explain_validity(poly)
            # A ring touching itself at a point (parts joined by a zero-width bridge, as YOLO-seg merges
            # them) fills as intended; only real crossings are reported.
            if reason.startswith("Self-intersection"):
                reason = re.sub(r"-?\d+\.\d+", lambda m: f"{float(m.group()):.1f}", reason)
                yield f"polygon part {i} ({len(part)} points) crosses itself: {reason}"


@check("E203", "zero-area-mask", "error", "instance", "A mask without any pixel (the instance cannot be learned).")
def zero_area_mask(inst: InstanceView) -> Iterator[str]:
    if inst.area is None or inst.area > 0 or inst.outside == "entirely":
        return
    if inst.points is not None:
        n = len(inst.points)
        pts = inst.points
        span = np.ptp(pts, axis=0) if n else np.zeros(2)
        yield f"mask has 0 pixels (polygon of {n} points spanning {fmt_num(span[0])}x{fmt_num(span[1])} px)"
    else:
        masks = inst.image.masks
        assert masks is not None  # an area comes from a mask
        yield f"mask has 0 pixels ({masks.kinds()[inst.index]} mask, box {fmt_box(inst.box)})"


def _outside_message(inst: InstanceView) -> str:
    extent = inst.extent
    assert extent is not None  # called for coordinates outside the image only
    x0, y0, x1, y1 = extent
    rec = inst.image.record
    what = "polygon" if inst.points is not None and len(inst.points) else "box"
    return (
        f"{what} spans x {fmt_num(x0)}..{fmt_num(x1)}, y {fmt_num(y0)}..{fmt_num(y1)}; "
        f"image is {rec.width}x{rec.height} (WxH)"
    )


@check("W204", "instance-partly-outside", "warning", "instance",
       "Coordinates beyond the image border (more than 1 px): the instance gets clipped.")
def instance_partly_outside(inst: InstanceView) -> Iterator[str]:
    if inst.outside == "partly":
        yield _outside_message(inst)


@check("E205", "instance-outside-image", "error", "instance", "An instance entirely outside the image.")
def instance_outside_image(inst: InstanceView) -> Iterator[str]:
    if inst.outside == "entirely":
        yield _outside_message(inst)


@check("W206", "box-mask-mismatch", "warning", "instance",
       "The annotated box disagrees with the mask's tight box (IoU < 0.7 or a side off by more than 2 px).")
def box_mask_mismatch(inst: InstanceView) -> Iterator[str]:
    mask_box, box = inst.mask_box, inst.box
    if mask_box is None or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        return
    iou = float(box_iou(box, mask_box)[0, 0])
    diff = float(np.abs(box - mask_box).max())
    opts = inst.image.options
    if iou < opts.box_iou or diff > opts.box_tolerance:
        yield (
            f"box {fmt_box(box)} vs mask box {fmt_box(mask_box)} (XYXY): IoU {iou:.2f}, "
            f"largest difference {fmt_num(diff)} px"
        )


@check("W207", "tiny-instance", "warning", "instance",
       "An instance of fewer than 4 pixels: too small to learn, often an annotation slip.")
def tiny_instance(inst: InstanceView) -> Iterator[str]:
    if inst.item is None:
        box = inst.box
        area = float((box[2] - box[0]) * (box[3] - box[1])) if np.isfinite(box).all() else None
        what = "box"
    else:
        area, what = inst.area, "mask"
    limit = inst.image.options.tiny_area
    if area is not None and 0 < area < limit:
        yield f"{what} area {fmt_num(area)} px (< {fmt_num(limit)})"


@check("W208", "crowd-without-rle", "warning", "instance",
       "A crowd annotation (iscrowd=1) stored as polygons; COCO tools expect RLE for crowd regions.")
def crowd_without_rle(inst: InstanceView) -> Iterator[str]:
    if inst.iscrowd and isinstance(inst.item, PolygonMask):
        yield f"iscrowd=1 with a polygon of {len(inst.item.parts)} part(s)"


@check("E209", "malformed-rle", "error", "instance",
       "An RLE mask whose counts are broken (cut off, negative, or not summing to height*width).")
def malformed_rle(inst: InstanceView) -> Iterator[str]:
    if inst.rle_problem:
        yield inst.rle_problem


@check("E210", "mask-size-mismatch", "error", "instance", "A mask whose size differs from its image record's size.")
def mask_size_mismatch(inst: InstanceView) -> Iterator[str]:
    if inst.size_problem:
        yield inst.size_problem


@check("E211", "non-finite-coordinates", "error", "instance", "NaN or infinite polygon or box coordinates.")
def non_finite_coordinates(inst: InstanceView) -> Iterator[str]:
    bad = []
    if inst.points is not None and not np.isfinite(inst.points).all():
        bad.append(f"polygon has {int((~np.isfinite(inst.points)).sum())} non-finite coordinate(s)")
    if not np.isfinite(inst.box).all():
        bad.append(f"box {fmt_box(inst.box)}")
    if bad:
        yield "; ".join(bad)


@check("W212", "duplicate-instance", "warning", "image",
       "Two masks of the same category in one image that overlap almost completely (IoU > 0.95).")
def duplicate_instance(img: ImageContext) -> Iterator[Hit]:
    from pycocotools import mask as mask_utils

    by_label: dict[int, list[InstanceView]] = defaultdict(list)
    for v in img.views:
        if v.rle is not None and v.area:
            by_label[v.label].append(v)
    names = img.split.categories
    for label, views in by_label.items():
        if len(views) < 2:
            continue
        iou = np.asarray(mask_utils.iou([v.rle for v in views], [v.rle for v in views], [0] * len(views)))
        limit = img.options.duplicate_iou
        for j in range(1, len(views)):
            i = int(np.argmax(iou[:j, j]))
            if iou[i, j] > limit:
                name = names[label].name if label in names else str(label)
                yield Hit(
                    f"same mask as annotation {views[i].ann_id} (both {name!r}): IoU {iou[i, j]:.3f}",
                    annotation_id=views[j].ann_id,
                )


@check("E213", "degenerate-box", "error", "instance", "A box with zero or negative width or height.")
def degenerate_box(inst: InstanceView) -> Iterator[str]:
    box = inst.box
    if not np.isfinite(box).all() or (inst.item is not None and not inst.area):
        return  # non-finite or empty masks are reported by their own checks
    w, h = box[2] - box[0], box[3] - box[1]
    if w <= 0 or h <= 0:
        yield f"box {fmt_box(box)} (XYXY) has width {fmt_num(w)} and height {fmt_num(h)}"


GLOBAL_ID_FORMATS = frozenset({"coco"})
"""Formats whose annotation ids must be unique in the whole file (COCO tools index them); other
sources number annotations per image (VOC instance indices, LabelMe shape order)."""


@check("E214", "duplicate-annotation-id", "error", "split",
       "Two annotations share an id: in one image, or anywhere in a split whose ids are global (COCO).")
def duplicate_annotation_id(split: SplitContext) -> Iterator[Hit]:
    global_ids = split.aset.format in GLOBAL_ID_FORMATS
    seen: dict[int, int] = {}
    for rec in split.aset.images:
        ids = rec.instances.get("ids")
        if not global_ids:
            seen = {}
        for ann_id in [] if ids is None else np.asarray(ids).reshape(-1).tolist():
            if ann_id in seen:
                where = "this image" if seen[ann_id] == rec.id else f"image {seen[ann_id]}"
                yield Hit(f"annotation id {ann_id} is also used in {where}", record=rec, annotation_id=ann_id)
            else:
                seen[ann_id] = rec.id


@check("E215", "invalid-iscrowd", "error", "instance",
       "An iscrowd value other than 0 or 1 (it is read as true/false, which may not be what was meant).")
def invalid_iscrowd(inst: InstanceView) -> Iterator[str]:
    extras = inst.image.instances.get("extras")
    extra = extras[inst.index] if extras is not None else None
    if isinstance(extra, dict) and "iscrowd" in extra:
        value = extra["iscrowd"]
        yield f"iscrowd is {value!r}"[:120] + f" (must be 0 or 1): read as {'crowd' if inst.iscrowd else 'not crowd'}"
