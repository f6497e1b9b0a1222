"""Instance matching (TP/FP/FN, F1, DSB score), AJI and panoptic quality on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskkit.errors import DataError
from maskkit.evaluation.matching import (
    IOU_THRESHOLDS,
    MatchingAccumulator,
    aggregated_jaccard_index,
    aji_counts,
    aji_plus_counts,
    match_at_threshold,
)
from maskkit.evaluation.panoptic import PanopticAccumulator
from maskkit.structures.masks import Masks, masks_iou, rle_to_string


def box(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """Boolean ``h×w`` canvas with rows ``y0:y1`` and columns ``x0:x1`` set."""
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def masks(*arrays: np.ndarray) -> Masks:
    h, w = arrays[0].shape if arrays else (8, 8)
    return Masks.from_bitmaps(list(arrays), h, w)


# Two 4x4 squares offset by one pixel: intersection 12, union 20, IoU 0.6.
SQ_GT = box(8, 8, 1, 1, 5, 5)
SQ_PRED = box(8, 8, 1, 2, 5, 6)


def test_thresholds_are_exact_decimals() -> None:
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_offset_squares_by_hand() -> None:
    assert masks_iou(masks(SQ_GT), masks(SQ_PRED))[0, 0] == pytest.approx(0.6)
    acc = MatchingAccumulator()
    per_image = acc.add(masks(SQ_GT), masks(SQ_PRED))
    # IoU 0.6 >= t for t in {0.5, 0.55, 0.6}: a TP; above: one FP and one FN.
    assert per_image["tp"].tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    r = acc.result()
    per = r["per_threshold"]
    assert per["fp"] == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert per["fn"] == per["fp"]
    assert per["f1"] == [1.0] * 3 + [0.0] * 7
    assert per["dsb_score"] == [1.0] * 3 + [0.0] * 7
    assert r["dsb_score"] == pytest.approx(0.3)
    assert r["f1"] == pytest.approx(0.3)
    assert r["precision"] == pytest.approx(0.3) and r["recall"] == pytest.approx(0.3)
    assert r["f1@0.50"] == 1.0 and r["f1@0.75"] == 0.0 and r["dsb_score@0.50"] == 1.0
    assert r["dsb_score_image_mean"] == pytest.approx(0.3)
    # AJI: C = 12, U = 20.
    assert r["aji"] == pytest.approx(0.6) and r["aji_plus"] == pytest.approx(0.6)
    assert (r["num_images"], r["num_gt"], r["num_pred"]) == (1, 1, 1)


def test_counts_accumulate_over_images_and_dsb_formula() -> None:
    acc = MatchingAccumulator(thresholds=[0.5])
    # Image 1: 2 GT, 3 predictions; one exact match, one IoU-0.6 match, one stray prediction.
    g1 = masks(SQ_GT, box(8, 8, 6, 0, 8, 2))
    p1 = masks(SQ_PRED, box(8, 8, 6, 0, 8, 2), box(8, 8, 0, 6, 1, 8))
    acc.add(g1, p1)
    # Image 2: one GT missed entirely; image 3: empty (ignored by the per-image mean).
    acc.add(masks(box(8, 8, 0, 0, 2, 2)), Masks.empty(8, 8))
    acc.add(Masks.empty(8, 8), Masks.empty(8, 8))
    r = acc.result()
    assert r["per_threshold"]["tp"] == [2] and r["per_threshold"]["fp"] == [1] and r["per_threshold"]["fn"] == [1]
    assert r["dsb_score"] == pytest.approx(2 / 4)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)
    assert r["dsb_score_image_mean"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert r["num_images"] == 3


def test_hungarian_maximises_matches_below_half() -> None:
    iou = np.array([[0.9, 0.4], [0.4, 0.0]])
    gi, pi = match_at_threshold(iou, 0.3)  # greedy (0.9 first) would match only one pair
    assert sorted(zip(gi.tolist(), pi.tolist(), strict=True)) == [(0, 1), (1, 0)]
    gi, pi = match_at_threshold(iou, 0.5)
    assert list(zip(gi.tolist(), pi.tolist(), strict=True)) == [(0, 0)]
    assert len(match_at_threshold(np.zeros((0, 3)), 0.5)[0]) == 0


def _greedy_count(iou: np.ndarray, t: float) -> int:
    used_g, used_p, n = set(), set(), 0
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        g, p = np.unravel_index(flat, iou.shape)
        if iou[g, p] < t:
            break
        if g not in used_g and p not in used_p:
            used_g.add(g)
            used_p.add(p)
            n += 1
    return n


def test_hungarian_equals_greedy_at_or_above_half() -> None:
    rng = np.random.default_rng(0)
    gt = [box(32, 32, y, x, y + int(rng.integers(3, 9)), x + int(rng.integers(3, 9)))
          for y, x in rng.integers(0, 26, (12, 2))]
    pred = [np.roll(m, tuple(rng.integers(-2, 3, 2)), axis=(0, 1)) for m in gt] + gt[:3]
    iou = masks_iou(masks(*gt), masks(*pred))
    for t in IOU_THRESHOLDS:
        assert len(match_at_threshold(iou, t)[0]) == _greedy_count(iou, t)


def test_class_aware_matching() -> None:
    a, b = box(8, 8, 0, 0, 3, 3), box(8, 8, 4, 4, 8, 8)
    agnostic, aware = MatchingAccumulator([0.5]), MatchingAccumulator([0.5], class_aware=True)
    for acc in (agnostic, aware):
        acc.add(masks(a, b), masks(a, b), gt_labels=[1, 2], pred_labels=[2, 2])
    assert agnostic.result()["per_threshold"]["tp"] == [2]
    r = aware.result()
    assert (r["per_threshold"]["tp"], r["per_threshold"]["fp"], r["per_threshold"]["fn"]) == ([1], [1], [1])
    assert r["per_class"][1]["fn"] == [1] and r["per_class"][1]["tp"] == [0]
    assert r["per_class"][2]["tp"] == [1] and r["per_class"][2]["fp"] == [1]
    assert r["per_class"][2]["dsb_score_mean"] == pytest.approx(0.5)
    with pytest.raises(DataError):
        aware.add(masks(a), masks(a))


def test_input_kinds_agree() -> None:
    gm, pm = masks(SQ_GT, box(8, 8, 6, 6, 8, 8)), masks(SQ_PRED)
    results = []
    as_str = [rle_to_string(r) for r in gm.to_rles()]
    for g, p in ((gm, pm), (gm.to_bitmaps(), pm.to_bitmaps()), (as_str, pm.to_rles())):
        acc = MatchingAccumulator()
        acc.add(g, p)
        results.append(acc.result())
    assert results[0] == results[1] == results[2]


def test_bad_input() -> None:
    acc = MatchingAccumulator()
    with pytest.raises(DataError):
        acc.add(masks(SQ_GT), Masks.from_bitmaps([np.ones((4, 4), bool)], 4, 4))
    with pytest.raises(DataError):
        acc.add(masks(SQ_GT), masks(SQ_PRED), gt_labels=[1, 2], pred_labels=[1])
    with pytest.raises(DataError):
        acc.add(np.zeros((8, 8), bool), masks(SQ_PRED))


# -- AJI ---------------------------------------------------------------------------------------------------
def test_aji_split_object() -> None:
    gt = masks(box(8, 8, 0, 0, 4, 4))  # 16 px, split by the prediction into two 8-px halves (IoU 0.5 each)
    pred = masks(box(8, 8, 0, 0, 4, 2), box(8, 8, 0, 2, 4, 4))
    # The GT takes the first half: C = 8, U = 16 + unused right half 8 = 24.
    assert aggregated_jaccard_index(gt, pred) == pytest.approx(8 / 24)
    c, u = aji_counts(masks_iou(gt, pred), gt.areas(), pred.areas())
    assert (c, u) == (8.0, 24.0)


def test_aji_merged_object_differs_from_aji_plus() -> None:
    gt = masks(box(8, 8, 0, 0, 4, 2), box(8, 8, 0, 2, 4, 4))  # two 8-px halves
    pred = masks(box(8, 8, 0, 0, 4, 4))  # one 16-px merge, the best match of both GT
    iou, ga, pa = masks_iou(gt, pred), gt.areas(), pred.areas()
    assert aji_counts(iou, ga, pa) == (16.0, 32.0)  # the merged prediction is counted in both unions
    assert aji_plus_counts(iou, ga, pa) == (8.0, 24.0)  # one-to-one: the second half is unpaired GT


def test_aji_unmatched_and_dataset_level() -> None:
    gt = masks(box(8, 8, 0, 0, 2, 2), box(8, 8, 6, 6, 8, 8))  # the second GT has no overlapping prediction
    pred = masks(box(8, 8, 0, 0, 2, 2), box(8, 8, 0, 5, 1, 8))  # the second prediction overlaps nothing
    assert aggregated_jaccard_index(gt, pred) == pytest.approx(4 / (4 + 4 + 3))
    assert np.isnan(aggregated_jaccard_index(Masks.empty(8, 8), Masks.empty(8, 8)))
    acc = MatchingAccumulator()
    acc.add(gt, pred)  # C = 4, U = 11
    acc.add(masks(box(8, 8, 0, 0, 4, 4)), masks(box(8, 8, 0, 0, 4, 2), box(8, 8, 0, 2, 4, 4)))  # 8 / 24
    r = acc.result()
    assert r["aji"] == pytest.approx((4 + 8) / (11 + 24))
    assert r["aji_image_mean"] == pytest.approx((4 / 11 + 8 / 24) / 2)


# -- panoptic quality ----------------------------------------------------------------------------------------
def test_pq_known_configuration() -> None:
    g_exact = box(16, 16, 8, 8, 12, 12)
    gt = masks(box(16, 16, 1, 1, 5, 5), g_exact, box(16, 16, 13, 0, 16, 3))
    pred = masks(box(16, 16, 1, 2, 5, 6), g_exact, box(16, 16, 0, 12, 3, 16))
    acc = PanopticAccumulator()
    acc.add(gt, pred)
    r = acc.result()
    # TP: IoU 0.6 and 1.0; FP: the stray prediction; FN: the third GT.
    assert r["per_class"][0] == {"pq": pytest.approx(0.8 * 2 / 3), "sq": pytest.approx(0.8),
                                 "rq": pytest.approx(2 / 3), "tp": 2, "fp": 1, "fn": 1}
    assert r["pq"] == pytest.approx(0.8 * 2 / 3) and r["num_classes"] == 1


def test_pq_strictly_above_half_and_class_mean() -> None:
    g = box(8, 8, 0, 0, 4, 4)
    half = box(8, 8, 0, 0, 4, 2)  # IoU exactly 0.5: not a PQ match
    acc = PanopticAccumulator()
    acc.add(masks(g, box(8, 8, 6, 6, 8, 8)), masks(half, box(8, 8, 6, 6, 8, 8)), gt_labels=[3, 7], pred_labels=[3, 7])
    r = acc.result()
    assert r["per_class"][3]["tp"] == 0 and r["per_class"][3]["pq"] == 0.0 and r["per_class"][3]["sq"] == 0.0
    assert r["per_class"][7]["pq"] == 1.0
    assert r["pq"] == pytest.approx(0.5) and r["sq"] == pytest.approx(0.5) and r["rq"] == pytest.approx(0.5)
    m = MatchingAccumulator([0.5])  # the matching metrics use IoU >= t
    m.add(masks(g), masks(half))
    assert m.result()["per_threshold"]["tp"] == [1]
    assert np.isnan(PanopticAccumulator().result()["pq"])


def test_pq_crowd_regions() -> None:
    crowd = box(16, 16, 0, 8, 8, 16)
    person = box(16, 16, 10, 0, 14, 4)
    in_crowd = box(16, 16, 1, 9, 4, 12)  # entirely inside the crowd: ignored, not FP
    half_out = box(16, 16, 6, 8, 10, 10)  # 4 of 8 px inside (not more than half): FP
    acc = PanopticAccumulator()
    acc.add(masks(person, crowd), masks(person, in_crowd, half_out), gt_iscrowd=[False, True])
    r = acc.result()["per_class"][0]
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)
    other = PanopticAccumulator()  # a crowd of another class does not excuse predictions
    other.add(masks(person, crowd), masks(person, in_crowd), gt_labels=[0, 1], pred_labels=[0, 0],
              gt_iscrowd=[False, True])
    assert other.result()["per_class"][0]["fp"] == 1


def test_real_nuclei_self_match(shared_data) -> None:
    from maskkit.data.images import read_image

    root = shared_data / "dsb2018-stage1-train-subset" / "stage1_train"
    sample = sorted(p for p in root.iterdir() if p.is_dir())[0]
    images = [read_image(f) for f in sorted((sample / "masks").glob("*.png"))]
    bitmaps = [(im[..., 0] if im.ndim == 3 else im) > 0 for im in images]
    gt = Masks.from_bitmaps(bitmaps, *bitmaps[0].shape)
    shifted = Masks.from_rles([mask_utils.encode(np.asfortranarray(np.roll(b, 1, axis=1).astype(np.uint8)))
                               for b in bitmaps], *bitmaps[0].shape)
    acc, pq = MatchingAccumulator(), PanopticAccumulator()
    acc.add(gt, gt)
    pq.add(gt, gt)
    r = acc.result()
    assert r["dsb_score"] == 1.0 and r["aji"] == 1.0 and pq.result()["pq"] == 1.0
    acc2 = MatchingAccumulator()
    acc2.add(gt, shifted)
    assert 0.0 < acc2.result()["aji"] < 1.0
