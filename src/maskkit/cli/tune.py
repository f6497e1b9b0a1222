"""``maskkit tune``: an Optuna hyperparameter search over a training config (``maskkit.tune``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from maskkit.tune.report import best_trial
from maskkit.tune.study import require_optuna

if TYPE_CHECKING:
    from maskkit.tune.run import TuneResult


def command(
    config: Path = typer.Option(..., "--config", "-c", help="Base training config YAML (as for maskkit train)."),
    space: Path = typer.Option(..., "--space", help="Search space YAML: config dotted path -> "
                               "{type: float|int|categorical, low, high, log, step | choices}."),
    trials: int = typer.Option(..., "--trials", help="Finished (complete or pruned) trials the study should hold; "
                               "shared by every process on the study, a rerun tops it up."),
    out: Path = typer.Option(..., "--out", help="Output folder: trial-NNNN/ run folders, study.db, report."),
    minutes_per_trial: float | None = typer.Option(None, "--minutes-per-trial",
                                                   help="Training budget of each trial (schedule.max_minutes)."),
    storage: str | None = typer.Option(None, "--storage", help="SQLAlchemy URL of the study database (default "
                                       "sqlite:///OUT/study.db); e.g. postgresql://user@host/db for several hosts."),
    study: str = typer.Option("maskkit", "--study", help="Study name in the database."),
    sampler: str = typer.Option("tpe", "--sampler", help="tpe, random, cmaes, qmc or gp."),
    pruner: str = typer.Option("median", "--pruner", help="median, hyperband or none."),
    seed: int | None = typer.Option(None, "--seed", help="Sampler seed (leave unset when several processes "
                                    "share a study, or they sample the same values)."),
    metric: str | None = typer.Option(None, "--metric", help="Validation metric to maximise (dotted, as in "
                                      "metrics.json; default the config's schedule.metric, else segm.AP / "
                                      "semantic.miou)."),
    startup_trials: int = typer.Option(3, "--startup-trials", help="Random trials before the sampler models the "
                                       "results, and trials completed before the median pruner prunes."),
    heartbeat: int = typer.Option(60, "--heartbeat", help="Seconds between a running trial's heartbeats; a trial "
                                  "silent for twice that (killed) is failed and queued again."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="First trial: the base config's own "
                                  "values (when the space can take them), to compare the search with."),
) -> None:
    """Search hyperparameters with Optuna: each trial a training run, pruned on the validation metric."""
    import logging

    require_optuna()
    from maskkit.tune.run import run_study  # deferred: torch, optuna

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run_study(config, space, trials, out, minutes_per_trial=minutes_per_trial, storage=storage, study=study,
                       sampler=sampler, pruner=pruner, seed=seed, metric=metric, startup_trials=startup_trials,
                       heartbeat=heartbeat, baseline=baseline)
    _print_summary(result)


def _print_summary(result: TuneResult) -> None:
    from collections import Counter

    from rich.console import Console
    from rich.table import Table

    study = result.study
    states = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    console = Console()
    console.print(f"study {study.study_name!r} ({result.storage}): {counts}; {result.ran} run by this process")
    best = best_trial(study)
    if best is None:
        console.print("no completed trial yet")
        return
    table = Table("", "value", title=f"best trial {best.number}", title_justify="left")
    table.add_row(study.user_attrs.get("metric", "value"), f"{best.value:.4f}")
    for name, value in best.params.items():
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    table.add_row("run", str(best.user_attrs.get("run", "")))
    console.print(table)
    for name, path in result.files.items():
        console.print(f"{name}: {path}")
