"""Detectron2-style streaming evaluators.

``DatasetEvaluator`` is the interface (``reset()``, ``process(inputs, outputs)``, ``evaluate()``);
``InstanceEvaluator`` computes COCO box/mask AP plus matching, panoptic, Boundary AP and semantic
metrics; ``Evaluators`` runs several and merges their dicts.

``InstanceEvaluator`` keeps per image only compact columns (labels, scores, boxes, areas and the
compressed RLE bytes of each mask), so 5,000 images × 100 instances never need a dense
``N×H×W`` array; streaming metrics (matching, panoptic, semantic) are accumulated in ``process``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from maskkit.data.annotations import Category, ImageRecord
from maskkit.errors import DataError
from maskkit.evaluation import coco
from maskkit.perf import gc_paused
from maskkit.structures import Instances, Masks
from maskkit.structures.masks import masks_iou

EXTRAS = ("matching", "panoptic", "boundary", "semantic", "confusion")
DEFAULT_EXTRAS = ("matching", "panoptic", "boundary", "confusion")


class DatasetEvaluator:
    """Base class: ``reset()``, then ``process(inputs, outputs)`` per batch, then ``evaluate()``."""

    def reset(self) -> None:
        """Forget everything processed so far."""

    def process(self, inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
        """Take one batch: ``inputs`` (ground truth) and ``outputs`` (predictions), aligned."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        """Metrics of everything processed (a ``metrics.json``-shaped dict)."""
        raise NotImplementedError


class Evaluators(DatasetEvaluator):
    """Several evaluators fed the same batches; their result dicts are merged (keys must not clash)."""

    def __init__(self, evaluators: Iterable[DatasetEvaluator]) -> None:
        self.evaluators = list(evaluators)

    def reset(self) -> None:
        for e in self.evaluators:
            e.reset()

    def process(self, inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
        for e in self.evaluators:
            e.process(inputs, outputs)

    def evaluate(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for e in self.evaluators:
            for key, value in e.evaluate().items():
                if key in merged:
                    raise ValueError(f"two evaluators both report {key!r}")
                merged[key] = value
        return merged


@dataclass
class _Columns:
    """One image's instances, compactly: arrays plus compressed RLE bytes (``None`` without masks)."""

    labels: np.ndarray
    boxes: np.ndarray  # XYXY float64
    areas: np.ndarray  # float64: COCO "area" for GT, mask (else box) area for predictions
    counts: list[bytes] | None
    scores: np.ndarray | None = None
    iscrowd: np.ndarray | None = None
    ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def masks(self, size: tuple[int, int]) -> Masks:
        assert self.counts is not None
        return Masks.from_rles(({"size": list(size), "counts": c} for c in self.counts), *size)


@dataclass
class _Image:
    image_id: int
    size: tuple[int, int]
    gt: _Columns
    dt: _Columns


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor from a model
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _rle_bytes(masks: Any, size: tuple[int, int]) -> tuple[list[bytes], list[dict[str, Any]]]:
    """Compressed RLE counts of a ``Masks`` or a list of RLE dicts (checked against the image size)."""
    if isinstance(masks, Masks):
        if len(masks) and (masks.height, masks.width) != tuple(size):
            raise ValueError(f"masks are {masks.height}x{masks.width}, image is {size[0]}x{size[1]}")
        rles = masks.to_rles()
    else:
        rles = Masks.from_rles(list(masks), *size).to_rles()
    return [r["counts"] for r in rles], rles


def _columns(inst: Instances, size: tuple[int, int], is_gt: bool) -> _Columns:
    n = len(inst)
    masks = inst.get("masks")
    counts, rles = _rle_bytes(masks, size) if masks is not None else (None if n else [], [])
    if inst.has("boxes"):
        boxes = _numpy(inst.boxes).astype(np.float64).reshape(n, 4)
    elif rles:
        boxes = coco.xywh_to_xyxy64(mask_utils.toBbox(rles))
    else:
        raise ValueError("instances need boxes or masks")
    box_areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    areas = coco.rle_areas(rles) if rles else box_areas
    cols = _Columns(labels=_numpy(inst.labels).astype(np.int64).reshape(n), boxes=boxes, areas=areas, counts=counts)
    if is_gt:
        extras = inst.get("extras")
        if extras is not None:  # the dataset's own COCO "area" wins (pycocotools uses it)
            given = [e.get("area") if isinstance(e, dict) else None for e in extras]
            cols.areas = np.array([a if isinstance(a, int | float) and not isinstance(a, bool) else d
                                   for a, d in zip(given, areas, strict=True)], dtype=np.float64)
        crowd = inst.get("iscrowd")
        cols.iscrowd = np.zeros(n, bool) if crowd is None else _numpy(crowd).astype(bool).reshape(n)
        ids = inst.get("ids")
        cols.ids = np.arange(1, n + 1) if ids is None else _numpy(ids).astype(np.int64).reshape(n)
    else:
        scores = inst.get("scores")
        cols.scores = np.ones(n, np.float64) if scores is None else _numpy(scores).astype(np.float64).reshape(n)
    return cols


