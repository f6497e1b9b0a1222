"""Pascal VOC and LabelImg XML: the shared VOC example, round trips, overlap reports, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskkit.data.annotations import AnnotationSet, Category, ImageRecord, new_instances
from maskkit.data.formats import detect_format, read_annotations, write_annotations
from maskkit.data.formats.voc import VOC_CLASSES
from maskkit.data.palette import read_index_png, rgb_to_index, voc_palette
from maskkit.errors import DataError
from maskkit.fileio import atomic_write_png
from maskkit.structures import Masks
from maskkit.structures.masks import BitMask, PolygonMask, RLEMask, rle_to_string

H, W = 40, 50


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _aset(tmp_path: Path, bitmaps: list[np.ndarray], labels: list[int], **kw) -> AnnotationSet:
    atomic_write_png(tmp_path / "img" / "sub" / "x.png", np.zeros((H, W, 3), np.uint8))
    masks = Masks([RLEMask(BitMask(b).to_rle()) for b in bitmaps], H, W)
    inst = new_instances(H, W, labels, masks, **kw)
    cats = [Category(3, "cat"), Category(9, "dog")]
    return AnnotationSet(cats, [ImageRecord(1, "sub/x.png", H, W, inst)], image_root=tmp_path / "img")


def test_palette_is_the_voc_palette() -> None:
    pal = voc_palette()
    assert pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128]
    assert pal[255].tolist() == [224, 224, 192]
    idx = np.array([[0, 1, 255], [15, 20, 2]], np.uint8)
    np.testing.assert_array_equal(rgb_to_index(pal[idx]), idx)
    with pytest.raises(DataError, match="not in the VOC palette"):
        rgb_to_index(np.array([[[1, 2, 3]]], np.uint8))


# -- shared real data ------------------------------------------------------------------------------
def test_read_shared_voc_matches_coco(shared_data: Path) -> None:
    from pycocotools.coco import COCO

    root = shared_data / "labelme-voc2011-instances"
    assert detect_format(root / "data_dataset_voc") == "voc"
    aset = read_annotations(root / "data_dataset_voc")
    assert len(aset) == 3 and aset.num_instances() == 12
    assert aset.category_by_id()[15].name == "person" and len(aset.categories) == 20  # class_names.txt
    # labelme wrote the __ignore__ regions as void only in SegmentationClass: kept per image
    assert {r.file_name: "voc_class_void" in r.extra for r in aset.images} == {
        "JPEGImages/2011_000003.jpg": True, "JPEGImages/2011_000006.jpg": True, "JPEGImages/2011_000025.jpg": False}

    coco = COCO(str(root / "data_dataset_coco" / "annotations.json"))
    ids = {Path(im["file_name"]).name: im["id"] for im in coco.dataset["images"]}
    ious = []
    for rec in aset.images:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[ids[Path(rec.file_name).name]]))
        assert [a["category_id"] for a in anns] == rec.instances.labels.tolist()  # same order, same classes
        for i, ann in enumerate(anns):
            ref, got = coco.annToMask(ann).astype(bool), rec.instances.masks.bitmap(i)
            ious.append((ref & got).sum() / (ref | got).sum())
    # the PNGs were rasterised by labelme (PIL) from the same polygons: measured min 0.934, mean 0.973
    assert min(ious) > 0.92 and np.mean(ious) > 0.96


def test_shared_voc_round_trip_is_pixel_exact(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "labelme-voc2011-instances" / "data_dataset_voc"
    a = read_annotations(src)
    report = write_annotations(a, tmp_path / "voc", "voc")
    assert report.lossless and report.instances == 12, report.summary()
    for png in sorted((src / "SegmentationClass").glob("*.png")):  # class PNGs (with their void) are identical
        np.testing.assert_array_equal(read_index_png(tmp_path / "voc" / "SegmentationClass" / png.name),
                                      read_index_png(png))
        assert Image.open(tmp_path / "voc" / "SegmentationObject" / png.name).mode == "P"
    b = read_annotations(tmp_path / "voc")
    for r1, r2 in zip(a.images, b.images, strict=True):
        assert [m["counts"] for m in r1.instances.masks.to_rles()] == [
            m["counts"] for m in r2.instances.masks.to_rles()]
        np.testing.assert_array_equal(r1.instances.labels, r2.instances.labels)
    # the source skips instance index 6 in 2011_000006 (an __ignore__ region); indices are written contiguous
    objects = read_index_png(src / "SegmentationObject" / "2011_000006.png")
    assert np.unique(objects).tolist() == [0, 1, 2, 3, 4, 5, 7]
    objects = read_index_png(tmp_path / "voc" / "SegmentationObject" / "2011_000006.png")
    assert np.unique(objects).tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert np.concatenate([r.instances.ids for r in b.images]).tolist() == list(range(1, 13))  # unique ids
    assert (tmp_path / "voc" / "ImageSets" / "Segmentation" / "default.txt").read_text().split() == [
        "2011_000003", "2011_000006", "2011_000025"]


def test_labelme_to_voc_reports_overlaps(shared_data: Path, tmp_path: Path) -> None:
    a = read_annotations(shared_data / "labelme-voc2011-instances" / "data_annotated")
    report = write_annotations(a, tmp_path / "voc", "voc")
    b = read_annotations(tmp_path / "voc")
    dropped = sum(n for reason, n in report.changes.items() if reason.startswith("dropped"))
    assert b.num_instances() == a.num_instances() - dropped == report.instances
    assert b.class_names == a.class_names


# -- synthetic round trips -------------------------------------------------------------------------
def test_round_trip_without_overlaps(tmp_path: Path) -> None:
    void = _box(0, 2, 0, W)
    a = _aset(tmp_path, [_box(5, 15, 5, 20), _box(20, 30, 10, 40), _box(3, 8, 30, 45)], [9, 3, 9],
              extras=[{"voc": {"difficult": "1", "pose": "Left"}}, {}, {}])
    a.images[0].extra["voc_void"] = rle_to_string(BitMask(void).to_rle())
    report = write_annotations(a, tmp_path / "voc", "voc")
    assert report.lossless, report.summary()
    assert any("class indices" in n for n in report.notes)  # ids 3, 9 become 1, 2
    out = tmp_path / "voc"
    assert (out / "JPEGImages" / "x.png").is_file()
    assert (out / "class_names.txt").read_text().split() == ["_background_", "cat", "dog"]
    b = read_annotations(out)
    inst = b.images[0].instances
    assert b.class_names == ["cat", "dog"] and inst.labels.tolist() == [2, 1, 2]
    for i in range(3):
        np.testing.assert_array_equal(inst.masks.bitmap(i), a.images[0].instances.masks.bitmap(i))
    np.testing.assert_allclose(inst.boxes, a.images[0].instances.boxes)
    assert inst.extras[0]["voc"] == {"pose": "Left", "truncated": "0", "difficult": "1"}
    assert b.images[0].extra["voc_void"] == a.images[0].extra["voc_void"]
    obj = read_index_png(out / "SegmentationObject" / "x.png")
    assert (obj[:2] == 255).all() and set(np.unique(obj).tolist()) == {0, 1, 2, 3, 255}
    # deterministic output
    write_annotations(b, tmp_path / "voc2", "voc")
    for rel in ("SegmentationObject/x.png", "SegmentationClass/x.png", "Annotations/x.xml"):
        assert (out / rel).read_bytes() == (tmp_path / "voc2" / rel).read_bytes()


def test_overlaps_crowd_and_hidden_are_reported(tmp_path: Path) -> None:
    big, mid, small = _box(0, 30, 0, 30), _box(5, 20, 5, 20), _box(10, 15, 10, 15)
    a = _aset(tmp_path, [mid, small, big, _box(30, 35, 30, 35), _box(32, 40, 40, 50), small], [3, 3, 9, 9, 3, 9],
              iscrowd=[False, False, False, False, True, False])
    report = write_annotations(a, tmp_path / "voc", "voc")
    # painted largest first: big loses pixels to mid, mid to small; the first small is covered by its twin
    assert report.changes == {
        "overlap: pixels given to a smaller overlapping instance": 2,
        "dropped: completely covered by smaller instances (VOC has one label per pixel)": 1,
        "crowd region written as void (255): no crowd flag in VOC": 1,
    }
    b = read_annotations(tmp_path / "voc")
    inst = b.images[0].instances
    assert inst.labels.tolist() == [1, 2, 2, 2] and len(inst) == report.instances == 4
    np.testing.assert_array_equal(inst.masks.bitmap(0), mid & ~small)
    np.testing.assert_array_equal(inst.masks.bitmap(1), big & ~mid)
    np.testing.assert_array_equal(inst.masks.bitmap(3), small)
    assert "voc_void" in b.images[0].extra
    # a partial overlap is reported but kept
    a2 = _aset(tmp_path, [_box(5, 20, 5, 20), _box(10, 25, 10, 25)], [3, 9])
    report2 = write_annotations(a2, tmp_path / "voc2", "voc")
    assert report2.changes == {"overlap: pixels given to a smaller overlapping instance": 1}
    assert read_annotations(tmp_path / "voc2").num_instances() == 2


def test_more_than_254_instances_are_counted(tmp_path: Path) -> None:
    bitmaps = []
    for k in range(260):
        m = np.zeros((H, W), bool)
        m[k // W, k % W] = True
        bitmaps.append(m)
    report = write_annotations(_aset(tmp_path, bitmaps, [3] * 260), tmp_path / "voc", "voc")
    assert report.changes == {"dropped: more than 254 instances in one image": 6}
    assert read_annotations(tmp_path / "voc").num_instances() == 254


def test_box_only_images_round_trip(tmp_path: Path) -> None:
    atomic_write_png(tmp_path / "img" / "x.png", np.zeros((H, W, 3), np.uint8))
    boxes = np.array([[1, 2, 10, 12], [5.5, 6, 20, 30]], np.float32)
    inst = new_instances(H, W, [1, 2], None, boxes)
    a = AnnotationSet([Category(1, "cat"), Category(2, "dog")], [ImageRecord(1, "x.png", H, W, inst)],
                      image_root=tmp_path / "img")
    assert write_annotations(a, tmp_path / "voc", "voc").lossless
    assert not (tmp_path / "voc" / "SegmentationObject").exists()
    xml = (tmp_path / "voc" / "Annotations" / "x.xml").read_text()
    assert "<xmin>2</xmin>" in xml and "<xmin>6.5</xmin>" in xml  # 1-based VOC pixel indices
    b = read_annotations(tmp_path / "voc")
    assert not b.images[0].instances.has("masks")
    np.testing.assert_allclose(b.images[0].instances.boxes, boxes)


def test_box_only_instances_beside_masks(tmp_path: Path) -> None:
    a = _aset(tmp_path, [_box(5, 15, 5, 20)], [3])
    inst = a.images[0].instances
    two = inst[[0, 0]]
    two.masks = Masks([inst.masks[0], PolygonMask([], H, W)], H, W)
    two.boxes[1] = [30, 20, 40, 30]
    a.images[0].instances = two
    assert write_annotations(a, tmp_path / "voc", "voc").lossless
    inst_b = read_annotations(tmp_path / "voc").images[0].instances
    assert inst_b.masks.kinds() == ["rle", "polygon"] and not inst_b.masks[1].parts
    np.testing.assert_allclose(inst_b.boxes[1], [30, 20, 40, 30])


# -- LabelImg --------------------------------------------------------------------------------------
LABELIMG_XML = """<annotation>
  <folder>imgs</folder><filename>{name}</filename><path>C:\\Users\\me\\imgs\\{name}</path>
  <source><database>Unknown</database></source>
  <size><width>50</width><height>40</height><depth>3</depth></size><segmented>0</segmented>
  <object><name>{label}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>
    <bndbox><xmin>3</xmin><ymin>4</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object>
  <object><name>car</name><pose>Unspecified</pose><truncated>1</truncated><difficult>0</difficult>
    <bndbox><xmin>10</xmin><ymin>11</ymin><xmax>12.5</xmax><ymax>13</ymax></bndbox></object>
