"""Build the configured model (also from a checkpoint), load ``--weights`` into it, freeze backbone parts,
resolve the device. Shared by training (``engine``) and prediction (``inference``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskkit.config import TrainConfig
from maskkit.errors import ConfigError, DataError
from maskkit.models.checkpoint import load_checkpoint
from maskkit.models.registry import create, model_info

log = logging.getLogger("maskkit.train")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch understands it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


def inference_sizes(cfg: TrainConfig) -> tuple[int, int]:
    """``(min_size, max_size)`` the model resizes to at inference."""
    min_size = cfg.model.min_size or (max(cfg.augment.min_size) if cfg.augment.min_size else 800)
    max_size = cfg.model.max_size or cfg.augment.max_size or max(1333, min_size)
    return int(min_size), int(max_size)


def uses_semantic_targets(cfg: TrainConfig) -> bool:
    """Whether the model trains on per-pixel class maps (its registry entry's ``semantic_targets``)."""
    return model_info(cfg.model.name).capabilities.semantic_targets


def input_channels(cfg: TrainConfig) -> int:
    """How many channels the model of ``cfg`` takes: fixed by its registry entry, else its ``in_channels``."""
    fixed = model_info(cfg.model.name).capabilities.input.channels
    if fixed is not None:
        return fixed
    return int(cfg.model.options.get("in_channels", cfg.augment.channels or 3))


def build_model(cfg: TrainConfig, num_classes: int, pretrained: bool | None = None) -> nn.Module:
    """Create ``cfg.model.name`` for ``num_classes`` foreground classes.

    The config fields go to the builder as its registry entry's capabilities say: ``anchor_sizes``,
    ``mask_resolution`` and ``trainable_backbone_layers`` to models taking them, the non-default ``model.speed``
    fields to the Mask R-CNN builders (other models refuse them), ``in_channels`` (from
    ``augment.channels``) to models of any channel count. Models that resize internally skip that resize in
    train mode when the data pipeline resizes (multi-scale ``augment.min_size``); in eval mode they resize
    to :func:`inference_sizes` and map outputs back.
    """
    m = cfg.model
    caps = model_info(m.name).capabilities
    min_size, max_size = inference_sizes(cfg)
    kwargs: dict[str, Any] = dict(m.options)
    kwargs.update(min_size=min_size, max_size=max_size,
                  pretrained_backbone=m.pretrained_backbone if pretrained is None else pretrained)
    if caps.accepts("mask_resolution"):
        kwargs["mask_resolution"] = m.mask_resolution
    if m.anchor_sizes is not None and caps.accepts("anchor_sizes"):
        kwargs["anchor_sizes"] = m.anchor_sizes
    if m.trainable_backbone_layers is not None:
        if not caps.accepts("trainable_backbone_layers"):
            raise ConfigError(f"{m.name}: trainable_backbone_layers applies to detection models; use "
                              "freeze_backbone to freeze the encoder")
        kwargs["trainable_backbone_layers"] = m.trainable_backbone_layers
    for name, value in m.speed.builder_options().items():
        if not caps.accepts(name):
            raise ConfigError(f"{m.name}: model.speed.{name} applies to the Mask R-CNN models only")
        kwargs[name] = value
    if caps.input.channels is None:
        kwargs["in_channels"] = input_channels(cfg)
    if caps.resizes_internally:
        kwargs["train_resize"] = not cfg.augment.min_size
    model = create(m.name, num_classes, **kwargs)
    if m.freeze_backbone:
        freeze_backbone(model, caps.backbone)
    return model


def freeze_backbone(model: nn.Module, backbone: str | None = "backbone.body") -> int:
    """Stop gradients through the backbone body at the dotted path ``backbone`` (the FPN and heads still train);
    returns the frozen parameter count. ``backbone`` is the registry entry's ``capabilities.backbone``."""
    if backbone is None:
        raise ConfigError(f"{type(model).__name__} has no backbone that can be frozen")
    n = 0
    for p in model.get_submodule(backbone).parameters():
        p.requires_grad_(False)
        n += p.numel()
    return n


@dataclass
class LoadReport:
    """What happened when weights were loaded (counts of tensors)."""

    loaded: int = 0
    missing: int = 0
    unexpected: int = 0
    shape_mismatch: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"loaded {self.loaded} tensors, {self.missing} missing, {self.unexpected} unexpected"
        if self.shape_mismatch:
            text += f", {len(self.shape_mismatch)} skipped for shape (e.g. class heads): " + ", ".join(
                self.shape_mismatch[:4]) + ("..." if len(self.shape_mismatch) > 4 else "")
        return text


_PREFIXES = ("", "backbone.body.", "backbone.", "module.")


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # a maskkit checkpoint (or a {"model": state_dict} wrapper)
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError("not a state dict or maskkit checkpoint", file=path)
    return obj


def load_weights(model: nn.Module, path: str | Path) -> LoadReport:
    """Load matching tensors of a maskkit checkpoint or torchvision-format state dict (whole model or backbone).

    Keys are matched as they are, or under ``backbone.body.``/``backbone.`` (backbone-only files),
    or without a ``module.`` prefix (DDP). Tensors whose shape differs (class heads of another
    class count) are skipped and reported.
    """
    path = Path(path)
    src = _state_dict_of(load_checkpoint(path), path)
    own = model.state_dict()
    best: dict[str, torch.Tensor] = {}
    for prefix in _PREFIXES:
        if prefix == "module.":
            cand = {k[len(prefix):]: v for k, v in src.items() if k.startswith(prefix)}
        else:
            cand = {prefix + k: v for k, v in src.items()}
        if sum(k in own for k in cand) > sum(k in own for k in best):
            best = cand
    report = LoadReport()
    usable = {}
    for k, v in best.items():
        if k not in own:
            report.unexpected += 1
        elif own[k].shape != v.shape:
            report.shape_mismatch.append(k)
        else:
            usable[k] = v
    if not usable:
        raise DataError("no tensor of these weights matches the model", file=path)
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    report.missing = len(own) - len(usable)
    return report


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with what a predictor needs to map its outputs back."""

    model: nn.Module
    config: TrainConfig
    class_names: list[str]
    category_ids: list[int]


def model_from_checkpoint(path: str | Path, ema: bool = True) -> LoadedModel:
    """Rebuild the model of a checkpoint file or run folder (``best.pt``, else ``last.pt``), weights-only.

    ``ema``: use the EMA weights when the checkpoint has them. No pretrained weights are fetched.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").is_file() else path / "last.pt"
    ckpt = load_checkpoint(path)
    config = TrainConfig.model_validate(ckpt["config"])
    category_ids = [int(c) for c in ckpt["category_ids"]]
    model = build_model(config, len(category_ids), pretrained=False)
    model.load_state_dict(ckpt["ema"]["module"] if ema and ckpt.get("ema") else ckpt["model"])
    return LoadedModel(model, config, list(ckpt["class_names"]), category_ids)
