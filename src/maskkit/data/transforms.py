"""Joint image/target augmentation on torchvision ``transforms.v2`` and ``tv_tensors``.

Geometry (resize, multi-scale, flips, crop) is done by torchvision on an ``Image``, the
``BoundingBoxes`` and the instance/semantic ``Mask`` together, so they always stay consistent.
:class:`~maskkit.data.dataset.InstanceDataset` then drops instances whose mask became empty and
recomputes boxes from the transformed masks. Photometric jitter only touches the image and also
works on grey and multi-channel (> 3) images.

The pipeline is built from :class:`~maskkit.config.AugmentConfig` (part of the training config)
by :func:`build_transforms`. Every transform is called as ``transforms(image, target)`` with a
float ``tv_tensors.Image`` in ``[0, 1]`` and returns the pair.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from maskkit.config import AugmentConfig


class ColorJitterAnyChannels(v2.Transform):  # type: ignore[misc]  # torchvision has no type information
    """Colour jitter on the image only; grey and multi-channel images get brightness and contrast.

    ``v2.ColorJitter`` accepts 1 or 3 channels. Other channel counts are jittered as a stack of
    one-channel images with the same random factors (saturation and hue are no-ops on grey).
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0):
        super().__init__()
        self.jitter = v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if inpt.shape[-3] == 3:
            return self.jitter(inpt)
        flat = tv_tensors.Image(inpt.reshape(-1, 1, *inpt.shape[-2:]))
        out = self.jitter(flat).reshape(inpt.shape)
        return tv_tensors.wrap(out, like=inpt)


class RandomTranspose(v2.Transform):  # type: ignore[misc]  # torchvision has no type information
    """Swap the height and width axes of the image, masks and boxes with probability ``p`` (exact, no resampling)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = float(p)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"apply": bool(torch.rand(()) < self.p)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["apply"]:
            return inpt
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            if inpt.format != tv_tensors.BoundingBoxFormat.XYXY:
                raise ValueError(f"RandomTranspose needs XYXY boxes, got {inpt.format}")
            h, w = inpt.canvas_size
            return tv_tensors.wrap(inpt[..., [1, 0, 3, 2]], like=inpt, canvas_size=(w, h))
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return tv_tensors.wrap(inpt.transpose(-1, -2).contiguous(), like=inpt)
        return inpt


class RandomCorruption(v2.Transform):  # type: ignore[misc]  # torchvision has no type information
    """With probability ``p``, one corruption of ``names`` at one of ``severities`` on the image only
    (:mod:`maskkit.data.corruptions`; the image passes through 8 bits). The draws come from torch's generator, so
    seeded runs and DataLoader workers repeat; corruptions needing RGB are not drawn for other images."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, p: float, names: list[str], severities: list[int]) -> None:
        super().__init__()
        self.p, self.names, self.severities = float(p), list(names), list(severities)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if not bool(torch.rand(()) < self.p):
            return {"name": None}
        return {"name": self.names[int(torch.randint(len(self.names), ()))],
                "severity": self.severities[int(torch.randint(len(self.severities), ()))],
                "seed": int(torch.randint(2**31 - 1, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        from maskkit.data.corruptions import applicable, corrupt_tensor

        name = params["name"]
        if name is None or not applicable(name, int(inpt.shape[-3])):
            return inpt
        out = corrupt_tensor(inpt, name, params["severity"], params["seed"])
        return tv_tensors.wrap(out.to(device=inpt.device, dtype=inpt.dtype), like=inpt)


def build_transforms(train: bool, cfg: AugmentConfig | None = None, scale_crop: bool = True) -> v2.Compose:
    """The joint transform pipeline for training (random) or evaluation (deterministic resize only).
    ``scale_crop=False`` leaves the training resize and crop out (the dataset does them on the source window)."""
    cfg = cfg or AugmentConfig()
    steps: list[v2.Transform] = []
    geometry = scale_crop or not train or cfg.crop is None
    if cfg.min_size and geometry:
        if train:
            steps.append(v2.RandomShortestSize(cfg.min_size, max_size=cfg.max_size, antialias=True))
        else:
            steps.append(v2.Resize(max(cfg.min_size), max_size=cfg.max_size, antialias=True))
    if train:
        if cfg.crop is not None and geometry:
            steps.append(v2.RandomCrop(cfg.crop, pad_if_needed=True, fill=0))
        if cfg.hflip > 0:
            steps.append(v2.RandomHorizontalFlip(cfg.hflip))
        if cfg.vflip > 0:
            steps.append(v2.RandomVerticalFlip(cfg.vflip))
        if cfg.transpose > 0:
            steps.append(RandomTranspose(cfg.transpose))
        if cfg.color_jitter > 0 or cfg.hue > 0:
            s = cfg.color_jitter
            steps.append(ColorJitterAnyChannels(brightness=s, contrast=s, saturation=s, hue=cfg.hue))
        if cfg.corruption.p > 0:
            from maskkit.data.corruptions import corruption_names

            names = corruption_names(cfg.corruption.names, training=True)
            steps.append(RandomCorruption(cfg.corruption.p, names, cfg.corruption.severities))
    return v2.Compose(steps or [v2.Identity()])


def to_tv_target(target: dict[str, Any], canvas_size: tuple[int, int]) -> dict[str, Any]:
    """Wrap a target's ``boxes``/``masks``/``semantic`` tensors as tv_tensors so v2 transforms move them."""
    out = dict(target)
    out["boxes"] = tv_tensors.BoundingBoxes(
        target["boxes"], format="XYXY", canvas_size=canvas_size, clamping_mode="hard"
    )
    for key in ("masks", "semantic"):
        if key in target:
            out[key] = tv_tensors.Mask(target[key])
    return out


def from_tv_target(target: dict[str, Any]) -> dict[str, Any]:
    """Plain tensors again (tv_tensor subclasses removed) after the transforms."""
    return {k: v.as_subclass(torch.Tensor) if isinstance(v, tv_tensors.TVTensor) else v for k, v in target.items()}
