"""Label-fraction curve: mask AP on val with 10/25/50/100 % of the training images labelled, supervised only and
semi-supervised (the remaining training images given as unlabeled, ``maskkit train --unlabeled``).

Budget: every run takes the same number of optimiser steps (``--steps``; epochs are rounded to it, the table
lists the steps actually run) with the same batch size; a semi-supervised step also runs the teacher and the
student on ``batch * semi.ratio`` unlabeled images, so it costs about 2-3x the CPU time of a supervised step
(the ``min`` column). Validation runs once, at the end; the score is ``segm.AP`` on the val split.

Splits: the val split of the recipe (its own val split, or the one it carves, e.g. every 5th nuclei image) is
written once as COCO into ``--out``; the training images are permuted with ``--seed`` and the first 10/25/50/100 %
are labelled (nested subsets). Nothing is chosen on val: post-processing runs at the model's default thresholds
(``schedule.tune_thresholds: false``) and the last weights are scored (validation runs once, after the last step).
The images are copied into ``--out`` (a temporary folder by default), never into the project.

Data: ``--data`` with ``--config`` (a training recipe, e.g. ``configs/dsb2018-bottomup.yaml``); without
``--data``, synthetic shapes (``maskkit.data.synth``, ``--images`` at ``--size`` px, 20 % val) with a small
built-in recipe (``--model``). ``--pool DIR`` gives the semi-supervised runs that folder as their unlabeled images
instead (its masks are ignored), e.g. ``../shared/data/dsb2018-stage1-train-pool/stage1_train``.

Run:
  python benchmarks/label_fraction.py --steps 300                         # synthetic, the demo's bottom-up recipe
  python benchmarks/label_fraction.py --data ../shared/data/dsb2018-stage1-train-subset/stage1_train \\
      --config configs/dsb2018-bottomup.yaml --steps 1500 --out runs/label-fraction-nuclei
Writes ``results.json``, ``table.md`` and ``curve.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = (10, 25, 50, 100)

SYNTH_RECIPE: dict[str, Any] = {
    "model": {"name": "bottomup_effl0", "min_size": 256},
    "data": {"batch_size": 4},
    "augment": {"min_size": [160], "max_size": None, "hflip": 0.5, "vflip": 0.5},
    "optim": {"optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0001, "warmup_steps": 20, "scheduler": "cosine"},
    "semi": {"burn_in_steps": 100, "threshold": 0.8, "ema_decay": 0.99},
    "deterministic": False,
}
"""The synthetic recipe: the demo's (``configs/demo.yaml``: bottom-up U-Net on offline ImageNet EfficientNet-Lite0
weights, 160 px images, inference at 256 px) without its time budget, plus the semi-supervised options."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", help="Dataset (any source); default: synthetic shapes written into --out.")
    p.add_argument("--config", help="Training recipe YAML (default: the built-in synthetic recipe).")
    p.add_argument("--model", help="Override model.name (synthetic default: bottomup_effl0).")
    p.add_argument("--steps", type=int, default=300, help="Optimiser steps per run (same for every run).")
    p.add_argument("--fractions", type=int, nargs="+", default=list(FRACTIONS),
                   help="Labelled percentages, run in this order (the table sorts them).")
    p.add_argument("--pool", help="Unlabeled folder for the semi-supervised runs (default: the unlabelled rest).")
    p.add_argument("--semi", action="append", default=[], metavar="KEY=VALUE",
                   help="semi.* options of the semi-supervised runs, e.g. --semi weight=2 (repeatable).")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="Any config field for every run, dotted (repeatable).")
    p.add_argument("--variants", nargs="+", choices=("supervised", "semi"), default=["supervised", "semi"],
                   help="Which runs per fraction (semi-supervised runs only below 100 %%).")
    p.add_argument("--images", type=int, default=100, help="Synthetic images (20 %% of them val).")
    p.add_argument("--size", type=int, default=160, help="Synthetic image size.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads per run.")
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "maskkit-label-fraction"))
    p.add_argument("--resume", action="store_true", help="Keep the finished runs of --out's results.json.")
    return p.parse_args()


