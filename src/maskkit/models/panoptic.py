"""Panoptic FPN (Kirillov et al. 2019): Mask R-CNN plus a semantic FPN head on the same backbone.

The detector is built by the Mask R-CNN builders of :mod:`maskkit.models.maskrcnn` (every option of
theirs is accepted) and wrapped by :class:`PanopticFPN`, which computes the FPN features once and
feeds them to the RPN, the RoI heads and :class:`SemanticFPNHead`. Extra builder options:

* ``semantic_weight`` (0.5): weight of ``loss_semantic`` in the joint loss (the paper uses 0.5-1.0);
* ``semantic_loss``: ``"ce"`` (cross-entropy, ignore 255), ``"ce+dice"``, any ``+``-joined terms of
  :class:`~maskkit.models.losses.SegLoss` (``ce``, ``dice``, ``focal``, ``boundary``, ``mse``) or a
  ``{term: weight}`` mapping; their sum is ``loss_semantic``;
* ``semantic_class_weights``: K + 1 per-class weights (background first) for the CE-based terms;
* ``semantic_channels`` (128): width of the semantic head.

Train mode returns torchvision's losses plus ``loss_semantic`` (already weighted); the semantic
target (``targets[i]["semantic"]``, or painted from masks/labels when absent) follows the images
through the internal resize (nearest) and padding (255). Eval mode adds ``sem_seg``, the
``(K+1) x H x W`` class probabilities at the input image size, to torchvision's detections.
State-dict keys are Mask R-CNN's plus ``semantic_head.*``, so Mask R-CNN weights load into it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from maskkit.errors import ConfigError
from maskkit.models import maskrcnn as mrcnn
from maskkit.models.losses import SegLoss
from maskkit.models.registry import BuilderT, register_model
from maskkit.models.targets import checked_semantic_target
from maskkit.structures.labels import IGNORE_INDEX

SEMANTIC_OPTIONS = ("semantic_weight", "semantic_loss", "semantic_channels", "semantic_class_weights")
FEATURE_LEVELS = ("0", "1", "2", "3")  # FPN P2-P5 (strides 4-32) of the torchvision/timm FPN backbones


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch: P2-P5 brought to 1/4 scale, summed, classified.

    Level ``i`` (stride ``4 * 2**i``) goes through ``max(i, 1)`` stages of conv3x3 + GroupNorm + ReLU,
    each followed by a 2x bilinear upsampling for ``i > 0``; a 1x1 conv predicts ``num_classes`` logits
    at the stride of P2.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 128, num_levels: int = 4) -> None:
        super().__init__()
        groups = math.gcd(32, channels)
        self.levels = nn.ModuleList()
        for level in range(num_levels):
            stages: list[nn.Module] = []
            for k in range(max(level, 1)):
                stages += [
                    nn.Conv2d(in_channels if k == 0 else channels, channels, 3, padding=1, bias=False),
                    nn.GroupNorm(groups, channels),
                    nn.ReLU(inplace=True),
                ]
                if level > 0:
                    stages.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False))
            self.levels.append(nn.Sequential(*stages))
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.predictor.weight, std=0.001)
        assert self.predictor.bias is not None  # built with a bias
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Logits ``B x num_classes x h x w`` at the resolution of ``features[0]``."""
        out: Tensor | None = None
        for head, feature in zip(self.levels, features, strict=True):
            x = head(feature)
            if out is None:
                out = x
                continue
            if x.shape[-2:] != out.shape[-2:]:  # odd sizes: align on the finest level
                x = F.interpolate(x, size=out.shape[-2:], mode="bilinear", align_corners=False)
            out = out + x
        assert out is not None
        return self.predictor(out)


def batch_semantic_targets(
    semantics: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]], padded_size: tuple[int, int]
) -> Tensor:
    """Stack per-image class maps as the detection transform batched the images.

    Each map is resized (nearest) to its image's size after the internal resize, then padded
    bottom/right with ``IGNORE_INDEX`` to ``padded_size``; returns ``B x H x W`` int64.
    """
    out = torch.full((len(semantics), *padded_size), IGNORE_INDEX, dtype=torch.int64, device=semantics[0].device)
    for i, (sem, (h, w)) in enumerate(zip(semantics, image_sizes, strict=True)):
        if tuple(sem.shape[-2:]) != (h, w):
            sem = F.interpolate(sem[None, None].float(), size=(h, w), mode="nearest")[0, 0]
        out[i, :h, :w] = sem.to(torch.int64)
    return out


def semantic_criterion(
    semantic_loss: str | Mapping[str, float] = "ce", class_weights: Sequence[float] | None = None
) -> SegLoss:
    """The :class:`~maskkit.models.losses.SegLoss` of ``semantic_loss``: ``"ce"``, ``"ce+dice"``... or ``{term: w}``."""
    if isinstance(semantic_loss, str):
        semantic_loss = {term.strip(): 1.0 for term in semantic_loss.split("+")}
    return SegLoss(semantic_loss, class_weights, IGNORE_INDEX)


