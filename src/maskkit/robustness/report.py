"""The robustness report: per-condition numbers, mean corruption AP and relative robustness, the table, the plots.

As the COCO-C paper reports them (Michaelis et al. 2019, "Benchmarking Robustness in Object Detection"):
``P`` is a metric on clean data, ``mPC`` (mean performance under corruption) its mean over every corruption and
severity run, ``rPC = mPC / P`` the relative robustness. maskkit reports them for mask AP (``segm``), box AP
(``bbox``), Boundary AP (``boundary``) and matching F1 at IoU 0.5 (``f1@0.50``); mask AP's ``mPC`` is the mean
corruption AP (``mCAP``). Attacks get their metric per eps and the mean over the eps run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maskkit.data.corruptions import CORRUPTIONS, IMAGENET_C
from maskkit.robustness.conditions import Condition

METRICS = {"segm": ("segm", "AP"), "bbox": ("bbox", "AP"), "boundary": ("boundary", "AP"),
           "f1@0.50": ("matching", "f1@0.50")}
"""The headline metrics: name -> (metrics.json section, key)."""


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The scalar numbers of an evaluation's COCO, Boundary AP and matching sections (per-class and
    per-threshold lists left out), plus the counts."""
    out: dict[str, dict[str, Any]] = {}
    for section in ("segm", "bbox", "boundary", "matching", "counts"):
        values = metrics.get(section)
        if isinstance(values, dict):
            out[section] = {k: v for k, v in values.items() if isinstance(v, int | float | None) and
                            not isinstance(v, bool)}
    return out


