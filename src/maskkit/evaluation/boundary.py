"""Boundary IoU and Boundary AP (Cheng et al., "Boundary IoU", CVPR 2021).

Semantics follow the reference ``boundary-iou-api``: the boundary region of a mask ``M`` is
``M ∩ ¬erode(M)`` where the erosion uses a 3×3 square structuring element applied ``d`` times to the
mask padded with a one-pixel zero border (so pixels on the image edge count as boundary), and

    d = max(1, round(dilation_ratio * sqrt(H² + W²)))   (image diagonal, ``dilation_ratio`` default 0.02).

Boundary IoU of ``G`` and ``P`` is ``|Gb ∩ Pb| / |Gb ∪ Pb|`` of those boundary regions (0 when both are
empty, as pycocotools does for masks).

Fast path: each instance's boundary is computed once, on its bounding box plus a one-pixel zero margin
(exact: erosion of a pixel whose ``d``-neighbourhood leaves the box always sees a zero of the margin),
and written straight into a full-image RLE from the boundary pixel positions – no full-image dense array
per instance beyond the transient decode. Pairwise boundary IoU is then pycocotools ``iou`` on those RLEs.
:func:`boundary_iou_reference` is the plain full-image version used by the tests and benchmarks.

Boundary AP is COCO AP with ``IoU = min(mask IoU, boundary IoU)`` (crowd GT keep mask IoU), computed by a
``COCOeval`` subclass whose ``computeIoU`` returns the combined matrix, so the AP integration (matching,
interpolation, area ranges) stays the library's: :func:`boundary_cocoeval_class` gives that subclass for
pycocotools; faster-coco-eval computes the same natively (``iouType="boundary"``).
:func:`boundary_evaluate` / :func:`boundary_ap` run either backend with the dataset
conventions of :mod:`maskkit.evaluation.coco` (prepared detections, ``max_dets``, ``None`` for "no GT").
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from maskkit.errors import DataError
from maskkit.evaluation import coco
from maskkit.evaluation.matching import MaskInput, as_rles
from maskkit.structures.masks import RLE, Masks
from maskkit.structures.rle import empty_rle

if TYPE_CHECKING:
    from maskkit.evaluation.coco import CocoEvalResult

_KERNEL = np.ones((3, 3), dtype=np.uint8)


def dilation_pixels(height: int, width: int, dilation_ratio: float = 0.02) -> int:
    """Boundary width ``d`` in pixels: ``max(1, round(dilation_ratio * image diagonal))``."""
    return max(1, round(dilation_ratio * math.sqrt(height**2 + width**2)))


def _erode_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Boundary (``mask`` minus its ``dilation``-fold 3×3 erosion, zero outside) of a bool/uint8 array."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    padded = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, _KERNEL, iterations=dilation)[1:-1, 1:-1]
    boundary: np.ndarray = (m > 0) & (eroded == 0)
    return boundary


def boundary_reference(bitmap: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """Dense boundary region of a full-image ``H×W`` mask (reference semantics, whole image eroded)."""
    h, w = bitmap.shape
    return _erode_boundary(bitmap, dilation_pixels(h, w, dilation_ratio))


def boundary_iou_reference(gt_bitmap: np.ndarray, pred_bitmap: np.ndarray, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU of two dense ``H×W`` masks, eroding each full image (slow; for tests and benchmarks)."""
    if gt_bitmap.shape != pred_bitmap.shape:
        raise DataError(f"mask sizes differ: {gt_bitmap.shape} vs {pred_bitmap.shape}")
    gb = boundary_reference(gt_bitmap, dilation_ratio)
    pb = boundary_reference(pred_bitmap, dilation_ratio)
    union = np.count_nonzero(gb | pb)
    return float(np.count_nonzero(gb & pb) / union) if union else 0.0


def _positions_to_rle(pos: np.ndarray, height: int, width: int) -> RLE:
    """Compressed RLE of the pixels at sorted column-major flat positions ``pos``."""
    total = height * width
    if not len(pos):
        return empty_rle(height, width)
    breaks = np.flatnonzero(np.diff(pos) != 1)
    starts = pos[np.concatenate(([0], breaks + 1))]
    ends = pos[np.concatenate((breaks, [len(pos) - 1]))] + 1
    zeros = starts - np.concatenate(([0], ends[:-1]))
    counts = [*np.stack([zeros, ends - starts], axis=1).reshape(-1).tolist(), int(total - ends[-1])]
    rle: RLE = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return rle


