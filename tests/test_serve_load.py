"""Smoke run of ``benchmarks/serve_load.py``: a tiny load (4 clients, 20 requests, 10 % malformed) passes its checks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"


@pytest.mark.slow  # two server starts (~10 s each on a busy 2-core machine)
def test_serve_load_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("serve_load_bench", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    code = module.main(["--requests", "20", "--clients", "4", "--max-batch", "2", "--threads", "1",
                        "--min-size", "64", "--timeout", "120"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line for line in out.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 and all("| 20 | 0 | 2/2 |" in row for row in rows), out
    assert "PASS" in out
