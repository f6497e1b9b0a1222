"""``maskkit predict``: run a checkpoint on images, folders, globs and videos; write overlays and results.

Outputs (in ``--out``, default ``runs/predict``; see :mod:`maskkit.inference.writers` and
:mod:`maskkit.inference.video`): ``overlays/<key>.jpg``, ``predictions.json`` + ``images.json``
(COCO results and their image list), optionally ``labels/<key>.png`` and ``labelme/<key>.json``;
for a video ``<key>.mp4`` (overlays, a colour per track) and ``<key>.tracks.json``. Folders are
searched recursively. A rerun skips images whose outputs all exist (``--overwrite`` redoes them).
``--ensemble`` adds models that predict together with ``--model`` (:mod:`maskkit.inference.ensemble`).
``--ray`` predicts the images (and the tiles of huge ones) on Ray (:mod:`maskkit.inference.distributed`);
the outputs are written here, identical to a single-process run; videos stay in this process.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer

from maskkit.data.splits import load_split
from maskkit.errors import ConfigError, DataError, MaskkitError
from maskkit.inference.distributed import ray_predictions, ray_settings
from maskkit.inference.filters import FilteredPredict, parse_class_list, resolve_classes
from maskkit.inference.sources import category_id_map, collect_sources, dataset_image_ids, sequential_ids
from maskkit.inference.video import predict_video, video_outputs
from maskkit.inference.writers import ImageWriter, OutputOptions, assemble_predictions, check_settings


def command(
    sources: list[str] = typer.Argument(..., help="Images, videos, folders (searched recursively) or quoted globs."),
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint (.pt), run folder (best.pt, else last.pt) "
                        "or exported model (folder, model.onnx, model.xml, model.torchscript)."),
    ensemble: list[Path] | None = typer.Option(None, "--ensemble", help="More checkpoints or run folders that "
                                               "predict together with --model (repeatable): raw maps averaged for "
                                               "models of one dense type, instances soft-voted otherwise."),
    out: Path = typer.Option(Path("runs/predict"), "--out", "-o", help="Output folder."),
    conf: float = typer.Option(0.25, "--conf", help="Minimum score (use 0.001-0.05 for predictions meant for AP)."),
    classes: str | None = typer.Option(None, "--classes", help="Only these classes: names or ids, comma-separated."),
    max_det: int = typer.Option(300, "--max-det", help="At most this many instances per image (best scores)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
    tile: int | None = typer.Option(None, "--tile", help="Predict images larger than this in tiles of N px."),
    overlap: int = typer.Option(128, "--overlap", help="Tile overlap in px with --tile (> 2x the unreliable border)."),
    save_overlays: bool = typer.Option(True, "--save-overlays/--no-save-overlays",
                                       help="Overlay images (overlays/*.jpg) and, for videos, the overlay MP4."),
    save_json: bool = typer.Option(True, "--save-json/--no-save-json",
                                   help="predictions.json + images.json (COCO) and, for videos, <video>.tracks.json."),
    save_labels: bool = typer.Option(False, "--save-labels", help="Instance-label images (labels/*.png, 16-bit)."),
    save_labelme: bool = typer.Option(False, "--save-labelme", help="LabelMe JSON for pre-annotation (labelme/*)."),
    data: Path | None = typer.Option(None, "--data", help="Dataset the images belong to: take image ids (and "
                                     "category ids, by class name) from it so `maskkit eval --gt` can score."),
    split: str = typer.Option("val", "--split", help="Split of a multi-split --data."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Accept --data image paths that "
                                            "resolve outside its dataset root."),
    video_max_gap: int = typer.Option(15, "--video-max-gap", help="Frames a track may be missed and keep its id."),
    track_iou: float = typer.Option(0.3, "--track-iou", help="Minimum mask IoU to continue a track."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo images whose outputs exist (default: skip)."),
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation: merge predictions over flips at mask "
                             "level (about 2-4x the time)."),
    tta_scales: str | None = typer.Option(None, "--tta-scales", help="TTA scales, e.g. 0.75,1,1.25 (implies --tta)."),
    ray: str | None = typer.Option(None, "--ray", help="Predict the images (and tiles) on Ray: auto, a Ray address "
                                   "or local:N (a local instance with N CPUs); --device is then the workers'. "
                                   "Needs maskkit[ray]."),
    ray_workers: int | None = typer.Option(None, "--ray-workers", help="With --ray: actors, one model each "
                                           "(default: as many as the CPUs or GPUs allow)."),
    ray_cpus: int = typer.Option(1, "--ray-cpus", help="With --ray: CPUs (and torch threads) per worker."),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus", help="With --ray: GPUs per worker (e.g. 1, or 0.5 to share)."),
) -> None:
    """Predict instance masks on images and videos; write overlays, COCO results, label images, LabelMe JSON."""
    from maskkit.inference.tta import parse_scales  # deferred: torch
    if not 0.0 <= conf <= 1.0:
        raise ConfigError(f"--conf must be between 0 and 1, got {conf}")
    if max_det < 1:
        raise ConfigError(f"--max-det must be >= 1, got {max_det}")
    if tile is not None and tile < 32:
        raise ConfigError(f"--tile must be at least 32 px, got {tile}")
    if tile is not None and not 0 <= overlap < tile:
        raise ConfigError(f"--overlap must be >= 0 and smaller than --tile ({tile}), got {overlap}")
    if video_max_gap < 0 or not 0.0 < track_iou <= 1.0:
        raise ConfigError("--video-max-gap must be >= 0 and --track-iou in (0, 1]")
    options = OutputOptions(overlays=save_overlays, json=save_json, labels=save_labels, labelme=save_labelme)
    if not options.any():
        raise ConfigError("every output is switched off: keep --save-overlays or --save-json, or add --save-labels")
    distributed = ray_settings(ray, ray_workers, ray_cpus, ray_gpus)
    items = collect_sources(sources, exclude=out)
    scales = parse_scales(tta_scales)
    # with --ray the model here gives the class names (and runs videos): --device is the workers'
    predictor = _load_predictor(model, device if distributed is None else "auto", conf, tta or scales is not None,
                                scales)
    if ensemble:
        if distributed is not None:
            raise ConfigError("--ensemble predicts in this process: drop --ray")
        from maskkit.inference.ensemble import EnsemblePredictor  # deferred: torch

        predictor = EnsemblePredictor([predictor, *(_load_predictor(p, device, conf, tta or scales is not None, scales)
                                                    for p in ensemble)])
    keep = resolve_classes(parse_class_list(classes), predictor.category_ids, predictor.class_names, "--classes: ")
    class_names = dict(zip(predictor.category_ids, predictor.class_names, strict=True))
    settings = {"model": str(model.resolve()), "conf": conf, "classes": sorted(keep) if keep else None,
                "max_det": max_det, "tile": tile, "overlap": overlap if tile else None, "track_iou": track_iou,
                "video_max_gap": video_max_gap}
    if tta or scales:
        settings["tta"] = scales or True
    if ensemble:
        settings["ensemble"] = [str(p.resolve()) for p in ensemble]
    ids, categories, cat_map = (_image_ids(items, data, split, predictor, allow_outside_root) if save_json
                                else ({}, [], {}))

    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings, overwrite)
    predict = FilteredPredict(predictor, conf, keep, max_det, tile, overlap)
    worker_options = _predictor_options(device, conf, tta or scales is not None, scales)
    remote = contextlib.nullcontext() if distributed is None else \
        ray_predictions(distributed, predict, model.resolve(), worker_options,
                        class_names if options.overlays else None)
    with remote as on_ray:
        counts = _run(items, predict, out, class_names, options, overwrite, video_max_gap, track_iou, on_ray)
    _finish(out, items, ids, categories, cat_map, options, counts, data)


def _load_predictor(model: Path, device: str, conf: float | None, tta: bool = False,
                    tta_scales: list[float] | None = None, **options: Any) -> Any:
    """The Predictor (``options``: more Predictor options); a missing or foreign checkpoint becomes one DataError
    line."""
    if not model.exists():
        raise DataError("checkpoint not found", file=model)
    from maskkit.inference.predictor import load  # deferred: torch

    try:  # a checkpoint or run folder (PyTorch), or an exported model (runtime backend)
        return load(model, **_predictor_options(device, conf, tta, tta_scales), **options)
    except DataError as exc:  # torch's messages can run over many lines: keep the first
        first = exc.problem.splitlines()[0] if exc.problem else ""
        if len(first) > 160 and ". " in first:
            first = first[: first.index(". ") + 1] + ")"
        raise DataError(first, file=exc.file) from None
    except MaskkitError:
        raise
    except Exception as exc:  # a foreign .pt: missing keys, a config that does not validate, mismatched weights
        message = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise DataError(f"not a usable maskkit checkpoint ({type(exc).__name__}: {message})", file=model) from None


def _predictor_options(device: str, conf: float | None, tta: bool, tta_scales: list[float] | None
                       ) -> dict[str, Any]:
    """The Predictor's options (the same in this process and in each Ray worker)."""
    from maskkit.inference.tta import FLIPS  # deferred: torch

    return {"device": device, "score_threshold": conf, "tta": tta, "tta_scales": tta_scales,
            "tta_flips": FLIPS if tta else None}


