"""Helpers of the ``maskkit serve`` tests: a tiny random-weight checkpoint, images, a live uvicorn server."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from conftest import save_tiny_checkpoint

TINY_MODEL = {  # EfficientNet-Lite0 Mask R-CNN, 32-channel FPN, every box kept (score threshold 0): detections
    "name": "maskrcnn_effl0_fpn",
    "pretrained_backbone": False,
    "anchor_sizes": [8, 16, 32, 64, 128],
    "options": {"fpn_channels": 32, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
                "box_detections_per_img": 20, "box_score_thresh": 0.0},
}
CATEGORY_IDS = [1, 2, 5]
CLASS_NAMES = ["ellipse", "polygon", "ring"]
NUCLEI = "dsb2018-stage1-train-subset/stage1_train"


def make_checkpoint(folder: Path, seed: int = 0, mask_bias: float = 0.5) -> Path:
    """A checkpoint of random weights (trained-looking BatchNorm statistics), 64 px inputs."""

    def blob_masks(model: Any) -> None:
        # random mask logits sit near 0 (masks of a few pixels): a positive bias gives blob-like masks to draw
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(mask_bias)

    return save_tiny_checkpoint(folder / "best.pt", TINY_MODEL, CATEGORY_IDS, CLASS_NAMES, seed=seed, tweak=blob_masks)


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random RGB uint8 image."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.random((max(h // 8, 2), max(w // 8, 2), 3)).astype(np.float32)
    return (cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    """``image`` encoded by Pillow."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def nuclei_image(shared_data: Path) -> Path:
    """The first DSB2018 image of the shared subset (a fluorescence nuclei PNG)."""
    folder = sorted((shared_data / NUCLEI).iterdir())[0]
    return folder / "images" / f"{folder.name}.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, alive: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    """Poll ``url``/v1/health until it answers 200 (True), the server dies or ``timeout`` passes (False)."""
    import httpx

    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    return False


@contextmanager
def live_server(app: Any, timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL; stops it after."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    if not wait_healthy(url, thread.is_alive, timeout):
        server.should_exit = True
        raise RuntimeError(f"the test server did not start on {url}")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout)
