"""Bottom-up models: build/train/predict per encoder, the output contract, thresholds, and an overfit check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskkit.errors import ConfigError, DataError
from maskkit.evaluation.matching import MatchingAccumulator
from maskkit.models import create, list_models

LOSSES = {"loss_semantic", "loss_boundary", "loss_distance"}


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _tiny_batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images with sides not divisible by 32 (one with a class map, one painted from masks)."""
    images = [torch.rand(3, 50, 70), torch.rand(3, 45, 66)]
    m0 = torch.stack([_disc(50, 70, 20, 20, 10), _disc(50, 70, 25, 45, 12)]).to(torch.uint8)
    m0[0] &= ~m0[1]
    m1 = _disc(45, 66, 20, 30, 8)[None].to(torch.uint8)
    t0 = {"masks": m0, "labels": torch.tensor([1, 2]), "semantic": (m0[0] * 1 + m0[1] * 2).long()}
    t1 = {"masks": m1, "labels": torch.tensor([2])}
    return images, [t0, t1]


def test_registered_as_instance_models() -> None:
    names = {m.name: m for m in list_models("bottomup_*")}
    assert set(names) == {f"bottomup_{e}" for e in ("effl0", "r18", "r34", "r50", "mbv2")}
    assert {(m.task, m.family) for m in names.values()} == {("instance", "bottomup")}


@pytest.mark.parametrize("encoder", ["effl0", "r18", "r34", "r50", "mbv2"])
def test_trains_and_predicts_at_odd_sizes(encoder: str) -> None:
    torch.manual_seed(0)
    model = create(f"bottomup_{encoder}", 2, pretrained_backbone=encoder == "effl0", decoder_channels=(16, 16, 8, 8, 8))
    images, targets = _tiny_batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == LOSSES and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.net.decoder.parameters())
    model.eval()
    with torch.inference_mode():
        outputs = model(images)
    for out, im in zip(outputs, images, strict=True):
        h, w = im.shape[-2:]
        assert out["instance_map"].shape == (h, w) and out["instance_map"].dtype == torch.int32
        assert out["sem_seg"].shape == (3, h, w)
        n = len(out["scores"])
        assert out["boxes"].shape == (n, 4) and out["labels"].shape == (n,)
        ids = out["instance_ids"]
        assert ids.shape == (n,) and set(ids.tolist()) == set(range(1, int(out["instance_map"].max()) + 1))
        for j in set(ids.tolist()):  # each region: its primary class first, the best-scored row
            rows = (ids == j).nonzero()[:, 0]
            assert len(set(out["labels"][rows].tolist())) == len(rows)  # one row per class
            assert (out["boxes"][rows] == out["boxes"][rows[0]]).all()
        assert ((out["labels"] >= 1) & (out["labels"] <= 2)).all()
        assert (out["scores"][:-1] >= out["scores"][1:]).all()  # sorted by decreasing score


def test_eval_resize_maps_back_to_the_input_size() -> None:
    model = create("bottomup_mbv2", 2, pretrained_backbone=False, min_size=64, max_size=100,
                   decoder_channels=(16, 16, 8, 8, 8)).eval()
    images, _ = _tiny_batch()
    with torch.inference_mode():
        out = model(images)
        raw = model.predict_raw(images)
    assert out[1]["instance_map"].shape == (45, 66) and raw[1]["distance"].shape == (45, 66)
    assert torch.equal(model.postprocess(raw[0])["instance_map"], out[0]["instance_map"])


def test_semantic_target_is_painted_when_absent() -> None:
    model = create("bottomup_mbv2", 2, pretrained_backbone=False, decoder_channels=(16, 16, 8, 8, 8)).eval()
    images, targets = _tiny_batch()
    painted = {k: v for k, v in targets[0].items() if k != "semantic"}
    with torch.no_grad():
        batch = model.input(images[:1])
        logits = model.net(batch.tensor)
        given = model.losses(logits, targets[:1], batch.sizes)
        fallback = model.losses(logits, [painted], batch.sizes)
    assert set(given) == LOSSES
    assert all(torch.allclose(given[k], fallback[k]) for k in LOSSES)


