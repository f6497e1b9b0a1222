"""Simulated active learning: does ``maskkit select`` pick images that raise mask AP faster than random picks?

Nuclei (default): the DSB 2018 stage-1 subset's val split as ``configs/dsb2018-bottomup.yaml`` defines it (ids
sorted, every 5th: 12 images) is the test set; ``--initial`` images of the subset's other 48 are labelled at
the start (a permutation seeded by ``--seed``); the pool is ``dsb2018-stage1-train-pool`` (200 images, masks
hidden until an image is picked). Each round trains the recipe from its initial weights (ImageNet
EfficientNet-Lite0) on the labelled images for the same budget of ``--steps`` optimiser steps (whole epochs:
the smallest count reaching it), scores mask AP on the val split, then each strategy picks ``--k`` pool images
(``maskkit.active.select`` on the round's model, with the labelled images as diversity centers; ``random``:
a seeded permutation) whose masks are then revealed. The first round (the same ``--initial`` images for every
strategy) is trained once and shared. No choice is made on the val images: post-processing thresholds stay
at the model's defaults (``schedule.tune_thresholds: false``) and the last weights are scored.

``--data synthetic`` runs the same loop on maskkit's synthetic shapes with a tiny Mask R-CNN (a smoke test of
the loop: minutes on a busy CPU, numbers meaningless at that size).

Outputs in ``--out``: ``results.json`` (every round of every strategy), ``table.md`` (mask AP per round) and
``curve.png`` (AP against labelled images). Round datasets are written (images copied) under ``--out/work``.

Run: ``python benchmarks/active_learning.py --initial 8 --k 8 --rounds 5 --steps 300 --out runs/bench-al``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"
SUBSET = SHARED / "dsb2018-stage1-train-subset" / "stage1_train"
POOL = SHARED / "dsb2018-stage1-train-pool" / "stage1_train"
RECIPE = ROOT / "configs" / "dsb2018-bottomup.yaml"
STRATEGIES = ("random", "entropy", "margin", "mc-dropout", "diversity")

TINY: dict[str, Any] = {  # the tiny Mask R-CNN of the tests (tests/conftest.py TINY_MASKRCNN), for --data synthetic
    "model": {"name": "maskrcnn_r18_fpn", "pretrained_backbone": False, "anchor_sizes": [8, 16, 32, 64, 128],
              "options": {"box_batch_size_per_image": 16, "rpn_batch_size_per_image": 16,
                          "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
                          "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20, "box_detections_per_img": 20,
                          "box_score_thresh": 0.01}},
    "data": {"batch_size": 4},
    "augment": {"min_size": [64], "max_size": None},
    "optim": {"lr": 2e-3, "warmup_steps": 5},
    "seed": 0,
}


def load_universe(kind: str, work: Path, seed: int, synthetic_pool: int) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(labelled candidates, pool, val, base config)`` as annotation sets."""
    from maskkit.data.splits import load_split
    from maskkit.engine.data import random_val_split

    if kind == "nuclei":
        cfg = yaml.safe_load(RECIPE.read_text())
        subset = load_split(SUBSET, "train")
        train, val = random_val_split(subset, cfg["data"]["val_fraction"], seed, cfg["data"]["val_split"])
        return train, load_split(POOL, "train"), val, cfg
    from maskkit.data.synth import write_splits

    data = work / "synthetic"
    if not (data / "dataset.yaml").is_file():
        write_splits(data, train=synthetic_pool + 8, val=8, size=64, seed=seed, workers=1)
    train = load_split(data / "dataset.yaml", "train")
    records = sorted(train.images, key=lambda r: r.file_name)
    return (replace(train, images=records[:8]), replace(train, images=records[8:]),
            load_split(data / "dataset.yaml", "val"), dict(TINY))


def write_round(work: Path, name: str, records: list[tuple[Any, Any]], categories: list[Any]) -> str:
    """The round's labelled ``(annotation set, record)`` pairs as a COCO dataset (images copied) under ``work``;
    returns its path relative to ``work``."""
    from maskkit.data.annotations import AnnotationSet
    from maskkit.data.formats.coco import write_coco

    images = [replace(r, id=i, file_name=str(aset.image_path(r))) for i, (aset, r) in enumerate(records, start=1)]
    write_coco(AnnotationSet(categories, images, image_root=work), work / name)
    return name


def train_round(work: Path, base: dict[str, Any], train_rel: str, n: int, steps: int, run: Path, threads: int | None
                ) -> tuple[Path, float, int, float]:
    """Train on ``train_rel`` for about ``steps`` steps; returns (run folder, val mask AP, steps, seconds)."""
    import maskkit
    from maskkit.engine.data import steps_per_epoch

    cfg = json.loads(json.dumps(base))
    bs = int(cfg.get("data", {}).get("batch_size", 2))
    epochs = max(1, math.ceil(steps / steps_per_epoch(n, bs)))
    yaml_path = work / f"{run.name}.yaml"
    yaml_path.write_text(yaml.safe_dump({"train": train_rel, "val": "val"}))
    cfg.setdefault("data", {}).update(path=str(yaml_path))
    cfg.setdefault("schedule", {}).update(epochs=epochs, val_every=epochs, patience=None, tune_thresholds=False,
                                          val_loss=False)
    cfg["schedule"].pop("metric", None)
    cfg["tune"] = {"split": "val"}
    cfg["output"] = {"out": str(run), "tensorboard": False, "plots": False, "progress": False}
    if threads:
        cfg["threads"] = threads
    t0 = time.perf_counter()
    result = maskkit.train(cfg)
    return run, float(result.metrics["segm"]["AP"]), int(result.steps), time.perf_counter() - t0


