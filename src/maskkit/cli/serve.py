"""``maskkit serve``: the HTTP API and web page over a model (see :mod:`maskkit.serve`)."""

from __future__ import annotations

from pathlib import Path

import typer

from maskkit.errors import ConfigError, DataError
from maskkit.serve.settings import API_KEY_ENV, ServeSettings


def command(
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint (.pt), run folder or exported model."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (anything but loopback: set --api-key)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    workers: int = typer.Option(1, "--workers", help="Server processes, each with its own copy of the model."),
    max_batch: int = typer.Option(4, "--max-batch", help="Images per inference call across clients (1: no "
                                  "dynamic batching)."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="How long a batch waits for more images (ms)."),
    max_queue: int = typer.Option(32, "--max-queue", help="Images that may wait; beyond it requests get 503."),
    max_bytes: int = typer.Option(20_000_000, "--max-bytes", help="Largest request body in bytes (413 above)."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", help="Largest image in pixels, judged from its "
                                   "header (413 above)."),
    min_conf: float | None = typer.Option(None, "--min-conf", help="Score threshold of the model (requests filter "
                                          "above it; default: the model's own)."),
    api_key: str | None = typer.Option(None, "--api-key", envvar=API_KEY_ENV, show_envvar=True,
                                       help="Require this key (X-API-Key header) for /v1/predict and /v1/model."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads of inference per worker."),
) -> None:
    """Serve a model over HTTP: POST /v1/predict, GET /v1/model, /v1/health, /metrics, /docs and a web page at /."""
    from maskkit.serve.server import exposure_warning, run  # deferred: uvicorn, FastAPI

    if workers < 1 or max_batch < 1 or max_queue < 1 or max_bytes < 1 or max_pixels < 1 or max_wait_ms < 0:
        raise ConfigError("--workers, --max-batch, --max-queue, --max-bytes and --max-pixels must be >= 1, "
                          "--max-wait-ms >= 0")
    if min_conf is not None and not 0.0 <= min_conf <= 1.0:
        raise ConfigError(f"--min-conf must be between 0 and 1, got {min_conf}")
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be 1-65535, got {port}")
    if not model.exists():
        raise DataError("model not found", file=model)
    options: dict[str, object] = {"device": device}
    if min_conf is not None:
        options["score_threshold"] = min_conf
    if threads:
        options["threads"] = threads
    settings = ServeSettings(model=str(model.resolve()), load_options=options, max_bytes=max_bytes,
                             max_pixels=max_pixels, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                             api_key=api_key or None)
    warning = exposure_warning(host, settings)
    if warning:
        typer.secho(warning, fg=typer.colors.YELLOW, err=True)
    run(settings, host=host, port=port, workers=workers)
