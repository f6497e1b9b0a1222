"""The training API: ``maskkit.train(config)`` (``maskkit.load`` lives in :mod:`maskkit.inference`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from maskkit.config import TrainConfig, load_config, merge_overrides, validate_config
from maskkit.engine.trainer import TrainResult, ValidationHook, fit, resume_path
from maskkit.errors import ConfigError
from maskkit.models.checkpoint import load_checkpoint

RESUME_OVERRIDABLE = ("schedule.epochs", "schedule.max_minutes", "device", "data.workers", "output.progress",
                      "threads")
"""Config fields a resumed run may change; everything else comes from the checkpoint (``max_minutes`` is then
the budget of the resumed session)."""


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
        path = resume_path(resume)
        saved = load_checkpoint(path)["config"]
        ignored = sorted(set(overrides) - set(RESUME_OVERRIDABLE))
        if ignored:
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
    """``data`` with the dotted ``overrides`` merged in, validated once."""
    return validate_config(merge_overrides(data, overrides))


def train(
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
    resume: str | Path | None = None,
    on_validation: ValidationHook | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a model; ``overrides`` are dotted config keys (``train(cfg, **{"schedule.epochs": 3})``).

    ``on_validation(epoch, metrics) -> stop`` is called after each validation (see
    :data:`~maskkit.engine.trainer.ValidationHook`); returning true ends the run there.
    """
    return fit(resolve_config(config, overrides, resume), resume=resume, on_validation=on_validation)
