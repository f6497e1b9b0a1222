"""Synthetic touching nuclei for the StarDist and Cellpose model tests: label maps, perfect maps, matching."""

from __future__ import annotations

import numpy as np
import torch


def touching_ellipses(size: int = 96, seed: int = 0, grid: int = 4) -> np.ndarray:
    """An ``size x size`` int32 label map of ``grid x grid`` ellipses (radii 6-11 px, random orientation) on a
    jittered grid, so that neighbours touch; earlier objects keep overlapping pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    ids = np.zeros((size, size), np.int32)
    step = size / grid
    k = 0
    for gy in range(grid):
        for gx in range(grid):
            cy, cx = (gy + 0.5) * step + rng.uniform(-2, 2), (gx + 0.5) * step + rng.uniform(-2, 2)
            a, b, t = rng.uniform(8, 12), rng.uniform(6, 10), rng.uniform(0, np.pi)
            u = (yy - cy) * np.cos(t) + (xx - cx) * np.sin(t)
            v = -(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)
            inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
            k += 1
            ids[inside & (ids == 0)] = k
    return ids


def one_hot_classes(ids: np.ndarray) -> torch.Tensor:
    """``2 x H x W`` class probabilities (background, nucleus) of a label map."""
    fg = torch.from_numpy(ids > 0).float()
    return torch.stack([1.0 - fg, fg])


def best_ious(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """For every ground-truth instance of ``gt``, its best IoU with an instance of ``pred`` (both label maps)."""
    n, m = int(gt.max()), int(pred.max())
    inter = np.zeros((n + 1, m + 1))
    np.add.at(inter, (gt.ravel(), pred.ravel()), 1)
    area_g, area_p = inter.sum(1), inter.sum(0)
    iou = inter / (area_g[:, None] + area_p[None, :] - inter)
    return iou[1:, 1:].max(1) if m else np.zeros(n)


def image_of(ids: np.ndarray, seed: int = 0) -> torch.Tensor:
    """A noisy ``3 x H x W`` image of bright nuclei (edges darker) on a dark background."""
    rng = np.random.default_rng(seed)
    fg = (ids > 0).astype(np.float32)
    edge = np.zeros_like(fg)
    edge[:-1] += ids[:-1] != ids[1:]
    edge[:, :-1] += ids[:, :-1] != ids[:, 1:]
    img = 0.15 + 0.7 * fg - 0.4 * np.minimum(edge, 1) * fg + 0.03 * rng.standard_normal(fg.shape)
    return torch.from_numpy(np.clip(img, 0, 1).astype(np.float32))[None].repeat(3, 1, 1)


def masks_of(ids: np.ndarray) -> torch.Tensor:
    """``N x H x W`` uint8 masks of a label map's instances ``1..N``."""
    n = int(ids.max())
    return torch.from_numpy(ids[None] == np.arange(1, n + 1)[:, None, None]).to(torch.uint8)


def assert_learns_touching_objects(name: str, options: dict, steps: int, losses_named: set[str],
                                   min_mean_iou: float) -> None:
    """``steps`` of AdamW from scratch on two synthetic images of touching ellipses: the model returns exactly
    ``losses_named``, the loss falls to under 0.6x, and every object is found (IoU >= 0.5, mean >= ``min_mean_iou``)
    with well-formed eval outputs."""
    from maskkit.models import create

    torch.manual_seed(0)
    model = create(name, 1, **{**options, "decoder_channels": (32, 16, 16, 16, 16)})
    ids = [touching_ellipses(64, seed=s, grid=3) for s in range(2)]
    images = [image_of(i, s) for s, i in enumerate(ids)]
    targets = [{"masks": masks_of(i), "labels": torch.ones(int(i.max()), dtype=torch.int64)} for i in ids]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(steps):
        terms = model(images, targets)
        assert set(terms) == losses_named
        loss = sum(terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for out, gt in zip(outputs, ids, strict=True):
        assert out["instance_map"].shape == (64, 64) and out["sem_seg"].shape == (2, 64, 64)
        assert len(out["boxes"]) == len(out["scores"]) == len(out["labels"]) == len(out["instance_ids"])
        ious = best_ious(gt, out["instance_map"].numpy())
        assert (ious >= 0.5).all() and ious.mean() >= min_mean_iou, ious