def _boundary_rle_of_bitmap(bitmap: np.ndarray, box: np.ndarray, dilation: int) -> RLE:
    """Boundary RLE of a full-image mask, eroding only its XYWH ``box`` (tight, from pycocotools)."""
    h, w = bitmap.shape
    x0, y0, bw, bh = (int(v) for v in box)
    if bw <= 0 or bh <= 0:
        return _positions_to_rle(np.zeros(0, dtype=np.int64), h, w)
    crop = _erode_boundary(bitmap[y0 : y0 + bh, x0 : x0 + bw], dilation)
    xs, ys = np.nonzero(crop.T)  # column-major order, as RLE counts run
    pos = (xs.astype(np.int64) + x0) * h + (ys.astype(np.int64) + y0)
    return _positions_to_rle(pos, h, w)


def boundary_rle(rle: RLE, dilation_ratio: float = 0.02) -> RLE:
    """Boundary region of one compressed COCO RLE mask, as a compressed full-image RLE."""
    h, w = (int(v) for v in rle["size"])
    box = mask_utils.toBbox(rle)
    return _boundary_rle_of_bitmap(mask_utils.decode(rle), box, dilation_pixels(h, w, dilation_ratio))


def boundary_rles(masks: MaskInput, dilation_ratio: float = 0.02) -> list[RLE]:
    """Boundary regions of all instances (``Masks``, list of RLEs or ``N×H×W`` array) as compressed RLEs.

    Each instance is decoded once and eroded only inside its box; memory is one ``H×W`` mask at a time.
    """
    if isinstance(masks, Masks):
        if not len(masks):
            return []
        d = dilation_pixels(masks.height, masks.width, dilation_ratio)
        boxes = mask_utils.toBbox(masks.to_rles()).reshape(-1, 4)
        return [_boundary_rle_of_bitmap(masks.bitmap(i), boxes[i], d) for i in range(len(masks))]
    return [boundary_rle(r, dilation_ratio) for r in as_rles(masks)]


def rle_iou_matrix(a: Sequence[RLE], b: Sequence[RLE]) -> np.ndarray:
    """Pairwise IoU (``len(a) × len(b)``, float64) of compressed RLEs via pycocotools (``iscrowd=0``)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), dtype=np.float64)
    if tuple(a[0]["size"]) != tuple(b[0]["size"]):
        raise DataError(f"mask sizes differ: {list(a[0]['size'])} vs {list(b[0]['size'])}")
    return np.asarray(mask_utils.iou(list(a), list(b), [0] * len(b)), dtype=np.float64).reshape(len(a), len(b))


def boundary_iou_matrix(gt: MaskInput, pred: MaskInput, dilation_ratio: float = 0.02) -> np.ndarray:
    """Pairwise Boundary IoU, shape ``(len(gt), len(pred))``: boundaries once per instance, then RLE IoU."""
    return rle_iou_matrix(boundary_rles(gt, dilation_ratio), boundary_rles(pred, dilation_ratio))


# -- Boundary AP ----------------------------------------------------------------------------------------
def _combine(ious: Any, gt: list[dict[str, Any]], dt: list[dict[str, Any]], dilation_ratio: float, rle_key: str) -> Any:
    """``min(mask IoU, boundary IoU)`` for the non-crowd GT columns of a COCOeval ``(D, G)`` IoU matrix."""
    ious = np.asarray(ious, dtype=np.float64)
    if ious.size == 0:
        return ious
    for ann in (*gt, *dt):
        if "_boundary" not in ann:  # cached on the annotation, as the reference caches ann["boundary"]
            ann["_boundary"] = boundary_rle(ann[rle_key], dilation_ratio)
    crowd = np.array([bool(g.get("iscrowd", 0)) for g in gt])
    b = np.asarray(
        mask_utils.iou([d["_boundary"] for d in dt], [g["_boundary"] for g in gt], [0] * len(gt)), dtype=np.float64
    ).reshape(ious.shape)
    ious[:, ~crowd] = np.minimum(ious[:, ~crowd], b[:, ~crowd])
    return ious


def _sorted_dts(dt: list[dict[str, Any]], max_det: int) -> list[dict[str, Any]]:
    """Detections in the order COCOeval's ``computeIoU`` uses: score descending (stable), first ``max_det``."""
    order = np.argsort([-d["score"] for d in dt], kind="mergesort")
    return [dt[i] for i in order[:max_det]]


