"""Validation during training: val loss, COCO AP, semantic metrics and post-processing threshold tuning.

Every rank validates its share of the val images (``rank::world_size``); losses are summed and
predictions gathered on rank 0, which evaluates, so the metrics cover the whole val set whatever the
number of processes. Dense models' ``sem_seg`` outputs also give semantic metrics (``semantic.mIoU``).
Models with tunable post-processing (``threshold_grid`` / ``predict_raw`` / ``postprocess`` /
``set_thresholds``, e.g. the bottom-up model) get their thresholds chosen at each validation on the images
the run makes its choices on (val, or a held-back slice of train: ``tune.split``); they are buffers, so
checkpoints saved afterwards carry them. Every combination scored is returned (the trainer logs them to
``tuning.csv``), not only the best.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from maskkit.engine.distributed import DistInfo, all_gather_objects, all_reduce_sums, broadcast_object
from maskkit.engine.loop import to_device, weighted_total
from maskkit.evaluation import InstanceEvaluator, inference_on_dataset
from maskkit.evaluation.report import jsonable
from maskkit.evaluation.semantic import SemanticAccumulator
from maskkit.models.outputs import to_instances
from maskkit.structures.labels import IGNORE_INDEX

if TYPE_CHECKING:
    from typing_extensions import TypeIs

    from maskkit.models.dense import TunableModel

Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]
"""A collated batch: images and their target dicts."""

log = logging.getLogger("maskkit.train")

SUMMARY_METRICS = ("segm.AP", "segm.AP50", "segm.AP75", "bbox.AP", "bbox.AP50", "semantic.miou")


@contextlib.contextmanager
def frozen_norm_train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Train mode (so detection models return losses) with BatchNorm using and keeping its running stats."""
    was_training = model.training
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def validation_loss(model: nn.Module, batches: Iterable[Batch], device: torch.device,
                    weights: dict[str, float], dinfo: DistInfo | None = None) -> dict[str, float]:
    """Mean loss terms (and weighted ``loss``) over the val batches (of all ranks), updating no statistic."""
    sums: dict[str, float] = {}
    n = 0
    with frozen_norm_train_mode(model):
        for images, targets in batches:
            images, targets = to_device(images, targets, device)
            losses = model(images, targets)
            losses = {"loss": weighted_total(losses, weights), **losses}
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
    sums["n"] = float(n)
    sums = all_reduce_sums(sums, dinfo)
    n_all = max(sums.pop("n"), 1.0)
    return {k: v / n_all for k, v in sums.items()}


def tunable(model: object) -> TypeIs[TunableModel]:
    """Whether the model exposes post-processing thresholds to tune on the val set."""
    return all(hasattr(model, a) for a in ("threshold_grid", "predict_raw", "postprocess", "set_thresholds"))


