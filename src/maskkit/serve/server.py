"""Load the model and run uvicorn: one process, or ``workers`` processes each loading the model.

Worker processes get the settings through :data:`~maskkit.serve.settings.SETTINGS_ENV` and build their
app with :func:`app_from_env` (uvicorn needs an import string to start workers).
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from maskkit.serve.settings import SETTINGS_ENV, ServeSettings


def load_app(settings: ServeSettings) -> Any:
    """The FastAPI app over ``maskkit.load(settings.model, **settings.load_options)``."""
    # deferred: torch and FastAPI, so that `maskkit serve --help` (which imports this module) stays fast
    from maskkit.inference.predictor import load
    from maskkit.serve.app import create_app

    return create_app(load(settings.model, **settings.load_options), settings)


def app_from_env() -> Any:
    """The app of a worker process (settings from the environment)."""
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise RuntimeError(f"{SETTINGS_ENV} is not set: start workers with `maskkit serve`")
    return load_app(ServeSettings.from_json(text))


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``localhost``, ``127.x``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, settings: ServeSettings) -> str | None:
    """The warning of binding a non-loopback address without an API key (None when there is nothing to say)."""
    if is_loopback(host) or settings.api_key:
        return None
    return (f"warning: serving on {host} without an API key: anyone who can reach this machine can use the model "
            "(set --api-key or MASKKIT_API_KEY)")


def run(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
        log_level: str = "info") -> None:
    """Serve until interrupted."""
    import uvicorn

    if workers > 1:
        os.environ[SETTINGS_ENV] = settings.to_json()
        uvicorn.run("maskkit.serve.server:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level)
    else:
        uvicorn.run(load_app(settings), host=host, port=port, log_level=log_level)
