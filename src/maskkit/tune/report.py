"""What ``maskkit tune`` leaves in its output folder: the best config, every trial, three plots.

* ``best_config.yaml`` – the base config with the best trial's values: ``maskkit train --config best_config.yaml``
* ``trials.csv`` – one row per trial (number, state, value, each parameter, epochs, run folder, timing)
* ``optimization_history.png``, ``param_importances.png`` (PED-ANOVA), ``parallel_coordinate.png``
"""

from __future__ import annotations

import csv
import io
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from maskkit.config import merge_overrides, validate_config
from maskkit.fileio import atomic_write_bytes, atomic_write_text

log = logging.getLogger("maskkit.tune")

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")


def best_trial(study: Any) -> Any | None:
    """The completed trial with the best value, or None while no trial has completed."""
    try:
        return study.best_trial
    except ValueError:  # no completed trial
        return None


def write_best_config(study: Any, base: Mapping[str, Any], path: Path) -> Path | None:
    """``best_config.yaml``: ``base`` with the best trial's values, validated; None without a completed trial."""
    best = best_trial(study)
    if best is None:
        return None
    data = merge_overrides(base, best.params, keep_none=True)
    validate_config(data, path)
    metric = study.user_attrs.get("metric", "value")
    header = (f"# maskkit tune: best of study {study.study_name!r}, trial {best.number} ({metric} {best.value:.4f}, "
              f"run {best.user_attrs.get('run', '?')})\n"
              f"# the base config with: {', '.join(f'{k}={v!r}' for k, v in best.params.items())}\n"
              f"# train it: maskkit train --config {path.name} --out runs/best\n")
    atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False))
    return path


def write_trials_csv(study: Any, path: Path) -> Path:
    """``trials.csv``: every trial of the study, one row each."""
    trials = study.get_trials(deepcopy=False)
    names: list[str] = []
    for t in trials:
        names += [k for k in t.params if k not in names]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["number", "state", "value", *names, "epochs", "last_step", "run", "start", "seconds", "retry_of",
                "baseline"])
    for t in trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else ""
        w.writerow([t.number, t.state.name, "" if t.value is None else t.value, *(t.params.get(k, "") for k in names),
                    t.user_attrs.get("epochs", ""), "" if t.last_step is None else t.last_step,
                    t.user_attrs.get("run", ""), t.datetime_start.isoformat(timespec="seconds") if t.datetime_start
                    else "", f"{seconds:.1f}" if seconds != "" else "", t.system_attrs.get("failed_trial", ""),
                    "yes" if t.user_attrs.get("baseline") else ""])
    atomic_write_text(path, buf.getvalue())
    return path


def write_plots(study: Any, out: Path) -> list[Path]:
    """The three PNG plots of ``optuna.visualization.matplotlib``; a plot the study cannot have yet (too few
    completed trials) is skipped with a log line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.trial import TrialState

    vis = optuna.visualization.matplotlib
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    makers = {
        "optimization_history": (1, lambda: vis.plot_optimization_history(study)),
        # PED-ANOVA: Optuna's own importance evaluator, no scikit-learn needed
        "param_importances": (2, lambda: vis.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator())),
        "parallel_coordinate": (1, lambda: vis.plot_parallel_coordinate(study)),
    }
    written: list[Path] = []
    for name, (needed, make) in makers.items():
        if complete < needed:
            log.info("%s.png: needs %d completed trial(s), the study has %d", name, needed, complete)
            continue
        with warnings.catch_warnings():  # experimental API; degenerate axes of few trials (harmless)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)
            ax = make()
        fig: Any = (ax.flat[0] if hasattr(ax, "flat") else ax).figure  # a Figure (Optuna draws with plt.subplots)
        fig.set_size_inches(9, 5.5)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        plt.close(fig)
        path = out / f"{name}.png"
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    return written


def write_report(study: Any, base: Mapping[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``best_config.yaml`` (once a trial completed), ``trials.csv`` and the plots into ``out``."""
    out = Path(out)
    files = {"trials": write_trials_csv(study, out / "trials.csv")}
    best = write_best_config(study, base, out / "best_config.yaml")
    if best is not None:
        files["best_config"] = best
    files.update({p.stem: p for p in write_plots(study, out)})
    return files
