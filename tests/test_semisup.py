"""Semi-supervised training: ``--unlabeled``/``data.unlabeled``, the ``semi`` config, pseudo-labels, the mean
teacher and tiny runs of a dense and a Mask R-CNN model."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny_config
from maskkit.config import SemiConfig, load_config, save_config
from maskkit.errors import ConfigError, DataError
from maskkit.structures.labels import IGNORE_INDEX

TINY_UNET: dict[str, Any] = tiny_config(model={"name": "unet_mbv2", "pretrained_backbone": False,
                                               "options": {"decoder_channels": [16, 16, 8, 8, 8]}})
TINY_BOTTOMUP: dict[str, Any] = tiny_config(model={"name": "bottomup_mbv2", "pretrained_backbone": False,
                                                   "options": {"decoder_channels": [16, 16, 8, 8, 8]}})
QUIET = {"tensorboard": False, "plots": False, "progress": False}


def _png(path: Path, value: int = 128, size: tuple[int, int] = (40, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8 labelled synthetic images (COCO) and 6 other synthetic images as an unlabeled folder (their COCO
    annotations.json is there too and must be ignored)."""
    from maskkit.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("semisup")
    write_synthetic(root / "data", images=8, size=64, seed=1, workers=1)
    write_synthetic(root / "unlabeled", images=6, size=64, seed=2, workers=1)
    return {"root": root, "data": root / "data", "unlabeled": root / "unlabeled"}


def _run_config(base: dict[str, Any], synth: dict[str, Path], out: Path, **semi: Any) -> dict[str, Any]:
    return tiny_config(base, data={"path": str(synth["data"]), "val_fraction": 0.25, "batch_size": 2,
                                   "unlabeled": str(synth["unlabeled"])},
                       semi={"burn_in_steps": 1, "threshold": 0.3, **semi}, output={**QUIET, "out": str(out)})


def _steps(run: Path) -> list[dict[str, str]]:
    with (run / "steps.csv").open() as f:
        return list(csv.DictReader(f))


# -- config, CLI and the unlabeled folder ------------------------------------------------------------------------
def test_config_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, {"data.unlabeled": "pool", "semi.threshold": 0.8, "semi.adaptive": True,
                             "semi.class_thresholds": {"circle": 0.6}, "semi.ratio": 2, "semi.burn_in_steps": 5})
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and again.data.unlabeled == "pool" and again.semi.class_thresholds == {"circle": 0.6}
    assert load_config().data.unlabeled is None and load_config().semi == SemiConfig()
    with pytest.raises(ConfigError, match="threshold"):
        load_config(None, {"semi.threshold": 1.5})
    with pytest.raises(ConfigError, match="semi"):
        load_config(None, {"semi.unknown": 1})


def test_unlabeled_folder_lists_images_only(tmp_path: Path) -> None:
    """Images anywhere below the folder; label folders (DSB ``masks/``), non-images and hidden files ignored."""
    from maskkit.data.unlabeled import load_unlabeled

    root = tmp_path / "pool"
    _png(root / "a" / "images" / "a.png")
    _png(root / "a" / "masks" / "m1.png", 255)
    _png(root / "b.png", size=(30, 20))
    _png(root / "labels" / "b.png")
    _png(root / ".hidden.png")
    (root / "notes.txt").write_text("x")
    aset = load_unlabeled(root)
    assert [r.file_name for r in aset.images] == ["a/images/a.png", "b.png"]
    assert (aset.images[1].height, aset.images[1].width) == (20, 30)
    assert all(len(r.instances) == 0 for r in aset.images)


