"""``maskkit predict``: sources, writers (hand-made instances), the CLI on images, 16-bit TIFF and video,
the COCO round trip through ``maskkit eval``, reruns, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import TINY_MASKRCNN, cli_error, tiny_config, train_tiny_run
from maskkit.cli.main import app
from maskkit.errors import ConfigError, DataError
from maskkit.inference.sources import collect_sources, dataset_image_ids, sequential_ids
from maskkit.inference.writers import ImageWriter, OutputOptions, assemble_predictions, write_label_image
from maskkit.structures import Instances, Masks

TINY = tiny_config(  # box_score_thresh 0: even a barely trained model returns (low-score) detections to write
    model={"options": {**TINY_MASKRCNN["model"]["options"], "box_detections_per_img": 6, "box_score_thresh": 0.0}},
    data={"val_fraction": 0.0},
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """4 synthetic 64 px images (COCO layout) and a checkpoint trained for one step on 3 of them (1 val)."""
    return train_tiny_run(tmp_path_factory.mktemp("predict"), TINY, val_fraction=0.25)


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def _cli_error(*args: str) -> BaseException:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code != 0 and result.exception is not None, result.output
    return result.exception


def _disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


# -- sources ------------------------------------------------------------------------------------------
def test_collect_sources(tmp_path: Path) -> None:
    import cv2

    img = np.zeros((8, 8, 3), np.uint8)
    for rel in ("a.png", "sub/b.jpg", "sub/deeper/c.png", "sub/a.png", "dup/x.png", "dup/x.tif", ".hidden/h.png",
                "out/o.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / rel), img)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "clip.mp4").write_bytes(b"")
    items = collect_sources([tmp_path, tmp_path / "a.png"], exclude=tmp_path / "out")
    assert [(it.key, it.kind) for it in items] == [
        ("a", "image"), ("clip", "video"), ("dup/x", "image"), ("dup/x_tif", "image"), ("sub/a", "image"),
        ("sub/b", "image"), ("sub/deeper/c", "image")]  # recursive, hidden and output folders skipped, no repeats
    globbed = collect_sources([str(tmp_path / "sub" / "**" / "*.png")])
    assert [it.key for it in globbed] == ["a", "deeper/c"]
    assert sequential_ids(["b", "a"]) == {"a": 1, "b": 2}
    with pytest.raises(DataError, match="source not found"):
        collect_sources([tmp_path / "missing.png"])
    with pytest.raises(DataError, match="not an image or video"):
        collect_sources([tmp_path / "notes.txt"])
    with pytest.raises(DataError, match="no images or videos"):
        collect_sources([str(tmp_path / "*.bmp")])


# -- writers with hand-made instances -------------------------------------------------------------------
def _handmade(h: int = 48, w: int = 64) -> Instances:
    two_parts = _disc(h, w, 8, 40, 5) | _disc(h, w, 56, 40, 5)
    bitmaps = [_disc(h, w, 20, 20, 9), _disc(h, w, 30, 20, 9), two_parts]  # 0 and 1 overlap
    return Instances.from_masks(Masks.from_bitmaps(bitmaps, h, w), [3, 5, 3], [0.9, 0.6, 0.4])


def test_writers_labels_labelme_overlay(tmp_path: Path) -> None:
    import cv2

    from maskkit.data.formats import read_annotations
    from maskkit.data.images import read_image
    from maskkit.structures import masks_iou

    image_path = tmp_path / "src" / "pic.png"
    image_path.parent.mkdir()
    cv2.imwrite(str(image_path), np.full((48, 64, 3), 90, np.uint8))
    inst = _handmade()
    out = tmp_path / "out"
    names = {3: "cat", 5: "dog"}
    writer = ImageWriter(out, names, OutputOptions(labels=True, labelme=True))
    assert not writer.done("pic")
    files = writer.write("pic", image_path, read_image(image_path), inst)
    assert writer.done("pic") and all(p.is_file() for p in files)

    label = cv2.imread(str(out / "labels" / "pic.png"), cv2.IMREAD_UNCHANGED)
    assert label.dtype == np.uint16 and label.shape == (48, 64)
    assert label[20, 25] == 1  # the overlap goes to the best score (instance 0)
    assert set(np.unique(label)) == {0, 1, 2, 3}
    assert (label == 3).sum() == inst.masks.areas()[2]

    doc = json.loads((out / "labelme" / "pic.json").read_text())
    assert doc["imagePath"] == "../../src/pic.png" and doc["imageData"] is None
    assert [s["label"] for s in doc["shapes"]] == ["cat", "dog", "cat", "cat"]
    assert doc["shapes"][2]["group_id"] == doc["shapes"][3]["group_id"] == 3  # one object in two parts
    assert doc["shapes"][0]["description"] == "score=0.900"
    with pytest.raises(DataError, match="outside the dataset root"):  # the image lies outside labelme/
        read_annotations(out / "labelme")
    aset = read_annotations(out / "labelme", allow_outside_root=True)  # maskkit's own LabelMe reader
    assert aset.format == "labelme" and aset.class_names == ["cat", "dog"]  # labels.txt keeps the model's order
    rec = aset.images[0]
    assert aset.image_path(rec) == image_path.resolve() and len(rec.instances) == 3
    back = rec.instances
    iou = masks_iou(back.masks, inst.masks)
    assert np.diag(iou).min() > 0.85, iou
    assert [aset.category_by_id()[int(c)].name for c in back.labels] == ["cat", "dog", "cat"]

    result = json.loads((out / "results" / "pic.json").read_text())
    assert result["height"] == 48 and len(result["detections"]) == 3
    assert "image_id" not in result["detections"][0]
    assert cv2.imread(str(out / "overlays" / "pic.jpg")).shape[2] == 3
    writer.write("again", image_path, None, inst)  # no image given (a tiled prediction): read for the overlay
    assert (out / "overlays" / "again.jpg").is_file()


def test_label_tiff_above_png_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above PNG_MAX_INSTANCES (65535) objects the labels go to a TIFF (tiling's band writer); tested with 2."""
    import tifffile

    from maskkit.inference import writers

    inst = _handmade()
    png = tmp_path / "labels" / "x.png"
    assert write_label_image(png, inst) == png
    monkeypatch.setattr(writers, "PNG_MAX_INSTANCES", 2)
    tif = write_label_image(png, inst)
    assert tif == png.with_suffix(".tif") and not png.exists()
    label = tifffile.imread(tif)
    assert label.shape == (48, 64) and label[20, 25] == 1 and set(np.unique(label)) == {0, 1, 2, 3}
    assert writers.outputs_done(tmp_path, "x", OutputOptions(overlays=False, json=False, labels=True))


