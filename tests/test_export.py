"""Export (ONNX, OpenVINO, TorchScript) of every family and the runtime backends, against PyTorch.

Tiny random-weight models of each family (Mask R-CNN, Panoptic FPN, bottom-up: seeded watershed, StarDist- and
Cellpose-style; semantic) are exported once
per format; on shared images the runtime backend's results must match the PyTorch Predictor's: detections
matched one to one with mask IoU >= 0.99 and |score difference| <= 1e-3 (instances), max absolute map
difference <= 1e-3 (dense maps), for batches of 1 to 4 images at two image sizes from ONE artefact, and an
image without detections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from conftest import save_tiny_checkpoint
from maskkit.inference.predictor import Predictor, load
from maskkit.structures import Instances

pytestmark = pytest.mark.usefixtures("one_thread")

CATEGORY_IDS = [1, 2, 5]
CLASS_NAMES = ["a", "b", "c"]
RCNN_OPTIONS = {"fpn_channels": 32, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
                "box_detections_per_img": 10, "box_score_thresh": 0.2}
MODELS: dict[str, dict[str, Any]] = {
    "maskrcnn": {"name": "maskrcnn_effl0_fpn", "anchor_sizes": [8, 16, 32, 64, 128], "options": RCNN_OPTIONS},
    "panoptic": {"name": "panoptic_fpn_effl0", "anchor_sizes": [8, 16, 32, 64, 128],
                 "options": {**RCNN_OPTIONS, "semantic_channels": 16}},
    "bottomup": {"name": "bottomup_mbv2", "options": {"decoder_channels": [16, 16, 8, 8, 8], "seed_threshold": 0.3}},
    "semantic": {"name": "unet_mbv2", "options": {"decoder_channels": [16, 16, 8, 8, 8]}},
    # maps at stride 2, flooded there and upsampled by the shared decoder
    "bottomup_s2": {"name": "bottomup_mbv2", "options": {"decoder_channels": [16, 16, 8, 8, 8], "seed_threshold": 0.3,
                                                         "output_stride": 2}},
    "stardist": {"name": "stardist_mbv2", "options": {"decoder_channels": [16, 16, 8, 8, 8], "n_rays": 16}},
    "cellpose": {"name": "cellpose_mbv2", "options": {"decoder_channels": [16, 16, 8, 8, 8], "flow_threshold": 4.0}},
}
DENSE = ["bottomup", "bottomup_s2", "semantic", "stardist", "cellpose"]
ONE_BACKEND = {"stardist", "cellpose"}
"""Families whose decoded instances are compared on onnxruntime only (their maps on every backend): the decoding
is the same Python code whatever the backend, and slow on random weights."""


def _plausible_rays(model: Any) -> None:
    """Random weights with rays of ~10 px (not a carpet of 1 px polygons): a realistic NMS to compare."""
    head = model.net.segmentation_head[0]
    k = model.num_classes + 2
    head.weight[k:] *= 0.2
    head.bias[k:] = 1.0


TWEAKS = {"stardist": _plausible_rays}
BACKENDS = {"onnxruntime": "onnx", "openvino": "openvino", "torchscript": "torchscript"}
SIZES = [(96, 128), (120, 88)]  # two image sizes (H, W), neither a multiple of the strides


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    return {family: save_tiny_checkpoint(root / family / "best.pt", MODELS[family], CATEGORY_IDS, CLASS_NAMES,
                                         tweak=TWEAKS.get(family))
            for family in MODELS}


@pytest.fixture(scope="module")
def exports(checkpoints: dict[str, Path]) -> dict[tuple[str, str], Path]:
    """Export folders by (family, format), made on first use."""

    class Lazy(dict):
        def __missing__(self, key: tuple[str, str]) -> Path:
            from maskkit.export.api import export_model

            family, fmt = key
            out = checkpoints[family].parent / fmt
            export_model(checkpoints[family], fmt, out, imgsz=64, dynamic=True)
            self[key] = out
            return out

    return Lazy()


@pytest.fixture(scope="module")
def images(shared_data: Path) -> dict[tuple[int, int], list[np.ndarray]]:
    """Four shared photos at each of the two sizes."""
    import cv2

    from maskkit.data.images import read_image

    files = sorted((shared_data / "coco128-seg" / "images").rglob("*.jpg"))[:4]
    photos = [read_image(f) for f in files]
    return {size: [cv2.resize(p, (size[1], size[0]), interpolation=cv2.INTER_AREA) for p in photos]
            for size in SIZES}


def match(a: Instances, b: Instances) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of ``a`` and ``b`` (same class, best mask IoU): (IoUs, |score differences|)."""
    assert len(a) == len(b), f"{len(a)} PyTorch instances, {len(b)} runtime instances"
    if not len(a):
        return np.ones(0), np.zeros(0)
    iou = np.asarray(mask_utils.iou(a.masks.to_rles(), b.masks.to_rles(), [0] * len(b))).reshape(len(a), len(b))
    iou[(a.masks.areas() == 0)[:, None] & (b.masks.areas() == 0)[None, :]] = 1.0
    iou[np.asarray(a.labels)[:, None] != np.asarray(b.labels)[None, :]] = 0.0
    closeness = iou - np.abs(np.asarray(a.scores)[:, None] - np.asarray(b.scores)[None, :])
    rows, cols = linear_sum_assignment(-closeness)
    return iou[rows, cols], np.abs(np.asarray(a.scores)[rows] - np.asarray(b.scores)[cols])


