"""Helpers of the ``maskkit serve`` tests: a tiny random-weight checkpoint, images, a live uvicorn server."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

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
    import torch

    from maskkit.config import TrainConfig
    from maskkit.models.checkpoint import save_checkpoint
    from maskkit.models.factory import build_model

    torch.manual_seed(seed)
    cfg = TrainConfig.model_validate({"model": TINY_MODEL, "data": {"path": "x"},
                                      "augment": {"min_size": [64], "max_size": 128}})
    model = build_model(cfg, len(CATEGORY_IDS), pretrained=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        # random mask logits sit near 0 (masks of a few pixels): a positive bias gives blob-like masks to draw
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(mask_bias)
    path = folder / "best.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": cfg.model_dump(mode="json"),
                           "class_names": CLASS_NAMES, "category_ids": CATEGORY_IDS, "epoch": 1, "step": 1})
    return path


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


@contextmanager
def live_server(app: Any, timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL; stops it after."""
    import httpx
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError(f"the test server did not start on {url}")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout)
