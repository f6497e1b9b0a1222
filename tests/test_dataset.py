"""InstanceDataset and the joint transforms: targets, label mapping, geometry consistency, image depths."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from maskkit.config import AugmentConfig
from maskkit.data.annotations import AnnotationSet, Category, ImageRecord, new_instances
from maskkit.data.dataset import IGNORE_INDEX, InstanceDataset, collate_fn, normalise_image
from maskkit.data.transforms import build_transforms
from maskkit.errors import ConfigError, DataError
from maskkit.structures import BitMask, Masks, PolygonMask, RLEMask

H, W = 40, 50


def _rect(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Pixel-edge XYXY boxes of masks, computed independently of the dataset code."""
    out = []
    for m in masks.bool():
        ys, xs = torch.nonzero(m, as_tuple=True)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def _write_image(path: Path, array: np.ndarray) -> None:
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    assert cv2.imwrite(str(path), array)


def _make_set(tmp_path: Path, image: np.ndarray | None = None, name: str = "a.png") -> AnnotationSet:
    """One RGB image with a polygon, a bitmap and a crowd RLE instance; category ids 3 and 7."""
    if image is None:
        image = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    h, w = image.shape[:2]
    _write_image(tmp_path / name, image)
    poly = PolygonMask([[[5, 5], [20, 5], [20, 15], [5, 15]]], h, w)
    bit = BitMask(_rect(20, 35, 25, 45, h, w))
    crowd = RLEMask(Masks.from_bitmaps([_rect(0, 10, 30, 50, h, w)], h, w).rle(0))
    masks = Masks([poly, bit, crowd], h, w)
    inst = new_instances(h, w, labels=[7, 3, 3], masks=masks, iscrowd=[False, False, True], ids=[11, 12, 13])
    rec = ImageRecord(id=42, file_name=name, height=h, width=w, instances=inst)
    cats = [Category(7, "seven"), Category(3, "three")]
    return AnnotationSet(categories=cats, images=[rec], image_root=tmp_path)


def test_target_keys_dtypes_and_label_mapping(tmp_path: Path) -> None:
    ds = InstanceDataset(_make_set(tmp_path), semantic=True)
    assert ds.category_ids == [3, 7] and ds.class_names == ["three", "seven"] and ds.num_classes == 2
    image, t = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W) and 0 <= image.min() <= image.max() <= 1
    assert set(t) == {"boxes", "labels", "masks", "iscrowd", "image_id", "area", "semantic"}
    assert t["boxes"].dtype == torch.float32 and t["boxes"].shape == (2, 4)
    assert t["labels"].dtype == torch.int64 and t["labels"].tolist() == [2, 1]  # crowd excluded
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (2, H, W)
    assert t["iscrowd"].dtype == torch.int64 and t["iscrowd"].tolist() == [0, 0]
    assert t["image_id"] == 42
    assert torch.equal(t["boxes"], _tight_boxes(t["masks"]))
    assert torch.equal(t["area"], t["masks"].flatten(1).sum(1).float())
    sem = t["semantic"]
    assert sem.dtype == torch.int64 and sem.shape == (H, W)
    assert set(sem.unique().tolist()) == {0, 1, 2, IGNORE_INDEX}
    assert (sem[0:10, 30:50] == IGNORE_INDEX).all() and (sem[20:35, 25:45] == 1).all()
    # crowd kept on request
    _, t2 = InstanceDataset(_make_set(tmp_path), include_crowd=True)[0]
    assert t2["iscrowd"].tolist() == [0, 0, 1] and t2["labels"].tolist() == [2, 1, 1]


def test_unknown_category_is_a_data_error(tmp_path: Path) -> None:
    aset = _make_set(tmp_path)
    aset.images[0].instances.labels[1] = 99
    with pytest.raises(DataError, match="category id 99") as err:
        InstanceDataset(aset)[0]
    assert err.value.annotation == 12


def test_box_only_instances(tmp_path: Path) -> None:
    aset = _make_set(tmp_path)
    rec = aset.images[0]
    rec.instances = new_instances(H, W, labels=[3, 7], masks=None, boxes=np.array([[1, 2, 10, 12], [40, 30, 70, 60]]))
    ds = InstanceDataset(aset)
    assert ds.with_masks is False
    _, t = ds[0]
    assert "masks" not in t
    assert t["boxes"].tolist() == [[1, 2, 10, 12], [40, 30, 50, 40]]  # clipped to the image
    assert t["area"].tolist() == [90.0, 100.0]
    with pytest.raises(DataError, match="box-only"):
        InstanceDataset(aset, semantic=True)[0]
    # flips move boxes without masks too
    _, tf = InstanceDataset(aset, build_transforms(True, AugmentConfig(min_size=[], hflip=1.0)))[0]
    assert tf["boxes"].tolist() == [[40, 2, 49, 12], [0, 30, 10, 40]]