def key_values(items: list[str], prefix: str = "") -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        out[prefix + key.strip()] = yaml.safe_load(value)
    return out


def base_config(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], str]:
    """The recipe dict and its data path (synthetic data written on first use)."""
    from maskkit.config import merge_overrides, read_config

    if args.data:
        recipe = read_config(args.config) if args.config else {}
        data = args.data
    else:
        recipe = read_config(args.config) if args.config else SYNTH_RECIPE
        synth = out / "synth"
        if not (synth / "dataset.yaml").is_file():
            from maskkit.data.synth import write_synthetic

            write_synthetic(synth, images=args.images, size=args.size, seed=args.seed, val_fraction=0.2, workers=1)
        data = str(synth / "dataset.yaml")
    overrides = {"model.name": args.model, **key_values(args.sets)}
    return merge_overrides(recipe, overrides), data


def write_splits(cfg: dict[str, Any], data_path: str, fractions: list[int], seed: int, out: Path) -> dict[int, Any]:
    """COCO copies of val and of each labelled subset, folders of the unlabelled rest; per fraction the dataset
    YAML, the unlabeled folder and the counts."""
    import numpy as np

    from maskkit.config import validate_config
    from maskkit.data.dataset_yaml import write_dataset_yaml
    from maskkit.data.formats.coco import write_coco
    from maskkit.engine.data import load_train_data

    tv = validate_config({**cfg, "data": {**cfg.get("data", {}), "path": data_path}, "tune": {"split": "val"}})
    data = load_train_data(tv)
    if data.val is None:
        raise SystemExit("the data has no val split and the recipe carves none (data.val_fraction 0)")
    root = out / "data"
    if not (root / "val" / "annotations.json").is_file():
        write_coco(data.val, root / "val")
    records = sorted(data.train.images, key=lambda r: (r.file_name, r.id))
    order = np.random.default_rng(seed).permutation(len(records))
    names = [c.name for c in sorted(data.categories, key=lambda c: c.id)]
    splits = {}
    for f in fractions:
        n = max(1, round(len(records) * f / 100))
        lab, rest = [records[i] for i in order[:n]], [records[i] for i in order[n:]]
        folder = root / f"f{f}"
        if not (folder / "labelled" / "annotations.json").is_file():
            write_coco(replace(data.train, images=lab), folder / "labelled")
            unl = folder / "unlabeled"
            unl.mkdir(parents=True, exist_ok=True)
            for r in rest:
                dest = unl / f"{r.id}_{Path(r.file_name).name}"
                if r.data is not None:
                    dest.write_bytes(r.data)
                else:
                    shutil.copyfile(data.train.image_path(r), dest)
        yaml_path = write_dataset_yaml(root / f"f{f}.yaml", {"train": f"f{f}/labelled", "val": "val"}, names)
        splits[f] = {"yaml": yaml_path, "unlabeled": folder / "unlabeled" if rest else None,
                     "labelled": len(lab), "unlabelled": len(rest)}
    print(f"train pool {len(records)} images, val {len(data.val)} images", flush=True)
    return splits


