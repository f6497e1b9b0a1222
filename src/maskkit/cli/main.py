"""The ``maskkit`` command: one thin command per verb, no logic of its own.

Command modules import heavy libraries (torch, OpenCV) inside their functions so that
``maskkit --help`` starts fast.
"""

from __future__ import annotations

import sys

import typer

from maskkit import __version__

app = typer.Typer(
    name="maskkit",
    help="Instance and semantic segmentation: data formats, training, evaluation, inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"maskkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """maskkit: instance and semantic segmentation toolkit."""


def _register() -> None:
    import importlib

    for verb in ("demo", "train", "eval", "models", "synth", "validate", "info", "convert", "predict"):
        app.command(verb)(importlib.import_module(f"maskkit.cli.{verb}").command)


_register()


def main() -> None:
    """Entry point: click handles usage errors and exit codes; maskkit errors become one line."""
    from maskkit.errors import MaskkitError

    try:
        app()
    except MaskkitError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # a full disk, a read-only output folder, a permission problem
        where = f"{exc.filename}: " if exc.filename else ""
        typer.secho(f"error: {where}{exc.strerror or exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
