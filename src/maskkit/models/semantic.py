"""Semantic segmentation models: ``{fcn,unet,deeplabv3,deeplabv3plus,pspnet}_{r18,r34,r50,mbv2,effl0}``.

U-Net, DeepLabV3, DeepLabV3+ and PSPNet are segmentation-models-pytorch architectures; FCN is
torchvision's ``FCNHead`` on the encoder's deepest (dilated, stride 16) features. Every network is
wrapped in :class:`SemanticSegmenter`, a :class:`~maskkit.models.dense.DenseSegmentationModel` that
normalises, pads to the network's stride and crops back; train mode returns :class:`SemanticLoss` terms
(:class:`~maskkit.models.losses.SegLoss` on class maps); eval mode returns ``sem_seg`` plus instances made of
the connected components of each foreground class (:class:`ComponentInstances`), so instance evaluation
works for semantic models too.

Builder options (besides the common ``pretrained_backbone``, ``in_channels``, ``min_size``, ``max_size``):
``encoder`` (override the name's encoder), ``loss`` (term -> weight, default ``{"ce": 1, "dice": 1}``),
``class_weights`` (K + 1 values, background first), ``min_area`` (smallest component kept as an
instance, default 4 px); anything else goes to the smp architecture (e.g. ``decoder_channels``,
``encoder_output_stride``; FCN takes ``encoder_output_stride`` 8, 16 or 32).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.fcn import FCNHead

from maskkit.errors import ConfigError
from maskkit.models.dense import DENSE_CAPABILITIES, DenseSegmentationModel, Targets, encoder_builder, semantic_batch
from maskkit.models.encoders import ENCODER_NAMES, ENCODERS, DenseInput, build_encoder, build_smp
from maskkit.models.losses import SegLoss
from maskkit.models.registry import register_model
from maskkit.structures.labels import IGNORE_INDEX

DEFAULT_LOSS: dict[str, float] = {"ce": 1.0, "dice": 1.0}

# family -> (smp architecture or None for FCN, default extra smp kwargs, description)
FAMILIES: dict[str, tuple[str | None, dict[str, Any], str]] = {
    "fcn": (None, {}, "FCN head on dilated stride-16 features"),
    "unet": ("Unet", {}, "U-Net decoder"),
    "deeplabv3": ("DeepLabV3", {"encoder_output_stride": 16}, "DeepLabV3 (ASPP, output stride 16)"),
    "deeplabv3plus": ("DeepLabV3Plus", {}, "DeepLabV3+ (ASPP + stride-4 decoder)"),
    "pspnet": ("PSPNet", {}, "PSPNet (pyramid pooling, output stride 8)"),
}


class FCN(nn.Module):
    """An smp encoder with torchvision's ``FCNHead`` on its deepest features, upsampled to the input size."""

    def __init__(
        self, encoder: str, classes: int, in_channels: int = 3, pretrained: bool = True, encoder_output_stride: int = 16
    ) -> None:
        super().__init__()
        if encoder_output_stride not in (8, 16, 32):
            raise ConfigError(f"encoder_output_stride must be 8, 16 or 32, got {encoder_output_stride}")
        self.encoder = build_encoder(encoder, in_channels, pretrained, output_stride=encoder_output_stride)
        self.head = FCNHead(cast("list[int]", self.encoder.out_channels)[-1], classes)
        self.stride = encoder_output_stride

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.encoder(x)[-1])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def instances_from_semantic(probs: Tensor, min_area: int = 4) -> dict[str, Tensor]:
    """Instances = 8-connected components of each foreground class of the argmax of (K+1) x H x W ``probs``.

    Returns ``boxes`` (XYXY pixel extents), ``labels`` (1..K), ``scores`` (mean class probability over the
    component) and ``instance_map`` (H x W int32, i + 1 = instance i), sorted by decreasing score;
    components smaller than ``min_area`` pixels are dropped.
    """
    import cv2

    p = probs.detach().float().cpu().numpy()
    classes = p.argmax(0)
    imap = np.zeros(classes.shape, dtype=np.int32)
    boxes, labels, scores = [], [], []
    for c in np.unique(classes):
        if c == 0:
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats((classes == c).astype(np.uint8), connectivity=8)
        areas = stats[:, cv2.CC_STAT_AREA]
        sums = np.bincount(comp.ravel(), weights=p[c].ravel(), minlength=n)
        keep = [j for j in range(1, n) if areas[j] >= min_area]
        lut = np.zeros(n, dtype=np.int32)
        for j in keep:
            x, y, w, h = stats[j, :4]
            boxes.append((x, y, x + w, y + h))
            labels.append(int(c))
            scores.append(sums[j] / areas[j])
            lut[j] = len(labels)
        imap += lut[comp]
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    remap = np.zeros(len(order) + 1, dtype=np.int32)
    remap[order + 1] = np.arange(1, len(order) + 1, dtype=np.int32)
    dev = probs.device
    return {
        "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[order], device=dev),
        "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64)[order], device=dev),
        "scores": torch.as_tensor(np.asarray(scores, dtype=np.float32)[order], device=dev),
        "instance_map": torch.as_tensor(remap[imap], device=dev),
    }