</annotation>
"""


def test_read_labelimg_folder(tmp_path: Path) -> None:
    for stem, label in (("a", "person"), ("b", "dog")):
        atomic_write_png(tmp_path / f"{stem}.jpg.png", np.zeros((H, W, 3), np.uint8))
        (tmp_path / f"{stem}.png").write_bytes((tmp_path / f"{stem}.jpg.png").read_bytes())
        (tmp_path / f"{stem}.xml").write_text(LABELIMG_XML.format(name=f"{stem}.png", label=label))
    assert detect_format(tmp_path) == "labelimg"
    a = read_annotations(tmp_path)
    assert a.class_names == ["car", "dog", "person"] and a.images[0].file_name == "a.png"
    inst = a.images[0].instances
    assert not inst.has("masks") and inst.labels.tolist() == [3, 1]
    np.testing.assert_allclose(inst.boxes, [[2, 3, 20, 30], [9, 10, 12.5, 13]])
    assert inst.extras[1]["voc"]["truncated"] == "1"
    # LabelImg -> VOC keeps the boxes and the XML fields
    assert write_annotations(a, tmp_path / "voc", "voc").lossless
    b = read_annotations(tmp_path / "voc")
    np.testing.assert_allclose(b.images[0].instances.boxes, inst.boxes)
    assert b.images[0].extra["voc"]["xml"]["source"] == {"database": "Unknown"}


def test_voc_classes_default(tmp_path: Path) -> None:
    root = tmp_path / "VOC"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    atomic_write_png(root / "JPEGImages" / "a.png", np.zeros((H, W, 3), np.uint8))
    (root / "Annotations" / "a.xml").write_text(LABELIMG_XML.format(name="a.png", label="person"))
    a = read_annotations(root)
    assert a.class_names == list(VOC_CLASSES) and a.images[0].instances.labels.tolist() == [15, 7]
    assert a.images[0].file_name == "JPEGImages/a.png"


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("xml", "problem", "annotation"),
    [
        ("<annotation><object><name>x</name>", "malformed XML", None),
        ("<doc/>", "root element", None),
        (LABELIMG_XML.format(name="a.png", label="p").replace("<bndbox><xmin>10</xmin>", "<box><xmin>10</xmin>")
         .replace("</ymax></bndbox></object>\n</annotation>", "</ymax></box></object>\n</annotation>"),
         "<bndbox>", "object 1"),
        (LABELIMG_XML.format(name="a.png", label="p").replace("<xmax>12.5</xmax>", "<xmax>abc</xmax>"),
         "<xmax> must be a number", "object 1"),
    ],
)
def test_bad_xml_names_file_and_object(tmp_path: Path, xml: str, problem: str, annotation: str | None) -> None:
    xf = tmp_path / "a.xml"
    xf.write_text(xml)
    with pytest.raises(DataError) as err:
        read_annotations(xf, format="labelimg")
    assert err.value.file == str(xf) and problem in err.value.problem and err.value.annotation == annotation


def test_mismatched_class_png_is_an_error(tmp_path: Path) -> None:
    write_annotations(_aset(tmp_path, [_box(5, 15, 5, 20)], [3]), tmp_path / "voc", "voc")
    from maskkit.data.palette import write_index_png

    write_index_png(tmp_path / "voc" / "SegmentationClass" / "x.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(DataError, match="SegmentationClass is 5x5"):
        read_annotations(tmp_path / "voc")


def test_read_split_file(tmp_path: Path) -> None:
    a = _aset(tmp_path, [_box(5, 15, 5, 20)], [3])
    write_annotations(a, tmp_path / "voc", "voc")
    split = tmp_path / "voc" / "ImageSets" / "Segmentation" / "default.txt"
    assert detect_format(split) == "voc"
    b = read_annotations(split)
    assert b.image_root == tmp_path / "voc" and len(b) == 1 and b.num_instances() == 1
