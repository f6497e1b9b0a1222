"""``create_app(predictor, settings)``: the FastAPI application of ``maskkit serve``.

Endpoints: ``POST /v1/predict``, ``GET /v1/model``, ``GET /v1/health``, ``GET /metrics``, the page at ``/``
(assets under ``/static``) and the API docs at ``/docs`` (a page of our own rendering ``/openapi.json``:
no CDN). Every error is JSON ``{"error": code, "detail": message}``; client input never causes a 5xx.

The predictor is used through its public interface only (``predict_batch``, ``class_names``,
``category_ids``, ``config``): it predicts at its own threshold, and each request's ``conf``, ``classes``
and ``max_det`` filter that result (:func:`maskkit.inference.filters.filter_instances`), so no filter
needs a second forward pass.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from maskkit import __version__
from maskkit.errors import ConfigError
from maskkit.inference.filters import filter_instances, parse_class_list, resolve_classes
from maskkit.inference.visualize import class_colour
from maskkit.serve import schemas
from maskkit.serve.batching import Batcher, QueueFull
from maskkit.serve.metrics import CONTENT_TYPE_LATEST, Metrics, RequestMetrics
from maskkit.serve.results import instance_list, overlay_png
from maskkit.serve.settings import ServeSettings
from maskkit.serve.uploads import (
    ACCEPTED_TYPES,
    FORMATS,
    BodyLimit,
    UploadError,
    check_content_type,
    decode_upload,
    error_body,
    media_type,
)

STATIC = Path(__file__).with_name("static")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorBody, "description": text} for code, text in (
        (400, "Not a decodable image: empty, truncated, broken"), (401, "Missing or wrong API key"),
        (413, "Body above --max-bytes, or image above --max-pixels (judged from its header)"),
        (415, "Unsupported content type or image format"), (422, "Invalid query values"),
        (503, "The inference queue is full: retry after Retry-After seconds"))}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY = {
    "required": True,
    "description": "The image: a multipart upload (field `file`) or the raw bytes as the body.",
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        **{t: _BINARY for t in ACCEPTED_TYPES},
    },
}


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, detail), status_code=status, headers=headers)


def _validation_text(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def model_name(predictor: Any) -> str:
    """The architecture name from the predictor's config (``unknown`` without one)."""
    model = getattr(getattr(predictor, "config", None), "model", None)
    return str(getattr(model, "name", None) or "unknown")


