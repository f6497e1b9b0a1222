"""CPU training-speed options of Mask R-CNN (model.speed): the Numba RoIAlign's gradients, the fused anchor
matcher, a training step with every option, and the config round trip."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

from conftest import TINY_MASKRCNN, random_rois, tiny_config
from maskkit.config import TrainConfig, load_config, save_config
from maskkit.errors import ConfigError
from maskkit.models.cpu_kernels import match_kernel, roi_align_kernels
from maskkit.models.factory import build_model
from maskkit.models.fast_train import AnchorPair, FastMultiScaleRoIAlign, FusedMatcher, SampledMaskRoIHeads

pytestmark = pytest.mark.skipif(roi_align_kernels() is None or match_kernel() is None, reason="numba not installed")

IMAGE_SIZES = [(96, 128), (80, 112)]
FAST = {"roi_align": "numba", "anchor_matching": "numba", "mask_targets": "sampled", "backbone_norm": "frozen",
        "channels_last": True, "box_head_dim": 64, "mask_head_convs": 2, "separable_convs": True}


def _features(levels: int, channels_last: bool = False) -> OrderedDict[str, torch.Tensor]:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return OrderedDict((str(i), torch.randn(2, 8, 96 >> (i + 2), 128 >> (i + 2)).contiguous(memory_format=fmt)
                        .requires_grad_()) for i in range(levels))


@pytest.mark.parametrize(("levels", "size", "sampling", "channels_last"),
                         [(4, 7, 2, False), (4, 14, 2, True), (1, 5, 0, False), (3, 7, 0, True)])
def test_roi_align_forward_and_gradients_match_torchvision(levels: int, size: int, sampling: int,
                                                           channels_last: bool) -> None:
    feats, boxes = _features(levels, channels_last), random_rois()
    ref = MultiScaleRoIAlign(list(feats), size, sampling)
    fast = FastMultiScaleRoIAlign.like(ref)
    want, got = ref(feats, boxes, IMAGE_SIZES), fast(feats, boxes, IMAGE_SIZES)
    assert torch.equal(got, want)
    upstream = torch.randn_like(want)
    grads_ref = torch.autograd.grad(want, list(feats.values()), upstream)
    grads_fast = torch.autograd.grad(got, list(feats.values()), upstream)
    for a, b in zip(grads_fast, grads_ref, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert any(g.abs().sum() > 0 for g in grads_fast)


def test_roi_align_gradient_is_the_directional_derivative() -> None:
    """gradcheck-style: <grad, v> equals the central difference of <out, w> along v (RoIAlign is linear)."""
    feats, boxes = _features(2), random_rois()
    fast = FastMultiScaleRoIAlign(list(feats), 7, 2)
    w = torch.randn_like(fast(feats, boxes, IMAGE_SIZES))
    grads = torch.autograd.grad((fast(feats, boxes, IMAGE_SIZES) * w).sum(), list(feats.values()))
    torch.manual_seed(3)
    v = {k: torch.randn_like(f) for k, f in feats.items()}
    eps = 0.5
    with torch.no_grad():
        plus = (fast({k: f + eps * v[k] for k, f in feats.items()}, boxes, IMAGE_SIZES) * w).sum()
        minus = (fast({k: f - eps * v[k] for k, f in feats.items()}, boxes, IMAGE_SIZES) * w).sum()
    analytic = sum((g * v[k]).sum() for g, k in zip(grads, feats, strict=True))
    torch.testing.assert_close((plus - minus) / (2 * eps), analytic, rtol=1e-3, atol=1e-2)


def test_fused_matcher_equals_torchvision() -> None:
    torch.manual_seed(0)
    xy, wh = torch.rand(30, 2) * 200, torch.rand(30, 2) * 30 + 2
    gt = torch.cat([xy, xy + wh], 1)
    xy, wh = torch.rand(5000, 2) * 220, torch.rand(5000, 2) * 60 + 1
    anchors = torch.cat([xy, xy + wh], 1)
    anchors[:6] = gt[3]  # ties between anchors for one gt
    anchors[6:400] -= 40  # partly or wholly off the image and the gts' extent
    gt[7] = gt[8]  # two identical gts: ties between gts
    for high, low, low_quality in ((0.7, 0.3, True), (0.5, 0.5, False)):
        want = Matcher(high, low, low_quality)(box_ops.box_iou(gt, anchors))
        got = FusedMatcher(high, low, low_quality)(AnchorPair(gt, anchors))
        assert torch.equal(got, want)
    far = torch.cat([gt, torch.tensor([[1000.0, 1000.0, 1010.0, 1010.0]])])  # overlaps no anchor at all
    assert torch.equal(FusedMatcher(0.7, 0.3, True)(AnchorPair(far, anchors)),
                       Matcher(0.7, 0.3, True)(box_ops.box_iou(far, anchors)))


def _batch(n: int = 2, size: int = 64, objects: int = 3) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    torch.manual_seed(5)
    images, targets = [], []
    for _ in range(n):
        masks = torch.zeros(objects, size, size, dtype=torch.uint8)
        boxes = []
        for j, (y, x, s) in enumerate(torch.randint(4, 40, (objects, 3)).tolist()):
            masks[j, y:y + s // 2 + 4, x:x + s // 2 + 4] = 1
            boxes.append([x, y, x + s // 2 + 4, y + s // 2 + 4])
        images.append(torch.rand(3, size, size))
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "labels": torch.ones(objects, dtype=torch.int64), "masks": masks})
    return images, targets


def _tiny(speed: dict[str, Any]) -> TrainConfig:
    return TrainConfig.model_validate(tiny_config(model={"speed": speed}, data={"path": "x"}))


def _losses(cfg: TrainConfig, objects: int = 3) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model(cfg, 1, pretrained=False)
    model.train()
    torch.manual_seed(1)
    return model(*_batch(objects=objects)), model


def test_exact_options_keep_the_losses_and_gradients() -> None:
    exact = {"roi_align": "numba", "anchor_matching": "numba", "mask_targets": "sampled", "channels_last": True}
    # 12 objects per image, 4 positive RoIs sampled: the sampled mask targets keep a few masks, renumbered
    (want, ref), (got, fast) = _losses(_tiny({}), objects=12), _losses(_tiny(exact), objects=12)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    sum(want.values()).backward()
    sum(got.values()).backward()
    for (name, p), q in zip(ref.named_parameters(), fast.parameters(), strict=True):
        if p.grad is not None:  # float summation order differs (channels-last convolutions, RoIAlign backward)
            assert q.grad is not None and (q.grad - p.grad).norm() <= 1e-3 * p.grad.norm() + 1e-6, name


def test_training_step_with_every_fast_option() -> None:
    cfg = _tiny(FAST)
    losses, model = _losses(cfg)
    rh = model.roi_heads
    assert isinstance(rh.box_roi_pool, FastMultiScaleRoIAlign) and isinstance(model.rpn.proposal_matcher, FusedMatcher)
    assert isinstance(rh, SampledMaskRoIHeads)
    assert rh.box_head.fc6.out_features == 64 and len(list(rh.mask_head.children())) == 2
    assert not any(type(m).__name__ == "BatchNorm2d" for m in model.backbone.body.modules())
    for owner in (model.backbone.fpn.layer_blocks, model.rpn.head.conv):  # separable_convs: no dense 3x3 left
        convs = [m for m in owner.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(c.kernel_size == (1, 1) or c.groups == c.in_channels for c in convs)
        assert any(c.kernel_size == (3, 3) for c in convs)
    total = sum(losses.values())
    assert torch.isfinite(total)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = rh.mask_head[0][0].weight.detach().clone()
    total.backward()
    assert model.backbone.fpn.layer_blocks[0][0][0].weight.grad is not None  # the depthwise half
    opt.step()
    assert not torch.equal(before, rh.mask_head[0][0].weight)


def test_speed_config_round_trip_and_checkpoint_rebuild(tmp_path: Path) -> None:
    from maskkit.models.checkpoint import save_checkpoint
    from maskkit.models.factory import model_from_checkpoint

    cfg = _tiny(FAST)
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and again.model.speed.box_head_dim == 64
    assert TrainConfig.model_validate(cfg.model_dump(mode="json")).model.speed == cfg.model.speed
    torch.manual_seed(0)
    model = build_model(cfg, 1, pretrained=False)
    save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "config": cfg.model_dump(mode="json"),
                                        "class_names": ["x"], "category_ids": [1], "epoch": 1, "step": 1})
    loaded = model_from_checkpoint(tmp_path / "m.pt")
    assert loaded.config.model.speed == cfg.model.speed
    assert isinstance(loaded.model.roi_heads.mask_roi_pool, FastMultiScaleRoIAlign)
    assert _tiny({}).model.speed.builder_options() == {}  # the defaults pass nothing to the builder


def test_speed_options_are_refused_outside_mask_rcnn() -> None:
    cfg = TrainConfig.model_validate(tiny_config(model={"name": "bottomup_effl0", "speed": {"roi_align": "numba"},
                                                        "options": {}}, data={"path": "x"}))
    with pytest.raises(ConfigError, match=r"model\.speed\.roi_align"):
        build_model(cfg, 1, pretrained=False)
    with pytest.raises(ConfigError):
        load_config(None, {"model.speed.roi_align": "fast"})
    assert TINY_MASKRCNN["model"]["name"] == "maskrcnn_r18_fpn"


def test_exact_options_keep_the_state_dict_and_the_predictions() -> None:
    """A checkpoint of a default model loads into the exact-lever model, and eval outputs are the same."""
    from maskkit.inference.predictor import is_torchvision_rcnn

    exact = {"roi_align": "numba", "anchor_matching": "numba", "mask_targets": "sampled", "channels_last": True}
    opts = {"box_score_thresh": 0.0, "box_detections_per_img": 10}
    torch.manual_seed(0)
    ref = build_model(TrainConfig.model_validate(tiny_config(model={"options": opts}, data={"path": "x"})), 1)
    fast = build_model(TrainConfig.model_validate(tiny_config(model={"options": opts, "speed": exact},
                                                              data={"path": "x"})), 1)
    fast.load_state_dict(ref.state_dict())
    assert is_torchvision_rcnn(fast)
    ref.eval()
    fast.eval()
    images, _ = _batch()
    with torch.no_grad():
        want, got = ref(images), fast(images)
    assert len(want[0]["boxes"]) > 0
    for a, b in zip(want, got, strict=True):
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4)
