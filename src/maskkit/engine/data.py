"""Training data: load the dataset's splits, make a deterministic val split when needed, build loaders.

The training order is a seeded permutation per epoch (``seed + epoch``), sharded across ranks and
cut into batches by :class:`EpochBatchSampler`, which can start mid-epoch: a resumed run skips the
batches it has already seen and continues with exactly the same data order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from maskkit.config import TrainConfig
from maskkit.data.annotations import AnnotationSet, Category, ImageRecord
from maskkit.errors import ConfigError, DataError


@dataclass
class TrainData:
    """The train and val annotation sets and the categories the model predicts."""

    train: AnnotationSet
    val: AnnotationSet | None
    categories: list[Category]
    val_source: str
    """``"split"`` (the dataset's own val split), ``"random"`` or ``"interleaved"`` (carved from train, see
    ``DataConfig.val_split``) or ``"none"``."""
    skipped: list[str] = field(default_factory=list)
    """Images dropped because they fail to decode (``data.skip_bad_images``): ``"file: problem"``."""

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.categories]

    @property
    def category_ids(self) -> list[int]:
        return [c.id for c in self.categories]


def random_val_split(aset: AnnotationSet, fraction: float, seed: int,
                     mode: str = "random") -> tuple[AnnotationSet, AnnotationSet]:
    """Split a set into (train, val): ``random`` takes a permutation seeded with ``seed`` (independent of file
    order); ``interleaved`` sorts by file name and takes every ``round(1 / fraction)``-th image from the first."""
    if mode == "interleaved":
        records = sorted(aset.images, key=lambda r: (r.file_name, r.id))
        stride = max(round(1.0 / fraction), 1) if fraction > 0 else 0
        val_idx = set(range(0, len(records), stride)) if stride else set()
    else:
        records = sorted(aset.images, key=lambda r: (r.id, r.file_name))
        n_val = round(len(records) * fraction)
        val_idx = set(np.random.default_rng(seed).permutation(len(records))[:n_val].tolist())
    if not val_idx or len(val_idx) >= len(records):
        raise ConfigError(
            f"val_fraction {fraction} of {len(records)} images leaves an empty split; add a val split or images"
        )
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return replace(aset, images=train), replace(aset, images=val)


def load_train_data(cfg: TrainConfig) -> TrainData:
    """Read ``cfg.data.path`` (dataset YAML or any source) into train/val sets."""
    from maskkit.data.splits import load_dataset, merge_categories

    if not cfg.data.path:
        raise ConfigError("no training data: set data.path in the config or pass --data")
    ds = load_dataset(Path(cfg.data.path), allow_outside_root=cfg.data.allow_outside_root)
    train = ds.splits.get("train")
    if train is None:
        raise DataError("the dataset has no train split", file=cfg.data.path)
    val = ds.splits.get("val")
    source = "split"
    if val is None and ds.aliases.get("val") == "train":
        val = None  # val names the same source as train: carve a split instead of evaluating on train
    if val is None:
        if cfg.data.val_fraction > 0:
            train, val = random_val_split(train, cfg.data.val_fraction, cfg.seed, cfg.data.val_split)
            source = cfg.data.val_split
        else:
            source = "none"
    sets = [train] + ([val] if val is not None else [])
    categories = merge_categories(sets)
    if not categories:
        raise DataError("the dataset defines no categories", file=cfg.data.path)
    sets = [replace(s, categories=categories) for s in sets]
    skipped: list[str] = []
    if cfg.data.skip_bad_images:
        sets = [drop_undecodable(s, skipped) for s in sets]
        if not sets[0].images:
            raise DataError("no train image decodes (data.skip_bad_images dropped them all)", file=cfg.data.path)
    return TrainData(sets[0], sets[1] if val is not None else None, categories, source, skipped)


def decode_problem(aset: AnnotationSet, record: ImageRecord) -> str | None:
    """Why the record's image fails to decode as training reads it (``"file: problem"``), or ``None``."""
    from maskkit.data.images import decode_image_bytes, read_image

    try:
        if record.data is not None:
            decode_image_bytes(record.data, source=record.source)
        else:
            read_image(aset.image_path(record))
    except DataError as exc:
        return str(exc)
    return None


def drop_undecodable(aset: AnnotationSet, skipped: list[str]) -> AnnotationSet:
    """``aset`` without the images that fail to decode; their problems are appended to ``skipped``."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:  # OpenCV decodes without the GIL
        problems = list(pool.map(lambda r: decode_problem(aset, r), aset.images))
    skipped.extend(p for p in problems if p is not None)
    return replace(aset, images=[r for r, p in zip(aset.images, problems, strict=True) if p is None])


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of a seeded per-epoch permutation (``seed + epoch``), this rank's shard, from batch ``start``.

    ``drop_uneven`` (training) trims the shards to equal length; validation keeps every image.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, drop_uneven: bool = True) -> None:
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        else:
            order = list(range(n))
        order = order[rank::world_size]
        if drop_uneven and world_size > 1:
            order = order[: n // world_size]  # every rank takes the same number of steps
        self.batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self.start = start

    def __len__(self) -> int:
        return max(len(self.batches) - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches[self.start :])


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    """Optimiser steps in one epoch (the last batch may be smaller)."""
    per_rank = n // world_size if world_size > 1 else n
    return max(-(-per_rank // batch_size), 1)


def make_loader(dataset: torch.utils.data.Dataset, sampler: Sampler, workers: int, seed: int) -> DataLoader:
    """A DataLoader over ``sampler``'s batches; its own generator keeps the global RNG untouched."""
    from maskkit.data.dataset import collate_fn

    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False)
