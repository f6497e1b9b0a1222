"""Star-convex polygons: ``stardist_{effl0,r18,r34,r50,mbv2}`` (after StarDist, Schmidt et al., MICCAI 2018).

The bottom-up family's U-Net (:func:`~maskkit.models.bottomup.build_unet`) predicts ``K + 2 + n_rays`` maps per
pixel: ``K + 1`` class logits (0 background), an object probability and ``n_rays`` (default 32) distances from
the pixel to its object's outline along rays at angles ``2 pi k / n_rays``
(:mod:`maskkit.models.polygons`). Every pixel of high object probability proposes the star-convex polygon of
its rays; non-maximum suppression on the polygons keeps the instances. No anchors or RoIs: touching,
roundish objects (nuclei) split cleanly, and the cost grows with the candidates, not the classes.

Targets (per image, from the instance masks): the object probability is the normalised distance to the
instance's border (:func:`~maskkit.models.targets.normalised_distance`: 1 on the medial axis, ~0 at borders,
so pixels near the centre, whose polygons are the most reliable, propose first); the rays come from
:func:`~maskkit.models.polygons.star_distances` (a Numba kernel).

Losses (each times its weight option): ``loss_semantic`` (cross-entropy + Dice of the classes, as the watershed
model's, which gives ``labels`` and ``sem_seg``), ``loss_probability`` (binary cross-entropy of the object
probability against its soft target) and ``loss_rays`` (the L1 error of the distances, in units of
``ray_unit`` pixels, averaged over object pixels weighted by their target probability, as in the paper: the
centre's rays count most). The network's ray outputs are in ``ray_unit`` pixels (ReLU at inference), their
bias starting at 1 so that an untrained model already proposes polygons of nucleus size.

Post-processing (:class:`StarPolygonInstances`): candidates are the pixels (on a grid of stride
``candidate_stride``, 2 as StarDist's grid for nuclei) whose object probability exceeds ``prob_threshold`` and
whose most probable class is an object class (the class head, trained with Dice, learns the foreground much
faster than the soft probability target; this keeps background pixels from proposing polygons early on);
sorted by probability, each is kept unless its polygon's IoU with a kept one exceeds ``nms_threshold``
(:func:`~maskkit.models.polygons.polygon_nms`); kept polygons paint the instance map (the more probable one
keeps overlapping pixels) and instances under ``min_area`` pixels are dropped. A row's score is the object
probability of its polygon's centre times the mean probability of its class over the instance. Rays are
lengths in pixels, so when the model resizes images at inference they are scaled back with the maps
(``rescale_maps``, in exported graphs too), and test-time flips permute them (``deaugment_raw``).

The eval output is the bottom-up family's (see :mod:`maskkit.models.bottomup`); the thresholds are buffers,
tuned on val by the trainer like the watershed's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskkit.errors import ConfigError
from maskkit.models.bottomup import DEFAULT_DECODER_CHANNELS, BottomUpSegmenter, build_unet, flip_maps, resize_like
from maskkit.models.dense import DENSE_CAPABILITIES, Targets, encoder_builder, instance_map_batch
from maskkit.models.encoders import ENCODER_NAMES, ENCODERS
from maskkit.models.losses import cross_entropy, dice_loss
from maskkit.models.regions import region_outputs
from maskkit.models.registry import register_model
from maskkit.models.targets import normalised_distance
from maskkit.models.watershed import relabel
from maskkit.structures.labels import IGNORE_INDEX

DEFAULT_N_RAYS = 32
DEFAULT_RAY_UNIT = 10.0
DEFAULT_THRESHOLDS: dict[str, float] = {"prob_threshold": 0.5, "nms_threshold": 0.4, "min_area": 8.0}
THRESHOLD_GRID: dict[str, list[float]] = {
    "prob_threshold": [0.3, 0.4, 0.5, 0.6],
    "nms_threshold": [0.3, 0.4, 0.5],
}


def stardist_target_maps(ids: np.ndarray, n_rays: int) -> np.ndarray:
    """``(1 + n_rays) x H x W`` float32: the object probability target, then the ray distances (pixels)."""
    from maskkit.models.polygons import star_distances  # deferred: Numba

    return np.concatenate([normalised_distance(ids)[None], star_distances(ids, n_rays)])


class StarDistLoss:
    """``loss_semantic``, ``loss_probability``, ``loss_rays`` (each times its weight) of ``K + 2 + n_rays`` maps."""

    def __init__(self, num_classes: int, n_rays: int = DEFAULT_N_RAYS, ray_unit: float = DEFAULT_RAY_UNIT,
                 semantic_weight: float = 1.0, probability_weight: float = 1.0, ray_weight: float = 1.0) -> None:
        self.num_classes, self.n_rays, self.ray_unit = num_classes, n_rays, float(ray_unit)
        self.weights = {"semantic": float(semantic_weight), "probability": float(probability_weight),
                        "rays": float(ray_weight)}

    def __call__(self, logits: Tensor, targets: Targets, sizes: list[tuple[int, int]]) -> dict[str, Tensor]:
        k = self.num_classes + 1
        sem, maps = instance_map_batch(targets, sizes, self.num_classes, logits,
                                       lambda ids: stardist_target_maps(ids, self.n_rays))
        valid = (sem != IGNORE_INDEX).unsqueeze(1).to(logits.dtype)
        prob = maps[:, :1]
        prob_logits = logits[:, k : k + 1].float()
        bce = F.binary_cross_entropy_with_logits(prob_logits, prob, reduction="none")
        weight = prob * valid  # object pixels, the centres most (0 on the background and ignored pixels)
        l1 = (logits[:, k + 1 :].float() - maps[:, 1:] / self.ray_unit).abs().mean(1, keepdim=True)
        sem_logits = logits[:, :k]
        out = {
            "loss_semantic": cross_entropy(sem_logits, sem) + dice_loss(sem_logits, sem),
            "loss_probability": (bce * valid).sum() / valid.sum().clamp(min=1.0),
            "loss_rays": (l1 * weight).sum() / weight.sum().clamp(min=1e-6),
        }
        return {name: self.weights[name[5:]] * value for name, value in out.items()}


class StarPolygonInstances:
    """Decoder of the ``K + 2 + n_rays`` maps: class and object probabilities, ray distances in pixels, then
    instances by polygon NMS (see the module docstring)."""

    def __init__(self, num_classes: int, n_rays: int = DEFAULT_N_RAYS, ray_unit: float = DEFAULT_RAY_UNIT,
                 candidate_stride: int = 2) -> None:
        self.num_classes, self.n_rays, self.ray_unit = num_classes, int(n_rays), float(ray_unit)
        self.candidate_stride = int(candidate_stride)

    def activate_maps(self, logits: Tensor) -> Tensor:
        """``[B x] (K+2+n_rays) x H x W`` maps: class probabilities (softmax), object probability (sigmoid), ray
        distances in pixels (ReLU times ``ray_unit``); also inside exported graphs."""
        k = self.num_classes + 1
        return torch.cat([logits[..., :k, :, :].softmax(-3), logits[..., k : k + 1, :, :].sigmoid(),
                          logits[..., k + 1 :, :, :].relu() * self.ray_unit], -3)

    def rescale_maps(self, maps: Tensor, factor: Tensor) -> Tensor:
        """``maps`` with the ray distances multiplied by ``factor`` (the network's frame -> the input size's)."""
        k = self.num_classes + 2
        return torch.cat([maps[..., :k, :, :], maps[..., k:, :, :] * factor], -3)

    def activate(self, logits: Tensor) -> dict[str, Tensor]:
        """:meth:`from_maps` of :meth:`activate_maps` (no rescaling), CPU float32."""
        return self.from_maps(self.activate_maps(logits.float()).cpu())

    def from_maps(self, maps: Tensor, size: tuple[int, int] | None = None) -> dict[str, Tensor]:
        """The raw maps (``sem_seg``, ``prob``, ``rays``) of one image's activated maps. (at the
        image ``size``: these models always output full-resolution maps)."""
        k = self.num_classes + 1
        return {"sem_seg": maps[:k], "prob": maps[k], "rays": maps[k + 1 :]}

    def __call__(self, raw: Mapping[str, Tensor], *, prob_threshold: float, nms_threshold: float,
                 min_area: float) -> dict[str, Tensor]:
        from maskkit.models.polygons import polygon_nms  # deferred: Numba

        probs = raw["sem_seg"].detach().float().cpu().numpy()
        prob = raw["prob"].detach().float().cpu().numpy()
        rays = raw["rays"].detach().float().cpu().numpy()
        s = max(self.candidate_stride, 1)
        grid = np.zeros(prob.shape, bool)
        grid[::s, ::s] = True
        ys, xs = np.nonzero(grid & (prob > prob_threshold) & (probs.argmax(0) > 0))
        labels, kept = polygon_nms(np.stack([ys, xs], 1), rays[:, ys, xs].T, prob[ys, xs], prob.shape,
                                   nms_threshold, round(min_area))
        areas = np.bincount(labels.ravel(), minlength=len(kept) + 1)  # accepted polygons may keep no pixel
        keep = areas[1:] >= max(round(min_area), 1)
        return region_outputs(relabel(labels, round(min_area)), probs[1:], raw["sem_seg"],
                              prob[ys[kept], xs[kept]][keep])

    def export_spec(self) -> dict[str, Any]:
        """What :func:`maskkit.models.decoders.decoder_from_spec` needs to rebuild this decoder."""
        return {"decoder": "stardist", "num_classes": self.num_classes, "n_rays": self.n_rays,
                "ray_unit": self.ray_unit, "candidate_stride": self.candidate_stride}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> StarPolygonInstances:
        return cls(int(spec["num_classes"]), int(spec["n_rays"]), float(spec["ray_unit"]),
                   int(spec["candidate_stride"]))


class StarDistSegmenter(BottomUpSegmenter):
    """Class, object-probability and ray maps from one U-Net, instances by polygon NMS (see the module docstring)."""

    default_thresholds = DEFAULT_THRESHOLDS
    grid = THRESHOLD_GRID
    decoder: StarPolygonInstances

    def deaugment_raw(self, raw: Mapping[str, Tensor], flip: str, reference: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A TTA view's raw maps in the original image's frame: flipped back, rays permuted to the mirrored
        directions (``h``: angle ``pi - a``; ``v``: ``-a``), resized to the reference's size if needed."""
        out = {name: flip_maps(value, flip) for name, value in raw.items()}
        n = out["rays"].shape[0]
        index = torch.arange(n)
        if "h" in flip:
            index = (n // 2 - index) % n
        if "v" in flip:
            index = (-index) % n
        out["rays"] = out["rays"][index]
        return resize_like(out, reference)


def build_stardist(
    num_classes: int,
    encoder: str,
    *,
    pretrained_backbone: bool = True, in_channels: int = 3, min_size: int | None = None, max_size: int | None = None,
    decoder_channels: tuple[int, ...] = DEFAULT_DECODER_CHANNELS,
    n_rays: int = DEFAULT_N_RAYS,
    ray_unit: float = DEFAULT_RAY_UNIT,
    candidate_stride: int = 2,
    semantic_weight: float = 1.0,
    probability_weight: float = 1.0,
    ray_weight: float = 1.0,
    prob_threshold: float = DEFAULT_THRESHOLDS["prob_threshold"],
    nms_threshold: float = DEFAULT_THRESHOLDS["nms_threshold"],
    min_area: float = DEFAULT_THRESHOLDS["min_area"],
    trainable_encoder_stages: int | None = None,
    **options: Any,
) -> StarDistSegmenter:
    """A :class:`StarDistSegmenter` on ``encoder`` (options: the bottom-up ones, ``n_rays`` (even, >= 4),
    ``ray_unit``, ``candidate_stride``, the loss weights and thresholds of the module docstring)."""
    if int(n_rays) < 4 or int(n_rays) % 2:
        raise ConfigError(f"n_rays must be even and at least 4 (flips map rays onto rays), got {n_rays}")
    if float(ray_unit) <= 0 or int(candidate_stride) < 1:
        raise ConfigError(f"ray_unit must be > 0 and candidate_stride >= 1, got {ray_unit}, {candidate_stride}")
    net, dense_input = build_unet(num_classes + 2 + int(n_rays), encoder, pretrained_backbone=pretrained_backbone,
                                  in_channels=in_channels, min_size=min_size, max_size=max_size,
                                  decoder_channels=decoder_channels,
                                  trainable_encoder_stages=trainable_encoder_stages, **options)
    head: Any = cast(nn.Sequential, net.segmentation_head)[0]  # smp's final conv
    with torch.no_grad():  # rays start at ray_unit pixels (a nucleus), not at 0 (no polygon)
        head.bias[num_classes + 2 :] = 1.0
    return StarDistSegmenter(
        net, num_classes, dense_input,
        StarDistLoss(num_classes, int(n_rays), ray_unit, semantic_weight, probability_weight, ray_weight),
        StarPolygonInstances(num_classes, int(n_rays), ray_unit, int(candidate_stride)),
        prob_threshold=prob_threshold, nms_threshold=nms_threshold, min_area=min_area,
    )


OPTIONS = ("min_size", "max_size", "pretrained_backbone", "in_channels", "encoder", "decoder_channels", "n_rays",
           "ray_unit", "candidate_stride", "semantic_weight", "probability_weight", "ray_weight", *DEFAULT_THRESHOLDS,
           "trainable_encoder_stages")
"""Named options of every StarDist builder (anything else goes to smp's ``Unet``)."""

for _encoder in ENCODERS:
    _doc = (f"Star-convex polygons (StarDist: U-Net object probability + {DEFAULT_N_RAYS} ray distances, polygon "
            f"NMS) on {ENCODER_NAMES[_encoder]}.")
    register_model(task="instance", family="bottomup", **{**DENSE_CAPABILITIES, "options": OPTIONS})(
        encoder_builder(build_stardist, f"stardist_{_encoder}", _encoder, _doc))
