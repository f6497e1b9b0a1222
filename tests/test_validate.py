"""maskkit validate: every check fires on crafted bad data and stays quiet on clean data; exit codes; JSON."""

from __future__ import annotations

import json
import shutil
import types
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from maskkit.data.annotations import AnnotationSet, Category, ImageRecord, new_instances
from maskkit.data.validate import ValidationReport, all_checks, validate_dataset
from maskkit.structures import Masks, PolygonMask, RLEMask

H, W = 48, 64
TRI = [[5, 5], [30, 5], [30, 30]]
SQUARE = [[35, 10], [60, 10], [60, 40], [35, 40]]
Splits = dict[str, AnnotationSet]


def _write_image(path: Path, seed: int) -> None:
    """A smooth random image (distinct perceptual hash per seed)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    cv2.imwrite(str(path), cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC))


def _record(image_id: int, file_name: str, polys: list, labels: list[int], **kw: object) -> ImageRecord:
    masks = Masks([PolygonMask([np.asarray(p, float)], H, W) for p in polys], H, W)
    ids = [100 * image_id + k for k in range(len(labels))]
    return ImageRecord(image_id, file_name, H, W, new_instances(H, W, labels, masks, ids=ids, **kw))


def _set(root: Path, records: list[ImageRecord], source: str) -> AnnotationSet:
    cats = [Category(1, "cat"), Category(2, "dog")]
    return AnnotationSet(cats, records, root, source=root / source, format="coco")


@pytest.fixture
def clean(tmp_path: Path) -> Splits:
    """Two splits (3 + 2 images, one JPEG) with two clean instances per image."""
    root = tmp_path / "images"
    root.mkdir()
    names = ["t0.png", "t1.jpg", "t2.png", "v0.png", "v1.png"]
    for seed, name in enumerate(names):
        _write_image(root / name, seed)
    recs = [_record(i + 1, n, [TRI, SQUARE], [1, 2]) for i, n in enumerate(names)]
    return {"train": _set(root, recs[:3], "train.json"), "val": _set(root, recs[3:], "val.json")}


def _codes(report: ValidationReport) -> set[str]:
    return {f.code for f in report.findings}


def test_clean_dataset_has_no_findings(clean: Splits) -> None:
    report = validate_dataset(clean)
    assert report.findings == [], [f.message for f in report.findings]
    assert report.ok and report.exit_code == 0
    assert report.counts == {"error": 0, "warning": 0, "info": 0}
    assert report.stats == {"splits": 2, "images": 5, "instances": 10}


# -- one crafted problem per check ---------------------------------------------------------------
def _img(s: Splits, i: int = 0, split: str = "train") -> ImageRecord:
    return s[split].images[i]


def _path(s: Splits, i: int = 0, split: str = "train") -> Path:
    return s[split].image_path(_img(s, i, split))


def _set_instances(s: Splits, polys: list, labels: list[int], i: int = 0, **kw: object) -> None:
    rec = _img(s, i)
    rec.instances = _record(rec.id, rec.file_name, polys, labels, **kw).instances


def _truncate(s: Splits) -> None:
    path = _path(s, 1)  # the JPEG
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _resize_file(s: Splits) -> None:
    cv2.imwrite(str(_path(s)), np.zeros((H + 10, W, 3), np.uint8))


def _rle(s: Splits, counts: list[int], size: tuple[int, int] = (H, W), masks_size: tuple[int, int] = (H, W)) -> None:
    rec = _img(s)
    rle = RLEMask({"size": list(size), "counts": counts})
    masks = Masks([rle], *masks_size)
    rec.instances = new_instances(H, W, [1], masks, boxes=np.array([[0, 0, 5, 5]]), ids=[7])


def _bad_labels(s: Splits) -> None:
    _img(s).instances._fields["labels"] = np.array(["cat", "dog"])  # wrong type: strings


def _degenerate_box(s: Splits) -> None:
    _img(s).instances.boxes[0] = [10, 10, 10, 30]


def _duplicate_ann_id(s: Splits) -> None:
    _img(s, 1).instances.ids[0] = _img(s, 0).instances.ids[0]


def _near_duplicate(s: Splits) -> None:
    img = cv2.imread(str(_path(s)))
    cv2.imwrite(str(_path(s, 0, "val")), np.clip(img.astype(int) + 3, 0, 255).astype(np.uint8))


def _problem(name: str, i: int = 0) -> Callable[[Splits], None]:
    """A reader's note on record ``i`` (the readers' own tests check that they write them)."""
    return lambda s: _img(s, i).problems.update({name: f"reader says: {name}"})


CASES: dict[str, Callable[[Splits], object]] = {
    "E000": lambda s: setattr(_img(s), "problems", None),  # makes the reader-problem checks crash
    "E101": lambda s: _path(s).unlink(),
    "E102": lambda s: _path(s).write_bytes(b"this is not an image"),
    "E103": _truncate,
    "E104": _resize_file,
    "I105": lambda s: _set_instances(s, [], []),
    "E106": lambda s: setattr(_img(s, 1), "id", _img(s, 0).id),
    "E107": lambda s: setattr(_img(s, 2), "file_name", _img(s, 0).file_name),
    "W108": lambda s: shutil.copy(_path(s, 0), _path(s, 2)),
    "E109": _problem("image-size-unknown"),
    "W110": _problem("invalid-embedded-image"),
    "E111": _problem("missing-class-png"),
    "E200": _bad_labels,
    "W201": lambda s: _set_instances(s, [TRI], [1]) or _img(s).instances.masks.items[0].parts.append(np.ones((2, 2))),
    "W202": lambda s: _set_instances(s, [[[0, 0], [20, 20], [0, 20], [20, 0]]], [1]),
    "E203": lambda s: _set_instances(s, [[[5, 5], [10, 10], [15, 15]]], [1]),
    "W204": lambda s: _set_instances(s, [[[-10, 5], [30, 5], [30, 30]]], [1]),
    "E205": lambda s: _set_instances(s, [[[100, 5], [130, 5], [130, 30]]], [1]),
    "W206": lambda s: _set_instances(s, [TRI], [1], boxes=np.array([[5, 5, 50, 45]])),
    "W207": lambda s: _set_instances(s, [[[5, 5], [6.5, 5], [6.5, 6.5]]], [1]),
    "W208": lambda s: _set_instances(s, [TRI], [1], iscrowd=[True]),
    "E209": lambda s: _rle(s, [5, 10]),
    "E210": lambda s: _rle(s, [H * (W + 1)], size=(H, W + 1), masks_size=(H, W + 1)),
    "E211": lambda s: _set_instances(s, [[[np.nan, 5], [30, 5], [30, 30]]], [1]),
    "W212": lambda s: _set_instances(s, [TRI, TRI], [1, 1]),
    "E213": _degenerate_box,
    "E214": _duplicate_ann_id,
    "E215": lambda s: _set_instances(s, [TRI], [1], iscrowd=[True], extras=[{"iscrowd": 2}]),
    "E216": _problem("unknown-shape-type", 1),
    "E301": lambda s: _set_instances(s, [TRI], [9]),
    "W302": lambda s: s["val"].categories.append(Category(3, "bird")),
    "E303": lambda s: setattr(s["train"].categories[1], "name", "cat"),
    "E304": lambda s: setattr(s["train"].categories[1], "id", 1),
    "E305": lambda s: setattr(s["train"].categories[0], "name", " "),
    "E401": lambda s: shutil.copy(_path(s, 0), _path(s, 0, "val")),
    "W402": _near_duplicate,
    "W403": lambda s: {"dataset-yaml-without-names": ("no 'names' in the dataset YAML", "dataset.yaml")},
    "E501": lambda s: setattr(s["train"], "root", s["train"].image_root) or setattr(_img(s), "file_name", "../x.png"),
    "E502": lambda s: setattr(s["train"], "root", s["train"].image_root / "sub"),
}


def test_every_check_has_a_case() -> None:
    codes = [c.code for c in all_checks()]
    assert len(codes) >= 15 and len(set(codes)) == len(codes)
    assert sorted(CASES) == sorted(codes)
    assert {c.severity for c in all_checks()} == {"error", "warning", "info"}


@pytest.mark.parametrize("code", sorted(CASES))
def test_check_fires_on_bad_data(clean: Splits, code: str) -> None:
    problems = CASES[code](clean)
    report = validate_dataset(clean, problems=problems if isinstance(problems, dict) else None)
    hits = [f for f in report.findings if f.code == code]
    assert hits, f"{code} did not fire; got {[(f.code, f.message) for f in report.findings]}"
    f = hits[0]
    assert f.message and f.name and f.severity in ("error", "warning", "info")
    assert f.split in ("train", "val")
    if code not in ("W302", "E303", "E304", "W403", "E502"):  # category/split checks are about the split
        assert f.image_id is not None and f.image is not None and f.file
    assert report.exit_code == (3 if code == "E000" else 1 if report.counts["error"] else 0)


def test_findings_name_annotation_and_numbers(clean: Splits) -> None:
    CASES["W206"](clean)
    (f,) = [f for f in validate_dataset(clean).findings if f.code == "W206"]
    assert f.annotation_id == 100 and f.image == "t0.png" and f.file.endswith("train.json")
    assert "box [5, 5, 50, 45] vs mask box [6, 5, 30, 29] (XYXY): IoU 0.32" in f.message


def test_garbage_never_raises(clean: Splits) -> None:
    rec = _img(clean)
    rec.instances._fields["boxes"] = np.full((2, 4), np.inf, np.float32)
    rec.instances._fields["ids"] = np.array([None, "x"], dtype=object)
    _img(clean, 1).instances._fields["labels"] = [object(), None]
    _img(clean, 2).file_name = None  # type: ignore[assignment]
    report = validate_dataset(clean)
    assert report.exit_code == 1
    assert "E200" in _codes(report)
    json.loads(report.to_json())


def test_non_positive_image_size_is_reported_not_crashed(clean: Splits) -> None:
    _img(clean).height = 0
    hits = [f for f in validate_dataset(clean).findings if f.code in ("E104", "E200")]
    expected = ("E104", "annotation gives a size of 64x0 (WxH), which is not positive")
    assert [(f.code, f.message) for f in hits] == [expected]


def test_progress_bar_on_large_dataset(tmp_path: Path) -> None:
    recs = [_record(i, f"missing{i}.png", [], []) for i in range(1, 203)]
    report = validate_dataset({"train": _set(tmp_path, recs, "a.json")}, progress=True)
    assert report.counts["error"] == 202 and report.stats["images"] == 202


def test_garbage_polygons_are_safe_to_rasterise() -> None:
    """NaN or absurd coordinates must not crash or exhaust pycocotools (readers compute boxes from masks)."""
    nan = PolygonMask([np.array([[np.nan, 1], [3, 4], [5, 6]]), [[0, 0], [1e12, 0], [1e12, 10]]], H, W)
    masks = Masks([nan], H, W)
    assert masks.areas().shape == (1,)


def test_no_hash_skips_file_reads(clean: Splits) -> None:
    from maskkit.data.validate import ValidateOptions

    CASES["E401"](clean)
    assert "E401" not in _codes(validate_dataset(clean, ValidateOptions(hashes=False)))


def test_annotation_ids_are_per_image_outside_coco(clean: Splits) -> None:
    _duplicate_ann_id(clean)
    clean["train"].format = "voc"  # VOC/LabelMe number annotations per image
    assert "E214" not in _codes(validate_dataset(clean))
    _img(clean, 2).instances.ids[1] = _img(clean, 2).instances.ids[0]
    hits = [f for f in validate_dataset(clean).findings if f.code == "E214"]
    assert [(f.image_id, f.message) for f in hits] == [(3, "annotation id 300 is also used in this image")]


def test_coco_file_end_to_end(tmp_path: Path) -> None:
    """A hand-written COCO file with typical slips, read by the (lenient) COCO reader."""
    from maskkit.data.formats import read_annotations

    (tmp_path / "images").mkdir()
    for i in (1, 2):
        _write_image(tmp_path / "images" / f"{i}.png", i)
    tri = [5, 5, 30, 5, 30, 30]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [tri], "bbox": [5, 5, 25, 25], "iscrowd": 0},
        {"id": 1, "image_id": 2, "category_id": 7, "segmentation": [tri], "bbox": [5, 5, 25, 25], "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "segmentation": {"size": [H, W], "counts": [10, 5]},
         "bbox": [0, 0, 1, 5], "iscrowd": 1},
        {"id": 4, "image_id": 2, "category_id": 1, "segmentation": [[5, 5, 30, 5, 30, "NaN"]],
         "bbox": [5, 5, 25, 25], "iscrowd": 0},
    ]
    doc = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": H, "width": W} for i in (1, 2)],
        "annotations": anns,
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    text = json.dumps(doc).replace('"NaN"', "NaN")
    (tmp_path / "annotations.json").write_text(text)
    report = validate_dataset({"train": read_annotations(tmp_path / "annotations.json")})
    assert _codes(report) == {"E209", "E211", "E214", "E301", "W302"}
    by_code = {f.code: f for f in report.findings}
    assert by_code["E209"].message == f"RLE run lengths sum to 15, the {H}x{W} mask has {H * W} pixels"
    assert by_code["E301"].annotation_id == 1 and by_code["E301"].image_id == 2
    assert by_code["W302"].message == "category 2 'dog' has no instances in the dataset"
    assert all(f.file.endswith("annotations.json") for f in report.findings)


# -- the command: exit codes and JSON --------------------------------------------------------------
@pytest.fixture
def fake_loader(monkeypatch: pytest.MonkeyPatch) -> Callable[[Splits], None]:
    """Make ``maskkit validate``'s ``load_dataset`` return the given splits (reader-independent CLI tests)."""

    def install(splits: Splits) -> None:
        fake = lambda path, **kw: types.SimpleNamespace(splits=splits, names=None, root=Path(path))  # noqa: E731
        monkeypatch.setattr("maskkit.cli.validate.load_dataset", fake)

    return install


