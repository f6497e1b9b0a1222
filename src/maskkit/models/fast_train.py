"""CPU training-speed options of the Mask R-CNN models (``model.speed`` in the config, see
:class:`maskkit.config.SpeedConfig`), applied to a built torchvision ``MaskRCNN``:

* ``roi_align: numba`` - :class:`FastMultiScaleRoIAlign`: the box and mask RoI pooling through the Numba
  channels-last kernels of :mod:`maskkit.models.cpu_kernels`, forward and backward
  (:class:`RoIAlignFunction`); same outputs as torchvision's, gradients equal up to float summation order.
* ``anchor_matching: numba`` - the RPN matches anchors to ground truth without the ``gt x anchors`` IoU
  matrix (:class:`FusedMatcher`), with torchvision's exact result.
* ``mask_targets: sampled`` - the RoI heads keep only the ground-truth masks (and labels) that the sampled
  RoIs matched before the mask loss turns masks into float crops (torchvision converts every mask of the image
  to float first: 0.5 GB for 369 nuclei at 512x685); the same targets (:func:`use_sampled_mask_targets`).
* ``backbone_norm: frozen`` - BatchNorm of the backbone body becomes a fixed affine (timm's
  ``FrozenBatchNorm2d``/``FrozenBatchNormAct2d``: ImageNet statistics, no batch statistics, no gradients),
  as torchvision's own detection backbones do. Changes training (batch statistics of 2 images are noisy).
* ``channels_last``: parameters in channels-last layout (mkldnn convolutions, and the Numba RoIAlign reads
  the features without a copy).
* ``separable_convs`` - the 3x3 convolutions of the FPN outputs and of the RPN head become a 3x3 depthwise
  convolution followed by a 1x1 one (:func:`use_separable_convs`), as in the light detectors of mobile
  backbones: at the stride-4 level these two convolutions are the largest cost of a step. Changes the model.

Each falls back to torchvision's code on other devices/dtypes and while tracing or exporting, so exports
and non-CPU runs are unchanged. The state dict keys are torchvision's (frozen norms drop
``num_batches_tracked``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

from maskkit.models.cpu_kernels import match_kernel, roi_align_kernels


def _exporting() -> bool:
    return bool(torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling())


def _nhwc(x: Tensor) -> Tensor:
    """``B x H x W x C`` contiguous view (a copy unless ``x`` is channels-last)."""
    return x.detach().permute(0, 2, 3, 1).contiguous()


class RoIAlignFunction(torch.autograd.Function):
    """Multi-level RoIAlign (``aligned=False``) with a backward, on the Numba kernels.

    ``apply(rois, levels, scales, output_size, sampling_ratio, *features)``: ``rois`` ``R x 5`` float32
    (batch index, x1, y1, x2, y2), ``levels`` the feature level of each RoI (int64), one ``scale`` per level,
    NCHW float32 CPU features (any memory layout). Returns ``R x C x oh x ow``; no gradient for the boxes
    (as torchvision's).
    """

    @staticmethod
    def forward(ctx: Any, rois: Tensor, levels: Tensor, scales: Sequence[float], output_size: tuple[int, int],
                sampling_ratio: int, *features: Tensor) -> Tensor:
        kernels = roi_align_kernels()
        assert kernels is not None
        out_h, out_w = output_size
        result = torch.zeros((len(rois), features[0].shape[1], out_h, out_w), dtype=torch.float32)
        rois_np, levels_np = rois.detach().contiguous().numpy(), levels.numpy()
        rows = [np.flatnonzero(levels_np == i) for i in range(len(features))]
        for feat, scale, idx in zip(features, scales, rows, strict=True):
            if len(idx):
                kernels[0](_nhwc(feat).numpy(), np.ascontiguousarray(rois_np[idx]), idx.astype(np.int64),
                           np.float32(scale), out_h, out_w, sampling_ratio, result.numpy())
        ctx.save_for_backward(rois)
        ctx.meta = (rows, scales, sampling_ratio, [f.shape for f in features])
        return result

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        kernels = roi_align_kernels()
        assert kernels is not None
        (rois,) = ctx.saved_tensors
        rows, scales, sampling_ratio, shapes = ctx.meta
        rois_np = rois.detach().contiguous().numpy()
        grad = grad_outputs[0].detach().float().permute(0, 2, 3, 1).contiguous().numpy()  # R x oh x ow x C
        grads: list[Tensor | None] = []
        for i, (shape, scale, idx) in enumerate(zip(shapes, scales, rows, strict=True)):
            if not ctx.needs_input_grad[5 + i]:
                grads.append(None)
                continue
            b, c, h, w = shape
            g = torch.zeros((b, h, w, c), dtype=torch.float32)
            if len(idx):
                kernels[1](grad, np.ascontiguousarray(rois_np[idx]), idx.astype(np.int64), np.float32(scale),
                           sampling_ratio, g.numpy())
            grads.append(g.permute(0, 3, 1, 2))  # NCHW shape, channels-last strides
        return (None, None, None, None, None, *grads)


class FastMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` computed by :class:`RoIAlignFunction` for float32 CPU features
    (training and inference); torchvision's own code otherwise (other devices, tracing, export)."""

    @classmethod
    def like(cls, pool: MultiScaleRoIAlign) -> FastMultiScaleRoIAlign:
        return cls(list(pool.featmap_names), pool.output_size, pool.sampling_ratio,
                   canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level)

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = [x[k] for k in self.featmap_names]
        if (roi_align_kernels() is None or _exporting()
                or any(f.device.type != "cpu" or f.dtype != torch.float32 for f in feats)
                or any(b.device.type != "cpu" or b.dtype != torch.float32 for b in boxes)):
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:  # torchvision infers the levels on first use
            super().forward(x, [b[:0] for b in boxes], image_shapes)
        assert self.scales is not None and self.map_levels is not None
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
        one_level = len(feats) == 1
        levels = torch.zeros(len(rois), dtype=torch.int64) if one_level else self.map_levels(boxes).to(torch.int64)
        size = (int(self.output_size[0]), int(self.output_size[1]))
        return RoIAlignFunction.apply(rois, levels, list(self.scales), size, int(self.sampling_ratio), *feats)


class AnchorPair:
    """``gt`` boxes and ``anchors`` standing in for their IoU matrix (the RPN's ``box_similarity`` result)."""

    def __init__(self, gt: Tensor, anchors: Tensor) -> None:
        self.gt, self.anchors = gt, anchors

    def matrix(self) -> Tensor:
        return box_ops.box_iou(self.gt, self.anchors)


def anchor_pair(gt: Tensor, anchors: Tensor) -> AnchorPair:
    """The RPN's ``box_similarity`` under :class:`FusedMatcher`: defers the IoU to the matcher."""
    return AnchorPair(gt, anchors)


class FusedMatcher(Matcher):
    """torchvision's ``Matcher`` that also takes an :class:`AnchorPair` and matches it by the fused Numba kernel
    (float32 CPU boxes) without storing the IoU matrix; the same matches as ``Matcher(box_iou(gt, anchors))``."""

    def __call__(self, match_quality_matrix: Tensor | AnchorPair) -> Tensor:
        if not isinstance(match_quality_matrix, AnchorPair):
            return super().__call__(match_quality_matrix)
        pair, kernel = match_quality_matrix, match_kernel()
        usable = all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (pair.gt, pair.anchors))
        if kernel is None or not usable or not len(pair.gt) or not len(pair.anchors):
            return super().__call__(pair.matrix())
        out = torch.empty(len(pair.anchors), dtype=torch.int64)
        kernel(pair.gt.detach().contiguous().numpy(), pair.anchors.detach().contiguous().numpy(),
               np.float32(self.high_threshold), np.float32(self.low_threshold), bool(self.allow_low_quality_matches),
               out.numpy())
        return out


