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


def trained_like_batchnorm(model: Any) -> Any:
    """In place, for timing and tests on random weights: BatchNorm running statistics drawn as after training
    (means in [-0.2, 0.2], variances in [0.5, 2]; a fresh network has 0 and 1); returns ``model``."""
    import torch  # deferred: this module is imported where torch is not

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


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
