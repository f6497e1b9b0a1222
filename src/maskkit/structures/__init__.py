"""Core structures: :class:`Instances`, :class:`Masks` and the mask representations."""

from maskkit.structures.instances import Instances
from maskkit.structures.masks import RLE, BitMask, Masks, PolygonMask, RLEMask, decode_rle, masks_iou, rle_to_string

__all__ = [
    "RLE",
    "BitMask",
    "Instances",
    "Masks",
    "PolygonMask",
    "RLEMask",
    "decode_rle",
    "masks_iou",
    "rle_to_string",
]
