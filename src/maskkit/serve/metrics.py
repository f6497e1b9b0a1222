"""Prometheus metrics of one app (their own registry): requests, latencies, errors, queue depth, batches.

:class:`RequestMetrics` is a pure ASGI middleware that counts every response (413s of the body limit
included) by route and status and times it. With ``--workers N`` each worker process has its own
registry: ``/metrics`` shows the worker that answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from maskkit.serve.uploads import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "RequestMetrics"]

_KNOWN = ("/", "/v1/predict", "/v1/model", "/v1/health", "/metrics", "/docs", "/openapi.json")


class Metrics:
    """The collectors of one app; ``queue_depth`` reads ``depth()`` at scrape time."""

    def __init__(self, depth: Callable[[], int], max_batch: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("maskkit_requests", "HTTP requests by route, method and status code",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("maskkit_request_seconds", "Request latency by route (seconds)", ["route"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.errors = Counter("maskkit_errors", "Error responses by kind (the 'error' code of the JSON body)",
                              ["kind"], registry=r)
        self.queue_depth = Gauge("maskkit_queue_depth", "Images waiting for inference", registry=r)
        self.queue_depth.set_function(lambda: float(depth()))
        self.batch_size = Histogram("maskkit_batch_size", "Images per inference call (dynamic batching)",
                                    buckets=tuple(float(b) for b in range(1, max(max_batch, 1) + 1)), registry=r)
        self.inference = Histogram("maskkit_inference_seconds", "Seconds per batched inference call", registry=r)
        self.images = Counter("maskkit_images", "Images predicted", registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)
        self.images.inc(size)

    def render(self) -> bytes:
        """The Prometheus text exposition of this app's registry."""
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: count and time every HTTP response by route (unknown paths as ``other``)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in _KNOWN else ("/static" if path.startswith("/static/") else "other")
        status = {"code": 500}
        start = time.perf_counter()

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.requests.labels(route, scope.get("method", ""), str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
