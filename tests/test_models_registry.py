"""Registry capabilities drive ``build_model``; the Mask R-CNN variant table keeps each model's layout and defaults;
config overrides merge as dicts and validate once."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from maskkit.config import TrainConfig, load_config, merge_overrides
from maskkit.engine.api import resolve_config
from maskkit.errors import ConfigError
from maskkit.models import create, list_models, model_info
from maskkit.models.factory import build_model, uses_semantic_targets
from maskkit.models.maskrcnn import VARIANTS


def _layout(model: torch.nn.Module) -> tuple[int, int, str]:
    sd = model.state_dict()
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(sd.items()))
    return len(sd), sum(math.prod(v.shape) for v in sd.values()), hashlib.sha256(lines.encode()).hexdigest()[:16]


@pytest.mark.parametrize(("name", "expected"), [
    ("maskrcnn_r18_fpn", (162, 30921717, "43de8d16dbcb49bb")),
    ("maskrcnn_effl0_fpn", (338, 11948145, "0036fb6c1b943e75")),
])
def test_maskrcnn_variants_keep_their_state_dict_layout(name: str, expected: tuple[int, int, str]) -> None:
    """Key count, element count and a digest of every key:shape as built before the variant table (old checkpoints
    load)."""
    assert _layout(create(name, num_classes=2, pretrained_backbone=False)) == expected


def test_maskrcnn_variant_default_options() -> None:
    common = {"min_size": 800, "max_size": 1333, "train_resize": True, "anchor_sizes": None, "mask_resolution": 28,
              "pretrained_backbone": False, "trainable_backbone_layers": None,
              # model.speed (maskkit.models.fast_train): torchvision's behaviour by default
              "box_head_dim": None, "mask_head_convs": None, "roi_align": "torchvision",
              "anchor_matching": "torchvision", "mask_targets": "torchvision", "backbone_norm": "batch",
              "channels_last": False, "separable_convs": False}
    light = {"min_size": 512, "max_size": 853}
    assert VARIANTS["maskrcnn_r50_fpn"].options() == {**common, "coco_weights": False}
    assert VARIANTS["maskrcnn_r50_fpn_v2"].options() == {**common, "coco_weights": False}
    assert VARIANTS["maskrcnn_r18_fpn"].options() == {**common, "trainable_backbone_layers": 5}
    assert VARIANTS["maskrcnn_mobilenet_v3_fpn"].options() == {**common, **light, "trainable_backbone_layers": 6}
    assert VARIANTS["maskrcnn_effl0_fpn"].options() == {**common, **light, "pretrained_backbone": True,
                                                        "fpn_channels": 128}
    model = create("maskrcnn_mobilenet_v3_fpn", num_classes=2)
    assert (model.transform.min_size, model.transform.max_size) == ((512,), 853)
    assert model.roi_heads.mask_roi_pool.featmap_names == ["0", "1"]


def test_capabilities_per_family() -> None:
    by_family = {}
    for info in list_models():
        by_family.setdefault(info.family, set()).add(info.capabilities)
    assert set(by_family) == {"maskrcnn", "panoptic", "bottomup", "fcn", "unet", "deeplabv3", "deeplabv3plus", "pspnet"}
    for family, caps_set in by_family.items():
        for caps in caps_set:
            detection = family in ("maskrcnn", "panoptic")
            assert caps.resizes_internally is detection
            assert caps.accepts("anchor_sizes") is detection and caps.accepts("mask_resolution") is detection
            assert caps.semantic_targets is (family != "maskrcnn")
            assert caps.backbone == ("backbone.body" if detection else "net.encoder")
            assert caps.input.channels == (3 if detection else None)
    assert model_info("panoptic_fpn_r18").capabilities.accepts("semantic_weight")
    assert model_info("maskrcnn_r50_fpn").capabilities.accepts("coco_weights")
    assert not model_info("maskrcnn_r18_fpn").capabilities.accepts("coco_weights")


def _cfg(name: str, **model: object) -> TrainConfig:
    return TrainConfig.model_validate({"model": {"name": name, "pretrained_backbone": False, **model},
                                       "augment": {"min_size": [64], "max_size": 96}})


def test_build_model_follows_capabilities() -> None:
    assert not uses_semantic_targets(_cfg("maskrcnn_r18_fpn"))
    assert uses_semantic_targets(_cfg("panoptic_fpn_r18")) and uses_semantic_targets(_cfg("bottomup_r18"))
    image = torch.rand(3, 40, 60)
    # The data pipeline resizes (augment.min_size): the model keeps training images at their size ...
    model = build_model(_cfg("maskrcnn_r18_fpn", mask_resolution=56), 2).train()
    assert model.transform([image])[0].image_sizes == [(40, 60)]
    assert model.roi_heads.mask_roi_pool.output_size == (28, 28)
    # ... and resizes them itself when it does not.
    cfg = _cfg("maskrcnn_r18_fpn")
    cfg.augment.min_size = []
    assert build_model(cfg, 2).train().transform([image])[0].image_sizes == [(64, 96)]
    # Dense models get in_channels, not the detection options.
    cfg = _cfg("unet_r18", freeze_backbone=True)
    cfg.augment.channels = 1
    unet = build_model(cfg, 2)
    assert unet.input.mean.shape[0] == 1
    assert not any(p.requires_grad for p in unet.net.encoder.parameters())
    assert all(p.requires_grad for p in unet.net.decoder.parameters())
    with pytest.raises(ConfigError, match="trainable_backbone_layers applies to detection models"):
        build_model(_cfg("unet_r18", trainable_backbone_layers=2), 2)


def test_overrides_merge_as_dicts_and_validate_once() -> None:
    data = {"model": {"name": "unet_r18", "options": {"min_area": 3}}, "schedule": {"epochs": 2}}
    merged = merge_overrides(data, {"model.options.encoder": "r34", "schedule.epochs": 5, "data.batch_size": None,
                                    "optim.lr": 0.01})
    assert merged == {"model": {"name": "unet_r18", "options": {"min_area": 3, "encoder": "r34"}},
                      "schedule": {"epochs": 5}, "optim": {"lr": 0.01}}
    assert data["schedule"]["epochs"] == 2 and "encoder" not in data["model"]["options"]  # input untouched
    cfg = resolve_config(data, {"schedule.epochs": 5})
    assert cfg.schedule.epochs == 5 and cfg == resolve_config(TrainConfig.model_validate(data), {"schedule.epochs": 5})
    assert cfg == load_config(None, {"model.name": "unet_r18", "model.options.min_area": 3, "schedule.epochs": 5})
    with pytest.raises(ConfigError, match="'epochs' is not a section"):
        merge_overrides(data, {"schedule.epochs.x": 1})
    with pytest.raises(ConfigError, match="invalid config"):
        resolve_config(data, {"schedule.epochs": 0})
