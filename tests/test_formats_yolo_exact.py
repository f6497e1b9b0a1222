"""YOLO writer: the pixel-exactness shortcut (no rasterising when the quantised vertices are kept) stays honest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from maskkit.data.annotations import AnnotationSet, Category, ImageRecord, new_instances
from maskkit.data.formats import write_annotations
from maskkit.data.formats import yolo as yolo_fmt
from maskkit.structures import Masks, PolygonMask


def test_unreported_polygons_are_pixel_exact(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(7)
    h, w = 37, 53
    records, n = [], 0
    for k in range(12):
        polys = []
        for j in range(12):
            pad = 3 if j % 6 == 0 else -0.5  # some cross the border (clipped), most lie inside
            pts = rng.uniform([-pad, -pad], [w + pad, h + pad], size=(int(rng.integers(3, 9)), 2))
            polys.append(np.round(pts, int(rng.integers(0, 3))))  # COCO-grid values sit on quantisation edges
        masks = Masks([PolygonMask([p], h, w) for p in polys], h, w)
        ids = list(range(n + 1, n + len(polys) + 1))
        n += len(polys)
        inst = new_instances(h, w, [0] * len(polys), masks, ids=ids)
        records.append(ImageRecord(k + 1, f"{k}.png", h, w, inst))
    aset = AnnotationSet([Category(0, "thing")], records, tmp_path / "none")
    checked: list[bool] = []
    original = yolo_fmt._compare

    def counting(a, b):
        checked.append(True)
        return original(a, b)

    monkeypatch.setattr(yolo_fmt, "_compare", counting)
    report = write_annotations(aset, tmp_path / "out", "yolo")
    assert len(checked) < n  # most lines need no rasterising
    labels = sorted((tmp_path / "out" / "labels").glob("*.txt"), key=lambda p: int(p.stem))
    changed = 0
    for rec, label in zip(records, labels, strict=True):
        for i, line in enumerate(label.read_text().splitlines()):
            xy = np.asarray(line.split()[1:], dtype=np.float64).reshape(-1, 2) * [w, h]
            back = PolygonMask([xy], h, w).to_rle()
            src = rec.instances.masks.rle(i)
            same = mask_utils.area(mask_utils.merge([back, src], intersect=True)) == mask_utils.area(src) == \
                mask_utils.area(back)
            changed += not same
    assert changed == sum(report.changes.values())  # every changed instance is reported, no other
