"""Predictor: checkpoint loading, batching, filters, dense vs RLE masks, the Mask R-CNN fast path and crop pasting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from conftest import save_tiny_checkpoint
from maskkit.inference.predictor import Predictor
from maskkit.structures import Instances, Masks

TINY_MODEL = {  # EfficientNet-Lite0 Mask R-CNN with 32-channel FPN and heads: cheap on a CPU at 64 px
    "name": "maskrcnn_effl0_fpn",
    "pretrained_backbone": False,
    "anchor_sizes": [8, 16, 32, 64, 128],
    "options": {"fpn_channels": 32, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
                "box_detections_per_img": 10},
}
CATEGORY_IDS = [1, 2, 5]
CLASS_NAMES = ["ellipse", "polygon", "ring"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _image(h: int, w: int, seed: int) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.random((max(h // 8, 2), max(w // 8, 2), 3)).astype(np.float32)
    return (cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint saved as the trainer saves one: random weights, trained-looking BatchNorm statistics."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("predictor") / "best.pt", TINY_MODEL, CATEGORY_IDS,
                                CLASS_NAMES)


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return Predictor(checkpoint, device="cpu")


def _matched_ious(a: Instances, b: Instances) -> np.ndarray:
    """For each instance of ``a``, the best mask IoU with a same-class instance of ``b``."""
    if not len(a):
        return np.ones(0)
    iou = np.asarray(mask_utils.iou(a.masks.to_rles(), b.masks.to_rles(), [0] * len(b))).reshape(len(a), len(b))
    iou[(a.masks.areas() == 0)[:, None] & (b.masks.areas() == 0)[None, :]] = 1.0  # two empty masks agree
    iou[np.asarray(a.labels)[:, None] != np.asarray(b.labels)[None, :]] = 0
    return iou.max(1) if len(b) else np.zeros(len(a))


def _assert_same(a: Instances, b: Instances, exact: bool = False) -> None:
    assert a.image_size == b.image_size and len(a) == len(b)
    if exact:
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.labels, b.labels) and a.masks.to_rles() == b.masks.to_rles()
    else:
        np.testing.assert_allclose(np.sort(a.scores), np.sort(b.scores), atol=1e-4)
        assert (_matched_ious(a, b) >= 0.99).all()


def _variant(predictor: Predictor, **options: object) -> Predictor:
    """The module predictor's model with other options (cheaper than loading the checkpoint again)."""
    return Predictor.from_model(predictor.model, predictor.category_ids, predictor.class_names,
                                config=predictor.config, device="cpu", **options)


def test_crop_to_rle_equals_pycocotools() -> None:
    from maskkit.structures.rle import crop_to_rle

    rng = np.random.default_rng(0)
    h_img, w_img = 23, 31
    for trial in range(200):
        h = h_img if trial % 4 == 0 else int(rng.integers(1, h_img + 1))  # full height: runs across columns
        w = int(rng.integers(1, w_img + 1))
        y0, x0 = int(rng.integers(0, h_img - h + 1)), int(rng.integers(0, w_img - w + 1))
        crop = rng.random((h, w)) < rng.random() if trial % 7 else np.ones((h, w), bool)
        full = np.zeros((h_img, w_img), np.uint8)
        full[y0:y0 + h, x0:x0 + w] = crop
        assert crop_to_rle(crop, y0, x0, h_img, w_img) == mask_utils.encode(np.asfortranarray(full)), trial


def test_paste_masks_matches_torchvision() -> None:
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from maskkit.inference.paste import MaskCrops, paste_masks

    torch.manual_seed(0)
    h, w = 120, 160
    masks = torch.rand(40, 1, 28, 28)
    xy = torch.rand(40, 2) * torch.tensor([w, h]) - 10
    boxes = torch.cat([xy, xy + torch.rand(40, 2) * 90 + 0.5], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)  # the model clips its boxes to the image
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    ref = (paste_masks_in_image(masks, boxes, (h, w))[:, 0] > 0.5).numpy()
    crops = paste_masks(masks, boxes, (h, w))
    ref_rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in ref]
    ious = np.diag(np.asarray(mask_utils.iou(crops.to_rles(), ref_rles, [0] * len(ref))))
    assert (ious >= 0.99).all() or not ref.any()
    assert crops.to_rles() == ref_rles  # same arithmetic: bit-identical
    assert np.array_equal(crops.to_dense(), ref)
    assert np.array_equal(crops.flip().to_dense(), ref[:, :, ::-1])
    assert np.array_equal(crops.flip(horizontal=False).to_dense(), ref[:, ::-1])
    assert MaskCrops.from_dense(ref.astype(np.float32)).to_rles() == ref_rles
    assert len(paste_masks(masks[:0], boxes[:0], (h, w)).to_rles()) == 0


def test_checkpoint_predict_contract(predictor: Predictor, checkpoint: Path, tmp_path: Path) -> None:
    from maskkit.fileio import atomic_write_png

    assert predictor.class_names == CLASS_NAMES and predictor.category_ids == CATEGORY_IDS
    assert predictor.fast  # torchvision Mask R-CNN: the fast path
    image = _image(64, 64, 1)
    inst = predictor.predict(image)
    assert isinstance(inst, Instances) and inst.image_size == (64, 64) and len(inst) > 0
    assert isinstance(inst.masks, Masks) and len(inst.masks) == len(inst)
    assert set(np.unique(inst.labels)) <= set(CATEGORY_IDS) and inst.boxes.shape == (len(inst), 4)
    assert np.all(np.diff(inst.scores) <= 0)
    atomic_write_png(tmp_path / "x.png", image)
    _assert_same(predictor.predict(tmp_path / "x.png"), inst, exact=True)
    many = predictor.predict([image, _image(48, 80, 2)])
    assert isinstance(many, list) and [m.image_size for m in many] == [(64, 64), (48, 80)]


