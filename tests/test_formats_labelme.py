"""LabelMe JSON: reading the shared examples, lossless round trips, and clear errors."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskkit.data.annotations import AnnotationSet, Category, ImageRecord, new_instances
from maskkit.data.formats import detect_format, read_annotations, write_annotations
from maskkit.data.formats.labelme import circle_polygon
from maskkit.errors import DataError
from maskkit.fileio import atomic_write_png
from maskkit.structures import Masks
from maskkit.structures.masks import BitMask, PolygonMask, RLEMask

H, W = 48, 64


def _b64_png(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _shape(label: str, points, shape_type: str = "polygon", group_id=None, **kw) -> dict:
    return {"label": label, "points": points, "group_id": group_id, "shape_type": shape_type, "flags": {}, **kw}


def _write_labelme(folder: Path, stem: str, shapes: list[dict], **top) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_png(folder / f"{stem}.png", np.full((H, W, 3), 90, np.uint8))
    doc = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": f"{stem}.png", "imageData": None,
           "imageHeight": H, "imageWidth": W, **top}
    (folder / f"{stem}.json").write_text(json.dumps(doc))
    return folder / f"{stem}.json"


def _crop_mask() -> np.ndarray:
    crop = np.zeros((9, 12), bool)
    crop[2:7, 3:10] = True
    crop[4, 5] = False
    return crop


def _synthetic(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    _write_labelme(src, "a", [
        _shape("cat", [[2, 2], [20, 3], [12, 18]], description="tri", flags={"occluded": True}, extra_key=7),
        _shape("dog", [[30.5, 4], [50, 20]], "rectangle"),
        _shape("dog", [[40, 34], [40, 42]], "circle"),
        _shape("cat", [[3, 30], [10, 30], [10, 40]], group_id=1),
        _shape("cat", [[14, 30], [20, 30], [20, 40], [14, 41]], group_id=1),
        _shape("cat", [[22, 24], [33, 32]], "mask", mask=_b64_png(_crop_mask())),
        _shape("bird", [[5, 5]], "point"),
        _shape("bird", [[1, 1], [9, 9], [20, 4]], "linestrip"),
    ], flags={"reviewed": True}, lineColor=[0, 255, 0, 128])
    _write_labelme(src, "b", [
        _shape("dog", [[2, 2], [20, 3], [12, 18]], group_id=4),
        _shape("dog", [[40, 2], [49, 10]], "mask", group_id=4, mask=_b64_png(np.ones((9, 10), bool))),
        _shape("bird", [[30, 30], [40, 30], [35, 40]], flags={"iscrowd": True}),
    ])
    return src


def _pixels(aset: AnnotationSet) -> list[list[bytes]]:
    return [[m["counts"] for m in r.instances.masks.to_rles()] for r in aset.images]


# -- shared real data ------------------------------------------------------------------------------
def test_read_shared_labelme_folder(shared_data: Path) -> None:
    root = shared_data / "labelme-voc2011-instances"
    aset = read_annotations(root / "data_annotated")
    assert aset.format == "labelme" and len(aset) == 3
    names = aset.category_by_id()
    # labels.txt order (``_background_`` skipped) gives the VOC class indices; ``__ignore__`` comes last
    assert names[15].name == "person" and names[18].name == "sofa" and names[21].name == "__ignore__"
    assert names[21].extra["ignore_label"] is True and len(aset.categories) == 21
    per_image = {r.file_name: r.instances for r in aset.images}
    # 12 objects (3 + 6 + 3) + 2 __ignore__ regions kept as ordinary (non-crowd) instances
    assert [len(per_image[f"2011_0000{s}.jpg"]) for s in ("03", "06", "25")] == [4, 7, 3]
    labels = np.concatenate([r.instances.labels for r in aset.images])
    assert int((labels != 21).sum()) == 12 and int((labels == 21).sum()) == 2
    assert not any(r.instances.iscrowd.any() for r in aset.images)
    # group_id joins parts: the occluded person (2 polygons) and the sofa (4 polygons)
    parts = {int(lab): len(m.parts) for r in aset.images for lab, m in zip(r.instances.labels, r.instances.masks,
                                                                             strict=True)
             if len(m.parts) > 1}
    assert parts == {15: 2, 18: 4}
    assert all(aset.image_path(r).is_file() and r.data is None for r in aset.images)


def test_read_shared_embedded_image(shared_data: Path) -> None:
    path = shared_data / "labelme-voc2011-instances" / "with_image_data" / "apc2016_obj3.json"
    assert detect_format(path) == "labelme"
    aset = read_annotations(path)
    (rec,) = aset.images
    assert len(rec.instances) == 4 and len(aset.categories) == 4  # labels.txt above does not list these labels
    # imagePath names the JSON itself, so the embedded bytes are the image
    assert rec.data is not None and rec.file_name == "apc2016_obj3.jpg"
    from maskkit.data.images import decode_image_bytes

    assert decode_image_bytes(rec.data).shape[:2] == (rec.height, rec.width) == (907, 1210)


# -- round trips -----------------------------------------------------------------------------------
def test_round_trip_is_pixel_exact_and_keeps_shape_types(tmp_path: Path) -> None:
    src = _synthetic(tmp_path)
    a = read_annotations(src)
    assert a.format == "labelme"
    ra, rb = a.images
    assert len(ra.instances) == 5 and len(rb.instances) == 2
    assert ra.instances.masks.kinds() == ["polygon", "polygon", "polygon", "polygon", "rle"]
    assert rb.instances.masks.kinds() == ["rle", "polygon"]  # polygon + mask group -> RLE union
    assert rb.instances.iscrowd.tolist() == [False, True]
    np.testing.assert_allclose(ra.instances.boxes[1], [30.5, 4, 50, 20])  # rectangle: the drawn box
    assert len(ra.extra["labelme"]["other_shapes"]) == 2  # point and linestrip are not objects

    report = write_annotations(a, tmp_path / "out", "labelme")
    assert report.lossless, report.summary()
    assert (tmp_path / "out" / "images" / "a.png").is_file()
    doc = json.loads((tmp_path / "out" / "images" / "a.json").read_text())
    assert doc["imagePath"] == "a.png" and doc["imageData"] is None and doc["version"] == "5.5.0"
    assert [s["shape_type"] for s in doc["shapes"]] == [
        "polygon", "rectangle", "circle", "polygon", "polygon", "mask", "point", "linestrip"]
    assert doc["shapes"][0]["flags"] == {"occluded": True} and doc["shapes"][0]["extra_key"] == 7
    assert doc["shapes"][0]["description"] == "tri"
    assert doc["flags"] == {"reviewed": True} and doc["lineColor"] == [0, 255, 0, 128]
    assert doc["shapes"][3]["group_id"] == doc["shapes"][4]["group_id"] == 1

    b = read_annotations(tmp_path / "out")
    assert b.class_names == a.class_names
    assert _pixels(b) == _pixels(a)
    for r1, r2 in zip(a.images, b.images, strict=True):
        np.testing.assert_array_equal(r1.instances.labels, r2.instances.labels)
        np.testing.assert_array_equal(r1.instances.iscrowd, r2.instances.iscrowd)
        np.testing.assert_allclose(r1.instances.boxes, r2.instances.boxes)
    doc_b = json.loads((tmp_path / "out" / "images" / "b.json").read_text())
    assert [s["shape_type"] for s in doc_b["shapes"]] == ["polygon", "mask", "polygon"]  # mixed group kept
    assert doc_b["shapes"][2]["flags"] == {"iscrowd": True}

    # deterministic: writing again gives byte-identical files
    write_annotations(b, tmp_path / "out2", "labelme")
    for name in ("images/a.json", "images/b.json", "labels.txt"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "out2" / name).read_bytes()


def test_circle_is_a_deterministic_polygon() -> None:
    pts = np.array([[40.0, 34.0], [40.0, 42.0]])
    poly = circle_polygon(pts)
    assert len(poly) >= 16
    np.testing.assert_allclose(np.hypot(poly[:, 0] - 40, poly[:, 1] - 34), 8.0)
    np.testing.assert_array_equal(poly, circle_polygon(pts))


def test_write_from_other_representations(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    blob = rng.random((H, W)) > 0.7
    poly = PolygonMask([[[1, 1], [10, 1], [10, 10]], [[20, 20], [30, 20], [30, 30]]], H, W)
    rle = BitMask(np.pad(np.ones((5, 6), bool), ((30, H - 35), (40, W - 46)))).to_rle()
    masks = Masks([BitMask(blob), RLEMask(rle), poly, PolygonMask([], H, W), BitMask(np.zeros((H, W), bool))], H, W)
    boxes = masks.boxes()
    boxes[3] = [5, 6, 25, 30]
    inst = new_instances(H, W, [1, 2, 1, 2, 1], masks, boxes, iscrowd=[True, False, False, False, False])
    atomic_write_png(tmp_path / "img" / "x.png", np.zeros((H, W), np.uint8))
    aset = AnnotationSet([Category(1, "a"), Category(7, "b")], [ImageRecord(1, "x.png", H, W, inst)],
                         image_root=tmp_path / "img")
    aset.images[0].instances.labels[1] = 7
    aset.images[0].instances.labels[3] = 7
    report = write_annotations(aset, tmp_path / "out", "labelme")
    assert report.instances == 5 and report.lossless
    assert any("renumbered" in n or "1..K" in n for n in report.notes)
    back = read_annotations(tmp_path / "out")
    inst2 = back.images[0].instances
    assert len(inst2) == 5 and inst2.iscrowd.tolist() == [True, False, False, False, False]
    assert back.class_names == ["a", "b"] and inst2.labels.tolist() == [1, 2, 1, 2, 1]
    for i in (0, 1, 2, 4):
        np.testing.assert_array_equal(inst2.masks.bitmap(i), masks.bitmap(i))
    np.testing.assert_allclose(inst2.boxes[3], [5, 6, 25, 30])  # box-only -> rectangle
    doc = json.loads((tmp_path / "out" / "images" / "x.json").read_text())
    assert [s["shape_type"] for s in doc["shapes"]] == ["mask", "mask", "polygon", "polygon", "rectangle", "mask"]
    assert doc["shapes"][2]["group_id"] is not None and doc["shapes"][2]["group_id"] == doc["shapes"][3]["group_id"]


def test_group_ids_stay_unique_per_label(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _write_labelme(src, "a", [_shape("cat", [[2, 2], [20, 3], [12, 18]], group_id=3),
                              _shape("cat", [[30, 2], [40, 3], [35, 18]], group_id=3),
                              _shape("dog", [[30, 30], [40, 30], [35, 40]], group_id=3)])
    a = read_annotations(src)
    assert len(a.images[0].instances) == 2  # LabelMe groups by (label, group_id)
    # two separate objects that carry the same stored group id must not merge when written
    inst = a.images[0].instances
    two = inst[[0, 0, 1]]
    two.masks = Masks([PolygonMask([p], H, W) for p in inst.masks[0].parts] + [inst.masks[1]], H, W)
    a.images[0].instances = two
    write_annotations(a, tmp_path / "out", "labelme")
    assert len(read_annotations(tmp_path / "out").images[0].instances) == 3


# -- errors ----------------------------------------------------------------------------------------
def test_malformed_json_names_the_file(tmp_path: Path) -> None:
    _synthetic(tmp_path)
    bad = tmp_path / "src" / "c.json"
    bad.write_text('{"shapes": [')
    with pytest.raises(DataError) as err:
        read_annotations(tmp_path / "src", format="labelme")
    assert err.value.file == str(bad) and "malformed JSON" in err.value.problem


@pytest.mark.parametrize(
    ("shape", "problem"),
    [
        (_shape("cat", [[1, 1], [5, 5]], "mask", mask="not base64 png!!"), "bad base64 PNG"),
        (_shape("cat", [[1, 1], [5, 5]], "mask", mask=_b64_png(np.ones((3, 3), bool))), "points span"),
        (_shape("cat", [[1, 1, 3], [5, 5, 3]]), "pairs"),
        (_shape("cat", [[1, 1]], "rectangle"), "2 points"),
        ({"points": [[1, 1]]}, "label"),
    ],
)
def test_bad_shape_names_file_and_shape(tmp_path: Path, shape: dict, problem: str) -> None:
    jf = _write_labelme(tmp_path, "a", [_shape("ok", [[1, 1], [5, 1], [5, 5]]), shape])
    with pytest.raises(DataError) as err:
        read_annotations(jf)
    assert err.value.file == str(jf) and err.value.annotation == "shape 1" and problem in err.value.problem


def test_labels_without_labels_txt_are_sorted_with_special_ones_last(tmp_path: Path) -> None:
    jf = _write_labelme(tmp_path, "a", [_shape(n, [[1, 1], [9, 1], [9, 9]]) for n in ("zebra", "__ignore__", "ant")])
    aset = read_annotations(jf)
    assert aset.class_names == ["ant", "zebra", "__ignore__"]
    assert aset.images[0].instances.labels.tolist() == [2, 3, 1]


def test_boxes_apart_from_the_mask_are_noted(tmp_path: Path) -> None:
    aset = read_annotations(_synthetic(tmp_path))
    aset.images[0].instances.boxes[0] += 5
    report = write_annotations(aset, tmp_path / "out", "labelme")
    assert report.lossless and any("1 box(es) differ" in n for n in report.notes)
