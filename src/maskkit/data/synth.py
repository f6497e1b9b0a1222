"""A deterministic synthetic instance-segmentation dataset: textured shapes on textured backgrounds.

Three classes, each exercising a different part of the mask machinery:

* ``ellipse`` – a rotated ellipse, stored as a COCO polygon (the exact polygon that was drawn);
* ``polygon`` – a random convex or star-shaped polygon, stored as a COCO polygon;
* ``ring`` – an elliptical annulus (an object with a hole), stored as RLE since polygons cannot
  express holes.

Objects are painted in order, so later objects occlude earlier ones; every mask is the *visible*
part of its object (masks of one image never overlap). An occluded ellipse or polygon is stored as
RLE because its polygon no longer describes it; objects left with fewer than :data:`MIN_VISIBLE_AREA`
pixels are dropped. Sizes are log-uniform over a >10× range. Every image ``i`` comes from its own
generator seeded with ``(seed, i)``, so a dataset is byte-identical across runs and the first images
do not depend on how many are generated.
"""

from __future__ import annotations

import colorsys
import math
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from maskkit.data.annotations import AnnotationSet, Category, ImageRecord, new_instances
from maskkit.data.formats.base import ConversionReport, write_annotations
from maskkit.data.splits import write_dataset_yaml
from maskkit.errors import ConfigError
from maskkit.fileio import atomic_write_bytes
from maskkit.structures import Instances, Masks, PolygonMask, RLEMask
from maskkit.structures.masks import MaskItem

CLASS_NAMES: tuple[str, ...] = ("ellipse", "polygon", "ring")
"""Class names; category ids are ``1..len(CLASS_NAMES)`` in this order."""

MIN_VISIBLE_AREA = 12
"""Objects whose visible area falls below this many pixels after occlusion are dropped."""

RADIUS_RANGE = (0.035, 0.45)
"""Object radius as a fraction of the image size (sampled log-uniformly)."""

MAX_OBJECTS = 9
_CLASS_HUE = (0.02, 0.36, 0.62)  # red-orange ellipses, green polygons, blue rings (jittered)


@dataclass
class SynthImage:
    """One generated image (``H×W×3`` RGB uint8) and its annotation instances."""

    index: int
    image: np.ndarray
    instances: Instances

    @property
    def file_name(self) -> str:
        return f"synth_{self.index:06d}.png"


# -- textures ----------------------------------------------------------------------------------
def _smooth_noise(
    rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 1, lo: float = 0.0, hi: float = 1.0
) -> np.ndarray:
    """Smooth random field, about ``[lo, hi]``: a coarse random grid upsampled bicubically (``h×w×channels``)."""
    import cv2

    grid = rng.uniform(lo, hi, (cells, cells, channels)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, channels)


_NORMAL_QUANTILES = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], dtype=np.float32)


def _gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian pixel noise, sampled by inverse CDF from 256 quantiles (5x faster than exact normals)."""
    return _NORMAL_QUANTILES[rng.integers(0, 256, shape, dtype=np.uint8)] * np.float32(sigma)


def _direction_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Coordinate along a random direction, normalised to [0, 1] over the region."""
    angle = rng.uniform(0, math.pi)
    c, s = math.cos(angle), math.sin(angle)
    t = np.arange(w, dtype=np.float32)[None, :] * np.float32(c) + np.arange(h, dtype=np.float32)[:, None] * s
    lo = min(0.0, (w - 1) * c) + min(0.0, (h - 1) * s)
    span = max(abs((w - 1) * c) + abs((h - 1) * s), 1.0)
    return (t - np.float32(lo)) * np.float32(1.0 / span)


