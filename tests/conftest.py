"""Shared fixtures and the CI rule that a skipped test is a failed test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
IN_CI = bool(os.environ.get("CI"))


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
