"""Detectron2-style evaluator interface and the per-image preparation the metric families share.

``DatasetEvaluator`` is the interface (``reset()``, ``process(inputs, outputs)``, ``evaluate()``);
``Evaluators`` feeds several the same batches and merges their dicts. Each metric family (COCO AP,
Boundary AP, matching, panoptic, semantic, confusion) is an :class:`ImageEvaluator`: it reads
:class:`PreparedImage`\\ s from an :class:`ImageStore`, which turns every ``(ground truth, prediction)``
pair once into compact columns (labels, scores, boxes, areas and the compressed RLE bytes of each
mask), so 5,000 images × 100 instances never need a dense ``N×H×W`` array, and evaluators sharing one
store never convert a mask twice. The class-agnostic mask IoU of the kept predictions
(:meth:`PreparedImage.pairing`) is also computed once per image and shared.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from maskkit.data.annotations import Category, ImageRecord
from maskkit.errors import DataError
from maskkit.evaluation import coco
from maskkit.perf import gc_paused
from maskkit.structures import Instances, Masks
from maskkit.structures.masks import RLEMask


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
    """Several evaluators fed the same batches; their result dicts are merged (keys must not clash).

    :class:`ImageEvaluator`\\ s sharing one :class:`ImageStore` get each batch prepared once.
    """

    def __init__(self, evaluators: Iterable[DatasetEvaluator]) -> None:
        self.evaluators = list(evaluators)

    def reset(self) -> None:
        stores = {id(e.store): e.store for e in self.evaluators if isinstance(e, ImageEvaluator)}
        for store in stores.values():
            store.reset()
        for e in self.evaluators:
            e.reset()

    def process(self, inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
        prepared: dict[int, list[PreparedImage]] = {}
        for e in self.evaluators:
            if isinstance(e, ImageEvaluator):
                key = id(e.store)
                if key not in prepared:
                    prepared[key] = e.store.prepare(inputs, outputs)
                e.process_images(prepared[key])
            else:
                e.process(inputs, outputs)

    def evaluate(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for e in self.evaluators:
            for key, value in e.evaluate().items():
                if key in merged:
                    raise ValueError(f"two evaluators both report {key!r}")
                merged[key] = value
        return merged


# -- the shared preparation ---------------------------------------------------------------------------
@dataclass
class Columns:
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
        return Masks.from_rles(self.rles(size), *size)

    @property
    def gt_crowd(self) -> np.ndarray:
        """``iscrowd`` of ground-truth columns (always set for them)."""
        if self.iscrowd is None:
            raise ValueError("prediction columns have no iscrowd")
        return self.iscrowd

    @property
    def dt_scores(self) -> np.ndarray:
        """``scores`` of prediction columns (always set for them)."""
        if self.scores is None:
            raise ValueError("ground-truth columns have no scores")
        return self.scores

    def rles(self, size: tuple[int, int], index: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Compressed RLE dicts (all, or those at ``index``)."""
        assert self.counts is not None
        s = list(size)
        counts = self.counts if index is None else [self.counts[i] for i in index]
        return [{"size": s, "counts": c} for c in counts]


@dataclass
class Pairing:
    """Regular (non-crowd) GT × predictions scoring ``>= score_threshold`` of one image, with masks."""

    regular: np.ndarray  # indices of the non-crowd GT
    keep: np.ndarray  # indices of the kept predictions
    iou: np.ndarray  # class-agnostic mask IoU, len(regular) × len(keep)
    gt_areas: np.ndarray  # mask pixel areas of the regular GT
    pred_areas: np.ndarray  # ... and of the kept predictions


