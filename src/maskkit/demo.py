"""``maskkit demo``: synthetic data -> training -> evaluation -> overlays, in a few CPU minutes.

:func:`run_demo` writes the synthetic shapes dataset to ``OUT/data`` in three splits: ``train``, ``val``
and ``test`` (a disjoint image stream). It trains through the normal engine
(:func:`maskkit.engine.api.train`, run folder ``OUT``); every choice is made on val: the post-processing
thresholds (27 combinations, all logged to ``tuning.csv``), ``best.pt`` and any early stopping; the recipe
itself (inference size, ``SECONDARY_CLASS_MIN``, ``SCORE_HALF_AREA``) was chosen on the demo's val images too.
So the demo reports the **test** split, used for nothing else: ``metrics.json`` (the val figures beside them
under ``"val"``, marked ``tuned_on``), ``per_class.csv``, PR curves and ground truth beside predictions for a
few test images (``overlays.png``). The recipes (:data:`DEMO_RECIPES`, also
``configs/demo*.yaml``) are tuned for a 2-core CPU: small images, a pretrained EfficientNet-Lite0
encoder and a wall-clock budget that ends the LR schedule on time. The default model is the bottom-up
U-Net (no RoIs, full-resolution masks); ``--model maskrcnn_effl0_fpn`` trains Mask R-CNN (narrow FPN,
few sampled RoIs) through the same engine.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maskkit.data.splits import load_dataset
from maskkit.data.synth import split_counts, write_splits
from maskkit.errors import ConfigError
from maskkit.evaluation import InstanceEvaluator, inference_on_dataset, write_outputs
from maskkit.evaluation.results import image_loader
from maskkit.fileio import atomic_write_png
from maskkit.inference.visualize import caption, class_colour, draw_instances, overlay_grid
from maskkit.models import model_info

if TYPE_CHECKING:
    import numpy as np

    from maskkit.config import TrainConfig

DEMO_IMAGES = 250
"""Synthetic train + val images of the demo (:data:`DEMO_VAL_FRACTION` of them val)."""
DEMO_TEST_IMAGES = 60
"""Synthetic test images of the demo (a disjoint image stream, see :data:`maskkit.data.synth.TEST_INDEX_OFFSET`)."""
DEMO_SIZE = 160
"""Synthetic image size (square, pixels) and training size of the demo."""
DEMO_VAL_FRACTION = 0.2
OVERLAY_IMAGES = 8

_COMMON: dict[str, Any] = {
    "augment": {"min_size": [DEMO_SIZE], "max_size": None, "hflip": 0.5, "vflip": 0.5},
    "output": {"tensorboard": False},
    "deterministic": False,
    "threads": None,
}
DEMO_RECIPES: dict[str, dict[str, Any]] = {
    "bottomup_effl0": {
        "model": {"name": "bottomup_effl0", "min_size": 256},
        "data": {"batch_size": 4},
        **copy.deepcopy(_COMMON),
        "optim": {"optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0001, "warmup_steps": 20,
                  "scheduler": "cosine"},
        "schedule": {"epochs": 400, "val_every": 1000, "val_loss": False, "max_minutes": 4.75},
    },
    "maskrcnn_effl0_fpn": {
        "model": {
            "name": "maskrcnn_effl0_fpn",
            "anchor_sizes": [16, 32, 64, 128, 256],
            "trainable_backbone_layers": 3,
            "options": {
                "fpn_channels": 32, "box_batch_size_per_image": 32, "rpn_batch_size_per_image": 64,
                "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
                "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 200,
            },
        },
        "data": {"batch_size": 4},
        **copy.deepcopy(_COMMON),
        "optim": {"optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0001, "warmup_steps": 20,
                  "scheduler": "cosine"},
        "schedule": {"epochs": 30, "val_every": 100, "val_loss": False, "max_minutes": 4.75},
    },
}
"""The demo's training config per model (``configs/demo.yaml`` holds the default model's,
``configs/demo-maskrcnn.yaml`` Mask R-CNN's); ``data.path``/``output.out`` are set per run.
``threads: null`` lets the demo pick them from the machine's load (:func:`free_cores`)."""
DEMO_MODEL = "bottomup_effl0"
"""The default demo model: on a 2-core CPU it reaches the highest mask AP within the budget."""
DEMO_RECIPE = DEMO_RECIPES[DEMO_MODEL]

_EFFL0_ONLY_OPTIONS = ("fpn_channels",)


