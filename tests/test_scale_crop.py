"""The training resize+crop on the source window (maskkit.data.scale_crop) against resizing the whole image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from maskkit.config import AugmentConfig
from maskkit.data.annotations import AnnotationSet, Category, ImageRecord, new_instances
from maskkit.data.dataset import InstanceDataset
from maskkit.data.scale_crop import ScaleCropSampler, object_px
from maskkit.structures import Masks


def _disc_set(tmp_path: Path, h: int, w: int, n: int = 40) -> AnnotationSet:
    """A grey image whose pixels are 1 exactly on ``n`` random discs (the instances), 0 elsewhere."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:h, 0:w]
    bitmaps = []
    for _ in range(n):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 9)
        bitmaps.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
    stack = np.stack(bitmaps)
    image = (stack.any(0) * 255).astype(np.uint8)
    assert cv2.imwrite(str(tmp_path / "d.png"), image)
    inst = new_instances(h, w, labels=[1] * n, masks=Masks.from_bitmaps(stack, h, w))
    rec = ImageRecord(id=1, file_name="d.png", height=h, width=w, instances=inst)
    return AnnotationSet([Category(1, "disc")], [rec], tmp_path)


@pytest.mark.parametrize(("h", "w", "sizes"), [(120, 150, [200, 260]), (300, 240, [100, 140]), (90, 70, [64])])
def test_window_path_matches_resizing_the_whole_image(tmp_path: Path, h: int, w: int, sizes: list[int]) -> None:
    aset = _disc_set(tmp_path, h, w)
    cfg = AugmentConfig(min_size=sizes, max_size=1000, crop=64, hflip=0.0)
    ds = InstanceDataset.from_config(aset, cfg, train=True)
    assert ds.scale_crop is not None
    whole = InstanceDataset(aset, None)
    full_img, full_t = whole[0]
    for seed in range(6):
        torch.manual_seed(seed)
        img, t = ds[0]
        torch.manual_seed(seed)
        plan = ds.scale_crop.draw(h, w)
        # reference: the whole image and masks resized by torchvision, then cropped at the same corner
        ref_img = F.crop(F.resize(tv_tensors.Image(full_img), list(plan.resized), antialias=True), *plan.corner, 64, 64)
        ref_masks = F.crop(F.resize(tv_tensors.Mask(full_t["masks"]), list(plan.resized)), *plan.corner, 64, 64)
        assert img.shape == (1, 64, 64)
        assert float((img - ref_img).abs().mean()) < 0.03
        # image and masks stay aligned: the bright pixels are the union of the masks, as closely as when the
        # whole image is resized (torchvision's nearest masks and antialiased image differ at edges when shrinking)
        def agreement(image: torch.Tensor, masks: torch.Tensor) -> float:
            union = masks.bool().any(0) if len(masks) else torch.zeros(64, 64, dtype=torch.bool)
            return float(((image[0] > 0.5) == union).float().mean())

        assert agreement(img, t["masks"]) > min(agreement(ref_img, ref_masks) - 0.015, 0.97)
        # the same instances, nearly the same pixels (only the sub-pixel placement of the window differs)
        ref = ref_masks[ref_masks.flatten(1).sum(1) > 8].bool()
        big = t["masks"][t["masks"].flatten(1).sum(1) > 8].bool()
        assert abs(len(ref) - len(big)) <= 1
        ious = torch.stack([((ref & m).flatten(1).sum(1) / (ref | m).flatten(1).sum(1)).max() for m in big])
        assert float(ious.min()) > 0.6 and float(ious.median()) > 0.85  # (small discs cut by the crop edge)


def test_window_path_reads_only_the_window(tmp_path: Path) -> None:
    aset = _disc_set(tmp_path, 400, 400, n=60)
    ds = InstanceDataset.from_config(aset, AugmentConfig(min_size=[400], max_size=None, crop=50), train=True)
    torch.manual_seed(0)
    plan = ds.scale_crop.draw(400, 400)
    y0, x0, y1, x1 = plan.window
    assert (y1 - y0) * (x1 - x0) < 80 * 80  # a 50 px crop at scale 1 reads little more than itself
    target = ds.load_target(aset.images[0], plan.window)
    assert target["masks"].shape[1:] == (y1 - y0, x1 - x0)
    assert len(target["masks"]) < 60  # discs whose box misses the window are not decoded


