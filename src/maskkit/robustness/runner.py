"""``run_robustness``: a model scored on clean, corrupted and attacked images, condition by condition, resumable.

Each condition streams its images through the model into a fresh
:class:`~maskkit.evaluation.InstanceEvaluator` (:func:`~maskkit.evaluation.inference_on_dataset`, as ``maskkit
eval --model`` does, on the same images: :func:`~maskkit.engine.data.images_to_score` keeps a run's val images).
Every image goes through the model's own input conversion first
(:func:`~maskkit.inference.common.image_tensor`: channels, normalisation); a corruption is applied to that
``[0, 1]`` image through 8 bits (:mod:`maskkit.data.corruptions`, seeded per image and corruption), an attack
perturbs it on the model's own training loss (:mod:`maskkit.engine.adversarial`, targets resized as the training
config's evaluation resize makes them). The clean condition is therefore ``maskkit eval --model`` itself.

A finished condition is written atomically to ``conditions/<key>.json`` with a fingerprint of the run (model
file, data, images, options); a rerun skips the conditions whose file matches, so a killed run resumes.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import maskkit.inference
from maskkit.data.corruptions import applicable, corrupt_tensor
from maskkit.engine.adversarial import attack, model_loss
from maskkit.engine.data import images_to_score
from maskkit.errors import ConfigError, DataError
from maskkit.evaluation import InstanceEvaluator, inference_on_dataset
from maskkit.evaluation.results import image_loader, readable
from maskkit.fileio import atomic_write_json
from maskkit.inference.backends.artefact import is_exported
from maskkit.inference.common import image_tensor
from maskkit.inference.distributed import RaySettings
from maskkit.robustness.conditions import (
    Condition,
    build_conditions,
    image_seed,
    parse_attacks,
    parse_eps,
    parse_severities,
)
from maskkit.robustness.report import scalar_metrics, summarize, write_plots

FORMAT = 1
"""Version of the files written (a saved condition of another version is recomputed)."""


@dataclass
class RobustnessResult:
    """What :func:`run_robustness` wrote and found."""

    out: Path
    report: dict[str, Any]
    """The ``robustness.json`` dict."""
    computed: list[str] = field(default_factory=list)
    """Keys of the conditions evaluated by this call (the others were resumed from their files)."""
    plots: list[Path] = field(default_factory=list)


def _model_stamp(model: Path) -> dict[str, Any]:
    """The model file that is loaded (a run folder's best.pt, else last.pt) with its size and mtime."""
    path = model
    if model.is_dir():
        path = next((model / n for n in ("best.pt", "last.pt") if (model / n).is_file()), model)
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class _Attacker:
    """The model of a checkpoint in PyTorch and each image's training target, for the attacks."""

    def __init__(self, model: Path, aset: Any, steps: int, seed: int) -> None:
        from maskkit.data.dataset import InstanceDataset
        from maskkit.models.factory import model_from_checkpoint, uses_semantic_targets

        loaded = model_from_checkpoint(model)
        self.net = loaded.model.eval()
        cfg = loaded.config
        self.weights = dict(cfg.loss_weights)
        self.ds = InstanceDataset.from_config(aset, cfg.augment, train=False, semantic=uses_semantic_targets(cfg))
        self.index = {rec.id: i for i, rec in enumerate(aset.images)}
        self.steps, self.seed = steps, seed

    def __call__(self, cond: Condition, image_id: int, x: torch.Tensor) -> torch.Tensor:
        resized, target = self.ds[self.index[image_id]]
        size = (int(resized.shape[-2]), int(resized.shape[-1]))
        loss = model_loss(self.net, [target], self.weights, sizes=[size])
        seed = image_seed(self.seed, image_id, cond.name)
        # Mask R-CNN samples proposals in train mode: from a generator seeded per image, so that the attack (and
        # the metrics) repeat; the caller's random state is left as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return attack(cond.name, loss, [x], cond.eps, self.steps, generator=torch.Generator().manual_seed(seed))[0]


def run_robustness(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    split: str = "val",
    corruptions: str | Sequence[str] | None = None,
    severities: str | Sequence[int] | None = None,
    attacks: str | Sequence[str] | None = "fgsm,pgd",
    eps: str | Sequence[str | float] | None = None,
    pgd_steps: int = 10,
    seed: int = 0,
    max_dets: Sequence[int] = (1, 10, 100),
    score_threshold: float = 0.5,
    backend: str = "faster",
    allow_outside_root: bool = False,
    plots: bool = True,
    ray: RaySettings | None = None,
    log: Callable[[str], None] | None = None,
) -> RobustnessResult:
    """Score ``model`` on ``data`` clean, under each corruption x severity and each attack x eps (module
    docstring); write ``out/robustness.json``, ``out/conditions/*.json`` and the plots. ``corruptions``: names
    or groups (None: all; ``none``: no corruption); ``attacks`` None or empty: none. ``ray``: predict the clean and
    corrupted images on Ray (:mod:`maskkit.inference.distributed`; attacks, which need gradients, run here)."""
    model, out = Path(model), Path(out)
    say = log or (lambda _msg: None)
    names_attacks = parse_attacks(attacks)
    sevs = parse_severities(severities)
    eps_values = parse_eps(eps)
    if pgd_steps < 1:
        raise ConfigError(f"--pgd-steps must be at least 1, got {pgd_steps}")
    if names_attacks and is_exported(model):
        raise ConfigError(f"{model}: attacks need the model's gradients: give its checkpoint or run folder, not an "
                          "exported model (or --attacks none)")
    conditions = build_conditions(corruptions, sevs, names_attacks, eps_values)
    predictor = maskkit.inference.load(model)
    kept = images_to_score(data, split, model, allow_outside_root)
    if kept.contains_training_images:
        say(f"warning: {kept.note}")
    aset = kept.images
    if not aset.images:
        raise DataError("no images to score", file=data)
    fingerprint = {"format": FORMAT, "model": _model_stamp(model), "data": str(Path(data).resolve()), "split": split,
                   "images": [r.id for r in aset.images], "seed": seed, "pgd_steps": pgd_steps,
                   "max_dets": list(max_dets), "score_threshold": score_threshold, "backend": backend}
    load_image = image_loader(aset)
    channels = int(image_tensor(_first_image(aset, load_image), predictor.config).shape[0])
    attacker: _Attacker | None = None
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    computed: list[str] = []
    (out / "conditions").mkdir(parents=True, exist_ok=True)
    todo = [c for c in conditions if c.kind != "corruption" or applicable(c.name, channels)]
    for c in conditions:
        if c not in todo:
            skipped[c.key] = f"{c.name} needs RGB images; the model takes {channels} channel(s)"
    saved = {c.key: _load_condition(out / "conditions" / f"{c.slug}.json", fingerprint) for c in todo}
    with contextlib.ExitStack() as stack:
        remote = _remote_predictions(stack, ray, [c for c in todo if saved[c.key] is None and c.kind != "attack"],
                                     aset, model, seed)
        for n, cond in enumerate(todo, 1):
            row = saved[cond.key]
            if row is None:
                if cond.kind == "attack" and attacker is None:
                    attacker = _Attacker(model, aset, pgd_steps, seed)
                row = _evaluate(cond, aset, predictor, load_image, attacker, remote if cond.kind != "attack" else None,
                                seed, list(max_dets), score_threshold, backend)
                row = {"fingerprint": fingerprint, **row}
                atomic_write_json(out / "conditions" / f"{cond.slug}.json", row, indent=1)
                computed.append(cond.key)
                segm = row["metrics"].get("segm", {}).get("AP")
                say(f"[{n}/{len(todo)}] {cond.key}: mask AP {segm if segm is None else round(100 * segm, 1)} "
                    f"({row['seconds']} s)")
            results[cond.key] = row
    report = summarize(results, [c for c in conditions if c in todo], skipped)
    report["model"] = str(model)
    report["data"] = str(data)
    report["split"] = split
    report["images"] = len(aset.images)
    report["contains_training_images"] = kept.contains_training_images
    report["notes"] = [kept.note] if kept.note else []
    report["options"] = {"seed": seed, "pgd_steps": pgd_steps, "max_dets": list(max_dets),
                         "score_threshold": score_threshold, "eps": [label for label, _ in eps_values],
                         "severities": sevs}
    atomic_write_json(out / "robustness.json", report, indent=2)
    paths = write_plots(report, out) if plots else []
    return RobustnessResult(out, report, computed, paths)


def _evaluate(cond: Condition, aset: Any, predictor: Any, load_image: Callable[[int], np.ndarray | None],
              attacker: _Attacker | None, remote: Iterator[Any] | None, seed: int, max_dets: list[int],
              score_threshold: float, backend: str) -> dict[str, Any]:
    """One condition's row: its images streamed through the model into a fresh evaluator."""

    def predict(batch: list[Any]) -> list[Any]:
        preds = []
        for rec in batch:
            if remote is not None:  # predicted on Ray, in the same order
                preds.append(readable(next(remote), aset, rec))
                continue
            x = image_tensor(readable(load_image(rec.id), aset, rec), predictor.config)
            if cond.kind == "corruption":
                x = corrupt_tensor(x, cond.name, cond.severity, image_seed(seed, rec.id, cond.name))
            elif cond.kind == "attack":
                assert attacker is not None
                x = attacker(cond, rec.id, x)
            preds.append(predictor.predict(x))
        return preds

    ev = InstanceEvaluator(aset.categories, max_dets=max_dets, extras=["matching", "boundary"],
                           score_threshold=score_threshold, backend=backend, detection_areas="detectron2")
    t0 = time.perf_counter()
    metrics = inference_on_dataset(predict, ([rec] for rec in aset.images), ev)
    return {"key": cond.key, "kind": cond.kind, "name": cond.name, "severity": cond.severity, "eps": cond.eps,
            "eps_label": cond.eps_label, "images": len(aset.images), "seconds": round(time.perf_counter() - t0, 2),
            "metrics": scalar_metrics(metrics)}


def _remote_predictions(stack: contextlib.ExitStack, ray: RaySettings | None, conditions: list[Condition],
                        aset: Any, model: Path, seed: int) -> Iterator[Any] | None:
    """With ``ray``: one Ray stream of the predictions of every image of ``conditions`` (clean and corruptions), in
    order (the session and the stream closed by ``stack``); else None."""
    if ray is None or not conditions:
        return None
    from maskkit.inference.distributed import predict_records, ray_session

    stack.enter_context(ray_session(ray))
    records = [rec for _ in conditions for rec in aset.images]
    corruptions = [None if c.kind == "clean" else (c.name, c.severity, image_seed(seed, rec.id, c.name))
                   for c in conditions for rec in aset.images]
    stream = predict_records(records, aset.image_path, model.resolve(), {}, ray, corruptions)
    stack.callback(stream.close)
    return stream


def _first_image(aset: Any, load_image: Callable[[int], np.ndarray | None]) -> np.ndarray:
    rec = aset.images[0]
    return readable(load_image(rec.id), aset, rec)


def _load_condition(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """A saved condition when it was computed with the same fingerprint (else None: recompute it)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and saved.get("fingerprint") == fingerprint else None
