"""Evaluation figures (PNG, matplotlib's Agg canvas, no pyplot state).

* :func:`plot_pr_curves` – a grid of per-class precision/recall curves from COCOeval's accumulated
  ``precision[T, R, K, A, M]`` (IoU 0.50, 0.75 and the mean over 0.50:0.95; area "all", largest
  max_dets), with an "all classes" panel first.
* :func:`plot_confusion_matrix` – class confusion of matched instances, row-normalised, counts printed.
* :func:`plot_error_gallery` – crops of the worst false positives and false negatives.

:class:`PlotWorker` draws them in a worker process started early, so matplotlib's import and the
drawing overlap the evaluation instead of adding to it.
"""

from __future__ import annotations

import io
import math
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from maskkit.data.images import to_rgb_uint8
from maskkit.evaluation.coco import CocoEvalResult
from maskkit.fileio import atomic_write_bytes
from maskkit.structures.masks import decode_rle


def _import_matplotlib() -> None:
    """Worker initialiser: pay matplotlib's import (~1 s) before the first figure is asked for."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401


class PlotJob:
    """One figure being drawn; :meth:`result` gives its path (drawn here if the worker died)."""

    def __init__(self, future: Future[Any], fn: Callable[..., Path], args: tuple[Any, ...]) -> None:
        self.future, self.fn, self.args = future, fn, args

    def result(self) -> Path:
        try:
            path: Path = self.future.result()
            return path
        except BrokenProcessPool:
            return self.fn(*self.args)


class PlotWorker:
    """Draws figures in one forked worker process, started at construction (so it imports matplotlib
    while the caller evaluates); without ``fork`` (or if no process can start) figures are drawn in
    this process when submitted. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, enabled: bool = True) -> None:
        self._pool: ProcessPoolExecutor | None = None
        if enabled and "fork" in multiprocessing.get_all_start_methods():
            try:
                pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"),
                                           initializer=_import_matplotlib)
                pool.submit(int)  # start the process now, not at the first figure
                self._pool = pool
            except OSError:  # pragma: no cover - no process available: draw in-process
                self._pool = None

    def submit(self, fn: Callable[..., Path], *args: Any) -> PlotJob:
        """Draw ``fn(*args)`` (a module-level plotting function returning the written path)."""
        if self._pool is not None:
            try:
                return PlotJob(self._pool.submit(fn, *args), fn, args)
            except (BrokenProcessPool, RuntimeError):
                self._pool = None
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # re-raised by PlotJob.result, as from the worker
            future.set_exception(exc)
        return PlotJob(future, fn, args)

    def close(self) -> None:
        """Stop the worker (after the figures submitted so far are drawn)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> PlotWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _figure(width: float, height: float, constrained: bool = False) -> Any:
    """A figure on an Agg canvas (constrained layout is slow for big grids: those use subplots_adjust)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _curves(precision: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """``{label: precision over 101 recall points}`` of a ``[T, R]`` slice (-1 becomes NaN)."""
    p = np.where(precision > -1, precision, np.nan)
    out = {}
    for t in (0.5, 0.75):
        idx = np.flatnonzero(np.isclose(thresholds, t))
        if len(idx):
            out[f"IoU={t:.2f}"] = p[idx[0]]
    with np.errstate(invalid="ignore"):
        out["IoU=.50:.95"] = np.nanmean(p, axis=0) if np.isfinite(p).any() else p[0]
    return out


def plot_pr_curves(
    result: CocoEvalResult, names: Mapping[int, str], path: str | Path, class_ids: Sequence[int] | None = None
) -> Path:
    """Per-class PR curves of one evaluation (``bbox``, ``segm`` or ``boundary``) as one PNG grid.

    ``class_ids`` defaults to the classes that have ground truth (precision defined).
    """
    recall = np.linspace(0, 1, result.precision.shape[1])
    prec = result.precision[:, :, :, 0, -1]  # T, R, K
    if class_ids is None:
        class_ids = [c for k, c in enumerate(result.cat_ids) if (prec[:, :, k] > -1).any()]
    index = {c: k for k, c in enumerate(result.cat_ids)}
    per_class = result.per_class()
    panels: list[tuple[str, np.ndarray]] = [(f"all classes (AP {_pct(result.stats['AP'])})", prec)]
    panels += [(f"{names.get(c, c)} (AP {_pct(per_class[c]['AP'])})", prec[:, :, index[c]]) for c in class_ids]
    ncols = min(len(panels), 6)
    nrows = math.ceil(len(panels) / ncols)
    width, height = 2.6 * ncols + 0.4, 2.4 * nrows + 0.6
    fig = _figure(width, height)
    fig.subplots_adjust(left=0.5 / width, right=1 - 0.15 / width, bottom=0.45 / height, top=1 - 0.8 / height,
                        wspace=0.25, hspace=0.45)
    fig.suptitle(f"{result.iou_type} precision-recall (area all, maxDets {result.max_dets[-1]})", fontsize=12,
                 y=1 - 0.2 / height)
    colors = {"IoU=0.50": "tab:blue", "IoU=0.75": "tab:orange", "IoU=.50:.95": "black"}
    for i, (title, p) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        if p.ndim == 3:  # "all": mean over classes with GT
            valid = np.where(p > -1, p, np.nan)
            with np.errstate(invalid="ignore"):
                p = np.where(np.isfinite(valid).any(axis=2), np.nanmean(valid, axis=2), -1)
        for label, curve in _curves(p, result.iou_thresholds).items():
            ax.plot(recall, curve, label=label, color=colors.get(label), lw=1.6 if "95" in label else 1.1,
                    ls="--" if label == "IoU=0.75" else "-")
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xticks([0, 0.5, 1])
        ax.set_yticks([0, 0.5, 1])
        ax.grid(alpha=0.3)
        first_col, last_row = i % ncols == 0, i >= len(panels) - ncols
        ax.tick_params(labelsize=7, labelleft=first_col, labelbottom=last_row)
        if first_col:
            ax.set_ylabel("precision", fontsize=8)
        if last_row:
            ax.set_xlabel("recall", fontsize=8)
        if i == 0:
            ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def plot_confusion_matrix(names: Sequence[str], matrix: np.ndarray, path: str | Path, max_classes: int = 40) -> Path:
    """Row-normalised confusion matrix (rows GT, columns prediction) with counts in the cells.

    Classes without any count are left out; beyond ``max_classes`` only the most frequent are kept
    (``background``, the last entry, always stays).
    """
    m = np.asarray(matrix, dtype=np.int64)
    totals = m.sum(axis=0) + m.sum(axis=1)
    keep = np.flatnonzero(totals[:-1] > 0)
    if len(keep) > max_classes:
        keep = np.sort(keep[np.argsort(-totals[keep], kind="stable")[:max_classes]])
    keep = np.append(keep, len(m) - 1)
    m = m[np.ix_(keep, keep)]
    labels = [names[int(i)] for i in keep]
    n = len(keep)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(m.sum(axis=1, keepdims=True) > 0, m / m.sum(axis=1, keepdims=True), 0.0)
    side = min(max(4.5, 0.32 * n + 2.5), 15.0)
    font = 8 if n <= 25 else 6
    fig = _figure(side + 1.0, side, constrained=True)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of GT row")
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("predicted class (background = unmatched GT, false negative)")
    ax.set_ylabel("ground-truth class (background = unmatched prediction, false positive)")
    ax.set_title("Confusion of instances matched at mask IoU >= 0.5 (class-agnostic)", fontsize=10)
    if n <= 45:
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=font - 1,
                            color="white" if norm[i, j] > 0.5 else "black")
    return _save(fig, path)


