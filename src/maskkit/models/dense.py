"""The base of the dense (per-pixel) models: a network plus its input pipeline, loss and post-processing.

:class:`DenseSegmentationModel` follows the model contract (train mode: a dict of loss terms; eval mode:
one prediction dict per image at the input size). Like torchvision's detectors take their heads, it takes
its parts by constructor injection:

* ``net``: ``B x C x H x W`` batch -> ``B x M x H x W`` logits (the only part with weights: its state-dict
  keys are ``net.*``);
* ``input``: a :class:`~maskkit.models.encoders.DenseInput` (normalise, eval resize, pad to the stride);
* ``criterion``: a :class:`DenseLoss`, ``(logits, targets, sizes) -> {"loss_*": value}``;
* ``decoder``: a :class:`DenseDecoder`, per image ``activate(logits) -> raw maps`` then ``raw -> outputs``.

The semantic models (:mod:`maskkit.models.semantic`) and the bottom-up instance model
(:mod:`maskkit.models.bottomup`) are this class with different parts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskkit.errors import DataError
from maskkit.models.encoders import DenseInput, pad_to
from maskkit.models.registry import InputSpec
from maskkit.models.targets import checked_semantic_target, instance_id_map
from maskkit.structures.labels import IGNORE_INDEX

Targets = Sequence[Mapping[str, Tensor]]


class DenseLoss(Protocol):
    """Loss terms of padded ``B x M x H x W`` logits for the model contract's target dicts."""

    def __call__(self, logits: Tensor, targets: Targets, sizes: list[tuple[int, int]]) -> dict[str, Tensor]: ...


class DenseDecoder(Protocol):
    """Post-processing of one image's logits (already cropped and resized to the input size)."""

    def activate(self, logits: Tensor) -> Any:
        """The raw maps (probabilities) of ``M x H x W`` logits."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """``(raw, **params)``: the eval output dict of raw maps; ``params`` (if any) tune the post-processing."""


class RawOutputModel(Protocol):
    """A model that splits inference into raw maps and their post-processing (TTA averages the raw maps)."""

    def predict_raw(self, images: Sequence[Tensor]) -> list[Any]: ...

    def postprocess(self, raw: Any, **thresholds: float) -> dict[str, Tensor]: ...


class TunableModel(RawOutputModel, Protocol):
    """A :class:`RawOutputModel` whose post-processing thresholds are tuned on the val set (bottom-up)."""

    def threshold_grid(self) -> dict[str, list[float]]: ...

    def set_thresholds(self, **values: float) -> None: ...


def semantic_batch(targets: Targets, sizes: list[tuple[int, int]], num_classes: int, like: Tensor) -> Tensor:
    """``B x H x W`` int64 class maps of ``targets`` (checked, painted from instances when absent), padded with
    ``IGNORE_INDEX`` to the spatial size of ``like`` (the padded logits)."""
    maps = [checked_semantic_target(t, size, num_classes).to(torch.int64)[None]
            for t, size in zip(targets, sizes, strict=True)]
    return pad_to(maps, (int(like.shape[-2]), int(like.shape[-1])), fill=IGNORE_INDEX)[:, 0]


def instance_map_batch(
    targets: Targets, sizes: list[tuple[int, int]], num_classes: int, like: Tensor,
    maps: Callable[[np.ndarray], np.ndarray],
) -> tuple[Tensor, Tensor]:
    """Semantic class maps (as :func:`semantic_batch`) and per-pixel target maps ``maps(ids)`` (``C x h x w``
    float32 of each image's instance id map, :func:`~maskkit.models.targets.instance_id_map`), both padded to
    the spatial size of ``like`` (maps with 0). Box-only targets get a ``DataError``."""
    if len(targets) != len(sizes):
        raise DataError(f"{len(sizes)} images but {len(targets)} targets")
    padded = (int(like.shape[-2]), int(like.shape[-1]))
    sems, dense = [], []
    for t, size in zip(targets, sizes, strict=True):
        sem = checked_semantic_target(t, size, num_classes).to(device=like.device, dtype=torch.int64)
        masks = t.get("masks")
        if masks is None:
            raise DataError("bottom-up models need instance masks in the targets")
        if tuple(masks.shape[-2:]) != size:
            raise DataError(f"instance masks are {tuple(masks.shape[-2:])} but the image is {size[0]}x{size[1]}")
        sems.append(sem[None])
        dense.append(torch.from_numpy(maps(instance_id_map(masks.detach().cpu()))).to(like.device))
    return pad_to(sems, padded, fill=IGNORE_INDEX)[:, 0], pad_to(dense, padded)


class DenseSegmentationModel(nn.Module):
    """A per-pixel network over ``num_classes`` foreground classes with injected input, loss and decoder."""

    def __init__(
        self, net: nn.Module, num_classes: int, input: DenseInput, criterion: DenseLoss, decoder: DenseDecoder,
        output_stride: int = 1,
    ) -> None:
        super().__init__()
        self.output_stride = output_stride
        """The stride of ``net``'s output maps relative to its input (1: the input's resolution)."""
        self.net = net
        self.num_classes = num_classes
        self.input = input
        self.criterion = criterion
        self.decoder = decoder

    def forward(
        self, images: Sequence[Tensor], targets: Targets | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Loss terms (train mode, ``targets`` required) or one prediction dict per image (eval mode)."""
        if self.training:
            if targets is None:
                raise ValueError("targets are required in train mode")
            batch = self.input(images)
            logits = self.net(batch.tensor)
            if logits.shape[-2:] != batch.tensor.shape[-2:]:  # a strided output: the loss sees the input size
                logits = F.interpolate(logits, size=batch.tensor.shape[-2:], mode="bilinear", align_corners=False)
            return self.criterion(logits, targets, batch.sizes)
        return [self._decode(raw) for raw in self._raw(images)]

    def _raw(self, images: Sequence[Tensor]) -> list[Any]:
        """Per image, the decoder's raw maps at the input size."""
        batch = self.input(images)
        return [self.decoder.activate(logits) for logits in batch.unpad(self.net(batch.tensor))]

    def _decode(self, raw: Any) -> dict[str, Tensor]:
        return self.decoder(raw)


DENSE_CAPABILITIES: dict[str, Any] = {
    "backbone": "net.encoder",
    "semantic_targets": True,
    "input": InputSpec(channels=None),
}
"""Registry capabilities every dense model shares (each family adds its ``options``)."""


def encoder_builder(build: Callable[..., nn.Module], name: str, encoder: str, doc: str) -> Callable[..., nn.Module]:
    """The registry builder ``name(num_classes, *, pretrained_backbone, in_channels, min_size, max_size,
    **options)`` of one dense model: ``build(num_classes, encoder, ...)`` (``options["encoder"]`` overrides)."""

    def builder(
        num_classes: int,
        *,
        pretrained_backbone: bool = True,
        in_channels: int = 3,
        min_size: int | None = None,
        max_size: int | None = None,
        **options: Any,
    ) -> nn.Module:
        return build(num_classes, options.pop("encoder", encoder), pretrained_backbone=pretrained_backbone,
                     in_channels=in_channels, min_size=min_size, max_size=max_size, **options)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc
    return builder
