"""Smoke tests of the benchmark scripts on tiny sizes (`train_speed.py --quick`, `eval_speed.py`, `data_io.py`, ...)
and of their bookkeeping (images/s of `ddp_train.py` and `nuclei.py`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str = "train_speed"):
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~15 s on an idle 2-core machine (minutes when the CPU is shared)
def test_train_speed_quick(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load()
    bench.main(["--quick"])
    out = capsys.readouterr().out
    assert "data: synthetic" in out
    rows = [line for line in out.splitlines() if line.startswith("| maskrcnn_r18_fpn")]
    assert len(rows) == 2
    assert "plain torchvision" in rows[0] and "maskkit.train" in rows[1]
    assert rows[1].rstrip(" |").endswith("%")  # the overhead column is filled


def test_train_compare_variants_differ_only_by_the_speed_levers() -> None:
    """``--compare``: ``default`` is the nuclei recipe without its speed levers, ``fast`` the recipe as shipped."""
    import argparse

    from maskkit.config import SpeedConfig, load_config

    compare = _load("train_compare")
    recipe = str(BENCHMARKS.parent / "configs" / "dsb2018.yaml")
    args = argparse.Namespace(config=recipe, data="x", workers=1, threads=1, set={})
    fast, default = compare.variant_config("fast", args), compare.variant_config("default", args)
    shipped = load_config(recipe, {"data.path": "x", "data.workers": 1, "threads": 1, "device": "cpu"})
    assert fast == shipped and fast.model.speed != SpeedConfig()
    assert default.model.speed == SpeedConfig() and default.model.trainable_backbone_layers is None
    assert not set(compare.SPEED_OPTION_KEYS) & set(default.model.options)
    assert default.model.options["box_detections_per_img"] == fast.model.options["box_detections_per_img"]
    assert default.augment == fast.augment and default.optim == fast.optim
    assert "--compare" in _load().__doc__


def test_eval_speed_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    """Medians of warmed, repeated runs; every path gives pycocotools' stats (max |diff| 0)."""
    bench = _load("eval_speed")
    calls = []
    original = bench.run_maskkit
    bench.run_maskkit = lambda *a: calls.append(1) or original(*a)
    bench.main(["--images", "6", "--boundary-images", "2", "--repeats", "2"])
    assert len(calls) == 3  # one warm-up + 2 timed runs
    out = capsys.readouterr().out
    assert "median s" in out and "median of 2 timed runs after one untimed warm-up" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "e+00 |" in line]
    assert len(rows) == 7
    assert all(row.rstrip(" |").endswith(" 0.00e+00") for row in rows)


def test_data_io_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("data_io")
    assert bench.main(["--images", "8", "--per-image", "3", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "median of 2 timed runs after one warm-up" in out
    ops = ("pycocotools COCO(path)", "maskkit read_annotations(coco)", "maskkit Masks.to_rles", "maskkit write coco")
    for op in ops:
        assert op in out


def test_deploy_speed_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    """Every backend exports, loads and times a tiny model (64 px, one timed run)."""
    bench = _load("deploy_speed")
    assert bench.main(["--models", "maskrcnn_r18_fpn", "unet_mbv2", "bottomup_mbv2:output_stride=2", "--sizes", "64",
                       "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "median of 1 timed runs after one warm-up" in out and "failed" not in out
    rows = [line for line in out.splitlines() if line.startswith(("| maskrcnn_r18_fpn", "| unet", "| bottomup"))]
    assert len(rows) == 12 and all(row.count("|") == 8 for row in rows)
    assert bench.parse_spec("bottomup_effl0:output_stride=2,min_area=4.5") == (
        "bottomup_effl0", {"output_stride": 2, "min_area": 4.5})


def _steps_csv(path: Path, rows: list[tuple[float, float]]) -> None:
    path.write_text("step,loss,seconds,data_seconds\n"
                    + "".join(f"{i},1.0,{s},{d}\n" for i, (s, d) in enumerate(rows)))


def test_ddp_train_throughput_counts_step_and_data_wait_after_warmup(tmp_path: Path) -> None:
    bench = _load("ddp_train")
    _steps_csv(tmp_path / "steps.csv", [(100.0, 100.0), (1.5, 0.5), (3.0, 1.0)])
    rate, steps = bench.throughput(tmp_path / "steps.csv", images_per_step=2, warmup=1)
    assert steps == 2 and rate == pytest.approx(4 / 6.0)


def test_nuclei_train_rate_counts_every_ddp_rank(tmp_path: Path) -> None:
    """A DDP run's config holds the per-process batch; its ``ranks/`` say how many processes stepped it."""
    import yaml

    bench = _load("nuclei")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {"batch_size": 1}, "schedule": {}}))
    _steps_csv(tmp_path / "steps.csv", [(2.0, 9.0), (2.0, 9.0)])
    assert bench.train_rate(tmp_path) == pytest.approx(0.5)  # one process: 2 images over 4 s of steps
    (tmp_path / "ranks").mkdir()
    for r in range(2):
        (tmp_path / "ranks" / f"rank{r}.json").write_text("{}")
    assert bench.train_rate(tmp_path) == pytest.approx(1.0)