def _random_colour(
    rng: np.random.Generator,
    hue: float | None = None,
    sat: tuple[float, float] = (0.3, 0.95),
    val: tuple[float, float] = (0.3, 0.95),
) -> np.ndarray:
    h = rng.random() if hue is None else hue % 1.0
    rgb = colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val))
    return np.array(rgb, dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background: smooth colour noise, a gradient or stripes (float32 ``S×S×3``)."""
    c1 = _random_colour(rng, sat=(0.0, 0.6), val=(0.15, 0.9))
    c2 = _random_colour(rng, sat=(0.0, 0.6), val=(0.15, 0.9))
    kind = rng.integers(3)
    if kind == 0:
        t = _smooth_noise(rng, size, size, int(rng.integers(3, 9)))
    elif kind == 1:
        t = _direction_field(rng, size, size)[:, :, None]
    else:
        period = rng.uniform(0.03, 0.25) * size
        t = 0.5 + 0.5 * np.sin(2 * math.pi * _direction_field(rng, size, size) * size / period)[:, :, None]
    # Low-amplitude colour blotches on top of every kind.
    amp = rng.uniform(5, 30)
    img = _smooth_noise(rng, size, size, int(rng.integers(6, 20)), 3, -amp, amp)
    img += c1
    img += (c2 - c1) * t
    return img


def _object_texture(rng: np.random.Generator, h: int, w: int, label: int) -> np.ndarray:
    """A textured fill for one object's box (float32 ``h×w×3``); its hue loosely follows the class."""
    hue = rng.random() if rng.random() < 0.2 else _CLASS_HUE[label - 1] + rng.normal(0, 0.07)
    base = _random_colour(rng, hue=hue, sat=(0.35, 1.0), val=(0.35, 1.0))
    kind = rng.integers(4)
    texture: np.ndarray
    if kind == 0:  # mottled
        texture = base * _smooth_noise(rng, h, w, int(rng.integers(2, 6)), lo=0.7, hi=1.3)
    elif kind == 1:  # stripes of two shades
        period = rng.uniform(0.15, 0.5) * max(h, w) + 2
        s = np.sin(2 * math.pi * _direction_field(rng, h, w) * max(h, w) / period)[:, :, None]
        texture = base * (1 + 0.25 * s)
    elif kind == 2:  # shaded (lit from one side)
        texture = base * (0.65 + 0.6 * _direction_field(rng, h, w)[:, :, None])
    else:  # speckled
        texture = base * (1 + 0.3 * (rng.random((h, w, 1)).astype(np.float32) - 0.5))
    return texture


# -- shapes ------------------------------------------------------------------------------------
def _ellipse_points(a: float, b: float, theta: float, n: int) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    c, s = math.cos(theta), math.sin(theta)
    return np.stack([x * c - y * s, x * s + y * c], axis=1)


def _vertex_count(radius: float) -> int:
    return int(np.clip(round(2 * math.pi * radius / 3), 12, 96))


def _polygon_points(rng: np.random.Generator, r: float) -> np.ndarray:
    if rng.random() < 0.5:  # convex: sorted angles on a circle
        n = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * math.pi, n))
        # Avoid slivers: enforce a minimum angular gap by mixing with evenly spaced angles.
        ang = 0.5 * ang + 0.5 * (np.arange(n) * 2 * math.pi / n + ang[0])
        rad = np.full(n, r)
    else:  # star
        n = int(rng.integers(4, 9))
        ang = np.arange(2 * n) * math.pi / n + rng.uniform(0, 2 * math.pi)
        rad = np.where(np.arange(2 * n) % 2 == 0, r, r * rng.uniform(0.35, 0.65))
        rad = rad * rng.uniform(0.85, 1.0, 2 * n)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)


def _place(rng: np.random.Generator, pts: np.ndarray, size: int) -> np.ndarray:
    """Translate centred points to a random position fully inside the image."""
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    cx = rng.uniform(-lo[0], max(size - hi[0], -lo[0]))
    cy = rng.uniform(-lo[1], max(size - hi[1], -lo[1]))
    placed: np.ndarray = np.round(np.clip(pts + np.array([cx, cy]), 0, size), 2)
    return placed


def _raster(pts: np.ndarray, size: int) -> np.ndarray:
    """Rasterise a polygon exactly as pycocotools (and hence COCO evaluation) does."""
    rle = mask_utils.frPyObjects([pts.reshape(-1).tolist()], size, size)[0]
    bitmap: np.ndarray = np.ascontiguousarray(mask_utils.decode(rle)).view(bool)
    return bitmap