OBSERVED: dict[tuple[str, str], dict[str, float]] = {}
"""Worst differences seen per (family, backend), printed at the end of the module (``pytest -s``)."""


@pytest.fixture(scope="module", autouse=True)
def parity_table() -> Any:
    yield
    for (family, backend), seen in sorted(OBSERVED.items()):
        print(f"\nparity {family:9s} {backend:12s} " + " ".join(f"{k}={v:.3g}" for k, v in sorted(seen.items())))


def assert_parity(ref: list[Instances], got: list[Instances], key: tuple[str, str] | None = None) -> None:
    worst_iou, worst_score = 1.0, 0.0
    for a, b in zip(ref, got, strict=True):
        assert a.image_size == b.image_size
        ious, diffs = match(a, b)
        assert (ious >= 0.99).all(), ious
        assert (diffs <= 1e-3).all(), diffs
        worst_iou = min(worst_iou, float(ious.min(initial=1.0)))
        worst_score = max(worst_score, float(diffs.max(initial=0)))
    if key is not None:
        seen = OBSERVED.setdefault(key, {"min_iou": 1.0, "max_score_diff": 0.0})
        seen["min_iou"] = min(seen["min_iou"], worst_iou)
        seen["max_score_diff"] = max(seen["max_score_diff"], worst_score)


@pytest.mark.parametrize(("family", "backend"), [(f, b) for f in MODELS for b in BACKENDS
                                                 if f not in ONE_BACKEND or b == "onnxruntime"])
def test_parity_batches_sizes_and_empty(family: str, backend: str, checkpoints: dict[str, Path],
                                        exports: dict[tuple[str, str], Path],
                                        images: dict[tuple[int, int], list[np.ndarray]]) -> None:
    folder = exports[family, BACKENDS[backend]]
    reference = Predictor(checkpoints[family], device="cpu")
    runtime = load(folder, backend=backend)
    assert runtime.category_ids == CATEGORY_IDS and runtime.class_names == CLASS_NAMES
    assert runtime.config.model.name == reference.config.model.name
    total = 0
    for size in SIZES:
        ref = reference.predict_batch(images[size])
        total += sum(len(r) for r in ref)
        for batch in (1, 2, 3, 4):  # one artefact, any batch size
            runtime.batch_size = batch
            got = runtime.predict_batch(images[size])
            assert_parity(ref, got, (family, backend))
    assert total > 0, "no detections at all: the parity check would prove nothing"
    # an image with no detections (alone and in a batch): empty, well-formed results
    blank = np.full((*SIZES[0], 3), 128, np.uint8)
    threshold = 0.999 if family in ("maskrcnn", "panoptic") else None
    runtime.batch_size = 4
    ref = reference.predict_batch([blank, blank], score_threshold=threshold)
    got = runtime.predict_batch([blank, blank], score_threshold=threshold)
    assert_parity(ref, got)
    if threshold is not None:
        assert [len(g) for g in got] == [0, 0] and got[0].masks.to_rles() == []
        assert got[0].boxes.shape == (0, 4)


