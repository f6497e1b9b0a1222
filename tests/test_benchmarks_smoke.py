"""Smoke test of ``benchmarks/train_speed.py --quick`` (tiny synthetic data, one timed step per side)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_speed.py"


def _load():
    spec = importlib.util.spec_from_file_location("train_speed_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
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
