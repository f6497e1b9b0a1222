"""``maskkit eval``: results files, label-image folders, checkpoints; metrics.json, CSVs and plots."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskkit.cli.main import main
from maskkit.evaluation.coco import STAT_KEYS

LABELME_COCO = "labelme-voc2011-instances/data_dataset_coco/annotations.json"


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["maskkit", "eval", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "120")
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def make_dataset(root: Path) -> tuple[Path, Path]:
    """A tiny COCO dataset (annotations.json beside images/) and a results file with errors of each kind."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    images, anns, results = [], [], []
    for image_id in (1, 2):
        h, w = 96, 128
        cv2.imwrite(str(root / "images" / f"{image_id}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
        for k, (x, y, s, cat) in enumerate([(5, 5, 30, 1), (60, 10, 40, 2), (20, 60, 20, 1)]):
            m = np.zeros((h, w), bool)
            m[y : y + s, x : x + s] = True
            anns.append({"id": len(anns), "image_id": image_id, "category_id": cat, "segmentation": _rle(m),
                         "area": float(m.sum()), "bbox": [x, y, s, s], "iscrowd": 0})
            if k == 2 and image_id == 2:
                continue  # a false negative
            m2 = np.zeros((h, w), bool)
            m2[y + 1 : y + s, x : x + s - 2] = True
            results.append({"image_id": image_id, "category_id": cat, "score": 0.9 - 0.1 * k,
                            "segmentation": _rle(m2), "bbox": [x, y + 1, s - 2, s - 1]})
        m3 = np.zeros((h, w), bool)
        m3[70:90, 90:120] = True  # a false positive
        results.append({"image_id": image_id, "category_id": 2, "score": 0.95, "segmentation": _rle(m3),
                        "bbox": [90, 70, 30, 20]})
    cats = [{"id": 1, "name": "cell"}, {"id": 2, "name": "blob"}]
    gt_path = root / "annotations.json"
    gt_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    res_path = root / "results.json"
    res_path.write_text(json.dumps(results))
    return gt_path, res_path


def test_eval_results_file_writes_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    gt, res = make_dataset(tmp_path / "data")
    out = tmp_path / "out"
    code, stdout, err = run(monkeypatch, capsys, "--gt", gt, "--pred", res, "--out", out, "--semantic")
    assert code == 0, err
    assert "COCO metrics" in stdout and "Per class" in stdout and "Object sizes" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    for section in ("bbox", "segm", "boundary"):
        assert set(STAT_KEYS) <= set(metrics[section])
        assert all(v is None or 0 <= v <= 1 for k, v in metrics[section].items() if k in STAT_KEYS)
    assert metrics["segm"]["APl"] is None  # no large objects: null, not -1
    assert {"matching", "panoptic", "semantic", "per_class", "sizes", "params", "counts"} <= set(metrics)
    assert metrics["counts"] == {"images": 2, "gt_instances": 6, "gt_crowd": 0, "pred_instances": 7}
    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["name"] for r in rows] == ["cell", "blob"] and rows[0]["segm_AP"]
    sizes = list(csv.DictReader((out / "sizes.csv").open()))
    assert [r["size"] for r in sizes] == ["small", "medium", "large"]
    assert sum(int(r["num_gt"]) for r in sizes) == 6
    for name in ("pr_curves_bbox.png", "pr_curves_segm.png", "pr_curves_boundary.png", "confusion_matrix.png",
                 "error_gallery.png"):
        assert (out / name).stat().st_size > 1000, name


def test_eval_on_shared_coco_matches_library(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    gt = shared_data / LABELME_COCO
    raw = json.loads(gt.read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in raw["images"]}
    results = []
    for ann in raw["annotations"]:
        h, w = sizes[ann["image_id"]]
        m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w)))
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 0.5,
                        "segmentation": _rle(cv2.erode(m, np.ones((3, 3), np.uint8)))})
    res = tmp_path / "res.json"
    res.write_text(json.dumps(results))
    code, _, err = run(monkeypatch, capsys, "--gt", gt, "--pred", res, "--out", tmp_path / "o", "--no-boundary",
                       "--gallery", "0")
    assert code == 0, err
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["segm"]["AP50"] == 1.0 and "boundary" not in metrics


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.append({"image_id": 77, "category_id": 1, "score": 1, "bbox": [0, 0, 1, 1]}),
         "entry 7: unknown image_id 77"),
        (lambda r: r[2].update(category_id=9), "entry 2: unknown category_id 9"),
        (lambda r: r[1]["segmentation"].update(counts="!!"), "entry 1: malformed compressed RLE"),
    ],
)
def test_bad_results_exit_2_naming_file_and_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], mutate: Any,
                                                  message: str) -> None:
    gt, res = make_dataset(tmp_path / "data")
    results = json.loads(res.read_text())
    mutate(results)
    res.write_text(json.dumps(results))
    code, _, err = run(monkeypatch, capsys, "--gt", gt, "--pred", res)
    assert code == 2
    assert str(res) in err and message in err


def test_eval_label_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    for stem in ("a", "b"):
        gt = np.zeros((64, 64), np.uint16)
        pred = np.zeros((64, 64), np.uint16)
        for i in range(6):
            y, x = divmod(i, 3)
            gt[5 + 20 * y : 20 + 20 * y, 5 + 20 * x : 18 + 20 * x] = i + 1
            if i:  # one missed nucleus per image
                pred[6 + 20 * y : 20 + 20 * y, 5 + 20 * x : 18 + 20 * x] = 10 + i
        cv2.imwrite(str(gt_dir / f"{stem}.png"), gt)
        cv2.imwrite(str(pred_dir / f"{stem}.png"), pred)
    out = tmp_path / "out"
    code, _, err = run(monkeypatch, capsys, "--gt-labels", gt_dir, "--pred-labels", pred_dir, "--out", out)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["matching"]["recall@0.50"] == pytest.approx(10 / 12)
    assert metrics["matching"]["precision@0.50"] == 1.0
    assert metrics["counts"]["gt_instances"] == 12 and metrics["counts"]["pred_instances"] == 10
    notes = " ".join(metrics["params"]["notes"])
    assert "scored 1.0" in notes and "error gallery skipped" in notes


