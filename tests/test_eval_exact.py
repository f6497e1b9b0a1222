"""``maskkit eval --gt --pred`` equals pycocotools exactly: all 12 bbox and segm stats, per-class APs, arrays.

Ground truths from three sources (synthetic shapes with polygons and rings, DSB2018 nuclei with
hundreds of instances per image, coco128-seg with 80 classes and some crowd regions) are written
as a COCO JSON (polygons with their polygon area as real COCO has, RLE otherwise); predictions
are the GT shifted and rescaled (masks and boxes, boxes with their own jitter), some dropped,
some relabelled, spurious ones added, random scores. Both tools read the same two files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskkit.cli.main import main
from maskkit.data import synth
from maskkit.data.annotations import AnnotationSet
from maskkit.data.formats import read_annotations
from maskkit.evaluation import InstanceEvaluator
from maskkit.evaluation.coco import CLASS_KEYS, STAT_KEYS
from maskkit.evaluation.results import read_results_source
from maskkit.structures import Instances
from maskkit.structures.masks import PolygonMask

TOL = 1e-12
VARIANTS = ("bbox+segm", "segm", "bbox")
"""What each result carries: both (pycocotools buckets by box area), segm only (mask area), bbox only."""


# -- data ---------------------------------------------------------------------------------------------
def _polygon_area(parts: list[list[float]]) -> float:
    area = 0.0
    for p in parts:
        x, y = np.asarray(p[0::2]), np.asarray(p[1::2])
        area += 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    return area


def write_gt(aset: AnnotationSet, path: Path, rng: np.random.Generator, crowd_fraction: float = 0.0) -> None:
    """A COCO GT JSON written independently of maskkit's writer (polygon areas as real COCO has)."""
    images, anns = [], []
    for rec in aset.images:
        h, w = rec.height, rec.width
        images.append({"id": rec.id, "file_name": rec.file_name, "height": h, "width": w})
        inst = rec.instances
        for i in range(len(inst)):
            item = inst.masks[i]
            rle = inst.masks.rle(i)
            crowd = int(rng.random() < crowd_fraction)
            ann: dict[str, Any] = {"id": len(anns) + 1, "image_id": rec.id, "category_id": int(inst.labels[i]),
                                   "iscrowd": crowd}
            if isinstance(item, PolygonMask) and not crowd:
                parts = item.to_coco()
                xs = np.concatenate([p[0::2] for p in map(np.asarray, parts)])
                ys = np.concatenate([p[1::2] for p in map(np.asarray, parts)])
                ann["segmentation"] = parts
                ann["area"] = _polygon_area(parts)
                ann["bbox"] = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min()),
                               float(ys.max() - ys.min())]
            else:
                ann["segmentation"] = {"size": [h, w], "counts": rle["counts"].decode()}
                ann["area"] = float(mask_utils.area(rle))
                ann["bbox"] = mask_utils.toBbox(rle).tolist()
            anns.append(ann)
    cats = [{"id": c.id, "name": c.name} for c in aset.categories]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def _moved(mask: np.ndarray, extent: np.ndarray, scale: float, dx: float, dy: float) -> np.ndarray:
    """``mask`` (of integer extent ``[x, y, w, h]``) rescaled about its centre and shifted, clipped."""
    x0, y0 = int(extent[0]), int(extent[1])
    x1, y1 = x0 + int(extent[2]), y0 + int(extent[3])
    nh, nw = max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale))
    crop = cv2.resize(mask[y0:y1, x0:x1], (nw, nh), interpolation=cv2.INTER_NEAREST)
    top, left = round((y0 + y1) / 2 + dy - nh / 2), round((x0 + x1) / 2 + dx - nw / 2)
    out = np.zeros_like(mask)
    h, w = mask.shape
    ty0, tx0, ty1, tx1 = max(top, 0), max(left, 0), min(top + nh, h), min(left + nw, w)
    if ty1 > ty0 and tx1 > tx0:
        out[ty0:ty1, tx0:tx1] = crop[ty0 - top : ty1 - top, tx0 - left : tx1 - left]
    return out


