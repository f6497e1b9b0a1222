"""The glue between maskkit's models and the attribution libraries: differentiable per-target forward passes.

A CAM or attribution library needs ``module(x) -> outputs`` on a batch tensor and a ``target(output) -> scalar``
per image. :class:`RCNNAdapter` (Mask R-CNN, Panoptic FPN) re-runs the RoI heads on one *fixed* detected box, so
the class logit and the mask logits of that detection are differentiable functions of the image (the RPN and
the box decoding, which pick the box, are not part of the explained function). :class:`DenseAdapter` (semantic
and bottom-up models) returns the network's logit maps; a target averages one channel over a region.

Both work on the model's own input: ``prepare`` normalises, resizes and pads the image as the model does, the
maps are computed on that tensor and :func:`to_image` crops and resizes them back to the image. :class:`Taps`
routes a module's outputs (a tensor, a list or a dict of tensors, e.g. the FPN levels or an encoder's stages)
through named ``nn.Identity`` modules, so that the libraries can hook each level as a ``target layer``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskkit.errors import ConfigError


@dataclass
class Prepared:
    """The model's input tensor of one image (``1 x C x H' x W'``, normalised and padded) and the sizes that map
    results back: ``size`` is the image inside the padded tensor, ``original`` the image's own (h, w)."""

    x: Tensor
    size: tuple[int, int]
    original: tuple[int, int]


def to_image(array: np.ndarray, prepared: Prepared) -> np.ndarray:
    """An ``H' x W'`` map on the padded input, cropped to the image and resized to its original size (float32)."""
    import cv2

    h, w = prepared.size
    crop = np.ascontiguousarray(np.asarray(array, dtype=np.float32)[:h, :w])
    oh, ow = prepared.original
    return crop if (h, w) == (oh, ow) else cv2.resize(crop, (ow, oh), interpolation=cv2.INTER_LINEAR)


class Taps:
    """Named ``nn.Identity`` taps on every output of ``module`` (a tensor, a sequence or a mapping of tensors).

    ``name(key)`` names the tap of output ``key`` (the index in a sequence, the key in a mapping). While
    ``record`` is set, each tap keeps a detached CPU copy of what passed through it (``recorded``).
    """

    def __init__(self, module: nn.Module, name: Callable[[Any], str]) -> None:
        self.modules: OrderedDict[str, nn.Module] = OrderedDict()
        self.recorded: OrderedDict[str, Tensor] = OrderedDict()
        self.record = False
        self._name = name
        self._handle = module.register_forward_hook(self._hook)

    def _tap(self, key: Any, value: Any) -> Any:
        if not isinstance(value, Tensor) or value.dim() != 4:
            return value
        name = self._name(key)
        if name not in self.modules:
            self.modules[name] = nn.Identity()
        if self.record:
            self.recorded[name] = value.detach().float().cpu()
        return self.modules[name](value)

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if isinstance(output, Tensor):
            return self._tap(0, output)
        kind: Any = type(output)  # OrderedDict, dict, list, tuple
        if isinstance(output, Mapping):
            return kind((k, self._tap(k, v)) for k, v in output.items())
        if isinstance(output, list | tuple):
            return kind(self._tap(i, v) for i, v in enumerate(output))
        return output

    def layers(self, names: Sequence[str]) -> list[nn.Module]:
        """The tap modules of ``names`` (a ConfigError names the known ones)."""
        unknown = [n for n in names if n not in self.modules]
        if unknown:
            raise ConfigError(f"unknown layer(s) {unknown}; this model has {list(self.modules)}")
        return [self.modules[n] for n in names]

    def remove(self) -> None:
        self._handle.remove()


