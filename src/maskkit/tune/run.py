"""``run_study``: the whole ``maskkit tune`` - open the shared study, run trials until it has enough, report."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskkit.config import read_config, validate_config
from maskkit.engine.trainer import validation_metric
from maskkit.errors import ConfigError
from maskkit.tune.objective import Objective, TrialFailed
from maskkit.tune.report import write_report
from maskkit.tune.space import SearchSpace, load_space
from maskkit.tune.study import (
    default_storage,
    finished,
    make_pruner,
    make_sampler,
    make_storage,
    open_study,
    require_optuna,
)

log = logging.getLogger("maskkit.tune")


@dataclass
class TuneResult:
    """What a ``maskkit tune`` session leaves: the study and the files written."""

    study: Any
    out: Path
    storage: str
    files: dict[str, Path] = field(default_factory=dict)
    ran: int = 0
    """Trials this process ran."""


def run_study(
    config: str | Path | Mapping[str, Any],
    space: str | Path | SearchSpace,
    trials: int,
    out: str | Path,
    *,
    minutes_per_trial: float | None = None,
    storage: str | None = None,
    study: str = "maskkit",
    sampler: str = "tpe",
    pruner: str = "median",
    seed: int | None = None,
    metric: str | None = None,
    startup_trials: int = 3,
    heartbeat: int = 60,
    baseline: bool = True,
) -> TuneResult:
    """Run the study ``study`` until it holds ``trials`` finished (complete or pruned) trials, then report.

    ``config`` is the base training config (YAML path or dict), ``space`` the search space (YAML path or
    :class:`SearchSpace`); each trial trains in ``out/trial-NNNN/``. ``storage`` is an SQLAlchemy URL
    (default ``sqlite:///out/study.db``): processes on one URL and study name share the trials, and a rerun
    resumes. ``metric`` (default: the engine's, ``segm.AP`` or ``semantic.miou``) is maximised;
    ``minutes_per_trial`` is each run's ``schedule.max_minutes``. ``baseline`` queues the base config's own
    values as a trial (once per study, when the space can take them): the search is compared with it.
    """
    require_optuna()  # the install hint before any work
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if minutes_per_trial is not None and minutes_per_trial <= 0:
        raise ConfigError(f"--minutes-per-trial must be positive, got {minutes_per_trial}")
    base = read_config(config) if isinstance(config, str | Path) else dict(config)
    base_cfg = validate_config(base, config if isinstance(config, str | Path) else None)
    if not isinstance(space, SearchSpace):
        space = load_space(space, base)
    metric = metric or validation_metric(base_cfg)
    sampler_, pruner_ = make_sampler(sampler, seed, startup_trials), make_pruner(pruner, startup_trials)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(out)
    the_study = open_study(study, make_storage(url, heartbeat), metric, sampler_, pruner_)
    if baseline:
        queue_baseline(the_study, space, base)
    remaining = trials - finished(the_study)
    log.info("study %r (%s): %d of %d trials finished, %d to run here; maximising %s", study, url,
             trials - max(remaining, 0), trials, max(remaining, 0), metric)
    ran = 0
    if remaining > 0:
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        objective = Objective(base, space, out, metric, minutes_per_trial)
        # n_trials bounds this process; the callback stops it once the shared study has enough (other processes)
        the_study.optimize(objective, n_trials=remaining, catch=(TrialFailed,), gc_after_trial=True,
                           callbacks=[MaxTrialsCallback(trials, states=(TrialState.COMPLETE, TrialState.PRUNED))])
        ran = objective.calls
    files = write_report(the_study, base, out)
    return TuneResult(study=the_study, out=out, storage=url, files=files, ran=ran)


def queue_baseline(study: Any, space: SearchSpace, base: Mapping[str, Any]) -> bool:
    """Queue the base config's values of the searched parameters as a trial (marked ``baseline``) unless the
    study already has a trial with them; False (and a log line) when the space cannot take them."""
    values, outside = space.base_values(base)
    if outside:
        log.info("no baseline trial: the base config's %s outside the search space", ", ".join(outside))
        return False
    study.enqueue_trial(values, user_attrs={"baseline": True}, skip_if_exists=True)
    return True
