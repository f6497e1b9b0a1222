"""Small performance helpers shared across layers."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


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