class SemanticLoss:
    """:class:`~maskkit.models.losses.SegLoss` terms (``loss`` term -> weight) of the targets' class maps
    (``semantic``, painted from the instances when absent), ``IGNORE_INDEX`` ignored."""

    def __init__(
        self, num_classes: int, loss: Mapping[str, float] | None = None, class_weights: Sequence[float] | None = None
    ) -> None:
        if class_weights is not None and len(class_weights) != num_classes + 1:
            n = len(class_weights)
            raise ConfigError(f"class_weights needs {num_classes + 1} values (background first), got {n}")
        self.num_classes = num_classes
        self.seg = SegLoss(loss or DEFAULT_LOSS, class_weights, IGNORE_INDEX)

    def __call__(self, logits: Tensor, targets: Targets, sizes: list[tuple[int, int]]) -> dict[str, Tensor]:
        return self.seg(logits, semantic_batch(targets, sizes, self.num_classes, logits))


class ComponentInstances:
    """Decoder of class logits: ``sem_seg`` probabilities plus instances from :func:`instances_from_semantic`."""

    def __init__(self, min_area: int = 4) -> None:
        self.min_area = int(min_area)

    def activate(self, logits: Tensor) -> Tensor:
        return self.from_maps(self.activate_maps(logits))

    def activate_maps(self, logits: Tensor) -> Tensor:
        """Class probabilities of ``[B x] (K+1) x H x W`` logits (also inside exported graphs)."""
        return logits.softmax(-3)

    def from_maps(self, maps: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """The raw maps of one image's :meth:`activate_maps` output (the probabilities themselves, already at
        the image ``size``)."""
        return maps

    def __call__(self, probs: Tensor) -> dict[str, Tensor]:
        return {**instances_from_semantic(probs, self.min_area), "sem_seg": probs}

    def export_spec(self) -> dict[str, Any]:
        """What :func:`maskkit.models.decoders.decoder_from_spec` needs to rebuild this decoder."""
        return {"decoder": "components", "min_area": self.min_area}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> ComponentInstances:
        return cls(int(spec["min_area"]))


class SemanticSegmenter(DenseSegmentationModel):
    """A per-pixel classifier over K + 1 classes (0 background): a dense model with :class:`SemanticLoss` and
    :class:`ComponentInstances`."""


def build_semantic(
    family: str,
    num_classes: int,
    encoder: str,
    *,
    pretrained_backbone: bool = True, in_channels: int = 3, min_size: int | None = None, max_size: int | None = None,
    loss: Mapping[str, float] | None = None,
    class_weights: Sequence[float] | None = None,
    min_area: int = 4,
    **options: Any,
) -> SemanticSegmenter:
    """A :class:`SemanticSegmenter` of ``family`` on ``encoder`` (see the module docstring for options)."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown semantic family {family!r}; known: {', '.join(FAMILIES)}")
    arch, defaults, _ = FAMILIES[family]
    classes = num_classes + 1
    kwargs = {**defaults, **options}
    if arch is None:
        unknown = sorted(set(kwargs) - {"encoder_output_stride"})
        if unknown:
            raise ConfigError(f"unknown option(s) for {family}: {unknown}")
        net: nn.Module = FCN(encoder, classes, in_channels, pretrained_backbone, **kwargs)
    else:
        net = build_smp(arch, encoder, classes, in_channels, pretrained_backbone, **kwargs)
    criterion = SemanticLoss(num_classes, loss, class_weights)
    dense_input = DenseInput.for_network(net, encoder, in_channels, min_size, max_size)
    return SemanticSegmenter(net, num_classes, dense_input, criterion, ComponentInstances(min_area))


OPTIONS = ("min_size", "max_size", "pretrained_backbone", "in_channels", "encoder", "loss", "class_weights", "min_area")
"""Named options of every semantic builder (anything else goes to the smp architecture)."""
CAPABILITIES: dict[str, Any] = {**DENSE_CAPABILITIES, "options": OPTIONS}

for _family in FAMILIES:
    for _encoder in ENCODERS:
        _doc = f"{FAMILIES[_family][2]} on {ENCODER_NAMES[_encoder]}."
        register_model(task="semantic", family=_family, **CAPABILITIES)(
            encoder_builder(partial(build_semantic, _family), f"{_family}_{_encoder}", _encoder, _doc))
