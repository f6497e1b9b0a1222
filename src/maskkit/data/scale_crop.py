"""Random shortest-side resize then random crop, computed on the part of the image the crop sees.

Training on crops of upscaled images (the nuclei recipes: 256 px crops of images resized to 384-576 px) spent
most of its data time decoding, resizing and cropping every instance mask of the whole image, for a crop that
keeps a quarter of them. :class:`ScaleCropSampler` draws the same resize (torchvision's ``RandomShortestSize``
rule) and crop window, maps the window back to source pixels with a margin for the interpolation, and the
dataset reads only that source window (masks whose box misses it are not decoded). The window is then resized
and cropped by torchvision on the image, masks and boxes together, so they stay consistent; the result differs
from resizing the whole image only by the sub-pixel placement of the crop.

With ``object_size`` the resize is matched to the objects instead of the image: each draw scales the image so that
its median instance (:func:`object_px`) measures a size drawn log-uniformly from ``object_size`` pixels, so every
image type is shown at every object size of that range (Cellpose trains at a fixed diameter the same way).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from maskkit.structures.boxes import box_area


@dataclass(frozen=True)
class ScaleCrop:
    """One draw: read ``window`` of the source, resize it to ``size``, crop ``crop`` at ``offset`` (zero-padded
    at the bottom/right where the resized image is smaller than the crop)."""

    window: tuple[int, int, int, int]
    """``(y0, x0, y1, x1)`` in source pixels."""
    size: tuple[int, int]
    """``(height, width)`` of the resized window."""
    offset: tuple[int, int]
    """``(top, left)`` of the crop in the resized window."""
    crop: tuple[int, int]
    """``(height, width)`` of the output."""
    resized: tuple[int, int]
    """``(height, width)`` of the whole image resized, and ``corner``: ``(top, left)`` of the crop in it."""
    corner: tuple[int, int]


class ScaleCropSampler:
    """Draws :class:`ScaleCrop` plans (torch's generator, so seeded runs and DataLoader workers repeat) and applies
    them to an image and its target.

    ``sizes``: shortest-side sizes, one drawn per image (empty: no resize); ``max_size``: cap on the longest side;
    ``crop``: output ``size`` or ``(height, width)``; ``object_size``: ``(low, high)`` pixels of the median
    instance after the resize (images without instances fall back to ``sizes``).
    """

    MAX_SCALE = 8.0
    """Bound on an object-matched scale factor (and its inverse): a few one-pixel instances must not blow an
    image up to gigapixels."""

    def __init__(self, sizes: Sequence[int], max_size: int | None, crop: int | Sequence[int],
                 object_size: Sequence[float] | None = None) -> None:
        self.sizes = [int(s) for s in sizes]
        self.max_size = max_size
        self.object_size = None if object_size is None else (float(object_size[0]), float(object_size[1]))
        ch, cw = (crop, crop) if isinstance(crop, int) else (int(crop[0]), int(crop[1]))
        if ch <= 0 or cw <= 0:
            raise ValueError(f"crop must be positive, got {crop!r}")
        self.crop = (ch, cw)

    def draw(self, height: int, width: int, object_px: float | None = None) -> ScaleCrop:
        """A random plan for a ``height × width`` source image whose median instance measures ``object_px``."""
        r, resize = 1.0, True
        if self.object_size is not None and object_px:
            lo, hi = math.log(self.object_size[0]), math.log(self.object_size[1])
            target = math.exp(lo + (hi - lo) * float(torch.rand(())))
            r = min(max(target / object_px, 1 / self.MAX_SCALE), self.MAX_SCALE)
        elif self.sizes:
            r = self.sizes[int(torch.randint(len(self.sizes), ()))] / min(height, width)
        else:
            resize = False
        if resize and self.max_size is not None:
            r = min(r, self.max_size / max(height, width))
        rh, rw = max(int(height * r), 1), max(int(width * r), 1)  # the whole image resized (as RandomShortestSize)
        sy, sx = rh / height, rw / width
        ch, cw = self.crop
        top = int(torch.randint(max(rh - ch, 0) + 1, ()))
        left = int(torch.randint(max(rw - cw, 0) + 1, ()))
        # source rows/columns the crop reads, with the interpolation's support (wider when downscaling: antialias)
        my, mx = 1 + math.ceil(1 / sy), 1 + math.ceil(1 / sx)
        y0, y1 = max(math.floor(top / sy) - my, 0), min(math.ceil((top + ch) / sy) + my, height)
        x0, x1 = max(math.floor(left / sx) - mx, 0), min(math.ceil((left + cw) / sx) + mx, width)
        # resized window edges on the whole image's grid: the crop lands at an integer offset inside it
        ty0, ty1, tx0, tx1 = round(y0 * sy), round(y1 * sy), round(x0 * sx), round(x1 * sx)
        size = (max(ty1 - ty0, 1), max(tx1 - tx0, 1))
        offset = (top - ty0, left - tx0)
        return ScaleCrop((y0, x0, y1, x1), size, offset, (ch, cw), (rh, rw), (top, left))

    @staticmethod
    def apply(plan: ScaleCrop, image: Any, target: Any) -> tuple[Any, Any]:
        """Resize and crop the source window ``image`` (a ``tv_tensors.Image``) and its tv_tensor ``target``."""
        out: tuple[Any, Any] = _Apply(plan)(image, target)
        return out


class _Apply(v2.Transform):  # type: ignore[misc]  # torchvision has no type information
    """The resize and crop of one plan on every tv_tensor of the input (other values pass through)."""

    def __init__(self, plan: ScaleCrop) -> None:
        super().__init__()
        self.plan = plan

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        p = self.plan
        out = self._call_kernel(F.resize, inpt, size=list(p.size), antialias=True)
        return self._call_kernel(F.crop, out, top=p.offset[0], left=p.offset[1], height=p.crop[0], width=p.crop[1])


def object_px(instances: Any) -> float | None:
    """The size of an image's median instance in pixels: the diameter of a disc of its mask area (masks), else
    the side of a square of its box area; None without instances."""
    if not len(instances):
        return None
    if instances.has("masks"):
        return float(2.0 * math.sqrt(float(np.median(instances.masks.areas())) / math.pi))
    return float(math.sqrt(float(np.median(box_area(instances.boxes)))))
