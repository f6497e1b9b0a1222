"""Export-friendly wrappers: one ``nn.Module`` per family whose ``forward`` is the small, fixed output contract.

Every graph takes a ``B x C x H x W`` float batch of same-size images in ``[0, 1]`` (any ``B``, ``H``, ``W``)
and does the model's normalisation and resize rules itself, so that a runtime only converts pixels.

* :class:`RCNNGraph` (Mask R-CNN variants and the instance part of Panoptic FPN): torchvision's modules
  (backbone, RPN head, anchors, box coder, RoI heads) run with a batch-vectorised post-processing (no
  per-image Python loop, so one traced graph serves any batch size, and zero detections): inputs
  ``images``, ``score_threshold`` (float scalar, replaces the model's box score threshold as the Predictor's
  fast path does) and ``max_detections`` (int64 scalar cap per image); outputs ``boxes`` (``N x 4`` XYXY at
  the input size), ``scores``, ``labels`` (1..K), ``masks`` (``N x M x M`` probabilities of the predicted
  class, to be pasted by :func:`maskkit.inference.paste.paste_masks`) and ``batch_index`` (image of each row).
* :class:`DenseGraph` (semantic and bottom-up models, StarDist and Cellpose included): the decoder's activated
  maps (``B x M x H x W``, at the input size, or at the network's output stride for bottom-up models built with
  ``output_stride``; lengths in pixels rescaled by the decoder's ``rescale_maps``), post-processed by the
  model's own decoder in Python (named in the metadata, :mod:`maskkit.models.decoders`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align
from torchvision.ops.poolers import MultiScaleRoIAlign, _onnx_merge_levels, _setup_scales

from maskkit.models.bottomup import resize_factor


def _dim(t: Tensor) -> Any:
    """A 0-d int64 tensor where torch takes an int (sizes, counts): the tracer records it as a shape computation,
    so the exported graph stays dynamic (typed ``Any`` for that reason)."""
    return t


def _hw(x: Tensor) -> Tensor:
    """``(H, W)`` of a batch as an int64 tensor (traced as a shape, so exported graphs stay size-dynamic)."""
    return torch._shape_as_tensor(x)[-2:]


def _over(numerator: float, t: Tensor) -> Tensor:
    """``numerator / t`` correctly rounded (torch computes ``scalar / tensor`` as a reciprocal product, which can
    differ from Python's division in the last bit, and so floor/round a size 1 px differently)."""
    return torch.full_like(t, float(numerator)) / t


def _pad_to_multiple(x: Tensor, divisor: int) -> Tensor:
    """Pad bottom/right with zeros to multiples of ``divisor``."""
    hw = _hw(x)
    pad = (hw + divisor - 1) // divisor * divisor - hw
    return F.pad(x, [_dim(torch.zeros_like(pad[1])), _dim(pad[1]), _dim(torch.zeros_like(pad[0])), _dim(pad[0])])


def exact_size(exact: Tensor, approx: Tensor) -> Tensor:
    """A resized size as the eager code computes it (``approx``: its float64 ``floor``/``round``), as an integer
    tensor derived from the exact integer rule ``exact`` (which differs from ``approx`` by at most 1, where
    float64 rounding lands just beside an integer: a few percent of image sizes).

    Sizes cast from floats make OpenVINO fail to infer shapes, so the floats only enter through comparisons.
    OpenVINO still computes float64 in float32, so its graphs take the size as an input instead
    (``size_input``; the runtime computes it with the eager rule).
    """
    ref = exact.to(approx.dtype)
    return exact + (approx > ref).to(exact.dtype) - (approx < ref).to(exact.dtype)


def keep_top_per_image(scores: Tensor, batch_index: Tensor, cap: Tensor | int, num_images: Tensor) -> Tensor:
    """Indices of the rows to keep: per image the ``cap`` best scores, grouped by image, best first.

    Vectorised (a sort by score, a stable grouping by image through an exact integer key, a rank
    within each image): no loop over images, so graphs traced with one batch size serve any.
    """
    order = torch.argsort(scores, descending=True)
    n = torch._shape_as_tensor(order)[0]
    key = batch_index[order] * n + torch.arange(_dim(n), device=scores.device)
    order = order[torch.argsort(key)]
    img = batch_index[order]
    counts = (img[:, None] == torch.arange(_dim(num_images), device=scores.device)[None]).sum(0)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(_dim(n), device=scores.device) - starts[img]
    return order[rank < cap]


def multiscale_roi_align(pool: MultiScaleRoIAlign, features: dict[str, Tensor], rois: Tensor,
                         image_size: tuple[int, int]) -> Tensor:
    """torchvision's ``MultiScaleRoIAlign`` for ``K x 5`` rois (batch index, XYXY) of same-size images.

    The level scales are powers of two (the feature strides), so ``image_size`` (any resized size) only
    serves to infer them, as torchvision does.
    """
    feats = [features[k] for k in pool.featmap_names]
    scales, mapper = _setup_scales(feats, [image_size], pool.canonical_scale, pool.canonical_level)
    assert scales is not None and mapper is not None
    kw = {"output_size": pool.output_size, "sampling_ratio": pool.sampling_ratio}
    if len(feats) == 1:
        return roi_align(feats[0], rois, spatial_scale=scales[0], **kw)
    levels = mapper([rois[:, 1:]])
    per_level = []
    for level, (feat, scale) in enumerate(zip(feats, scales, strict=True)):
        idx = torch.where(levels == level)[0]
        per_level.append(roi_align(feat, rois[idx], spatial_scale=scale, **kw))
    return _onnx_merge_levels(levels, per_level)


class RCNNGraph(nn.Module):
    """A torchvision Mask R-CNN (or Panoptic FPN's detector) with a batch-vectorised inference forward."""

    mean: Tensor
    std: Tensor
    backbone: Any  # torchvision modules (no type information)
    rpn: Any
    roi_heads: Any

    def __init__(self, model: Any, size_input: bool = False) -> None:
        super().__init__()
        self.size_input = size_input  # resized size as the input ``resized_size`` (see exact_size)
        t = model.transform
        self.register_buffer("mean", torch.tensor(t.image_mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(t.image_std, dtype=torch.float32).view(1, -1, 1, 1))
        self.min_size = float(t.min_size[-1])
        self.max_size = float(t.max_size)
        self.size_divisible = int(t.size_divisible)
        self.backbone, self.rpn, self.roi_heads = model.backbone, model.rpn, model.roi_heads

    def resize(self, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """torchvision's eval resize (shorter side to ``min_size``, longer capped at ``max_size``) of a batch, or
        to ``size`` when given."""
        if size is not None:
            return F.interpolate(x, size=[_dim(size[0]), _dim(size[1])], mode="bilinear", align_corners=False), size
        hw = _hw(x)
        lo, hi = hw.min(), hw.max()
        a, b = int(self.min_size), int(self.max_size)
        short_binds = a * hi <= b * lo  # a / lo <= b / hi
        num, den = torch.where(short_binds, a, b), torch.where(short_binds, lo, hi)
        hwf = hw.to(torch.float64)
        scale = torch.minimum(_over(a, hwf.min()), _over(b, hwf.max()))
        out = exact_size(hw * num // den, torch.floor(hwf * scale))
        x = F.interpolate(x, size=[_dim(out[0]), _dim(out[1])], mode="bilinear", align_corners=False)
        return x, out

    def forward(self, images: Tensor, score_threshold: Tensor, max_detections: Tensor,
                resized_size: Tensor | None = None) -> tuple[Tensor, ...]:
        x = (images - self.mean) / self.std
        x, resized_hw = self.resize(x, resized_size if self.size_input else None)
        x = _pad_to_multiple(x, self.size_divisible)
        features = self.backbone(x)
        if isinstance(features, Tensor):
            features = {"0": features}
        num_images = torch._shape_as_tensor(images)[0]
        rois = self._proposals(x, features, resized_hw, num_images)
        size = (int(x.shape[-2]), int(x.shape[-1]))  # only infers the level strides (powers of two)
        boxes, scores, labels, batch_index = self._detect(features, rois, resized_hw, size, score_threshold,
                                                          max_detections, num_images)
        masks = self._masks(features, boxes, labels, batch_index, size)
        ratio = _hw(images).to(torch.float32) / resized_hw.to(torch.float32)
        boxes = boxes * torch.stack([ratio[1], ratio[0], ratio[1], ratio[0]])
        return boxes, scores, labels, masks, batch_index

    def _proposals(self, x: Tensor, features: dict[str, Tensor], hw: Tensor, num_images: Tensor) -> Tensor:
        """RPN proposals as ``K x 5`` rois (batch index, XYXY): torchvision's filter_proposals, vectorised."""
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        rpn = self.rpn
        feats = list(features.values())
        objectness, deltas = rpn.head(feats)
        anchors = rpn.anchor_generator(ImageList(x, [(0, 0)]), feats)[0]
        per_level = [o.shape[1] * o.shape[2] * o.shape[3] for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        deltas = deltas.reshape(-1, anchors.shape[0], 4)
        proposals = rpn.box_coder.decode_single(deltas.reshape(-1, 4),
                                                anchors[None].expand_as(deltas).reshape(-1, 4))
        proposals = proposals.reshape(-1, anchors.shape[0], 4)
        objectness = objectness.reshape(num_images, -1)
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=x.device) for i, n in enumerate(per_level)])
        top = rpn._get_top_n_idx(objectness, per_level)
        rows = torch.arange(_dim(num_images), device=x.device)[:, None]
        scores = objectness[rows, top].sigmoid().reshape(-1)
        boxes = proposals[rows, top].reshape(-1, 4)
        lvl = levels[top].reshape(-1)
        img = rows.expand_as(top).reshape(-1)
        boxes = box_ops.clip_boxes_to_image(boxes, (hw[0], hw[1]))
        keep = box_ops.remove_small_boxes(boxes, rpn.min_size)
        keep = keep[scores[keep] >= rpn.score_thresh]
        boxes, scores, lvl, img = boxes[keep], scores[keep], lvl[keep], img[keep]
        keep = box_ops.batched_nms(boxes, scores, img * len(per_level) + lvl, rpn.nms_thresh)
        keep = keep[keep_top_per_image(scores[keep], img[keep], rpn.post_nms_top_n(), num_images)]
        return torch.cat([img[keep, None].to(boxes.dtype), boxes[keep]], 1)

    def _detect(self, features: dict[str, Tensor], rois: Tensor, hw: Tensor, size: tuple[int, int],
                score_threshold: Tensor,
                max_detections: Tensor, num_images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """torchvision's RoIHeads.postprocess_detections, vectorised over the batch."""
        rh = self.roi_heads
        box_features = rh.box_head(multiscale_roi_align(rh.box_roi_pool, features, rois, size))
        class_logits, box_regression = rh.box_predictor(box_features)
        num_classes = class_logits.shape[-1]
        boxes = rh.box_coder.decode_single(box_regression, rois[:, 1:]).reshape(-1, num_classes, 4)
        boxes = box_ops.clip_boxes_to_image(boxes, (hw[0], hw[1]))
        scores = F.softmax(class_logits, -1)
        labels = torch.arange(num_classes, device=boxes.device).view(1, -1).expand_as(scores)
        img = rois[:, 0].to(torch.int64)[:, None].expand_as(scores)
        boxes, scores = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
        labels, img = labels[:, 1:].reshape(-1), img[:, 1:].reshape(-1)
        keep = torch.where(scores > score_threshold)[0]
        boxes, scores, labels, img = boxes[keep], scores[keep], labels[keep], img[keep]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels, img = boxes[keep], scores[keep], labels[keep], img[keep]
        keep = box_ops.batched_nms(boxes, scores, img * num_classes + labels, rh.nms_thresh)
        keep = keep[keep_top_per_image(scores[keep], img[keep], max_detections, num_images)]
        keep = keep[scores[keep] > score_threshold]  # no-op, except OpenVINO's stray row when nothing passes
        return boxes[keep], scores[keep], labels[keep], img[keep]

    def _masks(self, features: dict[str, Tensor], boxes: Tensor, labels: Tensor, batch_index: Tensor,
               size: tuple[int, int]) -> Tensor:
        """``N x M x M`` mask probabilities of each detection's class."""
        rh = self.roi_heads
        rois = torch.cat([batch_index[:, None].to(boxes.dtype), boxes], 1)
        logits = rh.mask_predictor(rh.mask_head(multiscale_roi_align(rh.mask_roi_pool, features, rois, size)))
        n = torch._shape_as_tensor(labels)[0]
        return logits[torch.arange(_dim(n), device=labels.device), labels].sigmoid()


class DenseGraph(nn.Module):
    """A dense model's network with its input pipeline (normalise, resize, pad, crop back) and activation."""

    mean: Tensor
    std: Tensor
    net: nn.Module
    decoder: Any  # a dense decoder (maskkit.models.decoders)
    min_size: int | None
    max_size: int | None

    def __init__(self, model: Any, size_input: bool = False) -> None:
        super().__init__()
        self.size_input = size_input  # resized size as the input ``resized_size`` (see exact_size)
        inp = model.input
        self.register_buffer("mean", inp.mean[None].clone())
        self.register_buffer("std", inp.std[None].clone())
        self.stride, self.min_size, self.max_size = int(inp.stride), inp.min_size, inp.max_size
        self.net = model.net
        self.decoder = model.decoder
        self.output_stride = int(model.output_stride)

    def forward(self, images: Tensor, resized_size: Tensor | None = None) -> Tensor:
        hw = _hw(images)
        x = (images - self.mean) / self.std
        resized = resized_size if self.size_input else self._resized(hw)
        if resized is not None:
            x = F.interpolate(x, size=[_dim(resized[0]), _dim(resized[1])], mode="bilinear", align_corners=False)
        size = resized if resized is not None else hw
        logits = self.net(_pad_to_multiple(x, self.stride))
        if self.output_stride > 1:  # maps at the network's stride, cropped to ceil(size / stride); see from_maps
            s = self.output_stride
            return self.decoder.activate_maps(logits[:, :, : (size[0] + s - 1) // s, : (size[1] + s - 1) // s])
        logits = logits[:, :, : size[0], : size[1]]
        if resized is not None:
            logits = F.interpolate(logits, size=[_dim(hw[0]), _dim(hw[1])], mode="bilinear", align_corners=False)
        maps = self.decoder.activate_maps(logits)
        rescale = getattr(self.decoder, "rescale_maps", None)  # maps holding lengths in pixels (StarDist's rays)
        if rescale is not None and resized is not None:
            maps = rescale(maps, resize_factor(resized, hw))
        return maps

    def _resized(self, hw: Tensor) -> Tensor | None:
        """:func:`maskkit.models.encoders.resized_size` on tensors (None: no resize)."""
        a, b = self.min_size, self.max_size
        if a is None and b is None:
            return None
        lo, hi = hw.min(), hw.max()
        hwf = hw.to(torch.float64)
        if a is not None:
            num, den = torch.full_like(lo, int(a)), lo
            scale = _over(a, hwf.min())
        else:
            num, den = torch.ones_like(lo), torch.ones_like(lo)
            scale = torch.ones((), dtype=torch.float64)
        if b is not None:
            capped = hi * num > int(b) * den  # hi * scale > max_size
            num, den = torch.where(capped, int(b), num), torch.where(capped, hi, den)
            scale = torch.where(hwf.max() * scale > b, _over(b, hwf.max()), scale)
        out = exact_size((2 * hw * num + den) // (2 * den), torch.round(hwf * scale))  # round half up, then fixed
        return torch.clamp(out, min=1)
