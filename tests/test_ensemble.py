"""Model ensembles: raw maps averaged before one post-processing, or instances soft-voted across models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from maskkit.inference.common import PredictorBase

pytestmark = pytest.mark.usefixtures("one_thread")


def _components(fg: np.ndarray) -> dict[str, torch.Tensor]:
    """Model-contract outputs of the components of a boolean map (one class, score = area / largest area)."""
    imap, n = ndimage.label(fg)
    sl = ndimage.find_objects(imap)
    areas = np.bincount(imap.ravel(), minlength=n + 1)[1:]
    return {"boxes": torch.tensor([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in sl],
                                  dtype=torch.float32).reshape(-1, 4),
            "labels": torch.ones(n, dtype=torch.int64),
            "scores": torch.as_tensor(areas / max(areas.max(initial=1), 1), dtype=torch.float32),
            "instance_map": torch.as_tensor(imap.astype(np.int32))}


class GainRaw(nn.Module):
    """Raw map = first channel x ``gain``; post-processing: components above 0.5."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = gain

    def predict_raw(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [{"fg": im[0] * self.gain} for im in images]

    def postprocess(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return _components((raw["fg"] > 0.5).numpy())

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [self.postprocess(r) for r in self.predict_raw(images)]


class Threshold(nn.Module):
    """Instances only (no raw maps): components of the first channel above ``threshold``."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [_components((im[0] > self.threshold).numpy()) for im in images]


def _blobs() -> np.ndarray:
    """A bright square (0.9) and a dim one (0.47), the same size, on black."""
    image = np.zeros((40, 48, 3), np.uint8)
    image[5:15, 5:15] = 230
    image[25:35, 30:40] = 120
    return image


def _predictor(model: nn.Module, ids: list[int] | None = None, **options: object) -> PredictorBase:
    from maskkit.inference.predictor import Predictor

    return Predictor.from_model(model, ids or [1], device="cpu", **options)


def test_raw_ensemble_averages_maps_before_post_processing() -> None:
    from maskkit.inference.ensemble import EnsemblePredictor

    image = _blobs()
    # alone: gain 1.5 finds both squares (0.71 > 0.5 for the dim one), gain 0.5 neither; mean gain 1.0: only the
    # bright square (0.9 > 0.5, 0.47 is not): a result neither member gives alone
    strong, weak = GainRaw(1.5), GainRaw(0.5)
    assert len(_predictor(strong).predict(image)) == 2 and len(_predictor(weak).predict(image)) == 0
    ens = EnsemblePredictor([_predictor(strong), _predictor(weak)])
    assert ens.combine == "raw"
    out = ens.predict(image)
    assert len(out) == 1 and out.masks.to_bitmaps()[0].sum() == 100
    assert out.masks.to_bitmaps()[0][5:15, 5:15].all()
    single = _predictor(GainRaw(1.0)).predict(image)
    assert out.masks.to_rles() == single.masks.to_rles() and np.allclose(out.scores, single.scores)
    # members' TTA views are averaged first; a pixel-wise model is flip-equivariant, so nothing changes
    tta = EnsemblePredictor([_predictor(strong, tta_flips=("none", "h")), _predictor(weak)]).predict(image)
    assert tta.masks.to_rles() == out.masks.to_rles()


def test_instance_ensemble_soft_votes(tmp_path: Path) -> None:
    import cv2

    from maskkit.inference.ensemble import EnsemblePredictor

    image = _blobs()
    low, high = _predictor(Threshold(0.4)), _predictor(Threshold(0.6))
    ens = EnsemblePredictor([low, high])
    assert ens.combine == "instances"
    out = ens.predict(image)
    assert len(out) == 2
    masks = out.masks.to_bitmaps()
    # the bright square is found by both models (score (1 + 1) / 2), the dim one by one of two (1 / 2)
    np.testing.assert_allclose(out.scores, [1.0, 0.5], atol=1e-6)
    assert masks[0][5:15, 5:15].all() and masks[0].sum() == 100
    assert masks[1][25:35, 30:40].all() and masks[1].sum() == 100
    assert len(ens.predict(image, score_threshold=0.6)) == 1  # the filters apply to the combined result
    same = EnsemblePredictor([low, low]).predict(image)  # a model with itself is the model
    alone = low.predict(image)
    assert same.masks.to_rles() == alone.masks.to_rles() and np.allclose(same.scores, alone.scores)
    path = tmp_path / "blobs.png"
    cv2.imwrite(str(path), image)
    assert ens.predict(path).masks.to_rles() == out.masks.to_rles()  # a path is read once for all members


def test_mixed_ensemble_and_bad_members() -> None:
    from maskkit.errors import ConfigError
    from maskkit.inference.ensemble import EnsemblePredictor
    from maskkit.models import create

    torch.manual_seed(0)
    rcnn = create("maskrcnn_effl0_fpn", 2, min_size=64, max_size=128, anchor_sizes=[8, 16, 32, 64, 128],
                  pretrained_backbone=False, fpn_channels=32, rpn_pre_nms_top_n_test=100,
                  rpn_post_nms_top_n_test=50, box_detections_per_img=10, box_score_thresh=0.0).eval()
    image = _blobs()
    ens = EnsemblePredictor([_predictor(rcnn, [3, 7]), _predictor(Threshold(0.4), [3, 7])], iou=0.3)
    out = ens.predict(image)
    assert ens.combine == "instances" and out.image_size == (40, 48) and len(out) > 0
    assert set(np.unique(out.labels)) <= {3, 7} and np.all(np.diff(out.scores) <= 0)
    with pytest.raises(ConfigError, match="one dense model type"):
        EnsemblePredictor([_predictor(rcnn, [3, 7]), _predictor(GainRaw(1.0), [3, 7])], combine="raw")
    with pytest.raises(ConfigError, match="member 2 has categories"):
        EnsemblePredictor([_predictor(GainRaw(1.0), [1]), _predictor(GainRaw(1.0), [2])])
    with pytest.raises(ConfigError, match="PyTorch checkpoints"):
        EnsemblePredictor([_predictor(GainRaw(1.0)), PredictorBase()])
    with pytest.raises(ConfigError, match="combine must be"):
        EnsemblePredictor([_predictor(GainRaw(1.0))], combine="mean")
    with pytest.raises(ConfigError, match="at least one"):
        EnsemblePredictor([])