def test_unlabeled_folder_errors_name_the_file(tmp_path: Path) -> None:
    from maskkit.data.unlabeled import load_unlabeled

    with pytest.raises(DataError, match="not found"):
        load_unlabeled(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    _png(tmp_path / "empty" / "masks" / "m.png")
    with pytest.raises(DataError, match="no image files"):
        load_unlabeled(tmp_path / "empty")
    bad = tmp_path / "bad"
    _png(bad / "ok.png")
    (bad / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_unlabeled(bad)
    # a symlink to an image outside the folder is refused (nothing outside it is read) unless allowed
    outside = _png(tmp_path / "secret.png")
    link = tmp_path / "linked"
    _png(link / "ok.png")
    os.symlink(outside, link / "escape.png")
    with pytest.raises(DataError, match=r"escape\.png.*outside"):
        load_unlabeled(link)
    assert len(load_unlabeled(link, allow_outside_root=True).images) == 2


# -- pseudo-labels -----------------------------------------------------------------------------------------------
def test_dense_pseudo_target_threshold_and_ignore() -> None:
    from maskkit.engine.pseudo_labels import dense_pseudo_target

    probs = torch.zeros(3, 2, 4)
    probs[:, 0] = torch.tensor([[0.9, 0.05, 0.05]]).T  # row 0: confident background
    probs[:, 1, :2] = torch.tensor([[0.1, 0.8, 0.1]]).T  # row 1 left: class 1 at 0.8
    probs[:, 1, 2:] = torch.tensor([[0.3, 0.1, 0.6]]).T  # row 1 right: class 2 at 0.6
    thresholds = torch.tensor([0.7, 0.7, 0.5])  # class 2 has a lower threshold
    t = dense_pseudo_target({"sem_seg": probs}, thresholds)
    assert t["semantic"].tolist() == [[0, 0, 0, 0], [1, 1, 2, 2]]
    t = dense_pseudo_target({"sem_seg": probs}, torch.tensor([0.7, 0.85, 0.7]))
    assert t["semantic"].tolist() == [[0, 0, 0, 0], [IGNORE_INDEX] * 4]
    # with decoded instances: masks and labels of the regions; pixels where regions and classes disagree ignored
    imap = torch.tensor([[0, 0, 0, 1], [2, 2, 3, 3]])
    t = dense_pseudo_target({"sem_seg": probs, "instance_map": imap}, thresholds)
    assert t["semantic"].tolist() == [[0, 0, 0, IGNORE_INDEX], [1, 1, 2, 2]]
    assert t["labels"].tolist() == [1, 2] and t["masks"].shape == (2, 2, 4)  # region 1 has no confident pixel
    assert t["masks"][0].tolist() == [[0, 0, 0, 0], [1, 1, 0, 0]] and t["boxes"][0].tolist() == [0, 1, 2, 2]


def test_instance_pseudo_target_per_class_thresholds() -> None:
    from maskkit.engine.pseudo_labels import instance_pseudo_target

    masks = torch.zeros(3, 1, 8, 8)
    masks[0, 0, 1:3, 1:4] = 0.9
    masks[1, 0, 4:6, 4:6] = 0.7
    masks[2, 0, 0:2, 6:8] = 0.3  # below the 0.5 mask threshold: empty, dropped
    pred = {"scores": torch.tensor([0.8, 0.6, 0.95]), "labels": torch.tensor([1, 2, 1]), "masks": masks,
            "boxes": torch.zeros(3, 4)}
    t = instance_pseudo_target(pred, torch.tensor([0.5, 0.7, 0.55]))
    assert t["labels"].tolist() == [1, 2] and t["boxes"].tolist() == [[1, 1, 4, 3], [4, 4, 6, 6]]
    assert t["masks"].dtype == torch.uint8 and t["area"].tolist() == [6, 4] and t["iscrowd"].tolist() == [0, 0]
    t = instance_pseudo_target(pred, torch.tensor([0.5, 0.9, 0.55]))  # class 1 needs 0.9 now: only class 2
    assert t["labels"].tolist() == [2]


def test_pseudo_labels_of_tiny_models_honour_the_threshold(synth: dict[str, Path], one_thread: None) -> None:
    """The teacher's own predictions: kept pixels/instances are exactly those at or above their class threshold."""
    from maskkit.config import TrainConfig
    from maskkit.data.dataset import InstanceDataset
    from maskkit.data.formats.coco import read_coco
    from maskkit.engine.pseudo_labels import pseudo_target
    from maskkit.models.factory import build_model

    aset = read_coco(synth["unlabeled"])
    ds = InstanceDataset(aset, None)
    images = [ds[i][0] for i in range(2)]
    k = len(aset.categories)
    for base in (TINY_UNET, tiny_config()):
        torch.manual_seed(0)
        cfg = TrainConfig.model_validate({**base, "data": {"path": "x"}})
        model = build_model(cfg, k).eval()
        with torch.no_grad():
            preds = model(images)
        for pred in preds:
            conf, cls = pred["sem_seg"].max(0) if "sem_seg" in pred else (pred["scores"], pred["labels"])
            # thresholds around the median confidence, a little different per class
            thr = float(conf.median()) + torch.linspace(-0.01, 0.01, k + 1) * float(conf.std())
            t = pseudo_target(pred, thr, thr)
            if "sem_seg" in pred:
                sem = t["semantic"]
                assert bool((sem == IGNORE_INDEX).any()) and bool((sem != IGNORE_INDEX).any())
                kept = sem != IGNORE_INDEX
                assert bool((sem[kept] == cls[kept]).all()) and bool((conf[kept] >= thr[cls[kept]]).all())
                assert bool((conf < thr[cls])[~kept & (pred["instance_map"] > 0).eq(cls > 0)].all())
            else:
                n_conf = int((conf >= thr[cls]).sum())
                assert 0 < n_conf < len(conf) and 0 < len(t["labels"]) <= n_conf


def test_adaptive_thresholds() -> None:
    from maskkit.engine.pseudo_labels import ClassThresholds, base_thresholds

    base = base_thresholds(0.8, {"b": 0.9}, ["a", "b"])
    assert base.tolist() == pytest.approx([0.8, 0.8, 0.9])
    with pytest.raises(ConfigError, match="unknown classes"):
        base_thresholds(0.8, {"zebra": 0.5}, ["a", "b"])
    fixed = ClassThresholds(base)
    fixed.observe(torch.tensor([1, 2]), torch.tensor([0.1, 0.1]))
    assert fixed.current().tolist() == pytest.approx(base.tolist())
    ada = ClassThresholds(base, adaptive=True, floor=0.2, momentum=0.5)
    # background always confident, class 1 half of the time, class 2 never predicted
    ada.observe(torch.tensor([0, 0, 1, 1]), torch.tensor([0.95, 0.9, 0.9, 0.2]))
    thr = ada.current()
    assert thr[0] == pytest.approx(0.8) and thr[2] == pytest.approx(0.9)  # best class, unseen class: base
    assert thr[1] == pytest.approx(0.8 * 0.5 / 1.5)  # b = 0.5 -> 0.8 * 0.5 / (2 - 0.5)
    ada.observe(torch.tensor([1, 1]), torch.tensor([0.1, 0.1]))  # class 1 unsure: down to the floor
    assert ada.current()[1] == pytest.approx(0.2)  # b = 0.25 -> 0.114, floored
    restored = ClassThresholds(base, adaptive=True, floor=0.2)
    restored.load_state_dict(ada.state_dict())
    assert restored.current().tolist() == pytest.approx(ada.current().tolist())


def test_strong_view_moves_labels_with_the_image() -> None:
    """Flips apply to image, masks, boxes and class map together; cutout pixels are ignored in the class map."""
    from maskkit.engine.semisup import strong_view

    torch.manual_seed(0)
    mask = torch.zeros(1, 16, 20, dtype=torch.uint8)
    mask[0, 2:6, 1:9] = 1
    image = mask.float().expand(3, -1, -1).clone()
    target = {"masks": mask, "labels": torch.tensor([1]), "boxes": torch.tensor([[1.0, 2, 9, 6]]),
              "semantic": mask[0].long()}
    geometric = SemiConfig(color_jitter=0, blur=0, noise=0, cutout=0)
    flipped = 0
    for _ in range(8):
        im, t = strong_view(image, target, geometric)
        assert torch.equal(im[0].round().to(torch.uint8), t["masks"][0])
        assert torch.equal(t["semantic"], t["masks"][0].long())
        ys, xs = torch.nonzero(t["masks"][0], as_tuple=True)
        assert t["boxes"][0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        flipped += not torch.equal(t["masks"], mask)
    assert flipped > 0
    cut = SemiConfig(color_jitter=0, blur=0, noise=0, cutout=1.0, flip=False)
    im, t = strong_view(image, target, cut)
    erased = (im == 0.5).all(0)
    assert bool(erased.any()) and bool((t["semantic"][erased] == IGNORE_INDEX).all())
    assert bool((t["semantic"][~erased] != IGNORE_INDEX).all()) and torch.equal(t["masks"], mask)
    im, _ = strong_view(image, target, SemiConfig(flip=False, cutout=0))  # photometric: the image changes
    assert not torch.equal(im, image) and float(im.min()) >= 0 and float(im.max()) <= 1


# -- the teacher and the unlabeled loss -------------------------------------------------------------------------
def _semi(cfg_dict: dict[str, Any], synth: dict[str, Path], **semi: Any) -> tuple[Any, Any]:
    from maskkit.config import TrainConfig
    from maskkit.data.unlabeled import load_unlabeled
    from maskkit.engine.semisup import SemiSupervised
    from maskkit.models.factory import build_model

    cfg = TrainConfig.model_validate(_run_config(cfg_dict, synth, synth["root"] / "unused", **semi))
    torch.manual_seed(0)
    names = ["circle", "square", "triangle"]
    return SemiSupervised(cfg, load_unlabeled(synth["unlabeled"]), names, torch.device("cpu")), \
        build_model(cfg, len(names)).train()


def test_teacher_is_an_ema_of_the_student(synth: dict[str, Path], one_thread: None) -> None:
    semi, student = _semi(TINY_UNET, synth, burn_in_steps=2, ema_decay=0.9)
    assert semi.losses(student, 1, {})["loss_unsup"].item() == 0.0 and semi.teacher is None  # burn-in
    semi.losses(student, 2, {})
    assert semi.teacher is not None
    name, p = next((n, p) for n, p in student.named_parameters() if p.dim() == 4)
    t0 = semi.teacher.module.state_dict()[name].clone()
    assert torch.equal(t0, p.detach())  # a copy of the student at the end of the burn-in
    with torch.no_grad():
        p.add_(1.0)
    semi.losses(student, 3, {})
    d = 0.9 * (1 - np.exp(-semi.teacher.updates / semi.teacher.tau))
    assert torch.allclose(semi.teacher.module.state_dict()[name], d * t0 + (1 - d) * p.detach(), atol=1e-6)
    assert not any(q.requires_grad for q in semi.teacher.module.parameters())


def test_student_learns_the_pseudo_labels(synth: dict[str, Path], one_thread: None) -> None:
    """On the same unlabeled images, optimising loss_unsup alone lowers it: the student fits the teacher."""
    semi, student = _semi(TINY_UNET, synth, burn_in_steps=0, ema_decay=0.999, threshold=0.3, ratio=3, flip=False,
                          color_jitter=0, blur=0, noise=0, cutout=0)
    semi.batch_size = 6  # every unlabeled image in every step
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for step in range(12):
        loss = semi.losses(student, step, {})["loss_unsup"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0 and semi.last["pseudo_pixels"] > 0.01
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


# -- tiny runs ------------------------------------------------------------------------------------------------
def test_tiny_semi_run_dense(synth: dict[str, Path], tmp_path: Path, one_thread: None) -> None:
    import maskkit
    from maskkit.models.checkpoint import load_checkpoint

    result = maskkit.train(_run_config(TINY_BOTTOMUP, synth, tmp_path / "run", adaptive=True, threshold=0.26,
                                        min_threshold=0.25))  # random weights: class probabilities near 1/4
    rows = _steps(result.out)
    assert result.steps == 3 and [float(r["loss_unsup"]) == 0 for r in rows] == [True, False, False]
    ckpt = load_checkpoint(result.out / "last.pt")
    assert ckpt["semi"]["teacher"] is not None and ckpt["semi"]["pixel_thresholds"]["observed"] == 2 * 2
    record = json.loads((result.out / "val_images.json").read_text())
    assert len(record["unlabeled_images"]) == 6 and all("images/" in e["file_name"] for e in record["unlabeled_images"])
    assert "train/loss_unsup" in result.history[-1]


def test_tiny_semi_run_maskrcnn_through_the_cli(synth: dict[str, Path], tmp_path: Path) -> None:
    """`maskkit train --unlabeled DIR --set semi.*=...`: the run's config.yaml keeps them; Mask R-CNN's unlabeled
    loss is non-zero after the burn-in."""
    import yaml

    from maskkit.cli.main import app
    from maskkit.models.checkpoint import load_checkpoint

    cfg = _run_config(tiny_config(), synth, tmp_path / "run")
    del cfg["data"]["unlabeled"], cfg["semi"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "c.yaml"), "--unlabeled",
                                   str(synth["unlabeled"]), "--set", "semi.burn_in_steps=1",
                                   "--set", "semi.threshold=0.05", "--set", "semi.box_regression=true"])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["unlabeled"] == str(synth["unlabeled"]) and saved["semi"]["threshold"] == 0.05
    assert saved["semi"]["box_regression"] is True
    rows = _steps(tmp_path / "run")
    assert len(rows) == 3 and float(rows[0]["loss_unsup"]) == 0 and all(float(r["loss_unsup"]) > 0 for r in rows[1:])
    assert load_checkpoint(tmp_path / "run" / "last.pt")["semi"]["teacher"]["updates"] == 1


def test_bad_unlabeled_folder_is_a_clear_cli_error(synth: dict[str, Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import ONE_THREAD_ENV

    missing = tmp_path / "nope"
    res = subprocess.run([sys.executable, "-m", "maskkit", "train", "--data", str(synth["data"]), "--unlabeled",
                          str(missing), "--out", str(tmp_path / "run"), "--no-progress"],
                         capture_output=True, text=True, env=ONE_THREAD_ENV)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{missing}: unlabeled images: folder not found" in res.stderr


def test_label_fraction_benchmark_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    """benchmarks/label_fraction.py end to end at 2 steps: nested labelled subsets, the rest as unlabeled images,
    a table row per run and the curve."""
    import importlib.util
    import sys

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("label_fraction_bench", REPO / "benchmarks" / "label_fraction.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench"
    monkeypatch.setattr(sys, "argv", [
        "label_fraction.py", "--steps", "2", "--fractions", "50", "100", "--images", "10", "--size", "64",
        "--set", "model.name=bottomup_mbv2", "--set", "model.pretrained_backbone=false", "--set", "model.min_size=64",
        "--set", "model.options={decoder_channels: [16, 16, 8, 8, 8]}", "--set", "augment.min_size=[64]",
        "--semi", "burn_in_steps=1", "--threads", "1", "--out", str(out)])
    bench.main()
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["fraction"], r["variant"], r["labelled"], r["unlabelled_used"]) for r in rows] == [
        (50, "supervised", 4, 0), (50, "semi-supervised", 4, 4), (100, "supervised", 8, 0)]
    assert all(r["steps"] == 2 and r["segm_AP"] is not None for r in rows)
    assert len(list((out / "data" / "f50" / "unlabeled").iterdir())) == 4
    assert (out / "curve.png").stat().st_size > 0 and (out / "table.md").read_text().count("| 50 % |") == 2
