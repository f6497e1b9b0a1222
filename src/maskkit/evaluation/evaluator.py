"""The composed default evaluator, ``build_metrics`` (the ``metrics.json`` dict) and ``inference_on_dataset``.

:class:`InstanceEvaluator` is :class:`~maskkit.evaluation.base.Evaluators` over one shared
:class:`~maskkit.evaluation.base.ImageStore` and the metric families asked for:
:class:`~maskkit.evaluation.ap.COCOEvaluator` (``bbox``/``segm``),
:class:`~maskkit.evaluation.ap.BoundaryEvaluator`, :class:`~maskkit.evaluation.matching.MatchingEvaluator`,
:class:`~maskkit.evaluation.panoptic.PanopticEvaluator`, :class:`~maskkit.evaluation.semantic.SemanticEvaluator`
and :class:`~maskkit.evaluation.confusion.ConfusionEvaluator`. Its ``evaluate()`` merges their sections and
adds ``per_class``, ``sizes``, ``counts`` and ``params`` (:func:`build_metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from maskkit.data.annotations import Category
from maskkit.evaluation import coco
from maskkit.evaluation.ap import BoundaryEvaluator, COCOEvaluator
from maskkit.evaluation.base import (
    DatasetEvaluator,
    Evaluators,
    ImageEvaluator,
    ImageStore,
    PreparedImage,
)
from maskkit.evaluation.confusion import ConfusionEvaluator
from maskkit.evaluation.matching import MatchingEvaluator
from maskkit.evaluation.panoptic import PanopticEvaluator
from maskkit.evaluation.report import jsonable
from maskkit.evaluation.semantic import SemanticEvaluator

EXTRAS = ("matching", "panoptic", "boundary", "semantic", "confusion")
DEFAULT_EXTRAS = ("matching", "panoptic", "boundary", "confusion")
SIZE_KEYS = {"small": "APs", "medium": "APm", "large": "APl"}

__all__ = ["DEFAULT_EXTRAS", "EXTRAS", "DatasetEvaluator", "Evaluators", "InstanceEvaluator", "build_evaluators",
           "build_metrics", "inference_on_dataset"]


class InstanceEvaluator(Evaluators):
    """COCO AP (bbox, segm) plus matching / panoptic / Boundary AP / semantic metrics, streaming on RLE.

    ``process(inputs, outputs)``: see :class:`~maskkit.evaluation.base.ImageStore`.

    Args:
        categories: the dataset's categories (``Category`` or ``{"id", "name"}`` dicts); by default the
            GT labels seen, named by their ids.
        max_dets: COCO max detections per image (see :func:`coco.normalise_max_dets`).
        extras: which of ``matching``, ``panoptic``, ``boundary``, ``semantic`` and ``confusion`` (the
            class confusion of matched instances, :meth:`class_confusion`) to compute (masks needed).
        score_threshold: predictions kept for matching, panoptic, semantic and the confusion matrix
            (COCO AP always uses every prediction).
        dilation_ratio: Boundary AP's boundary width (fraction of the image diagonal).
        backend: ``"faster"`` (faster-coco-eval) or ``"pycocotools"``.
        iou_types: the COCO evaluations to run, ``bbox`` and/or ``segm`` (``segm`` needs masks on
            both sides; it is skipped with a note otherwise).
        detection_areas: which area puts a prediction into a size bucket, one of
            :data:`coco.DETECTION_AREAS`: ``"detectron2"`` (box area for bbox, mask area for segm),
            ``"box"`` or ``"mask"`` (that area everywhere: pycocotools' ``loadRes`` on a results
            file, see :func:`coco.loadres_areas`).
    """

    def __init__(
        self,
        categories: Sequence[Category | dict[str, Any]] | None = None,
        max_dets: Iterable[int] | None = None,
        extras: Iterable[str] = DEFAULT_EXTRAS,
        score_threshold: float = 0.5,
        dilation_ratio: float = 0.02,
        backend: str = "faster",
        iou_types: Iterable[str] = coco.IOU_TYPES,
        detection_areas: str = "detectron2",
    ) -> None:
        self.extras = tuple(extras)
        unknown = set(self.extras) - set(EXTRAS)
        if unknown:
            raise ValueError(f"unknown extras {sorted(unknown)}; choose from {EXTRAS}")
        self.store = ImageStore(categories)
        self.categories = self.store.categories
        self.score_threshold = float(score_threshold)
        self.dilation_ratio = dilation_ratio
        self.coco = COCOEvaluator(self.store, iou_types, max_dets, backend, detection_areas)
        self.boundary = None
        if "boundary" in self.extras and "segm" in self.coco.iou_types:
            self.boundary = BoundaryEvaluator(self.store, dilation_ratio, max_dets, backend, detection_areas)
        streaming = {"matching": MatchingEvaluator, "panoptic": PanopticEvaluator, "semantic": SemanticEvaluator,
                     "confusion": ConfusionEvaluator}
        self.families: dict[str, ImageEvaluator] = {
            name: cls(self.store, self.score_threshold) for name, cls in streaming.items() if name in self.extras}
        super().__init__([self.coco, *([self.boundary] if self.boundary else []), *self.families.values()])
        self.notes: list[str] = []

    # the settings callers and build_metrics read
    @property
    def max_dets(self) -> list[int]:
        return self.coco.max_dets

    @property
    def backend(self) -> str:
        return self.coco.backend

    @property
    def iou_types(self) -> tuple[str, ...]:
        return self.coco.iou_types

    @property
    def detection_areas(self) -> str:
        return self.coco.detection_areas

    @property
    def images(self) -> list[PreparedImage]:
        """The processed images (compact columns), in processing order."""
        return self.store.images

    @property
    def coco_results(self) -> dict[str, coco.CocoEvalResult]:
        """The COCO evaluations of the last :meth:`evaluate` (``bbox``, ``segm``, ``boundary``)."""
        out = dict(self.coco.results)
        if self.boundary is not None and self.boundary.result is not None:
            out["boundary"] = self.boundary.result
        return out

    @property
    def all_notes(self) -> list[str]:
        """``notes`` (given by the caller) plus those of the last :meth:`evaluate`."""
        return [*self.notes, *(n for e in self.evaluators if isinstance(e, ImageEvaluator) for n in e.notes)]

    def category_dicts(self) -> list[dict[str, Any]]:
        """The categories as ``{"id", "name"}`` dicts (given, or the GT labels seen)."""
        return self.store.category_dicts()

    def coco_inputs(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The COCO ground-truth dict and the COCO results list of everything processed."""
        return self.store.coco_inputs()

    def evaluate(self) -> dict[str, Any]:
        return build_metrics(self, super().evaluate())

    def errors(self, k: int = 8, iou_type: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """The worst errors at IoU 0.5 (after :meth:`evaluate`), see :meth:`COCOEvaluator.errors`."""
        return self.coco.errors(k, iou_type)

    def class_confusion(self) -> tuple[list[str], np.ndarray]:
        """See :meth:`ConfusionEvaluator.class_confusion` (all zeros without the ``confusion`` extra)."""
        family = self.families.get("confusion")
        if not isinstance(family, ConfusionEvaluator):  # (the "confusion" family is one when present)
            family = ConfusionEvaluator(self.store, self.score_threshold)
        return family.class_confusion()


def build_evaluators(categories: Sequence[Category | dict[str, Any]] | None = None, **options: Any
                     ) -> InstanceEvaluator:
    """The composed evaluator of every family asked for (options as :class:`InstanceEvaluator`)."""
    return InstanceEvaluator(categories, **options)


def build_metrics(ev: InstanceEvaluator, sections: dict[str, Any]) -> dict[str, Any]:
    """Assemble the ``metrics.json`` dict (JSON-safe, see :func:`report.jsonable`) from the families'
    ``sections``: they, then ``per_class``, ``sizes``, ``counts`` and ``params``."""
    results = ev.coco_results
    metrics: dict[str, Any] = dict(sections)
    images = ev.images
    gt_labels = np.concatenate([im.gt.labels[~im.gt.gt_crowd] for im in images]) if images else np.zeros(0)
    dt_labels = np.concatenate([im.dt.labels for im in images]) if images else np.zeros(0)
    gt_ids, gt_n = np.unique(gt_labels, return_counts=True)
    dt_ids, dt_n = np.unique(dt_labels, return_counts=True)
    gt_count = dict(zip(gt_ids.tolist(), gt_n.tolist(), strict=True))
    dt_count = dict(zip(dt_ids.tolist(), dt_n.tolist(), strict=True))
    per_type = {t: r.per_class() for t, r in results.items()}
    pq = sections.get("panoptic", {}).get("per_class", {})
    f1 = sections.get("matching", {}).get("per_class", {})
    per_class = []
    for cat in ev.category_dicts():
        cid = int(cat["id"])
        row: dict[str, Any] = {"id": cid, "name": cat["name"], "num_gt": gt_count.get(cid, 0),
                               "num_pred": dt_count.get(cid, 0)}
        for t, pc in per_type.items():
            row[t] = pc.get(cid, dict.fromkeys(coco.CLASS_KEYS))
        if pq:
            row["PQ"] = pq[cid]["pq"] if cid in pq else None
        if f1:
            row["F1"] = f1[cid]["f1_mean"] if cid in f1 else None
        per_class.append(row)
    metrics["per_class"] = per_class
    metrics["sizes"] = _sizes(ev, results)
    metrics["counts"] = {
        "images": len(images),
        "gt_instances": len(gt_labels),
        "gt_crowd": sum(int(im.gt.gt_crowd.sum()) for im in images),
        "pred_instances": len(dt_labels),
    }
    metrics["params"] = {
        "max_dets": list(ev.max_dets),
        "iou_thresholds": [round(float(t), 2) for t in np.linspace(0.5, 0.95, 10)],
        "area_ranges": {k: list(v) for k, v in coco.AREA_RANGES.items()},
        "backend": coco.backend_name() if ev.backend == "faster" else "pycocotools",
        "score_threshold": ev.score_threshold,
        "detection_areas": ev.detection_areas,
        "notes": ev.all_notes,
    }
    out: dict[str, Any] = jsonable(metrics)
    return out


def _sizes(ev: InstanceEvaluator, results: dict[str, coco.CocoEvalResult]) -> dict[str, Any]:
    """GT / prediction counts (``lo <= area < hi``, so each counts once) and AP per COCO area range."""
    images = ev.images
    gt_areas = np.concatenate([im.gt.areas[~im.gt.gt_crowd] for im in images]) if images else np.zeros(0)
    if ev.detection_areas == "box":  # the areas the evaluation used (see coco.DETECTION_AREAS)
        dt_areas = np.concatenate([_box_areas(im.dt.boxes) for im in images]) if images else np.zeros(0)
    else:
        dt_areas = np.concatenate([im.dt.areas for im in images]) if images else np.zeros(0)
    out = {}
    for name, (lo, hi) in coco.AREA_RANGES.items():
        row: dict[str, Any] = {
            "area_range": [lo, hi],
            "num_gt": int(np.count_nonzero((gt_areas >= lo) & (gt_areas < hi))),
            "num_pred": int(np.count_nonzero((dt_areas >= lo) & (dt_areas < hi))),
        }
        for t, r in results.items():
            row[f"{t}_AP"] = r.stats[SIZE_KEYS[name]]
        out[name] = row
    return out


def _box_areas(xyxy: np.ndarray) -> np.ndarray:
    """``w * h`` of XYXY boxes, as the COCO ``[x, y, w, h]`` the evaluation gets."""
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def inference_on_dataset(
    predict: Callable[[list[Any]], Sequence[Any]],
    data: Iterable[Iterable[Any]],
    evaluator: DatasetEvaluator,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> dict[str, Any]:
    """The one predict-then-evaluate loop: ``evaluator.reset()``, then for each batch of ground-truth
    inputs in ``data`` ``evaluator.process(batch, predict(batch))``, then ``evaluator.evaluate()``.

    ``predict`` maps a batch (a list) of inputs (e.g. ``ImageRecord``\\ s) to their outputs (predicted
    ``Instances``); ``progress`` optionally wraps the batches (e.g. a progress bar).
    """
    evaluator.reset()
    for batch in progress(data) if progress is not None else data:
        batch = list(batch)
        evaluator.process(batch, predict(batch))
    return evaluator.evaluate()