def _result(image_id: int, label: int, score: float, mask: np.ndarray, box: list[float]) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"image_id": image_id, "category_id": label, "score": score, "bbox": box,
            "segmentation": {"size": list(mask.shape), "counts": rle["counts"].decode()}}


def perturbed_results(aset: AnnotationSet, rng: np.random.Generator, score_decimals: int | None = None
                      ) -> list[dict[str, Any]]:
    """Predictions from the GT: shifted, rescaled, dropped, relabelled and added instances, random scores."""
    cat_ids = [c.id for c in aset.categories]
    out = []
    for rec in aset.images:
        h, w = rec.height, rec.width
        inst = rec.instances
        extents = mask_utils.toBbox(inst.masks.to_rles()) if len(inst) else []
        for i in range(len(inst)):
            if rng.random() < 0.2 or not extents[i][2]:  # dropped
                continue
            scale, (dx, dy) = float(rng.uniform(0.7, 1.35)), rng.normal(0.0, 3.0, 2)
            mask = _moved(inst.masks.bitmap(i).astype(np.uint8), extents[i], scale, dx, dy)
            if not mask.any():
                continue
            x0, y0, x1, y1 = (float(v) for v in inst.boxes[i])
            bw, bh = (x1 - x0) * scale * (1 + rng.normal(0, 0.05)), (y1 - y0) * scale * (1 + rng.normal(0, 0.05))
            cx, cy = (x0 + x1) / 2 + dx + rng.normal(0, 1.0), (y0 + y1) / 2 + dy + rng.normal(0, 1.0)
            box = [cx - bw / 2, cy - bh / 2, max(bw, 0.5), max(bh, 0.5)]
            label = int(inst.labels[i]) if rng.random() < 0.9 else int(rng.choice(cat_ids))
            out.append(_result(rec.id, label, 0.0, mask, box))
        for _ in range(int(rng.integers(0, 4)) + len(inst) // 10):  # spurious, log-uniform sizes
            mask = np.zeros((h, w), np.uint8)
            axes = np.exp(rng.uniform(np.log(2), np.log(0.3 * min(h, w)), 2)).astype(int) + 1
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.ellipse(mask, centre, (int(axes[0]), int(axes[1])), float(rng.uniform(0, 180)), 0, 360, 1, -1)
            box = [float(v) + rng.normal(0, 1.0) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask)))]
            box[2:] = [max(v, 0.5) for v in box[2:]]
            out.append(_result(rec.id, int(rng.choice(cat_ids)), 0.0, mask, box))
    scores = rng.random(len(out))
    if score_decimals is not None:  # ties: both tools must break them the same way
        scores = np.round(scores, score_decimals)
    for r, s in zip(out, scores.tolist(), strict=True):
        r["score"] = s
    return out


