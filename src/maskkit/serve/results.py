"""Responses from :class:`~maskkit.structures.Instances`: JSON with per-instance RLE or polygons, overlay PNGs.

Masks leave the server one instance at a time (compressed RLE strings or simplified polygons): no
``N×H×W`` array is built for a response.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from maskkit.inference.visualize import draw_instances
from maskkit.inference.writers import mask_polygons
from maskkit.structures import Instances
from maskkit.structures.masks import rle_to_string


def instance_list(inst: Instances, class_names: Mapping[int, str], masks: str) -> list[dict[str, Any]]:
    """One dict per instance, best score first (``masks``: ``rle``, ``polygon`` or ``none``)."""
    n = len(inst)
    if n == 0:
        return []
    scores = np.asarray(inst.scores, dtype=np.float64).reshape(n)
    order = np.argsort(-scores, kind="stable")
    boxes = np.asarray(inst.boxes, dtype=np.float64).reshape(n, 4)
    labels = np.asarray(inst.labels, dtype=np.int64).reshape(n)
    has_masks = inst.has("masks")
    areas = inst.masks.areas() if has_masks else np.zeros(n)
    out = []
    for k, i in enumerate(order.tolist()):
        item: dict[str, Any] = {
            "id": k, "class_id": int(labels[i]), "class_name": class_names.get(int(labels[i]), str(labels[i])),
            "score": round(float(scores[i]), 6), "box": [round(float(v), 2) for v in boxes[i]],
            "area": int(areas[i]), "rle": None, "polygons": None,
        }
        if has_masks and masks == "rle":
            item["rle"] = rle_to_string(inst.masks.rle(i))
        elif has_masks and masks == "polygon":
            item["polygons"] = [[round(float(v), 1) for v in ring.reshape(-1)]
                                for ring in mask_polygons(inst.masks.bitmap(i))]
        out.append(item)
    return out


def overlay_png(image: np.ndarray, inst: Instances, class_names: Mapping[int, str],
                colours: Mapping[int, tuple[int, int, int]]) -> bytes:
    """PNG bytes of ``image`` with the instances drawn (:func:`maskkit.inference.visualize.draw_instances`)."""
    import cv2

    canvas = draw_instances(image, inst, class_names, colours)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()
