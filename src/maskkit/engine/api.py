"""The Python API: ``maskkit.train(config)`` and ``maskkit.load(checkpoint).predict(image)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maskkit.engine.config import TrainConfig, load_config
from maskkit.engine.trainer import TrainResult, fit, resume_path
from maskkit.errors import ConfigError
from maskkit.structures import Instances

RESUME_OVERRIDABLE = ("schedule.epochs", "device", "data.workers", "output.progress", "threads")
"""Config fields a resumed run may change; everything else comes from the checkpoint."""


def resolve_config(
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    resume: str | Path | None = None,
) -> TrainConfig:
    """The run's config: a ``TrainConfig``, a dict, a YAML path or the defaults, plus dotted ``overrides``.

    With ``resume`` the checkpoint's own config is used; only :data:`RESUME_OVERRIDABLE` fields may change,
    and the run folder is the checkpoint's folder.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if resume is not None:
        from maskkit.engine.checkpoint import load_checkpoint

        path = resume_path(resume)
        saved = load_checkpoint(path)["config"]
        ignored = sorted(set(overrides) - set(RESUME_OVERRIDABLE))
        if ignored:
            import logging

            logging.getLogger("maskkit.train").warning("resume: ignoring %s (taken from the checkpoint)", ignored)
        cfg = _apply(saved, {k: v for k, v in overrides.items() if k in RESUME_OVERRIDABLE})
        cfg.output.out = str(path.parent)
        return cfg
    if config is None or isinstance(config, str | Path):
        return load_config(config, overrides)
    if isinstance(config, TrainConfig):
        return _apply(config.model_dump(mode="json"), overrides)
    if isinstance(config, dict):
        return _apply(config, overrides)
    raise ConfigError(f"config must be a TrainConfig, dict or YAML path, got {type(config).__name__}")


def _apply(data: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    import tempfile

    import yaml

    # load_config validates and applies overrides; go through it so that errors read the same.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        return load_config(path, overrides)


def train(
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
    resume: str | Path | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a model; ``overrides`` are dotted config keys (``train(cfg, **{"schedule.epochs": 3})``)."""
    return fit(resolve_config(config, overrides, resume), resume=resume)


class Predictor:
    """A trained model ready for inference: ``predict(image) -> Instances`` (labels = dataset category ids)."""

    def __init__(self, model: nn.Module, config: TrainConfig, class_names: list[str], category_ids: list[int],
                 device: torch.device, score_threshold: float = 0.05) -> None:
        self.model = model.eval()
        self.config = config
        self.class_names = class_names
        self.category_ids = category_ids
        self.device = device
        self.score_threshold = score_threshold

    def _tensor(self, image: np.ndarray | str | Path) -> torch.Tensor:
        from maskkit.data.dataset import convert_channels, normalise_image
        from maskkit.data.images import read_image

        array = read_image(Path(image)) if isinstance(image, str | Path) else np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        aug = self.config.augment
        chw = np.ascontiguousarray(convert_channels(array, aug.channels).transpose(2, 0, 1))
        return torch.from_numpy(normalise_image(chw, aug.normalise, aug.fixed_max))

    @torch.no_grad()
    def predict(self, image: np.ndarray | str | Path, score_threshold: float | None = None) -> Instances:
        """Instances of one image (``H×W×C`` array or path): boxes XYXY, labels, scores, masks (RLE)."""
        from maskkit.engine.postprocess import to_instances

        x = self._tensor(image)
        out = self.model([x.to(self.device)])[0]
        inst = to_instances(out, tuple(x.shape[-2:]), self.category_ids)
        thr = self.score_threshold if score_threshold is None else score_threshold
        return inst[np.asarray(inst.scores) >= thr]


def load(checkpoint: str | Path, device: str = "cpu", ema: bool = True) -> Predictor:
    """Load a maskkit checkpoint (``best.pt``/``last.pt`` or a run folder) as a :class:`Predictor`."""
    from maskkit.engine.checkpoint import load_checkpoint
    from maskkit.engine.model import build_model
    from maskkit.engine.trainer import resolve_device

    path = Path(checkpoint)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").is_file() else path / "last.pt"
    ckpt = load_checkpoint(path)
    cfg = TrainConfig.model_validate(ckpt["config"])
    model = build_model(cfg, len(ckpt["category_ids"]), pretrained=False)
    state = ckpt["ema"]["module"] if ema and ckpt.get("ema") else ckpt["model"]
    model.load_state_dict(state)
    dev = resolve_device(device)
    return Predictor(model.to(dev), cfg, list(ckpt["class_names"]), list(ckpt["category_ids"]), dev)
