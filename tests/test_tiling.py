"""Tiled prediction: tiles, windowed readers, RLE helpers and mask-overlap stitching against oracles."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from pycocotools import mask as mask_utils
from scipy import ndimage

from maskkit.data.windows import ArrayWindows, RawWindows, TiffSegmentWindows, open_image_windows
from maskkit.errors import ConfigError, DataError, MaskkitError
from maskkit.inference.stitching import Stitcher
from maskkit.inference.tiling import iter_tiles, predict_tiled, write_label_image
from maskkit.structures import Instances, Masks, masks_iou
from maskkit.structures.rle import counts_to_crop, crop_to_rle, uncompressed_counts

H, W, TILE, OVERLAP = 900, 1100, 256, 48


# -- a synthetic scene and oracle "models" ------------------------------------------------------------------
def _paint(lab: np.ndarray, mask_fn, box: tuple[int, int, int, int], next_id: int) -> int:
    """Paint ``mask_fn(yy, xx)`` inside ``box`` where the label image is free; keep it only if connected."""
    y0, x0, y1, x1 = (max(0, box[0]), max(0, box[1]), min(lab.shape[0], box[2]), min(lab.shape[1], box[3]))
    if y1 <= y0 or x1 <= x0:
        return next_id
    yy, xx = np.mgrid[y0:y1, x0:x1]
    sub = lab[y0:y1, x0:x1]
    m = mask_fn(yy, xx) & (sub == 0)
    if m.sum() < 40 or ndimage.label(m)[1] != 1:
        return next_id
    sub[m] = next_id
    return next_id + 1


def _ellipse(cy: float, cx: float, ry: float, rx: float, angle: float = 0.0):
    c, s = np.cos(angle), np.sin(angle)
    def inside(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
        return (u / rx) ** 2 + (v / ry) ** 2 <= 1

    return inside


def make_scene(seed: int = 0) -> np.ndarray:
    """Label image with long objects spanning 3+ tiles, a U shape, a big disc, and many objects on seams/corners."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((H, W), dtype=np.int32)
    k = 1
    # elongated objects crossing 3+ tiles: a rotated ellipse, a diagonal bar, a U whose arms leave tiles
    k = _paint(lab, _ellipse(450, 560, 14, 480, 0.05), (0, 0, H, W), k)
    k = _paint(lab, lambda yy, xx: np.abs((xx - 40) * 0.395 - (yy - 40)) < 10, (30, 40, 400, 900), k)

    def u_shape(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return (((np.abs(xx - 760) < 10) | (np.abs(xx - 880) < 10)) & (yy < 820)) | (np.abs(yy - 810) < 10)

    k = _paint(lab, u_shape, (520, 750, 821, 891), k)
    tiles = list(iter_tiles(H, W, TILE, OVERLAP))
    seams_y = sorted({t.core[2] for t in tiles if t.core[2] < H})
    seams_x = sorted({t.core[3] for t in tiles if t.core[3] < W})
    cy, cx = seams_y[1], seams_x[1]
    k = _paint(lab, _ellipse(cy, cx, 105, 105), (cy - 106, cx - 106, cy + 107, cx + 107), k)  # bigger than overlap
    for y in seams_y:  # corners
        for x in seams_x:
            ry, rx = rng.uniform(8, 30, 2)
            py, px = y + rng.uniform(-6, 6), x + rng.uniform(-6, 6)
            k = _paint(lab, _ellipse(py, px, ry, rx, rng.uniform(0, 3)), (int(py - 31), int(px - 31), int(py + 32),
                                                                           int(px + 32)), k)
    points = [(y + rng.uniform(-20, 20), rng.uniform(0, W)) for y in seams_y for _ in range(6)]
    points += [(rng.uniform(0, H), x + rng.uniform(-20, 20)) for x in seams_x for _ in range(6)]
    points += [(rng.uniform(0, H), rng.uniform(0, W)) for _ in range(60)]
    for py, px in points:
        ry, rx = rng.uniform(6, 26, 2)
        k = _paint(lab, _ellipse(py, px, ry, rx, rng.uniform(0, 3)), (int(py - 27), int(px - 27), int(py + 28),
                                                                       int(px + 28)), k)
    return lab


def scene_image(lab: np.ndarray) -> np.ndarray:
    """The "image" the oracles see: label id plus each pixel's own (y, x), so a tile knows where it is."""
    yy, xx = np.mgrid[0:H, 0:W]
    return np.dstack([lab, yy, xx]).astype(np.int32)


def _score(i: int) -> float:
    return 0.5 + (i % 47) / 100


class Oracle:
    """Returns the objects visible in a tile, one instance per connected piece (as a real model would see them).

    ``noise``: within ``band`` pixels of a tile's inner borders masks are dilated, eroded or dropped
    at random, and 1% of all object pixels are dropped. ``merge_at_border``: pairs of ids reported as
    one instance when the tile cuts the second one (a truncated view merging touching objects).
    """

    def __init__(self, noise: bool = False, band: int = 8, seed: int = 0, merge_at_border=()) -> None:
        self.noise, self.band, self.rng = noise, band, np.random.default_rng(seed)
        self.merge = dict(merge_at_border)

    def predict(self, arr: np.ndarray) -> Instances:
        lab = arr[..., 0]
        th, tw = lab.shape
        y0, x0 = int(arr[0, 0, 1]), int(arr[0, 0, 2])
        border = np.zeros((th, tw), bool)
        b = self.band
        if y0 > 0:
            border[:b] = True
        if x0 > 0:
            border[:, :b] = True
        if y0 + th < H:
            border[-b:] = True
        if x0 + tw < W:
            border[:, -b:] = True
        cut = {int(i) for i in np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))}
        present = set(np.unique(lab).tolist())
        merged = {a: v for a, v in self.merge.items() if a in present and v in cut}
        rles, labels, scores = [], [], []
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is None or i in merged.values():
                continue  # absent, or reported as part of its partner
            if i in merged:
                sl = ndimage.find_objects(np.isin(lab, [i, merged[i]]).astype(np.int8))[0]
            sl = tuple(slice(max(s.start - 3, 0), s.stop + 3) for s in sl)  # room for dilation
            sub = np.isin(lab[sl], [i, merged.get(i, i)])
            comp, n = ndimage.label(sub)
            for c in range(1, n + 1):
                m = comp == c
                if self.noise:
                    op, band = self.rng.integers(0, 4), border[sl]
                    if op == 0:
                        m = m | (ndimage.binary_dilation(m, iterations=2) & band)
                    elif op == 1:
                        m = m & ~(band & ~ndimage.binary_erosion(m, iterations=2))
                    elif op == 2:
                        m = m & ~band
                    m = m & (self.rng.random(m.shape) > 0.01)
                if m.sum() == 0:
                    continue
                full = np.zeros((th, tw), np.uint8, order="F")
                full[sl] = m
                rles.append(mask_utils.encode(full))
                labels.append(i % 3 + 1)
                scores.append(_score(i))
        masks = Masks.from_rles(rles, th, tw)
        return Instances.from_masks(masks, np.asarray(labels, np.int64), np.asarray(scores, np.float32))


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, Masks, np.ndarray]:
    lab = make_scene()
    ids = np.unique(lab[lab > 0])
    gt = Masks.from_rles([mask_utils.encode(np.asfortranarray((lab == i).astype(np.uint8))) for i in ids], H, W)
    return lab, gt, ids