def test_options_must_form_one_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(monkeypatch, capsys, "--gt", tmp_path / "a.json", "--gt-labels", tmp_path)
    assert code == 2 and "exactly one of" in err
    code, _, err = run(monkeypatch, capsys, "--gt", tmp_path / "a.json", "--pred", tmp_path / "b", "--max-dets", "x")
    assert code == 2 and "--max-dets" in err


def test_model_evaluation_plugs_in_a_predictor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import maskkit.inference
    from maskkit.structures import Instances, Masks

    class FakePredictor:  # the contract: load(checkpoint).predict(image) -> Instances (dataset category ids)
        def __init__(self, checkpoint: Path) -> None:
            self.checkpoint = checkpoint

        def predict(self, image: np.ndarray) -> Instances:
            m = np.zeros(image.shape[:2], bool)
            m[5:35, 5:35] = True
            return Instances.from_masks(Masks.from_bitmaps(m[None], *m.shape), [1], [0.9])

    monkeypatch.setattr(maskkit.inference, "load", lambda checkpoint, **_: FakePredictor(checkpoint),
                        raising=False)
    gt, _ = make_dataset(tmp_path / "data")
    code, _, err = run(monkeypatch, capsys, "--model", tmp_path / "ckpt.pt", "--data", gt, "--out", tmp_path / "o")
    assert code == 0, err
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["counts"]["pred_instances"] == 2 and metrics["segm"]["AP50"] > 0
    # no val_images.json beside the checkpoint: it cannot tell what was trained on, and says so
    assert metrics["contains_training_images"] is True
    assert "cannot tell which images the model was trained on" in err


class _FakePredictor:
    """``load(checkpoint).predict(image) -> Instances``: one square per image (dataset category ids)."""

    def __init__(self, checkpoint: Path, **options: Any) -> None:
        self.checkpoint = checkpoint

    def predict(self, image: np.ndarray) -> Any:
        from maskkit.structures import Instances, Masks

        m = np.zeros(image.shape[:2], bool)
        m[5:35, 5:35] = True
        return Instances.from_masks(Masks.from_bitmaps(m[None], *m.shape), [1], [0.9])


def _fake_run(run_dir: Path, data: str, val_fraction: float) -> list[str]:
    """A run folder whose ``val_images.json`` is what training on ``data`` (as spelled) writes; its val files."""
    from maskkit.config import TrainConfig
    from maskkit.engine.data import load_train_data, split_record
    from maskkit.fileio import atomic_write_json

    cfg = TrainConfig.model_validate({"data": {"path": data, "val_fraction": val_fraction}, "seed": 1})
    record = split_record(load_train_data(cfg), cfg)
    atomic_write_json(run_dir / "val_images.json", record)
    (run_dir / "best.pt").write_bytes(b"")
    return [e["file_name"] for e in record["images"]]


@pytest.mark.parametrize("spelling", ["relative", "absolute", "symlinked", "dot-dot"])
def test_model_eval_on_the_training_source_scores_only_val_images(
        spelling: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import maskkit.inference

    monkeypatch.setattr(maskkit.inference, "load", lambda checkpoint, **_: _FakePredictor(checkpoint),
                        raising=False)
    make_dataset(tmp_path / "data")
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path)
    val = _fake_run(tmp_path / "run", "data", val_fraction=0.5)  # trained with a relative path
    assert len(val) == 1
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data", target_is_directory=True)
    data = {"relative": Path("data"), "absolute": tmp_path / "data", "symlinked": tmp_path / "link",
            "dot-dot": Path("elsewhere") / ".." / "link" / "annotations.json"}[spelling]
    code, out, err = run(monkeypatch, capsys, "--model", tmp_path / "run", "--data", data, "--out", tmp_path / "o",
                         "--no-boundary", "--gallery", "0")
    assert code == 0, err
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["counts"]["images"] == 1 and metrics["contains_training_images"] is False
    assert "scoring the 1 val images listed in" in out + err + json.dumps(metrics)


def test_model_eval_other_data_and_training_only_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import maskkit.inference

    monkeypatch.setattr(maskkit.inference, "load", lambda checkpoint, **_: _FakePredictor(checkpoint),
                        raising=False)
    make_dataset(tmp_path / "data")
    make_dataset(tmp_path / "other")
    (tmp_path / "run").mkdir()
    _fake_run(tmp_path / "run", str(tmp_path / "data"), val_fraction=0.5)
    # images the run never saw (same file names, other files): all scored, not flagged
    code, _, err = run(monkeypatch, capsys, "--model", tmp_path / "run" / "best.pt", "--data", tmp_path / "other",
                       "--out", tmp_path / "o", "--no-boundary", "--gallery", "0")
    assert code == 0, err
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["counts"]["images"] == 2 and metrics["contains_training_images"] is False
    assert "warning" not in err
    # a run that trained on every image: nothing left to score honestly -> a clear error, no metrics
    _fake_run(tmp_path / "run", str(tmp_path / "data"), val_fraction=0.0)
    code, _, err = run(monkeypatch, capsys, "--model", tmp_path / "run", "--data", tmp_path / "data", "--no-boundary")
    assert code == 2 and "used to train the model" in err and "val_images.json" in err
