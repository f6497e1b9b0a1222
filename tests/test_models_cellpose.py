"""Cellpose-style models: diffusion-flow targets, flow following from perfect maps, training, thresholds, TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskkit.errors import ConfigError
from maskkit.models import create, list_models
from maskkit.models.cellpose import FlowInstances
from maskkit.models.flows import diffusion_flows, flow_errors
from nuclei_support import (
    assert_learns_touching_objects,
    best_ious,
    one_hot_classes,
    touching_ellipses,
)

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"pretrained_backbone": False, "decoder_channels": (16, 16, 8, 8, 8)}
THRESHOLDS = {"fg_threshold": 0.5, "flow_threshold": 0.4, "min_area": 8}


def _perfect_raw(ids: np.ndarray) -> dict[str, torch.Tensor]:
    return {"sem_seg": one_hot_classes(ids), "flows": torch.from_numpy(diffusion_flows(ids))}


def test_registered_in_the_bottomup_family() -> None:
    names = {m.name: m for m in list_models("cellpose_*")}
    assert {"cellpose_effl0", "cellpose_mbv2", "cellpose_r18"} <= set(names)
    assert {(m.task, m.family) for m in names.values()} == {("instance", "bottomup")}


def test_flows_of_a_disc_point_to_its_centre() -> None:
    yy, xx = np.mgrid[:64, :64]
    ids = ((yy - 30) ** 2 + (xx - 33) ** 2 <= 14**2).astype(np.int32)
    flows = diffusion_flows(ids)
    inside = (ids > 0) & ((yy - 30) ** 2 + (xx - 33) ** 2 >= 2**2)
    to_centre = np.stack([30 - yy, 33 - xx]).astype(np.float64)
    to_centre /= np.maximum(np.linalg.norm(to_centre, axis=0), 1e-9)
    cosine = (flows * to_centre).sum(0)[inside]
    assert cosine.mean() >= 0.98 and (cosine >= 0.9).mean() >= 0.97, (cosine.mean(), cosine.min())
    assert np.allclose(np.linalg.norm(flows[:, inside], axis=0), 1.0, atol=1e-5)
    assert (flows[:, ids == 0] == 0).all()


def test_flows_follow_a_bent_object_around_its_bend() -> None:
    """An L-shaped object: the flows of its arm's tip point along the arm, not straight at the centroid."""
    ids = np.zeros((48, 48), np.int32)
    ids[5:40, 5:13] = 1  # vertical arm
    ids[32:40, 5:42] = 1  # horizontal arm
    flows = diffusion_flows(ids)
    assert flows[0, 8, 9] > 0.9  # top of the vertical arm: flows down the arm
    assert flows[1, 36, 38] < -0.9  # end of the horizontal arm: flows left along it
    out = FlowInstances(1)(_perfect_raw(ids), **THRESHOLDS)
    assert int(out["instance_map"].max()) == 1 and best_ious(ids, out["instance_map"].numpy())[0] >= 0.98


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perfect_maps_recover_touching_objects(seed: int) -> None:
    ids = touching_ellipses(seed=seed)
    out = FlowInstances(1)(_perfect_raw(ids), **THRESHOLDS)
    imap = out["instance_map"].numpy()
    assert int(imap.max()) == int(ids.max()) == 16
    ious = best_ious(ids, imap)
    assert ious.mean() >= 0.95 and ious.min() >= 0.9, ious
    assert (out["scores"][:-1] >= out["scores"][1:]).all()


def test_implausible_flows_are_rejected_by_the_flow_error() -> None:
    ids = touching_ellipses(seed=4)
    raw = _perfect_raw(ids)
    assert flow_errors(ids, raw["flows"].numpy(), int(ids.max())).max() <= 1e-6
    raw["flows"][:, ids == 1] *= -1.0  # object 1's flows point outwards
    kept = FlowInstances(1)(raw, **THRESHOLDS)["instance_map"].numpy()
    loose = FlowInstances(1)(raw, **{**THRESHOLDS, "flow_threshold": 1e9})["instance_map"].numpy()
    assert best_ious(ids, kept)[0] < 0.5 and int(kept.max()) < int(loose.max())
    assert best_ious(ids, kept)[1:].min() >= 0.9


def test_flip_tta_negates_the_mirrored_component() -> None:
    model = create("cellpose_mbv2", 1, **TINY)
    ids = touching_ellipses(seed=3)
    raw = _perfect_raw(ids)
    for flip, axes in (("h", [1]), ("v", [0]), ("hv", [0, 1])):
        back = model.deaugment_raw(_perfect_raw(np.flip(ids, axes).copy()), flip, raw)
        fg = ids > 0
        assert (back["flows"] - raw["flows"]).abs()[:, fg].mean() <= 0.1
        assert torch.equal(back["sem_seg"], raw["sem_seg"])


def test_thresholds_are_tunable_buffers() -> None:
    model = create("cellpose_mbv2", 1, flow_threshold=0.8, **TINY)
    assert model.thresholds == pytest.approx({"fg_threshold": 0.5, "flow_threshold": 0.8, "min_area": 8.0})
    other = create("cellpose_mbv2", 1, **TINY)
    other.load_state_dict(model.state_dict())
    assert other.thresholds["flow_threshold"] == pytest.approx(0.8)
    assert set(model.threshold_grid()) <= set(model.thresholds)
    with pytest.raises(ConfigError):
        create("cellpose_mbv2", 1, flow_steps=0, **TINY)


def test_tiny_model_learns_touching_objects() -> None:
    """80 steps from scratch on two synthetic images: the loss falls and every object is found."""
    assert_learns_touching_objects("cellpose_mbv2", TINY, 80, {"loss_semantic", "loss_flow"}, min_mean_iou=0.9)