def _match(pred: Instances, gt: Masks) -> np.ndarray:
    """IoU of each GT object with its best prediction; asserts one prediction per object, none left over."""
    iou = masks_iou(gt, pred.masks)
    best = iou.argmax(axis=1)
    assert len(set(best.tolist())) == len(gt), "an object was split or two objects were merged"
    assert (iou >= 0.5).sum(axis=1).max() == 1, "an object was found twice"
    assert (iou.max(axis=0) >= 0.5).all(), "a prediction matches no object"
    assert len(pred) == len(gt)
    return iou.max(axis=1)


# -- tests ----------------------------------------------------------------------------------------------------
def test_scene_is_hard_enough(scene) -> None:
    lab, _, ids = scene
    tiles = list(iter_tiles(H, W, TILE, OVERLAP))
    spans = [sum(1 for t in tiles if (lab[t.y0:t.y1, t.x0:t.x1] == i).any()) for i in ids]
    assert len(ids) > 100
    assert sum(s >= 3 for s in spans) >= 8  # long objects, the big disc, corner objects
    assert sum(s >= 2 for s in spans) > 40  # many objects cut by seams


def test_iter_tiles_cover_and_cores_partition() -> None:
    for h, w, tile, ov in [(H, W, TILE, OVERLAP), (1000, 1000, 256, 128), (300, 257, 256, 16), (100, 80, 256, 32)]:
        tiles = list(iter_tiles(h, w, tile, ov))
        owner = np.zeros((h, w), np.int32)
        cover = np.zeros((h, w), np.int32)
        for t in tiles:
            assert t.y1 - t.y0 == min(tile, h) and t.x1 - t.x0 == min(tile, w)
            cy0, cx0, cy1, cx1 = t.core
            assert t.y0 <= cy0 < cy1 <= t.y1 and t.x0 <= cx0 < cx1 <= t.x1
            owner[cy0:cy1, cx0:cx1] += 1
            cover[t.y0:t.y1, t.x0:t.x1] += 1
        assert (owner == 1).all() and (cover >= 1).all()
        for a in tiles:  # neighbours overlap by at least `overlap`
            right = [b for b in tiles if b.row == a.row and b.col == a.col + 1]
            if right:
                assert a.x1 - right[0].x0 >= ov
    with pytest.raises(ConfigError):
        list(iter_tiles(100, 100, 64, 64))


