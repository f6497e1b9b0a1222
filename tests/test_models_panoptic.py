"""Panoptic FPN: Mask R-CNN + semantic FPN head, one joint loss (maskkit.models.panoptic)."""

from __future__ import annotations

import pytest
import torch

from maskkit.errors import ConfigError, DataError
from maskkit.models import create, list_models
from maskkit.models.maskrcnn import set_train_resize
from maskkit.models.panoptic import PanopticFPN, SemanticFPNHead, batch_semantic_targets

DETECTION_LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
SIZES = [(96, 80), (64, 112)]
# Fewer proposals and sampled RoIs than the COCO defaults: RoIAlign dominates CPU time on tiny images.
FAST = dict(
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=200,
    rpn_post_nms_top_n_test=100,
    box_batch_size_per_image=64,
    box_detections_per_img=20,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(semantic: bool = True) -> tuple[list[torch.Tensor], list[dict]]:
    """Two tiny images with two objects each (class 1 bright, class 2 dark) and their class maps."""
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for h, w in SIZES:
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        masks[0, 8:40, 10:42] = 1
        masks[1, 30:60, 46:76] = 1
        image = 0.4 + 0.1 * torch.rand(3, h, w, generator=g)
        image[:, masks[0].bool()] += 0.4
        image[:, masks[1].bool()] -= 0.3
        target = {
            "boxes": torch.tensor([[10.0, 8, 42, 40], [46, 30, 76, 60]]),
            "labels": torch.tensor([1, 2]),
            "masks": masks,
            "image_id": len(images),
        }
        if semantic:
            sem = torch.zeros(h, w, dtype=torch.int64)
            sem[masks[0].bool()] = 1
            sem[masks[1].bool()] = 2
            sem[:2] = 255  # an ignored strip
            target["semantic"] = sem
        images.append(image.clamp(0, 1))
        targets.append(target)
    return images, targets


def _model(name: str = "panoptic_fpn_effl0", **kwargs) -> PanopticFPN:
    torch.manual_seed(0)
    kwargs.setdefault("pretrained_backbone", False)
    kwargs.update(FAST)
    if name == "panoptic_fpn_effl0":
        kwargs.setdefault("fpn_channels", 64)  # a quarter of the mask-head FLOPs of the default 128
    # train_resize=False: as the engine builds it when the data pipeline resizes
    return create(name, num_classes=2, min_size=96, max_size=128, train_resize=False, **kwargs)


def test_registered_as_instance_models_of_the_panoptic_family() -> None:
    infos = {i.name: i for i in list_models("panoptic_fpn_*")}
    assert {"panoptic_fpn_effl0", "panoptic_fpn_r18", "panoptic_fpn_r50"} <= set(infos)
    assert {(i.task, i.family) for i in infos.values()} == {("instance", "panoptic")}
    with pytest.raises(ConfigError, match="unknown loss term"):
        create("panoptic_fpn_r18", num_classes=2, semantic_loss="ce+nope")
    with pytest.raises(ConfigError, match="semantic_class_weights"):
        create("panoptic_fpn_r18", num_classes=2, semantic_class_weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="semantic_weight"):
        create("panoptic_fpn_r18", num_classes=2, semantic_weight=-1)


@pytest.mark.parametrize("name", ["panoptic_fpn_effl0", "panoptic_fpn_r18"])
def test_forward_backward_all_losses_finite(name: str) -> None:
    model = _model(name).train()
    images, targets = _batch()
    losses = model(images, targets)
    assert set(losses) == DETECTION_LOSSES | {"loss_semantic"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    for part in (model.semantic_head, model.backbone.body, model.roi_heads.mask_predictor):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_eval_contract_at_input_size() -> None:
    model = _model().eval()
    images, _ = _batch()
    with torch.inference_mode():
        outputs = model(images)  # min_size 96 / max_size 128: resized inside, mapped back
    assert len(outputs) == 2
    for out, (h, w) in zip(outputs, SIZES, strict=True):
        assert {"boxes", "labels", "scores", "masks", "sem_seg"} <= set(out)
        assert out["sem_seg"].shape == (3, h, w)
        assert out["sem_seg"].min() >= 0
        torch.testing.assert_close(out["sem_seg"].sum(0), torch.ones(h, w))
        assert out["masks"].shape[1:] == (1, h, w)


def test_semantic_targets_follow_resize_and_padding() -> None:
    sem = torch.tensor([[1, 2], [0, 255]])
    out = batch_semantic_targets([sem, torch.ones(3, 1, dtype=torch.int64)], [(4, 4), (3, 1)], (8, 8))
    assert out.dtype == torch.int64 and out.shape == (2, 8, 8)
    torch.testing.assert_close(out[0, :4, :4], sem.repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert (out[0, 4:] == 255).all() and (out[0, :, 4:] == 255).all()
    assert (out[1, :3, :1] == 1).all() and (out[1, 3:] == 255).all() and (out[1, :, 1:] == 255).all()
    # With the model's own train-mode resize (not skipped) the loss still runs, on the resized map.
    model = _model()
    set_train_resize(model, True)  # the model resizes in train mode too
    model.transform.min_size = (128,)
    losses = model.train()(*_batch())
    assert torch.isfinite(losses["loss_semantic"])


def test_bad_semantic_targets_are_data_errors() -> None:
    model = _model().train()
    images, targets = _batch()
    targets[0]["semantic"] = targets[0]["semantic"][:-1]
    with pytest.raises(DataError, match="semantic target has shape"):
        model(images, targets)
    images, targets = _batch()
    targets[1]["semantic"][5, 5] = 3  # 2 foreground classes
    with pytest.raises(DataError, match="holds class 3"):
        model(images, targets)


def test_semantic_weight_scales_loss_semantic() -> None:
    images, targets = _batch()
    values = {}
    for weight in (0.5, 1.0, 0.0):
        values[weight] = _model(semantic_weight=weight).train()(images, targets)["loss_semantic"].item()
    assert values[0.5] > 0
    assert values[1.0] == pytest.approx(2 * values[0.5], rel=1e-5)
    assert values[0.0] == 0.0


def test_semantic_loss_terms_add_up() -> None:
    images, targets = _batch()
    values = {}
    for spec in ("ce", "dice", "ce+dice", "focal"):
        values[spec] = _model(semantic_loss=spec).train()(images, targets)["loss_semantic"].item()
    assert values["ce+dice"] == pytest.approx(values["ce"] + values["dice"], rel=1e-5)
    assert 0 < values["focal"] < values["ce"]
    mapping = _model(semantic_loss={"ce": 2.0}).train()(images, targets)["loss_semantic"].item()
    assert mapping == pytest.approx(2 * values["ce"], rel=1e-5)


def test_missing_semantic_is_painted_from_instances() -> None:
    images, targets = _batch(semantic=False)
    losses = _model().train()(images, targets)
    assert torch.isfinite(losses["loss_semantic"]) and losses["loss_semantic"] > 0


def test_joint_loss_falls_when_overfitting_two_images() -> None:
    """30 AdamW steps on the two images cut the joint and the semantic loss by > 3x (measured: ~6x and ~11x).

    The (offline ImageNet) backbone body is frozen to halve the CPU time; FPN and all heads train.
    """
    model = _model(pretrained_backbone=True, trainable_backbone_layers=0).train()
    images, targets = _batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(30):
        losses = model(images, targets)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append((total.item(), losses["loss_semantic"].item()))
    first, last = history[0], history[-1]
    assert all(torch.isfinite(torch.tensor(h)).all() for h in history)
    assert last[0] < first[0] / 3
    assert last[1] < first[1] / 3


def test_backbone_freezing_and_maskrcnn_weights_load() -> None:
    from maskkit.models.factory import freeze_backbone

    model = _model(trainable_backbone_layers=0)
    assert model.backbone.body.conv_stem.weight.requires_grad is False
    assert freeze_backbone(model) > 0
    assert not any(p.requires_grad for p in model.backbone.body.parameters())
    assert all(p.requires_grad for p in model.semantic_head.parameters())
    torch.manual_seed(1)
    detector = create("maskrcnn_effl0_fpn", num_classes=2, pretrained_backbone=False, fpn_channels=64)
    result = model.load_state_dict(detector.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith("semantic_head.") for k in result.missing_keys)


def test_semantic_head_levels() -> None:
    head = SemanticFPNHead(16, 3, channels=32)
    assert [sum(isinstance(m, torch.nn.Conv2d) for m in level) for level in head.levels] == [1, 1, 2, 3]
    feats = [torch.rand(1, 16, 24 // s, 20 // s) for s in (1, 2, 4, 8)]
    feats[-1] = torch.rand(1, 16, 3, 3)  # odd sizes are aligned on the finest level
    assert head(feats).shape == (1, 3, 24, 20)
