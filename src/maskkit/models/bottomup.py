"""Bottom-up instance segmentation: ``bottomup_{effl0,r18,r34,r50,mbv2}``.

One U-Net (segmentation-models-pytorch ``Unet`` on the named encoder, one shared decoder) predicts
``K + 3`` maps per pixel: ``K + 1`` semantic class logits (0 background), an instance-border logit
and a per-instance normalised distance to the border (targets: :func:`~maskkit.models.targets.bottomup_targets`).
Instances are recovered by a seeded watershed (:func:`~maskkit.models.watershed.seeded_watershed`):
seeds are the connected, same-class foreground pixels far from any border, flooded over the
foreground. No boxes, anchors or RoIs, so the cost does not grow with the number of objects and
touching objects (cells, grains) split along their predicted borders.

Losses (each multiplied by its weight option): ``loss_semantic`` (cross-entropy + Dice over the
``K + 1`` classes), ``loss_boundary`` (binary cross-entropy + Dice of the border map) and
``loss_distance`` (squared error of the sigmoid distance on foreground pixels).

Eval output per image: ``instance_map`` (``H x W`` int32, region ``j`` holds ``j``) and one row per
(region, class) pair: ``instance_ids`` (the row's region), ``labels`` (``1..K``: the region's majority class,
plus every other class with a mean probability of at least :data:`SECONDARY_CLASS_MIN`), ``scores`` (mean
probability of that class over the region, damped for small regions by ``area / (area + 30)`` so that
fragments rank last; this ranked best on the synthetic data, ahead of products with the peak distance or
border probability), ``boxes`` (XYXY) and ``sem_seg`` (class probabilities), all at the input size, rows
sorted by decreasing score.

The model is a :class:`~maskkit.models.dense.DenseSegmentationModel` with :class:`BottomUpLoss` and
:class:`WatershedInstances` as its loss and decoder. The post-processing thresholds (``fg_threshold``,
``seed_threshold``, ``boundary_threshold``, ``min_area``) are buffers of the model: checkpoints carry them.
The trainer tunes them on the val set through :meth:`BottomUpSegmenter.threshold_grid` / ``predict_raw`` /
``postprocess`` / ``set_thresholds``.

Builder options (besides ``pretrained_backbone``, ``in_channels``, ``min_size``, ``max_size``):
``encoder`` (override the name's encoder), ``decoder_channels`` (default ``(64, 32, 24, 16, 16)``,
light for CPUs), ``semantic_weight``/``boundary_weight``/``distance_weight``, the four thresholds,
``trainable_encoder_stages`` (freeze the stem and all but the last N encoder stages: EfficientNet-Lite
blocks, 7 in all, or ResNet layers, 4; None trains everything), ``output_stride`` (1, 2 or 4: leave out the
U-Net's last 0, 1 or 2 decoder stages; the maps come out at that stride, are upsampled for the loss, and
inference floods them at their own resolution: see :class:`WatershedInstances`); anything else goes to smp's
``Unet``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskkit.errors import ConfigError, DataError
from maskkit.models.backbones import freeze_timm_stages
from maskkit.models.dense import DENSE_CAPABILITIES, DenseSegmentationModel, Targets, encoder_builder
from maskkit.models.encoders import ENCODER_NAMES, ENCODERS, DenseInput, build_smp, pad_to, resize_map
from maskkit.models.losses import cross_entropy, dice_loss, mse_loss
from maskkit.models.regions import region_outputs
from maskkit.models.registry import register_model
from maskkit.models.targets import bottomup_targets, checked_semantic_target
from maskkit.models.watershed import relabel, seeded_watershed
from maskkit.structures.labels import IGNORE_INDEX

DEFAULT_DECODER_CHANNELS = (64, 32, 24, 16, 16)
DEFAULT_THRESHOLDS: dict[str, float] = {
    "fg_threshold": 0.5,
    "seed_threshold": 0.1,
    "boundary_threshold": 0.3,
    "min_area": 8.0,
}
GROW_KERNEL = np.ones((3, 3), np.uint8)
"""Neighbourhood over which a strided instance map grows into the background before it is upsampled."""
THRESHOLD_GRID: dict[str, list[float]] = {
    "fg_threshold": [0.4, 0.5, 0.6],
    "seed_threshold": [0.1, 0.3, 0.5],
    "boundary_threshold": [0.3, 0.5, 0.7],
}


class BottomUpLoss:
    """``loss_semantic``, ``loss_boundary``, ``loss_distance`` (each times its weight) of ``K + 3`` logit maps."""

    def __init__(
        self, num_classes: int, semantic_weight: float = 1.0, boundary_weight: float = 1.0, distance_weight: float = 1.0
    ) -> None:
        self.num_classes = num_classes
        self.weights = {"semantic": float(semantic_weight), "boundary": float(boundary_weight),
                        "distance": float(distance_weight)}

    def __call__(self, logits: Tensor, targets: Targets, sizes: list[tuple[int, int]]) -> dict[str, Tensor]:
        k = self.num_classes + 1
        sem, bnd, dist = self.targets(targets, sizes, logits)
        fg = ((sem > 0) & (sem != IGNORE_INDEX)).unsqueeze(1)
        sem_logits, bnd_logits = logits[:, :k], logits[:, k : k + 1]
        out = {
            "loss_semantic": cross_entropy(sem_logits, sem) + dice_loss(sem_logits, sem),
            "loss_boundary": cross_entropy(bnd_logits, bnd) + dice_loss(bnd_logits, bnd),
            "loss_distance": mse_loss(logits[:, k + 1 : k + 2].sigmoid(), dist.unsqueeze(1), fg),
        }
        return {name: self.weights[name[5:]] * value for name, value in out.items()}

    def targets(self, targets: Targets, sizes: list[tuple[int, int]], logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Semantic (int64, 255 ignore), border (int64 0/1, 255 ignore) and distance (float) targets, padded to
        the size of ``logits``."""
        if len(targets) != len(sizes):
            raise DataError(f"{len(sizes)} images but {len(targets)} targets")
        padded = (int(logits.shape[-2]), int(logits.shape[-1]))
        sems, bnds, dists = [], [], []
        for t, size in zip(targets, sizes, strict=True):
            sem = checked_semantic_target(t, size, self.num_classes)
            masks = t.get("masks")
            if masks is None:
                raise DataError("bottom-up models need instance masks in the targets")
            if tuple(masks.shape[-2:]) != size:
                raise DataError(f"instance masks are {tuple(masks.shape[-2:])} but the image is {size[0]}x{size[1]}")
            border, distance = bottomup_targets(masks.detach().cpu())
            sem = sem.to(device=logits.device, dtype=torch.int64)
            border_t = torch.from_numpy(border).to(device=logits.device, dtype=torch.int64)
            sems.append(sem[None])
            bnds.append(torch.where(sem == IGNORE_INDEX, IGNORE_INDEX, border_t)[None])
            dists.append(torch.from_numpy(distance).to(logits.device)[None])
        sem_t = pad_to(sems, padded, fill=IGNORE_INDEX)[:, 0]
        return sem_t, pad_to(bnds, padded, fill=IGNORE_INDEX)[:, 0], pad_to(dists, padded)[:, 0]


