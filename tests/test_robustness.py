"""``maskkit robustness``: every condition in robustness.json, the summary figures, plots, resuming, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import maskkit.robustness.runner as runner
from conftest import ONE_THREAD_ENV, save_tiny_checkpoint
from maskkit.cli.main import app
from maskkit.data.synth import write_synthetic
from maskkit.errors import ConfigError
from maskkit.robustness import run_robustness
from maskkit.robustness.conditions import parse_eps, parse_severities
from serve_support import TINY_MODEL


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("robust")
    write_synthetic(root / "data", images=3, size=64, seed=2, workers=1)

    def blob_masks(model: Any) -> None:  # random mask logits sit near 0: a positive bias gives blob-like masks
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(0.5)

    save_tiny_checkpoint(root / "run" / "best.pt", TINY_MODEL, [1, 2, 3], ["ellipse", "polygon", "ring"],
                         tweak=blob_masks)
    return {"data": root / "data", "model": root / "run", "root": root}


ARGS = ["--corruptions", "gaussian_noise,hue_shift", "--severities", "1,3", "--attacks", "fgsm,pgd",
        "--eps", "2/255,8/255", "--pgd-steps", "2", "--max-dets", "1,10,100"]
KEYS = {"clean", "gaussian_noise/1", "gaussian_noise/3", "hue_shift/1", "hue_shift/3", "fgsm/eps=2/255",
        "fgsm/eps=8/255", "pgd/eps=2/255", "pgd/eps=8/255"}


def _cli(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_cli_writes_every_condition_and_resumes(setup: dict[str, Path], tmp_path: Path, one_thread: None) -> None:
    out = tmp_path / "rob"
    text = _cli("robustness", "--model", setup["model"], "--data", setup["data"], "--out", out, *ARGS)
    assert "9 conditions evaluated, 0 resumed" in text and "Robustness (%)" in text
    report = json.loads((out / "robustness.json").read_text())
    assert set(report["conditions"]) == KEYS
    for row in report["conditions"].values():
        m = row["metrics"]
        assert {"AP", "AP50"} <= set(m["segm"]) and "AP" in m["bbox"] and "AP" in m["boundary"]
        assert "f1@0.50" in m["matching"] and row["images"] == 3
    s = report["summary"]
    for metric in ("segm", "bbox", "boundary", "f1@0.50"):
        runs = [report["conditions"][k]["metrics"] for k in KEYS if "/" in k and not k.startswith(("fgsm", "pgd"))]
        section, key = {"segm": ("segm", "AP"), "bbox": ("bbox", "AP"), "boundary": ("boundary", "AP"),
                        "f1@0.50": ("matching", "f1@0.50")}[metric]
        assert s["mPC"][metric] == pytest.approx(sum(r[section][key] for r in runs) / 4)
        if s["clean"][metric]:
            assert s["rPC"][metric] == pytest.approx(s["mPC"][metric] / s["clean"][metric])
    assert s["mCAP"] == s["mPC"]["segm"]
    assert report["corruptions"]["gaussian_noise"]["severities"] == [1, 3]
    assert report["attacks"]["pgd"]["eps_labels"] == ["2/255", "8/255"]
    assert report["contains_training_images"] is True  # a bare checkpoint folder does not say what it trained on
    assert (out / "corruptions.png").stat().st_size > 0 and (out / "attacks.png").stat().st_size > 0
    # a rerun resumes everything; a lost condition file is the only one evaluated again
    assert "0 conditions evaluated, 9 resumed" in _cli("robustness", "--model", setup["model"], "--data",
                                                      setup["data"], "--out", out, *ARGS)
    (out / "conditions" / "hue_shift_3.json").unlink()
    assert "1 conditions evaluated, 8 resumed" in _cli("robustness", "--model", setup["model"], "--data",
                                                      setup["data"], "--out", out, *ARGS)
    again = json.loads((out / "robustness.json").read_text())
    assert again["conditions"]["hue_shift/3"]["metrics"] == report["conditions"]["hue_shift/3"]["metrics"]


def test_killed_run_resumes_and_options_change_invalidate(setup: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    out = tmp_path / "rob"
    calls: list[str] = []
    real = runner.corrupt_tensor

    def dying(x: Any, name: str, severity: int, seed: int) -> Any:
        calls.append(f"{name}/{severity}")
        if f"{name}/{severity}" == "fog/2":
            raise KeyboardInterrupt
        return real(x, name, severity, seed)

    monkeypatch.setattr(runner, "corrupt_tensor", dying)
    kw: dict[str, Any] = {"corruptions": "fog,contrast", "severities": "1..2", "attacks": None, "plots": False}
    with pytest.raises(KeyboardInterrupt):
        run_robustness(setup["model"], setup["data"], out, **kw)
    assert sorted(p.name for p in (out / "conditions").iterdir()) == ["clean.json", "fog_1.json"]
    assert not (out / "robustness.json").exists()
    monkeypatch.setattr(runner, "corrupt_tensor", real)
    result = run_robustness(setup["model"], setup["data"], out, **kw)
    assert result.computed == ["fog/2", "contrast/1", "contrast/2"]
    assert set(result.report["conditions"]) == {"clean", "fog/1", "fog/2", "contrast/1", "contrast/2"}
    # another seed is another experiment: nothing is reused
    assert len(run_robustness(setup["model"], setup["data"], out, seed=1, **kw).computed) == 5


def test_conditions_repeat(setup: dict[str, Path], tmp_path: Path, one_thread: None) -> None:
    """Corruptions and attacks are seeded per image: two runs give the same numbers."""
    kw: dict[str, Any] = {"corruptions": "gaussian_noise", "severities": "5", "attacks": "fgsm,pgd", "eps": "8/255",
                          "pgd_steps": 2, "plots": False}
    a = run_robustness(setup["model"], setup["data"], tmp_path / "a", **kw).report["conditions"]
    b = run_robustness(setup["model"], setup["data"], tmp_path / "b", **kw).report["conditions"]
    assert a == {k: {**v, "seconds": a[k]["seconds"]} for k, v in b.items()}


def test_errors(setup: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown corruption 'rain'"):
        run_robustness(setup["model"], setup["data"], tmp_path, corruptions="rain")
    with pytest.raises(ConfigError, match="unknown attack 'cw'"):
        run_robustness(setup["model"], setup["data"], tmp_path, attacks="cw")
    with pytest.raises(ConfigError, match="--eps"):
        parse_eps("4/0")
    with pytest.raises(ConfigError, match="--severities"):
        parse_severities("0..7")
    assert parse_severities("2-4") == [2, 3, 4] and parse_eps("4/255")[0][1] == pytest.approx(4 / 255)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(ConfigError, match="attacks need the model's gradients"):
        run_robustness(onnx, setup["data"], tmp_path, attacks="fgsm")
    proc = subprocess.run([sys.executable, "-m", "maskkit", "robustness", "--model", str(setup["model"]), "--data",
                           str(setup["data"]), "--out", str(tmp_path), "--attacks", "cw"], capture_output=True,
                          text=True, env=ONE_THREAD_ENV, timeout=120)
    assert proc.returncode != 0 and "unknown attack 'cw'" in proc.stderr and "Traceback" not in proc.stderr


def test_ray_equals_single_process(setup: dict[str, Path], tmp_path: Path, one_thread: None) -> None:
    """Clean and corrupted images predicted on Ray (corrupted in the workers) give the single process's numbers."""
    from maskkit.inference.distributed import RaySettings

    pytest.importorskip("ray")
    kw: dict[str, Any] = {"corruptions": "impulse_noise", "severities": "2", "attacks": None, "plots": False}
    single = run_robustness(setup["model"], setup["data"], tmp_path / "single", **kw).report["conditions"]
    ray = run_robustness(setup["model"], setup["data"], tmp_path / "ray", ray=RaySettings("local:2"),
                         **kw).report["conditions"]
    assert set(ray) == {"clean", "impulse_noise/2"}
    assert {k: v["metrics"] for k, v in ray.items()} == {k: v["metrics"] for k, v in single.items()}
