"""The fast paths of ``maskkit eval --gt --pred`` give exactly what the plain paths give.

Results files read column-wise (equal to entry-by-entry validation, which still names every problem),
prediction ``Columns`` straight from the file (equal to going through ``Instances``), bbox and segm
sharing one indexed ground truth (equal to separate evaluations), and figures drawn by a worker
process (the same PNG bytes as drawn in-process, and drawn here when the worker dies).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskkit.errors import DataError
from maskkit.evaluation import InstanceEvaluator
from maskkit.evaluation.base import ImageStore
from maskkit.evaluation.coco import coco_evaluate, coco_evaluate_types, prepare_detections
from maskkit.evaluation.plots import PlotWorker
from maskkit.evaluation.report import EvalFigures, write_outputs
from maskkit.evaluation.results import (
    ResultsTable,
    _table_if_plain,
    read_results_source,
    read_results_table,
    results_to_columns,
    validate_results,
)
from maskkit.structures import Instances, Masks

SIZES = {1: (40, 50), 2: (30, 30), 3: (40, 50)}


def _rle(h: int, w: int, y0: int, x0: int, side: int) -> dict[str, Any]:
    m = np.zeros((h, w), np.uint8)
    m[y0 : y0 + side, x0 : x0 + side] = 1
    r = mask_utils.encode(np.asfortranarray(m))
    return {"size": [h, w], "counts": r["counts"].decode("ascii")}


def make_results(seed: int = 0, boxes: str = "all", masks: bool = True) -> list[dict[str, Any]]:
    """Results in the usual shape; ``boxes``: ``all``, ``some`` (others from the mask extents) or ``none``."""
    rng = np.random.default_rng(seed)
    out = []
    for image_id, (h, w) in SIZES.items():
        for _ in range(int(rng.integers(0, 7))):
            side = int(rng.integers(2, 12))
            y0, x0 = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
            r: dict[str, Any] = {"image_id": image_id, "category_id": int(rng.integers(1, 3)),
                                 "score": float(rng.random()) if rng.random() < 0.8 else 1}
            if boxes == "all" or (boxes == "some" and rng.random() < 0.5):
                r["bbox"] = [x0 + float(rng.normal(0, 0.7)), y0 + 0.25, side + 0.5, int(side)]
            if masks:
                r["segmentation"] = _rle(h, w, y0, x0, side)
            out.append(r)
    return out


def tables_equal(a: ResultsTable, b: ResultsTable) -> None:
    for name in ("image_ids", "category_ids", "scores", "boxes", "has_box"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.counts == b.counts


@pytest.mark.parametrize(("boxes", "masks"), [("all", True), ("some", True), ("all", False), ("none", True)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_column_checks_equal_entry_by_entry_validation(boxes: str, masks: bool, seed: int) -> None:
    data = make_results(seed, boxes, masks)
    fast = _table_if_plain(json.loads(json.dumps(data)), SIZES, {1, 2})
    assert fast is not None  # the usual shape takes the fast path
    tables_equal(fast, ResultsTable.from_results(validate_results(data, SIZES, [1, 2])))


GOOD = {"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [1, 2, 3, 4], "segmentation": _rle(40, 50, 2, 1, 4)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_id": 1.0}, None),  # lenient: integral floats are ids
        ({"image_id": 9}, "entry 1: unknown image_id 9"),
        ({"image_id": True}, "entry 1: unknown image_id True"),
        ({"category_id": 7}, "entry 1: unknown category_id 7"),
        ({"score": True}, "entry 1: score must be a finite number"),
        ({"score": None}, "entry 1: score must be a finite number"),
        ({"score": 10**400}, "entry 1: score must be a finite number"),
        ({"bbox": [1, 2, 10**400, 4]}, "entry 1: bbox must hold 4 finite numbers"),
        ({"bbox": [1, 2, 3]}, "entry 1: bbox must be"),
        ({"bbox": [1, 2, "3", 4]}, "entry 1: bbox must hold 4 finite numbers"),
        ({"bbox": [1, 2, -3, 4]}, "entry 1: bbox width and height"),
        ({"bbox": None}, "entry 1: bbox must be"),
        ({"segmentation": {"size": [40, 49], "counts": GOOD["segmentation"]["counts"]}}, "does not match the image"),
        ({"segmentation": {"size": [40.0, 50.0], "counts": GOOD["segmentation"]["counts"]}}, None),
        ({"segmentation": {"size": [40, 50], "counts": GOOD["segmentation"]["counts"][:-1]}}, "entry 1: malformed"),
        ({"segmentation": {"size": [40, 50], "counts": "é"}}, "entry 1: malformed compressed RLE: non-ASCII"),
        ({"segmentation": [[1, 1, 9, 1, 9, 9]]}, None),  # polygons: converted
        ({"segmentation": {"size": [40, 50], "counts": [100, 5, 1895]}}, None),  # uncompressed RLE
    ],
)
def test_unusual_entries_take_the_entry_by_entry_path(tmp_path: Path, change: dict[str, Any],
                                                       message: str | None) -> None:
    data = [dict(GOOD), {**GOOD, **change}]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    assert _table_if_plain(json.loads(path.read_text()), SIZES, {1, 2}) is None
    if message is None:
        tables_equal(read_results_table(path, SIZES, [1, 2]),
                     ResultsTable.from_results(validate_results(json.loads(path.read_text()), SIZES, [1, 2])))
    else:
        with pytest.raises(DataError, match=message) as info:
            read_results_table(path, SIZES, [1, 2])
        assert str(path) in str(info.value)


def test_mixed_segmentation_presence_and_empty_files(tmp_path: Path) -> None:
    data = make_results(3, "all", True)
    data[0] = {k: v for k, v in data[0].items() if k != "segmentation"}
    assert _table_if_plain(data, SIZES, {1, 2}) is None
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    columns, notes = results_to_columns(read_results_table(path, SIZES, [1, 2]), SIZES)
    assert notes == ["1 results have no segmentation: masks ignored, bbox only"]
    assert all(c.counts is None for c in columns.values())
    path.write_text("[]")
    table = read_results_table(path, SIZES, [1, 2])
    assert len(table) == 0 and results_to_columns(table, SIZES) == ({}, [])


def _via_instances(results: list[dict[str, Any]], image_id: int) -> Any:
    """The plain route: validated entries -> Instances (boxes XYXY, mask extents for missing boxes) -> Columns."""
    h, w = SIZES[image_id]
    dets = [r for r in validate_results(results, SIZES, [1, 2]) if r["image_id"] == image_id]
    with_masks = all("segmentation" in r for r in results)
    masks = Masks.from_rles([d["segmentation"] for d in dets], h, w) if with_masks else None
    extents = masks.boxes().astype(np.float64) if masks is not None else np.zeros((len(dets), 4))
    boxes = np.array([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]]
                      if "bbox" in d else extents[i] for i, d in enumerate(dets)], dtype=np.float64).reshape(-1, 4)
    inst = Instances((h, w), boxes=boxes, labels=np.array([d["category_id"] for d in dets], dtype=np.int64),
                     scores=np.array([d["score"] for d in dets], dtype=np.float64))
    if masks is not None:
        inst.masks = masks
    store = ImageStore()
    gt = Instances.empty((h, w), with_masks=True)
    return store.prepare([{"image_id": image_id, "instances": gt}], [inst])[0].dt


@pytest.mark.parametrize(("boxes", "masks"), [("all", True), ("some", True), ("all", False)])
def test_columns_from_the_file_equal_the_instances_route(boxes: str, masks: bool) -> None:
    results = make_results(4, boxes, masks)
    columns, _ = results_to_columns(ResultsTable.from_results(validate_results(results, SIZES, [1, 2])), SIZES)
    for image_id, cols in columns.items():
        ref = _via_instances(results, image_id)
        for name in ("labels", "boxes", "areas", "scores"):
            a, b = getattr(cols, name), getattr(ref, name)
            assert a.dtype == b.dtype and np.array_equal(a, b), (image_id, name)
        assert cols.counts == ref.counts


def _dataset(tmp_path: Path) -> tuple[Path, Path]:
    images = [{"id": i, "height": h, "width": w, "file_name": f"{i}.png"} for i, (h, w) in SIZES.items()]
    anns = []
    for r in make_results(5, "all", True):
        rle = {**r["segmentation"], "counts": r["segmentation"]["counts"].encode()}
        anns.append({"id": len(anns) + 1, "image_id": r["image_id"], "category_id": r["category_id"],
                     "segmentation": r["segmentation"], "area": float(mask_utils.area(rle)),
                     "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns,
                              "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(make_results(6, "all", True)))
    return gt, pred


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_shared_ground_truth_and_detections_equal_separate_evaluations(tmp_path: Path, backend: str) -> None:
    gt_path, pred_path = _dataset(tmp_path)
    aset, preds, _, areas = read_results_source(gt_path, pred_path)
    ev = InstanceEvaluator(aset.categories, extras=(), detection_areas=areas)
    ev.process(aset.images, [preds.get(r.id) or Instances.empty((r.height, r.width), True) for r in aset.images])
    gt, results = ev.coco_inputs()
    segm = prepare_detections(results, "segm", "box")
    seen = []
    shared = coco_evaluate_types(gt, {"bbox": segm, "segm": segm}, backend=backend, on_result=seen.append)
    assert [r.iou_type for r in seen] == ["bbox", "segm"]
    for t in ("bbox", "segm"):
        alone = coco_evaluate(gt, prepare_detections(results, t, "box"), t, backend=backend)
        assert shared[t].stats == alone.stats
        assert np.array_equal(shared[t].precision, alone.precision)
        assert shared[t].matched == alone.matched


def _die_in_worker(parent: int, path: Path) -> Path:
    if os.getpid() != parent:
        os._exit(1)  # the worker process dies
    path.write_bytes(b"drawn here")
    return path


def test_plot_worker_draws_here_when_it_dies_or_is_off(tmp_path: Path) -> None:
    with PlotWorker() as worker:
        job = worker.submit(_die_in_worker, os.getpid(), tmp_path / "a.png")
        assert job.result() == tmp_path / "a.png" and job.future.exception() is not None
    with PlotWorker(enabled=False) as worker:
        assert worker.submit(_die_in_worker, os.getpid(), tmp_path / "b.png").result() == tmp_path / "b.png"
        failing = worker.submit(_die_in_worker, os.getpid(), tmp_path / "missing" / "c.png")
        with pytest.raises(FileNotFoundError):
            failing.result()


def test_figures_from_the_worker_equal_figures_drawn_in_process(tmp_path: Path) -> None:
    gt_path, pred_path = _dataset(tmp_path)
    aset, preds, _, areas = read_results_source(gt_path, pred_path)
    outputs = [preds.get(r.id) or Instances.empty((r.height, r.width), True) for r in aset.images]
    written = {}
    for mode in ("worker", "in-process"):
        out = tmp_path / mode
        ev = InstanceEvaluator(aset.categories, detection_areas=areas)
        with EvalFigures(out, worker=mode == "worker") as figures:
            assert (figures.worker._pool is not None) == (mode == "worker")
            figures.attach(ev)
            ev.process(aset.images, outputs)
            metrics = ev.evaluate()
            # attached: every figure was submitted while evaluating
            assert set(figures.jobs) == {"pr_curves_bbox.png", "pr_curves_segm.png", "pr_curves_boundary.png",
                                         "confusion_matrix.png"}
            paths = write_outputs(out, metrics, ev, None, figures=figures)
        written[mode] = {p.name: p.read_bytes() for p in paths}
    assert list(written["worker"]) == list(written["in-process"])
    assert written["worker"] == written["in-process"]
