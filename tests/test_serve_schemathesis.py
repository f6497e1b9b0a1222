"""Schemathesis against ``maskkit serve``'s OpenAPI schema (in-process ASGI): no input causes a server error.

Bodies of the image content types mix valid small images (PNG/JPEG/BMP/TIFF/WebP, some truncated) with
random bytes; queries come from the schema (and its negations). Bounded: a fixed number of examples per
operation, no deadline (a CPU forward pass of the tiny model takes tens of milliseconds).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from maskkit.serve.app import create_app
from maskkit.serve.settings import ServeSettings
from maskkit.serve.uploads import ACCEPTED_TYPES
from serve_support import encode, make_checkpoint, smooth_image

EXAMPLES = 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
"""No 5xx, and every answer documented (status, content type, JSON schema). Not run: the positive/negative
data checks (random bytes match the ``binary`` body schema yet are no image: a 4xx is right) and the auth
checks (the API key is optional and off here)."""
_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/bmp": "BMP", "image/tiff": "TIFF", "image/webp": "WEBP"}


def _images(fmt: str | None) -> st.SearchStrategy[bytes]:
    fmts = [fmt] if fmt else list(_FORMATS.values())
    valid = st.builds(lambda h, w, s, f: encode(smooth_image(h, w, s), f), st.integers(1, 48), st.integers(1, 48),
                      st.integers(0, 9), st.sampled_from(fmts))
    cut = st.builds(lambda data, frac: data[: max(1, int(len(data) * frac))], valid, st.floats(0.0, 0.95))
    return st.one_of(valid, cut, st.binary(max_size=256))


for _ctype in ACCEPTED_TYPES:
    schemathesis.openapi.media_type(_ctype, _images(_FORMATS.get(_ctype)))


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import torch

    from maskkit.inference.predictor import load

    torch.set_num_threads(1)
    ckpt = make_checkpoint(tmp_path_factory.mktemp("serve_fuzz"))
    app = create_app(load(ckpt, device="cpu"),
                     ServeSettings(model=str(ckpt), max_bytes=100_000, max_pixels=64 * 64, api_key=""))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_error(api_schema: Any, mode: GenerationMode) -> None:
    """Every operation, ``EXAMPLES`` generated requests each (schema-conforming, then schema-violating)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/predict", "GET /v1/model", "GET /v1/health", "GET /metrics"}
    calls: list[int] = []
    for op in operations:
        if mode is GenerationMode.NEGATIVE and not {"parameters", "requestBody"} & set(op.definition.raw):
            continue  # nothing to violate
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None, phases=[Phase.explicit, Phase.generate])  # no shrinking: bounded time
        def run(case: Any) -> None:
            response = case.call_and_validate(checks=CHECKS)
            calls.append(response.status_code)

        run()
    assert len(calls) >= len(operations) and max(calls) < 500
    print(f"schemathesis {mode.value}: {len(calls)} requests, status codes {dict(sorted(Counter(calls).items()))}")
