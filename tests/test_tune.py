"""``maskkit tune``: the typed search space and its errors, the engine's validation hook, a 3-trial search that
prunes, a killed search resuming from its database, two processes sharing one SQLite study."""

from __future__ import annotations

import copy
import csv
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ONE_THREAD_ENV
from maskkit.config import TrainConfig, load_config
from maskkit.errors import ConfigError
from maskkit.tune import CategoricalParam, FloatParam, IntParam, load_space

TINY_BU: dict[str, Any] = {  # trains 2 epochs in about a second on 15 synthetic 64 px images
    "model": {"name": "bottomup_mbv2", "pretrained_backbone": False, "options": {"decoder_channels": [8, 8, 8, 8, 8]}},
    "data": {"batch_size": 4, "val_fraction": 0.2},
    "augment": {"min_size": [64], "max_size": None},
    "optim": {"lr": 1e-2, "warmup_steps": 1},
    "schedule": {"epochs": 2, "val_loss": False, "tune_thresholds": False},
    "output": {"tensorboard": False, "plots": False, "progress": False},
    "tune": {"split": "train_slice", "images": 3},
    "threads": 1,
}
METRIC = "semantic.miou"  # on these data it separates a learning run (~0.25 after 1 epoch) from lr=1e-9 (~0.18)


def _space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


# -- the search space -----------------------------------------------------------------------------------------


def test_space_loads_typed_params_in_file_order(tmp_path: Path) -> None:
    path = _space(tmp_path, """
optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
augment.color_jitter: {type: float, low: 0.0, high: 0.4, step: 0.1}
data.batch_size: {type: int, low: 1, high: 4}
model.mask_resolution: {type: categorical, choices: [28, 56]}
model.options.box_batch_size_per_image: {type: int, low: 64, high: 256, step: 64}
loss_weights.loss_mask: {type: float, low: 0.5, high: 2.0}
schedule.patience: {type: categorical, choices: [null, 3]}
""")
    space = load_space(path, {"schedule": {"patience": 10}})
    assert list(space.params) == ["optim.lr", "augment.color_jitter", "data.batch_size", "model.mask_resolution",
                                  "model.options.box_batch_size_per_image", "loss_weights.loss_mask",
                                  "schedule.patience"]
    p = space.params
    assert isinstance(p["optim.lr"], FloatParam) and p["optim.lr"].log
    assert isinstance(p["data.batch_size"], IntParam) and p["data.batch_size"].step == 1
    assert isinstance(p["model.mask_resolution"], CategoricalParam)
    cfg = space.config({"schedule": {"patience": 10}}, {"optim.lr": 0.005, "schedule.patience": None,
                                                        "model.options.box_batch_size_per_image": 128},
                       {"output.out": "x", "schedule.max_minutes": None})
    assert isinstance(cfg, TrainConfig) and cfg.optim.lr == 0.005 and cfg.output.out == "x"
    assert cfg.schedule.patience is None  # a sampled null sets null; an unset extra (None) is skipped
    assert cfg.model.options == {"box_batch_size_per_image": 128}
    values, outside = space.base_values({"schedule": {"patience": 10}})  # the parameters of a baseline trial
    assert values == {"optim.lr": 1e-3, "augment.color_jitter": 0.0, "data.batch_size": 2,
                      "model.mask_resolution": 28}
    assert outside == ["model.options.box_batch_size_per_image=(unset)", "loss_weights.loss_mask=(unset)",
                       "schedule.patience=10"]
    assert p["augment.color_jitter"].contains(0.2) and not p["augment.color_jitter"].contains(0.25)
    assert not p["data.batch_size"].contains(2.5) and not p["model.mask_resolution"].contains(True)


