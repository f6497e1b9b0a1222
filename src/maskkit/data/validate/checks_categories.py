"""Checks on categories: unknown labels, unused, duplicated names or ids."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from maskkit.data.validate.context import DatasetContext, InstanceView, SplitContext, repeats
from maskkit.data.validate.registry import Hit, check


@check("E301", "unknown-category", "error", "instance", "An annotation whose category id is not among the categories.")
def unknown_category(inst: InstanceView) -> Iterator[str]:
    cats = inst.image.split.categories
    if inst.label not in cats:
        known = sorted(cats)
        span = f"ids {known[0]}..{known[-1]}" if known else "no categories defined"
        yield f"category id {inst.label} is not among the {len(known)} categories ({span})"


@check("W302", "unused-category", "warning", "dataset", "A category that no annotation of any split uses.")
def unused_category(ds: DatasetContext) -> Iterator[Hit]:
    used: set[int] = set()
    for split in ds.splits:
        for rec in split.aset.images:
            used.update(np.asarray(rec.instances.get("labels", [])).reshape(-1).tolist())
    reported: set[int] = set()
    for split in ds.splits:
        for cat in split.aset.categories:
            if cat.id not in used and cat.id not in reported:
                reported.add(cat.id)
                where = "any split" if len(ds.splits) > 1 else "the dataset"
                message = f"category {cat.id} {cat.name!r} has no instances in {where}"
                yield Hit(message, split=split.name, file=split.annotation_file)


@check("E303", "duplicate-category-name", "error", "split", "Two categories share a name (names must be unique).")
def duplicate_category_name(split: SplitContext) -> Iterator[Hit]:
    for cat, first in repeats(split.aset.categories, lambda c: c.name):
        yield Hit(f"category {cat.id} has the same name {cat.name!r} as category {first.id}")


@check("E304", "duplicate-category-id", "error", "split", "Two categories share an id.")
def duplicate_category_id(split: SplitContext) -> Iterator[Hit]:
    for cat, first in repeats(split.aset.categories, lambda c: c.id):
        yield Hit(f"category id {cat.id} is used by {first.name!r} and {cat.name!r}")


@check("E305", "empty-label", "error", "instance",
       "An annotation whose category name (label) is empty or blank, e.g. a LabelMe shape with label \"\".")
def empty_label(inst: InstanceView) -> Iterator[str]:
    cat = inst.image.split.categories.get(inst.label)
    if cat is not None and not str(cat.name).strip():
        yield f"category {cat.id} has the empty label {cat.name!r}"
