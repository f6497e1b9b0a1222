"""YOLO-seg read/write, polygonisation round trips and the shared coco128-seg set."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskkit.data.annotations import new_instances
from maskkit.data.formats import detect_format, read_annotations, write_annotations
from maskkit.data.formats import yolo as yolo_fmt
from maskkit.data.formats.polygonize import (
    has_mask,
    mask_contours,
    mask_to_polygon,
    mask_to_polygons,
    merge_parts,
    polygon_to_rle,
)
from maskkit.errors import DataError
from maskkit.structures import Masks
from test_formats_coco import coco_doc, donut, make_coco


def _fill(polygon: np.ndarray, h: int, w: int) -> np.ndarray:
    return mask_utils.decode(polygon_to_rle(polygon, h, w)).astype(bool)


def _xor_fill(rings: list[np.ndarray], h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w), bool)
    for ring in rings:
        out ^= _fill(ring, h, w)
    return out


def _random_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    masks = [donut(40, 40, 20, 20, 15, 5), np.eye(12, dtype=bool), np.ones((1, 1), bool)]
    for _ in range(40):
        h, w = rng.integers(1, 30, size=2)
        masks.append(rng.random((h, w)) < rng.uniform(0.1, 0.9))
    for _ in range(10):
        blob = cv2.GaussianBlur(rng.random((50, 50)).astype(np.float32), (7, 7), 0) > 0.5
        masks.append(blob)
    return masks


def test_polygonize_is_pixel_exact() -> None:
    for m in _random_masks():
        h, w = m.shape
        np.testing.assert_array_equal(_xor_fill(mask_to_polygons(m), h, w), m)
        np.testing.assert_array_equal(_fill(mask_to_polygon(m), h, w), m)  # one bridged polygon
        for ring in mask_to_polygons(m):
            assert np.all(ring == np.round(ring))  # pixel corners
    outers, holes = mask_contours(donut(40, 40, 20, 20, 15, 5))
    assert len(outers) == 1 and len(holes) == 1
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
    assert merge_parts([]).shape == (0, 2)


def test_merge_parts_zero_width_bridges() -> None:
    a = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float)
    b = a + np.array([10, 0])
    c = a + np.array([0, 10])
    merged = merge_parts([a, b, c])
    assert len(merged) == 4 + 5 + 5 + 2  # each extra ring: its points, its entry point again, the return point
    np.testing.assert_array_equal(_fill(merged, 20, 20), _xor_fill([a, b, c], 20, 20))


def _make_yolo(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, name, size in (("train", "a.jpg", (40, 60)), ("train", "b.png", (50, 50)), ("val", "c.jpg", (30, 30))):
        path = root / "images" / split / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    labels = root / "labels" / "train"
    labels.mkdir(parents=True)
    (labels / "a.txt").write_text("1 0.1 0.1 0.5 0.1 0.5 0.5\n\n0 0.5 0.5 0.2 0.4\n")
    (labels / "b.txt").write_text("2 0.2 0.2 0.8 0.2 0.8 0.8 0.2 0.8\n")
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n  2: bird\n")
    return root


def test_read_yolo(tmp_path: Path) -> None:
    root = _make_yolo(tmp_path / "y")
    for path in (root, root / "data.yaml"):
        assert detect_format(path) == "yolo"
    aset = read_annotations(root)
    assert [c.name for c in aset.categories] == ["cat", "dog", "bird"]
    assert [r.file_name for r in aset.images] == ["train/a.jpg", "train/b.png", "val/c.jpg"]
    a, b, c = aset.images
    assert a.instances.labels.tolist() == [1, 0] and len(c.instances) == 0
    assert has_mask(a.instances, 0) and not has_mask(a.instances, 1)  # polygon line + box line
    np.testing.assert_allclose(a.instances.boxes[1], [24, 12, 36, 28])  # cx cy w h -> xyxy pixels
    assert b.instances.masks.areas()[0] == 30 * 30
    train = read_annotations(root / "images" / "train")  # an images folder with a labels twin
    assert len(train) == 2 and train.class_names == ["cat", "dog", "bird"]
    assert yolo_fmt.label_path(root / "images" / "train" / "a.jpg") == root / "labels" / "train" / "a.txt"


def test_class_names_fallbacks(tmp_path: Path) -> None:
    root = _make_yolo(tmp_path / "y")
    (root / "data.yaml").unlink()
    assert read_annotations(root).class_names == ["class_0", "class_1", "class_2"]
    (root / "classes.txt").write_text("cat\ndog\nbird\nfish\n")
    assert read_annotations(root).class_names == ["cat", "dog", "bird", "fish"]
    (root / "data.yaml").write_text("names: [a, b, c]\n")
    assert read_annotations(root).class_names == ["a", "b", "c"]


@pytest.mark.parametrize(("text", "needle"), [("0 0.1 0.2 0.3\n", "odd number"), ("x 0.1 0.2 0.3 0.4\n", "numbers"),
                                              ("1.5 0.1 0.2 0.3 0.4\n", "integer")])
def test_bad_label_lines(tmp_path: Path, text: str, needle: str) -> None:
    root = _make_yolo(tmp_path / "y")
    (root / "labels" / "train" / "b.txt").write_text("2 0.2 0.2 0.8 0.2 0.8 0.8\n" + text)
    with pytest.raises(DataError, match=needle) as err:
        read_annotations(root)
    assert "b.txt" in str(err.value) and "line 2" in str(err.value)


def test_coco_polygons_to_yolo_and_back(tmp_path: Path) -> None:
    src = read_annotations(make_coco(tmp_path / "src"))
    report = write_annotations(src, tmp_path / "yolo", "yolo")
    # Non-contiguous ids 3, 7, 12 -> classes 0, 1, 2 with names in that order.
    doc = (tmp_path / "yolo" / "data.yaml").read_text()
    assert "0: crowd" in doc and "2: ring" in doc and "path:" not in doc
    assert "category ids mapped to YOLO classes in id order: 3->0, 7->1, 12->2" in report.notes
    assert report.changes == {yolo_fmt.CROWD: 1}  # the crowd RLE; the holed ring is pixel-exact
    assert (tmp_path / "yolo" / "labels" / "c.txt").read_text() == ""
    back_yolo = read_annotations(tmp_path / "yolo")
    write_annotations(back_yolo, tmp_path / "coco", "coco")
    back = read_annotations(tmp_path / "coco")
    for ra, rb in zip(src.images, back.images, strict=True):
        ids = {c.id: k for k, c in enumerate(sorted(src.categories, key=lambda c: c.id))}
        assert sorted(ids[int(x)] for x in ra.instances.labels) == sorted(rb.instances.labels.tolist())
        if len(ra.instances):
            iou = mask_utils.iou(rb.instances.masks.to_rles(), ra.instances.masks.to_rles(), [0] * len(ra.instances))
            assert np.all(np.diag(iou) >= 0.99)


def test_holes_through_yolo_are_exact_or_reported(tmp_path: Path) -> None:
    ring = donut(50, 50, 25, 25, 15, 6)
    doc = coco_doc()
    doc["annotations"] = doc["annotations"][1:2]  # the holed ring as compressed RLE
    aset = read_annotations(make_coco(tmp_path / "src", doc))
    report = write_annotations(aset, tmp_path / "yolo", "yolo")
    # Not silently changed: the hole is bridged into one polygon whose even-odd fill is exact
    # (HOLES would be reported otherwise), and the report says it was bridged.
    back = read_annotations(tmp_path / "yolo").images[1].instances.masks.bitmap(0)
    np.testing.assert_array_equal(back, ring)
    assert report.lossless and "1 multi-part/holed mask(s) written as one bridged polygon (pixel-exact)" in report.notes
    # Polygons clipped by the image edge, or with overlapping parts (XOR-ed when bridged), are
    # re-traced from their pixels: still exact, and noted.
    parts = [np.array([[-5, -5], [20, -5], [20, 20], [-5, 20]], float), np.array([[30, 30], [45, 30], [45, 45]], float)]
    overlap = np.array([[10, 10], [40, 10], [40, 25], [10, 25]], float)
    masks = Masks([_poly(parts), _poly([parts[0], overlap])], 50, 50)
    aset.images[1].instances = new_instances(50, 50, [12, 12], masks)
    report = write_annotations(aset, tmp_path / "yolo2", "yolo")
    assert report.lossless, report.summary()
    assert any("re-traced" in n for n in report.notes)
    again = read_annotations(tmp_path / "yolo2").images[1].instances.masks
    np.testing.assert_array_equal(again.to_bitmaps(), aset.images[1].instances.masks.to_bitmaps())


def _poly(parts: list[np.ndarray]):
    from maskkit.structures.masks import PolygonMask

    return PolygonMask(parts, 50, 50)


def test_unwritable_instances_are_counted(tmp_path: Path) -> None:
    doc = coco_doc()
    doc["annotations"] += [
        {"id": 20, "image_id": 5, "category_id": 7, "bbox": [2, 2, 6, 8]},  # box-only -> box line
        {"id": 21, "image_id": 5, "category_id": 7, "segmentation": [[1, 1, 2, 2]], "bbox": [1, 1, 1, 1]},  # empty
        {"id": 22, "image_id": 5, "category_id": 99, "segmentation": [[1, 1, 9, 1, 9, 9]], "bbox": [1, 1, 8, 8]},
    ]
    aset = read_annotations(make_coco(tmp_path / "src", doc))
    report = write_annotations(aset, tmp_path / "yolo", "yolo")
    assert report.changes == {yolo_fmt.CROWD: 1, yolo_fmt.BOX_LINE: 1, yolo_fmt.EMPTY: 1, yolo_fmt.UNKNOWN: 1}
    assert report.instances == aset.num_instances() - 2
    assert (tmp_path / "yolo" / "labels" / "c.txt").read_text() == "1 0.250000 0.200000 0.300000 0.266667\n"
    assert any("extra annotation fields" in n for n in report.notes)


def test_yolo_writer_is_deterministic(tmp_path: Path) -> None:
    aset = read_annotations(_make_yolo(tmp_path / "y"))
    write_annotations(aset, tmp_path / "one", "yolo")
    write_annotations(read_annotations(tmp_path / "one"), tmp_path / "two", "yolo")
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel
    assert (tmp_path / "one" / "labels" / "train" / "b.txt").read_text() == (
        tmp_path / "y" / "labels" / "train" / "b.txt"
    ).read_text().replace("0.2 ", "0.200000 ").replace("0.8", "0.800000").replace("0.2\n", "0.200000\n")


def test_coco128_seg(shared_data: Path) -> None:
    root = shared_data / "coco128-seg"
    aset = read_annotations(root)
    assert aset.format == "yolo" and len(aset) == 128
    assert sum(len(r.instances) == 0 for r in aset.images) == 2  # 000000000250, 000000000508
    assert len(aset.categories) == 80 and aset.categories[0].name == "class_0"
    # SOURCE.md counts 941 label lines; 12 of them sit in two label files whose images are absent
    # (000000000656/659.txt), which Ultralytics ignores too.
    orphans = yolo_fmt.find_orphan_labels(aset)
    assert [p.name for p in orphans] == ["000000000656.txt", "000000000659.txt"]
    orphan_lines = sum(len(p.read_text().splitlines()) for p in orphans)
    assert aset.num_instances() == 929 and aset.num_instances() + orphan_lines == 941


def test_pixel_changes_are_reported_with_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the written polygon cannot reproduce the pixels, each instance is reported with its reason."""
    doc = coco_doc()
    doc["annotations"] = doc["annotations"][:2]  # two-part polygon (id 10) + holed ring RLE (id 11)
    aset = read_annotations(make_coco(tmp_path / "src", doc))
    inside = np.array([[10, 5], [18, 5], [18, 12], [10, 12]], float)  # overlaps part 0 only
    aset.images[0].instances.masks[0].parts.append(inside)
    monkeypatch.setattr(yolo_fmt, "merge_parts", lambda rings: rings[0])  # a writer keeping one ring only
    report = write_annotations(aset, tmp_path / "yolo", "yolo")
    assert report.changes == {yolo_fmt.MULTI: 1, yolo_fmt.HOLES: 1}
    assert any(n.startswith("changed instances: IoU with the source") for n in report.notes)
