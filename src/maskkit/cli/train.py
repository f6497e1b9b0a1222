"""``maskkit train``: train a model from a config file, with flags overriding single fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from maskkit.errors import ConfigError


def command(
    config: Path | None = typer.Option(None, "--config", "-c", help="Training config YAML (see configs/)."),
    data: str | None = typer.Option(None, "--data", help="Dataset YAML or any dataset path."),
    unlabeled: str | None = typer.Option(None, "--unlabeled", help="Folder of unlabeled images: semi-supervised "
                                         "training (data.unlabeled; options under semi.*, e.g. --set semi.weight=2)."),
    model: str | None = typer.Option(None, "--model", help="Model name (maskkit models)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Number of epochs."),
    batch: int | None = typer.Option(None, "--batch", help="Batch size."),
    imgsz: int | None = typer.Option(None, "--imgsz", help="Training/inference shortest edge (one scale)."),
    out: str | None = typer.Option(None, "--out", help="Run folder."),
    weights: str | None = typer.Option(None, "--weights", help="Initial weights: maskkit checkpoint or state dict."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue a run (its folder or last.pt)."),
    val_fraction: float | None = typer.Option(None, "--val-fraction",
                                              help="Val split carved from train when the data has none (0.2)."),
    workers: int | None = typer.Option(None, "--workers", help="DataLoader worker processes."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed."),
    minutes: float | None = typer.Option(None, "--minutes", help="Wall-clock training budget (schedule.max_minutes)."),
    set_: list[str] | None = typer.Option(None, "--set", help="Any config field, dotted: --set optim.lr=0.002 "
                                          "(repeatable; the value is read as YAML)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Accept image paths that resolve "
                                            "outside the dataset root (data.allow_outside_root)."),
) -> None:
    """Train a registered model; writes checkpoints, logs, metrics and curves to the run folder."""
    import logging

    import yaml

    from maskkit.engine.api import train  # deferred: torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides: dict[str, Any] = {
        "data.path": data, "data.unlabeled": unlabeled, "model.name": model, "schedule.epochs": epochs,
        "data.batch_size": batch,
        "augment.min_size": [imgsz] if imgsz else None, "model.min_size": imgsz, "output.out": out,
        "model.weights": weights, "device": device, "data.val_fraction": val_fraction, "data.workers": workers,
        "seed": seed, "output.progress": False if no_progress else None, "schedule.max_minutes": minutes,
        "data.allow_outside_root": True if allow_outside_root else None,
    }
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. optim.lr=0.002), got {item!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: cannot read the value ({exc})") from None
    result = train(config, resume=resume, **overrides)
    msg = f"done: {result.epochs} epochs, {result.steps} steps -> {result.out}"
    if result.best_metric is not None:
        msg += f"; best {result.best_metric:.4f} at epoch {(result.best_epoch or 0) + 1}"
    typer.echo(msg)
