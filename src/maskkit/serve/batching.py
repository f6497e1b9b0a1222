"""Dynamic batching: requests from many clients share one ``predict_batch`` call on a worker thread.

:meth:`Batcher.submit` queues an image and returns a :class:`concurrent.futures.Future` at once (the
event loop awaits it, so inference never blocks it). The worker takes the first waiting image, collects
more for up to ``max_wait`` seconds (at most ``max_batch`` in all) and runs them together. The queue is
bounded: :class:`QueueFull` when ``max_queue`` images already wait (the API answers 503).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class QueueFull(Exception):
    """Too many images wait for inference."""


@dataclass
class _Job:
    image: np.ndarray
    future: Future[Any] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """Run ``predict(images) -> results`` on a worker thread over batches of queued images.

    Args:
        predict: the batched function (e.g. ``predictor.predict_batch``); one result per image, in order.
        max_batch: at most this many images per call (1: no batching).
        max_wait: seconds the worker waits for more images after the first one of a batch.
        max_queue: images that may wait; :meth:`submit` raises :class:`QueueFull` beyond it.
        on_batch: called after each batch with ``(batch size, seconds of the call)`` (metrics).
    """

    def __init__(self, predict: Callable[[Sequence[np.ndarray]], Sequence[Any]], max_batch: int = 4,
                 max_wait: float = 0.005, max_queue: int = 64,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait >= 0")
        self.predict, self.max_batch, self.max_wait = predict, int(max_batch), float(max_wait)
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=int(max_queue))
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.start()

    def start(self) -> None:
        """Start the worker thread (again, after :meth:`close`); does nothing while it runs."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="maskkit-batcher", daemon=True)
                self._thread.start()

    def depth(self) -> int:
        """Images waiting for inference (not counting the batch running now)."""
        return self._queue.qsize()

    def submit(self, image: np.ndarray) -> Future[Any]:
        """Queue ``image``; the future holds its result (or the exception of its batch)."""
        job = _Job(image)
        self.start()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} images are already waiting for inference") from None
        return job.future

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after the images already queued (:meth:`submit` starts it again)."""
        with self._lock:
            thread = self._thread
            if thread is not None and thread.is_alive():
                self._queue.put(None)
                thread.join(timeout)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, stop = [first], False
        deadline = time.perf_counter() + self.max_wait
        while len(jobs) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            jobs.append(job)
        return jobs, stop

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._collect(first)
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if jobs:
                start = time.perf_counter()
                try:
                    results = list(self.predict([j.image for j in jobs]))
                    if len(results) != len(jobs):
                        raise RuntimeError(f"predict returned {len(results)} results for {len(jobs)} images")
                except Exception as exc:
                    for j in jobs:
                        j.future.set_exception(exc)
                else:
                    for j, r in zip(jobs, results, strict=True):
                        j.future.set_result(r)
                if self.on_batch is not None:
                    self.on_batch(len(jobs), time.perf_counter() - start)
            if stop:
                return
