"""The fast CPU RoIAlign reproduces torchvision's MultiScaleRoIAlign bit for bit."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from conftest import random_rois
from maskkit.inference import roi_align

pytestmark = pytest.mark.skipif(not roi_align.available(), reason="numba is not installed")

IMAGE_SIZES = [(96, 128), (80, 112)]


def _features(levels: int, channels: int = 8) -> OrderedDict[str, torch.Tensor]:
    torch.manual_seed(0)
    h, w = 96, 128
    return OrderedDict(
        (str(i), torch.randn(2, channels, h >> (i + 2), w >> (i + 2)).contiguous(memory_format=torch.channels_last))
        for i in range(levels)
    )


@pytest.mark.parametrize(("levels", "size", "sampling"), [(4, 7, 2), (4, 14, 2), (1, 5, 0), (3, 7, 0)])
def test_bit_identical_to_torchvision(levels: int, size: int, sampling: int) -> None:
    feats = _features(levels)
    pooler = MultiScaleRoIAlign([str(i) for i in range(levels)], size, sampling)
    reference = MultiScaleRoIAlign([str(i) for i in range(levels)], size, sampling)
    boxes = random_rois()
    with torch.inference_mode():
        got = roi_align.multiscale_roi_align(pooler, feats, boxes, IMAGE_SIZES)
        want = reference(OrderedDict((k, v.contiguous()) for k, v in feats.items()), boxes, IMAGE_SIZES)
    assert got.shape == want.shape == (65, 8, size, size)
    assert torch.equal(got, want)


def test_no_boxes_and_fallbacks() -> None:
    feats = _features(4)
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    assert roi_align.multiscale_roi_align(pooler, feats, empty, IMAGE_SIZES).shape == (0, 8, 7, 7)
    # NCHW features (the unoptimised network) go to torchvision's pooler: same numbers
    boxes = random_rois()
    nchw = OrderedDict((k, v.contiguous()) for k, v in feats.items())
    with torch.inference_mode():
        assert torch.equal(roi_align.multiscale_roi_align(pooler, nchw, boxes, IMAGE_SIZES),
                           roi_align.multiscale_roi_align(pooler, feats, boxes, IMAGE_SIZES))
