"""Dataset YAMLs (``load_dataset``/``write_dataset_yaml``) and the ``maskkit convert`` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from maskkit.data.formats import read_annotations
from maskkit.data.splits import DatasetSplits, is_dataset, load_dataset, write_dataset_yaml
from maskkit.errors import DataError
from test_formats_coco import assert_same_sets, make_coco
from test_formats_yolo import _make_yolo


def run_cli(*args: str, monkeypatch: pytest.MonkeyPatch) -> int:
    from maskkit.cli.main import main

    monkeypatch.setattr(sys, "argv", ["maskkit", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_single_source_is_one_train_split(tmp_path: Path) -> None:
    ds = load_dataset(make_coco(tmp_path / "c"))
    assert isinstance(ds, DatasetSplits) and list(ds.splits) == ["train"]
    assert ds.names == ["crowd", "box", "ring"] and ds.root == tmp_path / "c"


def test_dataset_yaml_with_mixed_formats(tmp_path: Path) -> None:
    make_coco(tmp_path / "d" / "train")
    _make_yolo(tmp_path / "d" / "yolo")
    path = write_dataset_yaml(tmp_path / "d" / "dataset.yaml", {"train": "train", "val": "yolo/images/val"},
                              {3: "crowd", 7: "box", 12: "ring"})
    assert yaml.safe_load(path.read_text()) == {"train": "train", "val": "yolo/images/val",
                                                "names": {3: "crowd", 7: "box", 12: "ring"}}
    for src in (path, tmp_path / "d"):
        ds = load_dataset(src)
        assert list(ds.splits) == ["train", "val"] and ds.yaml_path == path
        assert ds.splits["train"].format == "coco" and ds.splits["val"].format == "yolo"
        assert ds.names == ["crowd", "box", "ring"]
        assert len(ds.splits["val"]) == 1


def test_ultralytics_data_yaml(tmp_path: Path) -> None:
    root = _make_yolo(tmp_path / "y")
    ds = load_dataset(root)  # the folder's data.yaml names distinct train/val folders
    assert ds.yaml_path == root / "data.yaml" and list(ds.splits) == ["train", "val"]
    assert ds.splits["train"].class_names == ["cat", "dog", "bird"] == ds.names
    assert [r.file_name for r in ds.splits["train"].images] == ["a.jpg", "b.png"]
    # train and val naming the same folder load once (no fake train/val leak).
    (root / "data.yaml").write_text("path: .\ntrain: images\nval: images\nnames: [cat, dog, bird]\n")
    assert not is_dataset(root)
    ds = load_dataset(root / "data.yaml")
    assert list(ds.splits) == ["train"] and ds.aliases == {"val": "train"}


def test_split_subfolders_without_yaml(tmp_path: Path) -> None:
    make_coco(tmp_path / "d" / "train")
    make_coco(tmp_path / "d" / "val")
    ds = load_dataset(tmp_path / "d")
    assert list(ds.splits) == ["train", "val"] and ds.yaml_path is None


def test_bad_dataset_yaml(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("train: nowhere\n")
    with pytest.raises(DataError, match="nowhere"):
        load_dataset(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_text("train: [\n")
    with pytest.raises(DataError, match=r"bad\.yaml"):
        load_dataset(tmp_path / "bad.yaml")


def test_convert_command_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    src = make_coco(tmp_path / "c")
    assert run_cli("convert", str(src), str(tmp_path / "y"), "--to", "yolo", monkeypatch=monkeypatch) == 0
    out = capsys.readouterr().out
    assert "wrote 3 images, 3 instances as yolo" in out and "changed 1 instance(s): crowd RLE region" in out
    assert run_cli("convert", str(tmp_path / "y"), str(tmp_path / "c2"), "--to", "coco", "--from", "yolo",
                   monkeypatch=monkeypatch) == 0
    assert read_annotations(tmp_path / "c2").num_instances() == 3
    assert run_cli("convert", str(src), str(tmp_path / "z"), "--to", "nope", monkeypatch=monkeypatch) == 2
    assert "cannot write format 'nope'" in capsys.readouterr().err


def test_convert_command_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    root = _make_yolo(tmp_path / "y")
    assert run_cli("convert", str(root / "data.yaml"), str(tmp_path / "out"), "--to", "coco",
                   monkeypatch=monkeypatch) == 0
    out = capsys.readouterr().out
    assert out.startswith("[train] wrote 2 images") and "[val] wrote 1 images" in out
    assert yaml.safe_load((tmp_path / "out" / "dataset.yaml").read_text()) == {
        "train": "train", "val": "val", "names": ["cat", "dog", "bird"]}
    ds = load_dataset(tmp_path / "out")
    assert list(ds.splits) == ["train", "val"] and ds.splits["train"].num_instances() == 3
    # Back to YOLO: each split a YOLO folder, the dataset YAML points at their images (Ultralytics-ready).
    assert run_cli("convert", str(tmp_path / "out"), str(tmp_path / "yolo"), "--to", "yolo",
                   monkeypatch=monkeypatch) == 0
    doc = yaml.safe_load((tmp_path / "yolo" / "dataset.yaml").read_text())
    assert doc == {"train": "train/images", "val": "val/images", "names": ["cat", "dog", "bird"]}
    back = load_dataset(tmp_path / "yolo")
    assert back.splits["train"].class_names == ["cat", "dog", "bird"]
    np.testing.assert_array_equal(back.splits["train"].images[0].instances.labels, [1, 0])


def test_convert_coco128_to_coco_and_back(shared_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    src = shared_data / "coco128-seg"
    assert run_cli("convert", str(src), str(tmp_path / "coco"), "--to", "coco", monkeypatch=monkeypatch) == 0
    assert "wrote 128 images, 929 instances as coco" in capsys.readouterr().out
    assert run_cli("convert", str(tmp_path / "coco"), str(tmp_path / "yolo"), "--to", "yolo",
                   monkeypatch=monkeypatch) == 0
    assert "lossless: no instance changed" in capsys.readouterr().out
    run_cli("convert", str(tmp_path / "yolo"), str(tmp_path / "coco2"), "--to", "coco", monkeypatch=monkeypatch)
    # Same images, ids, labels and pixels (coco128's 7-digit coordinates were rounded to 6 decimals
    # on the way, choosing the neighbour that keeps pycocotools' rasterisation).
    first = read_annotations(tmp_path / "coco")
    assert_same_sets(first, read_annotations(tmp_path / "coco2"))
    assert json.loads((tmp_path / "coco" / "annotations.json").read_text())["images"][0]["file_name"] == (
        "train2017/000000000009.jpg"
    )


def test_convert_masks_layout_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    src = make_coco(tmp_path / "c")
    assert run_cli("convert", str(src), str(tmp_path / "lab"), "--to", "masks", "--layout", "label-images",
                   monkeypatch=monkeypatch) == 0
    assert sorted(p.name for p in (tmp_path / "lab" / "labels").iterdir()) == ["a.png", "b.png", "c.png"]
    assert run_cli("convert", str(src), str(tmp_path / "per"), "--to", "masks", "--layout", "per-instance",
                   monkeypatch=monkeypatch) == 0
    assert (tmp_path / "per" / "b" / "images" / "b.png").is_file()
    assert len(list((tmp_path / "per" / "b" / "masks").glob("*.png"))) == 2
    back = read_annotations(tmp_path / "per")
    assert back.format == "dsb" and back.num_instances() == 3
    capsys.readouterr()
    assert run_cli("convert", str(src), str(tmp_path / "x"), "--to", "masks", "--layout", "nope",
                   monkeypatch=monkeypatch) == 2
    assert "unknown --layout 'nope'" in capsys.readouterr().err
    assert run_cli("convert", str(src), str(tmp_path / "x"), "--to", "coco", "--layout", "per-instance",
                   monkeypatch=monkeypatch) == 2


def test_convert_refuses_unknown_image_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """An entry without width/height whose file cannot tell them is kept for validate (E109) but not written."""
    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "images" / "a.png").write_bytes(b"not an image")
    doc = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "src" / "annotations.json").write_text(json.dumps(doc))
    code = run_cli("convert", str(tmp_path / "src"), str(tmp_path / "out"), "--to", "yolo", monkeypatch=monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and "image size unknown" in err and "a.png" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
