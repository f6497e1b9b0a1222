"""``maskkit predict/eval --ray``: a local Ray instance (2 CPUs, 127.0.0.1) started by the module; outputs
compared file by file with the single-process run, reruns, a worker killed mid-run, tiles, eval metrics, and
the one-line hint without Ray."""

from __future__ import annotations

import filecmp
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import TINY_MASKRCNN, tiny_config, train_tiny_run
from maskkit.cli.main import app
from maskkit.errors import ConfigError
from maskkit.inference.distributed import CRASH_ONCE_ENV, RAY_HINT, RaySettings

pytest.importorskip("ray", reason="maskkit[ray] not installed")

DSB = "dsb2018-stage1-train-subset/stage1_train"
SMALL = ["04acab7636c4cf61d288a5962f15fa456b7bde31a021e5deedfbf51288e4001e",  # 256x256
         "0bf33d3db4282d918ec3da7112d0bf0427d4eafe74b3ee0bb419770eefe8d7d6"]  # 320x256
HUGE = "08275a5b1c2dfcd739e8c4888a5ee2d29f83eccfa75185404ced1dc0866ea992"  # 1024x1024: 3x3 tiles of 384
WATCHDOG_S = 420
"""The whole module (about a minute on 2 busy cores) must finish within this; a hang dumps the stacks and exits."""
TINY = tiny_config(  # box_score_thresh 0: even a barely trained model returns (low-score) detections to write
    model={"options": {**TINY_MASKRCNN["model"]["options"], "box_detections_per_img": 8, "box_score_thresh": 0.0}},
    augment={"channels": 3},  # the shared images are RGBA PNGs
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Ray instance on 127.0.0.1 with 2 CPUs (shut down after the module); returns the crash marker path:
    a worker finding that file deletes it and kills its own process (see ``CRASH_ONCE_ENV``)."""
    import faulthandler

    import ray

    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)  # bounded: a hung Ray run ends the session, loudly
    marker = tmp_path_factory.mktemp("ray") / "crash-once"
    before = {k: os.environ.get(k) for k in (CRASH_ONCE_ENV, "OMP_NUM_THREADS")}
    os.environ.update({CRASH_ONCE_ENV: str(marker), "OMP_NUM_THREADS": "1"})  # the workers inherit them
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield marker
    finally:
        ray.shutdown()
        faulthandler.cancel_dump_traceback_later()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """4 synthetic 64 px images (2 val) and a checkpoint trained for one step on them."""
    return train_tiny_run(tmp_path_factory.mktemp("raycase"), TINY, val_fraction=0.5)


def _cli(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def _cli_error(*args: object) -> BaseException:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code != 0 and result.exception is not None, result.output
    return result.exception


def _same_tree(a: Path, b: Path) -> list[str]:
    """Relative paths of the files of ``a``, asserting ``b`` holds the same files with the same bytes."""
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    differ = [f for f in files if not filecmp.cmp(a / f, b / f, shallow=False)]
    assert not differ, differ
    return files


@pytest.fixture(scope="module")
def sources(shared_data: Path) -> list[Path]:
    return [shared_data / DSB / k / "images" / f"{k}.png" for k in [*SMALL, HUGE]]


@pytest.fixture(scope="module")
def single(run: dict[str, Path], sources: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process reference: 2 images predicted whole, the 1024 px one in 3x3 tiles."""
    out = tmp_path_factory.mktemp("single") / "out"
    _cli("predict", *sources, "--model", run["ckpt"], "--out", out, "--conf", "0", "--tile", "384",
         "--overlap", "64", "--save-labels", "--save-labelme")
    return out


FLAGS = ("--conf", "0", "--tile", "384", "--overlap", "64", "--save-labels", "--save-labelme")


def test_predict_on_ray_equals_single_process_then_rerun_skips(cluster: Path, run: dict[str, Path],
                                                              sources: list[Path], single: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "ray"
    text = _cli("predict", *sources, "--model", run["ckpt"], "--out", out, *FLAGS, "--ray", "local:2")
    assert "3 images predicted" in text
    files = _same_tree(single, out)
    assert {"predictions.json", "images.json", "predict_settings.json", "labelme/labels.txt"} <= set(files)
    assert len([f for f in files if f.startswith("results/")]) == 3
    preds = json.loads((out / "predictions.json").read_text())
    huge_id = next(im["id"] for im in json.loads((out / "images.json").read_text())["images"]
                   if HUGE in im["file_name"])
    assert preds and any(p["image_id"] == huge_id for p in preds)  # the tiled image has (stitched) instances
    stamps = {f: (out / f).stat().st_mtime_ns for f in files if f.startswith(("results/", "overlays/", "labels/",
                                                                                "labelme/0"))}
    text = _cli("predict", *sources, "--model", run["ckpt"], "--out", out, *FLAGS, "--ray", "local:2")
    assert "0 images predicted" in text and "3 skipped" in text
    assert stamps == {f: (out / f).stat().st_mtime_ns for f in stamps}  # nothing redone
    _same_tree(single, out)


def test_killed_worker_is_retried(cluster: Path, run: dict[str, Path], sources: list[Path], single: Path,
                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker dies on its first batch; with 11 rows in 2 blocks (several batches per task) the whole block is
    redone by a restarted actor."""
    from maskkit.inference import distributed

    monkeypatch.setattr(distributed, "MAX_BLOCKS", 2)
    cluster.write_text("armed")
    out = tmp_path / "ray"
    _cli("predict", *sources, "--model", run["ckpt"], "--out", out, *FLAGS, "--ray", "local:2",
         "--ray-workers", "2")
    assert not cluster.exists()  # a worker died on its batch (it removed the marker first) ...
    _same_tree(single, out)  # ... and Ray redid it: complete and identical


def test_bad_image_is_one_line_error(cluster: Path, run: dict[str, Path], sources: list[Path],
                                     tmp_path: Path) -> None:
    """A worker's DataError reaches the driver as the same one-line error as in a single process."""
    from maskkit.errors import DataError

    broken = tmp_path / "broken.png"
    broken.write_bytes(sources[0].read_bytes()[:300])
    errors = [_cli_error("predict", sources[0], broken, "--model", run["ckpt"], "--out", tmp_path / name, *extra)
              for name, extra in (("single", ()), ("ray", ("--ray", "local:2")))]
    assert all(isinstance(e, DataError) for e in errors) and str(errors[0]) == str(errors[1])
    assert str(broken) in str(errors[1]) and "\n" not in str(errors[1])


def test_worker_rows_in_process(run: dict[str, Path], sources: list[Path], tmp_path: Path) -> None:
    """PredictWorker without Ray: an eval record with embedded bytes equals its file; unreadable -> None."""
    import pickle

    from maskkit.data.images import read_image
    from maskkit.inference.distributed import PredictWorker, _row
    from maskkit.inference.tiling import Tile
    from maskkit.inference.writers import overlay_jpeg

    filters = {"conf": 0.0, "classes": None, "max_det": 300, "tile": None, "overlap": 64}
    worker = PredictWorker(str(run["ckpt"]), {"threads": 1}, filters, {1: "a", 2: "b", 3: "c"})
    path = sources[0]
    rows = [_row(0, "record", path), _row(1, "record", tmp_path / "nowhere.png", data=path.read_bytes(),
                                                 source="x.json"),
            _row(2, "record", tmp_path / "missing.png"),
            _row(3, "tile", path, Tile(0, 0, 0, 0, 0, 256, 256, (0, 0, 256, 256))),
            _row(4, "image", path)]
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    out = [pickle.loads(b) for b in worker(batch)["result"]]
    assert [status for status, _ in out] == ["ok"] * 5
    file, embedded, missing, tile, (whole, jpeg) = (value for _, value in out)
    assert missing is None and len(file) > 0
    for other in (embedded, tile, whole):  # the whole 256 px image as one tile: the same prediction
        assert other.masks.to_rles() == file.masks.to_rles()
        assert np.array_equal(other.scores, file.scores)
    assert jpeg == overlay_jpeg(read_image(path), whole, {1: "a", 2: "b", 3: "c"})  # drawn by the worker


def test_tiles_fan_out_in_rows(run: dict[str, Path], sources: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1024 px image becomes 9 tile rows (the other two one row each), in order."""
    from maskkit.inference import distributed
    from maskkit.inference.filters import FilteredPredict
    from maskkit.inference.sources import collect_sources

    seen: list[list[dict]] = []

    def fake_rows(rows: list[dict], *args: object) -> Iterator[tuple[int, int, None]]:
        seen.append(rows)
        return iter(())

    monkeypatch.setattr(distributed, "run_rows", fake_rows)
    items = collect_sources([str(s) for s in sources])
    list(distributed.predict_files(items, FilteredPredict(None, 0.0, None, 10, 384, 64), run["ckpt"], {},
                                   RaySettings("local:2")))
    kinds = [(r["index"], r["kind"], r["tile"]) for r in seen[0]]
    huge = next(i for i, it in enumerate(items) if it.key == HUGE)
    assert [k for k in kinds if k[0] == huge] == [(huge, "tile", t) for t in range(9)]
    assert sorted(k for k in kinds if k[0] != huge) == [(i, "image", -1) for i in range(3) if i != huge]


def test_eval_on_ray_equals_single_process(cluster: Path, run: dict[str, Path], tmp_path: Path) -> None:
    """GT made of every other prediction of the model (so AP is neither 0 nor 1), scored single and on Ray."""
    from pycocotools import mask as mask_utils

    pred = tmp_path / "pred"
    _cli("predict", run["data"] / "images", "--model", run["ckpt"], "--out", pred, "--conf", "0",
         "--no-save-overlays")
    coco = json.loads((pred / "images.json").read_text())
    dets = json.loads((pred / "predictions.json").read_text())[::2]
    coco["annotations"] = [{"id": k + 1, "image_id": d["image_id"], "category_id": d["category_id"],
                            "segmentation": d["segmentation"], "bbox": d["bbox"], "iscrowd": 0,
                            "area": float(mask_utils.area(d["segmentation"]))} for k, d in enumerate(dets)]
    (pred / "gt.json").write_text(json.dumps(coco))
    metrics = []
    for name, extra in (("single", []), ("ray", ["--ray", "local:2"])):
        _cli("eval", "--model", run["ckpt"], "--data", pred / "gt.json", "--out", tmp_path / name, "--gallery", "0",
             "--allow-outside-root", *extra)
        metrics.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert metrics[0] == metrics[1]
    assert metrics[0]["counts"]["images"] == 2 and 0 < metrics[0]["segm"]["AP"] < 1


def test_without_ray_one_line_hint(run: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    import cv2

    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((16, 16, 3), np.uint8))
    for args in (["predict", image, "--model", run["ckpt"], "--out", tmp_path / "o", "--ray", "auto"],
                 ["eval", "--model", run["ckpt"], "--data", run["data"], "--ray", "local:2"]):
        exc = _cli_error(*args)
        assert isinstance(exc, ConfigError) and str(exc) == RAY_HINT and "\n" not in str(exc)
    assert not (tmp_path / "o").exists()  # refused before anything was loaded or written


def test_bad_ray_flags(run: dict[str, Path], tmp_path: Path) -> None:
    for address in ("local:0", "local:x", ""):
        with pytest.raises(ConfigError, match="--ray"):
            RaySettings(address)
    with pytest.raises(ConfigError, match="--ray-workers"):
        RaySettings("auto", workers=0)
    exc = _cli_error("eval", "--gt", run["data"], "--pred", tmp_path / "p.json", "--ray", "auto")
    assert isinstance(exc, ConfigError) and "--ray goes with --model" in str(exc)


def test_unreachable_ray_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from maskkit.inference.distributed import ray_session

    def refuse(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify ...")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ConfigError, match=r"^--ray auto: cannot start or reach Ray \(Could not find any running Ray "
                                          r"instance. Please specify \.\.\.\)$"), ray_session(RaySettings("auto")):
        pass