class PanopticFPN(MaskRCNN):
    """A Mask R-CNN (its backbone, RPN, RoI heads and transform, shared) plus a semantic FPN head.

    ``detector``'s ``backbone`` must return FPN levels ``'0'..'3'`` at strides 4-32 (torchvision
    ResNet-FPN, :class:`~maskkit.models.backbones.TimmFPNBackbone`).
    """

    def __init__(
        self,
        detector: MaskRCNN,
        num_classes: int,
        semantic_weight: float = 0.5,
        semantic_loss: str | Mapping[str, float] = "ce",
        semantic_channels: int = 128,
        semantic_class_weights: Sequence[float] | None = None,
    ) -> None:
        criterion = _semantic_options(num_classes, semantic_weight, semantic_loss, semantic_class_weights)
        # Adopt the built detector's modules (MaskRCNN.__init__ would build new ones).
        GeneralizedRCNN.__init__(self, detector.backbone, detector.rpn, detector.roi_heads, detector.transform)
        self.semantic_head = SemanticFPNHead(detector.backbone.out_channels, num_classes + 1, semantic_channels)
        self.num_classes = num_classes
        self.semantic_weight = float(semantic_weight)
        self.criterion = criterion

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (train mode, ``targets`` required) or per-image detections + ``sem_seg`` (eval mode)."""
        if self.training and targets is None:
            raise ValueError("targets are required in train mode")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        semantics = None
        if self.training and targets is not None:  # (not None in training: checked above)
            semantics = [checked_semantic_target(t, size, self.num_classes)
                         for t, size in zip(targets, original_sizes, strict=True)]
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        proposals, proposal_losses = self.rpn(image_list, features, targets)
        detections, detector_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        padded = (int(image_list.tensors.shape[-2]), int(image_list.tensors.shape[-1]))
        logits = self.semantic_head([features[k] for k in FEATURE_LEVELS])
        logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
        if self.training:
            assert semantics is not None
            sem = batch_semantic_targets(semantics, image_list.image_sizes, padded)
            loss = sum(self.criterion(logits, sem).values())
            return {**proposal_losses, **detector_losses, "loss_semantic": self.semantic_weight * loss}
        detections = self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
        for det, logit, (h, w), size in zip(detections, logits, image_list.image_sizes, original_sizes, strict=True):
            crop = logit[None, :, :h, :w]
            if (h, w) != size:
                crop = F.interpolate(crop, size=size, mode="bilinear", align_corners=False)
            det["sem_seg"] = crop[0].softmax(0)
        return detections



def _semantic_options(
    num_classes: int,
    semantic_weight: float,
    semantic_loss: str | Mapping[str, float],
    semantic_class_weights: Sequence[float] | None,
) -> SegLoss:
    """Check the semantic options; returns the criterion."""
    if semantic_weight < 0:
        raise ConfigError(f"semantic_weight must be >= 0, got {semantic_weight}")
    if semantic_class_weights is not None and len(semantic_class_weights) != num_classes + 1:
        n = len(semantic_class_weights)
        raise ConfigError(f"semantic_class_weights needs {num_classes + 1} values (background first), got {n}")
    return semantic_criterion(semantic_loss, semantic_class_weights)


def _panoptic(build_detector: Callable[..., MaskRCNN], num_classes: int, options: dict[str, Any]) -> PanopticFPN:
    """Split ``options`` into the semantic ones and the detector builder's, check, build and wrap."""
    semantic = {k: options.pop(k) for k in SEMANTIC_OPTIONS if k in options}
    _semantic_options(
        num_classes,
        semantic.get("semantic_weight", 0.5),
        semantic.get("semantic_loss", "ce"),
        semantic.get("semantic_class_weights"),
    )  # before the (slow) detector build
    return PanopticFPN(build_detector(num_classes, **options), num_classes, **semantic)


def _register(variant: str) -> Callable[[BuilderT], BuilderT]:
    """Registered as an instance model with the Mask R-CNN ``variant``'s capabilities plus the semantic options."""
    options = {*mrcnn.VARIANTS[variant].options(), *SEMANTIC_OPTIONS}
    return register_model(task="instance", family="panoptic", options=options, semantic_targets=True,
                          **mrcnn.MASKRCNN_CAPABILITIES)


@_register("maskrcnn_effl0_fpn")
def panoptic_fpn_effl0(num_classes: int, **options: Any) -> PanopticFPN:
    """Panoptic FPN, EfficientNet-Lite0 Mask R-CNN + semantic FPN head; ImageNet backbone offline."""
    return _panoptic(mrcnn.maskrcnn_effl0_fpn, num_classes, options)


@_register("maskrcnn_r50_fpn")
def panoptic_fpn_r50(num_classes: int, **options: Any) -> PanopticFPN:
    """Panoptic FPN, ResNet-50 Mask R-CNN (torchvision, optional COCO weights) + semantic FPN head."""
    return _panoptic(mrcnn.maskrcnn_r50_fpn, num_classes, options)


@_register("maskrcnn_r18_fpn")
def panoptic_fpn_r18(num_classes: int, **options: Any) -> PanopticFPN:
    """Panoptic FPN, ResNet-18 Mask R-CNN + semantic FPN head: light, for CPUs and small data."""
    return _panoptic(mrcnn.maskrcnn_r18_fpn, num_classes, options)
