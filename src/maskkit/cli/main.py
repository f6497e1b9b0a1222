"""The ``maskkit`` command: one thin command per verb, no logic of its own.

Command modules import heavy libraries (torch, OpenCV) inside their functions so that
``maskkit --help`` starts fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from maskkit import __version__
from maskkit.errors import MaskkitError, one_line

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
    debug: bool = typer.Option(
        False, "--debug", help="Show the full traceback of an unexpected error (instead of writing it to a file)."
    ),
) -> None:
    """maskkit: instance and semantic segmentation toolkit."""
    global _DEBUG
    _DEBUG = debug


_DEBUG = False
INTERNAL_ERROR_EXIT = 3
"""Exit code of an unexpected exception (a bug): distinct from 1 (`validate` found data errors) and 2 (usage
errors, unusable input: a `DataError` or `ConfigError`)."""


def _register() -> None:
    import importlib

    for verb in ("demo", "train", "eval", "models", "synth", "validate", "info", "convert", "predict", "export",
                 "serve", "tune", "select", "pretrain", "explain", "robustness"):
        app.command(verb)(importlib.import_module(f"maskkit.cli.{verb}").command)


_register()


def main() -> None:
    """Entry point: click handles usage errors and exit codes; maskkit errors become one line.

    Any other exception is a bug: one line naming it and the file holding the full traceback
    (``maskkit --debug ...`` prints the traceback instead), exit code 3.
    """
    try:
        app()
    except MaskkitError as exc:
        typer.secho(f"error: {one_line(exc)}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # a full disk, a read-only output folder, a permission problem
        where = f"{exc.filename}: " if exc.filename else ""
        typer.secho(f"error: {where}{exc.strerror or exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except Exception as exc:
        _internal_error(exc)


def _internal_error(exc: BaseException) -> None:
    """Report an unexpected exception: one line + where its traceback went (or the traceback with --debug)."""
    import traceback

    text = "".join(traceback.format_exception(exc))
    summary = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    if _DEBUG or "--debug" in sys.argv[1:]:
        sys.stderr.write(text)
        typer.secho(f"internal error: {summary}", fg=typer.colors.RED, err=True)
        sys.exit(INTERNAL_ERROR_EXIT)
    log = _write_traceback(text)
    where = f"full traceback in {log}" if log else "run with --debug for the traceback"
    typer.secho(f"internal error (a bug in maskkit): {summary}; {where}", fg=typer.colors.RED, err=True)
    sys.exit(INTERNAL_ERROR_EXIT)


def _write_traceback(text: str) -> Path | None:
    """Write ``text`` to ``<tempdir>/maskkit-crash-<time>-<pid>.txt``; ``None`` when that fails."""
    import os
    import tempfile
    import time

    path = Path(tempfile.gettempdir()) / f"maskkit-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        path.write_text(f"maskkit {__version__}: {' '.join(sys.argv)}\n{text}", encoding="utf-8")
    except OSError:
        return None
    return path
