"""``maskkit convert``: rewrite annotations in another format, reporting every instance that changed."""

from __future__ import annotations

from pathlib import Path

import typer

from maskkit.data.splits import DATASET_YAML, convert_dataset
from maskkit.errors import ConfigError

LAYOUTS = {"label-images": "masks", "per-instance": "dsb"}
"""``--to masks --layout``: the label-image layout, or the lossless one-PNG-per-instance layout (format ``dsb``)."""


def command(
    src: Path = typer.Argument(..., help="Any annotation source, or a dataset YAML / folder with splits."),
    dst: Path = typer.Argument(..., help="Output folder (a dataset is written as DST/<split>/ + DST/dataset.yaml)."),
    to: str = typer.Option(..., "--to", help="Output format: coco, yolo, labelme, voc or masks."),
    from_: str = typer.Option(None, "--from", help="Input format (detected when omitted)."),
    layout: str = typer.Option(
        None, "--layout", help="With --to masks: label-images (one label PNG per image, default) or per-instance "
        "(one PNG per instance, lossless for overlaps)."
    ),
    allow_outside_root: bool = typer.Option(
        False, "--allow-outside-root", help="Accept image paths that resolve outside the dataset root (via .. , an "
        "absolute path or a symlink); still only files that decode as images are copied."
    ),
) -> None:
    """Convert SRC to DST in another format; prints what changed (nothing is dropped silently)."""
    if layout is not None:
        if to not in ("masks", "labelimages"):
            raise ConfigError(f"--layout applies to --to masks only (got --to {to})")
        if layout not in LAYOUTS:
            raise ConfigError(f"unknown --layout {layout!r}; use one of: {', '.join(LAYOUTS)}")
        to = LAYOUTS[layout]  # the masks writer's layout= option, as the registered format that writes it
    reports = convert_dataset(src, dst, to=to, from_format=from_, allow_outside_root=allow_outside_root)
    for split, report in reports:
        text = report.summary()
        typer.echo(f"[{split}] {text}" if split else text)
    if any(split for split, _ in reports):
        typer.echo(f"wrote {dst / DATASET_YAML}")
