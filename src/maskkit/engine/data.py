"""Training data: load the dataset's splits, make a deterministic val split when needed, build loaders.

What is chosen where: the model trains on ``train``; thresholds, ``best.pt`` and early stopping are chosen
on the ``tune`` images (``tune.split: train_slice``: training images held back from training) or, by default,
on ``val``. The run folder's ``val_images.json`` (:func:`split_record`) lists which image files served which
purpose, so that ``maskkit eval --model`` never scores training images silently (:func:`held_out`).

The training order is a seeded permutation per epoch (``seed + epoch``), sharded across ranks and
cut into batches by :class:`EpochBatchSampler`, which can start mid-epoch: a resumed run skips the
batches it has already seen and continues with exactly the same data order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from maskkit.config import TrainConfig
from maskkit.data.annotations import AnnotationSet, Category, ImageRecord
from maskkit.data.dataset import collate_fn
from maskkit.data.images import decode_image_bytes, read_image
from maskkit.data.splits import load_dataset, load_split, merge_categories
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
    tune: AnnotationSet | None = None
    """Training images held back for the run's choices (``tune.split: train_slice``); None: val makes them."""
    unlabeled: AnnotationSet | None = None
    """The images of ``data.unlabeled`` (no instances) for semi-supervised training; None without it."""

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
    return _split(aset, records, val_idx)


def hold_out(aset: AnnotationSet, n: int, seed: int) -> tuple[AnnotationSet, AnnotationSet]:
    """``(rest, held)``: ``n`` images taken by a permutation seeded with ``seed`` (independent of file order)."""
    records = sorted(aset.images, key=lambda r: (r.id, r.file_name))
    if not 0 < n < len(records):
        raise ConfigError(f"tune.images {n} must be at least 1 and fewer than the {len(records)} training images")
    return _split(aset, records, set(np.random.default_rng(seed).permutation(len(records))[:n].tolist()))


def _split(aset: AnnotationSet, records: list[ImageRecord], chosen: set[int]) -> tuple[AnnotationSet, AnnotationSet]:
    rest = [r for i, r in enumerate(records) if i not in chosen]
    held = [r for i, r in enumerate(records) if i in chosen]
    return replace(aset, images=rest), replace(aset, images=held)


def load_train_data(cfg: TrainConfig) -> TrainData:
    """Read ``cfg.data.path`` (dataset YAML or any source) into train/val sets."""
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
    tune = None
    if cfg.tune.split == "train_slice":
        train, tune = hold_out(train, cfg.tune.images, cfg.seed)
    categories = merge_categories([s for s in (train, val, tune) if s is not None])
    if not categories:
        raise DataError("the dataset defines no categories", file=cfg.data.path)

    def fix(s: AnnotationSet | None) -> AnnotationSet | None:
        return replace(s, categories=categories) if s is not None else None

    train, val, tune = replace(train, categories=categories), fix(val), fix(tune)
    unlabeled = None
    if cfg.data.unlabeled:
        from maskkit.data.unlabeled import load_unlabeled

        unlabeled = replace(load_unlabeled(cfg.data.unlabeled, cfg.data.allow_outside_root), categories=categories)
    skipped: list[str] = []
    if cfg.data.skip_bad_images:
        train = drop_undecodable(train, skipped)
        val, tune, unlabeled = (drop_undecodable(s, skipped) if s is not None else None
                                for s in (val, tune, unlabeled))
        if not train.images:
            raise DataError("no train image decodes (data.skip_bad_images dropped them all)", file=cfg.data.path)
        if unlabeled is not None and not unlabeled.images:
            raise DataError("no unlabeled image decodes (data.skip_bad_images dropped them all)",
                            file=cfg.data.unlabeled)
    return TrainData(train, val, categories, source, tune=tune, skipped=skipped, unlabeled=unlabeled)


def decode_problem(aset: AnnotationSet, record: ImageRecord) -> str | None:
    """Why the record's image fails to decode as training reads it (``"file: problem"``), or ``None``."""
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


RUN_IMAGES = "val_images.json"
"""The run-folder file listing which images the run trained on (``train_images``, and ``unlabeled_images``
without labels), chose on (``tune_images``) and left for evaluation (``images``), each with its resolved path."""


def split_record(data: TrainData, cfg: TrainConfig) -> dict[str, Any]:
    """The ``val_images.json`` dict of a run: the val images (``images``), the tuning slice and the training
    images, by id, file name and resolved path (paths are matched by file, however they are spelled)."""

    def entries(aset: AnnotationSet | None) -> list[dict[str, Any]]:
        if aset is None:
            return []
        return [{"id": r.id, "file_name": r.file_name, "path": str(aset.image_path(r))} for r in aset.images]

    return {
        "source": data.val_source, "seed": cfg.seed, "val_fraction": cfg.data.val_fraction,
        "val_split": cfg.data.val_split, "tune_split": cfg.tune.split,
        "images": entries(data.val), "tune_images": entries(data.tune), "train_images": entries(data.train),
        "unlabeled_images": entries(data.unlabeled),
    }


@dataclass
class HeldOut:
    """What :func:`held_out` kept of an evaluation set and why."""

    images: AnnotationSet
    contains_training_images: bool
    """True when it cannot tell which images the run trained on (then nothing was removed)."""
    note: str | None


def images_to_score(data: str | Path, split: str, model: str | Path, allow_outside_root: bool = False) -> HeldOut:
    """The images of ``data`` (its ``split``, or its only split) to score the run of ``model`` (a run folder or a
    checkpoint in one) on: :func:`held_out` of them."""
    model = Path(model)
    return held_out(load_split(data, split, allow_outside_root=allow_outside_root),
                    model if model.is_dir() else model.parent)


def held_out(aset: AnnotationSet, run_dir: Path) -> HeldOut:
    """The images of ``aset`` a run may be scored on: when ``aset`` holds images the run (``run_dir``) trained or
    chose on, exactly the run's val images (``val_images.json``), matched by resolved file path; otherwise all
    of them. Without a ``val_images.json`` that lists the training images, all of them, flagged."""
    import json

    path = Path(run_dir) / RUN_IMAGES
    try:
        record = json.loads(path.read_text())
        used = {e["path"] for key in ("train_images", "tune_images") for e in record[key]}
        used |= {e["path"] for e in record.get("unlabeled_images", [])}  # trained on without labels
        val = {e["path"] for e in record["images"]}
    except (OSError, ValueError, KeyError, TypeError):
        return HeldOut(aset, True, f"cannot tell which images the model was trained on ({path} is missing or "
                                   "lists no training images): the scores may include training images")
    paths = {r.id: str(aset.image_path(r)) for r in aset.images}
    trained = sum(p in used for p in paths.values())
    if not trained:
        return HeldOut(aset, False, None)
    kept = [r for r in aset.images if paths[r.id] in val]
    if not kept:
        raise ConfigError(f"every image of the evaluation data was used to train the model ({trained} images) "
                          f"and none is among its val images ({path}); evaluate on its val or test split")
    return HeldOut(replace(aset, images=kept), False,
                   f"the data holds {trained} images the model was trained or tuned on: scoring the "
                   f"{len(kept)} val images listed in {path}")


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


def make_loader(dataset: Dataset[Any], sampler: Sampler[list[int]], workers: int, seed: int) -> DataLoader[Any]:
    """A DataLoader over ``sampler``'s batches; its own generator keeps the global RNG untouched."""
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False)
