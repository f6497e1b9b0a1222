"""Image paths stay inside the dataset root; every decode checks the header's pixel count first."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from maskkit.data.formats import read_annotations
from maskkit.data.images import ImageTooLargeError, decode_image_bytes, image_problem, read_image
from maskkit.data.splits import convert_dataset, load_dataset
from maskkit.data.validate import validate_dataset
from maskkit.data.windows import open_image_windows
from maskkit.errors import DataError

SECRET = b"TOP SECRET: not an image\n"


def _png(path: Path, h: int = 20, w: int = 30) -> Path:
    cv2.imwrite(str(path), np.full((h, w, 3), 127, np.uint8))
    return path


def _coco(folder: Path, file_name: str) -> Path:
    """A COCO folder with a clean image ``a.png`` and a second image named ``file_name``."""
    folder.mkdir(parents=True, exist_ok=True)
    _png(folder / "a.png")
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0,
           "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]}
    doc = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
                      {"id": 2, "file_name": file_name, "height": 20, "width": 30}],
           "annotations": [ann], "categories": [{"id": 1, "name": "x"}]}
    (folder / "annotations.json").write_text(json.dumps(doc))
    return folder


def _cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m maskkit ...`` as a user runs it (one-line errors come from ``main()``)."""
    return subprocess.run([sys.executable, "-m", "maskkit", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def _all_bytes(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in folder.rglob("*") if p.is_file()]


def _codes(splits: dict) -> dict[str, list]:
    out: dict[str, list] = {}
    for f in validate_dataset(splits).findings:
        out.setdefault(f.code, []).append(f)
    return out


# -- COCO: .., absolute path, symlink ----------------------------------------------------------------------------
@pytest.fixture(params=["dotdot", "absolute", "symlink"])
def coco_outside(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    (tmp_path / "secret.txt").write_bytes(SECRET)
    if request.param == "dotdot":
        return _coco(tmp_path / "ds" / "coco", "../../secret.txt")
    if request.param == "absolute":
        return _coco(tmp_path / "ds" / "coco", str(tmp_path / "secret.txt"))
    folder = _coco(tmp_path / "ds" / "coco", "link.txt")
    (folder / "link.txt").symlink_to(tmp_path / "secret.txt")
    return folder


def test_coco_outside_root_validate_convert_refuse_and_allow(coco_outside: Path, tmp_path: Path) -> None:
    # validate: the E501 code, naming the annotation file and the entry
    findings = _codes(dict(load_dataset(coco_outside, allow_outside_root=True).splits))["E501"]
    assert len(findings) == 1 and findings[0].image_id == 2 and findings[0].file.endswith("annotations.json")
    assert "outside the dataset root" in findings[0].message
    # the library refuses by default
    with pytest.raises(DataError, match=r"outside the dataset root.*--allow-outside-root"):
        read_annotations(coco_outside)
    # the CLI: a one-line error, exit 2, nothing written
    out = tmp_path / "out"
    res = _cli("convert", coco_outside, out, "--to", "coco")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "image 2" in lines[0]
    assert "--allow-outside-root" in lines[0]
    assert not out.exists()
    # accepted explicitly: the annotations are written, the non-image is still not copied
    res = _cli("convert", coco_outside, out, "--to", "coco", "--allow-outside-root")
    assert res.returncode == 0, res.stderr
    assert "not decodable as images, not copied" in res.stdout
    assert SECRET not in _all_bytes(out) and (out / "images" / "a.png").is_file()


def test_validate_cli_reports_e501(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_bytes(SECRET)
    folder = _coco(tmp_path / "ds", "../secret.txt")
    res = _cli("validate", folder, "--json", "--no-hash")
    assert res.returncode == 1, res.stderr
    found = [f for f in json.loads(res.stdout)["findings"] if f["code"] == "E501"]
    assert found and found[0]["image"] == "../secret.txt" and found[0]["file"].endswith("annotations.json")


def test_symlinked_dataset_root_is_fine(tmp_path: Path) -> None:
    real = _coco(tmp_path / "real", "a.png")
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    aset = read_annotations(tmp_path / "alias")
    assert len(aset.images) == 2 and "E501" not in _codes({"train": aset})


# -- LabelMe, VOC/LabelImg, YOLO, dataset YAML ---------------------------------------------------------------
def _labelme(folder: Path, image_path: str) -> Path:
    folder.mkdir(parents=True)
    doc = {"version": "5.4.1", "flags": {}, "imagePath": image_path, "imageData": None, "imageHeight": 20,
           "imageWidth": 30, "shapes": [{"label": "x", "points": [[1, 1], [6, 1], [6, 6]], "shape_type": "polygon",
                                         "group_id": None, "flags": {}}]}
    (folder / "a.json").write_text(json.dumps(doc))
    return folder


def _labelimg(folder: Path, filename: str, path: str | None = None) -> Path:
    folder.mkdir(parents=True)
    extra = f"<path>{path}</path>" if path else ""
    (folder / "a.xml").write_text(
        f"<annotation><filename>{filename}</filename>{extra}<size><width>30</width><height>20</height>"
        "<depth>3</depth></size><object><name>x</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>6</xmax>"
        "<ymax>6</ymax></bndbox></object></annotation>")
    return folder


@pytest.mark.parametrize("kind", ["labelme", "labelimg-filename", "labelimg-path"])
def test_other_formats_outside_root(kind: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"  # an image suffix, text content
    secret.write_bytes(SECRET)
    if kind == "labelme":
        src = _labelme(tmp_path / "ds" / "lm", "../../secret.png")
    elif kind == "labelimg-filename":
        src = _labelimg(tmp_path / "ds" / "xml", "../../secret.png")
    else:
        src = _labelimg(tmp_path / "ds" / "xml", "missing.png", path=str(secret))
    with pytest.raises(DataError, match="outside the dataset root"):
        convert_dataset(src, tmp_path / "out", to="coco")
    assert not (tmp_path / "out").exists()
    assert "E501" in _codes(dict(load_dataset(src, allow_outside_root=True).splits))
    report = convert_dataset(src, tmp_path / "out", to="coco", allow_outside_root=True)[0][1]
    assert any("not decodable as images" in n for n in report.notes)
    assert SECRET not in _all_bytes(tmp_path / "out")


def test_yolo_symlinked_image_outside_root(tmp_path: Path) -> None:
    outside = _png(tmp_path / "outside.png")
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    _png(root / "images" / "a.png")
    (root / "images" / "b.png").symlink_to(outside)
    for stem in "ab":
        (root / "labels" / f"{stem}.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.5\n")
    with pytest.raises(DataError, match="outside the dataset root"):
        load_dataset(root)
    assert [f.image for f in _codes(dict(load_dataset(root, allow_outside_root=True).splits))["E501"]] == ["b.png"]


def test_dataset_yaml_entry_outside_root(tmp_path: Path) -> None:
    _coco(tmp_path / "ds" / "train", "a.png")
    _coco(tmp_path / "elsewhere", "a.png")
    (tmp_path / "ds" / "dataset.yaml").write_text("train: train\nval: ../elsewhere\nnames: [x]\n")
    with pytest.raises(DataError, match=r"split 'val' entry '\.\./elsewhere'.*outside the dataset root"):
        load_dataset(tmp_path / "ds")
    res = _cli("convert", tmp_path / "ds", tmp_path / "out", "--to", "yolo")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    codes = _codes(dict(load_dataset(tmp_path / "ds", allow_outside_root=True).splits))
    assert [f.split for f in codes["E502"]] == ["val"] and "E501" in codes


def test_convert_skips_non_image_inside_root(tmp_path: Path) -> None:
    folder = _coco(tmp_path / "coco", "fake.png")
    (folder / "fake.png").write_bytes(SECRET)
    report = convert_dataset(folder, tmp_path / "out", to="coco")[0][1]
    assert any("1 image file(s) not decodable as images" in n for n in report.notes)
    assert not (tmp_path / "out" / "images" / "fake.png").exists() and (tmp_path / "out" / "images" / "a.png").is_file()


# -- decode bounds ------------------------------------------------------------------------------------------------
def _png_header_claiming(path: Path, w: int, h: int) -> Path:
    """A PNG whose IHDR claims ``w x h`` (valid CRCs) and holds a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_huge_png_header_refused_before_decoding(tmp_path: Path) -> None:
    bomb = _png_header_claiming(tmp_path / "bomb.png", 70000, 70000)
    expected = r"4,900,000,000 pixels, above the limit of 268,435,456.*MASKKIT_MAX_IMAGE_PIXELS"
    with pytest.raises(ImageTooLargeError, match=expected) as info:
        read_image(bomb)
    assert str(bomb) in str(info.value)
    with pytest.raises(ImageTooLargeError):
        decode_image_bytes(bomb.read_bytes(), "embedded")
    assert "limit" in (image_problem(bomb) or "")


def test_env_limit_applies_to_every_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png = _png(tmp_path / "a.png")
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, np.zeros((20, 30), np.uint16))
    assert read_image(png).shape == (20, 30, 3) and read_image(tif).shape == (20, 30, 1)
    with pytest.raises(ImageTooLargeError, match="30x20"):
        read_image(png, max_pixels=100)  # the parameter
    monkeypatch.setenv("MASKKIT_MAX_IMAGE_PIXELS", "100")
    for decode in (lambda: read_image(png), lambda: decode_image_bytes(png.read_bytes())):  # Pillow's header
        with pytest.raises(ImageTooLargeError, match="600 pixels, above the limit of 100"):
            decode()
    with pytest.raises(ImageTooLargeError, match=r"30x20 \(WxH\) = 600 pixels, above the limit of 100"):
        read_image(tif)  # tifffile's header
    from maskkit.data.formats.maskfiles import read_label_array
    from maskkit.data.palette import read_index_png

    for decode in (lambda: read_label_array(tif), lambda: read_index_png(png)):
        with pytest.raises(ImageTooLargeError):
            decode()


def test_video_frame_size_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from maskkit.inference.video import VideoReader, VideoWriter

    writer = VideoWriter(tmp_path / "v.mp4", fps=5)
    for k in range(3):
        writer.write(np.full((32, 48, 3), 40 * k, np.uint8))
    writer.close()
    with VideoReader(tmp_path / "v.mp4") as reader:
        assert len(list(reader)) == 3
    monkeypatch.setenv("MASKKIT_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageTooLargeError, match="48x32"):
        VideoReader(tmp_path / "v.mp4")


# -- tiled prediction ---------------------------------------------------------------------------------------------
def test_tiled_windows_beyond_whole_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (96, 128), np.uint8)
    tiled, striped, one_strip = tmp_path / "tiled.tif", tmp_path / "striped.tif", tmp_path / "one.tif"
    tifffile.imwrite(tiled, img, tile=(32, 32), compression="zlib")
    tifffile.imwrite(striped, img, rowsperstrip=8, compression="zlib")
    tifffile.imwrite(one_strip, img, rowsperstrip=96, compression="zlib")
    _png(tmp_path / "big.png", 96, 128)
    monkeypatch.setenv("MASKKIT_MAX_IMAGE_PIXELS", "2000")  # every file here is "gigapixel" now
    for path in (tiled, striped):
        with open_image_windows(path) as win:
            assert "decoded per window" in win.source
            np.testing.assert_array_equal(win.read(10, 50, 20, 90)[..., 0], img[10:50, 20:90])
    for path, why in ((one_strip, "one compressed strip"), (tmp_path / "big.png", "no partial decoding")):
        with pytest.raises(ImageTooLargeError, match=f"{why}.*vips tiffsave"):
            open_image_windows(path)
    with pytest.raises(ImageTooLargeError, match="128x96"):
        read_image(tiled)  # a whole read stays bounded
    monkeypatch.setenv("MASKKIT_MAX_TILED_PIXELS", "5000")
    with pytest.raises(ImageTooLargeError, match="MASKKIT_MAX_TILED_PIXELS"):
        open_image_windows(tiled)


def test_train_data_refuses_unless_config_allows(tmp_path: Path) -> None:
    from maskkit.engine.api import resolve_config
    from maskkit.engine.data import load_train_data

    outside = _png(tmp_path / "outside.png")
    folder = _coco(tmp_path / "ds", str(outside))
    cfg = resolve_config(None, {"data.path": str(folder), "data.val_fraction": 0.5})
    with pytest.raises(DataError, match="outside the dataset root"):
        load_train_data(cfg)
    cfg = resolve_config(None, {"data.path": str(folder), "data.val_fraction": 0.5, "data.allow_outside_root": True})
    data = load_train_data(cfg)  # what `maskkit train --allow-outside-root` sets
    assert len(data.train.images) + len(data.val.images) == 2
