"""COCO box/mask AP: equal to pycocotools' COCOeval on real data, evaluator API, results validation."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskkit.data.formats import read_annotations
from maskkit.errors import DataError
from maskkit.evaluation import Evaluators, InstanceEvaluator, coco_evaluate
from maskkit.evaluation.coco import STAT_KEYS, prepare_detections
from maskkit.evaluation.report import jsonable
from maskkit.evaluation.results import compressed_rles_valid, read_results, validate_results
from maskkit.structures import Instances, Masks

LABELME_COCO = "labelme-voc2011-instances/data_dataset_coco/annotations.json"


# -- helpers ----------------------------------------------------------------------------------------
def perturb(records: list[Any], seed: int = 0, max_instances: int | None = None) -> list[Instances]:
    """Predictions from GT: eroded/dilated masks, jittered boxes, dropped and spurious instances, random scores."""
    rng = np.random.default_rng(seed)
    out = []
    for rec in records:
        h, w = rec.height, rec.width
        gt = rec.instances
        labels = [int(x) for x in np.unique(gt.labels)] or [1]
        rles, boxes, cats = [], [], []
        n = len(gt) if max_instances is None else min(len(gt), max_instances)
        for i in range(n):
            if rng.random() < 0.15:  # dropped
                continue
            m = gt.masks.bitmap(i).astype(np.uint8)
            k = int(rng.integers(1, 4)) * 2 + 1
            m = cv2.dilate(m, np.ones((k, k), np.uint8)) if rng.random() < 0.5 else cv2.erode(m, np.ones((k, k)))
            rles.append(mask_utils.encode(np.asfortranarray(m)))
            x0, y0, x1, y1 = (float(v) for v in gt.boxes[i])
            jit = rng.normal(0, 0.08 * max(x1 - x0, y1 - y0, 1.0), 4)
            bx0, by0 = x0 + jit[0], y0 + jit[1]
            boxes.append([bx0, by0, max(bx0 + 1, x1 + jit[2]), max(by0 + 1, y1 + jit[3])])
            cats.append(int(gt.labels[i]) if rng.random() < 0.85 else int(rng.choice(labels)))
        for _ in range(int(rng.integers(0, 3))):  # spurious
            x0, y0 = rng.uniform(0, w * 0.7), rng.uniform(0, h * 0.7)
            x1, y1 = x0 + rng.uniform(4, w * 0.3), y0 + rng.uniform(4, h * 0.3)
            m = np.zeros((h, w), np.uint8)
            m[int(y0) : int(y1), int(x0) : int(x1)] = 1
            rles.append(mask_utils.encode(np.asfortranarray(m)))
            boxes.append([x0, y0, x1, y1])
            cats.append(int(rng.choice(labels)))
        inst = Instances((h, w), boxes=np.asarray(boxes, np.float64).reshape(-1, 4),
                         labels=np.asarray(cats, np.int64), scores=rng.random(len(cats)))
        inst.masks = Masks.from_rles(rles, h, w)
        out.append(inst)
    return out


def pycocotools_stats(gt: dict[str, Any], results: list[dict[str, Any]], iou_type: str,
                      max_dets: list[int] | None = None) -> tuple[np.ndarray, Any]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)) if results else COCO(), iou_type)
        if max_dets:
            ev.params.maxDets = max_dets
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12]), ev


def results_for(iou_type: str, image_ids: list[int], preds: list[Instances]) -> list[dict[str, Any]]:
    """COCO results as a tool would write them for one IoU type (segm without bbox: mask areas)."""
    out = []
    for image_id, p in zip(image_ids, preds, strict=True):
        for i in range(len(p)):
            r = {"image_id": image_id, "category_id": int(p.labels[i]), "score": float(p.scores[i])}
            if iou_type == "bbox":
                x0, y0, x1, y1 = (float(v) for v in p.boxes[i])
                r["bbox"] = [x0, y0, x1 - x0, y1 - y0]
            else:
                rle = p.masks.rle(i)
                r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            out.append(r)
    return out


def as_array(stats: dict[str, float | None]) -> np.ndarray:
    return np.array([-1.0 if stats[k] is None else stats[k] for k in STAT_KEYS])


def compare(gt_dict: dict[str, Any], aset: Any, preds: list[Instances]) -> None:
    ev = InstanceEvaluator(aset.categories, extras=())
    ev.process(aset.images, preds)
    metrics = ev.evaluate()
    ids = [r.id for r in aset.images]
    for t in ("bbox", "segm"):
        ref, ref_ev = pycocotools_stats(gt_dict, results_for(t, ids, preds), t)
        ours = as_array(metrics[t])
        assert np.abs(ours - ref).max() <= 1e-4, (t, ours, ref)
        assert set(metrics[t]) == set(STAT_KEYS)
        # per-class AP equals pycocotools' precision array averaged per class
        per = {r["id"]: r[t]["AP"] for r in metrics["per_class"]}
        for k, cid in enumerate(ref_ev.params.catIds):
            p = ref_ev.eval["precision"][:, :, k, 0, -1]
            expect = float(np.mean(p[p > -1])) if (p > -1).any() else None
            assert (per[cid] is None and expect is None) or abs(per[cid] - expect) <= 1e-4


# -- evidence on the shared real datasets --------------------------------------------------------------
def test_equals_pycocotools_on_labelme_coco(shared_data: Path) -> None:
    path = shared_data / LABELME_COCO
    raw = json.loads(path.read_text())
    for ann in raw["annotations"]:  # pycocotools treats annotation id 0 as "unmatched": shift ids
        ann["id"] += 1
    aset = read_annotations(path)
    compare(raw, aset, perturb(aset.images, seed=1))


def _gt_dict(aset: Any) -> dict[str, Any]:
    anns = []
    for rec in aset.images:
        inst = rec.instances
        for i, rle in enumerate(inst.masks.to_rles()):
            x0, y0, x1, y1 = (float(v) for v in inst.boxes[i])
            anns.append({"id": len(anns) + 1, "image_id": rec.id, "category_id": int(inst.labels[i]),
                         "segmentation": rle, "area": float(mask_utils.area(rle)), "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "iscrowd": int(inst.iscrowd[i])})
    images = [{"id": r.id, "height": r.height, "width": r.width} for r in aset.images]
    cats = [{"id": c.id, "name": c.name} for c in aset.categories]
    return {"images": images, "annotations": anns, "categories": cats}


def test_equals_pycocotools_on_coco128_seg(shared_data: Path) -> None:
    aset = read_annotations(shared_data / "coco128-seg", format="yolo")
    aset.images = [r for r in aset.images if r.instances.has("masks")][:40]
    compare(_gt_dict(aset), aset, perturb(aset.images, seed=2))


def test_equals_pycocotools_on_dsb_nuclei(shared_data: Path) -> None:
    samples = sorted((shared_data / "dsb2018-stage1-train-subset" / "stage1_train").iterdir())[:2]
    for sample in samples:  # one sample folder each: reading all 60 would dominate the test time
        aset = read_annotations(sample, format="dsb")
        compare(_gt_dict(aset), aset, perturb(aset.images, seed=3))


# -- semantics ----------------------------------------------------------------------------------------
def _squares(n: int, size: int = 400, side: int = 8, shift: int = 0) -> Masks:
    rles = []
    per_row = size // (side + 4)
    for i in range(n):
        m = np.zeros((size, size), np.uint8, order="F")
        y, x = divmod(i, per_row)
        m[y * (side + 4) : y * (side + 4) + side, x * (side + 4) + shift : x * (side + 4) + side + shift] = 1
        rles.append(mask_utils.encode(m))
    return Masks.from_rles(rles, size, size)


def test_max_dets_are_honest_and_null_for_missing_sizes() -> None:
    gt = Instances.from_masks(_squares(300), [1] * 300)
    pred = Instances.from_masks(_squares(300, shift=1), [1] * 300, np.linspace(1, 0.1, 300))
    inp = [{"image_id": 7, "instances": gt}]
    dense = InstanceEvaluator(max_dets=[1, 100, 1000], extras=())
    dense.process(inp, [pred])
    m = dense.evaluate()["segm"]
    assert {"AR1", "AR10", "AR100", "AR1000"} <= set(m)
    # a 1-pixel shift of 8×8 squares gives IoU 56/72: matched at 6 of the 10 IoU thresholds
    assert m["AR10"] == pytest.approx(0.6 * 10 / 300) and m["AR100"] == pytest.approx(0.6 * 100 / 300)
    assert m["AR1000"] == pytest.approx(0.6) and m["AP"] > 0.3  # AP uses the largest max_dets
    assert m["APm"] is None and m["APl"] is None  # no medium/large objects: null, not -1
    default = InstanceEvaluator(extras=())
    default.process(inp, [pred])
    assert default.evaluate()["segm"]["AP"] < m["AP"]
    # the same numbers straight from pycocotools' arrays with maxDets [1, 10, 100, 1000]
    gt_dict, results = dense.coco_inputs()
    _, ref = pycocotools_stats(gt_dict, prepare_detections(results, "segm"), "segm", [1, 10, 100, 1000])
    p = ref.eval["precision"][:, :, :, 0, -1]
    assert m["AP"] == pytest.approx(float(np.mean(p[p > -1])), abs=1e-12)


def test_backends_agree_and_inputs_untouched() -> None:
    gt = Instances.from_masks(_squares(30), [1, 2, 3] * 10)
    pred = Instances.from_masks(_squares(30, shift=2), [1, 2, 2] * 10, np.linspace(0.9, 0.2, 30))
    ev = InstanceEvaluator(extras=())
    ev.process([{"image_id": 1, "instances": gt}], [pred])
    gt_dict, results = ev.coco_inputs()
    before = copy.deepcopy((gt_dict, results))
    for t in ("bbox", "segm"):
        dets = prepare_detections(results, t)
        a = coco_evaluate(gt_dict, dets, t, backend="faster")
        b = coco_evaluate(gt_dict, dets, t, backend="pycocotools")
        assert np.abs(as_array(a.stats) - as_array(b.stats)).max() <= 1e-12
        assert a.matched == b.matched
    assert (gt_dict, results) == before


def test_streaming_keeps_compressed_rle_and_reports_errors() -> None:
    h = w = 64
    gt_bits = np.zeros((2, h, w), bool)
    gt_bits[0, 5:25, 5:25] = True
    gt_bits[1, 40:60, 40:60] = True  # never predicted: the false negative
    pred_bits = np.zeros((2, h, w), bool)
    pred_bits[0, 6:25, 5:25] = True
    pred_bits[1, 30:35, 0:10] = True  # spurious: the false positive
    gt = Instances.from_masks(Masks.from_bitmaps(gt_bits, h, w), [1, 1])
    pred = Instances.from_masks(Masks.from_bitmaps(pred_bits, h, w), [1, 1], [0.9, 0.8])
    ev = Evaluators([InstanceEvaluator(extras=("matching", "confusion"))])
    ev.process([{"image_id": 3, "instances": gt}], [pred])
    metrics = ev.evaluate()
    inner = ev.evaluators[0]
    assert all(isinstance(c, bytes) for im in inner.images for c in im.gt.counts + im.dt.counts)
    errors = inner.errors()
    assert [e["score"] for e in errors["false_positives"]] == [pytest.approx(0.8)]
    assert [e["area"] for e in errors["false_negatives"]] == [400.0]
    assert metrics["matching"]["per_threshold"]["tp"][0] == 1 and metrics["matching"]["f1@0.50"] == 0.5
    names, confusion = inner.class_confusion()
    assert names[-1] == "background" and confusion.sum() == 3
    with pytest.raises(ValueError, match="both report"):
        Evaluators([inner, inner]).evaluate()
    with pytest.raises(DataError, match="processed twice"):
        inner.process([{"image_id": 3, "instances": gt}], [pred])


# -- results files ----------------------------------------------------------------------------------
def _rle(h: int, w: int) -> dict[str, Any]:
    m = np.zeros((h, w), np.uint8, order="F")
    m[1:3, 1:4] = 1
    rle = mask_utils.encode(m)
    return {"size": [h, w], "counts": rle["counts"].decode()}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("{not json", "not valid JSON"),
        ('{"a": 1}', "must be a JSON list"),
        ('[{"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [0, 0, 2, 2]}, 5]', "entry 1: entry is a int"),
        ('[{"image_id": 99, "category_id": 1, "score": 0.5, "bbox": [0, 0, 2, 2]}]', "entry 0: unknown image_id 99"),
        ('[{"image_id": 1, "category_id": 42, "score": 0.5, "bbox": [0, 0, 2, 2]}]', "entry 0: unknown category_id 42"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]}]', "score must be a finite number"),
        ('[{"image_id": 1, "category_id": 1, "score": 1, "bbox": [0, 0, -2, 2]}]', "width and height"),
        ('[{"image_id": 1, "category_id": 1, "score": 1}]', "neither 'bbox' nor 'segmentation'"),
        ('[{"image_id": 1, "category_id": 1, "score": 1, "segmentation": {"size": [5, 6], "counts": "0"}}]',
         "does not match the image size"),
    ],
)
def test_bad_results_name_file_and_entry(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        read_results(path, {1: (10, 12)}, [1, 2])
    assert str(path) in str(info.value)


def test_malformed_rle_is_caught_before_pycocotools() -> None:
    good = _rle(10, 12)
    data = [{"image_id": 1, "category_id": 1, "score": 0.3, "segmentation": good}] * 3
    out = validate_results(data, {1: (10, 12)}, [1])
    assert isinstance(out[0]["segmentation"]["counts"], bytes)
    for counts in (good["counts"][:-1] + "~", good["counts"] + "5", good["counts"][:-1], "\x01"):
        bad = [*data, {"image_id": 1, "category_id": 1, "score": 0.3, "segmentation": {"size": [10, 12],
                                                                                       "counts": counts}}]
        with pytest.raises(DataError, match="entry 3: malformed"):
            validate_results(bad, {1: (10, 12)}, [1], source="r.json")


def test_rle_validator_matches_a_plain_parser() -> None:
    def parse(s: bytes) -> list[int] | None:  # pycocotools' rleFrString, in Python
        counts, p = [], 0
        while p < len(s):
            x = k = 0
            more = True
            while more:
                if p >= len(s) or not 48 <= s[p] < 112:
                    return None
                c = s[p] - 48
                x |= (c & 0x1F) << 5 * k
                more, p, k = bool(c & 0x20), p + 1, k + 1
                if not more and c & 0x10:
                    x |= -1 << 5 * k
            counts.append(x + (counts[-2] if len(counts) > 2 else 0))
        return counts

    rng = np.random.default_rng(0)
    rles, expected = [], []
    for _ in range(3000):
        s = bytes(rng.integers(48, 64 if rng.random() < 0.7 else 112, rng.integers(1, 10)).astype(np.uint8))
        counts = parse(s)
        fits = counts is not None and min(counts) >= 0 and rng.random() < 0.8
        total = sum(counts) if fits else int(rng.integers(1, 60))
        rles.append({"size": [1, total], "counts": s})
        expected.append(counts is not None and min(counts) >= 0 and sum(counts) == total)
    assert (compressed_rles_valid(rles) == np.array(expected)).all()
    assert sum(expected) > 500


def test_families_compose_on_one_store_and_inference_loop() -> None:
    """Evaluators over one shared ImageStore give InstanceEvaluator's sections; each batch is prepared once."""
    from maskkit.evaluation import (
        COCOEvaluator,
        ConfusionEvaluator,
        ImageStore,
        MatchingEvaluator,
        PanopticEvaluator,
        inference_on_dataset,
    )

    gt = Instances.from_masks(_squares(30), [1, 2, 3] * 10)
    pred = Instances.from_masks(_squares(30, shift=2), [1, 2, 2] * 10, np.linspace(0.9, 0.2, 30))
    cats = [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]
    inputs = [{"image_id": 1, "instances": gt}]
    whole = InstanceEvaluator(cats, extras=("matching", "panoptic", "confusion"))
    expected = inference_on_dataset(lambda batch: [pred], [inputs], whole)
    store = ImageStore(cats)
    prepared = []
    store_prepare = store.prepare
    store.prepare = lambda i, o: prepared.append(1) or store_prepare(i, o)  # type: ignore[method-assign]
    confusion = ConfusionEvaluator(store)
    composed = Evaluators([COCOEvaluator(store), MatchingEvaluator(store), PanopticEvaluator(store), confusion])
    sections = inference_on_dataset(lambda batch: [pred], [inputs], composed)
    assert prepared == [1]
    for key in ("bbox", "segm", "matching", "panoptic"):
        assert jsonable(sections[key]) == expected[key]
    assert np.array_equal(confusion.class_confusion()[1], whole.class_confusion()[1])
    assert confusion.class_confusion()[1].sum() > 0
