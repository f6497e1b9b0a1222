"""Self-supervised pretraining of a registered model's encoder on unlabeled images (``maskkit pretrain``).

The encoder is the module the model's registry entry names as its ``backbone`` (``backbone.body`` for Mask
R-CNN, ``net.encoder`` for the dense models), fed the model's own input normalisation. Each step takes two
random views of every image of a batch (random resized crop, flips, 90° rotations, brightness/contrast
jitter, blur; any channel count), pools the encoder's deepest feature map and trains with the loss and heads
of `lightly <https://github.com/lightly-ai/lightly>`_ (``pip install maskkit[ssl]``; no Lightning trainer):

* ``simclr``: projection head + NT-Xent contrastive loss;
* ``byol``: online projection and prediction heads against a momentum (EMA) target, negative cosine loss;
* ``dino``: student and momentum teacher DINO heads, DINO loss with centering (two global views).

Output ``OUT/encoder.pt``: ``{"model": state dict of the encoder under the model's own keys (e.g.
``net.encoder.*``), "pretrain": what was run}``, which ``maskkit train --weights OUT/encoder.pt`` (or
``model.weights``) loads into the encoder of the same model; ``OUT/pretrain.json``: the settings and the loss
per logged step. Images are read once (bounded decode, confined to the data folder) and kept in memory.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from maskkit.config import TrainConfig
from maskkit.data.dataset import convert_channels, prepare_image
from maskkit.data.images import read_image
from maskkit.data.paths import confined
from maskkit.errors import ConfigError, DataError
from maskkit.fileio import atomic_write_json
from maskkit.models.checkpoint import save_checkpoint
from maskkit.models.factory import build_model, resolve_device
from maskkit.models.registry import model_info

__all__ = ["METHODS", "PretrainResult", "encoder_of", "pretrain"]

log = logging.getLogger("maskkit.pretrain")

METHODS = ("simclr", "byol", "dino")
WEIGHTS_FILE = "encoder.pt"


@dataclass
class PretrainResult:
    """What a pretraining run produced."""

    weights: Path
    steps: int
    seconds: float
    images: int
    losses: list[float] = field(default_factory=list)


def _lightly() -> Any:
    """lightly's losses, heads and momentum helpers (its Lightning-free modules only)."""
    try:
        import lightly.loss
        import lightly.models.modules.heads
        import lightly.models.utils
        import lightly.utils.scheduler
    except ImportError:
        raise ConfigError("maskkit pretrain needs lightly: pip install 'maskkit[ssl]'") from None
    return lightly


def encoder_of(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """``(dotted path, module)`` of the encoder of a model registered as ``name``."""
    path = model_info(name).capabilities.backbone
    if not path:
        raise ConfigError(f"model {name!r} names no encoder (registry 'backbone') to pretrain")
    module: Any = model
    for part in path.split("."):
        module = getattr(module, part)
    return path, module


def input_norm(model: nn.Module, channels: int) -> tuple[Tensor, Tensor]:
    """The model's input mean and std (``C×1×1``): a DenseInput's buffers or torchvision's transform lists."""
    for m in model.modules():
        mean, std = getattr(m, "mean", None), getattr(m, "std", None)
        if isinstance(mean, Tensor) and isinstance(std, Tensor) and mean.numel() == channels:
            return mean.detach().float().view(-1, 1, 1), std.detach().float().view(-1, 1, 1)
        mean, std = getattr(m, "image_mean", None), getattr(m, "image_std", None)
        if isinstance(mean, list | tuple) and isinstance(std, list | tuple) and len(mean) == channels:
            return torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    return torch.zeros(channels, 1, 1), torch.ones(channels, 1, 1)


def _pooled(features: Any) -> Tensor:
    """Global average of the deepest (fewest pixels) 4-d feature map of an encoder output."""
    maps = [features] if isinstance(features, Tensor) else list(
        features.values() if isinstance(features, dict) else features)
    maps = [f for f in maps if isinstance(f, Tensor) and f.ndim == 4]
    deepest = min(reversed(maps), key=lambda f: f.shape[-2] * f.shape[-1])
    return deepest.mean(dim=(-2, -1))


def load_images(paths: Sequence[Path], cfg: TrainConfig, channels: int, root: Path | None) -> list[Tensor]:
    """``C×H×W`` half-precision tensors in [0, 1] of ``paths`` (kept in memory at half the size of float32;
    unreadable files skipped with a warning)."""
    out = []
    with confined(root):
        for p in paths:
            try:
                array = read_image(p)
            except DataError as exc:
                log.warning("skipped %s", exc)
                continue
            if array.ndim == 2:
                array = array[:, :, None]
            chw = convert_channels(array, channels, p).transpose(2, 0, 1)
            out.append(torch.from_numpy(prepare_image(np.ascontiguousarray(chw), cfg.augment.normalise,
                                                      cfg.augment.fixed_max, cfg.augment.appearance)).half())
    if not out:
        raise DataError("no image could be read for pretraining", file=root)
    return out


def make_views(size: int) -> Callable[[Tensor], Tensor]:
    """A random view of a ``C×H×W`` image as a ``C×size×size`` tensor (torchvision v2 on tensors)."""
    from torchvision.transforms import v2

    geometric = v2.Compose([v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
                            v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()])
    blur = v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.3)

    def view(image: Tensor) -> Tensor:
        x = geometric(image.float())
        x = torch.rot90(x, int(torch.randint(4, ()).item()), dims=(-2, -1))
        gain = 1 + (torch.rand(()) - 0.5) * 0.8
        bias = (torch.rand(()) - 0.5) * 0.4
        mean = x.mean()
        x = ((x - mean) * gain + mean + bias).clamp(0, 1)  # contrast and brightness, any channel count
        return blur(x)

    return view