@dataclass
class PreparedImage:
    """One image's ground truth and predictions as :class:`Columns`."""

    image_id: int
    size: tuple[int, int]
    gt: Columns
    dt: Columns
    _pairings: dict[float, Pairing] = field(default_factory=dict, repr=False)

    @property
    def has_masks(self) -> bool:
        return self.gt.counts is not None and self.dt.counts is not None

    def pairing(self, score_threshold: float) -> Pairing:
        """The shared :class:`Pairing` (computed once per threshold, freed with the batch)."""
        p = self._pairings.get(score_threshold)
        if p is None:
            g, d = self.gt, self.dt
            regular = np.flatnonzero(~g.gt_crowd)
            keep = np.flatnonzero(d.dt_scores >= score_threshold)
            gr, dr = g.rles(self.size, regular), d.rles(self.size, keep)
            if len(gr) and len(dr):
                iou = np.asarray(mask_utils.iou(gr, dr, [0] * len(dr)), dtype=np.float64).reshape(len(gr), len(dr))
            else:
                iou = np.zeros((len(gr), len(dr)), dtype=np.float64)
            # a prediction's area is its mask's pixel count already (see _columns)
            p = Pairing(regular, keep, iou, coco.rle_areas(gr), d.areas[keep])
            self._pairings[score_threshold] = p
        return p


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor from a model
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _rle_bytes(masks: Any, size: tuple[int, int]) -> tuple[list[bytes], list[dict[str, Any]]]:
    """Compressed RLE counts of a ``Masks`` or a list of RLE dicts (checked against the image size)."""
    if isinstance(masks, Masks):
        if len(masks) and (masks.height, masks.width) != tuple(size):
            raise ValueError(f"masks are {masks.height}x{masks.width}, image is {size[0]}x{size[1]}")
        items = [m for m in masks.items if type(m) is RLEMask]
        kinds = {type(m.rle["counts"]) for m in items} if len(items) == len(masks.items) else None
        if kinds is not None and kinds <= {bytes}:  # compressed RLE as given: no conversion
            rles = [m.rle for m in items]
        elif kinds == {str}:  # compressed RLE strings as read from JSON: encoded, nothing else
            rles = [{"size": list(m.rle["size"]), "counts": m.rle["counts"].encode("ascii")} for m in items]
        else:
            rles = masks.to_rles()
    else:
        rles = Masks.from_rles(list(masks), *size).to_rles()
    return [r["counts"] for r in rles], rles


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of XYXY boxes (negative sides count as 0): a prediction's area when it has no mask."""
    areas: np.ndarray = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return areas


def _columns(inst: Instances, size: tuple[int, int], is_gt: bool) -> Columns:
    n = len(inst)
    masks = inst.get("masks")
    counts, rles = _rle_bytes(masks, size) if masks is not None else (None if n else [], [])
    if inst.has("boxes"):
        boxes = _numpy(inst.boxes).astype(np.float64).reshape(n, 4)
    elif rles:
        boxes = coco.xywh_to_xyxy64(mask_utils.toBbox(rles))
    else:
        raise ValueError("instances need boxes or masks")
    areas = coco.rle_areas(rles) if rles else box_areas(boxes)
    cols = Columns(labels=_numpy(inst.labels).astype(np.int64).reshape(n), boxes=boxes, areas=areas, counts=counts)
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


