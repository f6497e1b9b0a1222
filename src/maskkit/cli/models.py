"""``maskkit models``: list the registered architectures."""

from __future__ import annotations

import json

import typer

from maskkit.models import list_models


def command(
    pattern: str = typer.Argument(None, help="Glob over model names, e.g. 'maskrcnn_*'."),
    task: str = typer.Option(None, "--task", help="Only 'instance' or 'semantic' models."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {name, task, family, description}."),
) -> None:
    """List the models `maskkit train --model` accepts."""
    infos = list_models(pattern, task)  # type: ignore[arg-type]
    if as_json:
        typer.echo(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "task", "family", "description", title="maskkit models")
    for i in infos:
        table.add_row(i.name, i.task, i.family, i.description)
    Console().print(table)
