"""Pictures of an :class:`~maskkit.explanations.api.Explanation`: an overlay PNG per map (saliency as a heat map
over the image, the instance or class region outlined), one grid PNG per feature level and a contact sheet.

Files written by :func:`write_explanation` in ``out/<key>/``: ``instance<k>_class.png`` and
``instance<k>_mask.png`` (instance ``k``, 0 = best score), ``class_<name>.png`` (a dense model's class maps),
``features_<level>.png``, ``contact_sheet.png`` and ``explanation.json`` (what each picture shows, with the
share of its mass inside the instance's dilated box).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from maskkit.explanations.api import Explanation, MapInfo
from maskkit.fileio import atomic_write_json, atomic_write_png
from maskkit.inference.visualize import caption, draw_instances, overlay_grid
from maskkit.structures import Instances, Masks

MIN_SIDE = 320
"""Overlays are enlarged so that their short side is at least this many pixels (readable outlines)."""
THUMB = 256
"""Short side of the panels of a contact sheet."""
GRID_CHANNELS = 16
"""Channels shown per feature level (the most active ones, by mean activation)."""


def _resize(array: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    if scale == 1.0:
        return array
    h, w = array.shape[:2]
    interp = cv2.INTER_NEAREST if array.dtype == bool or scale >= 2 else cv2.INTER_LINEAR
    src = array.astype(np.uint8) if array.dtype == bool else array
    out = cv2.resize(src, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interp)
    return out.astype(bool) if array.dtype == bool else out


def heat(saliency: np.ndarray) -> np.ndarray:
    """An RGB uint8 colour map (OpenCV's JET: blue low, red high) of a ``[0, 1]`` map."""
    import cv2

    grey = (np.clip(saliency, 0, 1) * 255).round().astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, saliency: np.ndarray, region: np.ndarray | None = None,
            box: list[float] | None = None, alpha: float = 0.75, min_side: int = MIN_SIDE) -> np.ndarray:
    """``image`` (H x W x 3 uint8) under the heat map of ``saliency`` (opaque where it is high, clear where it is
    0), ``region`` (bool mask) outlined in white over black, ``box`` (XYXY) as a thin white rectangle; enlarged so
    that the short side is at least ``min_side``."""
    import cv2

    h, w = image.shape[:2]
    scale = max(1.0, min_side / max(min(h, w), 1))
    weight = alpha * np.sqrt(np.clip(_resize(saliency.astype(np.float32), scale), 0, 1))[:, :, None]
    canvas = (1 - weight) * _resize(image, scale).astype(np.float32) + weight * _resize(heat(saliency), scale)
    canvas = np.ascontiguousarray(canvas.astype(np.uint8))
    if box is not None:
        x0, y0, x1, y1 = (round(v * scale) for v in box)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (255, 255, 255), 1, cv2.LINE_AA)
    if region is not None and region.any():
        contours, _ = cv2.findContours(_resize(region, scale).astype(np.uint8), cv2.RETR_CCOMP,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.drawContours(canvas, contours, -1, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def with_zoom(image: np.ndarray, saliency: np.ndarray, region: np.ndarray | None, box: list[float],
              min_side: int = MIN_SIDE) -> np.ndarray:
    """The full :func:`overlay` beside a zoom on ``box`` (its dilated box, at least 24 px): small instances
    stay readable."""
    from maskkit.explanations.api import dilated_box

    full = overlay(image, saliency, region, box, min_side=min_side)
    x0, y0, x1, y1 = dilated_box(box, image.shape[:2], min_size=24)
    local = [box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0]
    crop = overlay(image[y0:y1, x0:x1], saliency[y0:y1, x0:x1], None if region is None else region[y0:y1, x0:x1],
                   local, min_side=full.shape[0])
    zoom = _resize(crop, full.shape[0] / crop.shape[0])
    gap = np.full((full.shape[0], 4, 3), 255, np.uint8)
    return np.hstack([full, gap, zoom[: full.shape[0]]])


def feature_grid(features: np.ndarray, level: str, channels: int = GRID_CHANNELS, cell: int = 96) -> np.ndarray:
    """The ``channels`` most active channels of a ``C x h x w`` feature map, each min-max scaled (viridis)."""
    import cv2

    means = features.reshape(len(features), -1).mean(1)
    top = np.argsort(-means, kind="stable")[:channels]
    panels = []
    for c in top:
        f = features[c]
        lo, hi = float(f.min()), float(f.max())
        grey = ((f - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(f)).astype(np.uint8)
        rgb = cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)
        scale = cell / max(f.shape)
        rgb = cv2.resize(rgb, (max(1, round(f.shape[1] * scale)), max(1, round(f.shape[0] * scale))),
                         interpolation=cv2.INTER_NEAREST)
        panels.append(caption(rgb, f"ch {int(c)}", height=18))
    h, w = features.shape[1:]
    return caption(overlay_grid(panels, cols=4), f"{level}: {len(features)} ch, {h}x{w}; top {len(top)} by mean")


def level_summary(features: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The mean absolute activation of a ``C x h x w`` level, min-max scaled and resized to ``shape``."""
    import cv2

    m = np.abs(features).mean(0)
    lo, hi = float(m.min()), float(m.max())
    m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    return cv2.resize(m.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def describe(info: MapInfo, method: str) -> str:
    """Caption of one map: what it explains."""
    what = {"class": "class score", "mask": "mask"}[info.kind]
    if info.instance is None:
        return f"class {info.class_name}: {method}"
    extra = f" ({info.in_box:.0%} in box)" if info.in_box is not None else ""
    return f"#{info.instance} {info.class_name[:12]} {info.score:.2f} {what}{extra}"


def file_name(info: MapInfo) -> str:
    """The overlay file of one map."""
    if info.instance is None:
        return f"class_{re.sub(r'[^A-Za-z0-9_.-]+', '_', info.class_name)}.png"
    return f"instance{info.instance:03d}_{info.kind}.png"


def _region(explanation: Explanation, info: MapInfo) -> np.ndarray | None:
    inst = explanation.instances
    if info.instance is not None and inst.has("masks"):
        return np.asarray(inst.masks[info.instance], dtype=bool)
    if info.instance is None and inst.has("masks") and len(inst):
        picked = np.asarray(inst.labels) == info.category_id
        return np.asarray(inst.masks, dtype=bool)[picked].any(0) if picked.any() else None
    return None


def _with_rle_masks(inst: Instances) -> Instances:
    """``inst`` with :class:`Masks` (what :func:`draw_instances` draws) instead of a dense bool array."""
    if not inst.has("masks") or not isinstance(inst.masks, np.ndarray):
        return inst
    h, w = inst.image_size
    return Instances((h, w), **{**inst.fields, "masks": Masks.from_bitmaps(inst.masks, h, w)})


def write_explanation(explanation: Explanation, folder: Path, class_names: dict[int, str] | None = None,
                      source: str | None = None) -> dict[str, Any]:
    """Every picture of ``explanation`` in ``folder`` (see the module docstring); returns the JSON summary."""
    folder.mkdir(parents=True, exist_ok=True)
    e = explanation
    scale_side = THUMB / max(min(e.image.shape[:2]), 1)
    drawn = draw_instances(e.image, _with_rle_masks(e.instances), class_names, show_boxes=True)
    thumbs = [caption(_resize(drawn, THUMB / min(drawn.shape[:2])), f"{len(e.instances)} predicted")]
    entries = []
    for saliency, info in zip(e.maps, e.targets, strict=True):
        name = file_name(info)
        region = _region(e, info)
        picture = overlay(e.image, saliency, region, info.box)
        single = picture if info.box is None else with_zoom(e.image, saliency, region, info.box)
        atomic_write_png(folder / name, caption(single, f"{describe(info, e.method)} ({e.method})"))
        thumbs.append(caption(_resize(single, THUMB / single.shape[0]), describe(info, e.method)))
        entries.append({**info.as_dict(), "file": name})
    for level, feats in e.features.items():
        atomic_write_png(folder / f"features_{level}.png", feature_grid(feats, level))
        summary = level_summary(feats, e.image.shape[:2])
        thumbs.append(caption(_resize(overlay(e.image, summary, alpha=0.9, min_side=1), max(scale_side, 1e-3)),
                              f"{level} mean |activation|"))
    sheet = overlay_grid(thumbs, cols=3 if any(t.box is not None for t in e.targets) else 4)
    title = f"{source or folder.name}: {e.method} on {', '.join(e.layers)}" if e.layers else (source or folder.name)
    atomic_write_png(folder / "contact_sheet.png", caption(sheet, title, height=30))
    summary_json = {"source": source, "method": e.method, "layers": e.layers, "instances": len(e.instances),
                    "maps": entries, "features": {k: list(v.shape) for k, v in e.features.items()}, "notes": e.notes}
    atomic_write_json(folder / "explanation.json", summary_json, indent=2)
    return summary_json
