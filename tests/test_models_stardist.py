"""StarDist-style models: ray targets, polygon NMS from perfect maps, training, thresholds, TTA and eval resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskkit.errors import ConfigError
from maskkit.models import create, list_models
from maskkit.models.polygons import polygon_nms, star_distances
from maskkit.models.stardist import StarPolygonInstances, stardist_target_maps
from nuclei_support import (
    assert_learns_touching_objects,
    best_ious,
    one_hot_classes,
    touching_ellipses,
)

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"pretrained_backbone": False, "decoder_channels": (16, 16, 8, 8, 8)}


def _disc_ids(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.int32)


def _perfect_raw(ids: np.ndarray, n_rays: int = 32) -> dict[str, torch.Tensor]:
    maps = torch.from_numpy(stardist_target_maps(ids, n_rays))
    return {"sem_seg": one_hot_classes(ids), "prob": maps[0], "rays": maps[1:]}


def test_registered_in_the_bottomup_family() -> None:
    names = {m.name: m for m in list_models("stardist_*")}
    assert {"stardist_effl0", "stardist_mbv2", "stardist_r18"} <= set(names)
    assert {(m.task, m.family) for m in names.values()} == {("instance", "bottomup")}


def test_rays_of_a_disc_are_its_radius() -> None:
    ids = _disc_ids(64, 30, 32, 12)
    rays = star_distances(ids, 32)
    centre = rays[:, 30, 32]
    assert np.abs(centre - 12.0).max() <= 0.6 and abs(centre.mean() - 12.0) <= 0.2, centre
    # 5 px right of the centre: ~7 px to the right (ray 0), ~17 px to the left (ray 16)
    assert abs(rays[0, 30, 37] - 7.5) <= 0.1 and abs(rays[16, 30, 37] - 17.5) <= 0.1
    assert (rays[:, ids == 0] == 0).all()
    # the image edge ends a ray as another object would
    edge = star_distances(_disc_ids(20, 10, 2, 6), 8)
    assert edge[4, 10, 2] == pytest.approx(2.5, abs=0.05)  # ray 4 points left (angle pi)


def test_nms_keeps_the_most_probable_of_overlapping_polygons() -> None:
    dists = np.full((3, 16), 6.0)
    centres = np.array([[20, 20], [21, 20], [20, 40]])
    labels, kept = polygon_nms(centres, dists, np.array([0.6, 0.9, 0.5]), (48, 64), 0.4)
    assert kept.tolist() == [1, 2] and labels.max() == 2
    assert 100 <= (labels == 1).sum() <= 130  # ~ pi 6.5^2 pixels
    labels, kept = polygon_nms(np.zeros((0, 2)), np.zeros((0, 16)), np.zeros(0), (48, 64), 0.4)
    assert kept.shape == (0,) and not labels.any()
    empty = StarPolygonInstances(1)(_perfect_raw(np.zeros((40, 30), np.int32)), prob_threshold=0.5,
                                    nms_threshold=0.4, min_area=8)
    assert len(empty["scores"]) == 0 and empty["instance_map"].shape == (40, 30)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perfect_maps_recover_touching_objects(seed: int) -> None:
    ids = touching_ellipses(seed=seed)
    out = StarPolygonInstances(1)(_perfect_raw(ids), prob_threshold=0.5, nms_threshold=0.4, min_area=8)
    imap = out["instance_map"].numpy()
    assert int(imap.max()) == int(ids.max()) == 16
    ious = best_ious(ids, imap)
    assert ious.mean() >= 0.95 and ious.min() >= 0.9, ious
    assert (out["scores"][:-1] >= out["scores"][1:]).all() and set(out["instance_ids"].tolist()) == set(range(1, 17))


def test_flip_tta_permutes_the_rays() -> None:
    model = create("stardist_mbv2", 1, **TINY)
    ids = touching_ellipses(seed=3)
    raw = _perfect_raw(ids)
    for flip, axes in (("h", [1]), ("v", [0]), ("hv", [0, 1])):
        view = _perfect_raw(np.flip(ids, axes).copy())
        back = model.deaugment_raw(view, flip, raw)
        fg = ids > 0
        assert (back["rays"] - raw["rays"]).abs()[:, fg].mean() <= 0.3
        assert torch.allclose(back["prob"], raw["prob"])
        unpermuted = torch.flip(view["rays"], [-1 - a for a in axes])  # spatially flipped back only
        assert (unpermuted - raw["rays"]).abs()[:, fg].mean() > 1.0


def test_rays_are_rescaled_to_the_input_size() -> None:
    model = create("stardist_mbv2", 1, min_size=128, max_size=256, **TINY).eval()
    dec = model.decoder
    maps = dec.activate_maps(torch.randn(1 + 2 + 32, 8, 8))
    scaled = dec.rescale_maps(maps, torch.tensor(0.5))
    assert torch.equal(scaled[:3], maps[:3]) and torch.allclose(scaled[3:], maps[3:] * 0.5)
    seen = []
    dec.rescale_maps = lambda m, f: seen.append(float(f)) or m  # type: ignore[method-assign]
    with torch.no_grad():
        raw = model.predict_raw([torch.rand(3, 64, 48)])
    assert raw[0]["rays"].shape == (32, 64, 48) and seen == [pytest.approx(0.375, rel=0.01)]  # 48 px -> 128 px


def test_thresholds_are_tunable_buffers() -> None:
    model = create("stardist_mbv2", 1, nms_threshold=0.3, **TINY)
    assert model.thresholds == pytest.approx({"prob_threshold": 0.5, "nms_threshold": 0.3, "min_area": 8.0})
    model.set_thresholds(prob_threshold=0.6)
    other = create("stardist_mbv2", 1, **TINY)
    other.load_state_dict(model.state_dict())
    assert other.thresholds["prob_threshold"] == pytest.approx(0.6)
    assert set(model.threshold_grid()) <= set(model.thresholds)
    with pytest.raises(ConfigError):
        model.set_thresholds(seed_threshold=0.2)
    with pytest.raises(ConfigError):
        create("stardist_mbv2", 1, n_rays=7, **TINY)


def test_tiny_model_learns_touching_objects() -> None:
    """100 steps from scratch on two synthetic images: the loss falls and every object is found."""
    assert_learns_touching_objects("stardist_mbv2", TINY, 100, {"loss_semantic", "loss_probability", "loss_rays"},
                                   min_mean_iou=0.8)
