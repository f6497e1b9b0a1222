"""The synthetic dataset generator: determinism, classes, holes, scale range, occlusion, layouts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from maskkit.data.synth import CLASS_NAMES, MIN_VISIBLE_AREA, generate, render
from maskkit.structures import PolygonMask, RLEMask


@pytest.fixture(scope="module")
def small_set():
    return generate(60, 128, seed=3)


def test_render_is_deterministic_and_seed_dependent() -> None:
    a, b, c = render(5, 96, seed=1), render(5, 96, seed=1), render(5, 96, seed=2)
    assert a.image.shape == (96, 96, 3) and a.image.dtype == np.uint8
    assert np.array_equal(a.image, b.image)
    assert a.instances.masks.to_rles() == b.instances.masks.to_rles()
    assert not np.array_equal(a.image, c.image)
    # Image i does not depend on how many images are generated.
    assert generate(3, 96, seed=1).images[2].data == generate(4, 96, seed=1).images[2].data


def test_classes_and_representations(small_set) -> None:
    assert small_set.class_names == list(CLASS_NAMES)
    labels = np.concatenate([r.instances.labels for r in small_set.images])
    assert set(labels.tolist()) == {1, 2, 3}
    for rec in small_set.images:
        inst = rec.instances
        assert rec.data is not None and rec.data.startswith(b"\x89PNG")
        for label, item in zip(inst.labels, inst.masks, strict=True):
            if label == 3:  # rings always RLE (they have holes)
                assert isinstance(item, RLEMask)
            else:
                assert isinstance(item, PolygonMask | RLEMask)


def test_ring_has_a_hole(small_set) -> None:
    holes = 0
    for rec in small_set.images:
        inst = rec.instances
        for i in np.flatnonzero(inst.labels == 3):
            m = inst.masks.bitmap(int(i))
            if ndimage.binary_fill_holes(m).sum() > m.sum():
                holes += 1
    assert holes >= 5


def test_polygon_masks_are_the_drawn_visible_geometry(small_set) -> None:
    # Polygon instances are unoccluded: their rasterised polygon is exactly their visible pixels,
    # so no other mask of the image overlaps them (checked globally below).
    n_poly = sum(k == "polygon" for r in small_set.images for k in r.instances.masks.kinds())
    n_rle = sum(k == "rle" for r in small_set.images for k in r.instances.masks.kinds())
    assert n_poly > 20 and n_rle > 20


def test_masks_do_not_overlap_and_are_not_tiny(small_set) -> None:
    for rec in small_set.images:
        bitmaps = rec.instances.masks.to_bitmaps()
        assert bitmaps.sum(axis=0).max(initial=0) <= 1
        assert (bitmaps.sum(axis=(1, 2)) >= MIN_VISIBLE_AREA).all()


def test_scale_range_is_at_least_10x(small_set) -> None:
    sides = []
    for rec in small_set.images:
        inst = rec.instances
        poly = np.array([k == "polygon" for k in inst.masks.kinds()], dtype=bool)
        b = inst.boxes[poly]
        sides.extend(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]).tolist())
    assert max(sides) / min(sides) >= 10


# -- writing the COCO layout -------------------------------------------------------------------
def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_is_byte_identical_and_seed_dependent(tmp_path) -> None:
    from maskkit.data.synth import write_synthetic

    write_synthetic(tmp_path / "a", images=16, size=48, seed=5, workers=1)
    write_synthetic(tmp_path / "b", images=16, size=48, seed=5, workers=2)  # parallel == serial
    write_synthetic(tmp_path / "c", images=16, size=48, seed=6, workers=1)
    a, b, c = (_tree(tmp_path / x) for x in "abc")
    assert sorted(a) == ["annotations.json", *(f"images/synth_{i:06d}.png" for i in range(16))]
    assert a == b
    assert a["annotations.json"] != c["annotations.json"]
    assert a["images/synth_000000.png"] != c["images/synth_000000.png"]


def test_written_annotations_read_back_exactly(tmp_path) -> None:
    from maskkit.data.formats import read_annotations
    from maskkit.data.images import read_image
    from maskkit.data.synth import write_synthetic

    write_synthetic(tmp_path, images=10, size=96, seed=2, workers=1)
    back = read_annotations(tmp_path)
    ref = generate(10, 96, seed=2)
    assert back.format == "coco" and back.class_names == list(CLASS_NAMES)
    for r, b in zip(ref.images, back.images, strict=True):
        assert r.instances.masks.kinds() == b.instances.masks.kinds()
        # Polygons and RLEs rasterise to exactly the pixels that were painted.
        assert r.instances.masks.to_rles() == b.instances.masks.to_rles()
        assert np.array_equal(r.instances.labels, b.instances.labels)
        img = read_image(back.image_path(b))
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8


def test_val_split_layout_and_dataset_yaml(tmp_path) -> None:
    import yaml

    from maskkit.data.splits import load_dataset
    from maskkit.data.synth import write_synthetic

    reports = write_synthetic(tmp_path, images=10, size=64, seed=0, val_fraction=0.3, workers=1)
    assert set(reports) == {"train", "val"}
    for split, n in (("train", 7), ("val", 3)):
        assert (tmp_path / split / "annotations.json").is_file()
        assert len(list((tmp_path / split / "images").glob("*.png"))) == n
    doc = yaml.safe_load((tmp_path / "dataset.yaml").read_text())
    assert doc["train"] == "train" and doc["val"] == "val" and doc["names"] == list(CLASS_NAMES)
    ds = load_dataset(tmp_path / "dataset.yaml")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 7, "val": 3}
    # Val images are the last ones of the same stream, so train + val == the unsplit dataset.
    assert ds.splits["val"].images[0].file_name == "synth_000007.png"


def test_test_split_is_a_disjoint_stream(tmp_path) -> None:
    import yaml

    from maskkit.data.splits import load_dataset
    from maskkit.data.synth import TEST_INDEX_OFFSET, render, write_synthetic

    reports = write_synthetic(tmp_path / "a", images=10, size=48, seed=0, val_fraction=0.2, test_fraction=0.3,
                              workers=1)
    assert set(reports) == {"train", "val", "test"}
    doc = yaml.safe_load((tmp_path / "a" / "dataset.yaml").read_text())
    assert (doc["train"], doc["val"], doc["test"]) == ("train", "val", "test")
    ds = load_dataset(tmp_path / "a" / "dataset.yaml")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 5, "val": 2, "test": 3}
    names = {k: {r.file_name for r in v.images} for k, v in ds.splits.items()}
    assert not (names["test"] & (names["train"] | names["val"]))
    test = ds.splits["test"]
    assert test.images[0].file_name == render(TEST_INDEX_OFFSET, 48, 0).file_name
    # the test images do not depend on how many train/val images there are
    write_synthetic(tmp_path / "b", images=20, size=48, seed=0, val_fraction=0.1, test_fraction=0.15, workers=1)
    for name in sorted(names["test"]):
        assert (tmp_path / "a" / "test" / "images" / name).read_bytes() == \
            (tmp_path / "b" / "test" / "images" / name).read_bytes()


def test_rerun_removes_stale_images(tmp_path) -> None:
    from maskkit.data.synth import write_synthetic

    write_synthetic(tmp_path, images=6, size=48, seed=0, workers=1)
    write_synthetic(tmp_path, images=4, size=48, seed=0, workers=1)
    assert len(list((tmp_path / "images").iterdir())) == 4


@pytest.mark.parametrize(
    "kwargs", [{"images": 0}, {"size": 8}, {"val_fraction": 1.0}, {"images": 2, "val_fraction": 0.1},
               {"test_fraction": 0.0}, {"images": 3, "val_fraction": 0.5, "test_fraction": 0.4}]
)
def test_bad_arguments_are_config_errors(tmp_path, kwargs) -> None:
    from maskkit.data.synth import write_synthetic
    from maskkit.errors import ConfigError

    with pytest.raises(ConfigError):
        write_synthetic(tmp_path, **{"images": 10, "size": 64, **kwargs})


def test_cli(tmp_path) -> None:
    from typer.testing import CliRunner

    from maskkit.cli.main import app

    res = CliRunner().invoke(
        app, ["synth", str(tmp_path / "d"), "--images", "8", "--size", "64", "--seed", "1", "--val-fraction", "0.25"]
    )
    assert res.exit_code == 0, res.output
    assert "lossless" in res.output
    assert (tmp_path / "d" / "dataset.yaml").is_file()
    res = CliRunner().invoke(app, ["synth", str(tmp_path / "t"), "--images", "10", "--size", "48", "--val-fraction",
                                   "0.2", "--test-fraction", "0.2", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "[test]" in res.output and len(list((tmp_path / "t" / "test" / "images").iterdir())) == 2
