"""The COCO AP families as evaluators: box/mask AP (:class:`COCOEvaluator`) and Boundary AP
(:class:`BoundaryEvaluator`), both on the shared :class:`~maskkit.evaluation.base.ImageStore`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from maskkit.evaluation import coco
from maskkit.evaluation.base import ImageEvaluator, ImageStore
from maskkit.evaluation.boundary import boundary_evaluate


class COCOEvaluator(ImageEvaluator):
    """The ``bbox`` and ``segm`` sections (COCO AP through faster-coco-eval or pycocotools).

    Args:
        iou_types: ``bbox`` and/or ``segm`` (``segm`` needs masks on both sides; skipped with a note).
        max_dets: COCO max detections per image (see :func:`coco.normalise_max_dets`).
        backend: ``"faster"`` (faster-coco-eval) or ``"pycocotools"``.
        detection_areas: which area puts a prediction into a size bucket, one of
            :data:`coco.DETECTION_AREAS` (see the :mod:`~maskkit.evaluation.coco` docstring).

    ``on_result``, when set, is called with each :class:`~maskkit.evaluation.coco.CocoEvalResult` as
    soon as it is computed (e.g. to draw its figure while the next type is evaluated).
    """

    def __init__(self, store: ImageStore | None = None, iou_types: Iterable[str] = coco.IOU_TYPES,
                 max_dets: Iterable[int] | None = None, backend: str = "faster",
                 detection_areas: str = "detectron2") -> None:
        super().__init__(store)
        self.iou_types = tuple(iou_types)
        if not self.iou_types or set(self.iou_types) - set(coco.IOU_TYPES):
            raise ValueError(f"iou_types must be a non-empty subset of {coco.IOU_TYPES}, got {self.iou_types}")
        if detection_areas not in coco.DETECTION_AREAS:
            raise ValueError(f"detection_areas must be one of {coco.DETECTION_AREAS}, got {detection_areas!r}")
        self.max_dets = coco.normalise_max_dets(max_dets)
        self.backend = backend
        self.detection_areas = detection_areas
        self.results: dict[str, coco.CocoEvalResult] = {}
        self.on_result: Callable[[coco.CocoEvalResult], None] | None = None

    def reset(self) -> None:
        super().reset()
        self.results = {}

    def evaluate(self) -> dict[str, Any]:
        store = self.store
        gt, results = store.coco_inputs()
        iou_types = [t for t in self.iou_types if t == "bbox" or store.with_masks]
        self.notes = []
        m = self.max_dets[-1]
        crowded = sum(len(im.dt) > m for im in store.images)
        if crowded:
            self.notes.append(f"{crowded} images have more than {m} predictions: COCO AP keeps the {m} best; "
                              "use --max-dets 1,10,100,1000 for dense objects")
        if "segm" in self.iou_types and "segm" not in iou_types:
            self.notes.append("segm AP skipped: " + ("ground truth" if not store.gt_masks else "predictions")
                              + " without masks")
        detections: dict[str, list[dict[str, Any]]] = {}
        for t in iou_types:
            if t == "bbox" and "segm" in iou_types and self.detection_areas != "detectron2":
                # the same area for both types and every result has a box and a mask (store.with_masks):
                # the segm detections serve bbox too, indexed once
                detections[t] = detections.setdefault("segm", coco.prepare_detections(results, "segm",
                                                                                      self.detection_areas))
            elif t not in detections:
                detections[t] = coco.prepare_detections(results, t, self.detection_areas)
        detections = {t: detections[t] for t in iou_types}  # evaluated in the order asked for
        self.results = coco.coco_evaluate_types(gt, detections, self.max_dets, self.backend, copy_detections=False,
                                                on_result=self.on_result)
        return {t: dict(r.stats) for t, r in self.results.items()}

    def errors(self, k: int = 8, iou_type: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """The worst errors at IoU 0.5 (after :meth:`evaluate`).

        ``false_positives``: the ``k`` highest-scored unmatched predictions (ties: larger first);
        ``false_negatives``: the ``k`` largest unmatched (non-crowd) ground truths. Each item:
        ``image_id``, ``category_id``, ``box`` (XYXY), ``rle`` (or ``None``), ``area`` and, for
        predictions, ``score``.
        """
        if not self.results:
            raise RuntimeError("call evaluate() first")
        iou_type = iou_type or ("segm" if "segm" in self.results else "bbox")
        matched = self.results[iou_type].matched
        images = self.store.images

        def column(side: str, name: str) -> np.ndarray:
            parts = [getattr(getattr(im, side), name) for im in images]
            return np.concatenate(parts) if parts else np.zeros(0)

        n_gt = [len(im.gt) for im in images]
        n_dt = [len(im.dt) for im in images]
        gt_hit = np.zeros(sum(n_gt) + 1, dtype=bool)  # annotation ids are 1..N in image order
        gt_hit[np.fromiter(matched.values(), dtype=np.int64, count=len(matched))] = True
        dt_hit = np.zeros(sum(n_dt) + 1, dtype=bool)
        dt_hit[np.fromiter(matched.keys(), dtype=np.int64, count=len(matched))] = True
        gt_areas, dt_areas, scores = column("gt", "areas"), column("dt", "areas"), column("dt", "scores")
        crowd = column("gt", "iscrowd").astype(bool)
        fn = np.flatnonzero(~gt_hit[1:] & ~crowd)
        fn = fn[np.argsort(-gt_areas[fn], kind="stable")][:k]
        fp = np.flatnonzero(~dt_hit[1:])
        fp = fp[np.lexsort((-dt_areas[fp], -scores[fp]))][:k]

        def items(side: str, counts: list[int], chosen: np.ndarray) -> list[dict[str, Any]]:
            owner = np.repeat(np.arange(len(images)), counts)
            start = np.cumsum([0, *counts])
            out = []
            for j in chosen.tolist():
                im = images[owner[j]]
                cols, i = getattr(im, side), j - start[owner[j]]
                item = {"image_id": im.image_id, "category_id": int(cols.labels[i]), "box": cols.boxes[i].tolist(),
                        "rle": {"size": list(im.size), "counts": cols.counts[i]} if cols.counts is not None else None,
                        "area": float(cols.areas[i])}
                if side == "dt":
                    item["score"] = float(cols.scores[i])
                out.append(item)
            return out

        return {"false_positives": items("dt", n_dt, fp), "false_negatives": items("gt", n_gt, fn)}


class BoundaryEvaluator(ImageEvaluator):
    """The ``boundary`` section: Boundary AP (:func:`~maskkit.evaluation.boundary.boundary_evaluate`) with
    ``dilation_ratio``; nothing without masks on both sides. ``on_result``: as :class:`COCOEvaluator`'s."""

    def __init__(self, store: ImageStore | None = None, dilation_ratio: float = 0.02,
                 max_dets: Iterable[int] | None = None, backend: str = "faster",
                 detection_areas: str = "detectron2") -> None:
        super().__init__(store)
        self.dilation_ratio = dilation_ratio
        self.max_dets = coco.normalise_max_dets(max_dets)
        self.backend = backend
        self.detection_areas = detection_areas
        self.result: coco.CocoEvalResult | None = None
        self.on_result: Callable[[coco.CocoEvalResult], None] | None = None

    def reset(self) -> None:
        super().reset()
        self.result = None

    def evaluate(self) -> dict[str, Any]:
        self.result = None
        if not self.store.with_masks:
            return {}
        gt, results = self.store.coco_inputs()
        self.result = boundary_evaluate(gt, results, self.dilation_ratio, self.max_dets, self.backend,
                                        self.detection_areas)
        if self.on_result is not None:
            self.on_result(self.result)
        return {"boundary": {**self.result.stats, "dilation_ratio": self.dilation_ratio}}
