"""``maskkit explain`` and ``maskkit.explain``: per-instance saliency is on the instance and follows the target.

The model is a tiny Mask R-CNN trained briefly on synthetic shapes (1 epoch: its scores are still low, but its
heads have weights that depend on the image). The images are synthetic too, cropped to 96 x 72 px: the model
resizes them to 85 x 64 and pads to 96 x 64, so the box mapping and the crop back to the image are exercised.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_MASKRCNN, cli_error, save_tiny_checkpoint, tiny_config, train_tiny_run

pytest.importorskip("pytorch_grad_cam", reason="needs the explain extra (grad-cam)")

TINY = tiny_config(model={"options": {**TINY_MASKRCNN["model"]["options"], "box_score_thresh": 0.0}})
ONE_OBJECT = 13  # synth.render(13, 96, seed=0): one polygon, box [32, 0, 55, 25]
TWO_OBJECTS = 71  # synth.render(71, 96, seed=0): a ring [26, 17, 44, 35] and a polygon [61, 68, 70, 77]
IN_BOX = 0.9
"""Share of a map's positive mass inside the explained box dilated by 25 % of its longer side (+2 px).
Measured with gradcam-elementwise on this model: 0.998-1.0 (class and mask maps), 0.98-1.0 with two objects;
0.33-0.37 when the boxes are not scaled to the model's input, 0.80-0.83 when the padding is not cropped off."""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict[str, Path]:
    return train_tiny_run(tmp_path_factory.mktemp("explain"), TINY, val_fraction=0.25)