@pytest.mark.parametrize("flip", ["hflip", "vflip"])
def test_flips_move_boxes_and_masks_together(tmp_path: Path, flip: str) -> None:
    aset = _make_set(tmp_path)
    plain = InstanceDataset(aset, semantic=True)
    cfg = AugmentConfig(min_size=[], **{"hflip": 0.0, flip: 1.0})
    flipped = InstanceDataset(aset, build_transforms(True, cfg), semantic=True, recompute_boxes=False)
    img0, t0 = plain[0]
    img1, t1 = flipped[0]
    dim = -1 if flip == "hflip" else -2
    assert torch.equal(img1, img0.flip(dim))
    assert torch.equal(t1["masks"], t0["masks"].flip(dim))
    assert torch.equal(t1["semantic"], t0["semantic"].flip(dim))
    # boxes were moved by torchvision's box kernel, independently of the masks: they must agree
    assert torch.equal(t1["boxes"], _tight_boxes(t1["masks"]))


def test_transpose_swaps_axes_of_image_masks_and_boxes(tmp_path: Path) -> None:
    aset = _make_set(tmp_path)
    plain = InstanceDataset(aset, semantic=True)
    cfg = AugmentConfig(min_size=[], hflip=0.0, transpose=1.0)
    swapped = InstanceDataset(aset, build_transforms(True, cfg), semantic=True, recompute_boxes=False)
    img0, t0 = plain[0]
    img1, t1 = swapped[0]
    assert torch.equal(img1, img0.transpose(-1, -2))
    assert torch.equal(t1["masks"], t0["masks"].transpose(-1, -2))
    assert torch.equal(t1["semantic"], t0["semantic"].transpose(-1, -2))
    assert torch.equal(t1["boxes"], _tight_boxes(t1["masks"]))
    assert torch.equal(t1["labels"], t0["labels"])


def test_random_crop_clips_and_drops_instances(tmp_path: Path) -> None:
    # Pixel values encode their coordinates, so the crop window can be read back from the output.
    h, w = 60, 80
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([xx, yy, np.zeros_like(xx)], axis=2).astype(np.uint8)
    _write_image(tmp_path / "grid.png", image)
    bitmaps = np.stack([_rect(0, 8, 0, 8, h, w), _rect(50, 60, 70, 80, h, w), _rect(10, 50, 10, 70, h, w)])
    inst = new_instances(h, w, labels=[1, 1, 2], masks=Masks.from_bitmaps(bitmaps, h, w))
    rec = ImageRecord(id=1, file_name="grid.png", height=h, width=w, instances=inst)
    aset = AnnotationSet([Category(1, "a"), Category(2, "b")], [rec], tmp_path)
    ds = InstanceDataset(aset, build_transforms(True, AugmentConfig(min_size=[], hflip=0.0, crop=30)))
    torch.manual_seed(0)
    dropped = 0
    for _ in range(12):
        img, t = ds[0]
        assert img.shape == (3, 30, 30)
        x0, y0 = round(float(img[0, 0, 0]) * 255), round(float(img[1, 0, 0]) * 255)
        window = bitmaps[:, y0 : y0 + 30, x0 : x0 + 30]
        present = window.reshape(3, -1).any(1)
        dropped += int((~present).sum())
        assert torch.equal(t["masks"], torch.from_numpy(window[present].astype(np.uint8)))
        assert t["labels"].tolist() == [lab for lab, p in zip([1, 1, 2], present, strict=True) if p]
        assert torch.equal(t["boxes"], _tight_boxes(t["masks"]))
        assert (t["area"] > 0).all()
    assert dropped > 0  # a 30px window cannot hold both corner objects


def test_multiscale_picks_sizes_from_the_list(tmp_path: Path) -> None:
    aset = _make_set(tmp_path)
    sizes = [20, 32, 48]
    ds = InstanceDataset(aset, build_transforms(True, AugmentConfig(min_size=sizes, max_size=1000)))
    torch.manual_seed(0)
    seen = set()
    for _ in range(15):
        img, t = ds[0]
        short = min(img.shape[-2:])
        seen.add(short)
        assert t["masks"].shape[-2:] == img.shape[-2:]
        assert torch.equal(t["boxes"], _tight_boxes(t["masks"]))
    assert seen <= set(sizes) and len(seen) > 1
    # evaluation uses the largest size; max_size caps the long edge
    img, _ = InstanceDataset(aset, build_transforms(False, AugmentConfig(min_size=sizes, max_size=50)))[0]
    assert tuple(img.shape[-2:]) == (40, 50)
    img, _ = InstanceDataset(aset, build_transforms(False, AugmentConfig(min_size=sizes)))[0]
    assert min(img.shape[-2:]) == 48


