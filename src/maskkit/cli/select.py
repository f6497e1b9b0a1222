"""``maskkit select``: rank unlabeled images for labelling, write the top K as pre-annotations.

Outputs in ``--out`` (see :mod:`maskkit.active.select`): ``ranking.csv``, ``labelme/`` (the top K images with
LabelMe JSON of the model's predictions), ``coco/`` with ``--coco``, ``selection.json``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from maskkit.errors import ConfigError

STRATEGY_HELP = ("entropy (instance scores and mask probabilities), margin (best vs second-best probability), "
                 "mc-dropout (disagreement of dropout passes; flip TTA for models without dropout), diversity "
                 "(k-center greedy on encoder embeddings), random")


def command(
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint (.pt) or run folder (best.pt, else last.pt)."),
    pool: Path = typer.Option(..., "--pool", help="Folder of unlabeled images (searched recursively)."),
    k: int = typer.Option(..., "--k", help="How many images to select for labelling."),
    out: Path = typer.Option(Path("runs/select"), "--out", "-o", help="Output folder."),
    strategy: str = typer.Option("entropy", "--strategy", help=STRATEGY_HELP),
    diversity: float = typer.Option(0.5, "--diversity", help="Weight of the diversity term of the uncertainty "
                                    "strategies: picks maximise uncertainty x (distance / 2)**weight (0: none)."),
    labeled: Path | None = typer.Option(None, "--labeled", help="Folder of images already labelled: the "
                                        "diversity term keeps picks away from them too."),
    conf: float = typer.Option(0.5, "--conf", help="Minimum score of the predictions written as pre-annotations."),
    max_det: int = typer.Option(300, "--max-det", help="At most this many pre-annotated instances per image."),
    passes: int = typer.Option(8, "--passes", help="Monte Carlo dropout passes (models with dropout)."),
    coco: bool = typer.Option(False, "--coco", help="Also write the top K as a COCO dataset (coco/)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N, auto."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random strategy."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous selection in --out."),
) -> None:
    """Rank unlabeled images by how much labelling them should help; pre-annotate the top K (LabelMe, COCO)."""
    from maskkit.active import STRATEGIES

    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if k < 1 or passes < 2 or max_det < 1 or not 0.0 <= conf <= 1.0:
        raise ConfigError("--k and --max-det must be >= 1, --passes >= 2 and --conf in [0, 1]")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from maskkit.active.select import load_model, pool_images, select, write_selection  # deferred: torch

    images, skipped = pool_images(pool, exclude=out)
    labeled_paths = [im.path for im in pool_images(labeled)[0]] if labeled is not None else []
    loaded = load_model(model)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("scoring", total=len(images) + len(labeled_paths))
        selection = select(loaded, images, k, strategy, diversity, labeled_paths, conf, max_det, passes, device,
                           seed, pool_root=pool, on_image=lambda done, _total: bar.update(task, completed=done))
    selection.skipped[:0] = skipped
    for line in selection.skipped[:5]:
        typer.secho(f"warning: skipped {line}", fg=typer.colors.YELLOW, err=True)
    if len(selection.skipped) > 5:
        typer.secho(f"warning: {len(selection.skipped) - 5} more skipped (listed in selection.json)",
                    fg=typer.colors.YELLOW, err=True)
    settings = {"model": str(model.resolve()), "pool": str(pool.resolve()), "diversity": diversity, "conf": conf}
    write_selection(selection, out, loaded.class_names, loaded.category_ids, coco=coco, overwrite=overwrite,
                    settings=settings)
    how = f" (mc-dropout by {selection.stochastic})" if selection.stochastic else ""
    typer.echo(f"ranked {len(selection.ranked)} images by {strategy}{how}; top {selection.k} pre-annotated in "
               f"{out / 'labelme'}" + (f" and {out / 'coco'}" if coco else "") + f"; ranking in {out / 'ranking.csv'}")
