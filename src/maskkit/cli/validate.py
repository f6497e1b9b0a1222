"""``maskkit validate``: check a dataset for problems (exit 0 clean, 1 with errors, 2 unusable input)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from maskkit.data.splits import load_dataset
from maskkit.data.validate import ValidateOptions, validate_dataset
from maskkit.errors import MaskkitError

if TYPE_CHECKING:
    from maskkit.data.splits import DatasetSplits


def command(
    data: Path = typer.Argument(..., help="An annotation source of any format, or a dataset YAML with splits."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
    max_per_check: int = typer.Option(5, "--max-per-check", min=0, help="Findings listed per check in the table."),
    no_hash: bool = typer.Option(
        False, "--no-hash", help="Read image headers only: skip the duplicate, near-duplicate and truncation checks."
    ),
) -> None:
    """Run the dataset checks (missing images, broken masks, duplicates, split leakage, ...).

    Exit code: 0 without errors (warnings allowed), 1 with errors, 2 when DATA cannot be read,
    3 when a check crashed (an internal error, E000).
    """
    ds = _load(data, as_json)
    report = validate_dataset(dict(ds.splits), ValidateOptions(hashes=not no_hash), progress=not as_json,
                              problems=getattr(ds, "problems", None))
    if as_json:
        typer.echo(report.to_json())
    else:
        from rich.console import Console

        for split, same in getattr(ds, "aliases", {}).items():
            typer.echo(f"note: split {split!r} is the same source as {same!r} (checked once; it overlaps fully)")
        report.render(Console(), max_per_check=max_per_check)
    raise typer.Exit(report.exit_code)


def _load(data: Path, as_json: bool) -> DatasetSplits:
    """The splits of DATA; a DataError reading it exits with code 2 and a one-line message (anything
    else is a reader bug: the CLI reports it as an internal error, exit 3)."""
    try:
        return load_dataset(data, allow_outside_root=True)  # outside-root images are findings (E501), not fatal
    except MaskkitError as exc:
        message = str(exc)
    message = " ".join(message.split())
    if as_json:
        typer.echo(json.dumps({"ok": False, "fatal": message}))
    else:
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)
