"""Small performance helpers shared across layers."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of small containers.

    Reading or evaluating COCO-scale data otherwise triggers full GC passes over a large heap (~20% of
    the time) that never find a cycle; pycocotools-scale loads do the same.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def timed_runs(
    fn: Callable[..., Any], repeats: int, setup: Callable[[], tuple[Any, ...]] = tuple
) -> tuple[list[float], Any]:
    """One untimed warm-up run of ``fn(*setup())``, then ``repeats`` (at least one) timed runs; ``setup`` (fresh
    inputs for each run) is called untimed. Returns the wall times of the timed runs and the last result."""
    fn(*setup())
    times, result = [], None
    for _ in range(max(repeats, 1)):
        args = setup()
        t0 = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - t0)
    return times, result
