"""The page of ``maskkit serve`` in a real browser: Playwright driving Debian's chromium against a live uvicorn.

Uploads a shared nuclei image, checks that masks were painted on the canvas and that the count shown equals
the API's, moves the score slider (the count drops, no new request), downloads the JSON, checks the page
asks for nothing outside the app (works offline) and fits a phone screen; screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import REPO
from serve_support import live_server, make_checkpoint, nuclei_image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from maskkit.inference.predictor import load
    from maskkit.serve.app import create_app
    from maskkit.serve.settings import ServeSettings

    ckpt = make_checkpoint(tmp_path_factory.mktemp("serve_page"))
    app = create_app(load(ckpt, device="cpu"), ServeSettings(model=str(ckpt), api_key=""))
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (`make setup` installs Debian's chromium as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


def _api_count(url: str, image: bytes, conf: float) -> int:
    r = httpx.post(f"{url}/v1/predict", params={"conf": conf, "max_det": 1000, "masks": "none"}, content=image,
                   headers={"content-type": "image/png"}, timeout=60)
    assert r.status_code == 200, r.text
    return int(r.json()["count"])


def _painted_pixels(page: Any) -> int:
    """Canvas pixels that differ from the uploaded image as the page decoded it (``state.base``)."""
    return int(page.evaluate("""() => {
        const c = document.getElementById('canvas');
        const now = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const base = state.base.data;
        let n = 0;
        for (let i = 0; i < now.length; i += 4) {
            if (now[i] !== base[i] || now[i + 1] !== base[i + 1] || now[i + 2] !== base[i + 2]) n++;
        }
        return n;
    }"""))


def test_page_in_chromium(server: str, browser: Any, shared_data: Path) -> None:
    path = nuclei_image(shared_data)
    image = path.read_bytes()
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    outside: list[str] = []
    predicts: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(server):
            if "/v1/predict" in r.request.url:
                predicts.append(r.request.url)
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server + "/", timeout=30_000)
    page.wait_for_selector("#classes input[data-class]", timeout=30_000)
    page.set_input_files("#file", str(path))
    page.wait_for_selector("body[data-state=ready]", timeout=60_000)

    conf = float(page.input_value("#conf"))
    shown = int(page.text_content("#count") or -1)
    assert shown > 0
    assert shown == _api_count(server, image, conf)
    painted = _painted_pixels(page)
    assert painted > 500, f"only {painted} canvas pixels differ from the image: masks not drawn"
    page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)

    # the slider filters in the browser: fewer instances and fewer painted pixels, no new request
    scores = sorted({round(s, 6) for s in page.evaluate("() => state.instances.map((i) => i.score)")})
    higher = (scores[len(scores) // 2] + scores[len(scores) // 2 - 1]) / 2  # between two returned scores
    page.fill("#conf", f"{higher:.6f}")
    fewer = int(page.text_content("#count") or -1)
    assert 0 < fewer < shown
    assert fewer == _api_count(server, image, float(page.input_value("#conf")))
    assert _painted_pixels(page) < painted
    rows = page.locator("#table tbody tr").count()
    assert rows == fewer
    assert len(predicts) == 1, predicts

    with page.expect_download(timeout=10_000) as download:
        page.click("#dl-json")
    saved = json.loads(Path(download.value.path()).read_text())
    assert saved["count"] == fewer and len(saved["instances"]) == fewer
    with page.expect_download(timeout=10_000) as download:
        page.click("#dl-png")
    assert Path(download.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page.screenshot(path=str(ARTIFACTS / "serve_page_filtered.png"), full_page=True)
    assert not outside, f"the page asked for resources outside the app: {outside}"
    assert not errors, errors
    context.close()


def test_page_on_a_phone(server: str, browser: Any, shared_data: Path) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    page.goto(server + "/", timeout=30_000)
    page.wait_for_selector("#classes input[data-class]", timeout=30_000)
    page.set_input_files("#file", str(nuclei_image(shared_data)))
    page.wait_for_selector("body[data-state=ready]", timeout=60_000)
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page is wider than a phone screen: {width}"
    canvas = page.locator("#canvas").bounding_box()
    assert canvas is not None and canvas["width"] <= 390
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve_page_phone.png"), full_page=True)
    context.close()


def test_docs_page_without_cdn(server: str, browser: Any) -> None:
    context = browser.new_context()
    outside: list[str] = []
    context.route("**/*", lambda r: r.continue_() if r.request.url.startswith(server)
                  else (outside.append(r.request.url), r.abort()))
    page = context.new_page()
    page.goto(server + "/docs", timeout=30_000)
    page.wait_for_selector("section.op", timeout=30_000)
    assert "/v1/predict" in (page.text_content("#docs") or "")
    assert page.locator("section.op").count() >= 4
    assert not outside, outside
    context.close()


def test_the_pages_rle_decoder_matches_pycocotools(server: str, browser: Any) -> None:
    """``maskPixels`` (static/rle.js) against pycocotools' encoder: every foreground pixel, nothing else."""
    import numpy as np

    from maskkit.structures.masks import rle_to_string
    from maskkit.structures.rle import encode_bitmap

    rng = np.random.default_rng(0)
    bitmaps = [np.zeros((7, 5), bool), np.ones((6, 9), bool), rng.random((40, 31)) > 0.5,
               rng.random((300, 200)) > 0.97, np.pad(np.ones((120, 90), bool), ((3, 400), (250, 1)))]
    one = np.zeros((5, 4), bool)
    one[4, 3] = True
    bitmaps.append(one)
    rles = [rle_to_string(encode_bitmap(b)) for b in bitmaps]
    page = browser.new_page()
    page.goto(server + "/", timeout=30_000)
    got = page.evaluate("""(rles) => rles.map((r) => {
        const scratch = new Uint8Array(r.size[0] * r.size[1]);
        const px = maskPixels(r, scratch);
        return [Array.from(px.fill).sort((a, b) => a - b), px.edge.length, scratch.some((v) => v !== 0)];
    })""", rles)
    for bitmap, (fill, edges, dirty) in zip(bitmaps, got, strict=True):
        assert fill == np.flatnonzero(bitmap).tolist()  # row-major indices y * width + x
        assert not dirty and (edges > 0) == bool(bitmap.any()) and edges <= len(fill)
    page.close()