def test_coco_round_trip_through_eval(run: dict[str, Path], tmp_path: Path) -> None:
    """The ground truth written as predictions scores AP 1 with `maskkit eval --gt DATA --pred predictions.json`."""
    from maskkit.data.formats import read_annotations
    from maskkit.data.images import read_image

    aset = read_annotations(run["data"])
    items = collect_sources([run["images"]])
    out = tmp_path / "out"
    writer = ImageWriter(out, {c.id: c.name for c in aset.categories}, OutputOptions(overlays=False))
    ids, missing = dataset_image_ids({it.key: it.path for it in items}, aset)
    assert not missing and sorted(ids.values()) == sorted(r.id for r in aset.images)
    records = {r.id: r for r in aset.images}
    for it in items:
        gt = records[ids[it.key]].instances
        pred = Instances.from_masks(gt.masks, gt.labels, np.linspace(1.0, 0.5, len(gt)))
        writer.write(it.key, it.path, read_image(it.path), pred)
    cats = [{"id": c.id, "name": c.name} for c in aset.categories]
    summary = assemble_predictions(out, [it.key for it in items], ids, cats)
    assert summary["images"] == 4 and summary["detections"] == sum(len(r.instances) for r in aset.images)
    _cli("eval", "--gt", run["data"], "--pred", out / "predictions.json", "--no-boundary", "--out", tmp_path / "ev",
         "--gallery", "0")
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["segm"]["AP"] == pytest.approx(1.0) and metrics["bbox"]["AP"] == pytest.approx(1.0)
    images_json = read_annotations(out / "images.json", allow_outside_root=True)  # a COCO file too (images: ../)
    assert [r.id for r in images_json.images] == sorted(ids.values())
    assert images_json.image_path(images_json.images[0]).is_file()