def _image_ids(items: list[Any], data: Path | None, split: str, predictor: Any, allow_outside_root: bool = False
               ) -> tuple[dict[str, int], list[dict[str, Any]], dict[int, int]]:
    """Image ids, categories for images.json and the model -> dataset category map."""
    keys = {it.key: it.path for it in items if it.kind == "image"}
    if data is None:
        cats = [{"id": i, "name": n} for i, n in zip(predictor.category_ids, predictor.class_names, strict=True)]
        return sequential_ids(list(keys)), cats, {}

    aset = load_split(data, split, allow_outside_root=allow_outside_root)
    ids, missing = dataset_image_ids(keys, aset)
    cat_map, notes = category_id_map(predictor.category_ids, predictor.class_names, aset.categories)
    for note in notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        typer.secho(f"note: {len(missing)} image(s) are not in {data}: left out of predictions.json ({shown})",
                    fg=typer.colors.YELLOW, err=True)
    return ids, [{"id": c.id, "name": c.name} for c in aset.categories], cat_map


def _run(items: list[Any], predict: Any, out: Path, class_names: dict[int, str], options: Any,
         overwrite: bool, max_gap: int, track_iou: float, remote: Any = None) -> dict[str, int]:
    """Predict every source with a progress bar (images on Ray with ``remote``: ``ray_predictions``); counts."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    images = [it for it in items if it.kind == "image"]
    videos = [it for it in items if it.kind == "video"]
    writer = ImageWriter(out, class_names, options)
    counts = {"images": 0, "skipped": 0, "instances": 0, "videos": 0, "frames": 0, "tracks": 0, "videos_skipped": 0}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        if images:
            task = bar.add_task("images", total=len(images))
            todo = [it for it in images if overwrite or not writer.done(it.key)]
            counts["skipped"] = len(images) - len(todo)
            bar.advance(task, counts["skipped"])
            results = remote(todo) if remote is not None else ((it, *predict.file(it.path), None) for it in todo)
            for it, image, inst, overlay in results:
                writer.write(it.key, it.path, image, inst, overlay)
                counts["images"] += 1
                counts["instances"] += len(inst)
                bar.advance(task)
        for it in videos:
            paths = video_outputs(out, it.key)
            wanted = [paths["overlay"]] * options.overlays + [paths["tracks"]] * options.json
            if not wanted or (not overwrite and all(p.is_file() for p in wanted)):
                counts["videos_skipped"] += 1
                continue
            task = bar.add_task(f"video {it.key}", total=None)

            def on_frame(done: int, total: int, t: TaskID = task) -> None:
                bar.update(t, completed=done, total=total or None)

            summary = predict_video(it.path, predict, out, it.key, class_names, overlay=options.overlays,
                                    tracks=options.json, iou_threshold=track_iou, max_gap=max_gap,
                                    on_frame=on_frame)
            counts["videos"] += 1
            counts["frames"] += summary["frames"]
            counts["tracks"] += summary["tracks"]
    return counts


def _finish(out: Path, items: list[Any], ids: dict[str, int], categories: list[dict[str, Any]],
            cat_map: dict[int, int], options: Any, counts: dict[str, int], data: Path | None) -> None:
    parts = [f"{counts['images']} images predicted ({counts['instances']} instances)"]
    if counts["skipped"]:
        parts.append(f"{counts['skipped']} skipped (outputs exist; --overwrite redoes them)")
    if counts["videos"] or counts["videos_skipped"]:
        parts.append(f"{counts['videos']} videos ({counts['frames']} frames, {counts['tracks']} tracks)"
                     + (f", {counts['videos_skipped']} skipped" if counts["videos_skipped"] else ""))
    typer.echo("; ".join(parts))
    keys = [it.key for it in items if it.kind == "image"]
    if options.json and keys:
        summary = assemble_predictions(out, keys, ids, categories, cat_map)
        typer.echo(f"wrote {out / 'predictions.json'}: {summary['detections']} detections on {summary['images']} "
                   f"images (ids in {out / 'images.json'})")
        if data is not None:
            typer.echo(f"score it: maskkit eval --gt {data} --pred {out / 'predictions.json'}")
    typer.echo(f"outputs in {out}")