def headline(row: dict[str, Any]) -> dict[str, float | None]:
    """The :data:`METRICS` of a condition's row (None where undefined)."""
    out: dict[str, float | None] = {}
    for name, (section, key) in METRICS.items():
        v = row.get("metrics", {}).get(section, {}).get(key)
        out[name] = float(v) if isinstance(v, int | float) and v >= 0 else None
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals and len(vals) == len(values) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(results: dict[str, dict[str, Any]], conditions: Sequence[Condition],
              skipped: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``robustness.json`` dict: every condition's numbers, per-corruption and per-attack curves, ``mPC``
    (mean corruption metric, over all corruptions run and over the ImageNet-C ones run) and ``rPC``."""
    heads = {c.key: headline(results[c.key]) for c in conditions if c.key in results}
    clean = heads.get("clean", dict.fromkeys(METRICS))
    corr = [c for c in conditions if c.kind == "corruption"]
    per_corruption: dict[str, Any] = {}
    for name in dict.fromkeys(c.name for c in corr):
        rows = [c for c in corr if c.name == name]
        per_corruption[name] = {
            "group": CORRUPTIONS[name].group, "severities": [c.severity for c in rows],
            **{m: [heads[c.key][m] for c in rows] for m in METRICS},
            "mean": {m: _mean([heads[c.key][m] for c in rows]) for m in METRICS},
        }
    attacks: dict[str, Any] = {}
    for name in dict.fromkeys(c.name for c in conditions if c.kind == "attack"):
        rows = [c for c in conditions if c.kind == "attack" and c.name == name]
        attacks[name] = {"eps": [c.eps for c in rows], "eps_labels": [c.eps_label for c in rows],
                         **{m: [heads[c.key][m] for c in rows] for m in METRICS},
                         "mean": {m: _mean([heads[c.key][m] for c in rows]) for m in METRICS}}
    summary: dict[str, Any] = {"clean": clean}
    if corr:
        mpc = {m: _mean([heads[c.key][m] for c in corr]) for m in METRICS}
        inet = [c for c in corr if c.name in IMAGENET_C]
        groups = {}
        for g in dict.fromkeys(CORRUPTIONS[c.name].group for c in corr):
            groups[g] = {m: _mean([heads[c.key][m] for c in corr if CORRUPTIONS[c.name].group == g])
                         for m in METRICS}
        summary.update({
            "mPC": mpc, "rPC": {m: _ratio(mpc[m], clean[m]) for m in METRICS},
            "mCAP": mpc["segm"], "relative_robustness": _ratio(mpc["segm"], clean["segm"]),
            "mPC_imagenet_c": {m: _mean([heads[c.key][m] for c in inet]) for m in METRICS} if inet else None,
            "imagenet_c_corruptions": sorted({c.name for c in inet}),
            "mPC_by_group": groups,
        })
    if attacks:
        summary["adversarial"] = {a: v["mean"] for a, v in attacks.items()}
        summary["adversarial_relative"] = {a: {m: _ratio(v["mean"][m], clean[m]) for m in METRICS}
                                           for a, v in attacks.items()}
    return {"summary": summary, "corruptions": per_corruption, "attacks": attacks,
            "conditions": {k: {f: results[k][f] for f in ("kind", "name", "severity", "eps", "eps_label", "images",
                                                           "seconds", "metrics")} for k in heads},
            "skipped": dict(skipped or {}),
            "definitions": {"mPC": "mean over the corruptions and severities run (Michaelis et al. 2019)",
                            "rPC": "mPC / clean", "mCAP": "mPC of mask AP",
                            "relative_robustness": "mCAP / clean mask AP"}}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def print_table(report: dict[str, Any], console: Any = None) -> None:
    """Rich tables: the summary, mask AP by corruption and severity, and by attack and eps."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    s = report["summary"]
    table = Table(title="Robustness (%)", title_justify="left")
    table.add_column("")
    for m in METRICS:
        table.add_column(m, justify="right")
    table.add_row("clean", *(_pct(s["clean"][m]) for m in METRICS))
    if "mPC" in s:
        table.add_row("mean corruption (mPC)", *(_pct(s["mPC"][m]) for m in METRICS))
        table.add_row("relative (rPC)", *(_pct(s["rPC"][m]) for m in METRICS))
    for a, means in s.get("adversarial", {}).items():
        table.add_row(f"{a} (mean over eps)", *(_pct(means[m]) for m in METRICS))
    console.print(table)
    if report["corruptions"]:
        sevs = sorted({v for c in report["corruptions"].values() for v in c["severities"]})
        t = Table(title="Mask AP (%) by corruption and severity", title_justify="left")
        t.add_column("corruption")
        for v in sevs:
            t.add_column(str(v), justify="right")
        t.add_column("mean", justify="right")
        for name, c in report["corruptions"].items():
            by = dict(zip(c["severities"], c["segm"], strict=True))
            t.add_row(name, *(_pct(by.get(v)) for v in sevs), _pct(c["mean"]["segm"]))
        console.print(t)
    for a, v in report["attacks"].items():
        t = Table(title=f"{a}: AP (%) by eps", title_justify="left")
        t.add_column("eps")
        for m in METRICS:
            t.add_column(m, justify="right")
        for i, label in enumerate(v["eps_labels"]):
            t.add_row(label, *(_pct(v[m][i]) for m in METRICS))
        console.print(t)
    if report.get("skipped"):
        console.print(f"skipped: {', '.join(report['skipped'])} ({next(iter(report['skipped'].values()))})")


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    """``corruptions.png`` (each metric against severity, one panel per corruption, severity 0 = clean) and
    ``attacks.png`` (against eps, one panel per attack); the figures that have data."""
    from maskkit.evaluation.plots import _figure, _save

    clean = report["summary"]["clean"]
    paths: list[Path] = []

    def panel(ax: Any, xs: list[float], series: dict[str, list[float | None]], title: str, xlabel: str) -> None:
        for m, ys in series.items():
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", ms=3, label=m)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)

    corr = report["corruptions"]
    if corr:
        cols = min(5, len(corr))
        rows = -(-len(corr) // cols)
        fig = _figure(3.0 * cols, 2.4 * rows + 0.6, constrained=True)
        for i, (name, c) in enumerate(corr.items()):
            ax = fig.add_subplot(rows, cols, i + 1)
            panel(ax, [0, *c["severities"]], {m: [clean[m], *c[m]] for m in METRICS}, name, "severity")
            if i % cols == 0:
                ax.set_ylabel("AP / F1 (%)", fontsize=8)
        fig.axes[0].legend(fontsize=7)
        fig.suptitle(f"AP vs severity (mPC mask AP {_pct(report['summary'].get('mCAP'))}, clean "
                     f"{_pct(clean['segm'])})", fontsize=10)
        paths.append(_save(fig, out / "corruptions.png"))
    attacks = report["attacks"]
    if attacks:
        fig = _figure(3.6 * len(attacks), 3.0, constrained=True)
        for i, (name, a) in enumerate(attacks.items()):
            ax = fig.add_subplot(1, len(attacks), i + 1)
            panel(ax, [0.0, *[255 * e for e in a["eps"]]], {m: [clean[m], *a[m]] for m in METRICS}, name,
                  "eps (x 1/255)")
            ax.set_ylabel("AP / F1 (%)", fontsize=8)
        fig.axes[0].legend(fontsize=7)
        paths.append(_save(fig, out / "attacks.png"))
    return paths
