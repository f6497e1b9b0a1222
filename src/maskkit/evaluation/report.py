"""``metrics.json`` files (the dict: :func:`maskkit.evaluation.evaluator.build_metrics`), ``per_class.csv``,
``sizes.csv``, plots and the terminal tables.

``metrics.json`` sections:

* ``bbox``, ``segm`` – ``AP AP50 AP75 APs APm APl AR1 AR10 AR100 ARs ARm ARl`` (+ ``AR<m>`` for
  further max_dets), fractions in [0, 1]; ``null`` where COCO has no such objects (its -1).
* ``boundary`` – Boundary AP (same keys), ``matching`` – P/R/F1/DSB score per IoU threshold and AJI,
  ``panoptic`` – PQ/SQ/RQ, ``semantic`` – mIoU etc. from painted class maps (each where it applies).
* ``per_class`` – one entry per category: ``id``, ``name``, ``num_gt``, ``num_pred``, ``bbox``/``segm``
  (``AP AP50 AP75 APs APm APl AR``), ``PQ``, ``F1`` (matching F1 averaged over IoU thresholds).
* ``sizes`` – per COCO area range: range, GT and prediction counts, ``bbox_AP``/``segm_AP``.
* ``counts``, ``params`` (max_dets, IoU thresholds, area ranges, backend, score threshold, notes).

NaN and infinities are written as ``null``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from maskkit.evaluation import coco, plots
from maskkit.fileio import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from rich.console import Console

    from maskkit.evaluation.evaluator import InstanceEvaluator

AP_TYPES = ("bbox", "segm", "boundary")


# -- files ----------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """A JSON-safe copy: NumPy scalars/arrays to Python, NaN/inf to ``None``, dict keys to str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.decode("ascii")
    return value


def write_metrics_json(path: str | Path, metrics: dict[str, Any]) -> None:
    """Write ``metrics.json`` (indented, NaN as null), atomically."""
    atomic_write_json(path, jsonable(metrics), indent=2)


