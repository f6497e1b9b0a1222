"""``maskkit export`` and exported models in ``maskkit predict`` / ``maskkit eval`` / ``maskkit.load``: the same
outputs as the checkpoint (and the accuracy gate: mask AP within 0.3 points, box AP within 0.2, per backend, on
a model trained a few steps on synthetic data), metadata, and one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import TINY_MASKRCNN, save_tiny_checkpoint, tiny_config
from maskkit.cli.main import app, main
from maskkit.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")

FORMATS = {"onnx": "model.onnx", "openvino": "model.xml", "torchscript": "model.torchscript"}
TINY = tiny_config(model={"options": {**TINY_MASKRCNN["model"]["options"], "box_detections_per_img": 20,
                                      "box_score_thresh": 0.0}},
                   schedule={"epochs": 3, "val_loss": False})


def _cli(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """12 synthetic 64 px images, a Mask R-CNN trained a few steps on 8 of them, exported to every format
    with the CLI (default size: the model's 64 px, static)."""
    import maskkit
    from maskkit.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("export_cli")
    write_synthetic(root / "data", images=12, size=64, seed=3, workers=1)
    cfg = tiny_config(TINY, data={"path": str(root / "data"), "val_fraction": 0.34},
                      output={"out": str(root / "run")})
    maskkit.train(cfg)
    paths = {"root": root, "data": root / "data", "run": root / "run"}
    for fmt in FORMATS:
        out = _cli("export", "--model", root / "run", "--format", fmt, "--out", root / fmt)
        assert FORMATS[fmt] in out
        paths[fmt] = root / fmt / FORMATS[fmt]
    return paths


def _results(folder: Path) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = {}
    for r in json.loads((folder / "predictions.json").read_text()):
        by_image.setdefault(r["image_id"], []).append(r)
    return by_image


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_predict_and_eval_match_the_checkpoint(fmt: str, run: dict[str, Path]) -> None:
    from pycocotools import mask as mask_utils

    root, images = run["root"], run["data"] / "images"
    reference = root / "pred_ckpt"
    if not reference.exists():
        _cli("predict", images, "--model", run["run"], "--out", reference, "--conf", "0.05", "--no-save-overlays",
             "--data", run["data"])
    _cli("predict", images, "--model", run[fmt], "--out", root / f"pred_{fmt}", "--conf", "0.05",
         "--no-save-overlays", "--data", run["data"])
    ref, got = _results(reference), _results(root / f"pred_{fmt}")
    assert ref.keys() == got.keys() and sum(map(len, ref.values())) > 0
    for image_id, rows in ref.items():
        other = got[image_id]
        assert len(rows) == len(other)
        for a, b in zip(sorted(rows, key=lambda r: -r["score"]), sorted(other, key=lambda r: -r["score"]),
                        strict=True):
            assert a["category_id"] == b["category_id"] and abs(a["score"] - b["score"]) <= 1e-3
            assert mask_utils.iou([a["segmentation"]], [b["segmentation"]], [0])[0][0] >= 0.99
    # the accuracy gate on the val images
    metrics = {}
    for name, model in (("ckpt", run["run"]), (fmt, run[fmt])):
        out = root / f"eval_{name}"
        if not out.exists():
            _cli("eval", "--model", model, "--data", run["data"], "--out", out, "--no-boundary", "--gallery", "0")
        metrics[name] = json.loads((out / "metrics.json").read_text())
    assert metrics[fmt]["counts"] == metrics["ckpt"]["counts"] and metrics["ckpt"]["counts"]["pred_instances"] > 0
    assert abs(metrics[fmt]["segm"]["AP"] - metrics["ckpt"]["segm"]["AP"]) <= 0.003
    assert abs(metrics[fmt]["bbox"]["AP"] - metrics["ckpt"]["bbox"]["AP"]) <= 0.002
    print(f"\naccuracy gate {fmt}: segm AP {metrics[fmt]['segm']['AP']:.4f} vs {metrics['ckpt']['segm']['AP']:.4f}, "
          f"bbox AP {metrics[fmt]['bbox']['AP']:.4f} vs {metrics['ckpt']['bbox']['AP']:.4f}")


def test_metadata_describes_the_artefact(run: dict[str, Path]) -> None:
    from maskkit.export.metadata import weights_sha256
    from maskkit.models.factory import model_from_checkpoint

    meta = json.loads((run["onnx"].parent / "metadata.json").read_text())
    loaded = model_from_checkpoint(run["run"])
    assert meta["classes"] == [{"id": c, "name": n} for c, n in zip(loaded.category_ids, loaded.class_names,
                                                                     strict=True)]
    assert meta["kind"] == "rcnn" and meta["graph"] == "model.onnx" and meta["model"] == "maskrcnn_r18_fpn"
    assert meta["input"]["dynamic"] is False and meta["input"]["imgsz"] == [64, 64]
    assert meta["input"]["min_size"] == 64 and meta["input"]["size_divisor"] == 32
    assert meta["preprocessing"]["in_graph"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["postprocess"]["score_threshold"] == 0.0 and meta["postprocess"]["detections_per_img"] == 20
    assert meta["config"]["model"]["name"] == "maskrcnn_r18_fpn" and meta["maskkit_version"]
    assert meta["export"] == {"format": "onnx", "imgsz": [64, 64], "dynamic": False, "opset": 17,
                              "torch": meta["export"]["torch"]}
    assert meta["weights_sha256"] == weights_sha256(loaded.model)
    assert meta["outputs"] == ["boxes", "scores", "labels", "masks", "batch_index"]


def test_load_dispatch_and_static_size(run: dict[str, Path]) -> None:
    from maskkit.inference.backends.base import RuntimePredictor
    from maskkit.inference.predictor import Predictor, load

    assert type(load(run["run"])) is Predictor
    for target in (run["onnx"], run["onnx"].parent):
        predictor = load(target)
        assert isinstance(predictor, RuntimePredictor) and predictor.backend == "onnxruntime"
    assert load(run["openvino"]).backend == "openvino" and load(run["torchscript"]).backend == "torchscript"
    static = load(run["onnx"])
    assert len(static.predict(np.zeros((64, 64, 3), np.uint8))) >= 0
    with pytest.raises(ConfigError, match=r"exported for 64x64 images.*--dynamic"):
        static.predict(np.zeros((80, 96, 3), np.uint8))
    with pytest.raises(DataError, match="no graph file"):
        load(run["onnx"].parent, backend="openvino")
    with pytest.raises(ConfigError, match=r"cannot run model\.onnx"):
        load(run["onnx"], backend="torchscript")
    with pytest.raises(ConfigError, match="test-time augmentation"):
        load(run["onnx"], tta=True)


def test_missing_runtime_gives_the_install_hint(run: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from maskkit.inference.predictor import load

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"pip install maskkit\[onnx\]"):
        load(run["onnx"])
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ConfigError, match=r"pip install maskkit\[openvino\]"):
        load(run["openvino"])


def test_what_cannot_be_exported_says_why_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from maskkit.export.api import export_model, graph_module

    with pytest.raises(ConfigError, match="Conv2d cannot be exported"):
        graph_module(torch.nn.Conv2d(3, 3, 1))
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt", TINY_MASKRCNN["model"], [1], ["x"])
    for args, message in ((("--model", ckpt, "--format", "tflite"), "unknown export format 'tflite'"),
                          (("--model", ckpt, "--format", "onnx", "--imgsz", "a,b"), "--imgsz must be H or H,W"),
                          (("--model", ckpt, "--format", "onnx", "--opset", "5"), "--opset must be between"),
                          (("--model", tmp_path / "none.pt", "--format", "onnx"), "checkpoint not found")):
        monkeypatch.setattr(sys, "argv", ["maskkit", "export", *map(str, args), "--out", str(tmp_path / "o")])
        with pytest.raises(SystemExit) as exit_info:
            main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(ConfigError, match="unknown export format"):
        export_model(ckpt, "tflite", tmp_path / "o")


def test_exporter_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from maskkit.export.api import export_model

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unsupported operator aten::foo\nlong details")

    monkeypatch.setattr(torch.onnx, "export", broken)
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt", TINY_MASKRCNN["model"], [1], ["x"])
    with pytest.raises(ConfigError) as info:
        export_model(ckpt, "onnx", tmp_path / "o")
    assert str(info.value).count("\n") == 0
    expected = "maskrcnn_r18_fpn cannot be exported to onnx: RuntimeError: unsupported operator aten::foo"
    assert expected in str(info.value)
    assert not (tmp_path / "o" / "model.onnx").exists() and not (tmp_path / "o" / "metadata.json").exists()


def test_accuracy_gate_bottomup(tmp_path: Path) -> None:
    """The accuracy gate on a model that scores: a bottom-up U-Net trained ~20 s on synthetic shapes (mask AP
    ~0.05), exported to every format: mask AP within 0.3 points and box AP within 0.2 of PyTorch's."""
    import maskkit
    from maskkit.data.synth import write_synthetic
    from maskkit.export.api import export_model

    write_synthetic(tmp_path / "data", images=24, size=64, seed=3, workers=1)
    cfg = tiny_config({"model": {"name": "bottomup_mbv2", "pretrained_backbone": False,
                                 "options": {"decoder_channels": [16, 16, 16, 16, 16]}},
                       "data": {"batch_size": 4, "path": str(tmp_path / "data"), "val_fraction": 0.25},
                       "augment": {"min_size": [64], "max_size": None}, "optim": {"lr": 3e-3, "warmup_steps": 1},
                       "schedule": {"epochs": 15, "val_loss": False},
                       "output": {"tensorboard": False, "plots": False, "progress": False,
                                  "out": str(tmp_path / "run")}, "threads": 1})
    maskkit.train(cfg)
    models = {"ckpt": tmp_path / "run"}
    for fmt in FORMATS:
        models[fmt] = export_model(tmp_path / "run", fmt, tmp_path / fmt, dynamic=True)
    metrics = {}
    for name, model in models.items():
        _cli("eval", "--model", model, "--data", tmp_path / "data", "--out", tmp_path / f"eval_{name}",
             "--no-boundary", "--gallery", "0")
        metrics[name] = json.loads((tmp_path / f"eval_{name}" / "metrics.json").read_text())
    ref = metrics.pop("ckpt")
    assert ref["segm"]["AP"] > 0.02 and ref["counts"]["images"] == 6  # a gate that can fail: the model scores
    for fmt, m in metrics.items():
        assert m["counts"] == ref["counts"]
        assert abs(m["segm"]["AP"] - ref["segm"]["AP"]) <= 0.003, fmt
        assert abs(m["bbox"]["AP"] - ref["bbox"]["AP"]) <= 0.002, fmt
        print(f"\naccuracy gate bottomup {fmt}: segm AP {m['segm']['AP']:.4f} vs {ref['segm']['AP']:.4f}, "
              f"bbox AP {m['bbox']['AP']:.4f} vs {ref['bbox']['AP']:.4f}")