def run_one(cfg: dict[str, Any], split: dict[str, Any], steps: int, out: Path, unlabeled: str | None,
            semi: dict[str, Any], threads: int | None) -> dict[str, Any]:
    import maskkit
    from maskkit.config import merge_overrides
    from maskkit.engine.data import steps_per_epoch

    bs = int(cfg.get("data", {}).get("batch_size", 2))
    per_epoch = steps_per_epoch(split["labelled"], bs)
    epochs = max(1, round(steps / per_epoch))
    overrides: dict[str, Any] = {
        "data.path": str(split["yaml"]), "data.unlabeled": unlabeled, "tune.split": "val",
        "schedule.tune_thresholds": False,
        "schedule.epochs": epochs, "schedule.val_every": epochs, "schedule.patience": None,
        "schedule.max_minutes": None, "schedule.val_loss": False, "output.out": str(out),
        "output.progress": False, "output.tensorboard": False, "output.plots": False, "threads": threads,
        **semi,
    }
    merged = merge_overrides(cfg, overrides, keep_none=False)
    merged["schedule"]["patience"] = None
    merged["schedule"]["max_minutes"] = None
    t0 = time.perf_counter()
    result = maskkit.train(merged)
    minutes = (time.perf_counter() - t0) / 60
    from maskkit.engine.loop import metric_value

    return {"steps": result.steps, "epochs": result.epochs, "minutes": round(minutes, 2),
            "segm_AP": metric_value(result.metrics, "segm.AP"), "segm_AP50": metric_value(result.metrics, "segm.AP50"),
            "run": str(out)}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| labelled | images (lab + unlab) | variant | steps | min | mask AP | AP50 |",
             "|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ap = "n/a" if r["segm_AP"] is None else f"{r['segm_AP']:.3f}"
        ap50 = "n/a" if r["segm_AP50"] is None else f"{r['segm_AP50']:.3f}"
        minutes = "n/a" if r.get("minutes") is None else f"{r['minutes']:.1f}"
        lines.append(f"| {r['fraction']} % | {r['labelled']} + {r['unlabelled_used']} | {r['variant']} | "
                     f"{r['steps']} | {minutes} | {ap} | {ap50} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for variant, style in (("supervised", "o-"), ("semi-supervised", "s--")):
        scored = [r for r in rows if r["segm_AP"] is not None]
        pts = sorted((r["fraction"], r["segm_AP"]) for r in scored if r["variant"] == variant)
        if variant == "semi-supervised":  # the curve ends at 100 %, where both variants are the same run
            pts += [(100, r["segm_AP"]) for r in scored if r["variant"] == "supervised" and r["fraction"] == 100]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=variant)
    ax.set_xscale("log")
    ax.set_xticks([10, 25, 50, 100], ["10", "25", "50", "100"])
    ax.set_xlabel("labelled training images (%)")
    ax.set_ylabel("mask AP (val)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg, data_path = base_config(args, out)
    splits = write_splits(cfg, data_path, sorted(args.fractions), args.seed, out)
    semi = key_values(args.semi, "semi.")
    rows: list[dict[str, Any]] = []
    results = out / "results.json"
    if args.resume and results.is_file():
        rows = json.loads(results.read_text())["rows"]
    done = {(r["fraction"], r["variant"]) for r in rows}
    for f in args.fractions:
        split = splits[f]
        variants = [("supervised", None)] if "supervised" in args.variants else []
        pool = args.pool or (str(split["unlabeled"]) if split["unlabeled"] else None)
        if "semi" in args.variants and f < 100 and pool:
            variants.append(("semi-supervised", pool))
        for variant, unlabeled in variants:
            if (f, variant) in done:
                print(f"== {f} % labelled, {variant}: kept from {results}", flush=True)
                continue
            print(f"== {f} % labelled ({split['labelled']} images), {variant}", flush=True)
            row = run_one(cfg, split, args.steps, out / "runs" / f"f{f}-{variant}", unlabeled, semi, args.threads)
            row.update({"fraction": f, "variant": variant, "labelled": split["labelled"],
                        "unlabelled_used": "pool" if unlabeled and args.pool else
                        (split["unlabelled"] if unlabeled else 0)})
            rows.append(row)
            print(json.dumps(row), flush=True)
            tmp = results.with_suffix(".tmp")
            tmp.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
            tmp.replace(results)
    rows.sort(key=lambda r: (r["fraction"], r["variant"] != "supervised"))
    text = table(rows)
    model = cfg.get("model", {}).get("name", "maskrcnn_effl0_fpn")
    head = (f"data {args.data or 'synthetic'}; model {model}; {args.steps} steps per run (batch "
            f"{cfg.get('data', {}).get('batch_size', 2)}); semi {semi or 'defaults'}")
    (out / "table.md").write_text(head + "\n\n" + text + "\n")
    plot(rows, out / "curve.png", head if len(head) < 90 else f"{model}, {args.steps} steps")
    print(head)
    print(text)
    print(f"wrote {out / 'table.md'}, {out / 'curve.png'}, {results}")
    if any(math.isnan(r["segm_AP"] or 0.0) for r in rows):
        print("note: some runs have no mask AP")


if __name__ == "__main__":
    main()
