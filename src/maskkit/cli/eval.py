"""``maskkit eval``: score predictions against ground truth (COCO AP, matching, PQ, Boundary AP).

Three sources of predictions: a COCO results file (``--gt`` + ``--pred``), instance-label image
folders (``--gt-labels`` + ``--pred-labels``), or a checkpoint run on a dataset (``--model`` +
``--data``). The logic lives in :mod:`maskkit.evaluation`.

``--model`` never scores training images silently: when the data holds images the run trained (or chose)
on, only the run's val images (``val_images.json``, matched by resolved file path) are scored; when the run
folder does not say what it trained on, stderr and ``metrics.json`` (``"contains_training_images": true``)
say so. ``--ray`` predicts on Ray (:mod:`maskkit.inference.distributed`) and evaluates the results here as
they stream in, in the images' order: the metrics equal the single-process run's.
"""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path
from typing import Any

import typer

import maskkit.inference
from maskkit.errors import ConfigError
from maskkit.evaluation import InstanceEvaluator, inference_on_dataset
from maskkit.evaluation.label_folders import read_label_folders
from maskkit.evaluation.report import EvalFigures, print_report, write_outputs
from maskkit.evaluation.results import image_loader, read_results_source, readable
from maskkit.inference.distributed import ray_settings
from maskkit.perf import gc_paused
from maskkit.structures import Instances


