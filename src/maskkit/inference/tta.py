"""Test-time augmentation (flips and scales), merged at mask level, for every model type.

A :class:`View` is a scale and a flip. Each view of an image is predicted and mapped back to the
original image frame, then the views are merged:

* instance outputs (Mask R-CNN ``masks`` or dense models' ``instance_map``; :func:`tta_detections`):
  instances of all views are matched greedily by mask IoU (same class, at most one per view, best
  score first); a matched group becomes one instance whose soft mask is the mean of its members'
  masks, whose box is the mean box and whose score is the sum of its members' scores divided by the
  number of views (an instance seen by few views is down-weighted: a soft vote);
* models with ``predict_raw(images) -> list[raw]`` and ``postprocess(raw, **thresholds) -> dict``
  (:func:`tta_raw_output`): the raw maps of all views are mapped back and averaged before the
  model's own post-processing. Every floating-point tensor of ``raw`` with at least two dimensions
  is taken as a scalar field over the image (its last two dims are ``H×W``): it is flipped back and
  resized to the scale-1 view's shape. Models whose raw maps are not (vector fields, padded maps)
  define ``deaugment_raw(raw, flip, reference) -> raw`` instead.

Scales change the model's own inference resize when it has one (a submodule with integer
``min_size``/``max_size`` attributes, as torchvision's ``GeneralizedRCNNTransform`` and maskkit's
dense models have); models that run at the input size get a resized image instead.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import nn

from maskkit.errors import ConfigError
from maskkit.inference.paste import Detections, MaskCrops

if TYPE_CHECKING:
    from typing_extensions import TypeIs

    from maskkit.models.dense import RawOutputModel

FLIPS = ("none", "h", "v", "hv")

Detector = Callable[[list[torch.Tensor]], list[Detections]]
"""Runs a model on a batch of ``C×H×W`` images and returns their detections at the input sizes."""


@dataclass(frozen=True)
class View:
    """One augmentation: resize by ``scale``, then flip (``none``, ``h`` left-right, ``v`` top-bottom, ``hv``)."""

    scale: float = 1.0
    flip: str = "none"


def make_views(scales: Sequence[float] = (1.0,), flips: Sequence[str] = ("none", "h")) -> list[View]:
    """All scale × flip views, the one closest to the original image first."""
    scales = [float(s) for s in scales] or [1.0]
    flips = list(flips) or ["none"]
    bad = [f for f in flips if f not in FLIPS]
    if bad or any(not math.isfinite(s) or s <= 0 for s in scales):
        raise ConfigError(f"TTA needs positive scales and flips among {', '.join(FLIPS)}; got {scales}, {flips}")
    scales = sorted(dict.fromkeys(scales), key=lambda s: abs(math.log(s)))
    flips = sorted(dict.fromkeys(flips), key=lambda f: f != "none")
    return [View(s, f) for s in scales for f in flips]


def flip_image(image: torch.Tensor, flip: str) -> torch.Tensor:
    """``image`` (``…×H×W``) mirrored as ``flip`` says (flips are their own inverse)."""
    dims = [d for d, on in ((-1, "h" in flip), (-2, "v" in flip)) if on]
    return image.flip(dims) if dims else image


def resize_image(image: torch.Tensor, scale: float) -> torch.Tensor:
    """``C×H×W`` image resized by ``scale`` (bilinear, antialiased when shrinking)."""
    h, w = image.shape[-2:]
    size = (max(round(h * scale), 1), max(round(w * scale), 1))
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=scale < 1)[0]


def _int_size(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return bool(value) and all(isinstance(v, int) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)


@contextlib.contextmanager
def model_scale(model: nn.Module, scale: float) -> Iterator[bool]:
    """Scale the model's own inference resize (``min_size``/``max_size``) by ``scale`` for the block.

    Yields whether the model has such a resize (otherwise the caller resizes the image).
    """
    saved: list[tuple[Any, Any, Any]] = []
    m: Any  # min_size/max_size: attributes some modules have (torchvision's transform, DenseInput)
    for m in model.modules():
        if not (_int_size(getattr(m, "min_size", None)) and hasattr(m, "max_size")):
            continue
        saved.append((m, m.min_size, m.max_size))
        if scale != 1.0:
            ms = m.min_size
            m.min_size = type(ms)(round(v * scale) for v in ms) if isinstance(ms, (tuple, list)) else round(ms * scale)
            if m.max_size is not None:
                m.max_size = round(m.max_size * scale)
    try:
        yield bool(saved)
    finally:
        for m, ms, mx in saved:
            m.min_size, m.max_size = ms, mx


def _unflip(det: Detections, flip: str) -> Detections:
    if "h" in flip:
        det = det.flip(horizontal=True)
    if "v" in flip:
        det = det.flip(horizontal=False)
    return det


def rescale_detections(det: Detections, image_size: tuple[int, int]) -> Detections:
    """Detections of a resized image mapped to an image of ``image_size`` (masks resized bilinearly)."""
    import cv2

    h, w = int(image_size[0]), int(image_size[1])
    fy, fx = h / det.image_size[0], w / det.image_size[1]
    crops: list[np.ndarray] = []
    offsets: list[tuple[int, int]] = []
    for crop, (x, y) in zip(det.masks.crops, det.masks.offsets, strict=True):
        x0, y0 = min(int(x * fx), w), min(int(y * fy), h)
        x1, y1 = min(math.ceil((x + crop.shape[1]) * fx), w), min(math.ceil((y + crop.shape[0]) * fy), h)
        if crop.size == 0 or x1 <= x0 or y1 <= y0:
            crops.append(np.zeros((0, 0), np.float32))
            offsets.append((0, 0))
            continue
        crops.append(cv2.resize(crop, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR))
        offsets.append((x0, y0))
    boxes = det.boxes * np.asarray([fx, fy, fx, fy], np.float32)
    masks = MaskCrops(crops, np.asarray(offsets, np.int64).reshape(-1, 2), (h, w))
    return Detections(boxes.astype(np.float32), det.labels, det.scores, masks)


def merge_detections(views: Sequence[Detections], iou_threshold: float = 0.5,
                     mask_threshold: float = 0.5) -> Detections:
    """One set of detections from the (back-mapped) detections of several views (see the module docstring)."""
    size = views[0].image_size
    labels = np.concatenate([v.labels for v in views]) if views else np.zeros(0, np.int64)
    if not len(labels):
        return Detections(np.zeros((0, 4), np.float32), labels.astype(np.int64), np.zeros(0, np.float32),
                          MaskCrops.empty(size))
    scores = np.concatenate([v.scores for v in views]).astype(np.float32)
    view_of = np.concatenate([np.full(len(v), k) for k, v in enumerate(views)])
    index_in = np.concatenate([np.arange(len(v)) for v in views])
    rles = [r for v in views for r in v.masks.to_rles(mask_threshold)]
    groups: list[list[int]] = []
    for k in np.argsort(-scores, kind="stable"):
        cand = [g for g, members in enumerate(groups)
                if labels[members[0]] == labels[k] and all(view_of[m] != view_of[k] for m in members)]
        if cand:
            ious = np.asarray(mask_utils.iou([rles[groups[g][0]] for g in cand], [rles[k]], [0]), np.float64)
            best = int(np.argmax(ious[:, 0]))
            if ious[best, 0] >= iou_threshold:
                groups[cand[best]].append(int(k))
                continue
        groups.append([int(k)])
    boxes = np.zeros((len(groups), 4), np.float32)
    merged_scores = np.zeros(len(groups), np.float32)
    crops, offsets = [], []
    for g, members in enumerate(groups):
        parts = [(views[view_of[m]].masks, int(index_in[m])) for m in members]
        crop, offset = _mean_crop([(mc.crops[i], mc.offsets[i]) for mc, i in parts])
        crops.append(crop)
        offsets.append(offset)
        boxes[g] = np.mean([views[view_of[m]].boxes[index_in[m]] for m in members], axis=0)
        merged_scores[g] = np.float32(scores[members].sum() / len(views))
    order = np.argsort(-merged_scores, kind="stable")
    masks = MaskCrops(crops, np.asarray(offsets, np.int64).reshape(-1, 2), size)
    merged = Detections(boxes, np.asarray([labels[m[0]] for m in groups], np.int64), merged_scores, masks)
    return merged.take(order)


def _mean_crop(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, tuple[int, int]]:
    """The mean of crops placed at their offsets, over their union region."""
    placed = [(c, (int(o[0]), int(o[1]))) for c, o in parts if c.size]
    if not placed:
        return np.zeros((0, 0), np.float32), (0, 0)
    if len(placed) == 1:
        return placed[0][0], placed[0][1]
    x0 = min(o[0] for _, o in placed)
    y0 = min(o[1] for _, o in placed)
    x1 = max(o[0] + c.shape[1] for c, o in placed)
    y1 = max(o[1] + c.shape[0] for c, o in placed)
    acc = np.zeros((y1 - y0, x1 - x0), np.float32)
    for c, (x, y) in placed:
        acc[y - y0:y - y0 + c.shape[0], x - x0:x - x0 + c.shape[1]] += c
    acc /= len(placed)
    return acc, (x0, y0)


def _by_scale(views: Sequence[View]) -> dict[float, list[View]]:
    groups: dict[float, list[View]] = {}
    for v in views:
        groups.setdefault(v.scale, []).append(v)
    return groups


def tta_detections(model: nn.Module, detect: Detector, image: torch.Tensor, views: Sequence[View],
                   iou_threshold: float = 0.5, mask_threshold: float = 0.5) -> Detections:
    """Merged detections of ``image`` (``C×H×W``) over ``views``; the flips of one scale run as one batch."""
    size = (int(image.shape[-2]), int(image.shape[-1]))
    dets: list[Detections] = []
    for scale, group in _by_scale(views).items():
        with model_scale(model, scale) as own_resize:
            base = image if own_resize or scale == 1.0 else resize_image(image, scale)
            outs = detect([flip_image(base, v.flip) for v in group])
        for v, det in zip(group, outs, strict=True):
            det = _unflip(det, v.flip)
            dets.append(det if det.image_size == size else rescale_detections(det, size))
    return merge_detections(dets, iou_threshold, mask_threshold)


def has_raw_outputs(model: object) -> TypeIs[RawOutputModel]:
    """Whether the model splits inference into ``predict_raw`` and ``postprocess`` (raw maps are averaged)."""
    return callable(getattr(model, "predict_raw", None)) and callable(getattr(model, "postprocess", None))


def _map_raw(raw: Any, ref: Any, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn(tensor, reference_tensor)`` to every tensor leaf of nested dicts/lists/tuples."""
    if isinstance(raw, torch.Tensor):
        return fn(raw, ref)
    if isinstance(raw, dict):
        return {k: _map_raw(v, ref[k], fn) for k, v in raw.items()}
    if isinstance(raw, (list, tuple)):
        return type(raw)(_map_raw(v, r, fn) for v, r in zip(raw, ref, strict=True))
    return raw