class _Method(nn.Module):
    """Heads and loss of one SSL method around the (online/student) encoder."""

    def __init__(self, method: str, encoder: nn.Module, dim: int, total_steps: int) -> None:
        super().__init__()
        lightly = _lightly()
        heads, losses = lightly.models.modules.heads, lightly.loss
        self.method, self.encoder, self.total = method, encoder, max(total_steps, 1)
        self.target_encoder: nn.Module | None = None
        self.criterion: Any
        make_head: Callable[[], nn.Module]
        if method == "simclr":
            make_head = lambda: heads.SimCLRProjectionHead(dim, 512, 128)  # noqa: E731
            self.criterion = losses.NTXentLoss(temperature=0.2)
        elif method == "byol":
            make_head = lambda: heads.BYOLProjectionHead(dim, 1024, 256)  # noqa: E731
            self.predictor = heads.BYOLPredictionHead(256, 1024, 256)
            self.criterion = losses.NegativeCosineSimilarity()
        elif method == "dino":
            make_head = lambda: heads.DINOProjectionHead(dim, 512, 64, 1024)  # noqa: E731
            self.criterion = losses.DINOLoss(output_dim=1024, warmup_teacher_temp_epochs=0)
        else:
            raise ConfigError(f"unknown pretraining method {method!r}; choose one of {', '.join(METHODS)}")
        self.head = make_head()
        if method in ("byol", "dino"):
            self.target_encoder = copy.deepcopy(encoder)
            self.target_head = make_head()  # a fresh copy: DINO's weight-normed layer cannot be deep-copied
            self.target_head.load_state_dict(self.head.state_dict())
            lightly.models.utils.deactivate_requires_grad(self.target_encoder)
            lightly.models.utils.deactivate_requires_grad(self.target_head)
        self._utils = lightly.models.utils
        self._schedule = lightly.utils.scheduler.cosine_schedule

    def trainable(self) -> list[nn.Parameter]:
        skip = set()
        if self.target_encoder is not None:
            skip = {id(p) for p in (*self.target_encoder.parameters(), *self.target_head.parameters())}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in skip]

    def loss(self, a: Tensor, b: Tensor, step: int) -> Tensor:
        if self.method == "simclr":
            return self.criterion(self.head(_pooled(self.encoder(a))), self.head(_pooled(self.encoder(b))))
        assert self.target_encoder is not None
        momentum = self._schedule(step, self.total, 0.99, 1.0)
        self._utils.update_momentum(self.encoder, self.target_encoder, m=momentum)
        self._utils.update_momentum(self.head, self.target_head, m=momentum)
        with torch.no_grad():
            ta = self.target_head(_pooled(self.target_encoder(a)))
            tb = self.target_head(_pooled(self.target_encoder(b)))
        sa, sb = self.head(_pooled(self.encoder(a))), self.head(_pooled(self.encoder(b)))
        if self.method == "byol":
            pa, pb = self.predictor(sa), self.predictor(sb)
            return 0.5 * (self.criterion(pa, tb.detach()) + self.criterion(pb, ta.detach()))
        return self.criterion([ta, tb], [sa, sb], epoch=0)


