"""Test-time augmentation: views, mask-level merging, instance models and dense models (raw and instance maps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from maskkit.inference.paste import Detections, MaskCrops
from maskkit.structures import Instances

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(h: int, w: int, seed: int) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.random((max(h // 8, 2), max(w // 8, 2), 3)).astype(np.float32)
    return (cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8)


def _components(fg: np.ndarray) -> dict[str, torch.Tensor]:
    """Model-contract outputs of the 4-connected components of a boolean map (one class)."""
    from scipy import ndimage

    imap, n = ndimage.label(fg)
    sl = ndimage.find_objects(imap)
    boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in sl]
    areas = np.bincount(imap.ravel(), minlength=n + 1)[1:]
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.ones(n, dtype=torch.int64),
            "scores": torch.as_tensor(areas / max(areas.max(initial=1), 1), dtype=torch.float32),
            "instance_map": torch.as_tensor(imap.astype(np.int32))}


class RawDense(nn.Module):
    """A dense model splitting inference into ``predict_raw`` / ``postprocess``: pixel-wise, so flip-equivariant."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int]] = []

    def predict_raw(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.calls += [tuple(im.shape[-2:]) for im in images]
        return [{"fg": im[0].clone(), "step": torch.tensor(7)} for im in images]

    def postprocess(self, raw: dict[str, torch.Tensor], threshold: float = 0.5) -> dict[str, torch.Tensor]:
        fg = raw["fg"]
        out = _components((fg > threshold).numpy())
        out["sem_seg"] = torch.stack([1 - fg, fg])
        return out

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [self.postprocess(r) for r in self.predict_raw(images)]


class MapDense(nn.Module):
    """A dense model with ``instance_map`` outputs only (no raw split); it resizes to ``min_size`` itself."""

    def __init__(self, min_size: int | None = None) -> None:
        super().__init__()
        self.min_size, self.max_size = min_size, None
        self.seen: list[tuple[int, int]] = []

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.seen += [(self.min_size, im.shape[-2]) for im in images]
        return [_components((im[0] > 0.5).numpy()) for im in images]


def _tiny_rcnn() -> nn.Module:
    from maskkit.models import create

    torch.manual_seed(0)
    return create("maskrcnn_effl0_fpn", 2, min_size=64, max_size=128, anchor_sizes=[8, 16, 32, 64, 128],
                  pretrained_backbone=False, fpn_channels=32, rpn_pre_nms_top_n_test=100,
                  rpn_post_nms_top_n_test=50, box_detections_per_img=10).eval()


def _same(a: Instances, b: Instances) -> None:
    assert a.image_size == b.image_size and len(a) == len(b)
    assert np.array_equal(a.labels, b.labels) and np.allclose(a.boxes, b.boxes) and np.allclose(a.scores, b.scores)
    assert a.masks.to_rles() == b.masks.to_rles()


def test_make_views_and_model_scale() -> None:
    from maskkit.errors import ConfigError
    from maskkit.inference.tta import View, make_views, model_scale

    views = make_views((1.25, 1.0, 0.8), ("h", "none"))
    assert views[0] == View(1.0, "none") and views[1] == View(1.0, "h") and len(views) == 6
    assert {v.scale for v in views[2:4]} == {0.8} or {v.scale for v in views[2:4]} == {1.25}
    with pytest.raises(ConfigError):
        make_views((1.0,), ("diagonal",))
    with pytest.raises(ConfigError):
        make_views((0.0,), ("none",))
    model = _tiny_rcnn()
    with model_scale(model, 1.5) as own:
        assert own and model.transform.min_size == (96,) and model.transform.max_size == 192
    assert model.transform.min_size == (64,) and model.transform.max_size == 128
    with model_scale(MapDense(None), 2.0) as own:
        assert not own  # runs at the input size: the caller resizes the image


def test_merge_detections_matches_and_votes() -> None:
    from maskkit.inference.tta import merge_detections

    size = (20, 30)

    def det(offsets: list[tuple[int, int]], scores: list[float], labels: list[int]) -> Detections:
        crops = [np.full((6, 8), 0.9, np.float32) for _ in offsets]
        boxes = np.asarray([(x, y, x + 8, y + 6) for x, y in offsets], np.float32).reshape(-1, 4)
        return Detections(boxes, np.asarray(labels, np.int64), np.asarray(scores, np.float32),
                          MaskCrops(crops, np.asarray(offsets, np.int64).reshape(-1, 2), size))

    a = det([(2, 2), (15, 10)], [0.9, 0.6], [1, 1])
    b = det([(3, 2), (15, 10)], [0.7, 0.8], [1, 2])  # first: same object shifted; second: another class
    merged = merge_detections([a, b], iou_threshold=0.5)
    assert len(merged) == 3
    np.testing.assert_allclose(sorted(merged.scores.tolist()), [0.3, 0.4, 0.8], atol=1e-6)
    first = merged.take([int(np.argmax(merged.scores))])
    assert first.labels[0] == 1 and tuple(first.masks.offsets[0]) == (2, 2) and first.masks.crops[0].shape == (6, 9)
    np.testing.assert_allclose(first.boxes[0], [2.5, 2, 10.5, 8])
    dense = first.masks.to_dense()[0]  # mean of the two views: 0.9 where both, 0.45 where one
    assert dense[2:8, 3:10].all() and not dense[:, 2].any() and not dense[:, 10].any()
    empty = merge_detections([a.take([]), b.take([])])
    assert len(empty) == 0 and empty.image_size == size
    alone = merge_detections([a])
    assert np.array_equal(alone.scores, a.scores) and alone.masks.to_rles() == a.masks.to_rles()


def test_instance_model_tta_contract_and_identity() -> None:
    from maskkit.inference.predictor import Predictor

    model = _tiny_rcnn()
    image = _image(64, 64, 1)
    base = Predictor.from_model(model, [3, 7], ["a", "b"], device="cpu").predict(image)
    identity = Predictor.from_model(model, [3, 7], device="cpu", tta_scales=(1.0,), tta_flips=("none",))
    _same(identity.predict(image), base)
    tta = Predictor.from_model(model, [3, 7], device="cpu", tta=True, tta_scales=(1.0, 0.75),
                               tta_flips=("none", "v"), max_det=8)
    assert len(tta.views) == 4
    out = tta.predict(image)
    assert isinstance(out, Instances) and out.image_size == (64, 64) and 0 < len(out) <= 8
    assert set(np.unique(out.labels)) <= {3, 7} and ((out.scores >= 0) & (out.scores <= 1)).all()
    assert len(out.masks) == len(out) and out.masks.height == 64 and out.masks.width == 64
    assert np.all(np.diff(out.scores) <= 0) and (out.boxes[:, 2:] >= out.boxes[:, :2]).all()
    fast2 = Predictor.from_model(model, [3, 7], device="cpu", tta_flips=("none", "h")).predict(image)
    generic = Predictor.from_model(model, [3, 7], device="cpu", optimize=False, tta_flips=("none", "h"))
    out2 = generic.predict(image)  # the model's own forward per view: the same merged result
    assert len(out2) == len(fast2)
    np.testing.assert_allclose(out2.scores, fast2.scores, atol=1e-4)

def test_dense_raw_tta() -> None:
    from maskkit.errors import ConfigError
    from maskkit.inference.predictor import Predictor

    model = RawDense()
    image = _image(48, 64, 2)
    base = Predictor.from_model(model, [4], device="cpu").predict(image)
    assert len(base) > 1
    _same(Predictor.from_model(model, [4], device="cpu", tta_flips=("none",)).predict(image), base)
    model.calls.clear()
    flipped = Predictor.from_model(model, [4], device="cpu", tta_flips=("none", "h", "v", "hv")).predict(image)
    _same(flipped, base)  # a pixel-wise model is flip-equivariant: the averaged maps are the same maps
    assert model.calls == [(48, 64)] * 4
    model.calls.clear()
    scaled = Predictor.from_model(model, [4], device="cpu", tta_scales=(1.0, 2.0), tta_flips=("none",))
    out = scaled.predict(image)
    assert model.calls == [(48, 64), (96, 128)]  # no own resize: the image is resized
    assert out.image_size == (48, 64) and abs(len(out) - len(base)) <= 2
    with pytest.raises(ConfigError, match=r"scale 1\.0"):
        Predictor.from_model(model, [4], device="cpu", tta_scales=(0.5,)).predict(image)


def test_dense_instance_map_tta() -> None:
    from maskkit.inference.predictor import Predictor

    model = MapDense()
    image = _image(40, 56, 3)
    base = Predictor.from_model(model, [1], device="cpu").predict(image)
    out = Predictor.from_model(model, [1], device="cpu", tta_flips=("none", "h", "v")).predict(image)
    assert len(out) == len(base) and out.masks.to_rles() == base.masks.to_rles()
    np.testing.assert_allclose(out.scores, base.scores, atol=1e-6)  # every instance found by every view
    own = MapDense(min_size=40)
    Predictor.from_model(own, [1], device="cpu", tta_scales=(1.0, 1.5), tta_flips=("none",)).predict(image)
    assert own.seen == [(40, 40), (60, 40)] and own.min_size == 40  # the model's own resize is scaled, restored