def _scene(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from maskkit.data.synth import render

    s = render(index, 96, 0)
    return s.image[:, :72], np.asarray(s.instances.boxes, np.float32), np.asarray(s.instances.labels)


def test_mass_in_box() -> None:
    from maskkit.explanations import mass_in_box

    saliency = np.zeros((100, 100), np.float32)
    saliency[40:60, 40:60] = 1.0
    saliency[0:10, 0:10] = 1.0  # 100 of 500 px outside
    assert mass_in_box(saliency, [45, 45, 55, 55]) == pytest.approx(0.8)  # dilated by 2.5 + 2 px: 40.5..59.5
    assert mass_in_box(saliency, [80, 80, 90, 90]) == 0.0
    assert mass_in_box(np.zeros((5, 5)), [0, 0, 5, 5]) == 0.0


def test_instance_attribution_is_on_the_instance(run: dict[str, Path]) -> None:
    import maskkit

    image, boxes, labels = _scene(ONE_OBJECT)
    assert len(boxes) == 1
    e = maskkit.explain(run["ckpt"], image, boxes=boxes, labels=labels, method="gradcam-elementwise")
    assert e.maps.shape == (2, 96, 72) and e.image.shape == (96, 72, 3)
    assert [(t.kind, t.instance) for t in e.targets] == [("class", 0), ("mask", 0)]
    assert float(e.maps.min()) >= 0.0 and 0.5 < float(e.maps.max()) <= 1.0 + 1e-6  # scaled to [0, 1], then resized
    for t in e.targets:
        assert t.in_box is not None and t.in_box >= IN_BOX, t
    # HiResCAM (the default) sums the signed contributions first: the mask map is on the object too
    # (the class map of a model this young may hold no positive evidence at all)
    hires = maskkit.explain(run["ckpt"], image, boxes=boxes, labels=labels)
    assert hires.method == "hirescam" and hires.targets[1].in_box >= IN_BOX


def test_map_follows_the_target_instance(run: dict[str, Path]) -> None:
    from maskkit.explanations import Explainer, mass_in_box

    image, boxes, labels = _scene(TWO_OBJECTS)
    explainer = Explainer(run["ckpt"], "gradcam-elementwise")
    try:
        e = explainer.explain(image, boxes=boxes, labels=labels)
    finally:
        explainer.release()
    assert [(t.kind, t.instance) for t in e.targets] == [("class", 0), ("mask", 0), ("class", 1), ("mask", 1)]
    for k, (saliency, t) in enumerate(zip(e.maps, e.targets, strict=True)):
        own, other = boxes[t.instance], boxes[1 - t.instance]
        assert mass_in_box(saliency, own) >= IN_BOX and mass_in_box(saliency, other) <= 1 - IN_BOX, k
    assert float(np.abs(e.maps[0] - e.maps[2]).mean()) > 0.02  # the class map of object 0 is not that of object 1


def test_panoptic_fpn_instances(tmp_path: Path) -> None:
    """Panoptic FPN explains its detections like Mask R-CNN (random weights: the maps still stay in their box)."""
    import maskkit

    ckpt = save_tiny_checkpoint(tmp_path / "best.pt", {"name": "panoptic_fpn_r18", "anchor_sizes": [8, 16, 32, 64, 128],
                                                       "options": {"box_score_thresh": 0.0}}, [1, 2], ["a", "b"])
    image, boxes, _ = _scene(TWO_OBJECTS)
    e = maskkit.explain(ckpt, image, boxes=boxes, labels=[2, 1], method="gradcam-elementwise")
    assert [t.class_name for t in e.targets] == ["b", "b", "a", "a"]
    assert all(t.in_box is not None and t.in_box >= IN_BOX for t in e.targets), e.targets


def test_predicted_instances_and_features(run: dict[str, Path]) -> None:
    import maskkit

    image, _, _ = _scene(TWO_OBJECTS)
    e = maskkit.explain(run["ckpt"], image, instances="1,0", conf=0.0, method="saliency")
    assert len(e.instances) >= 2 and e.instances.masks.shape[1:] == (96, 72)
    assert [(t.kind, t.instance) for t in e.targets] == [("class", 1), ("mask", 1), ("class", 0), ("mask", 0)]
    assert e.targets[0].score == pytest.approx(float(e.instances.scores[1]), abs=1e-4)
    assert e.maps.shape == (4, 96, 72) and np.isfinite(e.maps).all()
    assert list(e.features) == ["fpn0", "fpn1", "fpn2", "fpn3", "fpnpool"]
    assert e.features["fpn0"].shape == (256, 24, 16)  # stride 4 of the padded 96 x 64 input
    with pytest.raises(maskkit.errors.ConfigError, match="indices 0-"):
        maskkit.explain(run["ckpt"], image, instances="999", conf=0.0)


def test_dense_model_maps_per_class(tmp_path: Path) -> None:
    import maskkit

    ckpt = save_tiny_checkpoint(tmp_path / "best.pt", {"name": "bottomup_mbv2", "options": {
        "decoder_channels": [16, 16, 16, 16, 16], "fg_threshold": 0.0, "min_area": 1.0}}, [1, 2], ["a", "b"])
    image, _, _ = _scene(TWO_OBJECTS)
    e = maskkit.explain(ckpt, image, max_instances=2)
    per_class = [t for t in e.targets if t.instance is None]
    assert per_class and {t.class_name for t in per_class} <= {"a", "b"}
    per_instance = [t for t in e.targets if t.instance is not None]
    assert len(per_instance) == min(2, len(e.instances)) and all(t.in_box is not None for t in per_instance)
    assert e.maps.shape[1:] == (96, 72) and float(e.maps.min()) >= 0.0
    assert e.layers == list(e.features)[-2:] and all(k.startswith("enc") for k in e.features)
    with pytest.raises(maskkit.errors.ConfigError, match="Mask R-CNN"):
        maskkit.explain(ckpt, image, boxes=[[0, 0, 10, 10]])


def test_missing_extra_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from maskkit.errors import ConfigError
    from maskkit.explanations.methods import require_libraries

    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'maskkit\[explain\]'"):
        require_libraries("hirescam")


def test_cli_writes_overlays_and_contact_sheet(run: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from maskkit.cli.main import app

    out = tmp_path / "out"
    images = sorted(run["images"].glob("*.png"))[:2]
    args = ["explain", "--model", run["ckpt"], *images, "--out", out, "--conf", "0", "--max-instances", "2"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    for path in images:
        folder = out / path.stem
        summary = json.loads((folder / "explanation.json").read_text())
        assert summary["method"] == "hirescam" and summary["layers"] == ["fpn0", "fpn1", "fpn2", "fpn3"]
        names = sorted(m["file"] for m in summary["maps"])
        assert names == ["instance000_class.png", "instance000_mask.png", "instance001_class.png",
                         "instance001_mask.png"]
        for name in [*names, "contact_sheet.png", "features_fpn0.png"]:
            with Image.open(folder / name) as im:
                assert im.format == "PNG" and min(im.size) >= 64, name
        with Image.open(folder / "contact_sheet.png") as sheet:
            assert sheet.size[0] > 3 * 256  # a row of panels
    assert "contact_sheet.png" in result.output


def test_cli_errors_are_one_line(run: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    image = sorted(run["images"].glob("*.png"))[0]

    def error(*args: object) -> str:
        return cli_error(monkeypatch, capsys, "explain", *args)

    assert "unknown --method 'nope'" in error("--model", run["ckpt"], image, "--out", tmp_path, "--method", "nope")
    assert "checkpoint not found" in error("--model", tmp_path / "none.pt", image, "--out", tmp_path)
    assert "--instances" in error("--model", run["ckpt"], image, "--out", tmp_path, "--instances", "x")