def pretrain(
    images: Sequence[Path],
    model_name: str,
    out: str | Path,
    method: str = "simclr",
    minutes: float | None = None,
    steps: int | None = None,
    batch_size: int = 16,
    size: int = 128,
    lr: float = 1e-3,
    channels: int = 3,
    init: str = "scratch",
    device: str = "cpu",
    seed: int = 0,
    root: str | Path | None = None,
    config: TrainConfig | None = None,
) -> PretrainResult:
    """Pretrain the encoder of ``model_name`` on ``images``; stops after ``minutes`` or ``steps`` (the first
    reached; at least one of them). ``init``: ``scratch`` or ``imagenet`` (the model's pretrained backbone).
    ``config``: the training config whose model options (and input normalisation) to use; ``root``: images
    are only read below it. Writes ``OUT/encoder.pt`` and ``OUT/pretrain.json`` (module docstring)."""
    if method not in METHODS:
        raise ConfigError(f"unknown pretraining method {method!r}; choose one of {', '.join(METHODS)}")
    if minutes is None and steps is None:
        raise ConfigError("give a budget: minutes and/or steps")
    if init not in ("scratch", "imagenet"):
        raise ConfigError(f"init must be 'scratch' or 'imagenet', got {init!r}")
    if batch_size < 2 or size < 32:
        raise ConfigError("batch size must be >= 2 (contrastive pairs) and the view size >= 32 px")
    _lightly()
    torch.manual_seed(seed)
    cfg = config or TrainConfig.model_validate({"model": {"name": model_name}, "data": {"path": "x"},
                                                "augment": {"channels": channels}})
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": model_name})})
    model = build_model(cfg, 1, pretrained=init == "imagenet")
    path, encoder = encoder_of(model, model_name)
    mean, std = input_norm(model, channels)
    data = load_images(images, cfg, channels, Path(root) if root is not None else None)
    dev = resolve_device(device)
    encoder.train()
    with torch.no_grad():
        dim = int(_pooled(encoder(torch.zeros(2, channels, size, size))).shape[1])
    total = steps if steps is not None else 10**9
    method_net = _Method(method, encoder, dim, total if steps is not None else 1000).to(dev)
    optimizer = torch.optim.AdamW(method_net.trainable(), lr=lr, weight_decay=1e-4)
    view = make_views(size)
    rng = np.random.default_rng(seed)
    mean, std = mean.to(dev), std.to(dev)
    deadline = time.monotonic() + 60.0 * minutes if minutes is not None else math.inf
    t0, step, losses = time.monotonic(), 0, []
    while step < total and time.monotonic() < deadline:
        idx = rng.choice(len(data), size=batch_size, replace=len(data) < batch_size)
        a = (torch.stack([view(data[i]) for i in idx]).to(dev) - mean) / std
        b = (torch.stack([view(data[i]) for i in idx]).to(dev) - mean) / std
        loss = method_net.loss(a, b, step)
        if not torch.isfinite(loss):
            raise ConfigError(f"pretraining loss became {float(loss)} at step {step}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % 50 == 0:
            log.info("step %d: loss %.4f", step, float(np.mean(losses[-50:])))
    seconds = time.monotonic() - t0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {f"{path}.{k}": v.detach().cpu() for k, v in encoder.state_dict().items()}
    info = {"method": method, "model": model_name, "encoder": path, "init": init, "steps": step,
            "seconds": round(seconds, 1), "images": len(data), "batch_size": batch_size, "size": size, "lr": lr,
            "channels": channels}
    weights = out / WEIGHTS_FILE
    save_checkpoint(weights, {"model": state, "pretrain": info})
    atomic_write_json(out / "pretrain.json", {**info, "loss": [round(v, 5) for v in losses]}, indent=1)
    return PretrainResult(weights, step, seconds, len(data), losses)
