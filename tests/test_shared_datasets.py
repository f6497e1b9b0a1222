"""Every shared real dataset, in its original format: read, validate, convert to COCO and back, pixel-exact."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from maskkit.data import AnnotationSet, read_annotations, write_annotations
from maskkit.data.validate.runner import validate_dataset

# (path under ../shared/data, expected format, images, instances)
SOURCES = [
    ("coco128-seg", "yolo", 128, 929),  # + 12 lines in two label files without an image (orphans)
    ("dsb2018-stage1-train-subset/stage1_train", "dsb", 60, 2848),
    ("labelme-voc2011-instances/data_annotated", "labelme", 3, 14),  # 12 objects + 2 __ignore__ regions
    ("labelme-voc2011-instances/with_image_data", "labelme", 1, 4),
    ("labelme-voc2011-instances/data_dataset_voc", "voc", 3, 12),
    ("labelme-voc2011-instances/data_dataset_coco/annotations.json", "coco", 3, 12),
]


def _signature(aset: AnnotationSet) -> dict:
    """Per image file stem: the multiset of (category name, mask RLE counts)."""
    names = {c.id: c.name for c in aset.categories}
    out = {}
    for rec in aset.images:
        inst = rec.instances
        rles = inst.masks.to_rles() if inst.has("masks") else [None] * len(inst)
        out[Path(rec.file_name).stem] = Counter(
            (names[int(label)], None if r is None else r["counts"]) for label, r in zip(inst.labels, rles, strict=True)
        )
    return out


@pytest.mark.parametrize(("rel", "fmt", "n_images", "n_instances"), SOURCES, ids=[s[1] + ":" + s[0] for s in SOURCES])
def test_read_validate_roundtrip(shared_data: Path, tmp_path: Path, rel: str, fmt: str, n_images: int,
                                 n_instances: int) -> None:
    aset = read_annotations(shared_data / rel)
    assert aset.format == fmt
    assert (len(aset), aset.num_instances()) == (n_images, n_instances)

    report = validate_dataset({"train": aset})
    assert report.exit_code in (0, 1)  # runs to the end on real data; findings are reported, not raised
    assert report.counts["error"] == 0, [f.message for f in report.findings if f.severity == "error"][:5]

    rep = write_annotations(aset, tmp_path / "coco", "coco")
    assert rep.instances == n_instances
    back = read_annotations(tmp_path / "coco")
    assert back.format == "coco"
    assert _signature(back) == _signature(aset)  # same instances, categories and identical pixels per image
