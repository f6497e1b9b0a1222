"""Training engine: a tiny CPU run, SIGKILL + resume reproducing the same per-step losses, the API, helpers."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import ONE_THREAD_ENV, tiny_config
from maskkit.data.synth import write_synthetic

TINY = tiny_config(
    model={"options": {"box_batch_size_per_image": 32, "rpn_batch_size_per_image": 32, "rpn_pre_nms_top_n_train": 200,
                       "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
                       "box_detections_per_img": 20}},
    data={"batch_size": 2, "val_fraction": 0.2},
    augment={"min_size": [56, 64]},
    optim={"warmup_steps": 2},
    schedule={"epochs": 2, "save_every_steps": 3, "val_loss": True},
    output={"progress": False, "tensorboard": True, "plots": True},
)


def _env() -> dict[str, str]:
    return ONE_THREAD_ENV


def _train_cmd(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "maskkit", "train", "--config", str(cfg), "--out", str(out), *extra]


def _steps(run: Path) -> list[dict[str, str]]:
    with (run / "steps.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic data (10 images, 64 px, no val split) and the tiny config; runs A (whole) and B (killed)."""
    root = tmp_path_factory.mktemp("engine")
    write_synthetic(root / "data", images=10, size=64, seed=3)
    cfg = dict(TINY, data={**TINY["data"], "path": str(root / "data")})
    cfg_path = root / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    cfg_b = root / "tiny_b.yaml"  # same run, without the (slow to import) TensorBoard and plots
    cfg_b.write_text(yaml.safe_dump({**cfg, "output": {"progress": False, "tensorboard": False, "plots": False}}))
    run_a, run_b = root / "runA", root / "runB"
    # Both runs start together (2 cores); B is killed as soon as its first checkpoint appears.
    pa = subprocess.Popen(_train_cmd(cfg_path, run_a), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pb = subprocess.Popen(_train_cmd(cfg_b, run_b), env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_b / "last.pt").exists() and pb.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    pb.send_signal(signal.SIGKILL)
    killed_rc = pb.wait()
    out_a = pa.communicate(timeout=180)[0].decode()
    assert pa.returncode == 0, out_a
    return {"root": root, "cfg": cfg_b, "a": run_a, "b": run_b, "killed_rc": killed_rc}


def test_run_folder_contents(tiny: dict[str, Path]) -> None:
    from maskkit.models.checkpoint import load_checkpoint

    run = tiny["a"]
    for name in ("config.yaml", "classes.json", "versions.json", "results.csv", "steps.csv", "curves.png",
                 "best.pt", "last.pt", "metrics.json", "val_images.json"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.*"))
    assert json.loads((run / "classes.json").read_text())["names"] == ["ellipse", "polygon", "ring"]
    val = json.loads((run / "val_images.json").read_text())
    assert val["source"] == "random" and len(val["images"]) == 2
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 8 and ckpt["category_ids"] == [1, 2, 3]
    assert ckpt["config"]["model"]["name"] == "maskrcnn_r18_fpn" and "torch" in ckpt["versions"]
    assert load_checkpoint(run / "best.pt")["class_names"] == ["ellipse", "polygon", "ring"]
    with (run / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for key in ("train/loss_mask", "train/loss_objectness", "val/loss", "val/loss_mask", "segm.AP", "bbox.AP", "lr"):
        assert rows[-1][key] != "", key
    metrics = json.loads((run / "metrics.json").read_text())
    assert "AP" in metrics["segm"] and "AP50" in metrics["bbox"]


def test_sigkill_resume_reproduces_losses(tiny: dict[str, Path]) -> None:
    run_a, run_b = tiny["a"], tiny["b"]
    assert tiny["killed_rc"] == -signal.SIGKILL, "the run finished before it could be killed"
    from maskkit.models.checkpoint import load_checkpoint

    at = load_checkpoint(run_b / "last.pt")
    assert at["step"] < 8
    proc = subprocess.run(_train_cmd(tiny["cfg"], run_b, "--resume", str(run_b)), env=_env(), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a, b = _steps(run_a), _steps(run_b)
    assert [r["step"] for r in b] == [str(i) for i in range(1, 9)]
    for ra, rb in zip(a, b, strict=True):
        for key in set(ra) - {"seconds", "data_seconds"}:  # wall times differ; everything else is reproduced
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-5, abs=1e-6), (ra["step"], key)
    assert torch.equal(load_checkpoint(run_a / "last.pt")["model"]["roi_heads.mask_predictor.mask_fcn_logits.weight"],
                       load_checkpoint(run_b / "last.pt")["model"]["roi_heads.mask_predictor.mask_fcn_logits.weight"])


def test_load_and_predict(tiny: dict[str, Path]) -> None:
    import maskkit
    from maskkit.structures import Instances, Masks

    predictor = maskkit.load(tiny["a"])
    image_path = next((tiny["root"] / "data" / "images").glob("*.png"))
    inst = predictor.predict(image_path, score_threshold=0.0)
    assert isinstance(inst, Instances) and inst.image_size == (64, 64)
    if len(inst):
        assert isinstance(inst.masks, Masks) and set(np.unique(inst.labels)) <= {1, 2, 3}
    inst2 = predictor.predict(np.zeros((40, 50, 3), np.uint8))
    assert inst2.image_size == (40, 50)


def test_weights_backbone_only_and_class_mismatch(tmp_path: Path) -> None:
    from maskkit.config import TrainConfig
    from maskkit.models.factory import build_model, load_weights

    cfg = TrainConfig.model_validate({**TINY, "data": {"path": "x"}})
    src = build_model(cfg, 5)
    body = {k[len("backbone.body."):]: v for k, v in src.state_dict().items() if k.startswith("backbone.body.")}
    torch.save(body, tmp_path / "backbone.pth")
    torch.save(src.state_dict(), tmp_path / "full.pth")
    dst = build_model(cfg, 2)
    rep = load_weights(dst, tmp_path / "backbone.pth")
    assert rep.loaded == len(body) and rep.unexpected == 0 and not rep.shape_mismatch
    assert torch.equal(dst.state_dict()["backbone.body.conv1.weight"], body["conv1.weight"])
    rep = load_weights(dst, tmp_path / "full.pth")
    assert {k.rsplit(".", 1)[0] for k in rep.shape_mismatch} == {
        "roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred",
        "roi_heads.mask_predictor.mask_fcn_logits"}
    assert "skipped for shape" in rep.summary()


def test_nonfinite_loss_is_skipped_then_stops() -> None:
    from maskkit.engine.loop import EpochState, StepContext, train_epoch
    from maskkit.errors import MaskkitError

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, images: list, targets: list) -> dict[str, torch.Tensor]:
            bad = targets[0]["bad"]
            return {"loss_a": self.w * (float("nan") if bad else 1.0), "loss_b": self.w * 2}

    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = StepContext(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), torch.device("cpu"),
                      {"loss_b": 0.5}, 1.0, max_bad_steps=1)
    st = EpochState()
    rows: list[dict] = []
    batches = [([torch.zeros(1)], [{"bad": b}]) for b in (False, True, False)]
    train_epoch(ctx, batches, st, rows.append)
    assert st.bad_steps == 1 and st.step == 3 and rows[0]["loss"] == pytest.approx(2.0)  # 1 + 0.5 * 2
    assert st.sums["n"] == 2
    with pytest.raises(MaskkitError, match="max_bad_steps"):
        train_epoch(ctx, [([torch.zeros(1)], [{"bad": True}])], st, rows.append)


def test_val_split_sampler_schedule_rng() -> None:
    import random

    from maskkit.config import OptimConfig
    from maskkit.data.synth import generate
    from maskkit.engine.data import EpochBatchSampler, random_val_split
    from maskkit.engine.run_state import rng_state, set_rng_state
    from maskkit.engine.schedule import lr_factor

    aset = generate(10, size=32, seed=1)
    t1, v1 = random_val_split(aset, 0.3, seed=5)
    _, v2 = random_val_split(aset, 0.3, seed=5)
    assert [r.id for r in v1] == [r.id for r in v2] and len(v1) == 3 and len(t1) == 7
    assert not {r.id for r in t1} & {r.id for r in v1}
    full = list(EpochBatchSampler(10, 3, seed=0, epoch=1))
    assert list(EpochBatchSampler(10, 3, seed=0, epoch=1, start=2)) == full[2:]
    assert full != list(EpochBatchSampler(10, 3, seed=0, epoch=2))
    ranks = [[i for b in EpochBatchSampler(10, 2, 0, 0, rank=r, world_size=2) for i in b] for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) == len(ranks[1]) == 5
    # validation shards keep every image even when the count does not divide
    val = [[i for b in EpochBatchSampler(7, 2, 0, 0, rank=r, world_size=2, shuffle=False, drop_uneven=False)
            for i in b] for r in (0, 1)]
    assert sorted(val[0] + val[1]) == list(range(7))
    # interleaved: sorted by file name, every 5th from the first (the peer-baseline split of the nuclei set)
    ti, vi = random_val_split(aset, 0.2, seed=5, mode="interleaved")
    names = sorted(r.file_name for r in aset.images)
    assert [r.file_name for r in vi] == names[::5] and len(ti) == 8
    f = lr_factor(OptimConfig(warmup_steps=10, scheduler="cosine"), 100)
    assert f(0) < 0.01 and f(10) == pytest.approx(1.0) and f(99) < 0.05
    g = lr_factor(OptimConfig(warmup_steps=0, scheduler="step", step_milestones=[0.5]), 100)
    assert g(49) == 1.0 and g(50) == pytest.approx(0.1)
    state = rng_state()
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    expect = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(loaded)
    assert (random.random(), np.random.rand()) == expect[:2] and torch.equal(torch.rand(1), expect[2])


def test_postprocess_to_instances() -> None:
    from maskkit.models.outputs import to_instances

    probs = torch.zeros(2, 1, 20, 30)
    probs[0, 0, 2:5, 3:9] = 0.9
    probs[1, 0, 10:12, 10:11] = 0.6
    out = {"boxes": torch.tensor([[3.0, 2, 9, 5], [10, 10, 11, 12]]), "labels": torch.tensor([1, 2]),
           "scores": torch.tensor([0.9, 0.4]), "masks": probs}
    inst = to_instances(out, (20, 30), [7, 11])
    assert inst.labels.tolist() == [7, 11] and inst.masks.areas().tolist() == [18, 2]
    assert inst.masks.boxes()[0].tolist() == [3, 2, 9, 5]


def test_postprocess_instance_map() -> None:
    """Dense models return an instance map; instances absent from it get empty masks."""
    from maskkit.models.outputs import to_instances

    imap = np.zeros((20, 30), np.int32)
    imap[2:5, 3:9] = 1
    imap[10:15, 10:20] = 3
    out = {"boxes": torch.zeros(3, 4), "labels": torch.tensor([1, 2, 1]), "scores": torch.tensor([0.9, 0.5, 0.4]),
           "instance_map": torch.from_numpy(imap)}
    inst = to_instances(out, (20, 30), [7, 9])
    assert inst.masks.areas().tolist() == [18, 0, 50] and inst.labels.tolist() == [7, 9, 7]


def test_budget_cut_epoch_resumes_mid_epoch(tiny: dict[str, Path], tmp_path: Path) -> None:
    """A run stopped by its time budget mid-epoch records the epoch as unfinished; a resume continues it."""
    from maskkit.engine.api import train
    from maskkit.models.checkpoint import load_checkpoint

    cfg = yaml.safe_load(tiny["cfg"].read_text())
    cfg["schedule"] = {"epochs": 1, "val_loss": False}
    path = tmp_path / "cut.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cut"
    result = train(path, **{"output.out": str(out), "schedule.max_minutes": 1e-6})
    ckpt = load_checkpoint(out / "last.pt")
    assert result.steps == 1 and (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (0, 1, 1)
    resumed = train(path, resume=out, **{"schedule.max_minutes": 60})
    assert resumed.steps == 4 and resumed.epochs == 1  # 8 train images, batch 2: the other 3 batches ran


def test_eval_cli_scores_a_checkpoint(tiny: dict[str, Path], tmp_path: Path) -> None:
    """`maskkit eval --model CKPT --data DATA` runs the Predictor over the data and writes metrics.json."""
    from typer.testing import CliRunner

    from maskkit.cli.main import app

    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny["a"] / "best.pt"), "--data",
                                      str(tiny["root"] / "data"), "--out", str(out), "--no-boundary"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["segm"]["AP"] <= 1.0 and metrics["counts"]["gt_instances"] > 0