@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    out: Path
    metrics: dict[str, Any]
    """The test split's metrics (``metrics.json``; the val figures under ``"val"``)."""
    train_images: int
    val_images: int
    test_images: int
    epochs: int
    planned_epochs: int
    steps: int
    train_seconds: float
    total_seconds: float
    checkpoint: Path
    files: dict[str, Path] = field(default_factory=dict)

    def metric(self, iou_type: str, key: str, split: str = "test") -> float | None:
        """A test metric (``split="val"``: the val one, which the thresholds and checkpoint were chosen on)."""
        metrics = self.metrics if split == "test" else self.metrics.get("val", {})
        value = metrics.get(iou_type, {}).get(key)
        return float(value) if isinstance(value, int | float) and value >= 0 else None


def free_cores(window: float = 0.5) -> int:
    """CPU cores not busy with other work right now (idle share over ``window`` seconds), at least 1.

    Torch threads that share a core with another busy process wait for each other at every
    parallel region; on a loaded 2-core machine one thread trains several times faster than two.
    Reads ``/proc/stat`` (Linux); elsewhere all cores.
    """
    import os

    cores = os.cpu_count() or 1

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(window)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return cores
    idle = (idle1 - idle0) / max(total1 - total0, 1) * cores
    return max(1, min(cores, int(idle + 0.5)))


def recipe_for(model: str | None = None) -> dict[str, Any]:
    """The demo recipe of ``model`` (default :data:`DEMO_MODEL`): its own, else that of a demo model of the
    same family (``maskrcnn_r18_fpn`` trains with Mask R-CNN's), else the default one, renamed."""
    name = model or DEMO_MODEL
    if name in DEMO_RECIPES:
        return copy.deepcopy(DEMO_RECIPES[name])

    family = model_info(name).family
    same = [r for n, r in DEMO_RECIPES.items() if model_info(n).family == family]
    base = copy.deepcopy(same[0] if same else DEMO_RECIPE)
    _rename(base, name)
    if not same:
        base["model"].pop("options", None)
    return base


def _rename(recipe: dict[str, Any], model: str) -> None:
    """Point a recipe at another model, dropping options only the recipe's own backbone has."""
    recipe["model"]["name"] = model
    opts = recipe["model"].get("options", {})
    recipe["model"]["options"] = {k: v for k, v in opts.items() if k not in _EFFL0_ONLY_OPTIONS}


def demo_config(
    data_yaml: str | Path,
    out: str | Path,
    config: str | Path | dict[str, Any] | None = None,
    size: int | None = None,
    epochs: int | None = None,
    minutes: float | None = None,
    model: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TrainConfig:
    """The resolved ``TrainConfig`` of a demo run (the recipe, or ``config``, plus the flags; ``size`` is
    the training size, as the data is generated at it)."""
    from maskkit.engine.api import resolve_config  # deferred: torch

    base = recipe_for(model) if config is None else copy.deepcopy(config)
    if isinstance(base, dict):  # a config file keeps --model as an override below
        if model is not None and model != base.get("model", {}).get("name"):
            _rename(base, model)
        model = None
    test_size = base.get("model", {}).get("min_size") if isinstance(base, dict) else None
    overrides = {
        "data.path": str(data_yaml), "output.out": str(out), "seed": seed, "model.name": model,
        "schedule.epochs": epochs, "schedule.max_minutes": minutes, "output.progress": progress,
        "augment.min_size": [size] if size else None,
        # the recipe's inference size is for DEMO_SIZE data: keep its ratio to the data size
        "model.min_size": round(test_size * size / DEMO_SIZE) if size and test_size else None,
    }
    cfg = resolve_config(base, overrides)
    if cfg.threads is None and cfg.device in ("cpu", "auto"):
        cfg.threads = free_cores()
    return cfg


def run_demo(
    out: str | Path = "runs/demo",
    images: int = DEMO_IMAGES,
    size: int = DEMO_SIZE,
    epochs: int | None = None,
    minutes: float | None = None,
    model: str | None = None,
    seed: int = 0,
    config: str | Path | dict[str, Any] | None = None,
    progress: bool = True,
    overlays: int = OVERLAY_IMAGES,
    test_images: int = DEMO_TEST_IMAGES,
) -> DemoResult:
    """Generate, train, evaluate on test and draw (see the module docstring); returns the numbers and files.

    ``images`` are the train + val images (:data:`DEMO_VAL_FRACTION` val); ``test_images`` come on top."""
    from maskkit.engine.api import train  # deferred: torch
    from maskkit.inference.predictor import load  # deferred: torch

    start = time.perf_counter()
    out = Path(out)
    data_dir = out / "data"
    n_train, n_val, _ = split_counts(images, DEMO_VAL_FRACTION)
    if test_images < 1:
        raise ConfigError(f"--test-images must be at least 1 (the demo reports the test split), got {test_images}")
    write_splits(data_dir, n_train, n_val, test_images, size=size, seed=seed)
    cfg = demo_config(data_dir / "dataset.yaml", out, config, size, epochs, minutes, model, seed, progress)
    t0 = time.perf_counter()
    result = train(cfg)
    train_seconds = time.perf_counter() - t0
    checkpoint = result.best or result.last
    val = _chosen_on(checkpoint)
    predictor = load(checkpoint, device="cpu" if cfg.device == "cpu" else "auto")
    metrics, files = _evaluate(predictor, data_dir / "dataset.yaml", out, overlays, val)
    if (out / "curves.png").is_file():
        files["curves"] = out / "curves.png"
    return DemoResult(out=out, metrics=metrics, train_images=n_train, val_images=n_val, test_images=test_images,
                      epochs=result.epochs, planned_epochs=cfg.schedule.epochs, steps=result.steps,
                      train_seconds=train_seconds, total_seconds=time.perf_counter() - start, checkpoint=checkpoint,
                      files=files)


def _chosen_on(checkpoint: Path) -> dict[str, Any]:
    """The val metrics the checkpoint carries (of the validation it was saved at: val is where its thresholds
    were tuned and it was selected), as ``{"segm": {"AP": ...}, "bbox": {...}, "tuned_on": True}``."""
    from maskkit.models.checkpoint import load_checkpoint  # deferred: torch

    val: dict[str, Any] = {"tuned_on": True}
    for dotted, value in (load_checkpoint(checkpoint).get("metrics") or {}).items():
        iou_type, _, key = dotted.partition(".")
        val.setdefault(iou_type, {})[key] = value
    return val


def _evaluate(predictor: Any, data_yaml: Path, out: Path, overlays: int,
              val: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path]]:
    """Predict the test split: COCO metrics (``val`` added under ``"val"``) and report files into ``out``, and
    the overlay grid."""
    test = load_dataset(data_yaml).splits["test"]
    evaluator = InstanceEvaluator(test.categories, extras=("matching", "confusion"))
    load_image = image_loader(test)
    shown: list[tuple[Any, np.ndarray | None, Any]] = []

    def predict(batch: list[Any]) -> list[Any]:
        out = []
        for rec in batch:
            image = load_image(rec.id)
            out.append(predictor.predict(image))
            if len(shown) < overlays:
                shown.append((rec, image, out[-1]))
        return out

    metrics = {"split": "test", **inference_on_dataset(predict, ([rec] for rec in test.images), evaluator),
               "val": val}
    paths = write_outputs(out, metrics, evaluator, load_image, gallery_size=4)
    files = {p.stem: p for p in paths}
    if shown:
        files["overlays"] = write_overlays(out / "overlays.png", shown, {c.id: c.name for c in test.categories})
    return metrics, files


