"""Instance-label images (``labelimages`` / ``--to masks``) and the one-PNG-per-instance layout (``dsb``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from pycocotools import mask as mask_utils

from maskkit.data.annotations import AnnotationSet, Category, ImageRecord, new_instances
from maskkit.data.formats import detect_format, read_annotations, write_annotations
from maskkit.data.formats.dsb import detect_dsb, read_dsb
from maskkit.data.formats.labelimages import (
    detect_label_images,
    read_label_images,
    write_label_images,
)
from maskkit.data.images import image_size
from maskkit.errors import DataError
from maskkit.structures import Masks
from maskkit.structures.rle import label_image_to_rles

DSB = "dsb2018-stage1-train-subset"


def _square(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _make_set(tmp_path: Path, bitmaps: list[np.ndarray], *, ids: list[int] | None = None,
              labels: list[int] | None = None, iscrowd: list[bool] | None = None,
              categories: list[Category] | None = None, image: np.ndarray | None = None,
              file_name: str = "img.png") -> AnnotationSet:
    h, w = bitmaps[0].shape
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    img = image if image is not None else np.full((h, w, 3), 128, np.uint8)
    if file_name.endswith(".tif"):
        tifffile.imwrite(src / file_name, img)
    else:
        cv2.imwrite(str(src / file_name), img)
    n = len(bitmaps)
    inst = new_instances(h, w, labels or [1] * n, Masks.from_bitmaps(bitmaps, h, w), iscrowd=iscrowd, ids=ids)
    rec = ImageRecord(1, file_name, h, w, inst)
    return AnnotationSet(categories or [Category(1, "object")], [rec], src)


def _pixels(aset: AnnotationSet) -> dict[int, np.ndarray]:
    """Annotation id -> dense mask of the first image."""
    inst = aset.images[0].instances
    return {int(i): inst.masks.bitmap(k) for k, i in enumerate(inst.ids)}


# -- the shared DSB subset ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dsb(shared_data: Path) -> AnnotationSet:
    return read_annotations(shared_data / DSB / "stage1_train")


def test_read_shared_dsb(dsb: AnnotationSet, shared_data: Path) -> None:
    assert dsb.format == "dsb" and len(dsb) == 60 and dsb.num_instances() == 2848
    assert dsb.class_names == ["nucleus"]
    assert detect_format(shared_data / DSB) == "dsb"  # the parent of stage1_train/
    rec = dsb.images[3]
    assert (rec.height, rec.width) == image_size(dsb.image_path(rec))
    for k in (0, len(rec.instances) - 1):
        png = dsb.image_path(rec).parent.parent / "masks" / f"{rec.instances.extras[k]['mask_file']}.png"
        assert rec.instances.masks.areas()[k] == np.count_nonzero(cv2.imread(str(png), cv2.IMREAD_UNCHANGED))
    assert list(rec.instances.ids) == list(range(1, len(rec.instances) + 1))


def test_shared_dsb_to_label_images_and_back(dsb: AnnotationSet, tmp_path: Path) -> None:
    report = write_annotations(dsb, tmp_path / "out", "masks")
    assert report.lossless and report.instances == 2848  # the subset's masks do not overlap
    assert detect_format(tmp_path / "out") == "labelimages"
    back = read_annotations(tmp_path / "out")
    assert back.class_names == ["nucleus"] and back.num_instances() == 2848
    for a, b in zip(dsb, back, strict=True):
        assert (a.id, a.height, a.width) == (b.id, b.height, b.width)
        by_name = {e["mask_file"]: k for k, e in enumerate(a.instances.extras)}
        for k, e in enumerate(b.instances.extras):
            j = by_name[e["mask_file"]]
            assert a.instances.ids[j] == b.instances.ids[k]
            assert a.instances.masks.rle(j)["counts"] == b.instances.masks.rle(k)["counts"]


# -- label image <-> RLE ----------------------------------------------------------------------------
def test_label_image_rles_match_pycocotools() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, size=(17, 13)).astype(np.uint16) * 1000
    labels[0, 0], labels[-1, -1] = 7, 7  # runs touching the first and the last pixel
    rles, ids = label_image_to_rles(labels)
    assert ids.tolist() == sorted(set(np.unique(labels).tolist()) - {0})
    for rle, i in zip(rles, ids, strict=True):
        assert rle == mask_utils.encode(np.asfortranarray((labels == i).astype(np.uint8)))
    assert label_image_to_rles(np.zeros((4, 5), np.uint8))[0] == []


def test_large_label_image_is_fast() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros((4000, 4000), np.uint16)
    for i in range(1, 2001):
        x, y, r = rng.integers(0, 4000), rng.integers(0, 4000), rng.integers(10, 60)
        cv2.circle(labels, (int(x), int(y)), int(r), i, -1)
    t = time.perf_counter()
    rles, ids = label_image_to_rles(labels)
    masks = Masks.from_rles(rles, 4000, 4000)
    index = masks.label_image(list(range(len(masks))))
    elapsed = time.perf_counter() - t
    assert len(ids) > 1800 and np.array_equal(np.concatenate(([0], ids))[index], labels)
    assert elapsed < 10, f"{elapsed:.1f} s"  # ~0.5 s on 2 cores


# -- writing ------------------------------------------------------------------------------------
def test_overlap_is_reported_and_per_instance_layout_is_lossless(tmp_path: Path) -> None:
    h, w = 40, 50
    big, small = _square(h, w, 0, 20, 0, 20), _square(h, w, 10, 30, 10, 25)
    twin = _square(h, w, 30, 35, 40, 45)
    aset = _make_set(tmp_path, [big, small, twin, twin.copy()], ids=[1, 2, 3, 4], iscrowd=[False, False, True, False])
    report = write_annotations(aset, tmp_path / "labels", "masks")
    assert report.changes == {"overlap: pixels assigned to one instance": 1,
                              "overlap: instance fully hidden by others, not written": 1}
    assert not report.lossless and report.instances == 3
    back = _pixels(read_label_images(tmp_path / "labels"))
    assert set(back) == {1, 2, 4}  # 3 and 4 are equal: the later one is painted on top
    assert np.array_equal(back[2], small) and np.array_equal(back[1], big & ~small)
    # the per-instance layout keeps overlaps, ids and crowd flags
    report = write_label_images(aset, tmp_path / "dsb", layout="per-instance")
    assert report.lossless and report.instances == 4
    assert detect_format(tmp_path / "dsb") == "dsb"
    back_set = read_dsb(tmp_path / "dsb")
    assert _pixels(back_set).keys() == {1, 2, 3, 4}
    for i, m in _pixels(back_set).items():
        assert np.array_equal(m, [big, small, twin, twin][i - 1])
    assert back_set.images[0].instances.iscrowd.tolist() == [False, False, True, False]


def test_16bit_label_png_roundtrip(tmp_path: Path) -> None:
    h, w = 30, 30
    masks = [_square(h, w, 0, 10, 0, 10), _square(h, w, 12, 20, 5, 25), _square(h, w, 25, 30, 0, 30)]
    aset = _make_set(tmp_path, masks, ids=[7, 300, 65535], image=np.arange(900, dtype=np.uint16).reshape(30, 30))
    assert write_annotations(aset, tmp_path / "out", "masks").lossless
    label = cv2.imread(str(tmp_path / "out" / "labels" / "img.png"), cv2.IMREAD_UNCHANGED)
    assert label.dtype == np.uint16 and set(np.unique(label).tolist()) == {0, 7, 300, 65535}
    back = read_annotations(tmp_path / "out")
    for i, m in _pixels(back).items():
        assert np.array_equal(m, masks[[7, 300, 65535].index(i)])


def test_tiff_labels_and_images_roundtrip(tmp_path: Path) -> None:
    h, w = 20, 24
    masks = [_square(h, w, 0, 5, 0, 5), _square(h, w, 10, 20, 10, 24)]
    image = (np.arange(h * w, dtype=np.uint16).reshape(h, w) * 100)  # a 16-bit TIFF image
    aset = _make_set(tmp_path, masks, ids=[70000, 2**31 + 5], image=image, file_name="scan.tif")
    assert write_annotations(aset, tmp_path / "out", "masks").lossless
    label = tifffile.imread(tmp_path / "out" / "labels" / "scan.tif")
    assert label.dtype == np.uint32 and label.max() == 2**31 + 5
    back = read_annotations(tmp_path / "out")
    assert (back.images[0].height, back.images[0].width) == (h, w)
    assert {i: m.sum() for i, m in _pixels(back).items()} == {70000: 25, 2**31 + 5: 140}
    # a hand-made int32 TIFF label is read too
    tifffile.imwrite(tmp_path / "out" / "labels" / "scan.tif", (label > 0).astype(np.int32) * 3)
    assert _pixels(read_label_images(tmp_path / "out")).keys() == {3}


def test_class_map_and_crowd_roundtrip(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cv2.imwrite(str(root / "images" / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(root / "images" / "b.jpg"), np.zeros((8, 8, 3), np.uint8))
    lab = np.zeros((8, 8), np.uint8)
    lab[:4, :4], lab[4:, 4:], lab[:2, 6:] = 1, 2, 9
    cv2.imwrite(str(root / "labels" / "a.png"), lab)
    (root / "classes.json").write_text(json.dumps({
        "names": ["cell", "debris"],
        "a": {"2": "debris", "9": {"class": "cell", "iscrowd": True}},
    }))
    aset = read_annotations(root)
    assert aset.format == "labelimages" and aset.class_names == ["cell", "debris"]
    a, b = aset.images
    assert a.instances.labels.tolist() == [1, 2, 1] and a.instances.iscrowd.tolist() == [False, False, True]
    assert a.instances.ids.tolist() == [1, 2, 9] and len(b.instances) == 0  # b has no label image
    assert write_annotations(aset, tmp_path / "out", "masks").lossless
    doc = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert doc["categories"] == [{"id": 1, "name": "cell"}, {"id": 2, "name": "debris"}]
    assert doc["instances"] == {"a": {"2": 2, "9": {"category_id": 1, "iscrowd": True}}}
    back = read_annotations(tmp_path / "out").images[0].instances
    assert back.labels.tolist() == [1, 2, 1] and back.iscrowd.tolist() == [False, False, True]


def test_unusable_ids_are_renumbered_losslessly(tmp_path: Path) -> None:
    h, w = 10, 10
    aset = _make_set(tmp_path, [_square(h, w, 0, 3, 0, 3), _square(h, w, 5, 9, 5, 9)], ids=[0, 0])
    aset.images[0].instances.boxes = np.zeros((2, 4), np.float32)
    report = write_annotations(aset, tmp_path / "out", "masks")
    assert report.lossless and any("renumbered" in n for n in report.notes)
    assert read_annotations(tmp_path / "out").images[0].instances.ids.tolist() == [0, 0]


def test_box_only_instances_are_reported(tmp_path: Path) -> None:
    aset = _make_set(tmp_path, [_square(6, 6, 0, 2, 0, 2)])
    aset.images[0].instances.remove("masks")
    report = write_annotations(aset, tmp_path / "out", "masks")
    assert report.changes == {"box without mask not written": 1}


def test_writer_is_deterministic(tmp_path: Path) -> None:
    h, w = 16, 16
    aset = _make_set(tmp_path, [_square(h, w, 0, 8, 0, 8), _square(h, w, 4, 12, 4, 12)], ids=[5, 3])
    for dst in ("one", "two"):
        write_annotations(aset, tmp_path / dst, "masks")
        write_label_images(aset, tmp_path / f"{dst}-dsb", layout="per-instance")
    for sub in ("", "-dsb"):
        one, two = tmp_path / f"one{sub}", tmp_path / f"two{sub}"
        files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
        for f in files:
            assert (one / f).read_bytes() == (two / f).read_bytes()


# -- detection and malformed input ------------------------------------------------------------------
def test_detection_does_not_take_yolo_or_single_samples(tmp_path: Path, shared_data: Path) -> None:
    yolo = tmp_path / "yolo"
    (yolo / "images").mkdir(parents=True)
    (yolo / "labels").mkdir()
    cv2.imwrite(str(yolo / "images" / "a.png"), np.zeros((4, 4), np.uint8))
    (yolo / "labels" / "a.txt").write_text("0 0.1 0.1 0.2 0.1 0.2 0.2\n")
    assert not detect_label_images(yolo) and not detect_dsb(yolo)
    assert not detect_label_images(shared_data / "coco128-seg")
    sample = next((shared_data / DSB / "stage1_train").iterdir())
    assert not detect_label_images(sample) and detect_dsb(sample)  # one sample: images/ + masks/ named apart


def _label_set(tmp_path: Path, label: np.ndarray, size: tuple[int, int] = (6, 6)) -> Path:
    root = tmp_path / "bad"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cv2.imwrite(str(root / "images" / "x.png"), np.zeros((*size, 3), np.uint8))
    cv2.imwrite(str(root / "labels" / "x.png"), label)
    return root


def test_colour_label_image_is_a_data_error(tmp_path: Path) -> None:
    root = _label_set(tmp_path, np.full((6, 6, 3), (0, 128, 255), np.uint8))
    with pytest.raises(DataError, match=r"labels/x\.png.*one channel"):
        read_label_images(root)


def test_label_size_mismatch_is_a_data_error(tmp_path: Path) -> None:
    root = _label_set(tmp_path, np.ones((5, 6), np.uint8))
    with pytest.raises(DataError, match=r"labels/x\.png.*6x5 but its image is 6x6"):
        read_label_images(root)


def test_dsb_mask_size_mismatch_is_a_data_error(tmp_path: Path) -> None:
    sample = tmp_path / "dsb" / "s1"
    (sample / "images").mkdir(parents=True)
    (sample / "masks").mkdir()
    cv2.imwrite(str(sample / "images" / "s1.png"), np.zeros((8, 8, 4), np.uint8))
    cv2.imwrite(str(sample / "masks" / "m.png"), np.full((8, 9), 255, np.uint8))
    with pytest.raises(DataError, match=r"masks/m\.png"):
        read_annotations(tmp_path / "dsb")
