"""``maskkit info``: statistics of a dataset (any format, or a dataset YAML with splits)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from maskkit.data.plots import write_plots
from maskkit.data.splits import load_dataset
from maskkit.data.stats import MASK_KINDS, dataset_stats

if TYPE_CHECKING:
    from rich.table import Table

    from maskkit.data.stats import DatasetStats


def command(
    data: Path = typer.Argument(..., help="An annotation source of any format, or a dataset YAML with splits."),
    plots: Path = typer.Option(None, "--plots", help="Write PNG charts (class counts, areas, ...) into this folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON instead of tables."),
) -> None:
    """Show images, instances, per-class counts, COCO size buckets and image sizes per split."""
    ds = load_dataset(data, allow_outside_root=True)  # annotations only: no image file is read
    stats = {name: dataset_stats(aset) for name, aset in ds.splits.items()}
    if as_json:
        typer.echo(json.dumps({name: st.to_dict() for name, st in stats.items()}, indent=2))
    else:
        from rich.console import Console

        console = Console()
        console.print(summary_table(stats, title=f"maskkit info: {data}"))
        console.print(class_table(stats))
        for name, st in stats.items():
            for note in st.notes:
                console.print(f"[yellow]note[/yellow] ({name}): {note}", highlight=False)
    if plots is not None:
        paths = write_plots(stats, plots)
        if not as_json:
            typer.echo(f"wrote {len(paths)} plots to {plots}: " + ", ".join(p.name for p in paths))


def _sizes(st: DatasetStats) -> str:
    if not st.image_sizes:
        return "-"
    if len(st.image_sizes) <= 4:
        return ", ".join(f"{s['width']}×{s['height']} ({s['count']})" for s in st.image_sizes)
    ws = [s["width"] for s in st.image_sizes]
    hs = [s["height"] for s in st.image_sizes]
    return f"{len(st.image_sizes)} distinct; w {min(ws)}–{max(ws)}, h {min(hs)}–{max(hs)}"


def summary_table(stats: dict[str, DatasetStats], title: str = "dataset") -> Table:
    """One column per split: counts, instances per image, size buckets, representations, sizes."""
    from rich.table import Table

    table = Table("", *stats, title=title, title_justify="left")
    ipi = [st.instances_per_image for st in stats.values()]
    rows: list[tuple[str, list[str]]] = [
        ("images", [str(st.images) for st in stats.values()]),
        ("instances", [str(st.instances) for st in stats.values()]),
        ("images without instances", [str(st.empty_images) for st in stats.values()]),
        (
            "instances/image min·median·mean·max",
            [f"{d['min']:g} · {d['median']:g} · {d['mean']:.2f} · {d['max']:g}" for d in ipi],
        ),
        *[
            (f"{b} ({rule})", [str(st.size_buckets[b]) for st in stats.values()])
            for b, rule in (("small", "< 32²"), ("medium", "32²–96²"), ("large", "≥ 96²"))
        ],
        ("crowd", [str(st.crowd) for st in stats.values()]),
        *[(f"masks: {k}", [str(st.mask_kinds[k]) for st in stats.values()]) for k in stats_kinds(stats)],
        ("image sizes w×h (count)", [_sizes(st) for st in stats.values()]),
    ]
    for name, values in rows:
        table.add_row(name, *values)
    return table


def stats_kinds(stats: dict[str, DatasetStats]) -> list[str]:
    """Mask representations present in any split (all of them if none is)."""
    present = [k for k in MASK_KINDS if any(st.mask_kinds[k] for st in stats.values())]
    return present or list(MASK_KINDS)


def class_table(stats: dict[str, DatasetStats]) -> Table:
    """Per class and split: instances and the number of images containing the class."""
    from rich.table import Table

    table = Table("id", "class", title="classes (instances / images containing the class)", title_justify="left")
    for split in stats:
        table.add_column(f"{split} instances", justify="right")
        table.add_column(f"{split} images", justify="right")
    by_split = [{c.id: c for c in st.classes} for st in stats.values()]
    names = {cid: c.name for d in by_split for cid, c in d.items()}
    for cid in sorted(names):
        cells = []
        for d in by_split:
            c = d.get(cid)
            cells += [str(c.instances), str(c.images)] if c else ["0", "0"]
        table.add_row(str(cid), names[cid], *cells)
    return table