def _spatial(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.dim() >= 2


def deaugment_raw(raw: Any, flip: str, reference: Any) -> Any:
    """Generic inverse of a view for raw maps: flip back, resize to the reference's ``H×W`` (see module doc)."""

    def undo(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if not _spatial(t):
            return t
        t = flip_image(t, flip)
        if t.shape[-2:] != ref.shape[-2:]:
            lead = t.shape[:-2]
            t = F.interpolate(t.reshape(1, -1, *t.shape[-2:]), size=ref.shape[-2:], mode="bilinear",
                              align_corners=False).reshape(*lead, *ref.shape[-2:])
        return t

    return _map_raw(raw, reference, undo)


def average_raw(raws: Sequence[Any]) -> Any:
    """Element-wise mean of the float tensors of aligned raw outputs; other leaves from the first one."""

    def walk(items: list[Any]) -> Any:
        head = items[0]
        if isinstance(head, torch.Tensor):
            return torch.stack(items).mean(0) if head.is_floating_point() else head
        if isinstance(head, dict):
            return {k: walk([it[k] for it in items]) for k in head}
        if isinstance(head, (list, tuple)):
            return type(head)(walk([it[i] for it in items]) for i in range(len(head)))
        return head

    return walk(list(raws)) if len(raws) > 1 else raws[0]


def tta_raw_output(model: nn.Module, image: torch.Tensor, views: Sequence[View]) -> dict[str, Any]:
    """The model's output for ``image`` from the average of its views' de-augmented raw maps."""
    raw = tta_raw(model, image, views)
    assert has_raw_outputs(model)  # tta_raw checked it
    return model.postprocess(raw)


def align_raw(model: nn.Module, raw: Any, flip: str, reference: Any) -> Any:
    """``raw`` un-flipped and resized to ``reference``'s map sizes, by the model's own ``deaugment_raw`` if any."""
    undo = getattr(model, "deaugment_raw", None) or deaugment_raw
    return undo(raw, flip, reference)


def tta_raw(model: nn.Module, image: torch.Tensor, views: Sequence[View]) -> Any:
    """The average of ``image``'s views' raw maps, mapped back to the scale-1 view's frame."""
    if not has_raw_outputs(model):
        raise ConfigError(f"{type(model).__name__} has no raw outputs (predict_raw/postprocess) to average")
    if not any(v.scale == 1.0 for v in views):
        raise ConfigError("TTA of models with raw outputs needs scale 1.0 among tta_scales")
    raws: list[tuple[View, Any]] = []
    for scale, group in _by_scale(views).items():
        with model_scale(model, scale) as own_resize:
            base = image if own_resize or scale == 1.0 else resize_image(image, scale)
            raws += list(zip(group, model.predict_raw([flip_image(base, v.flip) for v in group]), strict=True))
    reference = next(r for v, r in raws if v.scale == 1.0)  # only its map sizes are used
    return average_raw([align_raw(model, r, v.flip, reference) for v, r in raws])


def parse_scales(text: str | None) -> list[float] | None:
    """``--tta-scales`` (``0.75,1,1.25``) as floats; None when not given."""
    if text is None:
        return None
    try:
        scales = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--tta-scales must be comma-separated numbers, got {text!r}") from None
    if not scales or any(not 0.1 <= s <= 10 for s in scales):
        raise ConfigError(f"--tta-scales must be numbers between 0.1 and 10, got {text!r}")
    return scales