def test_rle_helpers_match_pycocotools() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        crop = rng.random((int(rng.integers(1, h - y0 + 1)), int(rng.integers(1, w - x0 + 1)))) < rng.choice([0.2, 1])
        full = np.zeros((h, w), np.uint8)
        full[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
        ref = mask_utils.encode(np.asfortranarray(full))
        assert crop_to_rle(crop, y0, x0, h, w)["counts"] == ref["counts"]
        counts = uncompressed_counts([ref])[0]
        assert np.array_equal(counts_to_crop(counts, h, (y0, x0, h, w)), full[y0:, x0:].astype(bool))
        b0, b1 = int(rng.integers(0, h)), int(rng.integers(0, w))  # any box, clipping the mask
        b2, b3 = int(rng.integers(b0 + 1, h + 1)), int(rng.integers(b1 + 1, w + 1))
        assert np.array_equal(counts_to_crop(counts, h, (b0, b1, b2, b3)), full[b0:b2, b1:b3].astype(bool))


@pytest.mark.parametrize(("tile", "overlap"), [(TILE, OVERLAP), (256, 160)])  # 160: non-neighbours overlap too
def test_exact_oracle_reproduces_untiled_result(scene, tile, overlap) -> None:
    lab, gt, _ = scene
    stats: dict = {}
    pred = predict_tiled(Oracle(), scene_image(lab), tile=tile, overlap=overlap, stats=stats)
    untiled = Oracle().predict(scene_image(lab))  # the oracle on the whole image
    assert len(untiled) == len(gt)
    iou = _match(pred, untiled.masks)
    assert iou.min() == 1.0  # pixel-exact
    assert stats["tiles"] == len(list(iter_tiles(H, W, tile, overlap))) and stats["matches"] > 50
    order = masks_iou(untiled.masks, pred.masks).argmax(axis=1)
    assert np.array_equal(pred.labels[order], untiled.labels)
    np.testing.assert_allclose(pred.scores[order], untiled.scores, rtol=1e-6)
    np.testing.assert_allclose(pred.boxes[order], untiled.boxes)


def test_noisy_oracle_every_object_once(scene) -> None:
    lab, gt, _ = scene
    for seed in range(3):
        pred = predict_tiled(Oracle(noise=True, seed=seed), scene_image(lab), tile=TILE, overlap=OVERLAP)
        iou = _match(pred, gt)
        assert iou.min() >= 0.9, iou.min()


def test_stitcher_frees_crops_as_it_goes(scene) -> None:
    lab, gt, _ = scene
    image, tiles = scene_image(lab), list(iter_tiles(H, W, TILE, OVERLAP))
    stitcher, live, oracle = Stitcher(H, W, tiles, margin=OVERLAP // 4), [], Oracle()
    for t in tiles:
        stitcher.add(t, oracle.predict(image[t.y0:t.y1, t.x0:t.x1]))
        live.append(len({f.tile for f in stitcher._frags if f.crop is not None}))
    cols = max(t.col for t in tiles) + 1
    assert max(live) <= cols + 2 and live[-1] == 0  # about one row of tiles holds crops, none at the end
    assert _match(stitcher.result(), gt).min() == 1.0


def test_truncated_view_merging_two_objects_does_not_merge_them() -> None:
    lab = np.zeros((H, W), np.int32)
    tiles = list(iter_tiles(H, W, TILE, OVERLAP))
    edge = tiles[0].x1  # tile 0's right border; both objects lie in tile 1's core, cut by tile 0
    lab[100:140, edge - 14:edge - 2] = 1
    lab[100:140, edge - 2:edge + 20] = 2
    pred = predict_tiled(Oracle(merge_at_border={1: 2}), scene_image(lab), tile=TILE, overlap=OVERLAP)
    gt = Masks.from_bitmaps([lab == 1, lab == 2], H, W)
    assert _match(pred, gt).min() == 1.0


def test_single_tile_and_errors(scene) -> None:
    lab, _, _ = scene
    small = scene_image(lab)[:200, :230]
    direct = Oracle().predict(small)
    pred = predict_tiled(Oracle(), small, tile=TILE, overlap=OVERLAP)
    assert pred is not None and len(pred) == len(direct)

    class NoMasks:
        def predict(self, arr: np.ndarray) -> Instances:
            return Instances((arr.shape[0], arr.shape[1]), boxes=np.zeros((1, 4), np.float32), labels=np.ones(1))

    with pytest.raises(MaskkitError, match="masks"):
        predict_tiled(NoMasks(), np.zeros((600, 600, 3), np.uint8), tile=256, overlap=32)
    with pytest.raises(DataError):
        open_image_windows("/nonexistent/image.tif")


@pytest.mark.parametrize(
    ("kwargs", "reader"),
    [
        ({}, RawWindows),
        ({"tile": (64, 96), "compression": "zlib"}, TiffSegmentWindows),
        ({"rowsperstrip": 37, "compression": "zlib"}, TiffSegmentWindows),
        ({"planarconfig": "separate", "compression": "zlib", "rowsperstrip": 50}, TiffSegmentWindows),
        ({"planarconfig": "separate"}, RawWindows),
    ],
)
def test_tiff_windows(tmp_path, kwargs, reader) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 60000, size=(300, 410, 3), dtype=np.uint16)
    path = tmp_path / "img.tif"
    data = np.moveaxis(arr, -1, 0) if kwargs.get("planarconfig") == "separate" else arr
    tifffile.imwrite(path, data, photometric="rgb", **kwargs)
    with open_image_windows(path) as win:
        assert isinstance(win, reader), win
        assert (win.height, win.width, win.channels, win.dtype) == (300, 410, 3, np.uint16)
        for y0, y1, x0, x1 in [(0, 300, 0, 410), (10, 130, 50, 300), (299, 300, 0, 1), (64, 128, 96, 192)]:
            assert np.array_equal(win.read(y0, y1, x0, x1), arr[y0:y1, x0:x1])


def test_other_windows(tmp_path) -> None:
    import cv2

    grey = np.random.default_rng(0).integers(0, 255, size=(120, 90), dtype=np.uint8)
    np.save(tmp_path / "a.npy", grey)
    tifffile.imwrite(tmp_path / "big.tif", grey, bigtiff=True, tile=(32, 32))
    cv2.imwrite(str(tmp_path / "a.png"), grey)
    for name, kind in [("a.npy", RawWindows), ("big.tif", TiffSegmentWindows), ("a.png", ArrayWindows)]:
        with open_image_windows(tmp_path / name) as win:
            assert isinstance(win, kind)
            assert np.array_equal(win.read(5, 70, 3, 88)[..., 0], grey[5:70, 3:88])


def test_tiff_path_end_to_end_and_label_image(tmp_path, scene) -> None:
    lab, gt, _ = scene
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, scene_image(lab), tile=(128, 128), photometric="rgb")
    pred = predict_tiled(Oracle(), path, tile=TILE, overlap=OVERLAP)
    assert _match(pred, gt).min() == 1.0
    out = write_label_image(pred, tmp_path / "out" / "labels.tif", tile=128)
    labels = tifffile.imread(out)
    assert labels.shape == (H, W) and labels.dtype == np.uint16
    boxes = pred.boxes.astype(int)
    for i, (x0, y0, x1, y1) in enumerate(boxes):  # the objects do not overlap: each is painted whole
        inside = pred.masks.bitmap(i)[y0:y1, x0:x1]
        assert np.array_equal(labels[y0:y1, x0:x1] == i + 1, inside)
    assert (labels > 0).sum() == pred.masks.areas().sum()