def _crop(image: np.ndarray, box: Sequence[float], margin: float = 0.25, min_side: int = 48) -> tuple[slice, slice]:
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    pad = max(margin * max(x1 - x0, y1 - y0), (min_side - max(x1 - x0, y1 - y0)) / 2, 4)
    xa, xb = int(max(0, math.floor(x0 - pad))), int(min(w, math.ceil(x1 + pad)))
    ya, yb = int(max(0, math.floor(y0 - pad))), int(min(h, math.ceil(y1 + pad)))
    return slice(ya, max(yb, ya + 1)), slice(xa, max(xb, xa + 1))


def plot_error_gallery(
    errors: Mapping[str, Sequence[dict[str, Any]]],
    load_image: Callable[[int], np.ndarray | None],
    names: Mapping[int, str],
    path: str | Path,
) -> Path | None:
    """Crops of the worst false positives (red) and false negatives (blue) with their masks and boxes.

    ``errors`` as from :meth:`InstanceEvaluator.errors`; ``load_image(image_id)`` returns an RGB
    uint8 image or ``None`` (unreachable). Returns ``None`` when no crop could be drawn.
    """
    rows = []
    for kind, color in (("false_positives", (1.0, 0.15, 0.1)), ("false_negatives", (0.1, 0.4, 1.0))):
        cells = []
        for item in errors.get(kind, []):
            image = load_image(item["image_id"])
            if image is None:
                continue
            image = to_rgb_uint8(image)
            ys, xs = _crop(image, item["box"])
            crop = image[ys, xs].astype(np.float32) / 255.0
            if item.get("rle") is not None:
                mask = decode_rle(item["rle"])[ys, xs]
                crop[mask] = 0.55 * crop[mask] + 0.45 * np.asarray(color)
            name = names.get(item["category_id"], item["category_id"])
            what = f"score {item['score']:.2f}" if "score" in item else f"area {item['area']:.0f}"
            tag = "FP" if kind == "false_positives" else "FN"
            cells.append((crop, f"{tag} {name}\n{what} · image {item['image_id']}", item["box"], xs, ys, color))
        if cells:
            rows.append(cells)
    if not rows:
        return None
    ncols = max(len(r) for r in rows)
    fig = _figure(2.3 * ncols + 0.3, 2.7 * len(rows) + 0.5, constrained=True)
    fig.suptitle("Worst errors at IoU 0.5: highest-scored false positives (red), largest false negatives (blue)",
                 fontsize=10)
    for r, cells in enumerate(rows):
        for c, (crop, title, box, xs, ys, color) in enumerate(cells):
            ax = fig.add_subplot(len(rows), ncols, r * ncols + c + 1)
            ax.imshow(np.clip(crop, 0, 1), interpolation="nearest")
            x0, y0, x1, y1 = box
            from matplotlib.patches import Rectangle

            ax.add_patch(Rectangle((x0 - xs.start - 0.5, y0 - ys.start - 0.5), x1 - x0, y1 - y0, fill=False,
                                   edgecolor=color, lw=1.5))
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    return _save(fig, path)