def command(
    gt: Path | None = typer.Option(None, "--gt", help="Ground truth: COCO JSON or any readable annotation source."),
    pred: Path | None = typer.Option(None, "--pred", help="COCO results JSON (list of detections) to score."),
    gt_labels: Path | None = typer.Option(None, "--gt-labels", help="Folder of GT instance-label images."),
    pred_labels: Path | None = typer.Option(None, "--pred-labels", help="Folder of predicted instance-label images."),
    model: Path | None = typer.Option(None, "--model", help="Checkpoint, run folder or exported model (needs "
                                      "--data)."),
    data: Path | None = typer.Option(None, "--data", help="dataset.yaml or annotation source for --model."),
    split: str = typer.Option("val", "--split", help="Split of a dataset.yaml for --model."),
    out: Path | None = typer.Option(None, "--out", help="Write metrics.json, CSVs and plots to this folder."),
    max_dets: str = typer.Option("1,10,100", "--max-dets", help="COCO max detections, e.g. 1,100,1000 for nuclei."),
    score_threshold: float = typer.Option(0.5, "--score-threshold",
                                          help="Min score for matching/PQ/confusion (AP uses all)."),
    boundary: bool = typer.Option(True, "--boundary/--no-boundary", help="Compute Boundary AP."),
    semantic: bool = typer.Option(False, "--semantic", help="Also score painted class maps (mIoU)."),
    backend: str = typer.Option("faster", "--backend", help="COCO backend: faster (faster-coco-eval) or pycocotools."),
    gallery: int = typer.Option(8, "--gallery", help="Errors per kind in error_gallery.png (0: none)."),
    tta: bool = typer.Option(False, "--tta", help="With --model: test-time augmentation over flips, merged at "
                             "mask level."),
    tta_scales: str | None = typer.Option(None, "--tta-scales", help="With --model: TTA scales, e.g. 0.75,1,1.25."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Accept image paths of --data/--gt "
                                            "that resolve outside the dataset root."),
    ray: str | None = typer.Option(None, "--ray", help="With --model: predict on Ray (auto, a Ray address or "
                                   "local:N), evaluate here as results stream in. Needs maskkit[ray]."),
    ray_workers: int | None = typer.Option(None, "--ray-workers", help="With --ray: actors, one model each."),
    ray_cpus: int = typer.Option(1, "--ray-cpus", help="With --ray: CPUs (and torch threads) per worker."),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus", help="With --ray: GPUs per worker."),
) -> None:
    """Evaluate instance predictions: COCO box/mask AP, matching F1/AJI, PQ, Boundary AP."""
    modes = {"--gt/--pred": gt or pred, "--gt-labels/--pred-labels": gt_labels or pred_labels,
             "--model/--data": model or data}
    chosen = [k for k, v in modes.items() if v]
    if len(chosen) != 1:
        raise ConfigError("give exactly one of --gt with --pred, --gt-labels with --pred-labels, "
                          "or --model with --data")
    if backend not in ("faster", "pycocotools"):
        raise ConfigError(f"--backend must be faster or pycocotools, got {backend!r}")
    try:
        dets = [int(v) for v in max_dets.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--max-dets must be comma-separated integers, got {max_dets!r}") from None
    extras = ["matching", "panoptic", "confusion"]
    extras += (["boundary"] if boundary else []) + (["semantic"] if semantic else [])
    areas = "detectron2"  # predictions' areas for the size buckets; a results file: as pycocotools reads it
    if ray is not None and chosen[0] != "--model/--data":
        raise ConfigError("--ray goes with --model and --data")
    distributed = ray_settings(ray, ray_workers, ray_cpus, ray_gpus)

    stack = contextlib.ExitStack()
    # the figures are drawn by a worker process started now: matplotlib imports while the files are read
    figures = stack.enter_context(EvalFigures(out)) if out is not None else None
    if chosen[0] != "--model/--data":
        # scoring files builds millions of small objects and no cycles: collector passes would only cost
        # time, also after the command (over everything built, which lives until exit): frozen out of them
        stack.enter_context(gc_paused())
        stack.callback(gc.freeze)
    try:
        if chosen[0] == "--model/--data":
            from maskkit.inference.tta import parse_scales  # deferred: torch

            scales = parse_scales(tta_scales)
            aset, predict, notes, contains_training = _model_source(model, data, split, tta or scales is not None,
                                                                    scales, allow_outside_root)
            preds: Any = None
            remote: Any = None
            if distributed is not None:  # predicted on Ray, in the records' order, one at a time
                from maskkit.inference.distributed import predict_records, ray_session  # deferred: torch

                stack.enter_context(ray_session(distributed))
                remote = predict_records(aset.images, aset.image_path, Path(str(model)).resolve(),
                                         _predictor_options(tta or scales is not None, scales), distributed)
                stack.callback(remote.close)  # before the session ends
        elif chosen[0] == "--gt/--pred":
            aset, preds, notes, areas = _results_source(gt, pred, allow_outside_root)
        else:
            aset, preds, notes = _label_source(gt_labels, pred_labels)
        ev = InstanceEvaluator(aset.categories, max_dets=dets, extras=extras, score_threshold=score_threshold,
                               backend=backend, detection_areas=areas)
        ev.notes += notes
        if figures is not None:
            figures.attach(ev)
        load_image = image_loader(aset)

        def outputs(batch: list[Any]) -> list[Any]:
            if preds is not None:
                return [preds.get(rec.id) or _empty(rec) for rec in batch]
            out = []
            for rec in batch:
                if remote is not None:  # predicted on Ray, in the records' order
                    out.append(readable(next(remote), aset, rec))
                else:
                    out.append(predict(readable(load_image(rec.id), aset, rec)))
            return out

        batches = ([rec] for rec in aset.images) if preds is None else [aset.images]
        metrics = inference_on_dataset(outputs, batches, ev)
        if chosen[0] == "--model/--data":
            metrics["contains_training_images"] = contains_training
        if out is not None:
            plain_labels = gt_labels is not None and not (gt_labels / "images").is_dir()  # no image files at all
            paths = write_outputs(out, metrics, ev, None if plain_labels else load_image, gallery_size=gallery,
                                  figures=figures)
        print_report(metrics)
        if out is not None:
            typer.echo(f"wrote {len(paths)} files to {out}: " + ", ".join(p.name for p in paths))
    finally:
        stack.close()


def _predictor_options(tta: bool, tta_scales: list[float] | None) -> dict[str, Any]:
    """The Predictor's options for ``--model`` (the same in this process and in each Ray worker)."""
    from maskkit.inference.tta import FLIPS  # deferred: torch

    return {"tta": True, "tta_scales": tta_scales, "tta_flips": FLIPS} if tta else {}


def _empty(rec: Any) -> Any:
    return Instances.empty((rec.height, rec.width), with_masks=rec.instances.has("masks"))


def _results_source(gt: Path | None, pred: Path | None, allow_outside_root: bool = False
                    ) -> tuple[Any, Any, list[str], str]:
    if gt is None or pred is None:
        raise ConfigError("--gt and --pred go together")

    return read_results_source(gt, pred, allow_outside_root)


def _label_source(gt_labels: Path | None, pred_labels: Path | None) -> tuple[Any, Any, list[str]]:
    if gt_labels is None or pred_labels is None:
        raise ConfigError("--gt-labels and --pred-labels go together")

    return read_label_folders(gt_labels, pred_labels)


def _model_source(model: Path | None, data: Path | None, split: str, tta: bool,
                  tta_scales: list[float] | None, allow_outside_root: bool = False
                  ) -> tuple[Any, Any, list[str], bool]:
    """The images to score, a ``predict(image) -> Instances`` (labels = dataset category ids), notes and whether
    the images may include training images (see the module docstring)."""
    if model is None or data is None:
        raise ConfigError("--model and --data go together")
    options = _predictor_options(tta, tta_scales)
    # a checkpoint or run folder runs through PyTorch, an exported model through its runtime backend
    predictor = maskkit.inference.load(model, **options)
    from maskkit.engine.data import images_to_score  # deferred: torch

    kept = images_to_score(data, split, model, allow_outside_root)
    if kept.contains_training_images:
        typer.echo(f"warning: {kept.note}", err=True)
    return kept.images, predictor.predict, [kept.note] if kept.note else [], kept.contains_training_images
