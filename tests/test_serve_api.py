"""``maskkit serve``'s HTTP API with a tiny random-weight Mask R-CNN: predictions and per-request filters, every
kind of bad input (4xx JSON naming the problem, never a 5xx), body and pixel limits (413, chunked bodies too),
a full queue (503 + Retry-After), dynamic batching (shared batches, unbatched results), metrics and the API key."""

from __future__ import annotations

import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import ONE_THREAD_ENV, REPO
from maskkit.inference.filters import filter_instances
from maskkit.serve.app import create_app
from maskkit.serve.settings import API_KEY_ENV, SETTINGS_ENV, ServeSettings
from maskkit.structures.masks import decode_rle
from serve_support import (
    CATEGORY_IDS,
    CLASS_NAMES,
    encode,
    free_port,
    live_server,
    make_checkpoint,
    smooth_image,
    wait_healthy,
)

pytestmark = pytest.mark.usefixtures("one_thread")
MAX_BYTES = 200_000
MAX_PIXELS = 300 * 300


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("serve_api"))


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Any:
    from maskkit.inference.predictor import load

    return load(checkpoint, device="cpu")


def _settings(checkpoint: Path, **kw: Any) -> ServeSettings:
    return ServeSettings(**{"model": str(checkpoint), "max_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS,
                            "api_key": "", **kw})


@pytest.fixture(scope="module")
def client(predictor: Any, checkpoint: Path) -> Iterator[TestClient]:
    with TestClient(create_app(predictor, _settings(checkpoint))) as c:
        yield c


IMAGE = smooth_image(96, 128, seed=3)
PNG = encode(IMAGE)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (a decompression bomb's header) and one tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _post(client: TestClient, content: bytes = PNG, ctype: str | None = "image/png", **params: Any) -> httpx.Response:
    headers = {"content-type": ctype} if ctype else {}
    return client.post("/v1/predict", params=params, content=content, headers=headers)


# -- predictions ---------------------------------------------------------------------------------------
def test_predict_matches_the_predictor_and_filters_per_request(client: TestClient, predictor: Any) -> None:
    direct = predictor.predict_batch([IMAGE])[0]
    assert len(direct) >= 5  # random weights with a zero score threshold: plenty of detections
    r = _post(client, conf=0)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"] == {"width": 128, "height": 96} and body["count"] == len(direct) == len(body["instances"])
    scores = [i["score"] for i in body["instances"]]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(sorted(scores), np.sort(direct.scores), atol=1e-6)
    for inst in body["instances"]:
        mask = decode_rle(inst["rle"])
        assert mask.shape == (96, 128) and int(mask.sum()) == inst["area"] and inst["polygons"] is None
        assert inst["class_name"] == CLASS_NAMES[CATEGORY_IDS.index(inst["class_id"])]

    # the same upload as multipart gives the same answer
    multi = client.post("/v1/predict", params={"conf": 0}, files={"file": ("x.png", PNG, "image/png")})
    assert multi.status_code == 200 and multi.json()["instances"] == body["instances"]

    mid = float(np.median(scores))
    assert _post(client, conf=mid).json()["count"] == len(filter_instances(direct, mid))
    best = _post(client, conf=0, max_det=2).json()["instances"]
    assert [i["score"] for i in best] == scores[:2]
    one_class = body["instances"][0]["class_id"]
    by_id = _post(client, conf=0, classes=str(one_class)).json()
    by_name = _post(client, conf=0, classes=CLASS_NAMES[CATEGORY_IDS.index(one_class)]).json()
    assert by_id["instances"] == by_name["instances"] and by_id["classes"] == [one_class]
    assert {i["class_id"] for i in by_id["instances"]} == {one_class}
    assert by_id["count"] == len(filter_instances(direct, 0, {one_class}))

    poly = _post(client, conf=0, masks="polygon").json()["instances"]
    assert all(i["rle"] is None and isinstance(i["polygons"], list) for i in poly)
    assert any(len(ring) >= 6 and len(ring) % 2 == 0 for i in poly for ring in i["polygons"])
    none = _post(client, conf=0, masks="none").json()["instances"]
    assert all(i["rle"] is None and i["polygons"] is None for i in none)

    png = _post(client, conf=0, overlay="true")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png.content)) as im:
        assert im.format == "PNG" and abs(im.size[0] / im.size[1] - 128 / 96) < 0.02


