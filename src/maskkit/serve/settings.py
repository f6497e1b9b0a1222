"""Settings of ``maskkit serve`` (a plain dataclass: JSON round trip for worker processes)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

API_KEY_ENV = "MASKKIT_API_KEY"
SETTINGS_ENV = "MASKKIT_SERVE_SETTINGS"
"""Worker processes of ``--workers N`` read their settings (JSON) from this environment variable."""


@dataclass
class ServeSettings:
    """What the server accepts and how it batches.

    Attributes:
        model: checkpoint, run folder or exported model (for ``maskkit.load``).
        load_options: keyword options of ``maskkit.load`` (device, score_threshold, threads...).
        max_bytes: largest request body (413 above it).
        max_pixels: largest image (width x height from the header; 413 above it).
        max_batch: images per inference call (1: no dynamic batching).
        max_wait_ms: how long the batcher waits for more images after the first one.
        max_queue: images that may wait for inference (503 + Retry-After above it).
        api_key: required in ``X-API-Key`` (or ``Authorization: Bearer``) by /v1/predict and /v1/model.
        retry_after: seconds of the ``Retry-After`` header of a 503.
    """

    model: str = ""
    load_options: dict[str, Any] = field(default_factory=dict)
    max_bytes: int = 20_000_000
    max_pixels: int = 40_000_000
    max_batch: int = 4
    max_wait_ms: float = 5.0
    max_queue: int = 32
    api_key: str | None = None
    retry_after: int = 1

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        return cls(**json.loads(text))
