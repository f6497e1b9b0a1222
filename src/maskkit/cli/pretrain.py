"""``maskkit pretrain``: self-supervised pretraining of a model's encoder on unlabeled images.

Writes ``OUT/encoder.pt`` (load it with ``maskkit train --weights OUT/encoder.pt``) and ``OUT/pretrain.json``;
see :mod:`maskkit.engine.pretrain`. Needs ``maskkit[ssl]`` (lightly's losses and heads).
"""

from __future__ import annotations

from pathlib import Path

import typer

from maskkit.errors import ConfigError, DataError


def command(
    data: Path = typer.Option(..., "--data", help="Folder of unlabeled images."),
    encoder: str = typer.Option(..., "--encoder", help="Registered model whose encoder to pretrain (maskkit models), "
                                "e.g. bottomup_effl0 or maskrcnn_r18_fpn."),
    out: Path = typer.Option(Path("runs/pretrain"), "--out", "-o", help="Output folder."),
    method: str = typer.Option("simclr", "--method", help="simclr, byol or dino."),
    minutes: float | None = typer.Option(None, "--minutes", help="Wall-clock budget."),
    steps: int | None = typer.Option(None, "--steps", help="Step budget (the first of --minutes/--steps ends it)."),
    pattern: str = typer.Option("**/*", "--glob", help="Which files below --data, e.g. '*/images/*.png' for the "
                                "DSB layout (masks left out)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Training config whose model options and "
                                       "image settings (channels, normalisation) to use."),
    init: str = typer.Option("scratch", "--init", help="scratch or imagenet (the model's pretrained backbone)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per step (two views each)."),
    size: int = typer.Option(128, "--size", help="View size in px (random resized crops)."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate."),
    channels: int = typer.Option(3, "--channels", help="Input channels (without --config)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N, auto."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """Pretrain a registered model's encoder on unlabeled images (SimCLR, BYOL, DINO via lightly)."""
    import logging

    from maskkit.data.images import is_image_file
    from maskkit.data.paths import is_inside

    if minutes is None and steps is None:
        raise ConfigError("give a budget: --minutes and/or --steps")
    if (minutes is not None and minutes <= 0) or (steps is not None and steps < 1):
        raise ConfigError("--minutes must be > 0 and --steps >= 1")
    if not data.is_dir():
        raise DataError("--data must be a folder of images", file=data)
    files = sorted(p for p in data.glob(pattern) if p.is_file() and is_image_file(p) and is_inside(p, data)
                   and not any(part.startswith(".") for part in p.relative_to(data).parts))
    if not files:
        raise DataError(f"no images match {pattern!r}", file=data)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from maskkit.config import load_config
    from maskkit.engine.pretrain import pretrain  # deferred: torch

    cfg = load_config(config) if config is not None else None
    result = pretrain(files, encoder, out, method=method, minutes=minutes, steps=steps, batch_size=batch_size,
                      size=size, lr=lr, channels=(cfg.augment.channels or channels) if cfg else channels, init=init,
                      device=device, seed=seed, root=data, config=cfg)
    last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
    typer.echo(f"pretrained the {encoder} encoder ({method}) for {result.steps} steps on {result.images} images "
               f"({result.seconds:.0f} s{last}) -> {result.weights}; fine-tune with: maskkit train ... --model "
               f"{encoder} --weights {result.weights}")