def test_other_formats_and_no_detections(client: TestClient) -> None:
    for fmt, ctype in (("JPEG", "image/jpeg"), ("BMP", "image/bmp"), ("TIFF", "image/tiff"), ("WEBP", "image/webp")):
        r = _post(client, encode(IMAGE, fmt), ctype, conf=0)
        assert r.status_code == 200 and r.json()["count"] > 0, (fmt, r.text)
    r = _post(client, PNG, "application/octet-stream", conf=1.0)  # nothing scores 1: an empty, valid answer
    assert r.status_code == 200 and r.json()["count"] == 0 and r.json()["instances"] == []
    grey16 = (np.arange(64 * 80, dtype=np.uint16).reshape(64, 80) * 13)
    r = _post(client, encode(grey16), None, conf=0)
    assert r.status_code == 200 and r.json()["image"] == {"width": 80, "height": 64}


# -- bad input ----------------------------------------------------------------------------------------
GIF = encode(IMAGE, "GIF")


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims ``width x height``."""
    data = bytearray(encode(IMAGE, "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _tiff_claiming(width: int, height: int) -> bytes:
    """A small TIFF whose ImageWidth/ImageLength tags claim ``width x height``."""
    data = bytearray(encode(IMAGE, "TIFF"))
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        tag = struct.unpack("<H", data[entry:entry + 2])[0]
        if tag in (256, 257):
            data[entry + 2:entry + 12] = struct.pack("<HII", 4, 1, width if tag == 256 else height)
    return bytes(data)
BAD_INPUTS = [  # (content, content type, query, status, error code)
    (b"hello, not an image", "image/png", {}, 415, "not_an_image"),
    (PNG[: len(PNG) // 2], "image/png", {}, 400, "truncated_image"),
    (encode(IMAGE, "JPEG")[:300], "image/jpeg", {}, 400, "truncated_image"),
    (b"", "image/png", {}, 400, "empty_body"),
    (PNG, "text/plain", {}, 415, "unsupported_media_type"),
    (PNG, "application/json", {}, 415, "unsupported_media_type"),
    (GIF, "image/png", {}, 415, "not_an_image"),
    (_png_header_only(100_000, 100_000), "image/png", {}, 413, "too_many_pixels"),
    (_png_header_only(400, 400), "image/png", {}, 413, "too_many_pixels"),
    (_jpeg_claiming(60_000, 60_000), "image/jpeg", {}, 413, "too_many_pixels"),
    (_jpeg_claiming(400, 400), "image/jpeg", {}, 413, "too_many_pixels"),
    (_tiff_claiming(100_000, 100_000), "image/tiff", {}, 413, "too_many_pixels"),
    (_png_header_only(0, 10), "image/png", {}, 400, "bad_image"),
    (PNG[:40], "image/png", {}, 400, None),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png", {}, 400, "bad_image"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 junk", "image/webp", {}, 400, None),
    (b"II*\x00" + b"\xff" * 40, "image/tiff", {}, 400, None),
    (b"x" * (MAX_BYTES + 1), "image/png", {}, 413, "body_too_large"),
    (PNG, "image/png", {"conf": "-0.1"}, 422, "invalid_request"),
    (PNG, "image/png", {"conf": "abc"}, 422, "invalid_request"),
    (PNG, "image/png", {"conf": "nan"}, 422, "invalid_request"),
    (PNG, "image/png", {"max_det": "0"}, 422, "invalid_request"),
    (PNG, "image/png", {"masks": "bitmap"}, 422, "invalid_request"),
    (PNG, "image/png", {"overlay": "maybe"}, 422, "invalid_request"),
    (PNG, "image/png", {"classes": "dog"}, 422, "invalid_request"),
    (PNG, "image/png", {"classes": "99"}, 422, "invalid_request"),
]


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow, on the deliberately broken TIFF
@pytest.mark.parametrize(("content", "ctype", "query", "status", "code"), BAD_INPUTS,
                         ids=[f"{i}-{c[4] or c[3]}" for i, c in enumerate(BAD_INPUTS)])
def test_bad_input_is_a_4xx_naming_the_problem(client: TestClient, content: bytes, ctype: str, query: dict[str, str],
                                               status: int, code: str | None) -> None:
    r = _post(client, content, ctype, **query)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and body["detail"]
    if code:
        assert body["error"] == code, body


def test_bad_multipart(client: TestClient) -> None:
    r = client.post("/v1/predict", files={"file": ("a.txt", b"hello", "text/plain")})
    assert r.status_code == 415 and "a.txt" in r.json()["detail"]
    r = client.post("/v1/predict", files={"image": ("a.png", PNG, "image/png")})
    assert r.status_code == 422 and r.json()["error"] == "missing_file"
    r = client.post("/v1/predict", data={"file": "not a file"}, files={"other": ("a.png", PNG, "image/png")})
    assert r.status_code == 422
    broken = {"content-type": "multipart/form-data; boundary=zz"}
    r = client.post("/v1/predict", content=b"--zz\r\nbroken", headers=broken)
    assert 400 <= r.status_code < 500, r.text
    r = client.post("/v1/predict", content=b"x", headers={"content-type": "multipart/form-data"})  # no boundary
    assert 400 <= r.status_code < 500, r.text
    r = client.post("/v1/predict", files=[("file", ("a.png", PNG, "image/png")), ("file", ("b.png", PNG, "image/png"))])
    assert 400 <= r.status_code < 500
    assert client.get("/v1/predict").status_code == 405
    assert client.get("/nowhere").json()["error"] == "not_found"


# -- limits, queue, batching (a live server) ------------------------------------------------------------
def test_chunked_body_limit_and_chunked_upload(predictor: Any, checkpoint: Path) -> None:
    app = create_app(predictor, _settings(checkpoint))
    sent = {"bytes": 0}

    def endless() -> Iterator[bytes]:
        for _ in range(200):  # 200 x 64 KB = 12.8 MB would be sent without the limit
            sent["bytes"] += 65536
            yield b"\0" * 65536

    def chunks(data: bytes) -> Iterator[bytes]:
        for i in range(0, len(data), 4096):
            yield data[i:i + 4096]

    with live_server(app) as url:
        try:
            r = httpx.post(f"{url}/v1/predict", content=endless(), headers={"content-type": "image/png"}, timeout=30)
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            r = None  # the server answered 413 and closed while the client was still sending
        if r is not None:
            assert r.status_code == 413 and r.json()["error"] == "body_too_large"
        assert sent["bytes"] < 12 * 65536 * 10, "the server read far beyond the limit"
        ok = httpx.post(f"{url}/v1/predict", params={"conf": 0}, content=chunks(PNG),
                        headers={"content-type": "image/png"}, timeout=60)
        assert ok.status_code == 200 and ok.json()["count"] > 0
        assert httpx.get(f"{url}/v1/health").json()["status"] == "ok"


class _Gate:
    """A predictor whose ``predict_batch`` waits for ``release`` (to fill the queue), then answers empty."""

    class_names, category_ids, config = CLASS_NAMES, CATEGORY_IDS, None

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def predict_batch(self, images: list[np.ndarray], score_threshold: float | None = None) -> list[Any]:
        from maskkit.structures import Instances

        self.entered.set()
        assert self.release.wait(30)
        out = [Instances.empty(im.shape[:2]) for im in images]
        for inst in out:
            inst.scores = np.zeros(0, np.float32)
        return out


def test_full_queue_is_503_with_retry_after(checkpoint: Path) -> None:
    gate = _Gate()
    app = create_app(gate, _settings(checkpoint, max_batch=1, max_queue=1, retry_after=3))
    results: list[int] = []
    with live_server(app) as url:
        def post() -> None:
            results.append(httpx.post(f"{url}/v1/predict", content=PNG, timeout=60).status_code)

        first = threading.Thread(target=post)
        first.start()
        assert gate.entered.wait(30)  # the worker holds the first image
        second = threading.Thread(target=post)
        second.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/v1/health").json()["queue_depth"] < 1:  # the second one waits in the queue
            assert time.monotonic() < deadline
            time.sleep(0.02)
        full = httpx.post(f"{url}/v1/predict", content=PNG, timeout=30)
        assert full.status_code == 503 and full.headers["retry-after"] == "3" and full.json()["error"] == "queue_full"
        gate.release.set()
        first.join(30)
        second.join(30)
        assert results == [200, 200]
        assert 'maskkit_errors_total{kind="queue_full"} 1.0' in httpx.get(f"{url}/metrics").text


def test_concurrent_requests_share_batches_with_unbatched_results(predictor: Any, checkpoint: Path) -> None:
    images = [smooth_image(96, 128, seed=s) for s in range(8)]
    alone = [predictor.predict_batch([im])[0] for im in images]  # unbatched
    app = create_app(predictor, _settings(checkpoint, max_batch=4, max_wait_ms=300))
    answers: dict[int, dict[str, Any]] = {}
    with live_server(app) as url:
        def post(k: int) -> None:
            r = httpx.post(f"{url}/v1/predict", params={"conf": 0}, content=encode(images[k]), timeout=120)
            answers[k] = r.json()

        threads = [threading.Thread(target=post, args=(k,)) for k in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        metrics = httpx.get(f"{url}/metrics").text
    count = _metric(metrics, "maskkit_batch_size_count")
    total = _metric(metrics, "maskkit_batch_size_sum")
    assert total == len(images) and count < len(images), f"no batch was shared: {count} batches for {total} images"
    for k, inst in enumerate(alone):
        got = answers[k]["instances"]
        order = np.argsort(-inst.scores, kind="stable")
        assert len(got) == len(inst)
        np.testing.assert_allclose([g["score"] for g in got], inst.scores[order], atol=1e-5)
        np.testing.assert_allclose([g["box"] for g in got], inst.boxes[order], atol=0.02)
        ious = [_iou(decode_rle(g["rle"]), inst.masks.bitmap(int(i))) for g, i in zip(got, order, strict=True)]
        assert min(ious) >= 0.99, ious


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# -- model, health, metrics, API key, CLI ----------------------------------------------------------------
def test_model_health_and_metrics(client: TestClient) -> None:
    info = client.get("/v1/model").json()
    assert info["name"] == "maskrcnn_effl0_fpn" and info["source"] == "best.pt" and info["version"]
    assert [(c["id"], c["name"]) for c in info["classes"]] == list(zip(CATEGORY_IDS, CLASS_NAMES, strict=True))
    assert info["input"]["max_bytes"] == MAX_BYTES and info["input"]["max_pixels"] == MAX_PIXELS
    assert "PNG" in info["input"]["formats"] and info["api_key_required"] is False
    assert client.get("/v1/health").json() == {"status": "ok", "queue_depth": 0, "max_queue": 32}
    _post(client, b"nope")
    _post(client)
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'maskkit_errors_total{kind="not_an_image"}' in text
    assert 'maskkit_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert 'maskkit_request_seconds_bucket{le="0.005",route="/v1/predict"}' in text
    assert "maskkit_queue_depth 0.0" in text and "maskkit_batch_size_bucket" in text
    assert client.get("/").text.startswith("<!doctype html>")
    for asset in ("app.js", "rle.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    assert client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]["content"]


def test_api_key(predictor: Any, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with TestClient(create_app(predictor, _settings(checkpoint, api_key="s3cret"))) as c:
        r = _post(c)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert c.post("/v1/predict", content=PNG, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.post("/v1/predict", content=PNG, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/v1/predict", content=PNG, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/model").status_code == 401
        assert c.get("/v1/model", headers={"X-API-Key": "s3cret"}).json()["api_key_required"] is True
        assert c.get("/v1/health").status_code == 200 and c.get("/").status_code == 200
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert ServeSettings().api_key == "from-env" and ServeSettings(api_key="flag").api_key == "flag"


def test_loopback_warning_and_workers_settings(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from maskkit.serve.server import app_from_env, exposure_warning, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    assert exposure_warning("127.0.0.1", ServeSettings(api_key="")) is None
    assert "without an API key" in (exposure_warning("0.0.0.0", ServeSettings(api_key="")) or "")
    assert exposure_warning("0.0.0.0", ServeSettings(api_key="k")) is None
    settings = _settings(checkpoint, max_batch=2, load_options={"device": "cpu"})
    monkeypatch.setenv(SETTINGS_ENV, settings.to_json())
    app = app_from_env()  # what each worker process of --workers N builds
    assert app.state.settings == settings
    app.state.batcher.close()


def test_cli_serves_until_stopped(checkpoint: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from typer.testing import CliRunner

    from maskkit.cli.main import app

    result = CliRunner().invoke(app, ["serve", "--model", str(checkpoint.parent / "missing.pt")])
    assert result.exit_code != 0 and "model not found" in str(result.exception)
    result = CliRunner().invoke(app, ["serve", "--model", str(checkpoint), "--max-batch", "0"])
    assert result.exit_code != 0 and "--max-batch" in str(result.exception)

    port = free_port()
    env = {**ONE_THREAD_ENV, "PYTHONPATH": str(REPO / "src"), API_KEY_ENV: ""}
    proc = subprocess.Popen([sys.executable, "-m", "maskkit", "serve", "--model", str(checkpoint), "--port", str(port),
                             "--device", "cpu", "--max-batch", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        started = wait_healthy(f"http://127.0.0.1:{port}", lambda: proc.poll() is None, 60, poll=0.2)
        assert started, proc.stderr.read() if proc.poll() is not None and proc.stderr else "no answer in 60 s"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", params={"conf": 0}, content=PNG, timeout=60)
        assert r.status_code == 200 and r.json()["count"] > 0
        assert httpx.get(f"http://127.0.0.1:{port}/v1/model").json()["max_batch"] == 2
    finally:
        proc.send_signal(signal.SIGINT if os.name != "nt" else signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "without an API key" not in err


def test_cli_warns_without_a_key_off_loopback(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import maskkit.serve.server as server
    from maskkit.cli.main import app

    started: list[tuple[ServeSettings, str, int, int]] = []
    monkeypatch.setattr(server, "run", lambda s, host, port, workers: started.append((s, host, port, workers)))
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    args = ["serve", "--model", str(checkpoint), "--host", "0.0.0.0", "--workers", "2", "--max-batch", "8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "without an API key" in result.output
    settings, host, _, workers = started[-1]
    assert (host, workers, settings.max_batch, settings.api_key) == ("0.0.0.0", 2, 8, None)
    result = CliRunner().invoke(app, [*args, "--api-key", "k"])
    assert result.exit_code == 0 and "without an API key" not in result.output and started[-1][0].api_key == "k"
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    result = CliRunner().invoke(app, args)
    assert "without an API key" not in result.output and started[-1][0].api_key == "from-env"


def test_the_batcher_survives_lifespan_restarts(predictor: Any, checkpoint: Path) -> None:
    app = create_app(predictor, _settings(checkpoint))
    for _ in range(2):  # each TestClient context runs startup and shutdown (which stops the worker thread)
        with TestClient(app) as c:
            assert _post(c, conf=0).status_code == 200
    with TestClient(app) as c:
        assert _post(c, conf=0).json()["count"] > 0


def test_a_failing_model_is_a_json_500(checkpoint: Path) -> None:
    class Broken(_Gate):
        def predict_batch(self, images: list[np.ndarray], score_threshold: float | None = None) -> list[Any]:
            raise RuntimeError("boom")

    with TestClient(create_app(Broken(), _settings(checkpoint)), raise_server_exceptions=False) as c:
        r = _post(c)
        assert r.status_code == 500 and r.json()["error"] == "internal_error" and "RuntimeError" in r.json()["detail"]
        assert _post(c, b"nope").status_code == 415  # the worker thread is still there for the next request
        assert 'maskkit_errors_total{kind="internal_error"} 1.0' in c.get("/metrics").text
