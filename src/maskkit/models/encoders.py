"""Encoders and input handling shared by every dense (per-pixel) model.

* :data:`ENCODERS` maps maskkit's short encoder names to segmentation-models-pytorch (smp) names;
  :func:`build_smp` builds an smp architecture on one of them (ImageNet weights: offline for
  EfficientNet-Lite0, an opt-in download for the others).
* :func:`encoder_norm` gives the mean/std the encoder's weights expect, for any channel count.
* :func:`encoder_stride` is the size divisor a network needs; :class:`DenseInput` normalises a list
  of images, optionally resizes them (eval only), pads them into one batch and maps outputs back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskkit.errors import ConfigError
from maskkit.models.backbones import EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD, load_efficientnet_lite_imagenet

ENCODERS: dict[str, str] = {
    "r18": "resnet18",
    "r34": "resnet34",
    "r50": "resnet50",
    "mbv2": "mobilenet_v2",
    "effl0": "tu-tf_efficientnet_lite0",
}
ENCODER_NAMES: dict[str, str] = {
    "r18": "ResNet-18",
    "r34": "ResNet-34",
    "r50": "ResNet-50",
    "mbv2": "MobileNetV2",
    "effl0": "EfficientNet-Lite0 (ImageNet weights offline)",
}
"""Human names of the short encoder names (registry descriptions)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def smp_encoder_name(encoder: str) -> str:
    """The smp name of ``encoder`` (a short name from :data:`ENCODERS` or already an smp name)."""
    if encoder in ENCODERS:
        return ENCODERS[encoder]
    if encoder in ENCODERS.values():
        return encoder
    raise ConfigError(f"unknown encoder {encoder!r}; known: {', '.join(ENCODERS)}")


def _is_effl0(encoder: str) -> bool:
    return smp_encoder_name(encoder) == ENCODERS["effl0"]


def _adapt_offline(encoder: nn.Module, encoder_name: str, in_channels: int, pretrained: bool) -> None:
    """Load EfficientNet-Lite0's packaged ImageNet weights into an smp encoder built with 3 channels,
    then adapt its first conv to ``in_channels`` the way smp does (summed for 1, repeated and rescaled for more)."""
    from segmentation_models_pytorch.encoders._utils import patch_first_conv

    if pretrained and _is_effl0(encoder_name):
        load_efficientnet_lite_imagenet(cast(nn.Module, encoder.model))
        if in_channels != 3:
            patch_first_conv(encoder, new_in_channels=in_channels, pretrained=True)


def _build_args(encoder: str, in_channels: int, pretrained: bool) -> tuple[str, str | None, int]:
    """(smp encoder name, smp ``encoder_weights``, channels to build with)."""
    if in_channels < 1:
        raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
    name = smp_encoder_name(encoder)
    offline = _is_effl0(name)
    weights = "imagenet" if pretrained and not offline else None
    return name, weights, 3 if pretrained and offline else in_channels