def test_16bit_single_channel_normalisation(tmp_path: Path) -> None:
    raw = np.linspace(0, 4095, H * W).reshape(H, W).astype(np.uint16)
    raw[0, 0] = 4095 * 4  # one hot pixel
    aset = _make_set(tmp_path, raw, "grey16.png")
    img, _ = InstanceDataset(aset)[0]
    assert img.shape == (1, H, W) and math.isclose(float(img.max()), 16380 / 65535, rel_tol=1e-5)
    img, _ = InstanceDataset(aset, normalise="minmax")[0]
    assert float(img.min()) == 0.0 and float(img.max()) == 1.0
    img, _ = InstanceDataset(aset, normalise="percentile")[0]
    assert float(img.max()) == 1.0 and float(img.mean()) > 0.45  # hot pixel does not darken the image
    img, _ = InstanceDataset(aset, normalise="fixed", fixed_max=4095)[0]
    assert math.isclose(float(img[0, -1, -1]), 1.0)
    img, t = InstanceDataset(aset, channels=3)[0]
    assert img.shape == (3, H, W) and torch.equal(img[0], img[2]) and t["masks"].shape == (2, H, W)
    with pytest.raises(ConfigError):
        InstanceDataset(aset, normalise="fixed")
    with pytest.raises(ConfigError):
        normalise_image(raw[:, :, None], "bogus")  # type: ignore[arg-type]


def test_appearance_makes_bright_field_look_like_fluorescence(tmp_path: Path) -> None:
    from maskkit.config import TrainConfig
    from maskkit.inference.common import image_tensor

    he = np.empty((H, W, 3), np.uint8)
    he[:] = (235, 200, 225)  # pink H&E background, dark purple nuclei
    he[5:15, 5:20] = (110, 60, 150)
    aset = _make_set(tmp_path, he, "he.png")
    keep, _ = InstanceDataset(aset)[0]
    assert torch.allclose(keep, torch.from_numpy(he).permute(2, 0, 1).float() / 255)
    grey, _ = InstanceDataset(aset, appearance="grey")[0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[0], grey[2])
    assert math.isclose(float(grey[0, 0, 0]), (0.299 * 235 + 0.587 * 200 + 0.114 * 225) / 255, rel_tol=1e-5)
    dark, _ = InstanceDataset(aset, appearance="dark_background")[0]
    assert torch.allclose(dark, 1 - grey) and float(dark[0, 10, 10]) > 0.5 > float(dark[0, 30, 40])
    # the predictor's input is the training input
    cfg = TrainConfig.model_validate({"augment": {"appearance": "dark_background"}})
    assert torch.equal(image_tensor(he, cfg), dark)
    # a dark-background (fluorescence) image is only converted to grey, not inverted
    fluo = np.full((H, W, 3), 20, np.uint8)
    fluo[5:15, 5:20] = 200
    x, _ = InstanceDataset(_make_set(tmp_path, fluo, "fluo.png"), appearance="dark_background")[0]
    assert float(x[0, 10, 10]) > 0.5 > float(x[0, 30, 40])
    with pytest.raises(ValidationError):
        AugmentConfig(appearance="sepia")  # type: ignore[arg-type]


def test_four_and_five_channel_images(tmp_path: Path) -> None:
    rgba = np.random.default_rng(1).integers(0, 255, (H, W, 4), dtype=np.uint8)
    aset = _make_set(tmp_path, rgba, "rgba.png")
    img, _ = InstanceDataset(aset)[0]
    assert img.shape == (4, H, W)
    assert torch.allclose(img[:3], torch.from_numpy(rgba[:, :, :3]).permute(2, 0, 1).float() / 255)
    img3, _ = InstanceDataset(aset, channels=3)[0]
    assert torch.equal(img3, img[:3])
    grey, _ = InstanceDataset(aset, channels=1)[0]
    assert grey.shape == (1, H, W)

    import tifffile

    five = np.random.default_rng(2).integers(0, 65535, (H, W, 5), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "five.tif", five)
    aset.images[0].file_name = "five.tif"
    cfg = AugmentConfig(min_size=[32], hflip=1.0, color_jitter=0.4)
    img5, t = InstanceDataset.from_config(aset, cfg, train=True)[0]
    assert img5.shape == (5, 32, 40) and 0 <= float(img5.min()) <= float(img5.max()) <= 1
    assert t["masks"].shape == (2, 32, 40)
    with pytest.raises(DataError, match="5-channel"):
        InstanceDataset(aset, channels=3)[0]