def _invoke(*args: str) -> object:
    from maskkit.cli.main import app

    return CliRunner().invoke(app, ["validate", *args])


def test_cli_exit_0_with_warnings_only(clean: Splits, fake_loader: Callable[[Splits], None]) -> None:
    CASES["W208"](clean)
    fake_loader(clean)
    result = _invoke("data.json")
    assert result.exit_code == 0, result.output
    assert "W208" in result.output and "crowd-without-rle" in result.output
    assert "0 error(s), 1 warning(s)" in result.output


def test_cli_exit_1_with_errors_and_json_schema(clean: Splits, fake_loader: Callable[[Splits], None]) -> None:
    CASES["E101"](clean)
    CASES["I105"](clean)
    fake_loader(clean)
    result = _invoke("data.json", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert set(doc) >= {"ok", "counts", "checks", "findings"}
    assert doc["ok"] is False and doc["counts"] == {"error": 1, "warning": 0, "info": 1}
    assert {"code", "name", "severity", "description", "count"} <= set(doc["checks"][0])
    assert sum(c["count"] for c in doc["checks"]) == len(doc["findings"])
    f, info = doc["findings"]
    assert (info["code"], info["severity"], info["annotation_id"]) == ("I105", "info", None)
    assert set(f) == {"code", "name", "severity", "split", "file", "image_id", "image", "annotation_id", "message"}
    assert (f["code"], f["image_id"], f["image"], f["split"]) == ("E101", 1, "t0.png", "train")
    assert f["file"].endswith("t0.png")


def test_cli_max_per_check(clean: Splits, fake_loader: Callable[[Splits], None]) -> None:
    for i in range(3):
        _img(clean, i).instances.iscrowd[:] = True
    fake_loader(clean)
    result = CliRunner().invoke(__import__("maskkit.cli.main").cli.main.app,
                                ["validate", "x", "--max-per-check", "2"], terminal_width=200)
    assert result.exit_code == 0
    assert "and 4 more" in result.output


def test_cli_exit_2_on_loader_error(fake_loader: Callable[[Splits], None], monkeypatch: pytest.MonkeyPatch) -> None:
    from maskkit.errors import DataError

    fake_loader({})

    def boom(path: object, **kw: object) -> None:
        raise DataError("not valid JSON (line 1)", file=path)

    monkeypatch.setattr("maskkit.cli.validate.load_dataset", boom)
    result = _invoke("bad.json")
    assert result.exit_code == 2 and "not valid JSON" in result.output and "Traceback" not in result.output
    result = _invoke("bad.json", "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {"ok": False, "fatal": "bad.json: not valid JSON (line 1)"}


def test_cli_garbage_json_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "annotations.json"
    bad.write_text("{ this is not json")
    result = _invoke(str(bad))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    result = _invoke(str(bad), "--json")
    assert result.exit_code == 2 and json.loads(result.stdout)["ok"] is False


def test_cli_dataset_yaml_with_leak(tmp_path: Path) -> None:
    """train/val COCO folders named by a dataset YAML; one val image is a copy of a train image."""
    for split, seeds in (("train", (1, 2)), ("val", (3, 1))):
        (tmp_path / split / "images").mkdir(parents=True)
        for k, seed in enumerate(seeds):
            _write_image(tmp_path / split / "images" / f"{split}{k}.png", seed)
        doc = {
            "images": [{"id": k + 1, "file_name": f"{split}{k}.png", "height": H, "width": W} for k in range(2)],
            "annotations": [{"id": k + 1, "image_id": k + 1, "category_id": 1, "iscrowd": 0,
                             "segmentation": [[5, 5, 30, 5, 30, 30]], "bbox": [5, 5, 25, 25]} for k in range(2)],
            "categories": [{"id": 1, "name": "cat"}],
        }
        (tmp_path / split / "annotations.json").write_text(json.dumps(doc))
    (tmp_path / "dataset.yaml").write_text("train: train\nval: val\nnames: [cat]\n")
    result = _invoke(str(tmp_path / "dataset.yaml"), "--json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert [(f["code"], f["split"], f["image"]) for f in doc["findings"]] == [("E401", "val", "val1.png")]
    assert "train image 1 'train0.png'" in doc["findings"][0]["message"]


# -- the shared real datasets ----------------------------------------------------------------------
@pytest.mark.parametrize("rel", ["labelme-voc2011-instances/data_dataset_coco/annotations.json", "coco128-seg"])
def test_shared_datasets(shared_data: Path, rel: str, capsys: pytest.CaptureFixture[str]) -> None:
    from maskkit.data import splits as splits_mod

    ds = splits_mod.load_dataset(shared_data / rel)
    report = validate_dataset(ds.splits)
    with capsys.disabled():
        print(f"\n{rel}: {report.summary()}")
        for chk in report.to_dict()["checks"]:
            if chk["count"]:
                example = next(f for f in report.findings if f.code == chk["code"])
                print(f"  {chk['code']} {chk['name']}: {chk['count']}  e.g. {example.where()}: {example.message}")
    assert report.stats["images"] > 0
    assert "E200" not in _codes(report) and "E000" not in _codes(report)
