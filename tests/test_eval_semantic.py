"""Semantic segmentation metrics on a hand-computed 3-class 4x4 map."""

from __future__ import annotations

import numpy as np
import pytest

from maskkit.errors import DataError
from maskkit.evaluation.semantic import SemanticAccumulator

GT = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 2, 255]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1], [0, 0, 1, 2], [2, 2, 0, 1], [2, 0, 2, 2]], dtype=np.uint8)
# Over the 13 valid pixels (rows GT, columns prediction):
CM = [[3, 1, 0], [0, 3, 1], [1, 0, 4]]


def test_three_class_map_by_hand() -> None:
    acc = SemanticAccumulator(3, class_names=["bg", "cell", "debris"])
    acc.add(GT, PRED)
    r = acc.result()
    assert r["confusion_matrix"].tolist() == CM and r["num_pixels"] == 13
    assert r["iou"] == pytest.approx([3 / 5, 3 / 5, 4 / 6])
    assert r["miou"] == pytest.approx((0.6 + 0.6 + 2 / 3) / 3)
    assert r["dice"] == pytest.approx([6 / 8, 6 / 8, 8 / 10])
    assert r["mean_dice"] == pytest.approx((0.75 + 0.75 + 0.8) / 3)
    assert r["pixel_accuracy"] == pytest.approx(10 / 13)
    assert r["mean_accuracy"] == pytest.approx((3 / 4 + 3 / 4 + 4 / 5) / 3)
    assert r["fwiou"] == pytest.approx(4 / 13 * 0.6 + 4 / 13 * 0.6 + 5 / 13 * 2 / 3)
    assert r["per_class"]["debris"] == {"iou": pytest.approx(2 / 3), "dice": pytest.approx(0.8),
                                        "accuracy": pytest.approx(0.8), "gt_pixels": 5, "pred_pixels": 5}
    acc.add(GT, PRED)  # streaming: counts double, ratios stay
    assert acc.result()["confusion_matrix"].sum() == 26 and acc.result()["miou"] == pytest.approx(r["miou"])


def test_ignored_pixels_are_excluded_whatever_the_prediction() -> None:
    a, b = SemanticAccumulator(3), SemanticAccumulator(3)
    a.add(GT, PRED)
    other = PRED.copy()
    other[GT == 255] = 200  # even out-of-range predictions at ignored pixels are fine
    b.add(GT, other)
    assert a.result()["confusion_matrix"].tolist() == b.result()["confusion_matrix"].tolist()


def test_absent_and_prediction_only_classes() -> None:
    acc = SemanticAccumulator(5)  # class 3 predicted but absent from GT; class 4 absent everywhere
    pred = PRED.copy()
    pred[0, 0] = 3
    acc.add(GT, pred)
    r = acc.result()
    assert r["iou"][3] == 0.0 and np.isnan(r["iou"][4]) and np.isnan(r["accuracy"][3])
    assert r["miou"] == pytest.approx((2 / 5 + 3 / 5 + 4 / 6 + 0.0) / 4)  # over classes in GT or prediction
    assert np.isnan(SemanticAccumulator(2).result()["miou"])


def test_bad_maps() -> None:
    acc = SemanticAccumulator(3)
    with pytest.raises(DataError):
        acc.add(GT, PRED[:3])
    with pytest.raises(DataError):
        acc.add(GT, np.full_like(PRED, 3))
    with pytest.raises(DataError):
        acc.add(GT.astype(float), PRED)
    no_ignore = SemanticAccumulator(3, ignore_index=None)
    with pytest.raises(DataError):
        no_ignore.add(GT, PRED)  # 255 is then an invalid GT class
