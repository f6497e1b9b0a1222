"""COCO box and mask AP through faster-coco-eval (pycocotools as a fallback and reference).

The evaluation works on COCO-format dicts whose masks are compressed RLE, built straight from
:class:`~maskkit.structures.Instances` without dense masks. The numbers are those of
pycocotools' ``COCOeval`` (tests: equal to 1e-12 on every stat); the stats are read from its accumulated
``precision``/``recall`` arrays exactly as ``COCOeval.summarize`` does, but with honest names:

* ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``ARs``, ``ARm``, ``ARl`` use the largest
  ``max_dets`` (100 by default; e.g. 1000 for dense nuclei).
* ``AR<m>`` is the recall with at most ``m`` detections per image. ``max_dets`` is always the union
  of the requested values and ``{1, 10, 100}``, so ``AR1``/``AR10``/``AR100`` always mean what they
  say (pycocotools' ``summarize`` would label AR@100 as "AR10" for ``maxDets=[1, 100, 1000]``);
  further values add keys such as ``AR1000``.

pycocotools' ``-1`` ("no such objects") becomes ``None``.

The area that puts a prediction into a size bucket (``APs``/``APm``/``APl``, ``ARs``/``ARm``/``ARl``)
follows one of :data:`DETECTION_AREAS` (ground truth always uses its annotation's ``area``):

* ``"detectron2"`` (the default for model outputs): the box area in bbox evaluation, the mask area
  in segm and Boundary evaluation -- Detectron2's and MMDetection's convention (they drop the
  ``bbox`` of segm results before ``loadRes``);
* ``"box"``: the box area ``w * h`` in every evaluation -- pycocotools' ``loadRes`` when the first
  result has a ``bbox`` (it then ignores the masks' areas, also for segm);
* ``"mask"``: the mask area in every evaluation (box area for results without a mask) --
  ``loadRes`` when the first result has only a ``segmentation``.

:func:`loadres_areas` tells which of the last two pycocotools applies to a results list; scoring
a results file with it gives pycocotools' numbers on every stat. Annotation ids are renumbered
1..N (pycocotools and faster-coco-eval treat id 0 as "unmatched").
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from maskkit.perf import gc_paused

STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
"""The 12 COCO summary stats, in pycocotools' ``stats`` order (for the default max_dets)."""
CLASS_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR")
DEFAULT_MAX_DETS = (1, 10, 100)
AREA_RANGES = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e5**2)}
IOU_TYPES = ("bbox", "segm")
DETECTION_AREAS = ("detectron2", "box", "mask")
"""Conventions for a prediction's area in the size buckets (see the module docstring)."""


def normalise_max_dets(max_dets: Iterable[int] | None = None) -> list[int]:
    """The sorted union of ``max_dets`` and ``{1, 10, 100}`` (see the module docstring)."""
    values = {int(m) for m in (max_dets or DEFAULT_MAX_DETS)}
    if any(m < 1 for m in values):
        raise ValueError(f"max_dets must be positive integers, got {sorted(values)}")
    return sorted(values | set(DEFAULT_MAX_DETS))


def backend_name() -> str:
    """``faster-coco-eval <version>`` when importable, else ``pycocotools <version>``."""
    try:
        import faster_coco_eval

        return f"faster-coco-eval {faster_coco_eval.__version__}"
    except ImportError:  # pragma: no cover - faster-coco-eval is a dependency
        import pycocotools

        return f"pycocotools {getattr(pycocotools, '__version__', '')}".strip()


# -- building COCO dicts -------------------------------------------------------------------------


def xyxy_to_coco_boxes(boxes: np.ndarray) -> list[list[float]]:
    """``(N, 4)`` XYXY to a list of COCO ``[x, y, w, h]`` float lists."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, 2:] -= b[:, :2]
    return b.tolist()


def rle_areas(rles: Sequence[dict[str, Any]]) -> np.ndarray:
    """Pixel areas (float64) of compressed RLEs; chunked, as pycocotools' ``area`` overflows for
    more than 255 RLEs per call under NumPy 2."""
    if not rles:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([mask_utils.area(list(rles[i : i + 255])) for i in range(0, len(rles), 255)]).astype(
        np.float64
    )


def xywh_to_xyxy64(boxes: np.ndarray) -> np.ndarray:
    """COCO ``[x, y, w, h]`` to XYXY, float64 (float32 would perturb box IoUs)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, 2:] += b[:, :2]
    return b


