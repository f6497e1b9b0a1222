"""``maskkit select``: rank a pool of unlabeled images for labelling and pre-annotate the top K.

:func:`select` runs a checkpoint on every pool image (read through the bounded image readers, confined to the
pool folder: a file that does not decode is skipped and reported, never fatal unless nothing is left), scores
each image (:mod:`maskkit.active.uncertainty`), embeds it (:mod:`maskkit.active.probe`) and orders the pool
(:mod:`maskkit.active.ranking`). :func:`write_selection` writes, in ``OUT``:

* ``ranking.csv``: one row per image in rank order: ``image`` (path relative to the pool), ``score`` (the value
  it was picked with), ``rank`` (1 = label first), ``selected`` (1 for the top K), then the components
  ``entropy``, ``score_entropy``, ``mask_entropy``, ``margin``, ``mc_dropout`` (empty unless computed),
  ``distance`` (embedding distance to the nearest image picked before it; empty for the first pick) and
  ``instances`` (predictions at ``conf`` written as pre-annotations);
* ``labelme/``: for each of the top K, a copy of the image and its LabelMe JSON of the model's predictions
  (:func:`maskkit.inference.writers.write_labelme`), plus ``labels.txt``: open the folder in LabelMe and
  correct;
* ``coco/`` (``coco=True``): the same predictions as a COCO dataset (``annotations.json`` + ``images/``);
* ``selection.json``: the settings and the files written (a rerun with ``overwrite`` removes those first).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from maskkit.active import STRATEGIES
from maskkit.active.probe import ModelProbe
from maskkit.active.ranking import diverse_order, k_center_order, random_order
from maskkit.active.uncertainty import components, disagreement
from maskkit.data.annotations import AnnotationSet, Category, ImageRecord, new_instances
from maskkit.data.copyimages import copy_file_atomic
from maskkit.data.formats.coco import write_coco
from maskkit.data.images import read_image
from maskkit.data.paths import confined, is_inside
from maskkit.data.unlabeled import SKIPPED_DIRS
from maskkit.errors import ConfigError, DataError, MaskkitError
from maskkit.fileio import atomic_write_json, atomic_write_text
from maskkit.inference.backends.artefact import is_exported
from maskkit.inference.common import image_tensor
from maskkit.inference.filters import filter_instances
from maskkit.inference.sources import collect_sources
from maskkit.inference.writers import write_labelme, write_labelme_labels
from maskkit.models.factory import LoadedModel, model_from_checkpoint, resolve_device
from maskkit.models.outputs import to_instances
from maskkit.structures import Instances

__all__ = ["PoolImage", "Scored", "Selection", "load_model", "pool_images", "ranking_csv", "select", "write_selection"]

COLUMNS = ("image", "score", "rank", "selected", "entropy", "score_entropy", "mask_entropy", "margin", "mc_dropout",
           "distance", "instances")
MANIFEST = "selection.json"


@dataclass(frozen=True)
class PoolImage:
    """One pool image: absolute ``path``, ``rel`` (POSIX, relative to the pool) and a unique output ``key``."""

    path: Path
    rel: str
    key: str


@dataclass
class Scored:
    """One scored image: its uncertainty components, embedding and predictions (filtered at ``conf``)."""

    image: PoolImage
    components: dict[str, float]
    embedding: np.ndarray
    instances: Instances


@dataclass
class Selection:
    """The ranked pool: ``ranked`` in rank order, each with its ``score`` and pick ``distance``."""

    ranked: list[Scored]
    scores: list[float]
    distances: list[float]
    k: int
    strategy: str
    stochastic: str | None = None
    """How ``mc_dropout`` was computed (``dropout`` or ``flip-tta``; None: not computed)."""
    skipped: list[str] = field(default_factory=list)
    """``"<file>: <problem>"`` of every pool image left out."""

    @property
    def top(self) -> list[Scored]:
        return self.ranked[: self.k]


def load_model(path: str | Path) -> LoadedModel:
    """A checkpoint (file or run folder) for selection; exported models are refused (no probabilities, no
    features), an unusable file is one DataError line."""
    path = Path(path)
    if not path.exists():
        raise DataError("checkpoint not found", file=path)
    if is_exported(path):
        raise ConfigError(f"{path}: select needs a PyTorch checkpoint (.pt or a run folder), not an exported "
                          "model: it reads the network's probabilities and encoder features")
    try:
        return model_from_checkpoint(path)
    except MaskkitError:
        raise
    except Exception as exc:  # a foreign .pt: missing keys, a config that does not validate
        message = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise DataError(f"not a usable maskkit checkpoint ({type(exc).__name__}: {message})", file=path) from None


def pool_images(pool: str | Path, exclude: str | Path | None = None) -> tuple[list[PoolImage], list[str]]:
    """The images below ``pool`` (recursively, label folders such as ``masks/`` skipped as for ``--unlabeled``;
    ``exclude``: an output folder inside it) and the files left out because they resolve outside the pool."""
    pool = Path(pool)
    if not pool.is_dir():
        raise DataError("the pool must be a folder of images", file=pool)
    root = pool.resolve()
    images, skipped = [], []
    for it in collect_sources([pool], exclude=exclude):
        if it.kind != "image":
            continue
        if not is_inside(it.path, root):
            skipped.append(f"{it.path}: resolves outside the pool {root}, skipped")
            continue
        if any(part.lower() in SKIPPED_DIRS for part in it.path.relative_to(root).parts[:-1]):
            continue  # label folders (a DSB layout's masks/, labels/, annotations/): not images to rank
        images.append(PoolImage(it.path, it.path.relative_to(root).as_posix(), it.key))
    return images, skipped


def _check(strategy: str, k: int, diversity: float) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if not (math.isfinite(diversity) and diversity >= 0):
        raise ConfigError(f"the diversity weight must be >= 0, got {diversity}")


def select(
    model: str | Path | LoadedModel,
    images: Sequence[PoolImage],
    k: int,
    strategy: str = "entropy",
    diversity: float = 0.5,
    labeled: Sequence[Path] = (),
    conf: float = 0.5,
    max_det: int = 300,
    passes: int = 8,
    device: str = "cpu",
    seed: int = 0,
    pool_root: str | Path | None = None,
    on_image: Callable[[int, int], None] | None = None,
) -> Selection:
    """Score and rank ``images`` (see the module docstring).

    ``diversity``: the weight of the diversity term of the uncertainty strategies (0: none). ``labeled``:
    images already labelled: the diversity term (and ``diversity``) measures distances to them too.
    ``conf``/``max_det``: which predictions become pre-annotations (uncertainty uses every detection the
    model outputs). ``passes``: Monte Carlo dropout passes. ``pool_root``: images are only read below it.
    ``on_image(done, total)``: progress.
    """
    _check(strategy, k, diversity)
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    probe = ModelProbe(loaded.model, loaded.config, resolve_device(device), passes)
    need_mc = strategy == "mc-dropout"
    scored: list[Scored] = []
    skipped: list[str] = []
    total = len(images) + len(labeled)
    with confined(pool_root):
        for i, im in enumerate(images):
            result = _score(probe, loaded, im.path, conf, max_det, need_mc)
            if isinstance(result, str):
                skipped.append(result)
            else:
                comps, emb, inst = result
                scored.append(Scored(im, comps, emb, inst))
            if on_image is not None:
                on_image(i + 1, total)
    centers = []
    for j, path in enumerate(labeled):
        result = _score(probe, loaded, Path(path), conf, max_det, False)
        if isinstance(result, str):
            skipped.append(result)
        else:
            centers.append(result[1])
        if on_image is not None:
            on_image(len(images) + j + 1, total)
    if not scored:
        raise DataError("no pool image could be read" + (f" ({skipped[0]})" if skipped else ""),
                        file=str(pool_root) if pool_root is not None else None)
    order, scores, dists = _rank(scored, strategy, diversity, np.asarray(centers) if centers else None, seed)
    return Selection([scored[i] for i in order], [float(s) for s in scores], [float(d) for d in dists],
                     min(k, len(scored)), strategy, probe.stochastic if need_mc else None, skipped)


def _score(probe: ModelProbe, loaded: LoadedModel, path: Path, conf: float, max_det: int, need_mc: bool
           ) -> tuple[dict[str, float], np.ndarray, Instances] | str:
    """Components, embedding and filtered predictions of one image, or why it was skipped."""
    try:
        array = read_image(path)
        x = image_tensor(array, loaded.config)
    except DataError as exc:
        return str(exc)
    output, emb = probe.run(x)
    comps = components(output)
    if need_mc:
        comps["mc_dropout"] = disagreement(probe.stochastic_maps(x, output))
    size = (int(x.shape[-2]), int(x.shape[-1]))
    inst = filter_instances(to_instances(output, size, loaded.category_ids), conf, None, max_det)
    return comps, emb, inst


def _rank(scored: list[Scored], strategy: str, diversity: float, centers: np.ndarray | None, seed: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    emb = np.stack([s.embedding for s in scored])
    if strategy == "random":
        order, scores = random_order(len(scored), seed)
        return order, scores, np.full(len(order), np.nan)
    if strategy == "diversity":
        order, dists = k_center_order(emb, centers)
        return order, dists, dists
    key = {"entropy": "entropy", "margin": "margin", "mc-dropout": "mc_dropout"}[strategy]
    return diverse_order(np.asarray([s.components[key] for s in scored]), emb, diversity, centers)


# -- outputs -------------------------------------------------------------------------------------------
def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


def ranking_csv(selection: Selection) -> str:
    """The text of ``ranking.csv`` (see the module docstring)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for rank, (s, score, dist) in enumerate(zip(selection.ranked, selection.scores, selection.distances,
                                                strict=True), start=1):
        c = s.components
        writer.writerow([s.image.rel, _number(score), rank, int(rank <= selection.k), _number(c["entropy"]),
                         _number(c["score_entropy"]), _number(c["mask_entropy"]), _number(c["margin"]),
                         _number(c.get("mc_dropout")), _number(dist), len(s.instances)])
    return buf.getvalue()


