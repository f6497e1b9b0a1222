"""Boundary IoU (fast RLE path vs the dense reference) and Boundary AP through COCOeval."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from scipy import ndimage

from maskkit.evaluation.boundary import (
    boundary_ap,
    boundary_iou_matrix,
    boundary_iou_reference,
    boundary_reference,
    boundary_rles,
    dilation_pixels,
)
from maskkit.structures.masks import Masks, PolygonMask, masks_iou, rle_to_string

H = W = 64


def square(y0: int, x0: int, size: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0 : y0 + size, x0 : x0 + size] = True
    return m


def random_shapes(rng: np.random.Generator, n: int, h: int = H, w: int = W) -> list[np.ndarray]:
    """Ellipses (some cut by the image border, some with holes/specks) plus an empty and a full mask."""
    out = []
    for k in range(n):
        m = np.zeros((h, w), np.uint8)
        centre = (int(rng.integers(-5, w + 5)), int(rng.integers(-5, h + 5)))
        axes = (int(rng.integers(1, 25)), int(rng.integers(1, 20)))
        cv2.ellipse(m, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        if k % 4 == 0:
            m ^= (rng.random((h, w)) < 0.03).astype(np.uint8)
        out.append(m.astype(bool))
    return [*out, np.zeros((h, w), bool), np.ones((h, w), bool)]


def test_dilation_pixels() -> None:
    assert dilation_pixels(64, 64, 0.02) == 2  # 0.02 * 90.5 = 1.81
    assert dilation_pixels(64, 64, 0.0) == 1  # never below one pixel
    assert dilation_pixels(480, 640, 0.02) == 16


def test_boundary_region_by_hand() -> None:
    g = square(10, 10, 10)
    gb = boundary_reference(g, 0.02)  # d = 2: a 10x10 square minus its inner 6x6
    assert gb.sum() == 100 - 36 and not gb[12:18, 12:18].any()
    corner = square(0, 0, 10)  # pixels on the image edge are boundary (the 1-px zero padding)
    cb = boundary_reference(corner, 0.02)
    assert cb[0, :10].all() and cb[:10, 0].all() and cb.sum() == 100 - 36


def test_shifted_square_by_hand() -> None:
    g, p = square(10, 10, 10), np.roll(square(10, 10, 10), 1, axis=1)
    # Boundary intersection: the 10x9 overlap minus both 6x6 interiors (6x7 together) = 48; union 64 + 64 - 48.
    assert boundary_iou_reference(g, p) == pytest.approx(48 / 80, abs=1e-15)
    gm, pm = Masks.from_bitmaps([g], H, W), Masks.from_bitmaps([p], H, W)
    assert boundary_iou_matrix(gm, pm)[0, 0] == pytest.approx(48 / 80, abs=1e-15)
    assert masks_iou(gm, pm)[0, 0] == pytest.approx(90 / 110)


def test_identical_masks_give_one() -> None:
    rng = np.random.default_rng(1)
    shapes = [m for m in random_shapes(rng, 6) if m.any()]
    ms = Masks.from_bitmaps(shapes, H, W)
    np.testing.assert_allclose(np.diag(boundary_iou_matrix(ms, ms)), 1.0)
    for m in shapes:
        assert boundary_iou_reference(m, m) == 1.0


def test_reference_semantics_independently() -> None:
    """The dense reference equals scipy's erosion with a zero border and faster-coco-eval's copy of the API."""
    from faster_coco_eval.core import mask as fce_mask

    rng = np.random.default_rng(2)
    for ratio in (0.02, 0.1):
        d = dilation_pixels(H, W, ratio)
        for m in random_shapes(rng, 6):
            ref = boundary_reference(m, ratio)
            eroded = ndimage.binary_erosion(m, structure=np.ones((3, 3)), iterations=d, border_value=0)
            np.testing.assert_array_equal(ref, m & ~eroded)
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            np.testing.assert_array_equal(mask_utils.decode(fce_mask.rleToBoundaryCV(rle, ratio)).astype(bool), ref)


@pytest.mark.parametrize("ratio", [0.0, 0.02, 0.05, 0.3])
def test_fast_matches_reference(ratio: float) -> None:
    rng = np.random.default_rng(3)
    gt = random_shapes(rng, 10)
    pred = [np.roll(m, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1)) for m in gt]
    fast = boundary_iou_matrix(Masks.from_bitmaps(gt, H, W), Masks.from_bitmaps(pred, H, W), ratio)
    assert fast.shape == (len(gt), len(pred))
    ref = np.array([[boundary_iou_reference(g, p, ratio) for p in pred] for g in gt])
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12)
    for rle, m in zip(boundary_rles(Masks.from_bitmaps(gt, H, W), ratio), gt, strict=True):
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), boundary_reference(m, ratio))


def test_mask_kinds_and_rle_lists_agree() -> None:
    poly = PolygonMask([[[5, 5], [40, 8], [30, 50], [8, 35]]], H, W)
    ms = Masks([poly], H, W)
    expected = boundary_reference(ms.bitmap(0), 0.02)
    for source in (ms, ms.to_rles(), [rle_to_string(r) for r in ms.to_rles()], ms.to_bitmaps()):
        np.testing.assert_array_equal(mask_utils.decode(boundary_rles(source)[0]).astype(bool), expected)
    assert boundary_rles(Masks.empty(H, W)) == []
    assert boundary_iou_matrix(Masks.empty(H, W), ms).shape == (0, 1)
    empty = Masks.from_bitmaps([np.zeros((H, W), bool)], H, W)
    assert mask_utils.area(boundary_rles(empty)[0]) == 0
    assert boundary_iou_matrix(empty, empty)[0, 0] == 0.0  # pycocotools' convention for an empty union


# -- Boundary AP -----------------------------------------------------------------------------------------------
def _coco_case() -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(4)
    images, anns, results = [], [], []
    for img_id in (1, 2, 3):
        h, w = 60 + 10 * img_id, 80
        images.append({"id": img_id, "height": h, "width": w, "file_name": f"{img_id}.png"})
        for k in range(4):
            m = np.zeros((h, w), np.uint8)
            c, ax = (int(rng.integers(10, w - 10)), int(rng.integers(10, h - 10))), (int(rng.integers(3, 15)), 9)
            cv2.ellipse(m, c, ax, 0, 0, 360, 1, -1)
            rle = rle_to_string(mask_utils.encode(np.asfortranarray(m)))
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": 1 + k % 2, "segmentation": rle,
                         "area": float(m.sum()), "bbox": mask_utils.toBbox(rle).tolist(),
                         "iscrowd": int(img_id == 2 and k == 3)})
            for _ in range(2):
                d = np.zeros((h, w), np.uint8)
                shift = rng.integers(-3, 4, 2)
                cv2.ellipse(d, (c[0] + int(shift[0]), c[1] + int(shift[1])), (ax[0] + int(rng.integers(-2, 3)), 9),
                            0, 0, 360, 1, -1)
                results.append({"image_id": img_id, "category_id": 1 + k % 2, "score": float(rng.random()),
                                "segmentation": rle_to_string(mask_utils.encode(np.asfortranarray(d)))})
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": anns, "categories": cats}, results


def test_boundary_ap_equals_mask_ap_for_huge_dilation() -> None:
    from maskkit.evaluation.coco import coco_evaluate, prepare_detections

    gt, results = _coco_case()
    mask_stats = coco_evaluate(gt, prepare_detections(results, "segm"), "segm", backend="pycocotools").stats
    for backend in ("pycocotools", "faster"):
        stats = boundary_ap(gt, results, dilation_ratio=10.0, backend=backend)
        assert stats.keys() >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        for key, value in mask_stats.items():
            assert stats[key] == pytest.approx(value, abs=1e-12) if value is not None else stats[key] is None


def test_boundary_ap_matches_faster_coco_eval_native() -> None:
    from faster_coco_eval import COCO, COCOeval_faster

    gt, results = _coco_case()
    ours = {b: boundary_ap(gt, results, backend=b) for b in ("pycocotools", "faster")}
    quiet = lambda *a, **k: None  # noqa: E731
    gt_api = COCO({**gt, "annotations": [dict(a) for a in gt["annotations"]]}, print_function=quiet)
    ev = COCOeval_faster(gt_api, gt_api.loadRes([dict(r) for r in results]), "boundary", print_function=quiet)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    for backend, stats in ours.items():
        assert stats["AP"] < 0.5, backend  # much stricter than mask AP on these jittered ellipses
        for key, native in zip(("AP", "AP50", "AP75", "APs"), ev.stats[:4], strict=True):
            assert stats[key] == pytest.approx(native, abs=1e-12), (backend, key)
    assert gt["annotations"][0]["segmentation"]["counts"].__class__ is str  # inputs untouched
    assert "_boundary" not in gt["annotations"][0] and "id" not in results[0]
    assert boundary_ap(gt, [])["AP"] == 0.0
