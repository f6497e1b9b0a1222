"""Distributed training: two Gloo processes on CPU end with identical parameters and gathered val metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maskkit.data.synth import write_synthetic
from test_engine import TINY


@pytest.mark.slow
def test_two_process_gloo_run_keeps_replicas_identical(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "data", images=10, size=64, seed=3)
    cfg = {**TINY, "data": {**TINY["data"], "path": str(tmp_path / "data")},
           "optim": {**TINY["optim"], "ema": True},  # the EMA copy of a model with synchronised BatchNorm
           "schedule": {"epochs": 1, "save_every_steps": 0, "max_minutes": 30},  # the LR reads rank 0's budget share
           "output": {"progress": False, "tensorboard": False, "plots": False}}
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "maskkit",
           "train", "--config", str(tmp_path / "ddp.yaml"), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sums = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sums[0]["sum"] == sums[1]["sum"] and sums[0]["sumsq"] == sums[1]["sumsq"]
    steps = (out / "steps.csv").read_text().strip().splitlines()
    assert len(steps) == 1 + 2  # header + 8 train images / (2 ranks x batch 2)
    assert (out / "last.pt").is_file() and (out / "metrics.json").is_file()
    # validation ran on both ranks' shares and was gathered: every val image is scored once
    val_images = json.loads((out / "val_images.json").read_text())["images"]
    assert json.loads((out / "metrics.json").read_text())["counts"]["images"] == len(val_images) == 2
