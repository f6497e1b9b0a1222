"""Checks across splits: the same image (exact bytes) or a near-identical one in two splits (leakage)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from maskkit.data.validate.context import DatasetContext
from maskkit.data.validate.registry import Hit, check


def _label(split: str, rec_id: int, file_name: str) -> str:
    return f"{split} image {rec_id} {file_name!r}"


@check("E401", "duplicate-across-splits", "error", "dataset",
       "The same image (identical file bytes, SHA-1) appears in two splits: evaluation leaks training data.")
def duplicate_across_splits(ds: DatasetContext) -> Iterator[Hit]:
    seen: dict[str, tuple[str, int, str]] = {}
    for split in ds.splits:
        local: dict[str, tuple[str, int, str]] = {}
        for rec, facts in zip(split.aset.images, split.facts, strict=False):
            if facts is None or facts.sha1 is None:
                continue
            if facts.sha1 in seen:
                yield Hit(f"same bytes as {_label(*seen[facts.sha1])} (sha1 {facts.sha1[:12]})",
                          split=split.name, record=rec, file=str(facts.path or "") or None)
            local.setdefault(facts.sha1, (split.name, rec.id, rec.file_name))
        for key, value in local.items():
            seen.setdefault(key, value)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        counts: np.ndarray = np.bitwise_count(x)
    else:
        counts = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
    return counts


@check("W402", "near-duplicate-across-splits", "warning", "dataset",
       "A nearly identical image (perceptual hash within 4 bits) appears in two splits.", needs=("phash",))
def near_duplicate_across_splits(ds: DatasetContext) -> Iterator[Hit]:
    limit = ds.options.phash_distance
    hashes: list[int] = []
    sha1s: set[str | None] = set()
    labels: list[tuple[str, int, str]] = []
    for split in ds.splits:
        earlier = np.array(hashes, dtype=np.uint64)
        for rec, facts in zip(split.aset.images, split.facts, strict=False):
            if facts is None or facts.phash is None or not len(earlier) or facts.sha1 in sha1s:
                continue  # exact copies are reported by duplicate-across-splits
            dist = _popcount(earlier ^ np.uint64(facts.phash))
            j = int(np.argmin(dist))
            if dist[j] <= limit:
                yield Hit(f"looks like {_label(*labels[j])}: perceptual-hash distance {int(dist[j])} (<= {limit})",
                          split=split.name, record=rec, file=str(facts.path) if facts.path else None)
        for rec, facts in zip(split.aset.images, split.facts, strict=False):
            if facts is not None and facts.phash is not None:
                hashes.append(facts.phash)
                sha1s.add(facts.sha1)
                labels.append((split.name, rec.id, rec.file_name))