def _clear_previous(out: Path, overwrite: bool) -> None:
    manifest = out / MANIFEST
    if not manifest.is_file() and not (out / "ranking.csv").is_file():
        return
    if not overwrite:
        raise ConfigError(f"{out} holds a previous selection: pass --overwrite to replace it, or choose another --out")
    try:
        files = json.loads(manifest.read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        files = []
    for rel in files:
        p = (out / str(rel)).resolve()
        if is_inside(p, out) and p.is_file():
            p.unlink()


def write_selection(selection: Selection, out: str | Path, class_names: Sequence[str], category_ids: Sequence[int],
                    coco: bool = False, overwrite: bool = False, settings: dict[str, Any] | None = None
                    ) -> list[Path]:
    """Write ``ranking.csv``, the top K as LabelMe (``labelme/``) and optionally COCO (``coco/``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out, overwrite)
    names = dict(zip(category_ids, class_names, strict=True))
    written = [out / "ranking.csv"]
    atomic_write_text(written[0], ranking_csv(selection))
    folder = out / "labelme"
    write_labelme_labels(folder, list(class_names))
    written.append(folder / "labels.txt")
    for s in selection.top:
        image = folder / f"{s.image.key}{s.image.path.suffix.lower()}"
        copy_file_atomic(s.image.path, image)
        write_labelme(folder / f"{s.image.key}.json", image, s.instances, names)
        written += [image, folder / f"{s.image.key}.json"]
    if coco:
        write_coco(_coco_set(selection, class_names, category_ids), out / "coco")
        written.append(out / "coco" / "annotations.json")
        written += [out / "coco" / "images" / s.image.rel for s in selection.top]
    manifest = {"strategy": selection.strategy, "k": selection.k, "stochastic": selection.stochastic,
                **(settings or {}), "skipped": selection.skipped,
                "files": [p.relative_to(out).as_posix() for p in written]}
    atomic_write_json(out / MANIFEST, manifest, indent=1)
    return written


def _coco_set(selection: Selection, class_names: Sequence[str], category_ids: Sequence[int]) -> AnnotationSet:
    """The top K with their predictions as an annotation set (file names relative to the pool)."""
    first = selection.top[0].image
    root = first.path.parents[len(PurePosixPath(first.rel).parts) - 1]
    records = []
    for i, s in enumerate(selection.top, start=1):
        inst, (h, w) = s.instances, s.instances.image_size
        scores = np.asarray(inst.get("scores", np.ones(len(inst))), np.float64)
        ann = new_instances(h, w, inst.labels, inst.masks if inst.has("masks") else None, inst.boxes,
                            extras=[{"score": round(float(v), 4)} for v in scores])
        records.append(ImageRecord(i, s.image.rel, h, w, ann))
    cats = [Category(int(c), str(n)) for c, n in zip(category_ids, class_names, strict=True)]
    return AnnotationSet(cats, records, image_root=root)