def _reference_maps(model: torch.nn.Module, tensors: list[torch.Tensor]) -> torch.Tensor:
    raws = model._raw(tensors)
    # raw dicts list the maps in channel order (StarDist's rays already rescaled to the input size, as in the graph)
    # (a strided model's raw dict also holds the image ``size``, not a map)
    maps = [torch.cat([v if v.dim() == 3 else v[None] for k, v in r.items() if k != "size"])
            if isinstance(r, dict) else r for r in raws]
    return torch.stack(maps)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("family", DENSE)
def test_dense_maps_parity(family: str, backend: str, checkpoints: dict[str, Path],
                           exports: dict[tuple[str, str], Path],
                           images: dict[tuple[int, int], list[np.ndarray]]) -> None:
    from maskkit.models.factory import model_from_checkpoint

    loaded = model_from_checkpoint(checkpoints[family])
    model = loaded.model.eval()
    runtime = load(exports[family, BACKENDS[backend]], backend=backend)
    for size in SIZES:
        for batch in (1, 4):
            tensors = [runtime._tensor(im) for im in images[size][:batch]]
            with torch.inference_mode():
                ref = _reference_maps(model, tensors).numpy()
            got = runtime.session.run(runtime._inputs(torch.stack(tensors).numpy()))[0]
            assert got.shape == ref.shape
            diff = float(np.abs(got - ref).max())
            assert diff <= 1e-3, diff
            seen = OBSERVED.setdefault((family, backend), {})
            seen["max_map_diff"] = max(seen.get("max_map_diff", 0.0), diff)


def test_in_graph_resize_rules_match_the_eager_ones() -> None:
    """The graphs' integer size rules (+ float64 correction) give the eager sizes, including the few percent of
    sizes where float64 rounding lands just below an integer (e.g. 103 px at max_size 853 gives 852, not 853)."""
    from types import SimpleNamespace

    from maskkit.export.graphs import DenseGraph, RCNNGraph
    from maskkit.models.encoders import resized_size

    rng = np.random.default_rng(0)
    sides = [(22, 50), (26, 103), (30, 100), (50, 103), (64, 64), (300, 512)]
    sides += [tuple(int(v) for v in rng.integers(16, 2000, 2)) for _ in range(300)]
    for min_size, max_size in ((512, 853), (800, 1333), (64, 128)):
        rcnn = SimpleNamespace(min_size=float(min_size), max_size=float(max_size), float_rounding=True)
        dense = SimpleNamespace(min_size=min_size, max_size=max_size, float_rounding=True)
        for h, w in sides:
            scale = min(min_size / min(h, w), max_size / max(h, w))  # torchvision's eager rule
            expected = [int(np.floor(h * scale)), int(np.floor(w * scale))]
            _, got = RCNNGraph.resize(rcnn, torch.zeros(1, 1, h, w))
            assert got.tolist() == expected, (h, w, min_size, max_size)
            hw = torch.tensor([h, w])
            assert DenseGraph._resized(dense, hw).tolist() == list(resized_size(h, w, min_size, max_size)), (h, w)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_parity_where_float_rounding_decides_the_resize(backend: str, checkpoints: dict[str, Path],
                                                        exports: dict[tuple[str, str], Path],
                                                        images: dict[tuple[int, int], list[np.ndarray]]) -> None:
    """40 x 98 px at max_size 128: torchvision resizes the long side to floor(98 * (128 / 98)) = 127 px (float64
    rounding), not 128; the graph must too (OpenVINO, computing float64 in float32, gets the size as an input)."""
    import cv2

    small = [cv2.resize(im, (98, 40), interpolation=cv2.INTER_AREA) for im in images[SIZES[0]]]
    reference = Predictor(checkpoints["maskrcnn"], device="cpu", score_threshold=0.05)
    runtime = load(exports["maskrcnn", BACKENDS[backend]], backend=backend, score_threshold=0.05)
    ref = reference.predict_batch(small)
    assert sum(len(r) for r in ref) > 0
    assert_parity(ref, runtime.predict_batch(small), ("maskrcnn 40x98", backend))
