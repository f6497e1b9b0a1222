"""``maskkit demo``: synthetic data, training, evaluation and overlays in one command (a few CPU minutes)."""

from __future__ import annotations

from pathlib import Path

import typer

from maskkit.demo import DEMO_IMAGES, DEMO_SIZE, DEMO_TEST_IMAGES, print_summary, run_demo


def command(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Output folder (data, run, metrics, overlays)."),
    images: int = typer.Option(DEMO_IMAGES, "--images", help="Synthetic train + val images (20% val: thresholds "
                               "and checkpoint are chosen on it)."),
    test_images: int = typer.Option(DEMO_TEST_IMAGES, "--test-images", help="Synthetic test images (a disjoint "
                                    "stream, used for no choice): metrics.json reports them."),
    size: int = typer.Option(DEMO_SIZE, "--size", help="Synthetic image size and training size (pixels)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs (default: the recipe's)."),
    minutes: float | None = typer.Option(None, "--minutes",
                                         help="Training budget (minutes, default 4.75); the LR ends on time."),
    model: str | None = typer.Option(None, "--model", help="Model name (default bottomup_effl0; "
                                     "maskrcnn_effl0_fpn trains Mask R-CNN)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data and the training."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Training config YAML instead of the recipe."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Train on synthetic shapes and evaluate on a held-out test split: metrics.json, overlays.png, curves.png
    (a few CPU minutes)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run_demo(out=out, images=images, size=size, epochs=epochs, minutes=minutes, model=model, seed=seed,
                      config=config, progress=not no_progress, test_images=test_images)
    print_summary(result)
