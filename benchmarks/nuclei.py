"""Nuclei against the peer baselines: train maskkit recipes for a CPU budget, score them like the peers.

The split, budget and scoring of ``../shared/notes/peer-baselines.md``: DSB 2018 stage-1 subset, ids
sorted, every 5th val (12 images, 510 nuclei), 20 CPU minutes of training each (2 threads, one job at a
time), COCO ``segm`` AP on full-resolution masks with maxDets [1, 100, 1000] (pycocotools-exact through
faster-coco-eval), F1 at IoU 0.5 with one-to-one matching. Added here: Boundary AP and the same metrics
with test-time augmentation (flips, merged at mask level).

Each recipe trains in its own ``maskkit train`` process (``--minutes``; validation only at the end, so the
budget is spent training), then its ``best.pt`` is scored on the val split. ``--skip-train`` scores runs
that already exist in ``--out``.

What is chosen where: the recipes hold back ``tune.images`` training images (``tune.split: train_slice``),
which make every choice of the run (post-processing thresholds, ``best.pt``, early stopping); the 12 val
images are only scored (``score`` takes exactly the run's ``val_images.json`` images). The table's "chosen
on" column says, per row, what was tuned and on which images (from the run's ``metrics.json``).

Beside the val score, the held-out-like proxy of ``benchmarks/nuclei_proxy.py`` (pool images of image types the
run's training images lack; ``proxy AP``) and the same images under stain, exposure, focus and scale shifts
(``shifted AP``, the mean over its six conditions); ``--no-proxy`` leaves both out.

``--procs 2`` trains each recipe under ``torchrun`` as two processes of one thread (the recipe's batch split over
them): the same cores and global batch, more of each step on both cores (``benchmarks/ddp_train.py``).

``--set KEY=VALUE`` (repeatable) overrides the recipes' configs, e.g. to measure a lever at the full budget.

Recipes: ``dsb2018`` (Mask R-CNN), ``dsb2018-bottomup`` (seeded watershed), ``dsb2018-stardist`` (star-convex
polygons) and ``dsb2018-cellpose`` (flow fields), side by side at the same split and budget.

Run: ``python benchmarks/nuclei.py [--minutes 20] [--recipes dsb2018,dsb2018-bottomup,dsb2018-stardist,dsb2018-cellpose]
[--out runs/bench-nuclei]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "dsb2018-stage1-train-subset" / "stage1_train"

PEERS = [  # ../shared/notes/peer-baselines.md (2026-11-25, same machine type, split, budget and scorer)
    ("Ultralytics YOLOv8n-seg, scratch, imgsz 320", 7.1, 0.416, 0.810),
    ("torchvision Mask R-CNN MobileNetV3-FPN, random init", 0.22, 0.121, 0.315),
    ("torchvision Mask R-CNN EfficientNet-Lite0 (ImageNet) + GN FPN", 0.18, 0.431, 0.823),
]


RECIPES = ("dsb2018", "dsb2018-bottomup", "dsb2018-stardist", "dsb2018-cellpose")
"""The default rows: Mask R-CNN, then the bottom-up family (seeded watershed, StarDist-, Cellpose-style)."""
NOTHING_TO_TUNE = {"dsb2018"}
"""Recipes whose model has no post-processing thresholds to tune: validated once at the end (``best.pt`` = last),
their runs choose nothing, so the benchmark trains them on all 48 non-val images (``tune.split: val``) instead of
holding back a tuning slice that would make no choice."""


def train(recipe: str, out: Path, minutes: float, procs: int = 1, overrides: Sequence[str] = ()) -> float:
    """Train ``configs/<recipe>.yaml`` into ``out`` for ``minutes``; returns the wall seconds.

    ``procs`` > 1: under ``torchrun`` with that many processes of one thread each, the recipe's batch split
    over them (the same global batch and the same cores as one process of ``procs`` threads). ``overrides``:
    ``KEY=VALUE`` settings passed on as ``--set``."""
    config = ROOT / "configs" / f"{recipe}.yaml"
    cmd = ["-m", "maskkit", "train", "--config", str(config), "--data", str(DATA), "--out", str(out),
           "--minutes", str(minutes), "--set", "schedule.val_every=100000", "--set", "schedule.patience=null"]
    if recipe in NOTHING_TO_TUNE:
        cmd += ["--set", "tune.split=val"]
    for kv in overrides:
        cmd += ["--set", kv]
    env = dict(os.environ)
    if procs > 1:
        batch = int(yaml.safe_load(config.read_text())["data"]["batch_size"])
        if batch % procs:
            sys.exit(f"{recipe}: batch {batch} does not split over {procs} processes")
        cmd = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *cmd,
               "--set", "threads=1", "--set", f"data.batch_size={batch // procs}"]
        env["OMP_NUM_THREADS"] = "1"
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *cmd], check=True, cwd=ROOT, env=env)
    return time.perf_counter() - t0


def train_rate(run: Path) -> float:
    """Training images per second of a run: images stepped over the summed step times of steps.csv (runs
    logged before the ``seconds`` column: over the run's time budget). A DDP run (``ranks/``) steps its
    per-process batch on every rank."""
    import csv

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    batch = int(cfg["data"]["batch_size"]) * max(1, len(list((run / "ranks").glob("rank*.json"))))
    with (run / "steps.csv").open() as f:
        rows = list(csv.DictReader(f))
    seconds = sum(float(r["seconds"]) for r in rows if r.get("seconds"))
    seconds = seconds or 60.0 * float(cfg["schedule"].get("max_minutes") or "nan")
    return len(rows) * batch / seconds


def score(run: Path, tta: bool, predictor: Any = None) -> dict[str, float]:
    """Mask AP / AP50 (maxDets 1000), Boundary AP and F1@0.5 of ``run/best.pt`` (or of ``predictor``, e.g. an
    ensemble with ``run`` among its members) on the run's val split."""
    from maskkit.engine.data import images_to_score
    from maskkit.evaluation import InstanceEvaluator
    from maskkit.evaluation.results import image_loader
    from maskkit.inference.predictor import Predictor
    from maskkit.inference.tta import FLIPS

    if predictor is None:
        predictor = Predictor(run, device="cpu", tta=tta, tta_flips=FLIPS if tta else None)
    kept = images_to_score(DATA, "val", run)
    val, contains_training = kept.images, kept.contains_training_images
    if contains_training:
        sys.exit(f"{run}: cannot tell which images it trained on (no val_images.json listing them)")
    ev = InstanceEvaluator(val.categories, max_dets=[1, 100, 1000], extras=("matching", "boundary"))
    load = image_loader(val)
    t0 = time.perf_counter()
    for rec in val.images:
        ev.process([rec], [predictor.predict(load(rec.id))])
    seconds = time.perf_counter() - t0
    m = ev.evaluate()
    return {"AP": m["segm"]["AP"], "AP50": m["segm"]["AP50"], "boundary_AP": m["boundary"]["AP"],
            "F1@0.5": m["matching"]["f1@0.50"], "AR@1000": m["segm"]["AR1000"], "images": len(val.images),
            "s/image": seconds / len(val.images)}


def chosen_on(run: Path) -> str:
    """What the run tuned and on which images (its ``metrics.json`` and ``val_images.json``)."""
    import json

    tuning = json.loads((run / "metrics.json").read_text()).get("tuning")
    split = json.loads((run / "val_images.json").read_text())
    if not tuning:
        return (f"nothing (validated once at the end: best.pt = last); trained on all "
                f"{len(split['train_images'])} non-val images")
    if tuning.get("split") == "train_slice":
        where = f"{len(split['tune_images'])} held-back train images"
    else:  # runs before tune.split: the reported val images themselves
        where = f"the {len(split['images'])} reported val images"
    return f"post-processing thresholds ({tuning['combinations']} combinations) on {where}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-nuclei")
    ap.add_argument("--skip-train", action="store_true", help="Score the runs already in --out.")
    ap.add_argument("--no-tta", action="store_true", help="Skip the TTA rows.")
    ap.add_argument("--no-proxy", action="store_true", help="Skip the held-out-like proxy columns.")
    ap.add_argument("--procs", type=int, default=1,
                    help="train under torchrun with this many one-thread processes (the batch split over them)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every recipe (repeatable; shown in the table's model column)")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"the shared nuclei data is missing: {DATA}")
    rows: list[tuple[str, float, dict[str, Any], dict[str, Any] | None, str, tuple[float, float] | None]] = []
    for recipe in args.recipes.split(","):
        run = args.out / recipe
        if not args.skip_train:
            train(recipe, run, args.minutes, args.procs, args.overrides)
        name = yaml.safe_load((run / "config.yaml").read_text())["model"]["name"]
        plain = score(run, tta=False)
        tta = None if args.no_tta else score(run, tta=True)
        held_out = None if args.no_proxy else proxy(run)
        how = "".join(f", {kv}" for kv in args.overrides)
        how += f", {args.procs} DDP processes x 1 thread" if args.procs > 1 else ""
        rows.append((f"maskkit {name} ({recipe}.yaml{how})", train_rate(run), plain, tta, chosen_on(run), held_out))
        print(f"{recipe}: {plain} | TTA {tta} | proxy, shifted {held_out}", flush=True)

    print(f"\nDSB 2018 nuclei val (12 images, 510 nuclei), {args.minutes:g} CPU minutes of training each\n")
    print("| model | train img/s | mask AP (maxDets 1000) | AP50 | Boundary AP | F1@0.5 | AR@1000 | s/image "
          "| with TTA: AP / F1@0.5 | proxy AP | shifted AP | chosen on |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, rate, ap_, ap50 in PEERS:
        print(f"| {name} (peer) | {rate:.2f} | {ap_:.3f} | {ap50:.3f} | – | – | – | – | – | – | – | see peer notes |")
    for name, rate, m, t, where, held_out in rows:
        tta_cell = f"{t['AP']:.3f} / {t['F1@0.5']:.3f}" if t else "–"
        proxy_cells = f"{held_out[0]:.3f} | {held_out[1]:.3f}" if held_out else "– | –"
        print(f"| {name} | {rate:.2f} | {m['AP']:.3f} | {m['AP50']:.3f} | {m['boundary_AP']:.3f} | "
              f"{m['F1@0.5']:.3f} | {m['AR@1000']:.3f} | {m['s/image']:.2f} | {tta_cell} | {proxy_cells} | {where} |")


def proxy(run: Path, predictor: Any = None) -> tuple[float, float]:
    """``run``'s (or ``predictor``'s) mask AP on the held-out-like proxy images of ``run`` and their mean over the
    shifted conditions."""
    from nuclei_proxy import SHIFTS, proxy_ids  # beside this file
    from nuclei_proxy import score as proxy_score

    ids, summary = proxy_ids(run)
    m = proxy_score(run, ids, set(summary["colour_ids"]), SHIFTS, predictor)
    return m["all"]["AP"], sum(m[f"{n}@{v:g}"]["AP"] for n, v in SHIFTS) / len(SHIFTS)


if __name__ == "__main__":
    main()