def test_color_jitter_only_changes_the_image(tmp_path: Path) -> None:
    aset = _make_set(tmp_path)
    _, t0 = InstanceDataset(aset)[0]
    torch.manual_seed(1)
    cfg = AugmentConfig(min_size=[], hflip=0.0, color_jitter=0.5, hue=0.1)
    img, t = InstanceDataset.from_config(aset, cfg, train=True)[0]
    img0, _ = InstanceDataset(aset)[0]
    assert not torch.equal(img, img0)
    assert torch.equal(t["masks"], t0["masks"]) and torch.equal(t["boxes"], t0["boxes"])


def test_size_mismatch_and_embedded_image(tmp_path: Path) -> None:
    aset = _make_set(tmp_path)
    rec = aset.images[0]
    rec.data = (tmp_path / "a.png").read_bytes()
    rec.file_name = "missing.png"
    img, _ = InstanceDataset(aset)[0]
    assert img.shape == (3, H, W)
    rec.data = None
    _write_image(tmp_path / "missing.png", np.zeros((H + 1, W, 3), np.uint8))
    with pytest.raises(DataError, match="annotations say"):
        InstanceDataset(aset)[0]


def test_augment_config_validation() -> None:
    cfg = AugmentConfig(min_size=[480, 512], crop=(256, 320), normalise="percentile", channels=3)
    assert cfg.image_options() == {"normalise": "percentile", "fixed_max": None, "channels": 3,
                                   "appearance": "keep"}
    with pytest.raises(ValidationError):
        AugmentConfig(hflip=2.0)
    with pytest.raises(ValidationError):
        AugmentConfig(min_size=[0])
    with pytest.raises(ValidationError):
        AugmentConfig(unknown=1)


def test_dataloader_collate_and_pickling(tmp_path: Path) -> None:
    aset = _make_set(tmp_path)
    aset.images.append(
        ImageRecord(id=43, file_name="a.png", height=H, width=W, instances=new_instances(H, W, [], Masks.empty(H, W)))
    )
    ds = InstanceDataset(aset, build_transforms(True, AugmentConfig(min_size=[32])), semantic=True)
    clone = pickle.loads(pickle.dumps(ds))  # what DataLoader workers receive
    assert len(clone) == 2 and clone.category_ids == ds.category_ids
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=0, collate_fn=collate_fn)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and len(images) == 2 and len(targets) == 2
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["masks"].shape == (0, *images[1].shape[-2:])
    assert targets[1]["labels"].dtype == torch.int64


def test_maskrcnn_accepts_a_batch(tmp_path: Path) -> None:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    aset = _make_set(tmp_path, np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8), "m.png")
    ds = InstanceDataset(aset, build_transforms(True, AugmentConfig(min_size=[64], max_size=64)))
    images, targets = collate_fn([ds[0], ds[0]])
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=ds.num_classes + 1, min_size=64, max_size=64
    )
    model.train()
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_mask"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_shared_coco_dataset(shared_data: Path) -> None:
    from maskkit.data import read_annotations

    aset = read_annotations(shared_data / "labelme-voc2011-instances" / "data_dataset_coco" / "annotations.json")
    ds = InstanceDataset(aset, build_transforms(True, AugmentConfig(min_size=[128], max_size=256)), semantic=True)
    for i in range(min(3, len(ds))):
        img, t = ds[i]
        assert img.shape[0] == 3 and min(img.shape[-2:]) == 128
        assert t["masks"].shape[-2:] == img.shape[-2:] == t["semantic"].shape
        assert torch.equal(t["boxes"], _tight_boxes(t["masks"]))
        assert ((t["labels"] >= 1) & (t["labels"] <= ds.num_classes)).all()


def test_mask_boxes_match_pycocotools_convention() -> None:
    from maskkit.data.dataset import mask_boxes_and_areas

    rng = np.random.default_rng(4)
    bitmaps = rng.random((4, 23, 31)) > 0.97
    bitmaps[2] = False
    masks = Masks.from_bitmaps(bitmaps, 23, 31)
    boxes, areas = mask_boxes_and_areas(bitmaps.astype(np.uint8))
    np.testing.assert_array_equal(boxes, masks.boxes())
    np.testing.assert_array_equal(areas, masks.areas())
    empty_boxes, empty_areas = mask_boxes_and_areas(np.zeros((0, 5, 6), np.uint8))
    assert empty_boxes.shape == (0, 4) and empty_areas.shape == (0,)