def category_dicts(categories: Sequence[Category | dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Categories as ``{"id", "name"}`` dicts."""
    return [c if isinstance(c, dict) else {"id": c.id, "name": c.name} for c in categories or []]


class ImageStore:
    """Every processed image as :class:`PreparedImage` (prepared once, shared by the evaluators).

    ``prepare(inputs, outputs)``: ``inputs`` are ground-truth ``ImageRecord``\\ s (or dicts with
    ``image_id`` and ``instances``), ``outputs`` predicted ``Instances`` (``boxes`` XYXY, ``labels`` =
    dataset category ids, ``scores``, ``masks`` as ``Masks`` or a list of RLE dicts); a dict output
    with an ``"instances"`` key (Detectron2 style) works too, and so do prediction :class:`Columns`
    (taken as they are, e.g. from :func:`maskkit.evaluation.results.read_results_source`).

    Args:
        categories: the dataset's categories (``Category`` or ``{"id", "name"}`` dicts); by default the
            GT labels seen, named by their ids.
    """

    def __init__(self, categories: Sequence[Category | dict[str, Any]] | None = None) -> None:
        self.categories = category_dicts(categories)
        self._known = {c["id"] for c in self.categories}
        self.reset()

    def reset(self) -> None:
        self.images: list[PreparedImage] = []
        self._seen: set[int] = set()
        self.gt_masks = self.dt_masks = True
        self._coco: tuple[dict[str, Any], list[dict[str, Any]]] | None = None
        self._batch: list[PreparedImage] = []

    def prepare(self, inputs: Sequence[Any], outputs: Sequence[Any]) -> list[PreparedImage]:
        """Prepare and keep one batch; returns its images."""
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        for im in self._batch:  # the previous batch's shared pairings are no longer needed
            im._pairings.clear()
        batch = []
        for item, pred in zip(inputs, outputs, strict=True):
            image_id, size, gt = _ground_truth(item)
            if isinstance(pred, dict):
                pred = pred["instances"]
            if image_id in self._seen:
                raise DataError("image processed twice", image=image_id)
            self._seen.add(image_id)
            try:
                g = _columns(gt, size, True)
                d = pred if isinstance(pred, Columns) else _columns(pred, size, False)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise DataError(f"cannot evaluate: {exc}", image=image_id) from exc
            self._check_labels(image_id, g, d)
            self.gt_masks &= g.counts is not None or not len(g)
            self.dt_masks &= d.counts is not None or not len(d)
            batch.append(PreparedImage(image_id, size, g, d))
        self.images += batch
        self._batch = batch
        self._coco = None
        return batch

    def _check_labels(self, image_id: int, g: Columns, d: Columns) -> None:
        if not self._known:
            return
        for what, cols in (("ground truth", g), ("prediction", d)):
            labels = cols.labels.tolist()
            if self._known.issuperset(labels):
                continue
            bad = sorted({x for x in labels if x not in self._known})
            if bad:
                raise DataError(f"{what} has unknown category ids {bad} (known: {sorted(self._known)})",
                                image=image_id)

    @property
    def with_masks(self) -> bool:
        """Whether every image has masks on both sides (segm and the mask metrics apply)."""
        return self.gt_masks and self.dt_masks

    def category_dicts(self) -> list[dict[str, Any]]:
        """The categories as ``{"id", "name"}`` dicts (given, or the GT labels seen)."""
        if self.categories:
            return self.categories
        ids = sorted({int(x) for im in self.images for x in im.gt.labels})
        return [{"id": i, "name": str(i)} for i in ids]

    def coco_inputs(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The COCO ground-truth dict and the COCO results list of everything processed (built once)."""
        if self._coco is None:
            images: list[dict[str, Any]] = []
            anns: list[dict[str, Any]] = []
            results: list[dict[str, Any]] = []
            with_masks = self.with_masks
            with gc_paused():
                for im in self.images:
                    images.append({"id": im.image_id, "height": im.size[0], "width": im.size[1]})
                    g, d = im.gt, im.dt
                    anns += coco.gt_annotations(im.image_id, im.size, g.labels, g.boxes,
                                                g.counts if with_masks else None, g.areas, g.gt_crowd, len(anns) + 1)
                    results += coco.detection_annotations(im.image_id, im.size, d.labels, d.dt_scores, d.boxes,
                                                          d.counts if with_masks else None)
            self._coco = {"images": images, "categories": self.category_dicts(), "annotations": anns}, results
        return self._coco


class ImageEvaluator(DatasetEvaluator):
    """A metric family reading prepared images from a (possibly shared) :class:`ImageStore`.

    Standalone, ``process`` prepares the batch in its own store; composed through
    :class:`Evaluators`, evaluators sharing a store get each batch prepared once. ``reset()`` resets
    the store only when the evaluator made it (a shared store is reset by its owner).
    """

    def __init__(self, store: ImageStore | None = None) -> None:
        self._owns_store = store is None
        self.store = store if store is not None else ImageStore()
        self.notes: list[str] = []

    def reset(self) -> None:
        if self._owns_store:
            self.store.reset()
        self.notes = []

    def process(self, inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
        self.process_images(self.store.prepare(inputs, outputs))

    def process_images(self, images: Sequence[PreparedImage]) -> None:
        """Take the prepared images of one batch (already kept in the store)."""


class MaskEvaluator(ImageEvaluator):
    """A streaming family on the masks of the predictions scoring ``>= score_threshold``."""

    def __init__(self, store: ImageStore | None = None, score_threshold: float = 0.5) -> None:
        super().__init__(store)
        self.score_threshold = float(score_threshold)

    def process_images(self, images: Sequence[PreparedImage]) -> None:
        for im in images:
            if im.has_masks:
                self.add(im, im.pairing(self.score_threshold))

    def add(self, image: PreparedImage, pairing: Pairing) -> None:
        """Take one image with masks on both sides."""
        raise NotImplementedError