def _ground_truth(item: Any) -> tuple[int, tuple[int, int], Instances]:
    if isinstance(item, ImageRecord):
        return item.id, (item.height, item.width), item.instances
    if isinstance(item, dict) and "image_id" in item and "instances" in item:
        inst = item["instances"]
        size = (int(item.get("height", inst.image_size[0])), int(item.get("width", inst.image_size[1])))
        return int(item["image_id"]), size, inst
    raise TypeError("inputs must be ImageRecords or dicts with 'image_id' and 'instances'")


class _StreamingMetrics:
    """Per-image metrics accumulated in ``process``: matching, panoptic, semantic, class confusion."""

    def __init__(self, extras: Sequence[str], score_threshold: float, categories: list[dict[str, Any]]) -> None:
        from maskkit.evaluation.matching import MatchingAccumulator
        from maskkit.evaluation.panoptic import PanopticAccumulator

        self.score_threshold = score_threshold
        self.matching = MatchingAccumulator(class_aware=len(categories) > 1) if "matching" in extras else None
        self.panoptic = PanopticAccumulator() if "panoptic" in extras else None
        self.semantic = None
        self._class_index = {c["id"]: i + 1 for i, c in enumerate(categories)}  # 0 = background
        if "semantic" in extras and categories:
            from maskkit.evaluation.semantic import SemanticAccumulator

            names = ["background", *(c["name"] for c in categories)]
            self._ignore = 255 if len(names) < 255 else -1
            self.semantic = SemanticAccumulator(len(names), ignore_index=self._ignore, class_names=names)
        self.confusion = "confusion" in extras
        self.pairs: list[tuple[int, int]] = []
        """(GT category id, predicted category id) of class-agnostic matches at IoU 0.5; -1 = none."""

    @property
    def active(self) -> bool:
        return any((self.matching, self.panoptic, self.semantic, self.confusion))

    def add(self, im: _Image) -> None:
        from maskkit.evaluation.matching import match_at_threshold

        g, d = im.gt, im.dt
        keep = np.flatnonzero(d.scores >= self.score_threshold)
        regular = np.flatnonzero(~g.iscrowd)
        gm, dm = g.masks(im.size), d.masks(im.size)[keep]
        gl, dl = g.labels, d.labels[keep]
        if self.matching is not None:
            self.matching.add(gm[regular], dm, gl[regular], dl)
        if self.panoptic is not None:
            self.panoptic.add(gm, dm, gl, dl, g.iscrowd)
        if self.confusion:
            gi, di = match_at_threshold(masks_iou(gm[regular], dm), 0.5)
            lone_g = np.setdiff1d(np.arange(len(regular)), gi)
            lone_d = np.setdiff1d(np.arange(len(keep)), di)
            self.pairs += [(int(a), int(b)) for a, b in zip(gl[regular][gi], dl[di], strict=True)]
            self.pairs += [(int(a), -1) for a in gl[regular][lone_g]] + [(-1, int(b)) for b in dl[lone_d]]
        if self.semantic is not None:
            self.semantic.add(self._class_map(gm, gl, g.iscrowd), self._class_map(dm, dl, None, d.scores[keep]))

    def _class_map(self, masks: Masks, labels: np.ndarray, crowd: np.ndarray | None,
                   scores: np.ndarray | None = None) -> np.ndarray:
        """Paint instances into an ``H×W`` class-index map (higher scores on top; crowd GT = 255)."""
        out = np.zeros((masks.height, masks.width), dtype=np.uint8 if self._ignore == 255 else np.int32)
        order = np.argsort(scores, kind="stable") if scores is not None else range(len(masks))
        for i in order:
            value = self._ignore if crowd is not None and crowd[i] else self._class_index.get(int(labels[i]), 0)
            out[masks.bitmap(int(i))] = value
        return out

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.matching is not None and self.matching.num_images:
            out["matching"] = {**self.matching.result(), "score_threshold": self.score_threshold}
        if self.panoptic is not None and self.panoptic.num_images:
            out["panoptic"] = {**self.panoptic.result(), "score_threshold": self.score_threshold}
        if self.semantic is not None:
            out["semantic"] = {**self.semantic.result(), "score_threshold": self.score_threshold}
        return out


