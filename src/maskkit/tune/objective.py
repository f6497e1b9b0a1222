"""One trial of ``maskkit tune``: a normal training run in ``OUT/trial-NNNN/`` with the sampled overrides.

The engine reports the validation metric after each validation (its ``on_validation`` hook); the trial passes it
to Optuna (``trial.report``) and ends the run when the pruner says so (``optuna.TrialPruned``). The trial's
value is the run's best value of the metric (the one ``best.pt`` holds).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from maskkit.engine.api import train
from maskkit.engine.loop import metric_value
from maskkit.errors import ConfigError, DataError, MaskkitError
from maskkit.tune.space import SearchSpace

log = logging.getLogger("maskkit.tune")


class TrialFailed(Exception):
    """A trial whose training failed (e.g. diverged): Optuna records it as failed and the search goes on."""


def trial_folder(out: str | Path, number: int) -> Path:
    """``OUT/trial-0003`` for trial 3."""
    return Path(out) / f"trial-{number:04d}"


def _has_key(metrics: Mapping[str, Any], dotted: str) -> bool:
    node: Any = metrics
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


class Objective:
    """The callable ``study.optimize`` runs: sample, train, report, prune."""

    def __init__(self, base: Mapping[str, Any], space: SearchSpace, out: str | Path, metric: str,
                 minutes: float | None = None) -> None:
        self.base, self.space, self.out, self.metric, self.minutes = dict(base), space, Path(out), metric, minutes
        self.calls = 0
        """Trials this objective ran (in this process)."""

    def __call__(self, trial: Any) -> float:
        import optuna

        self.calls += 1
        values = self.space.suggest(trial)
        run = trial_folder(self.out, trial.number)
        trial.set_user_attr("run", str(run.resolve()))
        cfg = self.space.config(self.base, values, {"output.out": str(run), "schedule.metric": self.metric,
                                                    "schedule.max_minutes": self.minutes})
        pruned: list[int] = []

        def on_validation(epoch: int, metrics: dict[str, Any]) -> bool:
            value = metric_value(metrics, self.metric)
            if value is None:
                if not _has_key(metrics, self.metric):
                    raise ConfigError(f"--metric {self.metric}: not among the validation metrics ("
                                      f"{', '.join(_leaves(metrics))})")
                return False
            trial.report(value, epoch)
            if trial.should_prune():
                pruned.append(epoch)
                return True
            return False

        log.info("trial %d: %s -> %s", trial.number, values, run)
        try:
            result = train(cfg, on_validation=on_validation)
        except (ConfigError, DataError):
            raise  # the setup is wrong: every trial would fail the same way
        except MaskkitError as exc:  # e.g. training diverged under these values
            raise TrialFailed(f"trial {trial.number} ({run}): {exc}") from None
        trial.set_user_attr("epochs", result.epochs)
        trial.set_user_attr("steps", result.steps)
        if pruned:
            raise optuna.TrialPruned(f"{self.metric} after epoch {pruned[0] + 1} below the pruner's bar")
        if result.best_metric is None:
            raise TrialFailed(f"trial {trial.number} ({run}): {self.metric} was never defined (no validation, "
                              "or no ground truth)")
        return float(result.best_metric)


def _leaves(metrics: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted paths of the numeric entries of a metrics dict (for the error of an unknown metric)."""
    out: list[str] = []
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out += _leaves(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out.append(f"{prefix}{key}")
    return out[:20]