def build_smp(
    arch: str, encoder: str, classes: int, in_channels: int = 3, pretrained: bool = True, **kwargs: Any
) -> nn.Module:
    """An smp model ``arch`` ("Unet", "DeepLabV3", "DeepLabV3Plus", "PSPNet", ...) on ``encoder``.

    ``pretrained``: EfficientNet-Lite0 loads the packaged ImageNet weights offline; other encoders
    download smp's ImageNet weights (opt-in). With ``in_channels != 3`` the pretrained first conv is
    adapted the way smp does it (summed for 1 channel, repeated and rescaled for more). The BatchNorm
    of DeepLab's image-pooling branch becomes GroupNorm so that batches of one image train.
    """
    import segmentation_models_pytorch as smp

    name, weights, channels = _build_args(encoder, in_channels, pretrained)
    try:
        model = smp.create_model(
            arch, encoder_name=name, encoder_weights=weights, in_channels=channels, classes=classes, **kwargs
        )
    except KeyError as exc:
        raise ConfigError(f"unknown smp architecture {arch!r}: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"bad option for {arch}: {exc}") from None
    _adapt_offline(model.encoder, name, in_channels, pretrained)
    _groupnorm_image_pooling(model)
    return model


def _groupnorm_image_pooling(model: nn.Module) -> None:
    """Swap the BatchNorm after ASPP's global average pool for GroupNorm: on a 1 x 1 map BatchNorm fails
    with one image per batch in training (and is noisy with few). Those layers are never pretrained."""
    from segmentation_models_pytorch.decoders.deeplabv3.decoder import ASPPPooling

    for module in model.modules():
        if isinstance(module, ASPPPooling):
            for i, layer in enumerate(module):
                if isinstance(layer, nn.BatchNorm2d):
                    module[i] = nn.GroupNorm(math.gcd(32, layer.num_features), layer.num_features)


def build_encoder(
    encoder: str, in_channels: int = 3, pretrained: bool = True, depth: int = 5, output_stride: int = 32
) -> nn.Module:
    """An smp feature encoder alone (``forward(x) -> [x, stride-2 ... stride-2**depth features]``,
    ``out_channels``, ``output_stride``), with the same weight handling as :func:`build_smp`."""
    from segmentation_models_pytorch.encoders import get_encoder

    name, weights, channels = _build_args(encoder, in_channels, pretrained)
    enc = get_encoder(name, in_channels=channels, depth=depth, weights=weights, output_stride=output_stride)
    _adapt_offline(enc, name, in_channels, pretrained)
    return enc


def encoder_norm(encoder: str, in_channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per input channel for ``encoder`` on [0, 1] images.

    TF-style (x - 0.5) / 0.5 for EfficientNet-Lite, ImageNet statistics otherwise; one channel uses
    the mean of the three, more than three repeat them cyclically (matching the first-conv adaptation).
    """
    mean, std = (EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD) if _is_effl0(encoder) else (IMAGENET_MEAN, IMAGENET_STD)
    if in_channels == 1:
        return (sum(mean) / 3,), (sum(std) / 3,)
    return tuple(mean[i % 3] for i in range(in_channels)), tuple(std[i % 3] for i in range(in_channels))


def encoder_stride(model: nn.Module) -> int:
    """The divisor input sides must be padded to for ``model``.

    A ``stride`` attribute wins; smp models that check their input shape need a multiple of the
    encoder's output stride (8 for DeepLabV3/PSPNet, 16 for DeepLabV3+); others (U-Net, FPN, ...)
    get a multiple of 2**depth (32) so every skip connection aligns exactly.
    """
    stride = getattr(model, "stride", None)
    if isinstance(stride, int):
        return stride
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        return 32
    if getattr(model, "requires_divisible_input_shape", True) and hasattr(encoder, "output_stride"):
        return int(encoder.output_stride)
    return 2 ** int(getattr(encoder, "_depth", 5))


def pad_batch(images: Sequence[Tensor], stride: int, fill: float = 0.0) -> tuple[Tensor, list[tuple[int, int]]]:
    """Stack C x H x W images into B x C x H' x W' (sides rounded up to ``stride``), padding
    bottom/right with ``fill`` (0 = the mean once normalised). Returns the batch and each (h, w)."""
    if not images:
        raise ValueError("pad_batch needs at least one image")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    h = -(-max(s[0] for s in sizes) // stride) * stride
    w = -(-max(s[1] for s in sizes) // stride) * stride
    return pad_to(images, (h, w), fill), sizes


def pad_to(images: Sequence[Tensor], size: tuple[int, int], fill: float = 0.0) -> Tensor:
    """Stack C x h x w maps into B x C x H x W (``size``), padding bottom/right with ``fill``."""
    first = images[0]
    batch = first.new_full((len(images), first.shape[0], *size), fill)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]] = im
    return batch


def crop_batch(outputs: Tensor, sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Undo :func:`pad_batch`: each ``outputs[i]`` (... x H' x W') cropped to ``sizes[i]``."""
    return [outputs[i, ..., :h, :w] for i, (h, w) in enumerate(sizes)]


def resized_size(h: int, w: int, min_size: int | None, max_size: int | None) -> tuple[int, int]:
    """(h, w) after scaling the shorter side to ``min_size`` with the longer capped at ``max_size``."""
    if min_size is None and max_size is None:
        return h, w
    scale = min_size / min(h, w) if min_size is not None else 1.0
    if max_size is not None and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_map(x: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resize a C x H x W (or B x C x H x W) map to ``size``; a no-op when already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    batched = x.dim() == 4
    x4 = x if batched else x.unsqueeze(0)
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(x4, size=size, mode=mode, **kw)
    return out if batched else out[0]


@dataclass
class PaddedBatch:
    """A padded network input and what is needed to map outputs back to the input images."""

    tensor: Tensor
    sizes: list[tuple[int, int]]  # each image's (h, w) inside ``tensor`` (after an eval resize)
    input_sizes: list[tuple[int, int]]  # each image's original (h, w)

    def unpad(self, outputs: Tensor, resize: bool = True, mode: str = "bilinear") -> list[Tensor]:
        """Crop B x C x H' x W' outputs per image and (``resize``) resample them to the input size.

        Outputs at a stride of the network input (``H' = H / s``) are cropped to each image's ``ceil(h / s)``.
        """
        stride = int(self.tensor.shape[-1]) // int(outputs.shape[-1])
        crops = crop_batch(outputs, [(-(-h // stride), -(-w // stride)) for h, w in self.sizes])
        if not resize:
            return crops
        return [resize_map(c, s, mode) for c, s in zip(crops, self.input_sizes, strict=True)]


class DenseInput(nn.Module):
    """Normalise [0, 1] images, resize them in eval mode (``min_size``/``max_size``) and pad to ``stride``.

    ``channels_last``: hand the batch over in NHWC memory layout (faster convolutions on CPU for networks
    whose weights use it too).
    """

    mean: Tensor  # buffers (registered in __init__)
    std: Tensor

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        stride: int = 32,
        min_size: int | None = None,
        max_size: int | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.stride = stride
        self.min_size = min_size
        self.max_size = max_size
        self.channels_last = channels_last

    @classmethod
    def for_network(cls, net: nn.Module, encoder: str, in_channels: int, min_size: int | None,
                    max_size: int | None, channels_last: bool = False) -> DenseInput:
        """The input pipeline of ``net`` built on ``encoder``: its weights' mean/std and its size divisor."""
        return cls(*encoder_norm(encoder, in_channels), encoder_stride(net), min_size, max_size, channels_last)

    def forward(self, images: Sequence[Tensor]) -> PaddedBatch:
        channels = self.mean.shape[0]
        prepared, input_sizes = [], []
        for im in images:
            if im.dim() != 3 or im.shape[0] != channels:
                raise ValueError(f"expected a {channels} x H x W image, got shape {tuple(im.shape)}")
            h, w = int(im.shape[-2]), int(im.shape[-1])
            input_sizes.append((h, w))
            x = (im.to(self.mean.dtype) - self.mean) / self.std
            if not self.training:
                x = resize_map(x, resized_size(h, w, self.min_size, self.max_size))
            prepared.append(x)
        tensor, sizes = pad_batch(prepared, self.stride)
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return PaddedBatch(tensor, sizes, input_sizes)