def test_thresholds_are_buffers_that_survive_a_state_dict_round_trip() -> None:
    kw = dict(pretrained_backbone=False, decoder_channels=(8, 8, 8, 8, 8))
    model = create("bottomup_mbv2", 3, **kw)
    model.set_thresholds(fg_threshold=0.35, seed_threshold=0.6, boundary_threshold=0.45, min_area=3)
    state = model.state_dict()
    assert {"fg_threshold", "seed_threshold", "boundary_threshold", "min_area"} <= set(state)
    other = create("bottomup_mbv2", 3, **kw)
    other.load_state_dict(state)
    assert other.thresholds == pytest.approx({"fg_threshold": 0.35, "seed_threshold": 0.6,
                                              "boundary_threshold": 0.45, "min_area": 3.0})
    grid = model.threshold_grid()
    assert set(grid) <= set(model.thresholds) and np.prod([len(v) for v in grid.values()]) <= 30
    with pytest.raises(ConfigError):
        model.set_thresholds(nope=1.0)
    built = create("bottomup_mbv2", 3, fg_threshold=0.7, **kw)
    assert built.thresholds["fg_threshold"] == pytest.approx(0.7)
    with pytest.raises(ConfigError):
        create("bottomup_mbv2", 3, decoder_channels=(), pretrained_backbone=False)