def write_overlays(path: Path, items: list[tuple[Any, Any, Any]], names: dict[int, str],
                   score_threshold: float = 0.5) -> Path:
    """A PNG grid: for each ``(record, image, prediction)``, ground truth beside predictions >= threshold."""
    import numpy as np

    colours = {cid: class_colour(i) for i, cid in enumerate(sorted(names))}
    panels = []
    for rec, image, pred in items:
        keep = pred[np.asarray(pred.scores) >= score_threshold]
        gt = draw_instances(image, rec.instances, names, colours)
        dt = draw_instances(image, keep, names, colours)
        gap = np.full((gt.shape[0], 4, 3), 255, np.uint8)
        pair = np.hstack([gt, gap, dt])
        panels.append(caption(pair, f"{rec.file_name}: ground truth ({len(rec.instances)})  |  "
                                    f"predicted ({len(keep)}, score >= {score_threshold:g})"))
    atomic_write_png(path, overlay_grid(panels, cols=2, gap=10))
    return path


def print_summary(result: DemoResult, console: Any = None) -> None:
    """A short rich table: data, training, accuracy and where the files are."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}"

    table = Table(title="maskkit demo", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("images", f"{result.train_images} train / {result.val_images} val / {result.test_images} test "
                            "(synthetic shapes)")
    stop = "" if result.epochs >= result.planned_epochs else f" of {result.planned_epochs} (time budget)"
    table.add_row("epochs", f"{result.epochs}{stop}, {result.steps} steps")
    table.add_row("train time", f"{result.train_seconds:.0f} s (total {result.total_seconds:.0f} s)")
    table.add_row("mask AP (test)", pct(result.metric("segm", "AP")))
    table.add_row("mask AP50 (test)", pct(result.metric("segm", "AP50")))
    table.add_row("box AP (test)", pct(result.metric("bbox", "AP")))
    table.add_row("mask AP (val, tuned on)", pct(result.metric("segm", "AP", split="val")))
    table.add_row("checkpoint", str(result.checkpoint))
    for key in ("metrics", "overlays", "curves"):
        if key in result.files:
            table.add_row(key, str(result.files[key]))
    console.print(table)
