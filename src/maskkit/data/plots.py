"""PNG charts of :class:`~maskkit.data.stats.DatasetStats` (matplotlib, Agg canvas, imported lazily).

:func:`write_plots` takes the statistics of one or more splits and draws each split as its own
series in four charts: class counts, instances per image, instance areas (log scale, COCO size
thresholds marked) and image sizes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from maskkit.data.stats import LARGE_AREA, SMALL_AREA, DatasetStats
from maskkit.fileio import atomic_write_bytes

_COLOURS = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9")

PLOT_FILES = ("class_counts.png", "instances_per_image.png", "instance_areas.png", "image_sizes.png")


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    return path


def _legend(ax: Any, splits: Mapping[str, DatasetStats]) -> None:
    if len(splits) > 1:
        ax.legend(title="split")


def plot_class_counts(splits: Mapping[str, DatasetStats], path: Path) -> Path:
    """Horizontal bars of instances per class (stacked by split), most frequent class on top."""
    totals: dict[str, int] = {}
    for st in splits.values():
        for c in st.classes:
            totals[c.name] = totals.get(c.name, 0) + c.instances
    names = sorted(totals, key=lambda n: (-totals[n], n))
    fig = _figure(8, max(3.0, 1.4 + 0.2 * len(names)))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    left = np.zeros(len(names))
    for split, st in splits.items():
        by_name = {c.name: c.instances for c in st.classes}
        vals = np.array([by_name.get(n, 0) for n in names], dtype=float)
        ax.barh(y, vals, left=left, label=split, height=0.75)
        left += vals
    for yi, total in zip(y, left, strict=True):
        ax.text(total, yi, f" {int(total)}", va="center", fontsize=7 if len(names) > 30 else 9)
    ax.set_yticks(y, names, fontsize=7 if len(names) > 30 else 10)
    ax.invert_yaxis()
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.margins(x=0.08)
    ax.set_xlabel("instances")
    ax.set_ylabel("class")
    ax.set_title(f"Instances per class ({len(names)} classes)")
    ax.grid(axis="x", alpha=0.3)
    _legend(ax, splits)
    return _save(fig, path)


def plot_instances_per_image(splits: Mapping[str, DatasetStats], path: Path) -> Path:
    """Histogram of the number of instances in each image."""
    hi = max((max(st.per_image, default=0) for st in splits.values()), default=0)
    bins = np.arange(hi + 2) - 0.5 if hi <= 60 else np.linspace(-0.5, hi + 0.5, 61)
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    from matplotlib.ticker import MaxNLocator

    ax.hist(
        [st.per_image for st in splits.values()],
        bins=bins,
        label=list(splits),
        histtype="bar",
        edgecolor="white",
        linewidth=0.5,
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("instances in the image")
    ax.set_ylabel("images")
    ax.set_title("Instances per image")
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, splits)
    return _save(fig, path)


def plot_instance_areas(splits: Mapping[str, DatasetStats], path: Path) -> Path:
    """Log-scale histogram of instance areas with the COCO small/medium/large thresholds."""
    series = {s: np.asarray(st.areas, dtype=float) for s, st in splits.items()}
    positive = [a[a > 0] for a in series.values()]
    lo = min((a.min() for a in positive if len(a)), default=1.0)
    hi = max((a.max() for a in positive if len(a)), default=LARGE_AREA * 4.0)
    bins = np.logspace(np.log10(max(lo, 1.0) * 0.9), np.log10(max(hi, lo * 2) * 1.1), 40)
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    for (name, a), colour in zip(zip(series, positive, strict=True), _COLOURS, strict=False):
        ax.hist(
            a,
            bins=bins,
            label=name,
            histtype="stepfilled" if len(series) == 1 else "step",
            color=colour,
            linewidth=1.5,
            alpha=0.8,
        )
    ax.set_xscale("log")
    left, right = ax.get_xlim()
    left, right = min(left, SMALL_AREA / 4), max(right, LARGE_AREA * 4)
    ax.set_xlim(left, right)
    edges = (left, SMALL_AREA, LARGE_AREA, right)
    for i, name in enumerate(("small", "medium", "large")):
        ax.axvspan(edges[i], edges[i + 1], color=("#f2f2f2", "#ffffff", "#f2f2f2")[i], zorder=0)
        ax.text(
            np.sqrt(edges[i] * edges[i + 1]),
            0.98,
            name,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="top",
            fontsize=9,
            color="dimgray",
        )
    for thr, name in ((SMALL_AREA, "32²"), (LARGE_AREA, "96²")):
        ax.axvline(thr, color="black", linestyle="--", linewidth=1)
        ax.text(thr, 0.91, f" {name}", transform=ax.get_xaxis_transform(), va="top", ha="left", fontsize=8)
    zero = sum(int(np.count_nonzero(a <= 0)) for a in series.values())
    ax.set_xlabel("instance area (pixels, log scale)" + (f"; {zero} empty not shown" if zero else ""))
    ax.set_ylabel("instances")
    ax.set_title("Instance areas (COCO size buckets)")
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, splits)
    return _save(fig, path)


def plot_image_sizes(splits: Mapping[str, DatasetStats], path: Path) -> Path:
    """Scatter of image width × height; marker area grows with the number of images of that size."""
    fig = _figure(6, 5)
    ax = fig.add_subplot()
    biggest = max((s["count"] for st in splits.values() for s in st.image_sizes), default=1)
    for k, (split, st) in enumerate(splits.items()):
        w = [s["width"] for s in st.image_sizes]
        h = [s["height"] for s in st.image_sizes]
        c = np.array([s["count"] for s in st.image_sizes], dtype=float)
        ax.scatter(w, h, s=20 + 280 * np.sqrt(c / biggest), alpha=0.55, label=split, edgecolors="black", linewidths=0.5)
        if len(c) <= 3:
            for wi, hi, ci in zip(w, h, c, strict=True):
                ax.annotate(
                    f"{split}: {int(ci)} × {wi}×{hi}",
                    (wi, hi),
                    textcoords="offset points",
                    xytext=(12, 12 + 14 * k),
                    fontsize=9,
                )
    big = max((max(s["width"], s["height"]) for st in splits.values() for s in st.image_sizes), default=1)
    ax.set_xlim(0, big * 1.25)
    ax.set_ylim(0, big * 1.25)
    ax.set_xlabel("width (pixels)")
    ax.set_ylabel("height (pixels)")
    ax.set_title("Image sizes (marker size = number of images)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    _legend(ax, splits)
    return _save(fig, path)


def write_plots(splits: Mapping[str, DatasetStats], out_dir: str | Path) -> list[Path]:
    """Write the four charts (:data:`PLOT_FILES`) for the given split statistics into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        plot_class_counts(splits, out / PLOT_FILES[0]),
        plot_instances_per_image(splits, out / PLOT_FILES[1]),
        plot_instance_areas(splits, out / PLOT_FILES[2]),
        plot_image_sizes(splits, out / PLOT_FILES[3]),
    ]