@pytest.mark.parametrize(("text", "expected"), [
    ("optim.lrr: {type: float, low: 0.1, high: 1}", "optim.lrr: unknown field 'lrr' in optim"),
    ("optimizer.lr: {type: float, low: 0.1, high: 1}", "optimizer.lr: unknown field 'optimizer' in the config"),
    ("optim.lr.x: {type: float, low: 0.1, high: 1}", "optim.lr.x: optim.lr is not a section"),
    ("optim: {type: float, low: 0.1, high: 1}", "optim: is a section"),
    ("output.out: {type: categorical, choices: [a, b]}", "output.out: set by maskkit tune"),
    ("optim.lr: {type: float, low: 0.1, high: 1, lo: 3}", "optim.lr: lo: Extra inputs are not permitted"),
    ("optim.lr: {type: float, low: 1, high: 0.1}", "optim.lr: low (1.0) is above high (0.1)"),
    ("optim.lr: {type: float, low: 0, high: 0.1, log: true}", "optim.lr: a log scale needs low > 0"),
    ("optim.lr: {type: float, low: 0.01, high: 0.1, log: true, step: 0.01}", "log and step cannot be combined"),
    ("optim.lr: {type: floaty, low: 0.1, high: 1}", "optim.lr: type: 'type' must be one of float, int, categorical"),
    ("optim.lr: {type: float, low: a, high: 1}", "optim.lr: low: Input should be a valid number"),
    ("optim.lr: {type: categorical, choices: []}", "optim.lr: choices: List should have at least 1 item"),
    ("optim.lr: {type: categorical, choices: [fast]}", "optim.lr: the value 'fast' is not valid for the config"),
    ("augment.color_jitter: {type: float, low: 0, high: 2}", "augment.color_jitter: the value 2.0 is not valid"),
    ("model.mask_resolution: {type: int, low: 28, high: 56}", "model.mask_resolution: the value 29 is not valid"),
    ("optim.lr: 0.1", "optim.lr: a parameter is a mapping, e.g. {type: float"),
    ("optim.lr: {low: 0.1, high: 1}", "optim.lr: type: 'type' must be one of float, int, categorical"),
    ("optim.lr: {type: categorical, choices: [[1, 2]]}", "optim.lr: choices.0: each choice must be a number"),
    ("[1, 2]", "a search space is a non-empty mapping"),
])
def test_space_errors_name_the_file_the_entry_and_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = _space(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message, message


def test_space_checks_values_against_the_base_config(tmp_path: Path) -> None:
    """Few integer values are all checked (not only the bounds); a base that is itself invalid is named as such."""
    path = _space(tmp_path, "optim.warmup_steps: {type: int, low: 0, high: 5}\n")
    assert load_space(path, {"optim": {"lr": 0.1}}).params["optim.warmup_steps"].values() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ConfigError, match="the base config is invalid"):
        load_space(path, {"optim": {"lr": -1}})


def test_nuclei_space_fits_the_nuclei_recipe() -> None:
    """configs/space-dsb2018.yaml loads against configs/dsb2018.yaml, and the recipe's own values are a trial."""
    from maskkit.config import read_config

    root = Path(__file__).resolve().parents[1] / "configs"
    base = read_config(root / "dsb2018.yaml")
    space = load_space(root / "space-dsb2018.yaml", base)
    values, outside = space.base_values(base)
    assert outside == [] and values == {"optim.lr": 1e-3, "optim.weight_decay": 1e-4, "augment.color_jitter": 0.2,
                                        "model.mask_resolution": 28}


def test_samplers_pruners_and_storage_errors(tmp_path: Path) -> None:
    import importlib.util

    import optuna

    from maskkit.tune.study import PRUNERS, SAMPLERS, make_pruner, make_sampler, make_storage

    for name in SAMPLERS:
        if name == "cmaes" and importlib.util.find_spec("cmaes") is None:  # an optional package of Optuna's
            with pytest.raises(ConfigError, match="pip install cmaes"):
                make_sampler(name)
        else:
            assert isinstance(make_sampler(name, seed=0), optuna.samplers.BaseSampler)
    assert all(isinstance(make_pruner(name), optuna.pruners.BasePruner) for name in PRUNERS)
    with pytest.raises(ConfigError, match="--sampler 'grid': choose one of tpe, random"):
        make_sampler("grid")
    with pytest.raises(ConfigError, match="--pruner 'x': choose one of median, hyperband, none"):
        make_pruner("x")
    with pytest.raises(ConfigError, match="--storage nonsense://: "):
        make_storage("nonsense://")
    storage = make_storage(f"sqlite:///{tmp_path / 'new' / 'study.db'}", heartbeat=5)  # creates the folder
    assert storage.heartbeat_interval == 5 and (tmp_path / "new" / "study.db").is_file()


# -- the command line without optuna, and --help ----------------------------------------------------------------


