"""COCO results entries (the ``predictions.json`` format) from :class:`~maskkit.structures.Instances`.

Beside the structures, so that the prediction writers need nothing from :mod:`maskkit.evaluation`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maskkit.structures.instances import Instances
from maskkit.structures.masks import rle_to_string


def instances_to_results(image_id: int, instances: Instances) -> list[dict[str, Any]]:
    """COCO results entries (JSON-safe: RLE ``counts`` as str) of one image's predictions."""
    n = len(instances)
    boxes = np.asarray(instances.boxes, dtype=np.float64).reshape(n, 4) if instances.has("boxes") else None
    scores = instances.get("scores")
    scores = np.ones(n) if scores is None else np.asarray(scores, dtype=np.float64).reshape(n)
    masks = instances.get("masks")
    out = []
    for i in range(n):
        r: dict[str, Any] = {"image_id": int(image_id), "category_id": int(instances.labels[i]),
                             "score": round(float(scores[i]), 6)}
        if boxes is not None:
            x0, y0, x1, y1 = boxes[i]
            r["bbox"] = [round(float(v), 3) for v in (x0, y0, x1 - x0, y1 - y0)]
        if masks is not None:
            r["segmentation"] = rle_to_string(masks.rle(i))
        out.append(r)
    return out