def _overfit_data(n: int = 4, size: int = 64) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Touching discs of two classes (red, green) on a grey background."""
    rng = np.random.default_rng(0)
    colours = {1: (0.9, 0.2, 0.2), 2: (0.2, 0.8, 0.3)}
    images, targets = [], []
    for _ in range(n):
        image = torch.full((3, size, size), 0.5)
        masks, labels = [], []
        cy, cx = rng.uniform(18, 22), rng.uniform(16, 20)
        for k in range(3):
            r = rng.uniform(8, 11)
            m = _disc(size, size, cy + (24 if k == 2 else 0), cx + (k == 1) * 19, r)
            for prev in masks:
                m &= ~prev
            label = int(rng.integers(1, 3))
            masks.append(m)
            labels.append(label)
            image[:, m] = torch.tensor(colours[label])[:, None]
        images.append((image + 0.03 * torch.randn_like(image)).clamp(0, 1))
        targets.append({"masks": torch.stack(masks).to(torch.uint8), "labels": torch.tensor(labels)})
    return images, targets


@pytest.mark.parametrize("output_stride", [1, 2])
def test_overfits_touching_discs(output_stride: int) -> None:
    """70 steps on 3 images: the loss falls 10x (8x at stride 2) and the instances match the ground truth
    (class-aware F1@0.5), also with the maps at stride 2 (flooded there, upsampled to the image)."""
    torch.manual_seed(0)
    model = create("bottomup_mbv2", 2, pretrained_backbone=False, decoder_channels=(32, 16, 16, 16, 16),
                   output_stride=output_stride)
    images, targets = _overfit_data(3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(70):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # the upsampled stride-2 logits cannot draw the 1-pixel borders as sharply: 8x there (8.9x observed)
    assert losses[-1] < losses[0] / (10 if output_stride == 1 else 8), losses
    model.eval()
    acc = MatchingAccumulator(thresholds=[0.5], class_aware=True)
    with torch.inference_mode():
        for out, t in zip(model(images), targets, strict=True):
            keep = out["scores"] >= 0.5  # as the evaluator's P/R/F1 (secondary-class rows score low)
            imap, ids = out["instance_map"].numpy(), out["instance_ids"][keep].numpy()
            pred = (imap[None] == ids[:, None, None]).astype(np.uint8)
            acc.add(t["masks"].numpy(), pred, t["labels"].numpy(), out["labels"][keep].numpy())
    assert acc.result()["f1"] >= 0.8


def test_images_without_objects_and_box_only_targets() -> None:
    model = create("bottomup_mbv2", 2, pretrained_backbone=False, decoder_channels=(8, 8, 8, 8, 8))
    empty = {"masks": torch.zeros(0, 40, 40, dtype=torch.uint8), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([torch.rand(3, 40, 40)], [empty])
    assert set(losses) == LOSSES and all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(DataError):
        model([torch.rand(3, 40, 40)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])


def test_rows_sharing_a_region_get_its_mask() -> None:
    from maskkit.inference.paste import Detections
    from maskkit.models.outputs import to_instances

    imap = torch.zeros(6, 8, dtype=torch.int32)
    imap[1:3, 1:4] = 1
    imap[4:6, 5:8] = 2
    out = {"boxes": torch.tensor([[1, 1, 4, 3], [5, 4, 8, 6], [1, 1, 4, 3]], dtype=torch.float32),
           "labels": torch.tensor([1, 2, 2]), "scores": torch.tensor([0.9, 0.8, 0.1]),
           "instance_ids": torch.tensor([1, 2, 1]), "instance_map": imap}
    inst = to_instances(out, (6, 8), [10, 20])
    bits = inst.masks.to_bitmaps().astype(bool)
    assert list(inst.labels) == [10, 20, 20] and len(inst) == 3
    assert (bits[0] == (imap.numpy() == 1)).all() and (bits[2] == bits[0]).all()
    assert (bits[1] == (imap.numpy() == 2)).all()
    det = Detections.from_output(out, (6, 8))
    assert np.array_equal(det.masks.to_dense(0.5), bits)
    del out["instance_ids"]  # without ids, row i is region i + 1
    assert len(to_instances({**out, "labels": out["labels"][:2], "scores": out["scores"][:2],
                             "boxes": out["boxes"][:2]}, (6, 8), [10, 20])) == 2


def test_strided_maps_flood_at_their_resolution_and_follow_the_image_outline() -> None:
    """Perfect maps of touching discs averaged down to stride 2: the decoder recovers every disc at the image's
    size (IoU >= 0.9 each), its outline cut by the upsampled foreground rather than 2-pixel steps."""
    from maskkit.models.bottomup import WatershedInstances
    from maskkit.models.targets import bottomup_targets

    h, w = 67, 90  # an odd side: the maps cover ceil(size / 2)
    masks = torch.stack([_disc(h, w, 30, 22, 14), _disc(h, w, 30, 49, 14), _disc(h, w, 33, 75, 9)]).numpy()
    masks[1] &= ~masks[0]
    masks[2] &= ~masks[1]
    border, distance = bottomup_targets(torch.from_numpy(masks.astype(np.uint8)))
    fg = masks.any(0).astype(np.float32)
    full = torch.from_numpy(np.stack([1 - fg, fg, border.astype(np.float32), distance.astype(np.float32)]))
    maps = torch.nn.functional.avg_pool2d(full[None], 2, ceil_mode=True)[0]  # 67 x 90 -> 34 x 45
    decoder = WatershedInstances(1)
    raw = decoder.from_maps(maps, (h, w))
    assert raw["distance"].shape == (34, 45) and raw["size"].tolist() == [h, w]
    out = decoder(raw, fg_threshold=0.5, seed_threshold=0.5, boundary_threshold=0.5, min_area=8)
    imap = out["instance_map"].numpy()
    assert imap.shape == (h, w) and out["sem_seg"].shape == (2, h, w)
    found = [imap == i for i in out["instance_ids"].tolist()]
    assert len(found) == 3
    for gt in masks:
        assert max(float((gt & f).sum() / (gt | f).sum()) for f in found) >= 0.9
    with pytest.raises(ConfigError):
        create("bottomup_mbv2", 1, pretrained_backbone=False, decoder_channels=(8,), output_stride=2)
    with pytest.raises(ConfigError):
        create("bottomup_mbv2", 1, pretrained_backbone=False, output_stride=3)