def _csv(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row in rows:
        writer.writerow(["" if v is None else (f"{v:.6f}" if isinstance(v, float) else v) for v in row])
    return buf.getvalue()


def per_class_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    """Header + one row per class: counts, then ``<type>_<stat>`` for every evaluated type, PQ, F1."""
    types = [t for t in AP_TYPES if t in metrics]
    extra = [k for k in ("PQ", "F1") if any(k in r for r in metrics["per_class"])]
    header = ["id", "name", "num_gt", "num_pred"] + [f"{t}_{k}" for t in types for k in coco.CLASS_KEYS] + extra
    rows: list[list[Any]] = [header]
    for r in jsonable(metrics["per_class"]):
        rows.append([r["id"], r["name"], r["num_gt"], r["num_pred"]]
                    + [r[t][k] for t in types for k in coco.CLASS_KEYS] + [r.get(k) for k in extra])
    return rows


def write_per_class_csv(path: str | Path, metrics: dict[str, Any]) -> None:
    atomic_write_text(path, _csv(per_class_rows(metrics)))


def size_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    types = [t for t in AP_TYPES if t in metrics]
    rows: list[list[Any]] = [["size", "area_min", "area_max", "num_gt", "num_pred"] + [f"{t}_AP" for t in types]]
    for name, s in metrics["sizes"].items():
        rows.append([name, s["area_range"][0], s["area_range"][1], s["num_gt"], s["num_pred"]]
                    + [s.get(f"{t}_AP") for t in types])
    return rows


def write_sizes_csv(path: str | Path, metrics: dict[str, Any]) -> None:
    atomic_write_text(path, _csv(size_rows(metrics)))


def write_report_files(out_dir: str | Path, metrics: dict[str, Any]) -> list[Path]:
    """``metrics.json``, ``per_class.csv`` and ``sizes.csv`` in ``out_dir``; returns the paths."""
    out = Path(out_dir)
    paths = [out / "metrics.json", out / "per_class.csv", out / "sizes.csv"]
    write_metrics_json(paths[0], metrics)
    write_per_class_csv(paths[1], metrics)
    write_sizes_csv(paths[2], metrics)
    return paths


class EvalFigures:
    """The figures of :func:`write_outputs` (PR curves per evaluated type, confusion matrix), each
    drawn by a :class:`~maskkit.evaluation.plots.PlotWorker` once its data is ready.

    :meth:`attach` to an evaluator before its ``evaluate()``: every COCO result then goes to the
    worker as soon as it is computed (and the confusion matrix with the first, as ``evaluate()``
    runs after every image is processed), so the figures are drawn while the evaluation goes on.
    ``worker=False`` draws them in this process. Close it (context manager) when done.
    """

    def __init__(self, out_dir: str | Path, worker: bool = True) -> None:
        self.out = Path(out_dir)
        self.worker = plots.PlotWorker(enabled=worker)
        self.jobs: dict[str, Any] = {}
        self._evaluator: InstanceEvaluator | None = None

    def attach(self, evaluator: InstanceEvaluator) -> None:
        """Draw ``evaluator``'s figures as its results appear."""
        self._evaluator = evaluator
        evaluator.coco.on_result = self._ready
        if evaluator.boundary is not None:
            evaluator.boundary.on_result = self._ready

    def _ready(self, result: coco.CocoEvalResult) -> None:
        assert self._evaluator is not None
        self.confusion_matrix(self._evaluator)
        self.pr_curves(result, self._evaluator)

    def pr_curves(self, result: coco.CocoEvalResult, evaluator: InstanceEvaluator) -> str:
        """Submit ``pr_curves_<type>.png`` (once per type); returns its file name."""
        from dataclasses import replace

        name = f"pr_curves_{result.iou_type}.png"
        if name not in self.jobs:
            names = {c["id"]: c["name"] for c in evaluator.category_dicts()}
            self.jobs[name] = self.worker.submit(plots.plot_pr_curves, replace(result, matched={}), names,
                                                 self.out / name)
        return name

    def confusion_matrix(self, evaluator: InstanceEvaluator) -> str | None:
        """Submit ``confusion_matrix.png`` (once; not when nothing was matched); returns its file name."""
        name = "confusion_matrix.png"
        if name not in self.jobs:
            class_names, confusion = evaluator.class_confusion()
            self.jobs[name] = None
            if confusion.sum():
                self.jobs[name] = self.worker.submit(plots.plot_confusion_matrix, class_names, confusion,
                                                     self.out / name)
        return name if self.jobs[name] is not None else None

    def paths(self, names: list[str | None]) -> list[Path]:
        """Wait for the figures ``names`` (``None`` entries are skipped); their paths, in that order."""
        return [self.jobs[n].result() for n in names if n is not None]

    def close(self) -> None:
        self.worker.close()

    def __enter__(self) -> EvalFigures:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_outputs(
    out_dir: str | Path,
    metrics: dict[str, Any],
    evaluator: InstanceEvaluator,
    load_image: Callable[[int], np.ndarray | None] | None = None,
    gallery_size: int = 8,
    figures: EvalFigures | None = None,
) -> list[Path]:
    """All files of an evaluation: the report files, PR curves per evaluated type, the confusion
    matrix, and the error gallery (only when ``load_image`` can reach the images; else a note is
    added to ``metrics["params"]["notes"]`` and ``metrics.json`` says so). Returns the paths written.

    ``figures``: an :class:`EvalFigures` for ``out_dir`` attached to ``evaluator`` (figures already
    drawn or drawing in its worker are not drawn again); by default they are drawn here.
    """
    out = Path(out_dir)
    with contextlib.ExitStack() as stack:
        if figures is None:
            figures = stack.enter_context(EvalFigures(out, worker=False))
        names: list[str | None] = [figures.pr_curves(r, evaluator) for r in evaluator.coco_results.values()]
        names.append(figures.confusion_matrix(evaluator))
        notes = metrics.setdefault("params", {}).setdefault("notes", [])
        gallery = None
        if gallery_size > 0:
            errors = evaluator.errors(gallery_size)
            if load_image is not None:
                cat_names = {c["id"]: c["name"] for c in evaluator.category_dicts()}
                gallery = plots.plot_error_gallery(errors, load_image, cat_names, out / "error_gallery.png")
            if gallery is None:
                reason = "no image files" if load_image is None else "image files not reachable"
                notes.append(f"error gallery skipped: {reason if any(errors.values()) else 'no errors at IoU 0.5'}")
        report = write_report_files(out, metrics)
        paths = figures.paths(names)
    return report + paths + ([gallery] if gallery is not None else [])


# -- terminal -------------------------------------------------------------------------------------


def _fmt(value: Any, pct: bool = True) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.1f}" if pct else f"{value:.3f}"
    return str(value)


