"""Run a checkpoint's network on one image: its eval output, a pooled encoder embedding, stochastic passes.

The embedding is the global average of the deepest feature map of the model's encoder (the module its
registry entry names as ``backbone``: ``backbone.body`` for Mask R-CNN, ``net.encoder`` for dense models),
captured by a forward hook during the ordinary eval pass, L2-normalised.

Stochastic passes (``mc-dropout``): a model with dropout layers runs them with only those layers in train
mode (Monte Carlo dropout, ``passes`` times); a model without dropout (every registered model at present)
runs flip test-time augmentation instead (identity, left-right, top-bottom, both), each foreground map
flipped back. :attr:`ModelProbe.stochastic` says which one is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from maskkit.active.uncertainty import foreground_map
from maskkit.config import TrainConfig
from maskkit.inference.tta import FLIPS, flip_image
from maskkit.models.registry import model_info

__all__ = ["ModelProbe", "deepest_feature"]


def deepest_feature(features: Any) -> torch.Tensor | None:
    """The feature map with the fewest pixels (the last of equals) in a tensor, list, tuple or dict of them."""
    if isinstance(features, torch.Tensor):
        return features if features.ndim == 4 else None
    items = features.values() if isinstance(features, dict) else features if isinstance(features, list | tuple) \
        else []
    best = None
    for f in items:
        f = deepest_feature(f)
        if f is not None and (best is None or f.shape[-2] * f.shape[-1] <= best.shape[-2] * best.shape[-1]):
            best = f
    return best


def _module(model: nn.Module, dotted: str | None) -> nn.Module:
    target: Any = model
    for part in (dotted or "").split("."):
        if part:
            target = getattr(target, part, None)
            if not isinstance(target, nn.Module):
                return model
    return target if isinstance(target, nn.Module) else model


class ModelProbe:
    """A model in eval mode with a hook on its encoder (see the module docstring)."""

    def __init__(self, model: nn.Module, config: TrainConfig, device: torch.device, passes: int = 8) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.passes = max(2, int(passes))
        self.dropout = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
        self.stochastic = "dropout" if self.dropout else "flip-tta"
        self._captured: torch.Tensor | None = None
        self._encoder = _module(model, model_info(config.model.name).capabilities.backbone)

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self._captured = deepest_feature(output)

    @contextmanager
    def _capture(self) -> Iterator[None]:
        handle = self._encoder.register_forward_hook(self._hook)
        self._captured = None
        try:
            yield
        finally:
            handle.remove()

    @torch.inference_mode()
    def run(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        """The eval output of a ``C×H×W`` image and its L2-normalised embedding."""
        with self._capture():
            output = self.model([image.to(self.device)])[0]
        feat = self._captured
        if feat is None:  # an encoder without 4-d maps: the image itself, pooled, stands in
            feat = image[None]
        vec = feat[:1].float().mean(dim=(-2, -1)).reshape(-1).cpu().numpy().astype(np.float64)
        norm = float(np.linalg.norm(vec))
        return output, vec / norm if norm > 0 else vec

    @torch.inference_mode()
    def stochastic_maps(self, image: torch.Tensor, first: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Foreground maps of several stochastic passes (``first``: the plain eval output, reused)."""
        size = (int(image.shape[-2]), int(image.shape[-1]))
        maps = [foreground_map(first, size)]
        x = image.to(self.device)
        if self.dropout:
            for m in self.dropout:
                m.train()
            try:
                maps += [foreground_map(self.model([x])[0], size) for _ in range(self.passes - 1)]
            finally:
                for m in self.dropout:
                    m.eval()
            return maps
        for flip in FLIPS[1:]:
            out = self.model([flip_image(x, flip)])[0]
            maps.append(flip_image(foreground_map(out, size), flip))
        return maps
