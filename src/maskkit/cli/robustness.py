"""``maskkit robustness``: mask AP, box AP, Boundary AP and F1@0.5 clean, under corruptions and under attacks.

The logic lives in :mod:`maskkit.robustness`; this module parses the flags and prints the table.
"""

from __future__ import annotations

from pathlib import Path

import typer

from maskkit.errors import ConfigError


def command(
    model: Path = typer.Option(..., "--model", help="Checkpoint or run folder (attacks need one; corruptions also "
                               "take an exported model)."),
    data: Path = typer.Option(..., "--data", help="dataset.yaml or annotation source (a run's val images are kept "
                              "when it holds training images, as in maskkit eval --model)."),
    out: Path = typer.Option(..., "--out", help="Folder for robustness.json, conditions/ and the plots."),
    corruptions: str = typer.Option("all", "--corruptions", help="Corruptions or groups, comma-separated: noise, "
                                    "blur, weather, digital, microscopy, imagenet-c, all, none."),
    severities: str = typer.Option("1..5", "--severities", help="Severities, e.g. 1..5 or 1,3,5."),
    attacks: str = typer.Option("fgsm,pgd", "--attacks", help="Attacks on the model's own loss: fgsm, pgd "
                                "(comma-separated) or none."),
    eps: str = typer.Option("1/255,2/255,4/255,8/255", "--eps", help="L-inf budgets in [0, 1] image units."),
    pgd_steps: int = typer.Option(10, "--pgd-steps", help="PGD iterations."),
    split: str = typer.Option("val", "--split", help="Split of a dataset.yaml."),
    seed: int = typer.Option(0, "--seed", help="Seed of the corruptions and of PGD's random start."),
    max_dets: str = typer.Option("1,10,100", "--max-dets", help="COCO max detections, e.g. 1,100,1000 for nuclei."),
    score_threshold: float = typer.Option(0.5, "--score-threshold", help="Min score for matching F1 (AP uses all)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write corruptions.png and attacks.png."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Accept image paths resolving "
                                            "outside the dataset root."),
    ray: str | None = typer.Option(None, "--ray", help="Predict the clean and corrupted images on Ray (auto, a Ray "
                                   "address or local:N); attacks run here. Needs maskkit[ray]."),
    ray_workers: int | None = typer.Option(None, "--ray-workers", help="With --ray: actors, one model each."),
    ray_cpus: int = typer.Option(1, "--ray-cpus", help="With --ray: CPUs (and torch threads) per worker."),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus", help="With --ray: GPUs per worker."),
) -> None:
    """Robustness to common corruptions and adversarial attacks (resumable: finished conditions are kept)."""
    from maskkit.inference.distributed import ray_settings
    from maskkit.robustness import run_robustness  # deferred: torch
    from maskkit.robustness.report import print_table

    try:
        dets = [int(v) for v in max_dets.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--max-dets must be comma-separated integers, got {max_dets!r}") from None
    result = run_robustness(
        model, data, out, split=split, corruptions=corruptions, severities=severities,
        attacks=None if attacks.strip().lower() == "none" else attacks, eps=eps, pgd_steps=pgd_steps, seed=seed,
        max_dets=dets, score_threshold=score_threshold, allow_outside_root=allow_outside_root, plots=plots,
        ray=ray_settings(ray, ray_workers, ray_cpus, ray_gpus), log=lambda msg: typer.echo(msg, err=True))
    print_table(result.report)
    resumed = len(result.report["conditions"]) - len(result.computed)
    typer.echo(f"wrote {out / 'robustness.json'} ({len(result.computed)} conditions evaluated, {resumed} resumed)"
               + (f" and {', '.join(p.name for p in result.plots)}" if result.plots else ""))