def use_fast_roi_align(model: MaskRCNN) -> None:
    """Box and mask RoI pooling of ``model`` through :class:`FastMultiScaleRoIAlign`."""
    rh = model.roi_heads
    rh.box_roi_pool = FastMultiScaleRoIAlign.like(rh.box_roi_pool)
    if rh.mask_roi_pool is not None:
        rh.mask_roi_pool = FastMultiScaleRoIAlign.like(rh.mask_roi_pool)


def use_fused_anchor_matching(model: MaskRCNN) -> None:
    """The RPN of ``model`` matches anchors with :class:`FusedMatcher`."""
    m = model.rpn.proposal_matcher
    model.rpn.proposal_matcher = FusedMatcher(m.high_threshold, m.low_threshold, m.allow_low_quality_matches)
    model.rpn.box_similarity = anchor_pair


class SampledMaskRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` whose training-sample selection then keeps only the ground-truth masks and
    labels that the sampled RoIs matched, renumbering the matches into them (box targets are encoded by then),
    so that the mask loss converts a few masks to float instead of all of them."""

    def select_training_samples(self, proposals: list[Tensor], targets: list[dict[str, Tensor]] | None) -> Any:
        proposals, matched_idxs, labels, regression_targets = super().select_training_samples(proposals, targets)
        for i, t in enumerate(targets or []):
            masks = t.get("masks")
            if masks is None or not len(masks) or not len(matched_idxs[i]):
                continue
            used, matched_idxs[i] = torch.unique(matched_idxs[i], return_inverse=True)
            t["masks"], t["labels"] = masks[used], t["labels"][used]  # the transform's own copy of the target
        return proposals, matched_idxs, labels, regression_targets


def use_sampled_mask_targets(model: MaskRCNN) -> None:
    """The RoI heads of ``model`` become :class:`SampledMaskRoIHeads` (same state, same targets)."""
    if type(model.roi_heads) is RoIHeads and model.roi_heads.has_mask():
        model.roi_heads.__class__ = SampledMaskRoIHeads


def freeze_backbone_norm(model: nn.Module, backbone: str = "backbone.body") -> None:
    """Every BatchNorm of the backbone body at ``backbone`` becomes a frozen affine (timm's frozen norms keep
    the activation of its fused norm-activation layers)."""
    from timm.layers import freeze_batch_norm_2d

    parent, _, name = backbone.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    setattr(owner, name, freeze_batch_norm_2d(owner.get_submodule(name)))


def separable(conv: nn.Conv2d) -> nn.Sequential:
    """A depthwise convolution with ``conv``'s kernel, stride, padding and dilation, then a 1x1 convolution to
    its output channels (with its bias, if any); freshly initialised."""
    c_in = conv.in_channels
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    padding = conv.padding if isinstance(conv.padding, str) else (conv.padding[0], conv.padding[1])
    depthwise = nn.Conv2d(c_in, c_in, (kh, kw), (sh, sw), padding, (dh, dw), groups=c_in, bias=False,
                          padding_mode=conv.padding_mode)
    return nn.Sequential(depthwise, nn.Conv2d(c_in, conv.out_channels, 1, bias=conv.bias is not None))


def use_separable_convs(model: MaskRCNN) -> None:
    """Every dense 3x3 convolution of the FPN's output blocks and of the RPN head's shared convolution becomes
    :func:`separable` (the 1x1 lateral convolutions and the heads' predictors stay)."""
    fpn = getattr(model.backbone, "fpn", None)
    for owner in (getattr(fpn, "layer_blocks", None), model.rpn.head.conv):
        if owner is None:
            continue
        for name, child in list(owner.named_modules()):
            if isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3) and child.groups == 1:
                owner.set_submodule(name, separable(child))


def apply_speed_options(model: MaskRCNN, roi_align: str = "torchvision", anchor_matching: str = "torchvision",
                        mask_targets: str = "torchvision", backbone_norm: str = "batch",
                        channels_last: bool = False, separable_convs: bool = False) -> MaskRCNN:
    """Apply the ``model.speed`` options (see the module docstring) to a built Mask R-CNN; returns it."""
    if separable_convs:
        use_separable_convs(model)
    if backbone_norm == "frozen":
        freeze_backbone_norm(model)
    if roi_align == "numba":
        use_fast_roi_align(model)
    if anchor_matching == "numba":
        use_fused_anchor_matching(model)
    if mask_targets == "sampled":
        use_sampled_mask_targets(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model
