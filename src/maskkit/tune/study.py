"""The Optuna study of ``maskkit tune``: sampler, pruner and a database that several processes share.

The study lives in an SQLAlchemy database (SQLite in the output folder by default, any URL such as
``postgresql://user@host/db`` for several machines): processes opened on the same URL and study name share its
trials, and a rerun continues it. A running trial sends a heartbeat; one silent for twice the interval (its
process was killed) is marked failed and queued again with the same parameters
(``RetryHeartbeatStaleTrialCallback``), Optuna's own handling of lost workers.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from maskkit.errors import ConfigError

SAMPLERS = ("tpe", "random", "cmaes", "qmc", "gp")
PRUNERS = ("median", "hyperband", "none")
INSTALL_HINT = "pip install 'maskkit[tune]'"
CREATE_ATTEMPTS = 5


def require_optuna() -> ModuleType:
    """The ``optuna`` module, or a one-line ``ConfigError`` saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(f"maskkit tune needs Optuna: {INSTALL_HINT}") from None
    return optuna


def default_storage(out: str | Path) -> str:
    """``sqlite:///OUT/study.db`` (absolute) for the output folder ``out``."""
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def make_sampler(name: str, seed: int | None = None, startup_trials: int = 3) -> Any:
    """The Optuna sampler called ``name`` (:data:`SAMPLERS`); ``startup_trials`` random ones come first."""
    optuna = require_optuna()
    s = optuna.samplers
    builders = {
        "tpe": lambda: s.TPESampler(seed=seed, n_startup_trials=startup_trials),
        "random": lambda: s.RandomSampler(seed=seed),
        "cmaes": lambda: s.CmaEsSampler(seed=seed, n_startup_trials=startup_trials),
        "qmc": lambda: s.QMCSampler(seed=seed),
        "gp": lambda: s.GPSampler(seed=seed, n_startup_trials=startup_trials),
    }
    if name not in builders:
        raise ConfigError(f"--sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    # Optuna imports cmaes only when the first trial after the random ones is sampled: say it now
    if name == "cmaes" and importlib.util.find_spec("cmaes") is None:
            raise ConfigError("--sampler cmaes needs the cmaes package: pip install cmaes")
    return builders[name]()


def make_pruner(name: str, startup_trials: int = 3) -> Any:
    """The Optuna pruner called ``name`` (:data:`PRUNERS`); the median pruner waits for ``startup_trials``."""
    optuna = require_optuna()
    p = optuna.pruners
    if name == "median":
        return p.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)
    if name == "hyperband":
        return p.HyperbandPruner(min_resource=1, max_resource="auto")
    if name == "none":
        return p.NopPruner()
    raise ConfigError(f"--pruner {name!r}: choose one of {', '.join(PRUNERS)}")


def make_storage(url: str, heartbeat: int = 60) -> Any:
    """An ``RDBStorage`` on the SQLAlchemy ``url`` with a ``heartbeat`` (seconds) and retries of lost trials."""
    optuna = require_optuna()
    if heartbeat < 1:
        raise ConfigError(f"--heartbeat must be at least 1 second, got {heartbeat}")
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several processes on one SQLite file wait for each other's writes instead of failing at once.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    storages = optuna.storages
    retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None)  # Optuna >= 4.9
    key = "heartbeat_stale_trial_callback" if retry is not None else "failed_trial_callback"
    retry = retry or storages.RetryFailedTrialCallback
    import sqlalchemy.exc

    def problem(exc: Exception) -> ConfigError:
        return ConfigError(f"--storage {url}: {' '.join(str(exc).split())[:300]}")

    for attempt in range(1, CREATE_ATTEMPTS + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return storages.RDBStorage(url, heartbeat_interval=heartbeat, **{key: retry(max_retry=2)}, **kwargs)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as exc:
                # Processes starting together on a new database race to create its tables: the loser retries
                # and finds them made; a server that stays unreachable ends in an error.
                last = exc
            except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError) as exc:  # a bad URL, a missing driver
                raise problem(exc) from None
        time.sleep(0.5 * attempt)
    raise problem(last)


def open_study(name: str, storage: Any, metric: str, sampler: Any = None, pruner: Any = None) -> Any:
    """Create the study ``name`` in ``storage`` or load it (``load_if_exists``), maximising ``metric``.

    A study created for another metric is refused. Trials left running by a killed process whose heartbeat
    is stale are failed (and queued again) now.
    """
    optuna = require_optuna()
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    saved = study.user_attrs.get("metric")
    if saved is None:
        study.set_user_attr("metric", metric)
    elif saved != metric:
        raise ConfigError(f"study {name!r} in {storage.url} maximises {saved}, not {metric}: pass --metric {saved} "
                          "or another --study name")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return study


def finished(study: Any) -> int:
    """The study's trials that count towards ``--trials``: complete or pruned."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
