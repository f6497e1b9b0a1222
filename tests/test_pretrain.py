"""``maskkit pretrain``: each SSL method trains the encoder, the weights load into the same model's encoder (as
``maskkit train --weights`` loads them), budgets, bad input and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from maskkit.cli.main import app
from maskkit.config import TrainConfig
from maskkit.engine.pretrain import encoder_of, pretrain
from maskkit.errors import ConfigError, DataError
from maskkit.models.checkpoint import load_checkpoint
from maskkit.models.factory import build_model, load_weights

pytest.importorskip("lightly")
pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "bottomup_r18"


def _images(folder: Path, n: int = 4) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = np.zeros((48, 48, 3), np.uint8)
        for _ in range(4):
            y, x = rng.integers(0, 40, 2)
            cv2.circle(img, (int(x), int(y)), int(rng.integers(3, 8)), (255, 255, 255), -1)
        paths.append(folder / f"img{i}.png")
        cv2.imwrite(str(paths[-1]), img)
    return paths


@pytest.mark.parametrize("method", ["simclr", "byol", "dino"])
def test_pretrained_encoder_loads_into_the_model(tmp_path: Path, method: str) -> None:
    files = _images(tmp_path / "data")
    result = pretrain(files, MODEL, tmp_path / "out", method=method, steps=2, batch_size=2, size=32,
                      root=tmp_path / "data")
    assert result.steps == 2 and len(result.losses) == 2 and all(np.isfinite(result.losses))
    saved = load_checkpoint(result.weights)
    assert saved["pretrain"]["method"] == method and all(k.startswith("net.encoder.") for k in saved["model"])
    # what `maskkit train --weights` does (engine.trainer.fit): build the configured model, load the weights
    cfg = TrainConfig.model_validate({"model": {"name": MODEL, "pretrained_backbone": False, "weights":
                                                str(result.weights)}, "data": {"path": "x"}})
    torch.manual_seed(123)
    model = build_model(cfg, 2, pretrained=False)
    fresh = {k: v.clone() for k, v in encoder_of(model, MODEL)[1].state_dict().items()}
    report = load_weights(model, result.weights)
    own = encoder_of(model, MODEL)[1].state_dict()
    assert report.loaded == len(saved["model"]) == len(own)
    for key, value in own.items():
        assert torch.equal(value, saved["model"][f"net.encoder.{key}"]), key
    changed = [k for k, v in own.items() if v.is_floating_point() and not torch.equal(v, fresh[k])]
    assert len(changed) > len(own) // 2  # the load replaced the fresh initialisation


def test_pretrain_budget_and_errors(tmp_path: Path) -> None:
    files = _images(tmp_path / "data", n=2)
    with pytest.raises(ConfigError, match="budget"):
        pretrain(files, MODEL, tmp_path / "o")
    with pytest.raises(ConfigError, match="method"):
        pretrain(files, MODEL, tmp_path / "o", method="mae", steps=1)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="no image could be read"):
        pretrain([tmp_path / "bad" / "x.png"], MODEL, tmp_path / "o", steps=1, batch_size=2, size=32)


def test_pretrain_cli(tmp_path: Path) -> None:
    _images(tmp_path / "data" / "a" / "images", n=3)
    (tmp_path / "data" / "a" / "masks").mkdir()
    (tmp_path / "data" / "a" / "masks" / "m.png").write_bytes(b"not read: outside the glob")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["pretrain", "--data", str(tmp_path / "data"), "--glob", "*/images/*.png",
                                      "--encoder", MODEL, "--steps", "1", "--batch-size", "2", "--size", "32",
                                      "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "--weights" in result.output
    info = json.loads((out / "pretrain.json").read_text())
    assert info["images"] == 3 and info["steps"] == 1 and info["encoder"] == "net.encoder"
    none = CliRunner().invoke(app, ["pretrain", "--data", str(tmp_path / "data"), "--glob", "*.tif", "--encoder",
                                    MODEL, "--steps", "1"])
    assert isinstance(none.exception, DataError) and "no images match" in str(none.exception)