# -- the command -------------------------------------------------------------------------------------------
def test_cli_images_rerun_and_eval(run: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pred"
    args = ["predict", "--model", run["ckpt"], run["images"], "--out", out, "--conf", "0", "--save-labels",
            "--save-labelme", "--data", run["data"]]
    text = _cli(*args)
    assert "4 images predicted" in text
    keys = [f"synth_{i:06d}" for i in range(4)]
    for k in keys:
        for rel in (f"overlays/{k}.jpg", f"results/{k}.json", f"labels/{k}.png", f"labelme/{k}.json"):
            assert (out / rel).is_file(), rel
    preds = json.loads((out / "predictions.json").read_text())
    assert preds, "box_score_thresh 0 should give detections"
    assert {p["image_id"] for p in preds} <= {1, 2, 3, 4} and {p["category_id"] for p in preds} <= {1, 2, 3}
    assert all(set(p) == {"image_id", "category_id", "score", "bbox", "segmentation"} for p in preds)
    _cli("eval", "--gt", run["data"], "--pred", out / "predictions.json", "--no-boundary")

    # a rerun skips everything; a lost per-image result (a crash) is redone and nothing else is lost
    assert "4 skipped" in _cli(*args)
    (out / "results" / f"{keys[1]}.json").unlink()
    (out / "predictions.json").unlink()
    assert "1 images predicted" in _cli(*args)
    again = json.loads((out / "predictions.json").read_text())
    assert sorted(json.dumps(p, sort_keys=True) for p in again) == sorted(json.dumps(p, sort_keys=True) for p in preds)

    # other settings in the same folder: refused unless --overwrite
    exc = _cli_error(*args[:-2], "--conf", "0.5")
    assert isinstance(exc, ConfigError) and "--overwrite" in str(exc)
    _cli(*args[:-2], "--conf", "0.5", "--overwrite", "--no-save-overlays", "--classes", "ellipse,2")
    kept = json.loads((out / "predictions.json").read_text())
    assert all(p["score"] >= 0.5 and p["category_id"] in (1, 2) for p in kept)
    assert isinstance(_cli_error(*args, "--overwrite", "--classes", "zebra"), ConfigError)


def test_cli_tiff16_glob_and_max_det(run: dict[str, Path], tmp_path: Path) -> None:
    import tifffile

    from maskkit.data.images import read_image

    src = tmp_path / "tiffs"
    src.mkdir()
    rgb = read_image(next(run["images"].glob("*.png")))
    tifffile.imwrite(src / "deep.tif", rgb.astype(np.uint16) * 257)
    out = tmp_path / "out"
    _cli("predict", "--model", run["ckpt"] / "last.pt", str(src / "*.tif"), "--out", out, "--conf", "0",
         "--max-det", "2", "--save-labels")
    result = json.loads((out / "results" / "deep.json").read_text())
    assert (result["height"], result["width"]) == (64, 64) and len(result["detections"]) <= 2
    scores = [d["score"] for d in result["detections"]]
    assert scores == sorted(scores, reverse=True)
    assert (out / "overlays" / "deep.jpg").is_file() and (out / "labels" / "deep.png").is_file()
    images = json.loads((out / "images.json").read_text())["images"]
    assert [(i["id"], Path(i["file_name"]).name) for i in images] == [(1, "deep.tif")]
    _cli("eval", "--gt", out / "images.json", "--pred", out / "predictions.json", "--no-boundary",
         "--allow-outside-root")  # images.json names the source images, outside OUT


def _write_disc_video(path: Path, frames: int = 10, size: int = 64, fps: float = 10.0) -> None:
    from maskkit.inference.video import VideoWriter

    with VideoWriter(path, fps) as writer:
        for t in range(frames):
            frame = np.full((size, size, 3), 30, np.uint8)
            frame[_disc(size, size, 12 + 4 * t, 24, 8)] = (230, 60, 60)
            frame[_disc(size, size, 52 - 3 * t, 42, 7)] = (60, 200, 90)
            writer.write(frame)
    assert writer.codec in ("libx264", "mpeg4")


def test_video_read_write_and_opencv_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from maskkit.inference.video import VideoReader

    path = tmp_path / "discs.mp4"
    _write_disc_video(path)
    with VideoReader(path) as reader:
        frames = list(reader)
        assert reader.backend == "pyav" and reader.fps == pytest.approx(10.0)
    assert len(frames) == 10 and frames[0].shape == (64, 64, 3) and frames[0].dtype == np.uint8
    assert frames[0][24, 12, 0] > 150 and frames[0][24, 12, 1] < 120  # the red disc, in RGB order
    import av

    def broken(*args: object, **kwargs: object) -> None:
        raise av.error.InvalidDataError(1094995529, "Invalid data", str(path))

    monkeypatch.setattr(av, "open", broken)
    with VideoReader(path) as reader:
        assert reader.backend == "opencv" and len(list(reader)) == 10
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"no video here")
    with pytest.raises(DataError, match="cannot decode video"):
        VideoReader(bad)


