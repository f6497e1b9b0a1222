import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskkit.structures import BitMask, Instances, Masks, PolygonMask, RLEMask, masks_iou


def _square(h: int = 20, w: int = 30) -> np.ndarray:
    a = np.zeros((h, w), bool)
    a[5:10, 3:12] = True
    return a


def test_representations_agree_on_pixels() -> None:
    bm = _square()
    rle = mask_utils.encode(np.asfortranarray(bm.astype(np.uint8)))
    uncompressed = {"size": [20, 30], "counts": _uncompressed_counts(bm)}
    masks = Masks([BitMask(bm), RLEMask(rle), RLEMask(uncompressed)], 20, 30)
    dense = masks.to_bitmaps()
    assert dense.shape == (3, 20, 30)
    assert (dense == bm).all()
    assert masks.areas().tolist() == [45.0, 45.0, 45.0]
    np.testing.assert_array_equal(masks.boxes()[0], [3, 5, 12, 10])


def _uncompressed_counts(bm: np.ndarray) -> list[int]:
    flat = bm.T.reshape(-1).astype(np.uint8)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return counts


def test_polygon_parts_are_united() -> None:
    poly = PolygonMask([[[0, 0], [4, 0], [4, 4], [0, 4]], [[10, 10], [14, 10], [14, 14], [10, 14]]], 20, 20)
    assert Masks([poly], 20, 20).areas()[0] == 32
    degenerate = PolygonMask([[[0, 0], [4, 4]]], 20, 20)  # < 3 points: no area, never read as a box
    assert Masks([degenerate], 20, 20).areas()[0] == 0


def test_instances_indexing_and_cat() -> None:
    masks = Masks([BitMask(_square()), BitMask(np.ones((20, 30), bool))], 20, 30)
    inst = Instances.from_masks(masks, labels=[1, 2], scores=[0.9, 0.1])
    assert len(inst) == 2
    assert inst[1].labels.tolist() == [2]
    assert inst[inst.scores > 0.5].masks.areas().tolist() == [45.0]
    both = Instances.cat([inst, inst[:1]])
    assert len(both) == 3 and len(both.masks) == 3
    with pytest.raises(ValueError):
        inst.labels = np.zeros(5)
    iou = masks_iou(masks, masks)
    np.testing.assert_allclose(np.diag(iou), [1.0, 1.0])
    assert iou[0, 1] == pytest.approx(45 / 600)


def test_crop_and_resize_full_box() -> None:
    masks = Masks([BitMask(_square())], 20, 30)
    crops = masks.crop_and_resize(masks.boxes(), 8)
    assert crops.shape == (1, 8, 8)
    assert crops.min() > 0.5 and crops.mean() > 0.9