def print_report(metrics: dict[str, Any], console: Console | None = None, max_classes: int = 30) -> None:
    """Rich tables: COCO stats (%, one column per type), matching/panoptic/semantic, sizes, per class."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    types = [t for t in AP_TYPES if t in metrics]
    if types:
        table = Table(title="COCO metrics (%)", title_justify="left")
        table.add_column("stat")
        for t in types:
            table.add_column(t, justify="right")
        for k in [k for k in metrics[types[0]] if k in coco.STAT_KEYS or k.startswith("AR")]:
            table.add_row(k, *(_fmt(metrics[t].get(k)) for t in types))
        console.print(table)
    summary = Table(title="Matching / panoptic / semantic", title_justify="left")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for section, keys in (
        ("matching", ("precision@0.50", "recall@0.50", "f1@0.50", "f1", "dsb_score", "aji", "aji_plus")),
        ("panoptic", ("pq", "sq", "rq")),
        ("semantic", ("miou", "mean_dice", "pixel_accuracy")),
    ):
        for k in keys:
            if k in metrics.get(section, {}):
                summary.add_row(f"{section} {k}", _fmt(metrics[section][k], pct=False))
    if summary.row_count:
        console.print(summary)
    if "sizes" in metrics:
        table = Table(title="Object sizes (COCO area ranges; AP in %)", title_justify="left")
        for h in ("size", "area", "GT", "pred", *(f"{t} AP" for t in types)):
            table.add_column(h, justify="left" if h == "size" else "right")
        for name, s in metrics["sizes"].items():
            lo, hi = s["area_range"]
            area = f"< {hi:g}" if lo == 0 else f">= {lo:g}" if hi >= 1e10 else f"{lo:g}-{hi:g}"
            table.add_row(name, area, str(s["num_gt"]), str(s["num_pred"]), *(_fmt(s.get(f"{t}_AP")) for t in types))
        console.print(table)
    rows = [r for r in metrics.get("per_class", []) if r["num_gt"] or r["num_pred"]]
    if rows:
        extra = [k for k in ("PQ", "F1") if k in rows[0]]
        table = Table(title="Per class (AP in %)", title_justify="left")
        table.add_column("class", no_wrap=True, max_width=24)
        for h in ("GT", "pred", *(f"{t} AP" for t in types), *extra):
            table.add_column(h, justify="right")
        for r in rows[:max_classes]:
            table.add_row(str(r["name"]), str(r["num_gt"]), str(r["num_pred"]), *(_fmt(r[t]["AP"]) for t in types),
                          *(_fmt(r[k], pct=False) for k in extra))
        console.print(table)
        if len(rows) > max_classes:
            console.print(f"... {len(rows) - max_classes} more classes in per_class.csv")
    for note in metrics.get("params", {}).get("notes", []):
        console.print(f"note: {note}")