def gt_annotations(
    image_id: int,
    size: tuple[int, int],
    labels: np.ndarray,
    boxes: np.ndarray,
    counts: Sequence[bytes] | None,
    areas: np.ndarray,
    iscrowd: np.ndarray,
    first_id: int,
) -> list[dict[str, Any]]:
    """Ground-truth annotation dicts of one image (ids ``first_id``, ``first_id + 1``, ...)."""
    h, w = int(size[0]), int(size[1])
    xywh = xyxy_to_coco_boxes(boxes)
    cats = np.asarray(labels).astype(np.int64).tolist()  # Python numbers, converted all at once
    area = np.asarray(areas, dtype=np.float64).tolist()
    crowd = np.asarray(iscrowd).astype(bool).astype(np.int64).tolist()
    image_id = int(image_id)
    out = [{"id": first_id + i, "image_id": image_id, "category_id": cats[i], "bbox": xywh[i], "area": area[i],
            "iscrowd": crowd[i]} for i in range(len(cats))]
    if counts is not None:
        for ann, c in zip(out, counts, strict=True):
            ann["segmentation"] = {"size": [h, w], "counts": c}
    return out


def detection_annotations(
    image_id: int,
    size: tuple[int, int],
    labels: np.ndarray,
    scores: np.ndarray,
    boxes: np.ndarray | None,
    counts: Sequence[bytes] | None,
) -> list[dict[str, Any]]:
    """Detection dicts of one image in COCO results form (``bbox`` and/or ``segmentation``)."""
    h, w = int(size[0]), int(size[1])
    cats = np.asarray(labels).astype(np.int64).tolist()
    score = np.asarray(scores, dtype=np.float64).reshape(-1).tolist()
    image_id = int(image_id)
    out: list[dict[str, Any]] = [{"image_id": image_id, "category_id": c, "score": s}
                                 for c, s in zip(cats, score, strict=True)]
    if boxes is not None:
        for det, b in zip(out, xyxy_to_coco_boxes(boxes), strict=True):
            det["bbox"] = b
    if counts is not None:
        for det, c in zip(out, counts, strict=True):
            det["segmentation"] = {"size": [h, w], "counts": c}
    return out


def loadres_areas(results: Sequence[dict[str, Any]]) -> str:
    """The :data:`DETECTION_AREAS` convention pycocotools' ``loadRes`` applies to ``results``.

    ``loadRes`` looks at the first result only: with a (non-empty) ``bbox`` every result's area is
    its box's ``w * h``, else its mask's pixel count.
    """
    return "box" if results and results[0].get("bbox") not in (None, []) else "mask"


def prepare_detections(
    results: Sequence[dict[str, Any]], iou_type: str, areas: str = "detectron2"
) -> list[dict[str, Any]]:
    """Copies of COCO results ready for evaluation as ``iou_type`` (what ``loadRes`` would add).

    Each copy gets ``id`` (1..N), ``iscrowd`` 0 and ``area`` by the ``areas`` convention
    (:data:`DETECTION_AREAS`); a segm result without ``bbox`` gets its mask's extent. Results
    lacking what the type needs are skipped (callers check that beforehand).
    """
    if areas not in DETECTION_AREAS:
        raise ValueError(f"areas must be one of {DETECTION_AREAS}, got {areas!r}")
    with gc_paused():
        return _prepare(results, iou_type, areas)


def _prepare(results: Sequence[dict[str, Any]], iou_type: str, areas: str) -> list[dict[str, Any]]:
    key = "bbox" if iou_type == "bbox" else "segmentation"
    chosen = [r for r in results if key in r]
    out = [{k: v for k, v in r.items() if k in ("image_id", "category_id", "score", key)} for r in chosen]
    if iou_type == "segm":
        no_box = []
        for i, (d, r) in enumerate(zip(out, chosen, strict=True)):
            if "bbox" in r:
                d["bbox"] = list(r["bbox"])
            else:
                no_box.append(i)
        if no_box:
            extents = mask_utils.toBbox([chosen[i]["segmentation"] for i in no_box]).tolist()
            for i, b in zip(no_box, extents, strict=True):
                out[i]["bbox"] = b
    use_mask = areas == "mask" or (areas == "detectron2" and iou_type == "segm")
    with_mask = [i for i, r in enumerate(chosen) if "segmentation" in r] if use_mask else []
    for d in out:
        d["area"] = float(d["bbox"][2]) * float(d["bbox"][3])
    if with_mask:
        for i, a in zip(with_mask, rle_areas([chosen[i]["segmentation"] for i in with_mask]).tolist(), strict=True):
            out[i]["area"] = a
    for i, d in enumerate(out):
        d["id"] = i + 1
        d["iscrowd"] = 0
    return out