def create_app(predictor: Any, settings: ServeSettings) -> FastAPI:
    """The app serving ``predictor`` (anything with ``predict_batch``, ``class_names``, ``category_ids``)."""
    names = dict(zip(predictor.category_ids, predictor.class_names, strict=True))
    colours = {cid: class_colour(cid) for cid in predictor.category_ids}
    holder: dict[str, Batcher] = {}
    metrics = Metrics(lambda: holder["batcher"].depth() if holder else 0, settings.max_batch)
    batcher = Batcher(predictor.predict_batch, settings.max_batch, settings.max_wait_ms / 1000.0,
                      settings.max_queue, on_batch=metrics.observe_batch)
    holder["batcher"] = batcher

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await run_in_threadpool(batcher.close)

    app = FastAPI(title="maskkit serve", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Instance segmentation over HTTP. Errors are JSON `{\"error\", \"detail\"}`.")
    app.state.batcher, app.state.metrics, app.state.settings = batcher, metrics, settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)

    def fail(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.errors.labels(code).inc()
        return _error(status, code, detail, headers)

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return fail(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return fail(422, "invalid_request", _validation_text(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return fail(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:  # a bug, never client input: still JSON
        return fail(500, "internal_error", f"internal error ({type(exc).__name__}); see the server log")

    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Required when the server has a key")

    async def require_key(request: Request, key: str | None = Depends(key_header)) -> None:
        if not settings.api_key:
            return
        auth = request.headers.get("authorization", "")
        given = key or (auth[7:].strip() if auth.lower().startswith("bearer ") else "")
        if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise StarletteHTTPException(401, "missing or wrong API key (send it as X-API-Key)",
                                         headers={"WWW-Authenticate": "Bearer"})

    @app.post("/v1/predict", response_model=schemas.Prediction, openapi_extra={"requestBody": _REQUEST_BODY},
              responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                               "description": "The prediction (JSON) or, with overlay=true, a PNG"}, **_ERRORS},
              dependencies=[Depends(require_key)], summary="Predict the instances of one image")
    async def predict(
        request: Request,
        conf: float = Query(0.25, ge=0.0, le=1.0, description="Minimum score"),
        classes: str | None = Query(None, max_length=2000,
                                    description="Only these classes: names or category ids, comma-separated"),
        max_det: int = Query(100, ge=1, le=1000, description="At most this many instances (best scores)"),
        masks: Literal["rle", "polygon", "none"] = Query("rle", description="Mask encoding of the JSON"),
        overlay: bool = Query(False, description="Return the image with the instances drawn, as PNG"),
    ) -> Response:
        start = time.perf_counter()
        try:
            keep = resolve_classes(parse_class_list(classes), predictor.category_ids, predictor.class_names,
                                   "classes: ")
        except ConfigError as exc:
            return fail(422, "invalid_request", str(exc))
        data, name = await _read_upload(request)
        image = await run_in_threadpool(decode_upload, data, settings.max_pixels, name)
        decoded = time.perf_counter()
        try:
            future = batcher.submit(image)
        except QueueFull as exc:
            return fail(503, "queue_full", f"{exc}: retry in {settings.retry_after} s",
                        {"Retry-After": str(settings.retry_after)})
        inst = await asyncio.wrap_future(future)
        predicted = time.perf_counter()
        inst = filter_instances(inst, conf, keep, max_det)
        if overlay:
            png = await run_in_threadpool(overlay_png, image, inst, names, colours)
            return Response(png, media_type="image/png")
        items = await run_in_threadpool(instance_list, inst, names, masks)
        h, w = image.shape[:2]
        body = {"image": {"width": int(w), "height": int(h)}, "count": len(items), "instances": items,
                "conf": conf, "classes": sorted(keep) if keep is not None else None, "max_det": max_det,
                "masks": masks, "timing": {"decode_ms": round((decoded - start) * 1000, 2),
                                           "queue_and_inference_ms": round((predicted - decoded) * 1000, 2),
                                           "total_ms": round((time.perf_counter() - start) * 1000, 2)}}
        return JSONResponse(body)

    @app.get("/v1/model", response_model=schemas.ModelInfo, dependencies=[Depends(require_key)],
             responses={401: _ERRORS[401]}, summary="Classes, input rules and version")
    async def model_info() -> dict[str, Any]:
        return {"name": model_name(predictor), "source": Path(settings.model).name if settings.model else "",
                "version": __version__,
                "classes": [{"id": c, "name": n, "colour": list(colours[c])} for c, n in names.items()],
                "input": {"formats": list(FORMATS), "content_types": list(ACCEPTED_TYPES),
                          "max_bytes": settings.max_bytes, "max_pixels": settings.max_pixels},
                "min_conf": settings.load_options.get("score_threshold"), "max_batch": settings.max_batch,
                "api_key_required": bool(settings.api_key)}

    @app.get("/v1/health", response_model=schemas.Health, summary="Liveness and queue depth")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "queue_depth": batcher.depth(), "max_queue": settings.max_queue}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _read_upload(request: Request) -> tuple[bytes, str]:
    """The image bytes of a multipart upload (part ``file``) or of the raw body, and a name for messages."""
    kind = media_type(request.headers.get("content-type"))
    if kind != "multipart/form-data":
        check_content_type(kind)
        return await request.body(), "body"
    try:
        form = await request.form(max_files=1, max_fields=8)
    except StarletteHTTPException as exc:
        raise UploadError(400, "bad_multipart", f"multipart body cannot be parsed: {exc.detail}") from None
    except Exception as exc:  # python-multipart's parser errors
        raise UploadError(400, "bad_multipart", f"multipart body cannot be parsed ({type(exc).__name__})") from None
    part = form.get("file")
    if not isinstance(part, UploadFile):
        got = "a text field" if part is not None else "no such part"
        raise UploadError(422, "missing_file", f"multipart body needs an image in the part 'file' ({got})")
    name = f"upload {part.filename!r}" if part.filename else "upload"
    check_content_type(part.content_type, name)
    try:
        return await part.read(), name
    finally:
        await form.close()