def test_cli_video(run: dict[str, Path], tmp_path: Path) -> None:
    from maskkit.inference.video import VideoReader

    video = tmp_path / "clip.mp4"
    _write_disc_video(video)
    out = tmp_path / "out"
    text = _cli("predict", "--model", run["ckpt"], video, "--out", out, "--conf", "0", "--video-max-gap", "2")
    assert "1 videos (10 frames" in text
    with VideoReader(out / "clip.mp4") as reader:
        frames = list(reader)
    assert len(frames) == 10 and min(frames[0].shape[:2]) >= 64
    tracks = json.loads((out / "clip.tracks.json").read_text())
    assert tracks["frames"] == 10 and tracks["fps"] == pytest.approx(10.0)
    assert set(tracks["classes"].values()) == {"ellipse", "polygon", "ring"}
    for t in tracks["tracks"]:
        assert set(t) == {"id", "category_id", "class", "frames", "boxes", "scores"}
        assert len(t["frames"]) == len(t["boxes"]) == len(t["scores"]) and t["frames"] == sorted(t["frames"])
    assert not (out / "predictions.json").exists()  # no still images
    assert "1 skipped" in _cli("predict", "--model", run["ckpt"], video, "--out", out, "--conf", "0",
                               "--video-max-gap", "2")


def test_tiled_prediction(run: dict[str, Path], tmp_path: Path) -> None:
    import cv2

    big = np.tile(cv2.imread(str(next(run["images"].glob("*.png")))), (2, 3, 1))
    cv2.imwrite(str(tmp_path / "big.png"), big)
    out = tmp_path / "out"
    _cli("predict", "--model", run["ckpt"], tmp_path / "big.png", "--out", out, "--conf", "0", "--tile", "64",
         "--overlap", "16", "--save-labels")
    result = json.loads((out / "results" / "big.json").read_text())
    assert (result["height"], result["width"]) == (128, 192)
    assert (out / "overlays" / "big.jpg").is_file() and (out / "labels" / "big.png").is_file()
    assert isinstance(_cli_error("predict", "--model", run["ckpt"], tmp_path / "big.png", "--out", out, "--tile",
                                 "64"), ConfigError)  # the default overlap (128 px) does not fit a 64 px tile