class InstanceEvaluator(DatasetEvaluator):
    """COCO AP (bbox, segm) plus matching / panoptic / Boundary AP / semantic metrics, streaming on RLE.

    ``process(inputs, outputs)``: ``inputs`` are ground-truth ``ImageRecord``s (or dicts with
    ``image_id`` and ``instances``), ``outputs`` predicted ``Instances`` (``boxes`` XYXY, ``labels`` =
    dataset category ids, ``scores``, ``masks`` as ``Masks`` or a list of RLE dicts); a dict output
    with an ``"instances"`` key (Detectron2 style) works too.

    Args:
        categories: the dataset's categories (``Category`` or ``{"id", "name"}`` dicts); by default the
            GT labels seen, named by their ids.
        max_dets: COCO max detections per image (see :func:`coco.normalise_max_dets`).
        extras: which of ``matching``, ``panoptic``, ``boundary``, ``semantic`` and ``confusion`` (the
            class confusion of matched instances, :meth:`class_confusion`) to compute (masks needed).
        score_threshold: predictions kept for matching, panoptic, semantic and the confusion matrix
            (COCO AP always uses every prediction).
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
        self.categories = [c if isinstance(c, dict) else {"id": c.id, "name": c.name} for c in categories or []]
        self.max_dets = coco.normalise_max_dets(max_dets)
        self.extras = tuple(extras)
        unknown = set(self.extras) - set(EXTRAS)
        if unknown:
            raise ValueError(f"unknown extras {sorted(unknown)}; choose from {EXTRAS}")
        self.score_threshold = float(score_threshold)
        self.dilation_ratio = dilation_ratio
        self.backend = backend
        self.iou_types = tuple(iou_types)
        if not self.iou_types or set(self.iou_types) - set(coco.IOU_TYPES):
            raise ValueError(f"iou_types must be a non-empty subset of {coco.IOU_TYPES}, got {self.iou_types}")
        if detection_areas not in coco.DETECTION_AREAS:
            raise ValueError(f"detection_areas must be one of {coco.DETECTION_AREAS}, got {detection_areas!r}")
        self.detection_areas = detection_areas
        self.notes: list[str] = []
        self.reset()

    def reset(self) -> None:
        self._images: list[_Image] = []
        self._eval_notes: list[str] = []
        self._seen: set[int] = set()
        self._gt_masks = self._dt_masks = True
        self.coco_results: dict[str, coco.CocoEvalResult] = {}
        self._streaming = _StreamingMetrics(self.extras, self.score_threshold, self.categories)

    # -- input ----------------------------------------------------------------------------------
    def process(self, inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        for item, pred in zip(inputs, outputs, strict=True):
            image_id, size, gt = _ground_truth(item)
            if isinstance(pred, dict):
                pred = pred["instances"]
            if image_id in self._seen:
                raise DataError("image processed twice", image=image_id)
            self._seen.add(image_id)
            try:
                g, d = _columns(gt, size, True), _columns(pred, size, False)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise DataError(f"cannot evaluate: {exc}", image=image_id) from exc
            self._check_labels(image_id, g, d)
            self._gt_masks &= g.counts is not None or not len(g)
            self._dt_masks &= d.counts is not None or not len(d)
            entry = _Image(image_id, size, g, d)
            self._images.append(entry)
            if self._streaming.active and g.counts is not None and d.counts is not None:
                self._streaming.add(entry)

    def _check_labels(self, image_id: int, g: _Columns, d: _Columns) -> None:
        if not self.categories:
            return
        known = {c["id"] for c in self.categories}
        for what, cols in (("ground truth", g), ("prediction", d)):
            bad = [int(x) for x in np.unique(cols.labels) if int(x) not in known]
            if bad:
                raise DataError(f"{what} has unknown category ids {bad} (known: {sorted(known)})", image=image_id)

    # -- COCO dicts -----------------------------------------------------------------------------
    def category_dicts(self) -> list[dict[str, Any]]:
        """The categories as ``{"id", "name"}`` dicts (given, or the GT labels seen)."""
        if self.categories:
            return self.categories
        ids = sorted({int(x) for im in self._images for x in im.gt.labels})
        return [{"id": i, "name": str(i)} for i in ids]

    def coco_inputs(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The COCO ground-truth dict and the COCO results list of everything processed."""
        images, anns, results = [], [], []
        with_masks = self._gt_masks and self._dt_masks
        for im in self._images:
            images.append({"id": im.image_id, "height": im.size[0], "width": im.size[1]})
            g, d = im.gt, im.dt
            anns += coco.gt_annotations(im.image_id, im.size, g.labels, g.boxes, g.counts if with_masks else None,
                                        g.areas, g.iscrowd, len(anns) + 1)
            results += coco.detection_annotations(im.image_id, im.size, d.labels, d.scores, d.boxes,
                                                  d.counts if with_masks else None)
        return {"images": images, "categories": self.category_dicts(), "annotations": anns}, results

    # -- output ---------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        from maskkit.evaluation.report import build_metrics

        with gc_paused():
            gt, results = self.coco_inputs()
        iou_types = [t for t in self.iou_types if t == "bbox" or (self._gt_masks and self._dt_masks)]
        self._eval_notes = []
        if "segm" in self.iou_types and "segm" not in iou_types:
            self._eval_notes.append("segm AP skipped: " + ("ground truth" if not self._gt_masks else "predictions")
                              + " without masks")
        self.coco_results = {}
        for t in iou_types:
            dets = coco.prepare_detections(results, t, self.detection_areas)
            self.coco_results[t] = coco.coco_evaluate(gt, dets, t, self.max_dets, self.backend, copy_detections=False)
        if "boundary" in self.extras and "segm" in iou_types:
            from maskkit.evaluation.boundary import boundary_evaluate

            self.coco_results["boundary"] = boundary_evaluate(gt, results, self.dilation_ratio, self.max_dets,
                                                              self.backend, self.detection_areas)
        return build_metrics(self, gt, self._streaming.result())

    def errors(self, k: int = 8, iou_type: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """The worst errors at IoU 0.5 (after :meth:`evaluate`).

        ``false_positives``: the ``k`` highest-scored unmatched predictions; ``false_negatives``: the
        ``k`` largest unmatched (non-crowd) ground truths. Each item: ``image_id``, ``category_id``,
        ``box`` (XYXY), ``rle`` (or ``None``), ``area`` and, for predictions, ``score``.
        """
        if not self.coco_results:
            raise RuntimeError("call evaluate() first")
        iou_type = iou_type or ("segm" if "segm" in self.coco_results else "bbox")
        matched = self.coco_results[iou_type].matched
        matched_gt = set(matched.values())
        fps, fns = [], []
        det_id = gt_id = 0
        for im in self._images:
            for cols, is_gt in ((im.gt, True), (im.dt, False)):
                for i in range(len(cols)):
                    if is_gt:
                        gt_id += 1
                        if gt_id in matched_gt or cols.iscrowd[i]:
                            continue
                    else:
                        det_id += 1
                        if det_id in matched:
                            continue
                    item = {
                        "image_id": im.image_id,
                        "category_id": int(cols.labels[i]),
                        "box": cols.boxes[i].tolist(),
                        "rle": {"size": list(im.size), "counts": cols.counts[i]} if cols.counts is not None else None,
                    }
                    item["area"] = float(cols.areas[i])
                    if is_gt:
                        fns.append(item)
                    else:
                        fps.append({**item, "score": float(cols.scores[i])})
        fps.sort(key=lambda x: (-x["score"], -x["area"]))  # ties (label images score 1.0): larger first
        fns.sort(key=lambda x: -x["area"])
        return {"false_positives": fps[:k], "false_negatives": fns[:k]}

    def class_confusion(self) -> tuple[list[str], np.ndarray]:
        """Class confusion of class-agnostic mask matches at IoU 0.5 (predictions >= score_threshold).

        Rows are GT classes, columns predicted classes; the last row/column ``background`` counts
        unmatched predictions (FP) and unmatched GT (FN). Returns names and the ``(K+1)×(K+1)`` matrix.
        """
        from maskkit.evaluation.semantic import SemanticAccumulator

        cats = self.category_dicts()
        names = [c["name"] for c in cats] + ["background"]
        index = {c["id"]: i for i, c in enumerate(cats)}
        acc = SemanticAccumulator(len(names), ignore_index=None, class_names=names)
        pairs = np.array(self._streaming.pairs, dtype=np.int64).reshape(-1, 2)
        acc.add(*(np.array([index.get(int(v), len(cats)) for v in col], dtype=np.int64) for col in pairs.T))
        return names, acc.confusion.copy()

    @property
    def all_notes(self) -> list[str]:
        """``notes`` (given by the caller) plus those of the last :meth:`evaluate`."""
        return [*self.notes, *self._eval_notes]

    @property
    def images(self) -> list[_Image]:
        """The processed images (compact columns), in processing order."""
        return self._images
