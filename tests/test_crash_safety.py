"""SIGKILL mid-run: ``convert`` and ``predict`` rerun to completion with outputs equal to an uninterrupted run's."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ONE_THREAD_ENV, TINY_MASKRCNN, tiny_config
from maskkit.data.synth import write_synthetic

ENV = ONE_THREAD_ENV
TINY_RUN = tiny_config(
    model={"options": {**TINY_MASKRCNN["model"]["options"], "box_detections_per_img": 6, "box_score_thresh": 0.0}},
    data={"val_fraction": 0.0},
)


def _maskkit(*args: object) -> list[str]:
    return [sys.executable, "-m", "maskkit", *(str(a) for a in args)]


def _tree(root: Path) -> dict[str, bytes]:
    """Every output file by relative path. Temporary files a kill may orphan (``.name.XXXX.tmp``) are not outputs."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".tmp"))
    }


def _kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 120.0) -> None:
    """Start ``cmd``; SIGKILL it as soon as ``ready()`` holds; the test fails if it finished first."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"finished before it could be killed mid-run (exit {proc.returncode}): {proc.stderr.read()!r}")
        assert time.monotonic() < deadline, "no partial output appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def _count(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.glob(pattern)) if folder.is_dir() else 0


def test_convert_killed_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "data", images=150, size=96, seed=3, workers=1)
    once, killed = tmp_path / "once", tmp_path / "killed"
    subprocess.run(_maskkit("convert", tmp_path / "data", once, "--to", "labelme"), env=ENV, check=True,
                   capture_output=True)
    _kill_when(_maskkit("convert", tmp_path / "data", killed, "--to", "labelme"),
               lambda: _count(killed / "images", "*.json") >= 3)
    assert _tree(killed) != _tree(once), "the kill left a complete output: nothing was tested"
    subprocess.run(_maskkit("convert", tmp_path / "data", killed, "--to", "labelme"), env=ENV, check=True,
                   capture_output=True)
    assert _tree(killed) == _tree(once)


def test_predict_killed_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    import maskkit

    write_synthetic(tmp_path / "data", images=40, size=64, seed=1, workers=1)
    maskkit.train({**TINY_RUN, "data": {**TINY_RUN["data"], "path": str(tmp_path / "data")},
                   "output": {**TINY_RUN["output"], "out": str(tmp_path / "run")}})
    images = tmp_path / "data" / "images"
    once, killed = tmp_path / "once", tmp_path / "killed"

    def predict(out: Path) -> list[str]:
        return _maskkit("predict", "--model", tmp_path / "run", images, "--out", out, "--conf", "0",
                        "--save-labels", "--data", tmp_path / "data")

    subprocess.run(predict(once), env=ENV, check=True, capture_output=True)
    _kill_when(predict(killed), lambda: _count(killed / "results", "*.json") >= 3)
    assert not (killed / "predictions.json").exists()
    subprocess.run(predict(killed), env=ENV, check=True, capture_output=True)
    assert _tree(killed) == _tree(once)
