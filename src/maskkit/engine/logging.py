"""Run-folder logging: ``steps.csv`` (every step), ``results.csv`` (every epoch), ``tuning.csv`` (every
post-processing threshold combination scored at each validation), TensorBoard, ``curves.png``."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from maskkit.fileio import atomic_write_bytes, atomic_write_text

log = logging.getLogger("maskkit.train")


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _fmt(value: Any) -> Any:
    return repr(float(value)) if isinstance(value, float) else value


class RunLogger:
    """Writes the per-step and per-epoch logs of one run (rank 0 only); survives resumes.

    ``steps.csv`` is appended line by line (flushed); ``results.csv`` is rewritten atomically each
    epoch. :meth:`truncate` drops rows logged after the checkpoint a run resumes from.
    """

    def __init__(self, out: Path, tensorboard: bool = True, purge_step: int | None = None) -> None:
        self.out = out
        self.steps_path = out / "steps.csv"
        self.results_path = out / "results.csv"
        self.tuning_path = out / "tuning.csv"
        self._step_columns: list[str] | None = None
        self.results: list[dict[str, Any]] = []
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)
            except ImportError:  # tensorboard not installed: skip quietly
                self.writer = None

    def truncate(self, step: int, epochs_done: int) -> None:
        """Keep only steps ``<= step`` and epochs ``< epochs_done`` (what the resumed checkpoint covers)."""
        rows = _read_csv(self.steps_path)
        if rows:
            self._step_columns = list(rows[0].keys())
            kept = [r for r in rows if int(r["step"]) <= step]
            atomic_write_text(self.steps_path, _csv_text(kept, self._step_columns))
        self.results = [dict(r) for r in _read_csv(self.results_path) if int(r["epoch"]) < epochs_done]
        self._write_results()
        tuning = _read_csv(self.tuning_path)
        if tuning:
            kept = [r for r in tuning if int(r["epoch"]) < epochs_done]
            atomic_write_text(self.tuning_path, _csv_text(kept, list(tuning[0].keys())))

    def log_tuning(self, grid: list[Mapping[str, Any]], epoch: int, step: int, split: str) -> None:
        """Append every threshold combination scored by one validation (with its mask AP) to ``tuning.csv``,
        rewritten atomically; ``split`` names the images it was scored on."""
        rows = _read_csv(self.tuning_path)
        new = [{"epoch": epoch, "step": step, "split": split, **{k: _fmt(v) for k, v in g.items()}} for g in grid]
        columns: list[str] = []
        for r in rows + new:
            columns += [k for k in r if k not in columns]
        atomic_write_text(self.tuning_path, _csv_text(rows + new, columns))

    def log_step(self, row: dict[str, Any]) -> None:
        """Append one step (``epoch``, ``step``, ``lr``, ``loss`` and each loss term)."""
        if self._step_columns is None:
            self._step_columns = list(row.keys())
        new = not self.steps_path.is_file()
        with self.steps_path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._step_columns, extrasaction="ignore", lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("epoch", "step") and isinstance(value, float) and math.isfinite(value):
                    self.writer.add_scalar(f"train/{key}", value, row["step"])

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Record one epoch's summary (train/val losses, lr, metrics) and rewrite ``results.csv``."""
        self.results.append({k: _fmt(v) for k, v in row.items()})
        self._write_results()
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("epoch", "step") and isinstance(value, float) and math.isfinite(value):
                    self.writer.add_scalar(f"epoch/{key}", value, row["epoch"])
            self.writer.flush()

    def _write_results(self) -> None:
        columns: list[str] = []
        for r in self.results:
            columns += [k for k in r if k not in columns]
        if columns:
            atomic_write_text(self.results_path, _csv_text(self.results, columns))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(results_csv: Path, out: Path) -> Path | None:
    """``curves.png``: train and val losses per term, and the validation metrics, per epoch."""
    rows = _read_csv(results_csv)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for r in rows:
            v = r.get(key)
            if v not in (None, "") and math.isfinite(float(v)):
                xs.append(float(r["epoch"]) + 1)
                ys.append(float(v))
        return xs, ys

    keys = list(rows[0].keys())
    for r in rows:
        keys += [k for k in r if k not in keys]
    train_keys = [k for k in keys if k.startswith("train/")]
    val_keys = [k for k in keys if k.startswith("val/")]
    metric_keys = [k for k in keys if k.startswith(("segm.", "bbox."))]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, group, title in ((axes[0], train_keys, "train loss"), (axes[1], val_keys, "val loss"),
                             (axes[2], metric_keys, "val metrics")):
        for key in group:
            xs, ys = series(key)
            if xs:
                ax.plot(xs, ys, marker="o", ms=3, label=key.split("/")[-1])
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:  # e.g. schedule.val_loss off, or no validation yet
            ax.text(0.5, 0.5, f"no {title} logged", ha="center", va="center", transform=ax.transAxes, color="0.4")
    fig.tight_layout()
    path = out / "curves.png"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)

    atomic_write_bytes(path, buf.getvalue())
    return path


class EpochProgress:
    """A rich progress bar of one epoch's steps with ETA and the current losses (a no-op when disabled)."""

    _SHORT: ClassVar[dict[str, str]] = {
        "loss_classifier": "cls", "loss_box_reg": "box", "loss_mask": "mask", "loss_objectness": "obj",
        "loss_rpn_box_reg": "rpn"}
    """Short names of Mask R-CNN's terms; other ``loss_*`` terms show without the prefix."""

    def __init__(self, enabled: bool, epoch: int, epochs: int, total: int, done: int = 0) -> None:
        self.enabled = enabled
        self.title = f"epoch {epoch + 1}/{epochs}"
        self.total, self.done = total, done
        self._progress: Any = None

    def __enter__(self) -> EpochProgress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeRemainingColumn(), TextColumn("{task.fields[losses]}"), transient=False,
                                      auto_refresh=False)  # redraw per step: no 10 Hz refresh thread
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=self.total, completed=self.done, losses="")
        return self

    def update(self, row: Mapping[str, Any]) -> None:
        if self._progress is None:
            return
        text = " ".join(f"{self._SHORT.get(k, k.removeprefix('loss_'))}={v:.3f}"
                        for k, v in row.items() if k.startswith("loss"))
        self._progress.update(self._task, advance=1, losses=text, refresh=True)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
