"""COCO reader robustness: garbage gives a DataError naming file and entry; content problems are kept for validate."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from maskkit.data.formats import read_annotations, write_annotations
from maskkit.errors import DataError
from test_formats_coco import coco_doc, make_coco

GARBAGE = [None, True, -1, 1.5, 1e400, -1e400, math.nan, 10**30, "x", "12", [], [1, 2], [[1, 2]], {}, {"a": 1},
           [None], [[None] * 6], [[1, 2, 3, 4, 5, "a"]], [1e400] * 4, [[1e400, 0, 5, 5, 0, 5]]]
ANN_KEYS = ["id", "image_id", "category_id", "segmentation", "bbox", "iscrowd", "area"]


def _cases() -> list[tuple[str, str, object]]:
    out: list[tuple[str, str, object]] = []
    for k, key in enumerate(ANN_KEYS):
        out += [("ann", key, g) for g in GARBAGE[k % 3::3]]  # a spread of garbage per key, keeps the test fast
    out += [("ann", "whole", g) for g in (None, 5, "x", [1, 2])]
    out += [("img", key, g) for key in ("id", "height", "width") for g in (None, 1e400, math.nan, "x", [1])]
    out += [("img", "whole", g) for g in (None, 5, "x", [1])]
    out += [("cat", "id", g) for g in (1e400, math.nan, None, "x")] + [("cat", "whole", g) for g in (None, 3)]
    out += [("rle", "counts", g) for g in ([1e400], [-1, 5], [1.5], [None], [True, False], {"a": 1}, 5)]
    out += [("rle", "size", g) for g in (None, [1e400, 5], ["a", "b"], [5])]
    return out


@pytest.mark.parametrize(("where", "key", "value"), _cases())
def test_garbage_is_data_error_or_kept(tmp_path: Path, where: str, key: str, value: object) -> None:
    doc = coco_doc()
    target = {"ann": doc["annotations"][0], "img": doc["images"][0], "cat": doc["categories"][0],
              "rle": doc["annotations"][2]["segmentation"]}[where]
    listing = {"ann": doc["annotations"], "img": doc["images"], "cat": doc["categories"]}.get(where)
    if key == "whole":
        listing[0] = copy.deepcopy(value)
    else:
        target[key] = copy.deepcopy(value)
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(doc))  # NaN/Infinity written as JSON's non-standard literals, as Python reads them
    try:
        aset = read_annotations(path, "coco")
    except DataError as exc:
        text = str(exc)
        assert str(path) in text
        if where in ("ann", "rle"):  # the entry is named: by its id, or by its index when the id is unusable
            names = ("annotation 10", "annotation #0") if where == "ann" else ("annotation 12",)
            names = ("annotation ",) if key == "id" else names  # named by the (bad) id as given
            assert any(n in text for n in names), text
        return
    # Accepted: it must be usable (rasterise every mask, write back).
    for rec in aset.images:
        if rec.instances.has("masks"):
            rec.instances.masks.areas()
    write_annotations(aset, tmp_path / "out", "coco")


def test_rle_size_mismatch_and_duplicate_image_ids_are_kept(tmp_path: Path) -> None:
    doc = coco_doc()
    doc["annotations"][1]["segmentation"]["size"] = [10, 10]
    del doc["annotations"][1]["bbox"]
    doc["images"].append({"id": 2, "file_name": "d.png", "height": 8, "width": 8})
    make_coco(tmp_path / "src", doc)
    aset = read_annotations(tmp_path / "src")
    assert [r.id for r in aset.images] == [1, 2, 5, 2]
    b = aset.images[1]
    assert len(b.instances) == 2 and len(aset.images[3].instances) == 0  # annotations attach to the first
    bad = b.instances.extras[0]["invalid_segmentation"]
    assert bad["size"] == [10, 10] and b.instances.masks.areas()[0] == 0
    np.testing.assert_array_equal(b.instances.boxes[0], [0, 0, 0, 0])
    write_annotations(aset, tmp_path / "out", "coco")  # written back as read
    out = json.loads((tmp_path / "out" / "annotations.json").read_text())
    ann = next(a for a in out["annotations"] if a["id"] == 11)
    assert ann["segmentation"] == bad and "invalid_segmentation" not in ann


def test_validate_reports_coco_content_problems(tmp_path: Path) -> None:
    from maskkit.cli.main import app

    doc = coco_doc()
    doc["annotations"][1]["segmentation"]["size"] = [10, 10]
    doc["images"].append({"id": 1, "file_name": "d.png", "height": 8, "width": 8})
    make_coco(tmp_path / "src", doc)
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "src" / "annotations.json"), "--json"])
    assert result.exit_code == 1, result.output
    codes = {f["code"] for f in json.loads(result.stdout)["findings"]}
    assert {"E210", "E106"} <= codes
    assert "E203" not in codes  # the placeholder empty mask is not reported as a zero-area mask


def test_reader_matches_pycocotools_on_the_benchmark_data(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from data_io import make_coco as bench_coco

    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(bench_coco(20, 6, seed=1, height=120, width=160)))
    coco = COCO(str(path))
    aset = read_annotations(path, "coco")
    for rec in aset.images:
        anns = coco.imgToAnns[rec.id]
        assert [a["id"] for a in anns] == rec.instances.ids.tolist()
        ref = [coco.annToRLE(a) for a in anns]
        assert (mask_utils.area(ref) == rec.instances.masks.areas()).all()
        np.testing.assert_allclose(rec.instances.boxes[:, :2], [a["bbox"][:2] for a in anns], atol=1e-4)
