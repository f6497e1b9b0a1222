"""``maskkit info`` and the dataset statistics / plots behind it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from maskkit.cli.main import app
from maskkit.data.annotations import AnnotationSet, Category, ImageRecord, new_instances
from maskkit.data.plots import PLOT_FILES
from maskkit.data.stats import dataset_stats
from maskkit.data.synth import generate, write_synthetic
from maskkit.structures import Masks, PolygonMask


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, images=12, size=64, seed=4, val_fraction=0.25, workers=1)
    return out


def _info(*args: str) -> str:
    res = CliRunner().invoke(app, ["info", *args])
    assert res.exit_code == 0, res.output
    return res.output


def test_json_counts_match_the_generated_data(synth_dir) -> None:
    doc = json.loads(_info(str(synth_dir / "dataset.yaml"), "--json"))
    ref = generate(12, 64, seed=4)
    assert set(doc) == {"train", "val"}
    assert doc["train"]["images"] == 9 and doc["val"]["images"] == 3
    total = doc["train"]["instances"] + doc["val"]["instances"]
    assert total == ref.num_instances()
    for st in doc.values():
        assert sum(st["size_buckets"].values()) == st["instances"]
        assert sum(st["mask_kinds"].values()) == st["instances"]
        assert sum(c["instances"] for c in st["classes"]) == st["instances"]
        assert [c["name"] for c in st["classes"]] == ["ellipse", "polygon", "ring"]
        assert st["image_sizes"] == [{"height": 64, "width": 64, "count": st["images"]}]
    labels = np.concatenate([r.instances.labels for r in ref.images])
    for cid in (1, 2, 3):
        got = sum(c["instances"] for st in doc.values() for c in st["classes"] if c["id"] == cid)
        assert got == int(np.count_nonzero(labels == cid))


def test_tables_and_plots(synth_dir, tmp_path) -> None:
    out = _info(str(synth_dir), "--plots", str(tmp_path / "plots"))
    assert "train" in out and "val" in out and "ring" in out and "small (< 32²)" in out
    import cv2

    for name in PLOT_FILES:
        img = cv2.imread(str(tmp_path / "plots" / name))
        assert img is not None and img.shape[0] > 200 and img.shape[1] > 300


def test_stats_of_box_only_crowd_and_unknown_labels() -> None:
    h = w = 100
    poly = Masks([PolygonMask([[[0, 0], [50, 0], [50, 50], [0, 50]]], h, w)], h, w)
    with_mask = new_instances(h, w, [1], poly, iscrowd=[True])
    box_only = new_instances(h, w, [1, 7], None, boxes=np.array([[0, 0, 10, 10], [0, 0, 100, 100]], np.float32))
    empty = new_instances(h, w, [], None, boxes=np.zeros((0, 4), np.float32))
    aset = AnnotationSet(
        [Category(1, "a"), Category(2, "b")],
        [
            ImageRecord(1, "x.png", h, w, with_mask),
            ImageRecord(2, "y.png", h, w, box_only),
            ImageRecord(3, "z.png", 50, 80, empty),
        ],
        image_root=Path("."),
    )
    st = dataset_stats(aset)
    assert st.images == 3 and st.instances == 3 and st.empty_images == 1 and st.crowd == 1
    assert st.mask_kinds == {"polygon": 1, "rle": 0, "bitmap": 0, "box-only": 2}
    assert st.size_buckets == {"small": 1, "medium": 1, "large": 1}  # 100, 2500, 10000 px
    assert [(c.id, c.name, c.instances, c.images) for c in st.classes] == [
        (1, "a", 2, 2),
        (2, "b", 0, 0),
        (7, "<unknown id 7>", 1, 1),
    ]
    assert st.instances_per_image == {"min": 0.0, "median": 1.0, "mean": 1.0, "max": 2.0}
    assert st.image_sizes[0] == {"height": 100, "width": 100, "count": 2}
    json.dumps(st.to_dict(raw=True))  # JSON-serialisable


def test_coco128_seg(shared_data, tmp_path) -> None:
    doc = json.loads(_info(str(shared_data / "coco128-seg"), "--json", "--plots", str(tmp_path)))
    st = doc["train"]
    # 941 label lines: 929 belong to the 128 images, 12 sit in two label files without an image.
    assert st["images"] == 128 and st["instances"] == 929
    assert any("2 YOLO label file(s) without an image (12 annotation lines)" in n for n in st["notes"])
    assert st["mask_kinds"]["polygon"] == 929 and st["empty_images"] == 2
    assert len(st["classes"]) == 80
    assert sum(st["size_buckets"].values()) == 929
    assert len(st["image_sizes"]) > 10
    assert all((tmp_path / name).is_file() for name in PLOT_FILES)