class WatershedInstances:
    """Decoder of the ``K + 3`` maps: class probabilities, border and distance maps, then instances by seeded
    watershed with the given thresholds (see the module docstring for the output).

    Maps at a stride of the image (a network with ``output_stride`` > 1; the raw dict then holds the image
    ``size``) are flooded at their own resolution; the instance map is then upsampled (nearest) and cut to the
    foreground of the bilinearly upsampled class probabilities, so outlines follow the image's pixels.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def activate(self, logits: Tensor) -> dict[str, Tensor]:
        """``sem_seg`` ((K+1) x H x W class probabilities), ``boundary`` and ``distance`` (H x W, sigmoid),
        CPU float32."""
        return self.from_maps(self.activate_maps(logits.float()).cpu())

    def activate_maps(self, logits: Tensor) -> Tensor:
        """``[B x] (K+3) x H x W`` maps of as many logits: class probabilities (softmax over the first K + 1),
        border and distance (sigmoid); also inside exported graphs."""
        k = self.num_classes + 1
        return torch.cat([logits[..., :k, :, :].softmax(-3), logits[..., k:, :, :].sigmoid()], -3)

    def from_maps(self, maps: Tensor, size: tuple[int, int] | None = None) -> dict[str, Tensor]:
        """The raw maps (``sem_seg``, ``boundary``, ``distance``) of one image's :meth:`activate_maps` output;
        maps smaller than the image's ``size`` keep it under ``size`` (an int64 tensor ``[h, w]``)."""
        k = self.num_classes + 1
        raw = {"sem_seg": maps[:k], "boundary": maps[k], "distance": maps[k + 1]}
        if size is not None and tuple(maps.shape[-2:]) != tuple(size):
            raw["size"] = torch.tensor([int(size[0]), int(size[1])], dtype=torch.int64)
        return raw

    def __call__(
        self, raw: Mapping[str, Tensor], *, fg_threshold: float, seed_threshold: float, boundary_threshold: float,
        min_area: float,
    ) -> dict[str, Tensor]:
        sem_seg = raw["sem_seg"].detach().float().cpu()
        probs = sem_seg.numpy()
        dist = raw["distance"].detach().float().cpu().numpy()
        bnd = raw["boundary"].detach().float().cpu().numpy()
        size = (int(raw["size"][0]), int(raw["size"][1])) if "size" in raw else (probs.shape[-2], probs.shape[-1])
        shrink = probs.shape[-2] * probs.shape[-1] / (size[0] * size[1])  # map pixels per image pixel
        imap = seeded_watershed(
            1.0 - probs[0], dist, bnd,
            fg_threshold=fg_threshold, seed_threshold=seed_threshold,
            boundary_threshold=boundary_threshold, min_area=round(min_area * shrink),
            class_map=probs[1:].argmax(0),
        )
        if shrink != 1.0:
            sem_seg = resize_map(sem_seg, size)
            probs = sem_seg.numpy()
            # grown by a map pixel first: image pixels in the foreground whose map pixel was not get the neighbour's
            grown = np.where(imap > 0, imap, cv2.dilate(imap.astype(np.float32), GROW_KERNEL).astype(np.int32))
            upsampled = cv2.resize(grown, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
            imap = relabel(np.where(1.0 - probs[0] > fg_threshold, upsampled, 0), round(min_area))
        return region_outputs(imap, probs[1:], sem_seg)

    def export_spec(self) -> dict[str, Any]:
        """What :func:`maskkit.models.decoders.decoder_from_spec` needs to rebuild this decoder."""
        return {"decoder": "watershed", "num_classes": int(self.num_classes)}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> WatershedInstances:
        return cls(int(spec["num_classes"]))


class BottomUpSegmenter(DenseSegmentationModel):
    """Semantic + border + distance maps from one U-Net, instances by seeded watershed (see the module docstring).

    The base of every bottom-up model: post-processing thresholds as buffers (:attr:`default_thresholds`, tuned
    on val over :attr:`grid`), ``predict_raw``/``postprocess`` for tuning and TTA. The star-convex polygon and
    flow-field models (:mod:`maskkit.models.stardist`, :mod:`maskkit.models.cellpose`) are subclasses with their
    own loss, decoder and thresholds.
    """

    default_thresholds: dict[str, float] = DEFAULT_THRESHOLDS
    grid: dict[str, list[float]] = THRESHOLD_GRID

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        input: DenseInput,
        criterion: Any,
        decoder: Any,
        output_stride: int = 1,
        **thresholds: float,
    ) -> None:
        super().__init__(net, num_classes, input, criterion, decoder, output_stride)
        for name, value in self.default_thresholds.items():
            self.register_buffer(name, torch.tensor(float(value)))
        self.set_thresholds(**thresholds)

    @property
    def encoder(self) -> nn.Module:
        """The U-Net's encoder."""
        return cast(nn.Module, self.net.encoder)

    # -- thresholds ------------------------------------------------------------------------------
    @property
    def thresholds(self) -> dict[str, float]:
        """The current post-processing thresholds (buffer values)."""
        return {name: round(float(getattr(self, name)), 6) for name in self.default_thresholds}

    def set_thresholds(self, **values: float) -> None:
        """Set some of the thresholds (for the watershed: ``fg_threshold``, ``seed_threshold``,
        ``boundary_threshold``, ``min_area``)."""
        unknown = sorted(set(values) - set(self.default_thresholds))
        if unknown:
            raise ConfigError(f"unknown threshold(s) {unknown}; known: {list(self.default_thresholds)}")
        for name, value in values.items():
            getattr(self, name).fill_(float(value))

    def threshold_grid(self) -> dict[str, list[float]]:
        """Candidate values per threshold for tuning on a val set (the watershed's: 27 combinations)."""
        return {k: list(v) for k, v in self.grid.items()}

    # -- inference -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_raw(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Per image, the network's maps at the input size (CPU float32), as the decoder's ``activate`` gives
        them (the watershed's: ``sem_seg`` ((K+1) x H x W class probabilities), ``boundary`` and ``distance``);
        a network with ``output_stride`` > 1 keeps them at its stride, with the input ``size`` beside them.

        Decoders whose maps hold lengths in pixels (``rescale_maps(maps, factor)``, e.g. StarDist's rays) get them
        scaled from the network's (eval-resized) frame to the input size's."""
        batch = self.input(images)
        decoder: Any = self.decoder  # every bottom-up decoder has activate_maps/from_maps
        rescale = getattr(decoder, "rescale_maps", None)
        logits = self.net(batch.tensor)
        strided = logits.shape[-2:] != batch.tensor.shape[-2:]  # output_stride > 1: maps stay at the stride
        out = []
        for crop, size, input_size in zip(batch.unpad(logits, resize=not strided), batch.sizes, batch.input_sizes,
                                          strict=True):
            maps = decoder.activate_maps(crop.float())
            if rescale is not None:
                maps = rescale(maps, resize_factor(torch.tensor(size), torch.tensor(input_size)))
            out.append(decoder.from_maps(maps.cpu(), input_size if strided else None))
        return out

    def _raw(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        return self.predict_raw(images)  # eval forward without autograd, as predict_raw

    def postprocess(self, raw: Mapping[str, Tensor], **thresholds: float) -> dict[str, Tensor]:
        """The eval output dict of one image's :meth:`predict_raw` maps; ``thresholds`` override the buffers."""
        return self.decoder(raw, **{**self.thresholds, **thresholds})

    def _decode(self, raw: Any) -> dict[str, Tensor]:
        return self.postprocess(raw)

    # -- training --------------------------------------------------------------------------------
    def losses(self, logits: Tensor, targets: Targets, sizes: list[tuple[int, int]]) -> dict[str, Tensor]:
        """The criterion's weighted loss terms of padded ``B x M x H x W`` logits."""
        return self.criterion(logits, targets, sizes)


def resize_factor(resized: Tensor, original: Tensor) -> Tensor:
    """The length scale (float32 0-d) from an image resized to ``resized`` (h, w) back to ``original`` (h, w): the
    geometric mean of the two sides' factors; also inside exported graphs (tensors from shapes)."""
    ratio = original.to(torch.float32) / resized.to(torch.float32)
    return torch.sqrt(ratio[0] * ratio[1])


def flip_maps(maps: Tensor, flip: str) -> Tensor:
    """``... x H x W`` maps mirrored as a TTA view's ``flip`` says (``h``, ``v``, ``hv``, ``none``)."""
    dims = [d for d, on in ((-1, "h" in flip), (-2, "v" in flip)) if on]
    return maps.flip(dims) if dims else maps


def resize_like(raw: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Every ``... x h x w`` map of ``raw`` resized (bilinear) to the size of the same-named map of ``reference``."""
    out = dict(raw)
    for name, value in raw.items():
        size = reference[name].shape[-2:]
        if value.shape[-2:] != size:
            out[name] = F.interpolate(value.reshape(1, -1, *value.shape[-2:]), size=size, mode="bilinear",
                                      align_corners=False).reshape(*value.shape[:-2], *size)
    return out


def freeze_encoder_stages(encoder: nn.Module, trainable: int) -> int:
    """Freeze the stem and all but the last ``trainable`` stages of a U-Net encoder; returns the frozen tensor count.

    Stages are EfficientNet-Lite's 7 blocks (timm) or ResNet's 4 layers; the early, high-resolution stages
    cost the most backward time and change least when fine-tuning, so freezing them speeds up CPU training.
    """
    body = getattr(encoder, "model", encoder)
    if hasattr(body, "blocks") and hasattr(body, "conv_stem"):
        before = sum(not p.requires_grad for p in body.parameters())
        freeze_timm_stages(body, trainable)
        return sum(not p.requires_grad for p in body.parameters()) - before
    if all(hasattr(body, f"layer{i}") for i in range(1, 5)):
        stages = [body.conv1, body.bn1, *(getattr(body, f"layer{i}") for i in range(1, 5))]
        frozen = [p for m in stages[: max(len(stages) - trainable, 0)] for p in m.parameters()]
        for p in frozen:
            p.requires_grad_(False)
        return len(frozen)
    raise ConfigError("trainable_encoder_stages supports the EfficientNet-Lite and ResNet encoders")


OUTPUT_STRIDES = {1: 0, 2: 1, 4: 2}
"""``output_stride`` -> how many of the U-Net's last (highest-resolution) decoder stages are left out."""


def drop_last_decoder_stages(net: nn.Module, count: int, classes: int) -> None:
    """Leave out the last ``count`` decoder stages of an smp U-Net: its maps come out at a stride of ``2 ** count``.

    The full-resolution stages are the most expensive part of a light U-Net (about a third of its CPU time at
    640 px for EfficientNet-Lite0); nuclei-sized objects keep their shape at stride 2.
    """
    from segmentation_models_pytorch.base import SegmentationHead

    decoder = cast(nn.Module, net.decoder)
    blocks = cast(nn.ModuleList, decoder.blocks)
    kept = list(blocks)[: len(blocks) - count]
    decoder.blocks = nn.ModuleList(kept)
    width = int(cast(nn.Conv2d, cast(nn.Sequential, kept[-1].conv2)[0]).out_channels)
    net.segmentation_head = SegmentationHead(width, classes, kernel_size=3)


def build_unet(
    out_channels: int,
    encoder: str,
    *,
    pretrained_backbone: bool = True, in_channels: int = 3, min_size: int | None = None, max_size: int | None = None,
    decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    trainable_encoder_stages: int | None = None,
    output_stride: int = 1,
    **options: Any,
) -> tuple[nn.Module, DenseInput]:
    """The channels-last smp U-Net of every bottom-up model (``out_channels`` maps on ``encoder``, at
    ``output_stride``) and its input pipeline; ``options`` go to smp's ``Unet``."""
    channels = tuple(int(c) for c in decoder_channels)
    if not 1 <= len(channels) <= 5 or min(channels) < 1:
        raise ConfigError(f"decoder_channels needs 1 to 5 positive widths (one per U-Net stage), got {list(channels)}")
    if output_stride not in OUTPUT_STRIDES or len(channels) <= OUTPUT_STRIDES[output_stride]:
        raise ConfigError(f"output_stride must be one of {sorted(OUTPUT_STRIDES)} and leave at least one of the "
                          f"{len(channels)} decoder stages, got {output_stride}")
    options.setdefault("encoder_depth", len(channels))
    net = build_smp("Unet", encoder, out_channels, in_channels, pretrained_backbone, decoder_channels=channels,
                    **options)
    if output_stride > 1:
        drop_last_decoder_stages(net, OUTPUT_STRIDES[output_stride], out_channels)
    if trainable_encoder_stages is not None:
        freeze_encoder_stages(cast(nn.Module, net.encoder), int(trainable_encoder_stages))
    net = net.to(memory_format=torch.channels_last)
    # NHWC inputs too: ~25% faster convolutions on CPU with the channels-last weights
    return net, DenseInput.for_network(net, encoder, in_channels, min_size, max_size, channels_last=True)


def build_bottomup(
    num_classes: int,
    encoder: str,
    *,
    pretrained_backbone: bool = True, in_channels: int = 3, min_size: int | None = None, max_size: int | None = None,
    decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    semantic_weight: float = 1.0,
    boundary_weight: float = 1.0,
    distance_weight: float = 1.0,
    fg_threshold: float = DEFAULT_THRESHOLDS["fg_threshold"],
    seed_threshold: float = DEFAULT_THRESHOLDS["seed_threshold"],
    boundary_threshold: float = DEFAULT_THRESHOLDS["boundary_threshold"],
    min_area: float = DEFAULT_THRESHOLDS["min_area"],
    trainable_encoder_stages: int | None = None,
    output_stride: int = 1,
    **options: Any,
) -> BottomUpSegmenter:
    """A :class:`BottomUpSegmenter` on ``encoder`` (see the module docstring for the options)."""
    net, dense_input = build_unet(num_classes + 3, encoder, pretrained_backbone=pretrained_backbone,
                                  in_channels=in_channels, min_size=min_size, max_size=max_size,
                                  decoder_channels=decoder_channels,
                                  trainable_encoder_stages=trainable_encoder_stages, output_stride=output_stride,
                                  **options)
    return BottomUpSegmenter(
        net, num_classes, dense_input,
        BottomUpLoss(num_classes, semantic_weight, boundary_weight, distance_weight),
        WatershedInstances(num_classes), output_stride,
        fg_threshold=fg_threshold, seed_threshold=seed_threshold, boundary_threshold=boundary_threshold,
        min_area=min_area,
    )


OPTIONS = ("min_size", "max_size", "pretrained_backbone", "in_channels", "encoder", "decoder_channels",
           "semantic_weight", "boundary_weight", "distance_weight", *DEFAULT_THRESHOLDS, "trainable_encoder_stages",
           "output_stride")
"""Named options of every bottom-up builder (anything else goes to smp's ``Unet``)."""
CAPABILITIES: dict[str, Any] = {**DENSE_CAPABILITIES, "options": OPTIONS}

for _encoder in ENCODERS:
    _doc = (f"Bottom-up instances (U-Net semantic + border + distance maps, seeded watershed) on "
            f"{ENCODER_NAMES[_encoder]}.")
    register_model(task="instance", family="bottomup", **CAPABILITIES)(
        encoder_builder(build_bottomup, f"bottomup_{_encoder}", _encoder, _doc))