def variant(results: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    drop = {"bbox+segm": (), "segm": ("bbox",), "bbox": ("segmentation",)}[kind]
    return [{k: v for k, v in r.items() if k not in drop} for r in results]


def nuclei_source(shared_data: Path) -> AnnotationSet:
    """The DSB reader's nuclei: the 4 most crowded images (up to 369 nuclei) and every 4th other one."""
    aset = read_annotations(shared_data / "dsb2018-stage1-train-subset")
    by_count = sorted(aset.images, key=lambda r: -len(r.instances))
    keep = {r.id for r in by_count[:4] + by_count[4::4]}
    return dataclasses.replace(aset, images=[r for r in aset.images if r.id in keep])


SOURCES = {
    # name: (annotation set, crowd fraction of the written GT, score decimals)
    "synth": (lambda data: synth.generate(30, 256, 7), 0.0, 2),
    "nuclei": (nuclei_source, 0.0, None),
    "coco128": (lambda data: read_annotations(data / "coco128-seg"), 0.05, None),
}


_FILES: dict[str, dict[str, Any]] = {}


def dataset_files(name: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, Any]:
    """GT JSON and the three results files of one source (made once per session)."""
    if name not in _FILES:
        make, crowd, decimals = SOURCES[name]
        aset = make(request.getfixturevalue("shared_data") if name != "synth" else None)
        rng = np.random.default_rng(7)
        root = tmp_path_factory.mktemp(name)
        gt = root / "annotations.json"
        write_gt(aset, gt, rng, crowd)
        results = perturbed_results(aset, rng, decimals)
        preds = {}
        for kind in VARIANTS:
            preds[kind] = root / f"results_{kind}.json"
            preds[kind].write_text(json.dumps(variant(results, kind)))
        _FILES[name] = {"name": name, "gt": gt, "preds": preds, "aset": aset}
    return _FILES[name]


@pytest.fixture(params=list(SOURCES))
def files(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return dataset_files(request.param, request, tmp_path_factory)


@pytest.fixture
def nuclei_files(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return dataset_files("nuclei", request, tmp_path_factory)


@pytest.fixture
def synth_files(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return dataset_files("synth", request, tmp_path_factory)


# -- the two tools --------------------------------------------------------------------------------------
@functools.cache
def pycocotools_eval(gt: Path, pred: Path, iou_type: str, max_dets: tuple[int, ...] | None = None) -> Any:
    """pycocotools' COCOeval on the two files (the reference; cached, read-only)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt))
        ev = COCOeval(coco_gt, coco_gt.loadRes(str(pred)), iou_type)
        if max_dets:
            ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def maskkit_eval(gt: Path, pred: Path, backend: str = "faster", max_dets: list[int] | None = None
                 ) -> tuple[dict[str, Any], InstanceEvaluator]:
    """What ``maskkit eval --gt --pred`` computes (without the extras)."""
    aset, preds, _, areas = read_results_source(gt, pred)
    ev = InstanceEvaluator(aset.categories, max_dets=max_dets, extras=(), backend=backend, detection_areas=areas)
    for rec in aset.images:
        empty = Instances.empty((rec.height, rec.width), with_masks=rec.instances.has("masks"))
        ev.process([rec], [preds.get(rec.id, empty)])
    return ev.evaluate(), ev


def _mean(a: np.ndarray) -> float | None:
    a = a[a > -1]
    return float(a.mean()) if a.size else None


def reference_per_class(ev: Any) -> dict[int, dict[str, float | None]]:
    """pycocotools' per-class AP/AP50/AP75/APs/APm/APl/AR (largest maxDets) from its arrays."""
    p, r = ev.eval["precision"], ev.eval["recall"]
    out = {}
    for k, cid in enumerate(ev.params.catIds):
        out[cid] = {"AP": _mean(p[:, :, k, 0, -1]), "AP50": _mean(p[0, :, k, 0, -1]),
                    "AP75": _mean(p[5, :, k, 0, -1]), "APs": _mean(p[:, :, k, 1, -1]),
                    "APm": _mean(p[:, :, k, 2, -1]), "APl": _mean(p[:, :, k, 3, -1]), "AR": _mean(r[:, k, 0, -1])}
    return out


def assert_same(metrics: dict[str, Any], ev: InstanceEvaluator, ref: Any, iou_type: str, what: str) -> None:
    ours = np.array([-1.0 if metrics[iou_type][k] is None else metrics[iou_type][k] for k in STAT_KEYS])
    theirs = np.asarray(ref.stats[:12])
    diff = np.abs(ours - theirs)
    assert diff.max() <= TOL, f"{what} {iou_type}: " + ", ".join(
        f"{k} {a:.6f} vs {b:.6f}" for k, a, b, d in zip(STAT_KEYS, ours, theirs, diff, strict=True) if d > TOL)
    result = ev.coco_results[iou_type]
    np.testing.assert_allclose(result.precision, ref.eval["precision"], atol=TOL, rtol=0)
    np.testing.assert_allclose(result.recall, ref.eval["recall"], atol=TOL, rtol=0)
    expected = reference_per_class(ref)
    for row in metrics["per_class"]:
        for key in CLASS_KEYS:
            a, b = row[iou_type][key], expected[row["id"]][key]
            assert (a is None and b is None) or abs(a - b) <= TOL, (what, iou_type, row["name"], key, a, b)


# -- tests ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", VARIANTS)
def test_every_stat_equals_pycocotools(files: dict[str, Any], kind: str) -> None:
    pred = files["preds"][kind]
    metrics, ev = maskkit_eval(files["gt"], pred)
    iou_types = ("bbox",) if kind == "bbox" else ("bbox", "segm")
    assert set(ev.coco_results) == set(iou_types)
    for t in iou_types:
        assert_same(metrics, ev, pycocotools_eval(files["gt"], pred, t), t, f"{files['name']} {kind}")


def test_size_buckets_follow_the_file(files: dict[str, Any]) -> None:
    """The bucket convention matters on this data (the test would catch a mask-area-only evaluator)."""
    both, _ = maskkit_eval(files["gt"], files["preds"]["bbox+segm"])
    segm_only, _ = maskkit_eval(files["gt"], files["preds"]["segm"])
    for key in ("AP", "AP50", "AR100"):  # the buckets are the only difference
        assert both["segm"][key] == segm_only["segm"][key]
    assert any(both["segm"][k] != segm_only["segm"][k] for k in ("APs", "APm", "APl", "ARs", "ARm", "ARl"))
    assert both["params"]["detection_areas"] == "box" and segm_only["params"]["detection_areas"] == "mask"


def test_pycocotools_backend(synth_files: dict[str, Any]) -> None:
    """maskkit's pycocotools backend gives the same numbers (ties in the scores included)."""
    gt, pred = synth_files["gt"], synth_files["preds"]["bbox+segm"]
    metrics, ev = maskkit_eval(gt, pred, backend="pycocotools")
    for t in ("bbox", "segm"):
        assert_same(metrics, ev, pycocotools_eval(gt, pred, t), t, "synth pycocotools backend")


def test_more_detections_than_max_dets(nuclei_files: dict[str, Any]) -> None:
    """max_dets 1,10,100,1000 on images with hundreds of nuclei: pycocotools' arrays exactly (its
    ``summarize`` would label the stats differently, see maskkit.evaluation.coco)."""
    gt, pred = nuclei_files["gt"], nuclei_files["preds"]["bbox+segm"]
    assert max(len(r.instances) for r in nuclei_files["aset"].images) > 300
    _, ev = maskkit_eval(gt, pred, max_dets=[1, 10, 100, 1000])
    ref = pycocotools_eval(gt, pred, "segm", (1, 10, 100, 1000))
    np.testing.assert_allclose(ev.coco_results["segm"].precision, ref.eval["precision"], atol=TOL, rtol=0)
    np.testing.assert_allclose(ev.coco_results["segm"].recall, ref.eval["recall"], atol=TOL, rtol=0)


def test_cli_metrics_json_equals_pycocotools(synth_files: dict[str, Any], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The command itself: ``maskkit eval --gt --pred --out`` writes pycocotools' numbers."""
    gt, pred = synth_files["gt"], synth_files["preds"]["bbox+segm"]
    monkeypatch.setattr("sys.argv", ["maskkit", "eval", "--gt", str(gt), "--pred", str(pred), "--out",
                                     str(tmp_path), "--no-boundary", "--gallery", "0"])
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
        main()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for t in ("bbox", "segm"):
        ref = pycocotools_eval(gt, pred, t)
        ours = [-1.0 if metrics[t][k] is None else metrics[t][k] for k in STAT_KEYS]
        np.testing.assert_allclose(ours, ref.stats[:12], atol=TOL, rtol=0)
    assert any("bbox area" in n for n in metrics["params"]["notes"])
