"""Post-processing threshold tuning: the tuner picks thresholds that beat a bad default, logs every grid point
(``tuning.csv``) and, with ``tune.split: train_slice``, chooses on held-back training images, never on val."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import torch

from maskkit.data.annotations import Category, ImageRecord, new_instances
from maskkit.models import create
from maskkit.structures import Masks

SIZE = 48


def _touching_discs() -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Two touching discs (ground truth) and "network" maps whose distance is measured from the border of their
    union: the neck between them keeps a distance of about 0.3, so a low seed threshold merges them."""
    import cv2

    yy, xx = np.mgrid[:SIZE, :SIZE]
    discs = np.stack([(yy - 24) ** 2 + (xx - cx) ** 2 <= 100 for cx in (14.5, 33.5)])
    union = discs.any(0)
    dist = cv2.distanceTransform(union.astype(np.uint8), cv2.DIST_L2, 5)
    fg = np.where(union, 0.9, 0.05).astype(np.float32)
    raw = {"sem_seg": torch.from_numpy(np.stack([1 - fg, fg])),
           "boundary": torch.zeros(SIZE, SIZE),
           "distance": torch.from_numpy((dist / dist.max()).astype(np.float32))}
    return discs, raw


def test_tuner_beats_a_bad_default() -> None:
    from maskkit.engine.validation import evaluate

    discs, raw = _touching_discs()
    model = create("bottomup_mbv2", 1, pretrained_backbone=False, decoder_channels=(8, 8, 8, 8, 8))
    model.set_thresholds(seed_threshold=0.1, min_area=0)  # the bad default: one seed across the neck
    model.predict_raw = lambda images: [raw for _ in images]  # the maps above instead of the network's
    record = ImageRecord(1, "a.png", SIZE, SIZE, new_instances(SIZE, SIZE, [1, 1], Masks.from_bitmaps(discs, SIZE,
                                                                                                        SIZE)))
    batches = [([torch.zeros(3, SIZE, SIZE)], [{"image_id": torch.tensor(1)}])]
    cats = [Category(1, "disc")]
    default = evaluate(model, batches, {1: record}, cats, torch.device("cpu"), tune=False)
    tuned = evaluate(model, batches, {1: record}, cats, torch.device("cpu"), tune=True)
    assert default["segm"]["AP"] < 0.3 and "tuning" not in default
    t = tuned["tuning"]
    assert t["thresholds"]["seed_threshold"] == 0.5  # only 0.5 splits the neck
    assert tuned["segm"]["AP"] > 0.9 and t["segm.AP"] == tuned["segm"]["AP"]
    assert len(t["grid"]) == t["combinations"] == 27  # every combination scored, not only the best
    assert max(g["segm.AP"] for g in t["grid"]) == t["segm.AP"]
    assert min(g["segm.AP"] for g in t["grid"]) < 0.3


TINY_BU = {
    "model": {"name": "bottomup_mbv2", "pretrained_backbone": False,
              "options": {"decoder_channels": [8, 8, 8, 8, 8]}},
    "data": {"batch_size": 4, "val_fraction": 0.2},
    "augment": {"min_size": [64], "max_size": None},
    "optim": {"lr": 3e-3, "warmup_steps": 1},
    "schedule": {"epochs": 2, "val_loss": False},
    "output": {"tensorboard": False, "plots": False, "progress": False},
    "tune": {"split": "train_slice", "images": 3},
    "threads": 1,
}


def test_train_slice_makes_the_choices_and_tuning_csv(tmp_path: Path) -> None:
    from maskkit.data.synth import write_synthetic
    from maskkit.engine.api import train

    write_synthetic(tmp_path / "data", images=15, size=64, seed=2)
    result = train(copy.deepcopy(TINY_BU), **{"data.path": str(tmp_path / "data"), "output.out": str(tmp_path / "r")})
    run = tmp_path / "r"
    split = json.loads((run / "val_images.json").read_text())
    files = {k: {e["path"] for e in split[k]} for k in ("images", "tune_images", "train_images")}
    assert [len(files[k]) for k in ("images", "tune_images", "train_images")] == [3, 3, 9]
    assert not (files["images"] & files["tune_images"]) and not (files["train_images"] & files["tune_images"])
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in files["tune_images"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tuning"]["split"] == "train_slice" and "grid" not in metrics["tuning"]
    assert "segm.AP" in metrics["train_slice"] and "AP" in metrics["segm"]  # chosen on the slice, val scored
    with (run / "tuning.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 27 and {r["epoch"] for r in rows} == {"0", "1"}  # one grid per validation
    assert {r["split"] for r in rows} == {"train_slice"}
    assert {"fg_threshold", "seed_threshold", "boundary_threshold", "segm.AP", "step"} <= set(rows[0])
    assert result.best_metric == max(float(r["segm.AP"]) for r in rows if r["epoch"] == str(result.best_epoch))


def test_nuclei_recipes_never_choose_on_the_reported_val_images(shared_data: Path) -> None:
    """configs/dsb2018*.yaml: the 12 reported val images (every 5th id) are disjoint from the 8 held-back images
    that make the choices, and from the training images."""
    from maskkit.config import load_config
    from maskkit.engine.data import load_train_data

    root = Path(__file__).resolve().parents[1] / "configs"
    data = shared_data / "dsb2018-stage1-train-subset" / "stage1_train"
    for name in ("dsb2018.yaml", "dsb2018-bottomup.yaml", "dsb2018-stardist.yaml", "dsb2018-cellpose.yaml"):
        cfg = load_config(root / name, {"data.path": str(data)})
        assert (cfg.tune.split, cfg.tune.images) == ("train_slice", 8), name
        d = load_train_data(cfg)
        assert d.val is not None and d.tune is not None
        val, tune, train = ({r.file_name for r in s.images} for s in (d.val, d.tune, d.train))
        assert (len(val), len(tune), len(train)) == (12, 8, 40), name
        assert not (val & tune) and not (val & train) and not (tune & train)
        everything = sorted(val | tune | train)
        assert sorted(val) == everything[::5]  # the peer-baseline split, untouched


def test_tuning_csv_appends_and_a_resume_truncates(tmp_path: Path) -> None:
    from maskkit.engine.logging import RunLogger

    grid = [{"fg_threshold": 0.4, "segm.AP": 0.25}, {"fg_threshold": 0.5, "segm.AP": 0.5}]
    logger = RunLogger(tmp_path, tensorboard=False)
    logger.log_tuning(grid, epoch=0, step=4, split="val")
    logger.log_tuning(grid, epoch=1, step=8, split="val")
    with (tmp_path / "tuning.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["fg_threshold"], r["segm.AP"]) for r in rows] == [
        ("0", "0.4", "0.25"), ("0", "0.5", "0.5"), ("1", "0.4", "0.25"), ("1", "0.5", "0.5")]
    RunLogger(tmp_path, tensorboard=False).truncate(step=4, epochs_done=1)  # resuming after epoch 0
    with (tmp_path / "tuning.csv").open() as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "0"]