def test_fast_path_matches_model_forward(checkpoint: Path) -> None:
    from maskkit.errors import ConfigError
    from maskkit.models import create

    fast = Predictor(checkpoint, device="cpu")
    plain = Predictor(checkpoint, device="cpu", optimize=False)  # the model's own forward + to_instances
    assert fast.fast and not plain.fast
    exact = _variant(plain, optimize="exact")  # crop pasting + fast RoIAlign, unchanged network: bit-identical
    assert exact.fast and not exact.channels_last
    image = _image(48, 80, 10)
    for thr in (None, 0.0):
        reference = plain.predict(image, score_threshold=thr)
        _assert_same(fast.predict(image, score_threshold=thr), reference)
        _assert_same(exact.predict(image, score_threshold=thr), reference, exact=True)
    with pytest.raises(ConfigError, match="optimize"):
        _variant(plain, optimize="fastest")
    torch.manual_seed(0)  # a ResNet: its BatchNorm folded into the convolutions
    resnet = create("maskrcnn_r18_fpn", 2, min_size=64, max_size=128, anchor_sizes=[8, 16, 32, 64, 128],
                    rpn_post_nms_top_n_test=30, box_detections_per_img=3).eval()
    with torch.no_grad():
        for m in resnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    fast_r = Predictor.from_model(resnet, [1, 2], device="cpu")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast_r.model.backbone.modules())
    image = _image(64, 64, 12)
    _assert_same(fast_r.predict(image), Predictor.from_model(resnet, [1, 2], device="cpu", optimize=False).predict(
        image))


def test_grey_and_rgba_images_take_the_networks_channels(predictor: Predictor) -> None:
    """A run that kept its images' own channels (augment.channels unset) predicts on grey and RGBA images too:
    they are converted to the network's 3 channels, as the same image in RGB."""
    assert predictor.config.augment.channels is None
    rgb = _image(64, 80, 3)
    ref = predictor.predict(rgb)
    assert len(ref) > 0
    rgba = np.concatenate([rgb, np.full((64, 80, 1), 255, np.uint8)], axis=2)
    _assert_same(predictor.predict(rgba), ref, exact=True)
    grey = rgb[:, :, 0]
    _assert_same(predictor.predict(grey), predictor.predict(np.repeat(grey[:, :, None], 3, axis=2)), exact=True)


def test_batched_equals_unbatched(predictor: Predictor) -> None:
    images = [_image(64, 64, 3), _image(48, 80, 4), _image(64, 64, 5)]
    batched = predictor.predict_batch(images)
    for image, inst in zip(images, batched, strict=True):
        _assert_same(inst, predictor.predict(image))


def test_dense_masks_agree_with_rle(predictor: Predictor) -> None:
    image = _image(48, 80, 7)
    d, r = _variant(predictor, dense_masks=True).predict(image), predictor.predict(image)
    assert isinstance(d.masks, np.ndarray) and d.masks.dtype == bool and d.masks.shape == (len(r), 48, 80)
    assert np.array_equal(d.masks, r.masks.to_bitmaps())
    generic = _variant(predictor, dense_masks=True, optimize=False).predict(image)
    assert isinstance(generic.masks, np.ndarray) and generic.masks.shape == (len(generic), 48, 80)


def test_max_det_score_and_class_filters(predictor: Predictor) -> None:
    from maskkit.errors import ConfigError

    image = _image(64, 64, 8)
    full = predictor.predict(image, score_threshold=0.0)
    top = _variant(predictor, max_det=3).predict(image, score_threshold=0.0)
    assert len(top) == min(3, len(full))
    np.testing.assert_allclose(top.scores, full.scores[: len(top)], atol=1e-5)
    thr = float(np.median(full.scores))
    assert (predictor.predict(image, score_threshold=thr).scores >= thr).all()
    for classes in ([2], ["polygon"]):
        only = _variant(predictor, classes=classes).predict(image, score_threshold=0.0)
        assert set(np.unique(only.labels)) <= {2}
        n = int((full.labels == 2).sum())  # classes are filtered before the count cap: none is lost
        assert len(only) >= n
        np.testing.assert_allclose(only.scores[:n], full.scores[full.labels == 2], atol=1e-5)
    generic = _variant(predictor, classes=[5], max_det=2, optimize=False).predict(image, 0.0)
    assert len(generic) <= 2 and set(np.unique(generic.labels)) <= {5}
    with pytest.raises(ConfigError, match="unknown class"):
        _variant(predictor, classes=["cat"])


def test_fold_batchnorm_keeps_outputs() -> None:
    import copy

    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    from maskkit.inference.predictor import fold_batchnorm

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                   norm_layer=torch.nn.BatchNorm2d).eval()
    with torch.no_grad():
        for m in backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    folded = copy.deepcopy(backbone)
    assert fold_batchnorm(folded) == 20  # every BatchNorm of ResNet-18
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = backbone(x), folded(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)

    class Dynamic(torch.nn.Module):  # data-dependent control flow: not traceable, left alone
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    assert fold_batchnorm(Dynamic().eval()) == 0
