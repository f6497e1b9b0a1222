"""``InstanceDataset``: a torch ``Dataset`` over any :class:`AnnotationSet`, for torchvision detection models.

Each item is ``(image, target)``: ``image`` is a float32 ``C×H×W`` tensor in ``[0, 1]`` (any bit
depth and channel count, see :data:`~maskkit.config.NormaliseMode`) and ``target`` holds

* ``boxes`` float32 ``N×4`` XYXY (pixel edges: a one-pixel mask at ``(x, y)`` has box ``x, y, x+1, y+1``)
* ``labels`` int64 ``N``, contiguous ``1..K`` (0 is background); ``dataset.category_ids[label - 1]`` is
  the set's own category id and ``dataset.class_names[label - 1]`` its name
* ``masks`` uint8 ``N×H×W`` (absent for box-only sets), ``iscrowd`` int64 ``N``, ``area`` float32 ``N``
  (mask pixels, or box area without masks), ``image_id`` int (the record's id)
* ``semantic`` int64 ``H×W`` when ``semantic=True``: class index per pixel, 0 background, 255 ignore
  (crowd regions; instances painted later win where they overlap)

Crowd instances are left out of the training targets by default (as torchvision's detection
references do) but still mark their pixels as ignore in ``semantic``. After the transforms,
instances whose mask became empty (or box degenerate) are dropped and boxes are recomputed as the
tight boxes of the masks. Each image's masks are decoded from RLE once, in one call.

The dataset keeps only the annotation set and options (no open files), so it pickles into
DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import clip_boxes_to_image

from maskkit.config import Appearance, AugmentConfig, NormaliseMode
from maskkit.data.annotations import AnnotationSet, ImageRecord
from maskkit.data.images import decode_image_bytes, read_image
from maskkit.data.scale_crop import ScaleCropSampler, object_px
from maskkit.data.transforms import build_transforms, from_tv_target, to_tv_target
from maskkit.errors import ConfigError, DataError
from maskkit.structures.labels import IGNORE_INDEX  # crowd regions in the ``semantic`` map

Transform = Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]


def normalise_image(image: np.ndarray, mode: NormaliseMode = "dtype", fixed_max: float | None = None) -> np.ndarray:
    """Scale an image array of any dtype and layout to float32 in ``[0, 1]`` (see ``NormaliseMode``)."""
    x = image.astype(np.float32)
    if mode == "dtype":
        if not np.issubdtype(image.dtype, np.integer) and image.dtype != bool:
            return x  # floats are taken as already scaled
        x *= 1.0 / (np.iinfo(image.dtype).max if image.dtype != bool else 1)
        if not np.issubdtype(image.dtype, np.signedinteger):
            return x  # already in [0, 1]
    elif mode == "uint8":
        x *= 1.0 / 255.0
    elif mode == "fixed":
        if not fixed_max or fixed_max <= 0:
            raise ConfigError("normalise='fixed' needs a positive fixed_max")
        x *= 1.0 / float(fixed_max)
    elif mode in ("minmax", "percentile"):
        if x.size:
            lo, hi = (x.min(), x.max()) if mode == "minmax" else np.percentile(x, [0.5, 99.5])
            x -= lo
            x *= 1.0 / max(float(hi - lo), 1e-6)
    else:
        raise ConfigError(f"unknown normalise mode {mode!r}; use dtype, uint8, minmax, percentile or fixed")
    np.clip(x, 0.0, 1.0, out=x)
    return x


def apply_appearance(x: np.ndarray, appearance: Appearance = "keep") -> np.ndarray:
    """A normalised ``C×H×W`` float image in ``[0, 1]`` as ``appearance`` asks (see ``Appearance``)."""
    if appearance == "keep" or x.size == 0:
        return x
    if appearance not in ("grey", "dark_background"):
        raise ConfigError(f"unknown appearance {appearance!r}; use keep, grey or dark_background")
    grey = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2] if x.shape[0] >= 3 else x[0].copy()
    if appearance == "dark_background":
        step = max(1, int(np.sqrt(grey.size / 65536)))  # the median of ~64k pixels is plenty
        if float(np.median(grey[::step, ::step])) > 0.5:
            np.subtract(1.0, grey, out=grey)
    return np.ascontiguousarray(np.broadcast_to(grey, x.shape), dtype=np.float32)


def prepare_image(chw: np.ndarray, mode: NormaliseMode = "dtype", fixed_max: float | None = None,
                  appearance: Appearance = "keep") -> np.ndarray:
    """A raw ``C×H×W`` image as the model takes it: normalised (``normalise_image``), then ``apply_appearance``."""
    return apply_appearance(normalise_image(chw, mode, fixed_max), appearance)


def convert_channels(image: np.ndarray, channels: int | None, source: str | Path | None = None) -> np.ndarray:
    """Convert ``H×W×C`` to ``channels`` channels: grey is repeated, alpha dropped, RGB(A) to grey by luminance.

    ``None`` keeps the image's own channels. Other conversions raise :class:`DataError`.
    """
    c = image.shape[2]
    if channels is None or c == channels:
        return image
    if c in (1, 2):  # grey (+ alpha): repeat the grey channel
        return np.repeat(image[:, :, :1], channels, axis=2)
    if c in (3, 4) and channels == 3:
        return image[:, :, :3]  # RGBA -> RGB
    if c in (3, 4) and channels == 1:
        import cv2

        rgb = np.ascontiguousarray(image[:, :, :3])
        if rgb.dtype not in (np.uint8, np.uint16, np.float32):
            rgb = rgb.astype(np.float32)
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
    raise DataError(
        f"cannot convert a {c}-channel image to {channels} channels (set channels=None to keep them)", file=source
    )


class InstanceDataset(Dataset[tuple[torch.Tensor, dict[str, Any]]]):
    """Images and detection/segmentation targets of an :class:`AnnotationSet` (see the module docstring).

    ``transforms(image, target)`` receives a ``tv_tensors.Image`` and a target whose ``boxes``,
    ``masks`` and ``semantic`` are tv_tensors (use :func:`~maskkit.data.transforms.build_transforms`).
    ``with_masks=None`` means: masks when the set has any. ``channels``/``normalise``/``fixed_max``/``appearance``
    control image loading (see :class:`~maskkit.data.transforms.AugmentConfig`).
    """

    def __init__(
        self,
        aset: AnnotationSet,
        transforms: Transform | None = None,
        *,
        semantic: bool = False,
        include_crowd: bool = False,
        with_masks: bool | None = None,
        recompute_boxes: bool = True,
        normalise: NormaliseMode = "dtype",
        fixed_max: float | None = None,
        channels: int | None = None,
        appearance: Appearance = "keep",
        scale_crop: ScaleCropSampler | None = None,
    ) -> None:
        if normalise == "fixed" and (not fixed_max or fixed_max <= 0):
            raise ConfigError("normalise='fixed' needs a positive fixed_max")
        self.aset = aset
        self.transforms = transforms
        self.semantic = semantic
        self.include_crowd = include_crowd
        self.recompute_boxes = recompute_boxes
        self.normalise: NormaliseMode = normalise
        self.fixed_max = fixed_max
        self.channels = channels
        self.appearance: Appearance = appearance
        self.scale_crop = scale_crop
        self._object_sizes: dict[int, float | None] = {}
        by_id = aset.category_by_id()
        self.category_ids: list[int] = sorted(by_id)
        """The set's category id of each contiguous label ``1..K`` (``category_ids[label - 1]``)."""
        self.class_names: list[str] = [by_id[i].name for i in self.category_ids]
        self._ids = np.asarray(self.category_ids, dtype=np.int64)
        if semantic and self.num_classes >= IGNORE_INDEX:
            raise ConfigError(f"semantic maps support up to {IGNORE_INDEX - 1} classes (255 means ignore)")
        if with_masks is None:
            with_masks = any(r.instances.has("masks") for r in aset.images if len(r.instances))
        self.with_masks = with_masks

    @classmethod
    def from_config(cls, aset: AnnotationSet, cfg: AugmentConfig, train: bool, **kwargs: Any) -> InstanceDataset:
        """A dataset with ``build_transforms(train, cfg)`` and the config's image options; training crops of
        resized images read only the source window they need (:mod:`maskkit.data.scale_crop`)."""
        if train and cfg.crop is not None:
            sampler = ScaleCropSampler(cfg.min_size, cfg.max_size, cfg.crop, cfg.object_size)
            return cls(aset, build_transforms(train, cfg, scale_crop=False), **cfg.image_options(),
                       scale_crop=sampler, **kwargs)
        return cls(aset, build_transforms(train, cfg), **cfg.image_options(), **kwargs)

    @property
    def num_classes(self) -> int:
        """``K``, the number of categories (models need ``K + 1`` outputs with background)."""
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.aset.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self.aset.images[index]
        plan = None
        if self.scale_crop is not None:
            plan = self.scale_crop.draw(record.height, record.width, self._object_px(index))
        image = self.load_image(record)
        target = self.load_target(record, plan.window if plan is not None else None)
        if plan is not None or self.transforms is not None:
            if plan is not None:
                y0, x0, y1, x1 = plan.window
                image = image[:, y0:y1, x0:x1]
            tv_image = tv_tensors.Image(image)
            tv_target = to_tv_target(target, (int(image.shape[-2]), int(image.shape[-1])))
            if plan is not None:
                tv_image, tv_target = ScaleCropSampler.apply(plan, tv_image, tv_target)
            if self.transforms is not None:
                tv_image, tv_target = self.transforms(tv_image, tv_target)
            image = tv_image.as_subclass(torch.Tensor)
            target = from_tv_target(tv_target)
        return image, self._finalise(target, (int(image.shape[-2]), int(image.shape[-1])))

    def _object_px(self, index: int) -> float | None:
        """The median instance size of image ``index`` when the sampler matches scale to it (computed once)."""
        if self.scale_crop is None or self.scale_crop.object_size is None:
            return None
        if index not in self._object_sizes:
            self._object_sizes[index] = object_px(self.aset.images[index].instances)
        return self._object_sizes[index]

    # -- loading ---------------------------------------------------------------------------------
    def load_image(self, record: ImageRecord) -> torch.Tensor:
        """The record's image as float32 ``C×H×W`` in ``[0, 1]`` (normalised, channels converted)."""
        if record.data is not None:
            source: Path | str | None = record.source
            array = decode_image_bytes(record.data, source=record.source)
        else:
            source = self.aset.image_path(record)
            array = read_image(source)
        if array.shape[:2] != (record.height, record.width):
            raise DataError(
                f"image is {array.shape[1]}x{array.shape[0]} but its annotations say {record.width}x{record.height}",
                file=source,
                image=record.file_name,
            )
        chw = np.ascontiguousarray(convert_channels(array, self.channels, source).transpose(2, 0, 1))
        return torch.from_numpy(prepare_image(chw, self.normalise, self.fixed_max, self.appearance))

    def contiguous_labels(self, category_ids: np.ndarray, record: ImageRecord | None = None) -> np.ndarray:
        """Map the set's category ids to labels ``1..K``; unknown ids raise :class:`DataError`."""
        cats = np.asarray(category_ids, dtype=np.int64).reshape(-1)
        pos = np.searchsorted(self._ids, cats)
        ok = pos < len(self._ids)
        ok[ok] = self._ids[pos[ok]] == cats[ok]
        if not ok.all():
            bad = int(np.nonzero(~ok)[0][0])
            raise DataError(
                f"category id {int(cats[bad])} is not one of the dataset's categories",
                file=record.source if record else None,
                image=record.file_name if record else None,
                annotation=_annotation_id(record, bad),
            )
        return pos + 1

    def load_target(self, record: ImageRecord, window: tuple[int, int, int, int] | None = None) -> dict[str, Any]:
        """The untransformed target of a record (masks decoded once; crowd handled per the options), or of its
        ``(y0, x0, y1, x1)`` window only: instances whose box misses it are left out, boxes are shifted."""
        inst = record.instances
        n = len(inst)
        y0, x0, y1, x1 = window if window is not None else (0, 0, record.height, record.width)
        h, w = y1 - y0, x1 - x0
        crowd = np.asarray(inst.iscrowd, dtype=bool) if inst.has("iscrowd") else np.zeros(n, dtype=bool)
        labels = self.contiguous_labels(inst.labels, record)
        boxes = np.asarray(inst.boxes, dtype=np.float32).reshape(-1, 4)
        inside = np.ones(n, dtype=bool)
        if window is not None:
            if n and inst.has("masks") and (self.with_masks or self.semantic):
                boxes = inst.masks.boxes()  # the pixels' own boxes decide what the window holds
            boxes = boxes - np.asarray([x0, y0, x0, y0], dtype=np.float32)
            inside = (boxes[:, 2] > 0) & (boxes[:, 3] > 0) & (boxes[:, 0] < w) & (boxes[:, 1] < h)
            crowd = crowd & inside
        keep = (np.ones(n, dtype=bool) if self.include_crowd else ~crowd) & inside
        target: dict[str, Any] = {
            "boxes": torch.from_numpy(boxes[keep].copy()),
            "labels": torch.from_numpy(labels[keep]),
            "iscrowd": torch.from_numpy(crowd[keep].astype(np.int64)),
            "image_id": int(record.id),
        }
        if not (self.with_masks or self.semantic):
            return target
        if n and not inst.has("masks"):
            raise DataError(
                "instances have no masks (box-only annotations) but masks were requested "
                "(use with_masks=False and semantic=False)",
                file=record.source,
                image=record.file_name,
            )
        # Decode every needed mask once, in one pycocotools call.
        need = (keep | crowd) if self.semantic else keep
        need_idx = np.nonzero(need)[0]
        bitmaps = inst.masks[need_idx].to_bitmaps(window) if len(need_idx) else np.zeros((0, h, w), dtype=bool)
        if self.with_masks:
            kept = bitmaps if need.sum() == keep.sum() else bitmaps[keep[need_idx]]
            target["masks"] = torch.from_numpy(np.ascontiguousarray(kept).view(np.uint8))
        if self.semantic:
            sem = np.zeros((h, w), dtype=np.int64)
            for m in bitmaps[crowd[need_idx]]:
                sem[m] = IGNORE_INDEX
            for m, label in zip(bitmaps[~crowd[need_idx]], labels[need_idx][~crowd[need_idx]], strict=True):
                sem[m] = label
            target["semantic"] = torch.from_numpy(sem)
        return target

    def _finalise(self, target: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
        """Recompute boxes from masks, drop empty/degenerate instances, compute ``area``."""
        boxes = target["boxes"].reshape(-1, 4).float()
        masks = target.get("masks")
        if masks is not None:
            # NumPy views of the uint8 masks: its reductions are much faster on CPU than torch's uint8 ones.
            tight, area_np = mask_boxes_and_areas(masks.numpy())
            area = torch.from_numpy(area_np)
            if self.recompute_boxes:
                boxes = torch.from_numpy(tight)
            keep = area > 0
        else:
            boxes = clip_boxes_to_image(boxes, size)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            keep = torch.ones(len(boxes), dtype=torch.bool)
        keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        target["boxes"] = boxes[keep]
        target["area"] = area[keep].float()
        for key in ("labels", "iscrowd", "masks"):
            if key in target:
                target[key] = target[key][keep]
        return target


def mask_boxes_and_areas(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tight pixel-edge XYXY boxes (float32, zeros for empty masks) and pixel areas (float32) of ``N×H×W`` masks.

    Same convention as :meth:`maskkit.structures.Masks.boxes` (pycocotools ``toBbox``), without RLE encoding.
    """
    n, h, w = masks.shape
    m = masks.view(bool) if masks.dtype == np.uint8 else masks.astype(bool, copy=False)
    rows: np.ndarray = np.any(m, axis=2)
    cols: np.ndarray = np.any(m, axis=1)
    boxes = np.stack(
        [cols.argmax(1), rows.argmax(1), w - cols[:, ::-1].argmax(1), h - rows[:, ::-1].argmax(1)], axis=1
    ).astype(np.float32)
    boxes[~rows.any(1)] = 0
    areas = np.count_nonzero(m.reshape(n, h * w), axis=1).astype(np.float32)
    return boxes.reshape(n, 4), areas


def _annotation_id(record: ImageRecord | None, index: int) -> int | None:
    if record is None or not record.instances.has("ids"):
        return None
    return int(record.instances.ids[index])


def collate_fn(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Detection collate: images and targets as lists (sizes differ), as torchvision models take them."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)