def boundary_cocoeval_class() -> type:
    """A pycocotools ``COCOeval`` subclass whose ``computeIoU`` returns ``min(mask IoU, boundary IoU)``.

    Construct it like its base with ``iouType="segm"`` and set the ``dilation_ratio`` attribute (default
    0.02) before ``evaluate()``; everything else (matching, accumulation, summary) is the base's.
    Boundaries are computed once per annotation and cached under ``ann["_boundary"]``. The ``"faster"``
    backend needs no subclass: faster-coco-eval computes the same quantity natively (``iouType="boundary"``).
    """
    from pycocotools.cocoeval import COCOeval

    class BoundaryCOCOeval(COCOeval):  # type: ignore[misc]  # pycocotools has no type information
        dilation_ratio = 0.02

        def computeIoU(self, imgId: int, catId: int) -> Any:
            ious = super().computeIoU(imgId, catId)
            p = self.params
            cats = [catId] if p.useCats else p.catIds
            gt = [g for c in cats for g in self._gts[imgId, c]]
            dt = _sorted_dts([d for c in cats for d in self._dts[imgId, c]], p.maxDets[-1])
            return _combine(ious, gt, dt, self.dilation_ratio, "segmentation")

    return BoundaryCOCOeval


def boundary_evaluate(
    gt: dict[str, Any],
    results: Sequence[dict[str, Any]],
    dilation_ratio: float = 0.02,
    max_dets: Iterable[int] | None = None,
    backend: str = "faster",
    areas: str = "detectron2",
) -> CocoEvalResult:
    """Boundary AP evaluation with the conventions of :func:`maskkit.evaluation.coco.coco_evaluate`.

    Args:
        gt: COCO ground-truth dict (``images``, ``annotations`` with ``segmentation``, ``categories``).
        results: COCO results (``image_id``, ``category_id``, ``segmentation`` RLE, ``score``); they are
            passed through ``coco.prepare_detections(results, "segm", areas)``. Neither input is modified.
        dilation_ratio: boundary width as a fraction of the image diagonal (0.02 as in the paper).
        max_dets: as in ``coco_evaluate`` (always includes 1, 10, 100).
        backend: ``"faster"`` (faster-coco-eval) or ``"pycocotools"``.
        areas: the predictions' area convention for the size buckets (``coco.DETECTION_AREAS``).

    Returns a ``CocoEvalResult`` with ``iou_type="boundary"`` (``.stats``, ``.per_class()``, arrays).
    """
    if backend not in ("faster", "pycocotools"):
        raise ValueError(f"backend must be 'faster' or 'pycocotools', got {backend!r}")
    mdets = coco.normalise_max_dets(max_dets)
    gt_dict = coco.gt_dataset(gt["images"], gt["categories"], gt["annotations"])
    dt_dict = {**gt_dict, "annotations": coco.prepare_detections(list(results), "segm", areas)}
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "faster":
            from faster_coco_eval import COCO, COCOeval_faster

            gt_api, dt_api = COCO(gt_dict, print_function=_quiet), COCO(dt_dict, print_function=_quiet)
            # faster-coco-eval's native Boundary AP (min of mask and boundary IoU, Cheng et al. 2021).
            ev = COCOeval_faster(gt_api, dt_api, "boundary", print_function=_quiet,
                                 boundary_dilation_ratio=dilation_ratio)
        else:
            from pycocotools.coco import COCO

            apis = []
            for d in (gt_dict, dt_dict):
                api = COCO()
                api.dataset = d
                api.createIndex()
                apis.append(api)
            ev = boundary_cocoeval_class()(apis[0], apis[1], "segm")
            ev.dilation_ratio = dilation_ratio
        ev.params.maxDets = list(mdets)
        ev.evaluate()
        ev.accumulate()
    precision = np.asarray(ev.eval["precision"], dtype=np.float64)
    recall = np.asarray(ev.eval["recall"], dtype=np.float64)
    thresholds = np.asarray(ev.params.iouThrs, dtype=np.float64)
    return coco.CocoEvalResult(
        iou_type="boundary",
        stats=coco.summarize(precision, recall, thresholds, mdets),
        precision=precision,
        recall=recall,
        cat_ids=[int(c) for c in ev.params.catIds],
        max_dets=mdets,
        iou_thresholds=thresholds,
    )


def _quiet(*args: Any, **kwargs: Any) -> None:
    return None


def boundary_ap(
    gt: dict[str, Any],
    results: Sequence[dict[str, Any]],
    dilation_ratio: float = 0.02,
    max_dets: Iterable[int] | None = None,
    backend: str = "faster",
) -> dict[str, float | None]:
    """Boundary AP stats: ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
    "ARl"}`` as fractions in [0, 1], ``None`` where there is no GT (see :func:`boundary_evaluate`)."""
    return boundary_evaluate(gt, results, dilation_ratio, max_dets, backend).stats
