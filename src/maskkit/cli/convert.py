"""``maskkit convert``: rewrite annotations in another format, reporting every instance that changed."""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    src: Path = typer.Argument(..., help="Any annotation source, or a dataset YAML / folder with splits."),
    dst: Path = typer.Argument(..., help="Output folder (a dataset is written as DST/<split>/ + DST/dataset.yaml)."),
    to: str = typer.Option(..., "--to", help="Output format: coco, yolo, labelme, voc or masks."),
    from_: str = typer.Option(None, "--from", help="Input format (detected when omitted)."),
) -> None:
    """Convert SRC to DST in another format; prints what changed (nothing is dropped silently)."""
    from maskkit.data.splits import DATASET_YAML, convert_dataset

    reports = convert_dataset(src, dst, to=to, from_format=from_)
    for split, report in reports:
        text = report.summary()
        typer.echo(f"[{split}] {text}" if split else text)
    if any(split for split, _ in reports):
        typer.echo(f"wrote {dst / DATASET_YAML}")