def test_without_optuna_tune_fails_with_a_one_line_hint(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['optuna'] = None; from maskkit.cli.main import main; "
            f"sys.argv = ['maskkit', 'tune', '--config', 'c.yaml', '--space', 's.yaml', '--trials', '2', '--out', "
            f"{str(tmp_path / 'o')!r}]; main()")
    proc = subprocess.run([sys.executable, "-c", code], env=ONE_THREAD_ENV, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "error: maskkit tune needs Optuna: pip install 'maskkit[tune]'"
    assert not (tmp_path / "o").exists()


def test_help_imports_neither_torch_nor_optuna() -> None:
    code = ("import sys; from typer.testing import CliRunner; from maskkit.cli.main import app\n"
            "for args, shown in ((['--help'], 'tune'), (['tune', '--help'], '--minutes-per-trial')):\n"
            "    r = CliRunner().invoke(app, args, terminal_width=200)\n"
            "    assert r.exit_code == 0 and shown in r.output, r.output\n"
            "print(sorted(m for m in ('torch', 'optuna', 'sqlalchemy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], env=ONE_THREAD_ENV, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- training through the engine --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from maskkit.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("tune-data")
    write_synthetic(root / "data", images=15, size=64, seed=2, workers=1)
    return root / "data"


def _base(data: Path, **schedule: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(TINY_BU)
    cfg["data"]["path"] = str(data)
    cfg["schedule"].update(schedule)
    return cfg


def test_engine_on_validation_hook_stops_the_run(data: Path, tmp_path: Path, one_thread: None) -> None:
    from maskkit.engine.api import train

    calls: list[tuple[int, float]] = []

    def hook(epoch: int, metrics: dict[str, Any]) -> bool:
        calls.append((epoch, metrics["semantic"]["miou"]))
        return epoch == 1

    result = train(_base(data, epochs=4), on_validation=hook, **{"output.out": str(tmp_path / "run")})
    assert [e for e, _ in calls] == [0, 1]  # called after each validation, stopped after the second
    assert result.epochs == 2 and result.stopped_early and (tmp_path / "run" / "last.pt").is_file()
    with (tmp_path / "run" / "results.csv").open() as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]


def test_three_trial_search_prunes_a_bad_trial_and_reports(data: Path, tmp_path: Path, one_thread: None) -> None:
    from optuna.trial import TrialState

    from maskkit.tune.run import run_study
    from maskkit.tune.study import default_storage, make_storage, open_study

    out = tmp_path / "search"
    space = _space(tmp_path, "optim.lr: {type: float, low: 1.0e-9, high: 3.0e-2, log: true}\n"
                             "augment.hflip: {type: categorical, choices: [0.0, 0.5]}\n")
    # The order is fixed through Optuna's queue: a learning run, lr=1e-9 (clearly worse: pruned by the median of
    # the first after its first validation), the learning run again (equal to the median: kept).
    queued = open_study("s", make_storage(default_storage(out)), METRIC)
    for lr in (1e-2, 1e-9, 1e-2):
        queued.enqueue_trial({"optim.lr": lr, "augment.hflip": 0.5})
    result = run_study(_base(data), space, 3, out, study="s", metric=METRIC, startup_trials=1, seed=0,
                       baseline=False)
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    assert result.ran == 3 and trials[1].params["optim.lr"] == 1e-9
    assert list(trials[1].intermediate_values) == [0]  # pruned at its first validation ...
    with (out / "trial-0001" / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 1  # ... and its training stopped there
    assert list(trials[0].intermediate_values) == [0, 1] and trials[2].value == trials[0].value
    for n in range(3):
        assert (out / f"trial-{n:04d}" / "config.yaml").is_file()
        assert trials[n].user_attrs["run"] == str((out / f"trial-{n:04d}").resolve())
    saved = load_config(out / "trial-0001" / "config.yaml")
    assert (saved.optim.lr, saved.schedule.metric, saved.output.out) == (1e-9, METRIC, str(out / "trial-0001"))
    # the report
    best = load_config(out / "best_config.yaml")  # ready to train
    assert best.optim.lr == 1e-2 and best.output.out == TrainConfig().output.out and best.data.path == str(data)
    with (out / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["number"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "PRUNED"), ("2", "COMPLETE")]
    assert float(rows[0]["value"]) == pytest.approx(trials[0].value) and rows[1]["optim.lr"] == "1e-09"
    for name in ("optimization_history", "param_importances", "parallel_coordinate"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and result.files[name] == png
    # a rerun with the study complete runs nothing; another metric on the same study is refused
    again = run_study(_base(data), space, 3, out, study="s", metric=METRIC)
    assert again.ran == 0 and len(again.study.trials) == 3
    with pytest.raises(ConfigError, match=r"maximises semantic\.miou, not segm\.AP"):
        run_study(_base(data), space, 3, out, study="s", metric="segm.AP")


def test_unknown_metric_is_a_config_error(data: Path, tmp_path: Path, one_thread: None) -> None:
    from maskkit.tune.run import run_study

    space = _space(tmp_path, "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2}\n")
    with pytest.raises(ConfigError, match=r"--metric segm.APX: not among the validation metrics \(.*segm.AP"):
        run_study(_base(data, epochs=1), space, 1, tmp_path / "o", metric="segm.APX")


def test_a_failed_trial_is_recorded_and_the_search_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training that fails under some values (diverged) is a failed trial; a setup error stops the search."""
    from types import SimpleNamespace

    from optuna.trial import TrialState

    from maskkit.errors import DataError, MaskkitError
    from maskkit.tune import objective
    from maskkit.tune.run import run_study
    from maskkit.tune.study import default_storage, make_storage, open_study

    def fake_train(cfg: TrainConfig, on_validation: Any) -> Any:
        if cfg.optim.lr > 0.05:
            raise MaskkitError("training diverged: 21 steps with a non-finite loss")
        if cfg.optim.lr < 1e-4:
            raise DataError("cannot decode", file="a.png")
        on_validation(0, {"segm": {"AP": 0.5}})
        return SimpleNamespace(best_metric=0.5, epochs=1, steps=3)

    monkeypatch.setattr(objective, "train", fake_train)
    space = _space(tmp_path, "optim.lr: {type: categorical, choices: [0.1, 0.01, 1.0e-5]}\n")
    study = open_study("maskkit", make_storage(default_storage(tmp_path / "o")), "segm.AP")
    for lr in (0.1, 0.01):
        study.enqueue_trial({"optim.lr": lr})
    result = run_study({}, space, 2, tmp_path / "o", baseline=False)
    assert [t.state for t in result.study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    study.enqueue_trial({"optim.lr": 1e-5})
    with pytest.raises(DataError, match=r"a\.png: cannot decode"):
        run_study({}, space, 2, tmp_path / "o", baseline=False)


# -- processes: a killed search resumes, two processes share a study ---------------------------------------------


def _tune_cmd(base: Path, space: Path, out: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "maskkit", "tune", "--config", str(base), "--space", str(space), "--trials",
            str(trials), "--out", str(out), "--metric", METRIC, *extra]


def _write_base(tmp_path: Path, data: Path, epochs: int) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(_base(data, epochs=epochs)))
    return path


def _trials(url: str, study: str) -> list[Any]:
    import optuna

    return optuna.load_study(study_name=study, storage=url).get_trials()


def test_killed_search_resumes_from_the_database(data: Path, tmp_path: Path) -> None:
    from optuna.trial import TrialState

    base = _write_base(tmp_path, data, epochs=6)
    space = _space(tmp_path, "optim.lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n")
    out = tmp_path / "o"
    cmd = _tune_cmd(base, space, out, 3, "--pruner", "none", "--heartbeat", "1")
    proc = subprocess.Popen(cmd, env=ONE_THREAD_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (out / "trial-0001").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # trial 0 complete, trial 1 running
    assert proc.wait() == -signal.SIGKILL
    url = f"sqlite:///{(out / 'study.db').resolve()}"
    before = _trials(url, "maskkit")
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    time.sleep(2.5)  # two heartbeats: trial 1 is stale
    rerun = subprocess.run(cmd, env=ONE_THREAD_ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = _trials(url, "maskkit")
    states = [t.state for t in after]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert after[0].value == before[0].value and after[0].params == before[0].params  # the earlier trial is kept
    assert after[0].params == {"optim.lr": 1e-2} and after[0].user_attrs["baseline"]  # the base config's values
    assert after[0].datetime_complete == before[0].datetime_complete
    assert after[2].system_attrs["failed_trial"] == 1 and after[2].params == after[1].params  # retried as is
    with (out / "trials.csv").open() as f:
        assert [(r["retry_of"], r["baseline"]) for r in csv.DictReader(f)] == [("", "yes"), ("", ""), ("1", ""),
                                                                               ("", "")]
    assert (out / "best_config.yaml").is_file()


def test_two_processes_share_one_sqlite_study(data: Path, tmp_path: Path) -> None:
    from optuna.trial import TrialState

    base = _write_base(tmp_path, data, epochs=8)
    space = _space(tmp_path, "optim.lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n")
    url = f"sqlite:///{(tmp_path / 'shared.db').resolve()}"
    outs = [tmp_path / "hostA", tmp_path / "hostB"]  # as two hosts would: own folders, one database
    procs = [subprocess.Popen(_tune_cmd(base, space, o, 4, "--storage", url, "--study", "shared", "--pruner", "none"),
                              env=ONE_THREAD_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for o in outs]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [log[-2000:] for log in logs]
    trials = _trials(url, "shared")
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert 4 <= len(done) <= 5 and len(done) == len(trials)  # each stops once the study has 4 (one may overlap)
    by_host = {o.name: [t.number for t in done if Path(t.user_attrs["run"]).parent == o.resolve()] for o in outs}
    assert all(by_host.values()), by_host  # both contributed
    for o in outs:
        assert not (o / "study.db").exists() and (o / "trials.csv").is_file()
        for n in by_host[o.name]:
            assert (o / f"trial-{n:04d}" / "last.pt").is_file()
