"""Flow fields: ``cellpose_{effl0,r18,r34,r50,mbv2}`` (after Cellpose, Stringer et al., Nature Methods 2021).

The bottom-up family's U-Net (:func:`~maskkit.models.bottomup.build_unet`) predicts ``K + 3`` maps per pixel:
``K + 1`` class logits (0 background; with one class their softmax is Cellpose's sigmoid "cell probability")
and the two components ``(dy, dx)`` of a flow field: inside every object, the normalised gradient of a heat
diffusion from its centre (:func:`~maskkit.models.flows.diffusion_flows`, a Numba kernel over each instance's
bounding crop). Following the flows moves every pixel of an object to the same point, so objects of any shape
(not only star-convex ones) separate where their flows diverge.

Losses (each times its weight option): ``loss_semantic`` (cross-entropy + Dice of the classes, as the watershed
model's; for one class the cross-entropy is Cellpose's binary cross-entropy on the cell probability) and
``loss_flow`` (the mean squared error of the flows against 5 x the unit target flows, over every valid pixel,
0 on the background, as Cellpose trains them).

Post-processing (:class:`FlowInstances`): the foreground is ``1 - P(background) > fg_threshold``; its pixels
follow the predicted flows (divided by 5) for ``flow_steps`` Euler steps (:func:`~maskkit.models.flows.
follow_flows`); the end points are clustered (:func:`~maskkit.models.flows.cluster_endpoints`); instances whose
predicted flows disagree with the flows of their own mask (mean squared error above ``flow_threshold``,
:func:`~maskkit.models.flows.flow_errors`) or that are smaller than ``min_area`` pixels are dropped. A row's
score is the mean probability of its class over the instance times ``area / (area + 30)`` (fragments last) times
``exp(-flow error)``. Flows are directions, so they need no rescaling when the model resizes images; test-time
flips negate the mirrored component (``deaugment_raw``).

The eval output is the bottom-up family's (see :mod:`maskkit.models.bottomup`); the thresholds are buffers,
tuned on val by the trainer like the watershed's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maskkit.errors import ConfigError
from maskkit.models.bottomup import DEFAULT_DECODER_CHANNELS, BottomUpSegmenter, build_unet, flip_maps, resize_like
from maskkit.models.dense import DENSE_CAPABILITIES, Targets, encoder_builder, instance_map_batch
from maskkit.models.encoders import ENCODER_NAMES, ENCODERS
from maskkit.models.losses import cross_entropy, dice_loss
from maskkit.models.regions import area_confidence, region_outputs
from maskkit.models.registry import register_model
from maskkit.models.watershed import relabel
from maskkit.structures.labels import IGNORE_INDEX

FLOW_SCALE = 5.0
"""The network predicts ``FLOW_SCALE`` times the unit flows (Cellpose's scaling of its targets)."""
DEFAULT_FLOW_STEPS = 100
DEFAULT_THRESHOLDS: dict[str, float] = {"fg_threshold": 0.5, "flow_threshold": 0.4, "min_area": 8.0}
THRESHOLD_GRID: dict[str, list[float]] = {
    "fg_threshold": [0.4, 0.5, 0.6],
    "flow_threshold": [0.4, 0.8, 4.0],
}


def flow_target_maps(ids: np.ndarray) -> np.ndarray:
    """``2 x H x W`` float32 unit flows ``(dy, dx)`` of an instance id map."""
    from maskkit.models.flows import diffusion_flows  # deferred: Numba

    return diffusion_flows(ids)


class CellposeLoss:
    """``loss_semantic`` and ``loss_flow`` (each times its weight) of ``K + 3`` maps."""

    def __init__(self, num_classes: int, semantic_weight: float = 1.0, flow_weight: float = 1.0) -> None:
        self.num_classes = num_classes
        self.weights = {"semantic": float(semantic_weight), "flow": float(flow_weight)}

    def __call__(self, logits: Tensor, targets: Targets, sizes: list[tuple[int, int]]) -> dict[str, Tensor]:
        k = self.num_classes + 1
        sem, flows = instance_map_batch(targets, sizes, self.num_classes, logits, flow_target_maps)
        valid = (sem != IGNORE_INDEX).unsqueeze(1).to(torch.float32)
        sq = (logits[:, k : k + 2].float() - FLOW_SCALE * flows) ** 2
        sem_logits = logits[:, :k]
        out = {
            "loss_semantic": cross_entropy(sem_logits, sem) + dice_loss(sem_logits, sem),
            "loss_flow": (sq * valid).sum() / (2.0 * valid.sum()).clamp(min=1.0),
        }
        return {name: self.weights[name[5:]] * value for name, value in out.items()}


class FlowInstances:
    """Decoder of the ``K + 3`` maps: class probabilities and unit-scale flows, then instances by following the
    flows (see the module docstring)."""

    def __init__(self, num_classes: int, flow_steps: int = DEFAULT_FLOW_STEPS, min_count: int = 3) -> None:
        self.num_classes, self.flow_steps, self.min_count = num_classes, int(flow_steps), int(min_count)

    def activate_maps(self, logits: Tensor) -> Tensor:
        """``[B x] (K+3) x H x W`` maps: class probabilities (softmax), flows divided by 5; also inside exported
        graphs."""
        k = self.num_classes + 1
        return torch.cat([logits[..., :k, :, :].softmax(-3), logits[..., k:, :, :] / FLOW_SCALE], -3)

    def activate(self, logits: Tensor) -> dict[str, Tensor]:
        """:meth:`from_maps` of :meth:`activate_maps`, CPU float32."""
        return self.from_maps(self.activate_maps(logits.float()).cpu())

    def from_maps(self, maps: Tensor, size: tuple[int, int] | None = None) -> dict[str, Tensor]:
        """The raw maps (``sem_seg``, ``flows``) of one image's activated maps. (at the
        image ``size``: these models always output full-resolution maps)."""
        k = self.num_classes + 1
        return {"sem_seg": maps[:k], "flows": maps[k : k + 2]}

    def __call__(self, raw: Mapping[str, Tensor], *, fg_threshold: float, flow_threshold: float,
                 min_area: float) -> dict[str, Tensor]:
        from maskkit.models.flows import cluster_endpoints, flow_errors, follow_flows  # deferred: Numba

        probs = raw["sem_seg"].detach().float().cpu().numpy()
        flows = raw["flows"].detach().float().cpu()
        fg = (1.0 - probs[0]) > fg_threshold
        ends = follow_flows(flows, fg, self.flow_steps)
        labels = relabel(cluster_endpoints(ends, fg, self.min_count))
        n = int(labels.max())
        errors = flow_errors(labels, flows.numpy(), n)
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
        keep = (errors <= flow_threshold) & (areas >= max(round(min_area), 1))
        lut = np.zeros(n + 1, np.int32)
        lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        confidence = area_confidence(areas[keep]) * np.exp(-errors[keep])
        return region_outputs(lut[labels], probs[1:], raw["sem_seg"], confidence)

    def export_spec(self) -> dict[str, Any]:
        """What :func:`maskkit.models.decoders.decoder_from_spec` needs to rebuild this decoder."""
        return {"decoder": "cellpose", "num_classes": self.num_classes, "flow_steps": self.flow_steps,
                "min_count": self.min_count}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> FlowInstances:
        return cls(int(spec["num_classes"]), int(spec["flow_steps"]), int(spec["min_count"]))


class CellposeSegmenter(BottomUpSegmenter):
    """Class and flow maps from one U-Net, instances by following the flows (see the module docstring)."""

    default_thresholds = DEFAULT_THRESHOLDS
    grid = THRESHOLD_GRID
    decoder: FlowInstances

    def deaugment_raw(self, raw: Mapping[str, Tensor], flip: str, reference: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A TTA view's raw maps in the original image's frame: flipped back, the mirrored flow component negated
        (``h``: ``dx``; ``v``: ``dy``), resized to the reference's size if needed."""
        out = {name: flip_maps(value, flip) for name, value in raw.items()}
        sign = torch.tensor([-1.0 if "v" in flip else 1.0, -1.0 if "h" in flip else 1.0])
        out["flows"] = out["flows"] * sign[:, None, None]
        return resize_like(out, reference)


def build_cellpose(
    num_classes: int,
    encoder: str,
    *,
    pretrained_backbone: bool = True, in_channels: int = 3, min_size: int | None = None, max_size: int | None = None,
    decoder_channels: tuple[int, ...] = DEFAULT_DECODER_CHANNELS,
    flow_steps: int = DEFAULT_FLOW_STEPS,
    min_count: int = 3,
    semantic_weight: float = 1.0,
    flow_weight: float = 1.0,
    fg_threshold: float = DEFAULT_THRESHOLDS["fg_threshold"],
    flow_threshold: float = DEFAULT_THRESHOLDS["flow_threshold"],
    min_area: float = DEFAULT_THRESHOLDS["min_area"],
    trainable_encoder_stages: int | None = None,
    **options: Any,
) -> CellposeSegmenter:
    """A :class:`CellposeSegmenter` on ``encoder`` (options: the bottom-up ones, ``flow_steps`` (Euler steps),
    ``min_count`` (end points that make a seed), the loss weights and thresholds of the module docstring)."""
    if int(flow_steps) < 1 or int(min_count) < 1:
        raise ConfigError(f"flow_steps and min_count must be >= 1, got {flow_steps}, {min_count}")
    net, dense_input = build_unet(num_classes + 3, encoder, pretrained_backbone=pretrained_backbone,
                                  in_channels=in_channels, min_size=min_size, max_size=max_size,
                                  decoder_channels=decoder_channels,
                                  trainable_encoder_stages=trainable_encoder_stages, **options)
    return CellposeSegmenter(
        net, num_classes, dense_input, CellposeLoss(num_classes, semantic_weight, flow_weight),
        FlowInstances(num_classes, int(flow_steps), int(min_count)),
        fg_threshold=fg_threshold, flow_threshold=flow_threshold, min_area=min_area,
    )


OPTIONS = ("min_size", "max_size", "pretrained_backbone", "in_channels", "encoder", "decoder_channels", "flow_steps",
           "min_count", "semantic_weight", "flow_weight", *DEFAULT_THRESHOLDS, "trainable_encoder_stages")
"""Named options of every Cellpose builder (anything else goes to smp's ``Unet``)."""

for _encoder in ENCODERS:
    _doc = (f"Flow fields (Cellpose: U-Net cell probability + diffusion flows, instances by following the flows) "
            f"on {ENCODER_NAMES[_encoder]}.")
    register_model(task="instance", family="bottomup", **{**DENSE_CAPABILITIES, "options": OPTIONS})(
        encoder_builder(build_cellpose, f"cellpose_{_encoder}", _encoder, _doc))