def test_scale_one_window_is_an_exact_crop(tmp_path: Path) -> None:
    h, w = 60, 80
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([xx, yy, np.zeros_like(xx)], axis=2).astype(np.uint8)
    assert cv2.imwrite(str(tmp_path / "g.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    bitmaps = np.zeros((2, h, w), dtype=bool)
    bitmaps[0, 5:25, 5:30] = True
    bitmaps[1, 30:60, 40:80] = True
    inst = new_instances(h, w, labels=[1, 1], masks=Masks.from_bitmaps(bitmaps, h, w))
    aset = AnnotationSet([Category(1, "a")], [ImageRecord(1, "g.png", h, w, inst)], tmp_path)
    ds = InstanceDataset.from_config(aset, AugmentConfig(min_size=[], hflip=0.0, crop=30), train=True)
    torch.manual_seed(3)
    for _ in range(8):
        img, t = ds[0]
        left, top = round(float(img[0, 0, 0]) * 255), round(float(img[1, 0, 0]) * 255)
        window = bitmaps[:, top : top + 30, left : left + 30]
        present = window.reshape(2, -1).any(1)
        assert torch.equal(t["masks"], torch.from_numpy(window[present].astype(np.uint8)))


def test_crop_larger_than_the_image_pads() -> None:
    torch.manual_seed(0)
    plan = ScaleCropSampler([], None, (50, 70)).draw(30, 40)
    assert plan.window == (0, 0, 30, 40) and plan.corner == (0, 0) and plan.size == (30, 40)
    out, _ = ScaleCropSampler.apply(plan, tv_tensors.Image(torch.ones(1, 30, 40)), {})
    assert out.shape == (1, 50, 70) and float(out.sum()) == 30 * 40


def test_object_size_scales_each_image_to_its_objects(tmp_path: Path) -> None:
    """``augment.object_size``: the median instance lands inside the range, whatever the image's own scale."""
    aset = _disc_set(tmp_path, 120, 150)
    size = object_px(aset.images[0].instances)
    assert size == pytest.approx(2 * np.sqrt(np.median(aset.images[0].instances.masks.areas()) / np.pi))
    cfg = AugmentConfig(min_size=[100], max_size=1000, crop=64, hflip=0.0, object_size=(20, 40))
    ds = InstanceDataset.from_config(aset, cfg, train=True)
    torch.manual_seed(0)
    scales = []
    for _ in range(30):
        img, _ = ds[0]
        assert img.shape == (1, 64, 64)
        plan = ds.scale_crop.draw(120, 150, size)
        scales.append(plan.resized[0] / 120)
    lo, hi = 20 / size, 40 / size
    assert min(scales) >= lo - 0.02 and max(scales) <= hi + 0.02 and max(scales) - min(scales) > 0.3 * (hi - lo)
    capped = ScaleCropSampler([], 200, 64, object_size=(40, 40)).draw(120, 150, 5.0)  # x8 wanted, max_size wins
    assert capped.resized == (160, 200)
    assert ScaleCropSampler([], None, 64, object_size=(40, 40)).draw(120, 150, 0.5).resized == (960, 1200)  # x8 bound
    fallback = ScaleCropSampler([240], None, 64, object_size=(40, 40)).draw(120, 150, None)  # no instances
    assert fallback.resized == (240, 300)


def test_object_size_of_boxes_and_the_config_checks() -> None:
    from maskkit.structures import Instances

    boxes = Instances((50, 50), boxes=np.array([[0, 0, 4, 9], [0, 0, 10, 10], [5, 5, 45, 45]], dtype=np.float32))
    assert object_px(boxes) == pytest.approx(10.0)  # sqrt(4*9)=6, 10, 40
    assert object_px(Instances((50, 50))) is None
    with pytest.raises(ValueError, match="needs crop"):
        AugmentConfig(object_size=(10, 20))
    with pytest.raises(ValueError, match="0 < low <= high"):
        AugmentConfig(crop=64, object_size=(30, 20))
