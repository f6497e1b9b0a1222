"""Bottom-up targets (instance ids, borders, normalised distance) and the seeded watershed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskkit.errors import DataError
from maskkit.models.targets import bottomup_targets, boundary_from_ids, instance_id_map, normalised_distance
from maskkit.models.watershed import instance_boxes, instance_max, instance_stats, relabel, seeded_watershed


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _touching_discs(h: int = 64, w: int = 96) -> np.ndarray:
    """Two discs overlapping by a few pixels; the second is painted over the first (visible parts only)."""
    a = _disc(h, w, 32, 30, 18)
    b = _disc(h, w, 32, 63, 18)
    return np.stack([a & ~b, b]).astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_instance_id_map_smaller_masks_win_and_empty_input() -> None:
    m = np.zeros((3, 6, 6), np.uint8)
    m[0, :4, :4] = 1
    m[1, 1:3, 1:3] = 1  # inside mask 0: smaller, painted last
    m[2, 4:, 4:] = 1
    ids = instance_id_map(torch.from_numpy(m))
    assert ids.dtype == np.int32
    assert ids[1, 1] == 2 and ids[0, 0] == 1 and ids[5, 5] == 3 and ids[5, 0] == 0
    assert not instance_id_map(np.zeros((0, 5, 7), np.uint8)).any()
    with pytest.raises(DataError):
        instance_id_map(np.zeros((5, 7), np.uint8))


def test_boundary_marks_both_sides_of_borders_but_not_the_image_edge() -> None:
    ids = np.zeros((8, 8), np.int32)
    ids[:, :4] = 1
    ids[:, 4:] = 2  # two instances filling the image, touching at column 3|4
    b = boundary_from_ids(ids)
    assert b[:, 3].all() and b[:, 4].all()
    assert b.sum() == 16  # 2 px thick border, nothing on the image edge


def test_normalised_distance_peaks_at_one_per_piece() -> None:
    masks = _touching_discs()
    boundary, dist = bottomup_targets(masks)
    ids = instance_id_map(masks)
    assert dist.dtype == np.float32 and boundary.dtype == bool
    assert (dist[ids == 0] == 0).all() and (dist[ids > 0] > 0).all()
    for i in (1, 2):
        assert dist[ids == i].max() == pytest.approx(1.0)
    # the border between the two discs has low distance on both sides
    assert dist[boundary & (ids > 0)].max() < 0.2
    # an instance cut in two pieces: each piece normalised on its own
    cut = np.zeros((1, 20, 40), np.uint8)
    cut[0, 5:15, 2:12] = 1
    cut[0, 8:11, 30:33] = 1
    d = normalised_distance(instance_id_map(cut))
    assert d[5:15, 2:12].max() == pytest.approx(1.0) and d[8:11, 30:33].max() == pytest.approx(1.0)


def test_watershed_splits_touching_discs_from_ideal_maps() -> None:
    masks = _touching_discs()
    boundary, dist = bottomup_targets(masks)
    fg = masks.any(0).astype(np.float32)
    for bnd in (boundary.astype(np.float32), None):  # with and without the border map
        labels = seeded_watershed(fg, dist, bnd, seed_threshold=0.3)
        assert labels.dtype == np.int32 and labels.max() == 2
        for m in masks.astype(bool):
            best = max(_iou(m, labels == k) for k in (1, 2))
            assert best >= 0.9


def test_class_map_splits_seeds_of_different_classes() -> None:
    masks = _touching_discs()
    fg = masks.any(0).astype(np.float32)
    flat = np.where(fg > 0, 1.0, 0.0).astype(np.float32)  # no distance structure at all: one blob
    assert seeded_watershed(fg, flat, seed_threshold=0.5).max() == 1
    classes = masks[1].astype(np.int64) + 1
    labels = seeded_watershed(fg, flat, seed_threshold=0.5, class_map=classes)
    assert labels.max() == 2
    assert _iou(labels == labels[32, 63], masks[1].astype(bool)) == 1.0


def test_unseeded_blobs_become_instances_and_small_ones_are_dropped() -> None:
    fg = np.zeros((30, 30), np.float32)
    fg[2:12, 2:12] = 1  # seeded
    fg[20:23, 20:23] = 1  # 9 px, distance never above the seed threshold
    fg[27, 27] = 1  # 1 px
    dist = np.zeros_like(fg)
    dist[5:9, 5:9] = 1
    labels = seeded_watershed(fg, dist, seed_threshold=0.5)
    assert labels.max() == 3
    labels = seeded_watershed(fg, dist, seed_threshold=0.5, min_area=5)
    assert labels.max() == 2 and labels[27, 27] == 0 and labels[21, 21] == 2
    assert seeded_watershed(np.zeros((4, 4)), np.zeros((4, 4))).max() == 0


def test_relabel_and_instance_statistics() -> None:
    lab = np.array([[0, 5, 5], [2, 2, 0], [7, 0, 0]], np.int32)
    out = relabel(lab, min_area=2)
    assert out.tolist() == [[0, 2, 2], [1, 1, 0], [0, 0, 0]]
    weights = np.stack([np.arange(9, dtype=np.float64).reshape(3, 3)])
    counts, means = instance_stats(out, 2, weights)
    assert counts.tolist() == [2, 2] and means[0].tolist() == [3.5, 1.5]
    assert instance_max(weights[0], out, 2).tolist() == [4, 2]
    assert instance_boxes(out, 2).tolist() == [[0, 1, 2, 2], [1, 0, 3, 1]]


def test_many_objects_on_a_large_map() -> None:
    rng = np.random.default_rng(0)
    h = w = 512
    masks = []
    for cy in range(16, h, 32):
        for cx in range(16, w, 32):
            masks.append(_disc(h, w, cy + rng.uniform(-2, 2), cx + rng.uniform(-2, 2), 15.5))
    masks = np.stack(masks).astype(np.uint8)  # 256 discs, neighbours touching
    boundary, dist = bottomup_targets(masks)
    labels = seeded_watershed(masks.any(0).astype(np.float32), dist, boundary.astype(np.float32), min_area=10)
    assert labels.max() == len(masks)