def test_one_line_errors(run: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:

    def error(*args: object) -> str:
        return cli_error(monkeypatch, capsys, "predict", *args)

    assert "source not found" in error("--model", run["ckpt"], tmp_path / "nope.png", "--out", tmp_path / "o")
    bad_ckpt = tmp_path / "bad.pt"
    bad_ckpt.write_text("not a checkpoint")
    assert "cannot load checkpoint" in error("--model", bad_ckpt, run["images"], "--out", tmp_path / "o")
    assert "checkpoint not found" in error("--model", tmp_path / "none.pt", run["images"], "--out", tmp_path / "o")
    broken = tmp_path / "imgs" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG garbage")
    assert "cannot read image" in error("--model", run["ckpt"], broken.parent, "--out", tmp_path / "o")
    assert "--conf" in error("--model", run["ckpt"], run["images"], "--conf", "2")
    assert "switched off" in error("--model", run["ckpt"], run["images"], "--no-save-overlays", "--no-save-json")


def test_tta_flags_and_eval_on_the_runs_val_split(run: dict[str, Path], tmp_path: Path) -> None:
    from maskkit.engine.data import images_to_score

    out = tmp_path / "tta"
    _cli("predict", "--model", run["ckpt"], run["images"], "--out", out, "--conf", "0", "--tta",
         "--tta-scales", "1,1.25", "--no-save-overlays")
    assert json.loads((out / "predictions.json").read_text()), "TTA should keep the low-score detections"
    assert isinstance(_cli_error("predict", "--model", run["ckpt"], run["images"], "--out", out, "--tta-scales",
                                 "big"), ConfigError)
    text = _cli("eval", "--model", run["ckpt"], "--data", run["data"], "--tta", "--no-boundary")
    assert "AP" in text

    # the run's training source: only the val images its run carved (val_images.json) are scored
    kept = images_to_score(run["data"], "val", run["ckpt"])
    val, notes, contains_training = kept.images, [kept.note], kept.contains_training_images
    listed = json.loads((run["ckpt"] / "val_images.json").read_text())["images"]
    assert [r.file_name for r in val.images] == [e["file_name"] for e in listed] and len(listed) == 1
    assert not contains_training and "val images listed in" in notes[0]


def test_ensemble_flag(run: dict[str, Path], tmp_path: Path) -> None:
    """``--ensemble``: a model together with itself predicts what it predicts alone; bad members are one line."""
    single, double = tmp_path / "single", tmp_path / "double"
    _cli("predict", "--model", run["ckpt"], run["images"], "--out", single, "--conf", "0", "--no-save-overlays")
    _cli("predict", "--model", run["ckpt"], "--ensemble", run["ckpt"], run["images"], "--out", double, "--conf", "0",
         "--no-save-overlays")
    alone, both = (json.loads((d / "predictions.json").read_text()) for d in (single, double))
    assert alone and len(both) == len(alone)
    key = lambda p: (p["image_id"], p["category_id"], p["segmentation"]["counts"])  # noqa: E731
    assert sorted(map(key, both)) == sorted(map(key, alone))
    assert np.allclose(sorted(p["score"] for p in both), sorted(p["score"] for p in alone), atol=1e-6)
    assert json.loads((double / "predict_settings.json").read_text())["ensemble"] == [str(run["ckpt"].resolve())]
    assert isinstance(_cli_error("predict", "--model", run["ckpt"], "--ensemble", tmp_path / "missing",
                                 run["images"], "--out", tmp_path / "x"), DataError)
    assert isinstance(_cli_error("predict", "--model", run["ckpt"], "--ensemble", run["ckpt"], run["images"],
                                 "--out", tmp_path / "y", "--ray", "local:1"), ConfigError)