def _shape(rng: np.random.Generator, label: int, r: float, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Sample one object: its full (unoccluded) mask and its polygon (``None`` for a ring)."""
    theta = rng.uniform(0, math.pi)
    if label == 1:
        pts = _place(rng, _ellipse_points(r, r * rng.uniform(0.45, 1.0), theta, _vertex_count(r)), size)
        return _raster(pts, size), pts
    if label == 2:
        pts = _place(rng, _polygon_points(rng, r), size)
        return _raster(pts, size), pts
    b = r * rng.uniform(0.6, 1.0)
    outer = _ellipse_points(r, b, theta, _vertex_count(r))
    k = rng.uniform(0.35, 0.7)
    shift = rng.uniform(-1, 1, 2) * (1 - k) * b * 0.3
    inner = _ellipse_points(k * r, k * b, theta, _vertex_count(k * r)) + shift
    placed = _place(rng, np.concatenate([outer, inner]), size)
    mask = _raster(placed[: len(outer)], size) & ~_raster(placed[len(outer) :], size)
    return mask, None


# -- images ------------------------------------------------------------------------------------
def render(index: int, size: int, seed: int) -> SynthImage:
    """Generate image ``index`` of the dataset with ``seed`` (independent of all other images)."""
    import cv2

    rng = np.random.default_rng([seed, index])
    img = _background(rng, size)
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    labels = rng.integers(1, len(CLASS_NAMES) + 1, n)
    radii = size * np.exp(rng.uniform(math.log(RADIUS_RANGE[0]), math.log(RADIUS_RANGE[1]), n))
    radii = np.maximum(radii, 3.0)
    # Mostly large-before-small painting order, with some small objects painted first and occluded.
    order = np.argsort(-(np.log(radii) + rng.normal(0, 0.6, n)), kind="stable")

    owner = np.full((size, size), -1, dtype=np.int16)
    shapes: list[tuple[int, np.ndarray, np.ndarray | None]] = []
    for k, j in enumerate(order):
        label = int(labels[j])
        mask, pts = _shape(rng, label, float(radii[j]), size)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not len(rows):
            continue
        box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        local = mask[box]
        box_h, box_w = local.shape
        np.copyto(img[box], _object_texture(rng, box_h, box_w, label), where=local[:, :, None])
        np.copyto(owner[box], np.int16(k), where=local)
        shapes.append((k, mask, pts))

    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    img += _gaussian_noise(rng, img.shape, rng.uniform(2, 12))
    image = np.clip(img, 0, 255, out=img).astype(np.uint8)

    visible_area = np.bincount(owner.ravel().astype(np.int64) + 1, minlength=len(order) + 1)[1:]
    items: list[MaskItem] = []
    kept_labels: list[int] = []
    for k, mask, pts in shapes:
        area = int(visible_area[k])
        if area < MIN_VISIBLE_AREA:
            continue
        if pts is not None and area == int(np.count_nonzero(mask)):
            items.append(PolygonMask([pts], size, size))
        else:
            items.append(RLEMask(mask_utils.encode(np.asfortranarray(owner == k, dtype=np.uint8))))
        kept_labels.append(int(labels[order[k]]))
    masks = Masks(items, size, size)
    return SynthImage(index, image, new_instances(size, size, kept_labels, masks))


def iter_images(num_images: int, size: int, seed: int) -> Iterator[SynthImage]:
    """Generate images ``0 .. num_images-1`` lazily (constant memory for any ``num_images``)."""
    _check_args(num_images, size)
    for i in range(num_images):
        yield render(i, size, seed)


def categories() -> list[Category]:
    """The synthetic dataset's categories (ids ``1..``)."""
    return [Category(i + 1, name, supercategory="shape") for i, name in enumerate(CLASS_NAMES)]


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image (OpenCV's encoder is deterministic)."""
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV never fails on uint8 RGB
        raise OSError("cannot encode PNG")
    return buf.tobytes()


def _record(item: SynthImage, first_ann_id: int, data: bytes | None) -> ImageRecord:
    inst = item.instances
    inst.ids = np.arange(first_ann_id, first_ann_id + len(inst), dtype=np.int64)
    return ImageRecord(item.index + 1, item.file_name, inst.image_size[0], inst.image_size[1], inst, data=data)


def generate(num_images: int, size: int = 256, seed: int = 0) -> AnnotationSet:
    """The whole dataset in memory: records carry their encoded PNG in ``ImageRecord.data``."""
    records, ann_id = [], 1
    for item in iter_images(num_images, size, seed):
        records.append(_record(item, ann_id, encode_png(item.image)))
        ann_id += len(item.instances)
    return AnnotationSet(categories(), records, image_root=Path("."), info=_info(size, seed))


TEST_INDEX_OFFSET = 1_000_000
"""Test image ``k`` is image ``TEST_INDEX_OFFSET + k`` of the dataset: its own generator stream, disjoint from
the train and val images (indices below the offset) and independent of how many of those are generated."""


def split_counts(num_images: int, val_fraction: float | None,
                 test_fraction: float | None = None) -> tuple[int, int, int]:
    """``(train, val, test)`` image counts of ``num_images``: ``round(num_images * fraction)`` each for val and
    test, the rest train."""
    counts = []
    for flag, fraction in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if fraction is None:
            counts.append(0)
            continue
        if not 0 < fraction < 1:
            raise ConfigError(f"{flag} {fraction} must be between 0 and 1 (exclusive)")
        n = round(num_images * fraction)
        if n < 1:
            raise ConfigError(f"{flag} {fraction} of {num_images} images leaves an empty split; use more images")
        counts.append(n)
    n_train = num_images - sum(counts)
    if n_train < 1:
        raise ConfigError(f"the val and test fractions of {num_images} images leave no training image; use more "
                          "images")
    return n_train, counts[0], counts[1]


def _render_to_file(index: int, size: int, seed: int, images_dir: Path) -> SynthImage:
    """Render image ``index``, write its PNG into ``images_dir``; returns it without the pixels."""
    item = render(index, size, seed)
    atomic_write_bytes(images_dir / item.file_name, encode_png(item.image))
    item.image = item.image[:0]  # nothing to ship back from a worker process
    return item


def _write_split(dst: Path, indices: range, size: int, seed: int, pmap: Callable[..., Any]) -> ConversionReport:
    """Render images ``indices`` straight into ``dst/images`` and write ``dst/annotations.json``."""
    images_dir = dst / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    items = list(pmap(_render_to_file, indices, *([x] * len(indices) for x in (size, seed, images_dir))))
    records, ann_id = [], 1
    for item in items:  # in index order, whichever process rendered it
        records.append(_record(item, ann_id, None))
        ann_id += len(item.instances)
    # Remove images of an earlier, larger run into the same folder (only our own file names).
    keep = {r.file_name for r in records}
    for stale in images_dir.glob("synth_*.png"):
        if stale.name not in keep:
            stale.unlink()
    aset = AnnotationSet(categories(), records, image_root=images_dir, info=_info(size, seed))
    return write_annotations(aset, dst, "coco")


def write_synthetic(
    out: str | Path,
    images: int = 200,
    size: int = 256,
    seed: int = 0,
    val_fraction: float | None = None,
    workers: int | None = None,
    test_fraction: float | None = None,
) -> dict[str, ConversionReport]:
    """Write ``images`` images in the COCO layout to ``out``, or split (:func:`split_counts`) into ``out/train``,
    ``out/val``, ``out/test`` and ``out/dataset.yaml`` (see :func:`write_splits`).

    Images are rendered straight to PNG files (by ``workers`` processes, default: one per CPU;
    the output does not depend on it), so memory holds only the annotations.
    Returns the COCO writer's report per split (``"all"`` without a val or test split).
    """
    _check_args(images, size)
    n_train, n_val, n_test = split_counts(images, val_fraction, test_fraction)
    return write_splits(out, n_train, n_val, n_test, size, seed, workers)


def write_splits(out: str | Path, train: int, val: int = 0, test: int = 0, size: int = 256, seed: int = 0,
                 workers: int | None = None) -> dict[str, ConversionReport]:
    """Write ``train`` images (indices ``0..``), then ``val`` (the next indices) and ``test`` images (the disjoint
    stream from :data:`TEST_INDEX_OFFSET`): the COCO layout in ``out`` when there is no val or test split,
    else ``out/<split>`` folders and ``out/dataset.yaml``. Returns the writer's report per split."""
    _check_args(train, size)
    workers = max(1, workers if workers is not None else min(os.cpu_count() or 1, 8))
    out = Path(out)
    indices = {"train": range(train), "val": range(train, train + val),
               "test": range(TEST_INDEX_OFFSET, TEST_INDEX_OFFSET + test)}
    with ExitStack() as stack:
        pmap: Callable[..., Any] = map
        if workers > 1 and train + val + test >= 8 * workers:
            from concurrent.futures import ProcessPoolExecutor

            pmap = partial(stack.enter_context(ProcessPoolExecutor(workers)).map, chunksize=8)
        if not val and not test:
            return {"all": _write_split(out, indices["train"], size, seed, pmap)}
        reports = {name: _write_split(out / name, idx, size, seed, pmap) for name, idx in indices.items() if idx}

    write_dataset_yaml(out / "dataset.yaml", {name: name for name in reports}, list(CLASS_NAMES))
    return reports


def _info(size: int, seed: int) -> dict[str, dict[str, str | int]]:
    """The COCO ``info`` block (no timestamp, so files stay byte-identical)."""
    return {"info": {"description": f"maskkit synthetic shapes (size {size}, seed {seed})", "version": "1"}}


def _check_args(num_images: int, size: int) -> None:
    if num_images < 1:
        raise ConfigError(f"--images must be at least 1, got {num_images}")
    if size < 32:
        raise ConfigError(f"--size must be at least 32 pixels, got {size}")
