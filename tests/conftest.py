"""Shared fixtures (real datasets, one thread, tiny run configs) and the CI rule that a skip is a failure."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from maskkit.perf import trained_like_batchnorm

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
IN_CI = bool(os.environ.get("CI"))
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""Environment of the maskkit subprocesses tests start: one thread each (the machine has two cores)."""

TINY_MASKRCNN: dict[str, Any] = {
    "model": {
        "name": "maskrcnn_r18_fpn",
        "pretrained_backbone": False,
        "anchor_sizes": [8, 16, 32, 64, 128],
        "options": {"box_batch_size_per_image": 16, "rpn_batch_size_per_image": 16, "rpn_pre_nms_top_n_train": 100,
                    "rpn_post_nms_top_n_train": 50, "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20,
                    "box_detections_per_img": 10},
    },
    "data": {"batch_size": 4},
    "augment": {"min_size": [64], "max_size": None},
    "optim": {"lr": 5e-4, "warmup_steps": 1},
    "schedule": {"epochs": 1, "val_loss": False},
    "output": {"tensorboard": False, "plots": False, "progress": False},
    "threads": 1,
}
"""A Mask R-CNN R18 run config that trains in seconds on 64 px synthetic images (random weights)."""


def tiny_config(base: dict[str, Any] | None = None, **sections: dict[str, Any] | Any) -> dict[str, Any]:
    """A deep copy of ``base`` (default :data:`TINY_MASKRCNN`) with each given section merged in (dict sections
    update key by key, other values replace), e.g. ``tiny_config(data={"path": p}, output={"out": o})``."""
    cfg = copy.deepcopy(TINY_MASKRCNN if base is None else base)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **copy.deepcopy(value)}
        else:
            cfg[key] = copy.deepcopy(value)
    return cfg


def save_tiny_checkpoint(path: Path, model: dict[str, Any], category_ids: list[int], class_names: list[str],
                         seed: int = 0, tweak: Callable[[Any], None] | None = None) -> Path:
    """A checkpoint as the trainer saves one, of the ``model`` config section with random weights (``seed``) and
    trained-looking BatchNorm statistics; 64 px inference size. ``tweak(model)`` may change the weights first."""
    import torch

    from maskkit.config import TrainConfig
    from maskkit.models.checkpoint import save_checkpoint
    from maskkit.models.factory import build_model

    torch.manual_seed(seed)
    cfg = TrainConfig.model_validate({"model": {**model, "pretrained_backbone": False}, "data": {"path": "x"},
                                      "augment": {"min_size": [64], "max_size": 128}})
    net = trained_like_batchnorm(build_model(cfg, len(category_ids), pretrained=False))
    if tweak is not None:
        with torch.no_grad():
            tweak(net)
    save_checkpoint(path, {"model": net.state_dict(), "config": cfg.model_dump(mode="json"),
                           "class_names": list(class_names), "category_ids": list(category_ids), "epoch": 1, "step": 1})
    return path


def train_tiny_run(root: Path, config: dict[str, Any], val_fraction: float, images: int = 4) -> dict[str, Path]:
    """``images`` synthetic 64 px images (COCO layout) in ``root/data`` and a run in ``root/run`` trained on them
    with ``config`` (a :func:`tiny_config`); returns the paths (``root``, ``data``, ``images``, ``ckpt``)."""
    import maskkit
    from maskkit.data.synth import write_synthetic

    write_synthetic(root / "data", images=images, size=64, seed=1, workers=1)
    maskkit.train({**config, "data": {**config["data"], "path": str(root / "data"), "val_fraction": val_fraction},
                   "output": {**config["output"], "out": str(root / "run")}})
    return {"root": root, "data": root / "data", "images": root / "data" / "images", "ckpt": root / "run"}


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine they cost a lot."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "ci_exempt(reason): the test may skip in CI, for the stated reason CI cannot meet"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """With ``CI`` set, a skip fails the run unless the test declares ``@pytest.mark.ci_exempt(reason=...)``."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("ci_exempt") is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI={os.environ['CI']}), which must run every test: {reason}"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; skips outside CI when the shared datasets are not beside the checkout (fails in CI)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA} (clone with ../shared beside it)")
    return SHARED_DATA


def random_rois() -> list[Any]:
    """Boxes of two images for RoIAlign tests: tiny to larger than a 140 x 110 map, some partly or fully outside."""
    import torch

    torch.manual_seed(1)
    out = []
    for n in (40, 25):
        xy = torch.rand(n, 2) * torch.tensor([140.0, 110.0]) - 10  # some start outside the image
        wh = torch.rand(n, 2) ** 3 * 120 + 0.2  # tiny to larger than the image
        out.append(torch.cat([xy, xy + wh], 1))
    out[0][0] = torch.tensor([-30.0, -30.0, -20.0, -20.0])  # fully outside: zeros
    return out


def cli_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: object) -> str:
    """Run ``maskkit ARGV...`` in-process; assert it exits with code 2 and a one-line ``error: ...``; return it."""
    import sys

    from maskkit.cli.main import main

    monkeypatch.setattr(sys, "argv", ["maskkit", *map(str, argv)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err
