"""Mask R-CNN variants built from torchvision's detection modules (RPN, RoIAlign and heads reused).

One ``_create`` (``variant``, ``num_classes``, options) over a table of per-variant defaults
(:data:`VARIANTS`); the registered builders are one-line wrappers of it. Every builder takes
``num_classes`` (foreground only) and the options below, and returns a plain
``torchvision.models.detection.MaskRCNN``:

* ``min_size``/``max_size``: the internal resize of GeneralizedRCNNTransform;
* ``train_resize`` (True): also resize in train mode; False when the data pipeline resizes already
  (see :func:`set_train_resize`);
* ``anchor_sizes``: one size per FPN level (5 levels), aspect ratios 0.5/1/2;
* ``mask_resolution``: 28 (default) or 56 for finer boundaries (RoIAlign at 14 or 28, then x2);
* ``pretrained_backbone``: ImageNet backbone (offline for EfficientNet-Lite, a download for
  torchvision backbones: opt-in, never in tests); ``coco_weights``: torchvision's COCO Mask R-CNN
  (download, R50 models only);
* ``trainable_backbone_layers``: freeze all but N backbone stages;
* ``fpn_channels`` (EfficientNet-Lite0 only): width of the FPN and mask head;
* ``box_head_dim`` (None: 1024) and ``mask_head_convs`` (None: 4): a narrower box MLP, fewer mask-head convs;
* ``roi_align``, ``anchor_matching``, ``mask_targets``, ``backbone_norm``, ``channels_last``: CPU training-speed options
  (:mod:`maskkit.models.fast_train`, the config's ``model.speed``);
* anything else (``box_detections_per_img``, ``box_batch_size_per_image``, ...) goes to ``MaskRCNN``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, ResNet18_Weights, ResNet50_Weights
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection import mask_rcnn as tv
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from maskkit.errors import ConfigError
from maskkit.models.backbones import EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD, efficientnet_lite_fpn
from maskkit.models.fast_train import apply_speed_options
from maskkit.models.registry import BuilderT, InputSpec, register_model

DEFAULT_ANCHORS = (32, 64, 128, 256, 512)
FPN_LEVELS = ("0", "1", "2", "3")  # the FPN maps RoI pooling reads (strides 4-32)
COMMON_DEFAULTS: dict[str, Any] = {
    "min_size": 800,
    "max_size": 1333,
    "train_resize": True,
    "anchor_sizes": None,
    "mask_resolution": 28,
    "pretrained_backbone": False,
    "trainable_backbone_layers": None,
    "box_head_dim": None,
    "mask_head_convs": None,
    "roi_align": "torchvision",
    "anchor_matching": "torchvision",
    "mask_targets": "torchvision",
    "backbone_norm": "batch",
    "channels_last": False,
    "separable_convs": False,
}
"""Options of every variant and their defaults (a variant's own defaults override them)."""


def set_train_resize(model: GeneralizedRCNN, enabled: bool) -> None:
    """Whether ``model`` resizes its inputs to ``min_size``/``max_size`` in train mode too (torchvision's default).

    Off when the data pipeline already resizes (maskkit's trainer with ``augment.min_size``): training images
    then keep their (multi-scale) size; eval mode always resizes and maps the outputs back.
    """
    model.transform._skip_resize = not enabled  # torchvision's switch for exactly this


def _anchor_generator(anchor_sizes: tuple[int, ...] | list[int] | None) -> AnchorGenerator | None:
    """One anchor size per FPN level (5), aspect ratios 0.5/1/2; None: torchvision's default (the same for
    :data:`DEFAULT_ANCHORS`)."""
    if anchor_sizes is None:
        return None
    sizes = tuple(anchor_sizes)
    if len(sizes) != 5:
        raise ConfigError(f"anchor_sizes needs one size per FPN level (5), got {list(sizes)}")
    return AnchorGenerator(sizes=tuple((int(s),) for s in sizes), aspect_ratios=((0.5, 1.0, 2.0),) * 5)


def _mobilenet_anchors(anchor_sizes: tuple[int, ...] | list[int] | None) -> AnchorGenerator:
    """MobileNetV3's 3 maps ('0', '1', 'pool') each get the first three sizes (as torchvision's Faster R-CNN)."""
    sizes = tuple(anchor_sizes or DEFAULT_ANCHORS)
    return AnchorGenerator(sizes=((sizes[0], sizes[1], sizes[2]),) * 3, aspect_ratios=((0.5, 1.0, 2.0),) * 3)


def _roi_pools(levels: tuple[str, ...], mask_resolution: int) -> dict[str, MultiScaleRoIAlign]:
    if mask_resolution not in (28, 56):
        raise ConfigError(f"mask_resolution must be 28 or 56, got {mask_resolution}")
    pools = {"mask_roi_pool": MultiScaleRoIAlign(list(levels), output_size=mask_resolution // 2, sampling_ratio=2)}
    if levels != FPN_LEVELS:  # torchvision's default box pool reads the four FPN levels
        pools["box_roi_pool"] = MultiScaleRoIAlign(list(levels), output_size=7, sampling_ratio=2)
    return pools


Assemble = Callable[[int, dict[str, Any], dict[str, Any]], MaskRCNN]
"""``(num_classes, resolved options, MaskRCNN keyword arguments) -> model``."""


@dataclass(frozen=True)
class Variant:
    """One Mask R-CNN variant: how it is assembled and its defaults (over :data:`COMMON_DEFAULTS`)."""

    assemble: Assemble
    defaults: Mapping[str, Any] = field(default_factory=dict)
    levels: tuple[str, ...] = FPN_LEVELS
    anchors: Callable[[Any], AnchorGenerator | None] = _anchor_generator

    def options(self) -> dict[str, Any]:
        """Every named option of the variant with its default."""
        return {**COMMON_DEFAULTS, **self.defaults}


def _torchvision_r50(v2: bool) -> Assemble:
    """torchvision's own ResNet-50 builders (backbone, heads and optional COCO weights)."""

    def assemble(num_classes: int, o: dict[str, Any], kw: dict[str, Any]) -> MaskRCNN:
        if v2:
            builder, coco = tv.maskrcnn_resnet50_fpn_v2, tv.MaskRCNN_ResNet50_FPN_V2_Weights.DEFAULT
        else:
            builder, coco = tv.maskrcnn_resnet50_fpn, tv.MaskRCNN_ResNet50_FPN_Weights.DEFAULT
        trainable = o["trainable_backbone_layers"]
        if o["coco_weights"]:
            # Download COCO weights (opt-in), then replace the class-specific predictors for num_classes.
            model = builder(weights=coco, trainable_backbone_layers=trainable, **kw)
            _replace_predictors(model, num_classes)
            return model
        return builder(
            weights=None,
            weights_backbone=ResNet50_Weights.DEFAULT if o["pretrained_backbone"] else None,
            num_classes=num_classes + 1,
            trainable_backbone_layers=trainable,
            **kw,
        )

    return assemble


def _replace_predictors(model: MaskRCNN, num_classes: int) -> None:
    box_in = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(box_in, num_classes + 1)
    mask_in = model.roi_heads.mask_predictor.conv5_mask.in_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_in, 256, num_classes + 1)


def _on_backbone(
    backbone: Callable[[dict[str, Any]], nn.Module],
    heads: Callable[[int, dict[str, Any], dict[str, Any]], None] | None = None,
) -> Assemble:
    """``MaskRCNN`` on ``backbone(options)``; ``heads`` may add heads/normalisation to the kwargs first."""

    def assemble(num_classes: int, o: dict[str, Any], kw: dict[str, Any]) -> MaskRCNN:
        body = backbone(o)
        if heads is not None:
            heads(num_classes, o, kw)
        if "mask_predictor" in kw:  # custom predictors carry the class count themselves
            kw.setdefault("box_predictor", FastRCNNPredictor(1024, num_classes + 1))
            return MaskRCNN(body, num_classes=None, **kw)
        return MaskRCNN(body, num_classes=num_classes + 1, **kw)

    return assemble


def _resnet18_fpn(o: dict[str, Any]) -> nn.Module:
    return resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=ResNet18_Weights.DEFAULT if o["pretrained_backbone"] else None,
        norm_layer=nn.BatchNorm2d,
        trainable_layers=o["trainable_backbone_layers"],
    )


def _mobilenet_v3_fpn(o: dict[str, Any]) -> nn.Module:
    return mobilenet_backbone(
        backbone_name="mobilenet_v3_large",
        weights=MobileNet_V3_Large_Weights.DEFAULT if o["pretrained_backbone"] else None,
        fpn=True,
        norm_layer=nn.BatchNorm2d,
        trainable_layers=o["trainable_backbone_layers"],
    )


def _effl0_fpn(o: dict[str, Any]) -> nn.Module:
    return efficientnet_lite_fpn(0, o["pretrained_backbone"], o["fpn_channels"], o["trainable_backbone_layers"])


def _effl0_heads(num_classes: int, o: dict[str, Any], kw: dict[str, Any]) -> None:
    """TF-style input normalisation and a light mask head matching the FPN width (torchvision's assumes 256)."""
    c = o["fpn_channels"]
    kw.setdefault("image_mean", list(EFFICIENTNET_LITE_MEAN))
    kw.setdefault("image_std", list(EFFICIENTNET_LITE_STD))
    kw.setdefault("mask_head", MaskRCNNHeads(c, [c] * 4, 1))
    kw.setdefault("mask_predictor", MaskRCNNPredictor(c, c, num_classes + 1))


VARIANTS: dict[str, Variant] = {
    "maskrcnn_r50_fpn": Variant(_torchvision_r50(v2=False), {"coco_weights": False}),
    "maskrcnn_r50_fpn_v2": Variant(_torchvision_r50(v2=True), {"coco_weights": False}),
    "maskrcnn_r18_fpn": Variant(_on_backbone(_resnet18_fpn), {"trainable_backbone_layers": 5}),
    "maskrcnn_mobilenet_v3_fpn": Variant(
        _on_backbone(_mobilenet_v3_fpn),
        {"min_size": 512, "max_size": 853, "trainable_backbone_layers": 6},
        levels=("0", "1"),  # this backbone returns 3 maps ('0', '1', 'pool'): RoIs follow its levels
        anchors=_mobilenet_anchors,
    ),
    "maskrcnn_effl0_fpn": Variant(
        _on_backbone(_effl0_fpn, _effl0_heads),
        {"min_size": 512, "max_size": 853, "pretrained_backbone": True, "fpn_channels": 128},
    ),
}
"""Per-variant assembly and defaults; the keys are the registered model names."""


def _create(variant: str, num_classes: int, **cfg: Any) -> MaskRCNN:
    """Mask R-CNN ``variant`` (a :data:`VARIANTS` key) for ``num_classes`` foreground classes.

    ``cfg``: the variant's named options (see the module docstring) over its defaults; any other keyword
    goes to ``MaskRCNN``.
    """
    spec = VARIANTS[variant]
    o = spec.options()
    extra = {k: v for k, v in cfg.items() if k not in o}
    o.update({k: v for k, v in cfg.items() if k in o})
    kw: dict[str, Any] = {"min_size": o["min_size"], "max_size": o["max_size"]}
    kw.update(_roi_pools(spec.levels, o["mask_resolution"]))
    anchors = spec.anchors(o["anchor_sizes"])
    if anchors is not None:
        kw["rpn_anchor_generator"] = anchors
    kw.update(extra)
    model = spec.assemble(num_classes, o, kw)
    set_train_resize(model, bool(o["train_resize"]))
    _resize_heads(model, o["box_head_dim"], o["mask_head_convs"])
    return apply_speed_options(model, roi_align=o["roi_align"], anchor_matching=o["anchor_matching"],
                               mask_targets=o["mask_targets"], backbone_norm=o["backbone_norm"],
                               channels_last=bool(o["channels_last"]), separable_convs=bool(o["separable_convs"]))


def _resize_heads(model: MaskRCNN, box_head_dim: int | None, mask_head_convs: int | None) -> None:
    """A ``box_head_dim``-wide two-layer box MLP and/or ``mask_head_convs`` mask-head convolutions (same width);
    None keeps the variant's head."""
    rh = model.roi_heads
    if box_head_dim is not None:
        if box_head_dim < 1:
            raise ConfigError(f"box_head_dim must be positive, got {box_head_dim}")
        fc6 = rh.box_head.fc6
        rh.box_head = TwoMLPHead(fc6.in_features, box_head_dim)
        rh.box_predictor = FastRCNNPredictor(box_head_dim, rh.box_predictor.cls_score.out_features)
    if mask_head_convs is not None and rh.mask_head is not None:
        if mask_head_convs < 1:
            raise ConfigError(f"mask_head_convs must be positive, got {mask_head_convs}")
        convs = [m for m in rh.mask_head.modules() if isinstance(m, nn.Conv2d)]
        width = convs[-1].out_channels
        if width != rh.mask_predictor.conv5_mask.in_channels:
            raise ConfigError("mask_head_convs: the mask head's width does not match its predictor")
        rh.mask_head = MaskRCNNHeads(convs[0].in_channels, [width] * mask_head_convs, convs[0].dilation[0])


MASKRCNN_CAPABILITIES: dict[str, Any] = {
    "backbone": "backbone.body",
    "resizes_internally": True,
    "input": InputSpec(channels=3, size_divisor=32),
}
"""Capabilities shared by every Mask R-CNN-based model (options come from the variant)."""


def _register(variant: str, family: str = "maskrcnn") -> Callable[[BuilderT], BuilderT]:
    return register_model(task="instance", family=family, options=VARIANTS[variant].options(),
                          **MASKRCNN_CAPABILITIES)


@_register("maskrcnn_r50_fpn")
def maskrcnn_r50_fpn(num_classes: int, **cfg: Any) -> MaskRCNN:
    """Mask R-CNN, ResNet-50 + FPN (He et al. 2017), torchvision's reference architecture."""
    return _create("maskrcnn_r50_fpn", num_classes, **cfg)


@_register("maskrcnn_r50_fpn_v2")
def maskrcnn_r50_fpn_v2(num_classes: int, **cfg: Any) -> MaskRCNN:
    """Mask R-CNN v2, ResNet-50 + FPN with normalised heads (Li et al. 2021 recipe)."""
    return _create("maskrcnn_r50_fpn_v2", num_classes, **cfg)


@_register("maskrcnn_r18_fpn")
def maskrcnn_r18_fpn(num_classes: int, **cfg: Any) -> MaskRCNN:
    """Mask R-CNN, ResNet-18 + FPN: a lighter ResNet for CPUs and small data."""
    return _create("maskrcnn_r18_fpn", num_classes, **cfg)


@_register("maskrcnn_mobilenet_v3_fpn")
def maskrcnn_mobilenet_v3_fpn(num_classes: int, **cfg: Any) -> MaskRCNN:
    """Mask R-CNN, MobileNetV3-Large + FPN (two feature levels, as torchvision's Faster R-CNN variant)."""
    return _create("maskrcnn_mobilenet_v3_fpn", num_classes, **cfg)


@_register("maskrcnn_effl0_fpn")
def maskrcnn_effl0_fpn(num_classes: int, **cfg: Any) -> MaskRCNN:
    """Mask R-CNN, EfficientNet-Lite0 + GroupNorm FPN; ImageNet backbone offline (PyPI wheel)."""
    return _create("maskrcnn_effl0_fpn", num_classes, **cfg)