class _Semantic:
    """Semantic metrics of ``sem_seg`` outputs against the GT class maps (background 0, 255 ignore)."""

    def __init__(self, categories: list[Any]) -> None:
        names = ["background", *(c.name for c in categories)]
        self.acc = SemanticAccumulator(len(names), ignore_index=IGNORE_INDEX, class_names=names)
        self.used = False

    def add(self, output: dict[str, Any], target: dict[str, Any]) -> None:
        if "sem_seg" not in output or "semantic" not in target:
            return
        self.used = True
        pred = output["sem_seg"].argmax(0).cpu().numpy()
        self.acc.add(target["semantic"].cpu().numpy(), pred)

    def merge(self, others: list[np.ndarray]) -> None:
        for c in others:
            self.acc.confusion += c


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], records: dict[int, Any],
             categories: list[Any], device: torch.device, max_dets: int = 100,
             dinfo: DistInfo | None = None, tune: bool = True, split: str = "val") -> dict[str, Any]:
    """The ``metrics.json`` dict of the eval-mode model on the val records (all ranks' images).

    COCO box/mask AP always; ``semantic`` metrics for models with ``sem_seg`` outputs; for tunable
    models the thresholds with the best mask AP are chosen first (``tuning`` in the result: the choice, its
    mask AP and, under ``grid``, every combination scored with its mask AP); ``split`` names the images.
    """
    was_training = model.training
    model.eval()
    ids_cat = [c.id for c in categories]
    semantic = _Semantic(categories)
    tuned = model if tune and tunable(model) else None
    grid = _grid(tuned) if tuned is not None else [{}]
    # preds[k]: (image_id, Instances) under threshold combination k
    preds: list[list[tuple[int, Any]]] = [[] for _ in grid]
    try:
        for images, targets in batches:
            images = [im.to(device) for im in images]
            sizes = [(im.shape[-2], im.shape[-1]) for im in images]
            ids = [int(t["image_id"]) for t in targets]
            if tuned is not None and len(grid) > 1:
                raws = tuned.predict_raw(images)
                outputs = None
                for k, combo in enumerate(grid):
                    outs = [tuned.postprocess(r, **combo) for r in raws]
                    if k == 0:
                        outputs = outs
                    preds[k] += [(i, to_instances(o, s, ids_cat)) for i, o, s in zip(ids, outs, sizes, strict=True)]
            else:
                outputs = model(images)
                preds[0] += [(i, to_instances(o, s, ids_cat)) for i, o, s in zip(ids, outputs, sizes, strict=True)]
            for o, t in zip(outputs or [], targets, strict=True):
                semantic.add(o, t)
    finally:
        model.train(was_training)
    preds = [_gather(p, dinfo) for p in preds]
    sem_parts = all_gather_objects(semantic.acc.confusion, dinfo)
    used = any(all_gather_objects(semantic.used, dinfo))
    if dinfo is not None and not dinfo.is_main:
        return {}
    semantic.merge(sem_parts[1:])
    tuning: dict[str, Any] | None = None
    best = 0
    if len(grid) > 1:
        scores = [_ap(p, records, categories, max_dets, ("segm",)).get("segm", {}).get("AP", -1.0) for p in preds]
        best = int(np.argmax(scores))
        tuning = {"thresholds": grid[best], "segm.AP": scores[best], "combinations": len(grid), "split": split,
                  "grid": [{**combo, "segm.AP": score} for combo, score in zip(grid, scores, strict=True)]}
        log.info("post-processing thresholds tuned on %s (%d combinations): %s, mask AP %.4f", split, len(grid),
                 grid[best], scores[best])
    metrics = _ap(preds[best], records, categories, max_dets)
    if used:
        metrics["semantic"] = jsonable(semantic.acc.result())
    if tuning is not None:
        metrics["tuning"] = tuning
    return metrics


def apply_tuning(models: Iterable[nn.Module | None], metrics: dict[str, Any], dinfo: DistInfo | None = None) -> None:
    """Set the tuned thresholds (rank 0's choice) on every given model that has them."""
    chosen = (metrics.get("tuning") or {}).get("thresholds") if metrics else None
    chosen = broadcast_object(chosen, dinfo) if dinfo is not None else chosen
    if chosen:
        for m in models:
            if m is not None and tunable(m):
                m.set_thresholds(**chosen)


def _grid(model: TunableModel) -> list[dict[str, float]]:
    grid = model.threshold_grid()
    keys = sorted(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def _gather(pairs: list[tuple[int, Any]], dinfo: DistInfo | None) -> list[tuple[int, Any]]:
    parts = all_gather_objects(pairs, dinfo)
    return [p for part in parts for p in part]


def _ap(pairs: list[tuple[int, Any]], records: dict[int, Any], categories: list[Any], max_dets: int,
        iou_types: tuple[str, ...] = ("bbox", "segm")) -> dict[str, Any]:
    evaluator = InstanceEvaluator(categories=categories, extras=(), max_dets=[max_dets], iou_types=iou_types)
    ordered = sorted(pairs, key=lambda p: p[0])  # gathered from every rank: predicting is a lookup
    outputs = [inst for _, inst in ordered]
    return inference_on_dataset(lambda batch: outputs, [[records[i] for i, _ in ordered]], evaluator)