def pick(strategy: str, run: Path, pool: Any, left: list[int], labelled_paths: list[Path], k: int, seed: int,
         round_no: int) -> list[int]:
    """Indices (into ``pool.images``) of the ``k`` images ``strategy`` picks from ``left``."""
    if strategy == "random":
        rng = np.random.default_rng(seed * 1000 + round_no)
        return [left[i] for i in rng.permutation(len(left))[:k]]
    from maskkit.active.select import PoolImage, select

    images = [PoolImage(pool.image_path(pool.images[i]), pool.images[i].file_name,
                        Path(pool.images[i].file_name).with_suffix("").as_posix()) for i in left]
    sel = select(run, images, k, strategy, labeled=labelled_paths, pool_root=pool.image_root, seed=seed)
    by_path = {im.path: i for im, i in zip(images, left, strict=True)}
    return [by_path[s.image.path] for s in sel.top]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=("nuclei", "synthetic"), default="nuclei")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--initial", type=int, default=8, help="labelled images at the start")
    ap.add_argument("--k", type=int, default=8, help="images revealed per round")
    ap.add_argument("--rounds", type=int, default=5, help="trainings per strategy (the first on --initial images)")
    ap.add_argument("--steps", type=int, default=300, help="training steps per round (whole epochs reaching it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of training (default: torch's)")
    ap.add_argument("--synthetic-pool", type=int, default=24, help="pool size of --data synthetic")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-active-learning")
    ap.add_argument("--resume", action="store_true", help="Keep the finished strategies of --out/results.json.")
    args = ap.parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        ap.error(f"unknown strategies {bad}; choose from {', '.join(STRATEGIES)}")
    work = (args.out / "work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    candidates, pool, val, base = load_universe(args.data, work, args.seed, args.synthetic_pool)
    write_round(work, "val", [(val, r) for r in val.images], val.categories)
    order = np.random.default_rng(args.seed).permutation(len(candidates.images))[: args.initial]
    start = [candidates.images[i] for i in sorted(order.tolist())]
    print(f"data: {args.data}; {len(start)} labelled at the start, pool {len(pool.images)}, val {len(val.images)}, "
          f"k {args.k}, {args.rounds} rounds of ~{args.steps} steps; strategies {', '.join(strategies)}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    first: tuple[Path, float, int, float] | None = None
    saved = args.out / "results.json"
    if args.resume and saved.is_file():  # finished strategies of an earlier call, and its shared first round
        results = {k: v for k, v in json.loads(saved.read_text())["results"].items() if len(v) == args.rounds}
        if results and (args.out / "start-r0").is_dir():
            r0 = next(iter(results.values()))[0]
            first = (args.out / "start-r0", float(r0["AP"]), int(r0["steps"]), float(r0["train_s"]))
        print(f"resumed: {', '.join(results) or 'nothing'} already done", flush=True)
    for strategy in strategies:
        if strategy in results:
            continue
        labelled = [(candidates, r) for r in start]
        left = list(range(len(pool.images)))
        picked_paths = [candidates.image_path(r) for r in start]
        results[strategy] = []
        for rnd in range(args.rounds):
            if rnd == 0 and first is not None:  # every strategy starts from the same images: train them once
                run, ap_, steps, secs = first
            else:
                name = "start-r0" if rnd == 0 else f"{strategy}-r{rnd}"
                train_rel = write_round(work, name, labelled, candidates.categories)
                run, ap_, steps, secs = train_round(work, base, train_rel, len(labelled), args.steps,
                                                    args.out / name, args.threads)
                if rnd == 0:
                    first = (run, ap_, steps, secs)
            row = {"round": rnd, "labelled": len(labelled), "AP": ap_, "steps": steps, "train_s": round(secs, 1)}
            if rnd < args.rounds - 1 and left:
                t0 = time.perf_counter()
                chosen = pick(strategy, run, pool, left, picked_paths, args.k, args.seed, rnd)
                row["select_s"] = round(time.perf_counter() - t0, 1)
                row["picked"] = [pool.images[i].file_name for i in chosen]
                labelled += [(pool, pool.images[i]) for i in chosen]
                picked_paths += [pool.image_path(pool.images[i]) for i in chosen]
                left = [i for i in left if i not in set(chosen)]
            results[strategy].append(row)
            print(f"{strategy:>10} round {rnd}: {row['labelled']:3d} labelled, mask AP {ap_:.4f} ({steps} steps, "
                  f"{secs:.0f} s)", flush=True)
            (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                               "results": results}, indent=1))
    table = render_table(results)
    (args.out / "table.md").write_text(table)
    plot(results, args.out / "curve.png", args.data)
    print(table)
    print(f"wrote {args.out / 'results.json'}, {args.out / 'table.md'}, {args.out / 'curve.png'}")
    return 0


def render_table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: one row per strategy, mask AP per round (labelled image count in the header), and the mean."""
    counts = [r["labelled"] for r in next(iter(results.values()))]
    lines = ["| strategy | " + " | ".join(f"{n} labelled" for n in counts) + " | mean AP |",
             "|---|" + "---:|" * (len(counts) + 1)]
    for strategy, rows in results.items():
        aps = [r["AP"] for r in rows]
        lines.append(f"| {strategy} | " + " | ".join(f"{a:.4f}" for a in aps) + f" | {np.mean(aps):.4f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, list[dict[str, Any]]], path: Path, data: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy, rows in results.items():
        ax.plot([r["labelled"] for r in rows], [r["AP"] for r in rows], marker="o", label=strategy,
                linestyle="--" if strategy == "random" else "-")
    ax.set_xlabel("labelled images")
    ax.set_ylabel("mask AP (val)")
    ax.set_title(f"active learning, {data}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
