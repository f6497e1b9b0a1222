"""Mask pasting without full-image canvases: Mask R-CNN's ``M×M`` box masks -> per-box crops -> COCO RLE.

torchvision's ``paste_masks_in_image`` builds one float ``H×W`` canvas per detection, stacks them
(``N×H×W``), and the caller then thresholds and RLE-encodes every full canvas. Here each mask is
resized exactly as torchvision does (same padding, box expansion, integer rounding and bilinear
``F.interpolate``), so the pixels are bit-identical, but only its box region is kept
(:class:`MaskCrops`); RLEs are built directly from the crops
(:func:`~maskkit.structures.rle.crop_to_rle`) and a dense ``N×H×W`` array exists only when asked for
(:meth:`MaskCrops.to_dense`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from maskkit.models.outputs import region_ids
from maskkit.structures.rle import RLE, crop_to_rle


@dataclass
class MaskCrops:
    """Per-instance mask probabilities (or 0/1 values) kept only inside each instance's region.

    ``crops[i]`` is a float32 ``h_i×w_i`` array placed with its top-left pixel at ``offsets[i] = (x0, y0)``
    of an image of ``image_size = (H, W)``; pixels outside every crop are 0.
    """

    crops: list[np.ndarray]
    offsets: np.ndarray
    image_size: tuple[int, int]
    _binary: dict[float, list[np.ndarray]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.crops)

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> MaskCrops:
        return cls([], np.zeros((0, 2), np.int64), (int(image_size[0]), int(image_size[1])))

    @classmethod
    def from_dense(cls, probs: np.ndarray | torch.Tensor) -> MaskCrops:
        """Crops of full-image ``N×H×W`` (or ``N×1×H×W``) maps, each cut to its non-zero region."""
        if isinstance(probs, torch.Tensor):
            probs = probs.detach().float().cpu().numpy()
        probs = np.asarray(probs, dtype=np.float32)
        if probs.ndim == 4:
            probs = probs[:, 0]
        crops, offsets = [], []
        for p in probs:
            ys, xs = np.nonzero(p.any(1))[0], np.nonzero(p.any(0))[0]
            if not len(ys):
                crops.append(np.zeros((0, 0), np.float32))
                offsets.append((0, 0))
                continue
            crops.append(np.ascontiguousarray(p[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]))
            offsets.append((int(xs[0]), int(ys[0])))
        return cls(crops, np.asarray(offsets, np.int64).reshape(-1, 2), tuple(probs.shape[-2:]))

    @classmethod
    def from_instance_map(cls, instance_map: np.ndarray | torch.Tensor, n: int) -> MaskCrops:
        """0/1 crops of instances ``1..n`` of an ``H×W`` instance map (instance ``i`` holds ``i + 1``)."""
        from scipy import ndimage

        if isinstance(instance_map, torch.Tensor):
            instance_map = instance_map.detach().cpu().numpy()
        imap = np.asarray(instance_map)
        crops, offsets = [], []
        for i, sl in enumerate(ndimage.find_objects(imap.astype(np.int32, copy=False), max_label=n)):
            if sl is None:
                crops.append(np.zeros((0, 0), np.float32))
                offsets.append((0, 0))
            else:
                crops.append((imap[sl] == i + 1).astype(np.float32))
                offsets.append((sl[1].start, sl[0].start))
        return cls(crops, np.asarray(offsets, np.int64).reshape(-1, 2), tuple(imap.shape))

    def take(self, index: Sequence[int] | np.ndarray) -> MaskCrops:
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        return MaskCrops([self.crops[i] for i in idx], self.offsets[idx].reshape(-1, 2), self.image_size)

    def flip(self, horizontal: bool = True) -> MaskCrops:
        """The crops of the mirrored image (left-right, or top-bottom with ``horizontal=False``)."""
        axis, k = (1, 0) if horizontal else (0, 1)
        offsets = self.offsets.copy()
        sizes = np.asarray([c.shape[axis] for c in self.crops], np.int64)
        offsets[:, k] = self.image_size[axis] - offsets[:, k] - sizes if len(self) else offsets[:, k]
        return MaskCrops([np.ascontiguousarray(np.flip(c, axis)) for c in self.crops], offsets, self.image_size)

    def binary(self, threshold: float = 0.5) -> list[np.ndarray]:
        """Boolean crops (``crop > threshold``), cached per threshold."""
        if threshold not in self._binary:
            self._binary[threshold] = [c > threshold for c in self.crops]
        return self._binary[threshold]

    def to_rles(self, threshold: float = 0.5) -> list[RLE]:
        """Compressed RLEs of the thresholded masks at the full image size."""
        h, w = self.image_size
        return [crop_to_rle(b, int(y), int(x), h, w) for b, (x, y) in zip(self.binary(threshold), self.offsets,
                                                                            strict=True)]

    def to_dense(self, threshold: float = 0.5) -> np.ndarray:
        """Boolean ``N×H×W`` masks (memory grows with N×H×W)."""
        out = np.zeros((len(self), *self.image_size), dtype=bool)
        for i, (b, (x, y)) in enumerate(zip(self.binary(threshold), self.offsets, strict=True)):
            out[i, y:y + b.shape[0], x:x + b.shape[1]] = b
        return out


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], padding: int = 1) -> MaskCrops:
    """Mask R-CNN ``N×1×M×M`` (or ``N×M×M``) mask probabilities pasted into their XYXY ``boxes``, as crops.

    Same geometry and arithmetic as ``torchvision.models.detection.roi_heads.paste_masks_in_image``
    (pad by ``padding``, expand the box by ``(M + 2 padding) / M``, truncate to integers, bilinear
    resize to the box, clip to the image), so thresholding the crops gives torchvision's masks exactly.
    """
    from torchvision.models.detection.roi_heads import expand_boxes

    h_img, w_img = int(image_size[0]), int(image_size[1])
    if masks.ndim == 3:
        masks = masks[:, None]
    if not len(masks):
        return MaskCrops.empty((h_img, w_img))
    m = masks.shape[-1]
    padded = F.pad(masks.float(), (padding,) * 4)
    ib = expand_boxes(boxes.float(), float(m + 2 * padding) / m).to(torch.int64).tolist()
    crops, offsets = [], []
    for n, (bx0, by0, bx1, by1) in enumerate(ib):
        x0, y0 = max(bx0, 0), max(by0, 0)
        x1, y1 = min(bx1 + 1, w_img), min(by1 + 1, h_img)
        if x1 <= x0 or y1 <= y0:
            crops.append(np.zeros((0, 0), np.float32))
            offsets.append((0, 0))
            continue
        size = (max(by1 - by0 + 1, 1), max(bx1 - bx0 + 1, 1))
        full = F.interpolate(padded[n:n + 1], size=size, mode="bilinear", align_corners=False)[0, 0]
        crops.append(full[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0].cpu().numpy())
        offsets.append((x0, y0))
    return MaskCrops(crops, np.asarray(offsets, np.int64).reshape(-1, 2), (h_img, w_img))


@dataclass
class Detections:
    """One image's detections with cropped masks: XYXY ``boxes``, model ``labels`` (1..K), ``scores``, ``masks``."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    masks: MaskCrops

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.masks.image_size

    def take(self, index: Sequence[int] | np.ndarray) -> Detections:
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        return Detections(self.boxes[idx].reshape(-1, 4), self.labels[idx], self.scores[idx], self.masks.take(idx))

    def flip(self, horizontal: bool = True) -> Detections:
        """The detections of the mirrored image."""
        boxes = self.boxes.copy()
        if horizontal:
            boxes[:, [0, 2]] = self.image_size[1] - self.boxes[:, [2, 0]]
        else:
            boxes[:, [1, 3]] = self.image_size[0] - self.boxes[:, [3, 1]]
        return Detections(boxes, self.labels, self.scores, self.masks.flip(horizontal))

    @classmethod
    def from_mask_probs(cls, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, probs: torch.Tensor,
                        image_size: tuple[int, int]) -> Detections:
        """Mask R-CNN detections (XYXY ``boxes`` at the image size, ``n×M×M`` mask ``probs``), masks pasted."""
        return cls(boxes.float().cpu().numpy().reshape(-1, 4), labels.cpu().numpy().astype(np.int64),
                   scores.float().cpu().numpy(), paste_masks(probs, boxes, image_size))

    @classmethod
    def from_output(cls, output: dict[str, torch.Tensor], image_size: tuple[int, int]) -> Detections:
        """A model-contract output dict (``masks`` probabilities or an ``instance_map``) as detections."""
        labels = output["labels"].detach().cpu().numpy().astype(np.int64)
        if "instance_map" in output:
            ids = region_ids(output, len(labels))
            masks = MaskCrops.from_instance_map(output["instance_map"], int(ids.max(initial=0))).take(ids - 1)
        elif "masks" in output:
            masks = MaskCrops.from_dense(output["masks"])
        else:  # boxes only: the box as a 0/1 mask
            masks = _box_crops(output["boxes"], image_size)
        return cls(output["boxes"].detach().float().cpu().numpy().reshape(-1, 4), labels,
                   output["scores"].detach().float().cpu().numpy(), masks)


def _box_crops(boxes: torch.Tensor, image_size: tuple[int, int]) -> MaskCrops:
    h, w = int(image_size[0]), int(image_size[1])
    crops, offsets = [], []
    for x0, y0, x1, y1 in boxes.detach().cpu().round().to(torch.int64).tolist():
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(max(x1, 0), w), min(max(y1, 0), h)
        crops.append(np.ones((max(y1 - y0, 0), max(x1 - x0, 0)), np.float32))
        offsets.append((min(x0, w), min(y0, h)))
    return MaskCrops(crops, np.asarray(offsets, np.int64).reshape(-1, 2), (h, w))
