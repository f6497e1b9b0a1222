"""``maskkit synth``: write the deterministic synthetic shapes dataset in the COCO layout."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from maskkit.data.synth import write_synthetic


def command(
    out: Path = typer.Argument(..., help="Output folder (COCO layout: annotations.json beside images/)."),
    images: int = typer.Option(200, "--images", help="Number of images."),
    size: int = typer.Option(256, "--size", help="Image width and height in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same arguments give byte-identical files."),
    val_fraction: float = typer.Option(
        None, "--val-fraction", help="Split off this fraction as val: writes OUT/train, OUT/val and OUT/dataset.yaml."
    ),
    test_fraction: float = typer.Option(
        None, "--test-fraction", help="Also a test split of this fraction (OUT/test, a disjoint image stream): "
        "never used for any choice, only to report on."
    ),
    workers: int = typer.Option(None, "--workers", help="Processes rendering images (default: one per CPU)."),
) -> None:
    """Generate textured ellipses, polygons and rings (objects with holes) with occlusion and a 10x+ scale range."""
    start = time.perf_counter()
    reports = write_synthetic(out, images, size, seed, val_fraction, workers=workers, test_fraction=test_fraction)
    elapsed = time.perf_counter() - start
    for name, report in reports.items():
        typer.echo(f"[{name}] {report.summary()}")
    if val_fraction is not None or test_fraction is not None:
        typer.echo(f"wrote {out / 'dataset.yaml'}")
    typer.echo(f"{images} images in {elapsed:.1f} s ({images / max(elapsed, 1e-9):.0f} images/s)")
