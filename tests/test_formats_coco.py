"""COCO instances JSON: lossless read/write, detection, errors (small data built in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskkit.data.annotations import AnnotationSet
from maskkit.data.formats import detect_format, read_annotations, write_annotations
from maskkit.data.formats.coco import BOX_ONLY, looks_like_coco
from maskkit.errors import DataError
from maskkit.structures.masks import rle_to_string

SIZES = {1: (40, 60), 2: (50, 50), 5: (30, 20)}  # image id -> (h, w); image 5 has no annotations


def donut(h: int, w: int, cx: int, cy: int, r_out: int, r_in: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.circle(m, (cx, cy), r_out, 1, -1)
    cv2.circle(m, (cx, cy), r_in, 0, -1)
    return m.astype(bool)


def coco_doc() -> dict:
    """A COCO file exercising every feature the reader/writer must keep."""
    ring = donut(50, 50, 25, 25, 15, 6)
    crowd = np.zeros((50, 50), np.uint8)
    crowd[2:10, 3:20] = 1
    crowd[30:45, 38:48] = 1
    crowd_rle = mask_utils.encode(np.asfortranarray(crowd))
    uncompressed = {"size": [50, 50], "counts": _uncompressed_counts(crowd)}
    return {
        "info": {"description": "maskkit test", "year": 2024},
        "licenses": [{"id": 3, "name": "CC-BY"}],
        "custom_top": {"keep": [1, 2]},
        "images": [
            {"id": 1, "file_name": "a.png", "height": 40, "width": 60, "license": 3, "coco_url": "http://x/a"},
            {"id": 2, "file_name": "b.png", "height": 50, "width": 50},
            {"id": 5, "file_name": "c.png", "height": 30, "width": 20},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "segmentation": [[2, 2, 20, 2, 20, 15, 2, 15],
                                                                          [30, 20, 50, 22, 40, 35]],
             "area": 388.0, "bbox": [2.0, 2.0, 48.0, 33.0], "iscrowd": 0,
             "attributes": {"occluded": True}, "track_id": 4},
            {"id": 11, "image_id": 2, "category_id": 12, "segmentation": rle_to_string(
                mask_utils.encode(np.asfortranarray(ring.astype(np.uint8)))),
             "area": float(ring.sum()), "bbox": [10.0, 10.0, 31.0, 31.0], "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 3, "segmentation": uncompressed,
             "area": float(mask_utils.area(crowd_rle)), "bbox": [3.0, 2.0, 45.0, 43.0], "iscrowd": 1},
        ],
        "categories": [
            {"id": 3, "name": "crowd", "supercategory": "people", "color": [255, 0, 0]},
            {"id": 7, "name": "box", "supercategory": "thing"},
            {"id": 12, "name": "ring", "supercategory": "thing"},
        ],
    }


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    flat = mask.astype(np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])) != 0)
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return counts if flat[0] == 0 else [0, *counts]


def make_coco(root: Path, doc: dict | None = None) -> Path:
    """The COCO layout: ``root/annotations.json`` + ``root/images/*.png``."""
    doc = doc or coco_doc()
    rng = np.random.default_rng(0)
    for img in doc["images"]:
        path = root / "images" / img["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 255, (img["height"], img["width"], 3), dtype=np.uint8))
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def assert_same_sets(a: AnnotationSet, b: AnnotationSet) -> None:
    """Same images, categories, info and instances (pixels, kinds, ids, labels, boxes, extras)."""
    assert [(c.id, c.name, c.supercategory, c.extra) for c in a.categories] == [
        (c.id, c.name, c.supercategory, c.extra) for c in sorted(b.categories, key=lambda c: c.id)
    ]
    assert a.info == b.info
    assert len(a) == len(b)
    for ra, rb in zip(a.images, b.images, strict=True):
        keys = ("id", "file_name", "height", "width", "extra")
        assert [getattr(ra, k) for k in keys] == [getattr(rb, k) for k in keys]
        ia, ib = ra.instances, rb.instances
        assert len(ia) == len(ib)
        for name in ("labels", "ids", "iscrowd"):
            np.testing.assert_array_equal(ia.get(name), ib.get(name))
        np.testing.assert_allclose(ia.boxes, ib.boxes)
        assert ia.extras == ib.extras
        if len(ia):
            assert ia.masks.kinds() == ib.masks.kinds()
            assert_same_pixels(ia.masks, ib.masks)


def assert_same_pixels(a, b) -> None:
    """Two ``Masks`` cover the same pixels, instance by instance (compared on RLE, not densely)."""
    np.testing.assert_array_equal(a.areas(), b.areas())
    iou = np.diag(mask_utils.iou(a.to_rles(), b.to_rles(), [0] * len(b)))
    assert np.all((iou == 1.0) | (a.areas() == 0))


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    return make_coco(tmp_path / "src")


def test_detect(coco_dir: Path, tmp_path: Path) -> None:
    assert detect_format(coco_dir) == "coco"
    assert detect_format(coco_dir / "annotations.json") == "coco"
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"shapes": [], "imagePath": "x.jpg"}))
    assert not looks_like_coco(other)


def test_read_keeps_everything(coco_dir: Path) -> None:
    aset = read_annotations(coco_dir)
    assert aset.format == "coco" and aset.image_root == coco_dir / "images"
    assert aset.info == {"info": {"description": "maskkit test", "year": 2024},
                         "licenses": [{"id": 3, "name": "CC-BY"}], "custom_top": {"keep": [1, 2]}}
    assert [c.id for c in aset.categories] == [3, 7, 12]
    assert aset.categories[0].extra == {"color": [255, 0, 0]}
    a, b, c = aset.images
    assert a.extra == {"license": 3, "coco_url": "http://x/a"} and len(c.instances) == 0
    assert a.instances.masks.kinds() == ["polygon"] and len(a.instances.masks[0].parts) == 2
    assert a.instances.extras == [{"area": 388.0, "attributes": {"occluded": True}, "track_id": 4}]
    np.testing.assert_allclose(a.instances.boxes, [[2, 2, 50, 35]])  # the file's bbox, as XYXY
    assert b.instances.masks.kinds() == ["rle", "rle"]
    assert b.instances.masks[0].compressed and not b.instances.masks[1].compressed
    assert b.instances.iscrowd.tolist() == [False, True]
    assert b.instances.labels.tolist() == [12, 3]
    np.testing.assert_array_equal(b.instances.masks.bitmap(0), donut(50, 50, 25, 25, 15, 6))


def test_coco_to_coco_is_lossless_and_deterministic(coco_dir: Path, tmp_path: Path) -> None:
    src = read_annotations(coco_dir)
    report = write_annotations(src, tmp_path / "out", "coco")
    assert report.lossless and report.images == 3 and report.instances == 3
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["a.png", "b.png", "c.png"]
    back = read_annotations(tmp_path / "out")
    assert_same_sets(src, back)
    # The written document equals the source (uncompressed RLE stays a list, extra keys kept).
    assert json.loads((tmp_path / "out" / "annotations.json").read_text()) == coco_doc()
    write_annotations(back, tmp_path / "again", "coco")
    write_annotations(src, tmp_path / "out", "coco")  # rewriting in place is a no-op
    first = (tmp_path / "out" / "annotations.json").read_bytes()
    assert first == (tmp_path / "again" / "annotations.json").read_bytes()


def test_bitmap_masks_written_as_compressed_rle(coco_dir: Path, tmp_path: Path) -> None:
    from maskkit.structures import Masks

    aset = read_annotations(coco_dir)
    rec = aset.images[1]
    rec.instances.masks = Masks.from_bitmaps(rec.instances.masks.to_bitmaps(), rec.height, rec.width)
    write_annotations(aset, tmp_path / "out", "coco")
    anns = json.loads((tmp_path / "out" / "annotations.json").read_text())["annotations"]
    assert all(isinstance(a["segmentation"]["counts"], str) for a in anns[1:])
    back = read_annotations(tmp_path / "out")
    np.testing.assert_array_equal(back.images[1].instances.masks.to_bitmaps(), rec.instances.masks.to_bitmaps())


def test_box_only_and_missing_fields(tmp_path: Path) -> None:
    doc = coco_doc()
    doc["annotations"][0].pop("bbox")  # recomputed from the mask
    doc["annotations"][0].pop("area")
    doc["annotations"].append({"id": 13, "image_id": 5, "category_id": 7, "bbox": [1, 1, 5, 4]})
    aset = read_annotations(make_coco(tmp_path / "src", doc))
    box = mask_utils.toBbox(aset.images[0].instances.masks.rle(0))
    np.testing.assert_allclose(aset.images[0].instances.boxes[0], [box[0], box[1], box[0] + box[2], box[1] + box[3]])
    report = write_annotations(aset, tmp_path / "out", "coco")
    assert report.changes == {BOX_ONLY: 1}
    anns = {a["id"]: a for a in json.loads((tmp_path / "out" / "annotations.json").read_text())["annotations"]}
    assert anns[13]["segmentation"] == [] and anns[13]["area"] == 20.0 and anns[13]["bbox"] == [1, 1, 5, 4]
    assert anns[10]["area"] == float(mask_utils.area(aset.images[0].instances.masks.rle(0)))


def test_detection_only_file_has_no_masks(tmp_path: Path) -> None:
    doc = coco_doc()
    doc["annotations"] = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 4]}]
    aset = read_annotations(make_coco(tmp_path / "src", doc))
    assert not aset.images[0].instances.has("masks")


def test_labelme_coco_file(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "labelme-voc2011-instances" / "data_dataset_coco" / "annotations.json"
    aset = read_annotations(path)
    assert aset.num_instances() == 12 and len(aset) == 3
    assert aset.image_path(aset.images[0]).is_file()
    assert aset.info["licenses"] == [{"url": None, "id": 0, "name": None}]
    report = write_annotations(aset, tmp_path / "out", "coco")
    assert report.lossless
    assert_same_sets(aset, read_annotations(tmp_path / "out"))


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.pop("annotations"), "'annotations'"),
        (lambda d: d["annotations"][1].pop("category_id"), "annotation 11"),
        (lambda d: d["annotations"][0]["segmentation"][0].append(5), "annotation 10"),
        (lambda d: d["annotations"][1]["segmentation"].pop("counts"), "annotation 11"),
        (lambda d: d["annotations"][2].update(image_id=99), "annotation 12"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2]), "annotation 10"),
        (lambda d: d["images"][0].pop("file_name"), "image 1"),
    ],
)
def test_bad_files_raise_data_error(tmp_path: Path, mutate, needle: str) -> None:
    doc = coco_doc()
    mutate(doc)
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError) as err:
        read_annotations(path, "coco")
    assert str(path) in str(err.value) and needle in str(err.value)


def test_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "annotations.json"
    path.write_text('{"images": [], "annotations": [')
    with pytest.raises(DataError, match="invalid JSON") as err:
        read_annotations(path, "coco")
    assert err.value.file == str(path)


def test_place_images_names_and_embedded_bytes(tmp_path: Path) -> None:
    from maskkit.data.annotations import ImageRecord
    from maskkit.data.copyimages import dest_names, place_images
    from maskkit.data.formats import ConversionReport
    from maskkit.structures import Instances

    _, png = cv2.imencode(".png", np.zeros((4, 4), np.uint8))
    (tmp_path / "src").mkdir()
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "a.png").write_bytes(png.tobytes())
    empty = Instances.empty((4, 4))
    records = [
        ImageRecord(1, "../up/a.png", 4, 4, empty),  # climbs out: base name
        ImageRecord(2, "sub/A.png", 4, 4, empty),
        ImageRecord(3, "a.png", 4, 4, empty),  # clashes with record 1 (case-insensitive too)
        ImageRecord(4, "embedded", 4, 4, empty, data=png.tobytes()),  # suffix sniffed
        ImageRecord(5, "missing.jpg", 4, 4, empty),
        ImageRecord(6, "sub/A.jpg", 4, 4, empty),  # same stem as record 2: matters for YOLO labels
    ]
    aset = AnnotationSet([], records, tmp_path / "src")
    assert dest_names(aset) == ["a.png", "sub/A.png", "a_3.png", "embedded.png", "missing.jpg", "sub/A.jpg"]
    assert dest_names(aset, unique_stems=True)[5] == "sub/A_6.jpg"
    report = ConversionReport("coco", tmp_path / "out")
    names = place_images(aset, tmp_path / "out", report)
    assert (tmp_path / "out" / names[0]).read_bytes() == png.tobytes()
    assert (tmp_path / "out" / "embedded.png").read_bytes() == png.tobytes()
    assert report.notes[0].startswith("4 image file(s) missing, not copied")