class _FixedBoxHeads(nn.Module):
    """``x -> [{"class_logits": (K+1,), "mask_logits": (K+1) x M x M}]`` per image: the backbone, then the box
    and mask heads on one fixed box (in the coordinates of ``x``)."""

    def __init__(self, model: nn.Module, box: Tensor, size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.box = box.reshape(1, 4)
        self.size = size

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        m: Any = self.model  # torchvision GeneralizedRCNN (no type information)
        rh = m.roi_heads
        features = m.backbone(x)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        boxes = [self.box.to(x.device, x.dtype)] * len(x)
        sizes = [self.size] * len(x)
        class_logits, _ = rh.box_predictor(rh.box_head(rh.box_roi_pool(features, boxes, sizes)))
        mask_logits = rh.mask_predictor(rh.mask_head(rh.mask_roi_pool(features, boxes, sizes)))
        return [{"class_logits": c, "mask_logits": k} for c, k in zip(class_logits, mask_logits, strict=True)]


class ClassLogit:
    """Target: the class logit ``label`` of the fixed box."""

    def __init__(self, label: int) -> None:
        self.label = int(label)

    def __call__(self, output: Mapping[str, Tensor]) -> Tensor:
        return output["class_logits"][self.label]


class MaskLogits:
    """Target: the mean mask logit of class ``label`` over ``region`` (the predicted mask on the ``M x M`` grid)."""

    def __init__(self, label: int, region: Tensor) -> None:
        self.label = int(label)
        self.region = region.float()

    def __call__(self, output: Mapping[str, Tensor]) -> Tensor:
        region = self.region.to(output["mask_logits"].device)
        return (output["mask_logits"][self.label] * region).sum() / region.sum().clamp(min=1.0)


class RegionLogits:
    """Target of a dense model: the mean logit of ``channel`` over ``region`` (``H' x W'`` on the padded input)."""

    def __init__(self, channel: int, region: Tensor) -> None:
        self.channel = int(channel)
        self.region = region.float()

    def __call__(self, output: Tensor) -> Tensor:
        region = self.region.to(output.device)
        return (output[self.channel] * region).sum() / region.sum().clamp(min=1.0)


class RCNNAdapter:
    """Mask R-CNN and Panoptic FPN: FPN levels tapped as ``fpn0``, ``fpn1``... (``fpnpool``), per-instance targets."""

    family = "rcnn"

    def __init__(self, model: nn.Module) -> None:
        rcnn: Any = model  # a torchvision GeneralizedRCNN (no type information)
        self.model = rcnn
        self.taps = Taps(rcnn.backbone, lambda key: f"fpn{key}")

    def prepare(self, image: Tensor) -> Prepared:
        m: Any = self.model
        with torch.no_grad():
            batch, _ = m.transform([image])
        h, w = batch.image_sizes[0]
        return Prepared(batch.tensors.detach(), (int(h), int(w)), (int(image.shape[-2]), int(image.shape[-1])))

    def default_layers(self) -> list[str]:
        """The FPN levels the RoI heads read (not the extra pooled level, which only the RPN uses)."""
        return [n for n in self.taps.modules if n != "fpnpool"]

    def features(self, prepared: Prepared) -> OrderedDict[str, Tensor]:
        """Every tapped level of one backbone pass (``C x h x w``)."""
        self.taps.record, self.taps.recorded = True, OrderedDict()
        try:
            with torch.no_grad():
                self.model.backbone(prepared.x)
        finally:
            self.taps.record = False
        return OrderedDict((k, v[0]) for k, v in self.taps.recorded.items())

    def to_input_box(self, box: np.ndarray, prepared: Prepared) -> Tensor:
        """An image-space XYXY box in the coordinates of the padded input."""
        (h, w), (oh, ow) = prepared.size, prepared.original
        scale = torch.tensor([w / ow, h / oh, w / ow, h / oh], dtype=torch.float32)
        return torch.as_tensor(np.asarray(box, dtype=np.float32)) * scale

    def instance_targets(self, prepared: Prepared, box: np.ndarray, label: int
                         ) -> tuple[nn.Module, ClassLogit, MaskLogits]:
        """The fixed-box module and the class and mask targets of one detection (model label ``1..K``)."""
        module = _FixedBoxHeads(self.model, self.to_input_box(box, prepared).to(prepared.x.device), prepared.size)
        with torch.no_grad():
            out = module(prepared.x)[0]
        region = out["mask_logits"][label] > 0
        if not region.any():
            region = torch.ones_like(region)
        return module, ClassLogit(label), MaskLogits(label, region)


    def box_predictions(self, prepared: Prepared, boxes: np.ndarray, labels: Sequence[int]
                        ) -> tuple[np.ndarray, np.ndarray]:
        """What the heads say of given image-space ``boxes`` with model ``labels`` (1..K): the class probability of
        each and its mask (``N x H x W`` bool, pasted into the image at 0.5)."""
        from torchvision.models.detection.roi_heads import paste_masks_in_image

        scores, masks = [], []
        for box, label in zip(boxes, labels, strict=True):
            module = _FixedBoxHeads(self.model, self.to_input_box(box, prepared).to(prepared.x.device), prepared.size)
            with torch.no_grad():
                out = module(prepared.x)[0]
            scores.append(float(out["class_logits"].softmax(0)[label]))
            probs = out["mask_logits"][label].sigmoid()[None, None].cpu()
            pasted = paste_masks_in_image(probs, torch.as_tensor(np.asarray(box, np.float32))[None], prepared.original)
            masks.append(pasted[0, 0].numpy() > 0.5)
        h, w = prepared.original
        return np.asarray(scores, np.float32), (np.stack(masks) if masks else np.zeros((0, h, w), bool))


class _DenseLogits(nn.Module):
    """``x -> [M x H' x W' logits]`` per image of a dense model's network."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> list[Tensor]:
        m: Any = self.model
        return list(m.net(x))


class DenseAdapter:
    """Semantic and bottom-up models: encoder stages tapped as ``enc1``... (``enc0`` is the input itself in smp
    encoders), targets = a class channel averaged over a region (its predicted pixels, or one instance)."""

    family = "dense"

    def __init__(self, model: nn.Module) -> None:
        dense: Any = model  # a DenseSegmentationModel
        self.model = dense
        self.module = _DenseLogits(model)
        self.taps = Taps(dense.net.encoder, lambda key: f"enc{key}")

    def prepare(self, image: Tensor) -> Prepared:
        m: Any = self.model
        with torch.no_grad():
            batch = m.input([image])
        h, w = batch.sizes[0]
        return Prepared(batch.tensor.detach(), (int(h), int(w)), (int(image.shape[-2]), int(image.shape[-1])))

    def default_layers(self) -> list[str]:
        """The two deepest encoder stages (strides 16 and 32 for the usual encoders)."""
        return list(self.stages())[-2:]

    def stages(self) -> list[str]:
        """Tapped encoder stages, without the input itself (smp encoders return it first)."""
        return [n for n in self.taps.modules if n != "enc0"]

    def features(self, prepared: Prepared) -> OrderedDict[str, Tensor]:
        self.taps.record, self.taps.recorded = True, OrderedDict()
        try:
            with torch.no_grad():
                self.module(prepared.x)
        finally:
            self.taps.record = False
        return OrderedDict((k, v[0]) for k, v in self.taps.recorded.items() if k != "enc0")

    def class_regions(self, prepared: Prepared) -> dict[int, Tensor]:
        """Predicted pixels (argmax of the class logits) of each foreground class present, on the padded input."""
        k = int(self.model.num_classes) + 1
        with torch.no_grad():
            logits = self.module(prepared.x)[0]
        argmax = logits[:k].argmax(0)
        inside = torch.zeros_like(argmax, dtype=torch.bool)
        inside[: prepared.size[0], : prepared.size[1]] = True
        regions = {c: (argmax == c) & inside for c in range(1, k)}
        return {c: r for c, r in regions.items() if r.any()}

    def to_input_region(self, mask: np.ndarray, prepared: Prepared) -> Tensor:
        """An image-space boolean mask on the padded input (nearest resize, zero padding)."""
        h, w = prepared.size
        t = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
        t = F.interpolate(t, size=(h, w), mode="nearest")[0, 0] > 0.5
        out = torch.zeros(prepared.x.shape[-2:], dtype=torch.bool)
        out[:h, :w] = t
        return out