def gt_dataset(
    images: Sequence[dict[str, Any]], categories: Sequence[dict[str, Any]], annotations: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """A COCO ground-truth dict; annotation dicts are shallow-copied (the evaluators add keys)."""
    return {"images": list(images), "categories": list(categories), "annotations": [dict(a) for a in annotations]}


# -- evaluation -----------------------------------------------------------------------------------


@dataclass
class CocoEvalResult:
    """The outcome of one COCO evaluation (one IoU type)."""

    iou_type: str
    stats: dict[str, float | None]
    precision: np.ndarray = field(repr=False)
    """``[T, R, K, A, M]``: IoU thresholds × 101 recall points × classes × area ranges × max_dets."""
    recall: np.ndarray = field(repr=False)
    """``[T, K, A, M]``."""
    cat_ids: list[int]
    max_dets: list[int]
    iou_thresholds: np.ndarray = field(repr=False)
    matched: dict[int, int] = field(default_factory=dict, repr=False)
    """Detection id -> ground-truth id of the matches at IoU 0.5 (area "all", largest max_dets)."""

    def per_class(self) -> dict[int, dict[str, float | None]]:
        """Per category id: AP, AP50, AP75, APs, APm, APl and AR (at the largest max_dets)."""
        out = {}
        for k, cid in enumerate(self.cat_ids):
            out[cid] = {
                "AP": _mean(self.precision[:, :, k, 0, -1]),
                "AP50": _mean(self.precision[_thr(self.iou_thresholds, 0.5), :, k, 0, -1]),
                "AP75": _mean(self.precision[_thr(self.iou_thresholds, 0.75), :, k, 0, -1]),
                "APs": _mean(self.precision[:, :, k, 1, -1]),
                "APm": _mean(self.precision[:, :, k, 2, -1]),
                "APl": _mean(self.precision[:, :, k, 3, -1]),
                "AR": _mean(self.recall[:, k, 0, -1]),
            }
        return out


def _mean(values: np.ndarray) -> float | None:
    v = np.asarray(values)
    v = v[v > -1]
    return float(np.mean(v)) if v.size else None


def _thr(thresholds: np.ndarray, value: float) -> np.ndarray:
    return np.where(np.isclose(thresholds, value))[0]


def summarize(
    precision: np.ndarray, recall: np.ndarray, iou_thresholds: np.ndarray, max_dets: Sequence[int]
) -> dict[str, float | None]:
    """The COCO summary stats from accumulated arrays (what ``COCOeval.summarize`` averages)."""
    p, r, t = precision, recall, iou_thresholds
    stats: dict[str, float | None] = {
        "AP": _mean(p[..., 0, -1]),
        "AP50": _mean(p[_thr(t, 0.5)][..., 0, -1]),
        "AP75": _mean(p[_thr(t, 0.75)][..., 0, -1]),
        "APs": _mean(p[..., 1, -1]),
        "APm": _mean(p[..., 2, -1]),
        "APl": _mean(p[..., 3, -1]),
    }
    for m, md in enumerate(max_dets):
        stats[f"AR{md}"] = _mean(r[..., 0, m])
    stats["ARs"] = _mean(r[..., 1, -1])
    stats["ARm"] = _mean(r[..., 2, -1])
    stats["ARl"] = _mean(r[..., 3, -1])
    return stats


def coco_evaluate(
    gt: dict[str, Any],
    detections: list[dict[str, Any]],
    iou_type: str,
    max_dets: Iterable[int] | None = None,
    backend: str = "faster",
    copy_detections: bool = True,
) -> CocoEvalResult:
    """COCO evaluation of prepared detections (:func:`prepare_detections`) against a GT dict.

    ``backend`` is ``"faster"`` (faster-coco-eval, falling back to pycocotools when it cannot be
    imported) or ``"pycocotools"`` (the reference). Neither input is modified, unless
    ``copy_detections=False`` lets the evaluators annotate fresh detection dicts in place.
    """
    return coco_evaluate_types(gt, {iou_type: detections}, max_dets, backend, copy_detections)[iou_type]


def coco_evaluate_types(
    gt: dict[str, Any],
    detections: Mapping[str, list[dict[str, Any]]],
    max_dets: Iterable[int] | None = None,
    backend: str = "faster",
    copy_detections: bool = True,
    on_result: Callable[[CocoEvalResult], None] | None = None,
) -> dict[str, CocoEvalResult]:
    """:func:`coco_evaluate` for several IoU types (``{iou_type: detections}``, evaluated in that order).

    The ground truth is indexed once for all types, and so are detections given as the same list for
    several types (as a script sharing its ``COCO`` objects between ``bbox`` and ``segm`` does).
    ``on_result`` is called with each result as soon as it is computed.
    """
    for iou_type in detections:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if backend not in ("faster", "pycocotools"):
        raise ValueError(f"backend must be 'faster' or 'pycocotools', got {backend!r}")
    mdets = normalise_max_dets(max_dets)
    faster = backend == "faster" and _faster_available()
    results = {}
    with gc_paused():
        gt = gt_dataset(gt["images"], gt["categories"], gt["annotations"])
        gt_api = _coco_api(gt, faster)
        dt_apis: dict[int, Any] = {}
        for iou_type, dets in detections.items():
            if id(dets) not in dt_apis:
                anns = [dict(d) for d in dets] if copy_detections else list(dets)
                dt = {"images": gt["images"], "categories": gt["categories"], "annotations": anns}
                dt_apis[id(dets)] = _coco_api(dt, faster)
            evaluate = _evaluate_faster if faster else _evaluate_pycocotools
            results[iou_type] = evaluate(gt_api, dt_apis[id(dets)], iou_type, mdets)
            if on_result is not None:
                on_result(results[iou_type])
    return results


def _faster_available() -> bool:
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:  # pragma: no cover - faster-coco-eval is a dependency
        return False
    return True


def _quiet(*args: Any, **kwargs: Any) -> None:
    return None


def _coco_api(dataset: dict[str, Any], faster: bool) -> Any:
    """An indexed ``COCO`` object of ``dataset`` (faster-coco-eval's or pycocotools')."""
    if faster:
        from faster_coco_eval import COCO

        return COCO(dataset, print_function=_quiet)
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = dataset
        api.createIndex()
    return api


def _result(iou_type: str, ev: Any, mdets: list[int], matched: dict[int, int]) -> CocoEvalResult:
    precision = np.asarray(ev.eval["precision"], dtype=np.float64)
    recall = np.asarray(ev.eval["recall"], dtype=np.float64)
    thresholds = np.asarray(ev.params.iouThrs, dtype=np.float64)
    return CocoEvalResult(
        iou_type=iou_type,
        stats=summarize(precision, recall, thresholds, mdets),
        precision=precision,
        recall=recall,
        cat_ids=[int(c) for c in ev.params.catIds],
        max_dets=mdets,
        iou_thresholds=thresholds,
        matched=matched,
    )


def _evaluate_faster(gt_api: Any, dt_api: Any, iou_type: str, mdets: list[int]) -> CocoEvalResult:
    from faster_coco_eval import COCOeval_faster

    ev = COCOeval_faster(gt_api, dt_api, iou_type, print_function=_quiet)
    ev.params.maxDets = list(mdets)
    ev.evaluate()
    ev.accumulate()
    matched = {}
    for key in ev.eval.get("matched", {}):
        d, g = key.split("_", 1)
        matched[int(d)] = int(g)
    return _result(iou_type, ev, mdets, matched)


def _evaluate_pycocotools(gt_api: Any, dt_api: Any, iou_type: str, mdets: list[int]) -> CocoEvalResult:
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt_api, dt_api, iou_type)
        ev.params.maxDets = list(mdets)
        ev.evaluate()
        ev.accumulate()
    matched = {}
    for e in ev.evalImgs:
        if e is None or e["aRng"] != ev.params.areaRng[0] or e["maxDet"] != mdets[-1]:
            continue
        for d, g in zip(e["dtIds"], e["dtMatches"][0], strict=True):
            if g > 0:
                matched[int(d)] = int(g)
    return _result(iou_type, ev, mdets, matched)
