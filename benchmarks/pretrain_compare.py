"""Encoder initialisation for nuclei: from scratch vs self-supervised (``maskkit pretrain``) vs ImageNet.

Nuclei (default): ``configs/dsb2018-bottomup.yaml`` (bottom-up U-Net on EfficientNet-Lite0) fine-tuned on the
DSB 2018 stage-1 subset for the same budget of ``--steps`` optimiser steps (whole epochs reaching it) from:

* ``scratch``: random encoder weights;
* ``ssl``: the encoder pretrained by ``maskkit pretrain --method M --init scratch`` for ``--pretrain-minutes`` on
  the unlabeled images: the subset's 48 non-val images plus the 200 pool images (``dsb2018-stage1-train-pool``,
  masks unused); the 12 val images are left out of pretraining too;
* ``imagenet``: the offline ImageNet EfficientNet-Lite0 weights (the recipe's default);
* ``imagenet+ssl``: ImageNet weights further pretrained the same way (``--init imagenet``).

Each fine-tune is scored on the val split (mask AP from the run's final validation; thresholds and ``best.pt``
are chosen on the recipe's held-back training slice, never on val). ``--data synthetic`` runs a tiny version on
maskkit's synthetic shapes (bottomup_r18 at 64 px; a smoke test, numbers meaningless).

Outputs in ``--out``: ``results.json`` and ``table.md``.
Run: ``python benchmarks/pretrain_compare.py --steps 1500 --pretrain-minutes 60 --out runs/bench-pretrain``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"
SUBSET = SHARED / "dsb2018-stage1-train-subset" / "stage1_train"
POOL = SHARED / "dsb2018-stage1-train-pool" / "stage1_train"
RECIPE = ROOT / "configs" / "dsb2018-bottomup.yaml"
ARMS = ("scratch", "ssl", "imagenet", "imagenet+ssl")


def setup(kind: str, out: Path) -> tuple[dict[str, Any], list[Path], Path]:
    """(fine-tuning config, unlabeled images for pretraining, their root)."""
    from maskkit.data.splits import load_split
    from maskkit.engine.data import random_val_split

    if kind == "nuclei":
        cfg = yaml.safe_load(RECIPE.read_text())
        cfg["data"]["path"] = str(SUBSET)
        subset = load_split(SUBSET, "train")
        train, _val = random_val_split(subset, cfg["data"]["val_fraction"], cfg.get("seed", 0),
                                       cfg["data"]["val_split"])
        images = [subset.image_path(r) for r in train.images] + sorted(POOL.glob("*/images/*.png"))
        return cfg, images, SHARED.resolve()
    from maskkit.data.synth import write_synthetic

    data = out / "synthetic"
    if not (data / "annotations.json").is_file():
        write_synthetic(data, images=16, size=64, seed=0, workers=1)
    cfg = {"model": {"name": "bottomup_r18", "min_size": 64, "max_size": 128},
           "data": {"path": str(data), "val_fraction": 0.25, "batch_size": 4},
           "augment": {"min_size": [64], "max_size": 128, "channels": 3}, "optim": {"warmup_steps": 2}}
    return cfg, sorted((data / "images").glob("*.png")), data.resolve()


def fine_tune(cfg: dict[str, Any], arm: str, weights: Path | None, steps: int, out: Path, threads: int | None
              ) -> dict[str, Any]:
    import maskkit
    from maskkit.engine.api import resolve_config
    from maskkit.engine.data import load_train_data, steps_per_epoch

    cfg = json.loads(json.dumps(cfg))
    cfg["model"]["pretrained_backbone"] = arm.startswith("imagenet") and weights is None
    if weights is not None:
        cfg["model"]["weights"] = str(weights)
    cfg["output"] = {"out": str(out / f"finetune-{arm}"), "tensorboard": False, "plots": False, "progress": False}
    if threads:
        cfg["threads"] = threads
    n = len(load_train_data(resolve_config(cfg)).train.images)
    epochs = max(1, math.ceil(steps / steps_per_epoch(n, int(cfg["data"].get("batch_size", 2)))))
    cfg.setdefault("schedule", {}).update(epochs=epochs, val_every=epochs, patience=None, val_loss=False)
    t0 = time.perf_counter()
    result = maskkit.train(cfg)
    return {"arm": arm, "AP": float(result.metrics["segm"]["AP"]), "AP50": float(result.metrics["segm"]["AP50"]),
            "steps": result.steps, "train_images": n, "finetune_s": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=("nuclei", "synthetic"), default="nuclei")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--method", default="simclr", help="simclr, byol or dino")
    ap.add_argument("--steps", type=int, default=1500, help="fine-tuning steps of every arm")
    ap.add_argument("--pretrain-minutes", type=float, default=60.0)
    ap.add_argument("--pretrain-steps", type=int, default=None, help="also cap pretraining at this many steps")
    ap.add_argument("--pretrain-size", type=int, default=192, help="pretraining view size (px)")
    ap.add_argument("--pretrain-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-pretrain")
    ap.add_argument("--resume", action="store_true", help="keep the finished arms of --out's results.json")
    args = ap.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if bad := [a for a in arms if a not in ARMS]:
        ap.error(f"unknown arms {bad}; choose from {', '.join(ARMS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    cfg, images, root = setup(args.data, args.out)
    model = cfg["model"]["name"]
    print(f"data: {args.data}; model {model}; fine-tune {args.steps} steps per arm; {len(images)} unlabeled images "
          f"for {args.method} pretraining ({args.pretrain_minutes} min)", flush=True)
    from maskkit.engine.pretrain import pretrain

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    results = args.out / "results.json"
    rows = json.loads(results.read_text())["rows"] if args.resume and results.is_file() else []
    done = {r["arm"] for r in rows}
    for arm in arms:
        if arm in done:
            print(f"{arm}: kept from {results}", flush=True)
            continue
        weights, pre = None, {}
        if arm.endswith("ssl"):
            init = "imagenet" if arm.startswith("imagenet") else "scratch"
            res = pretrain(images, model, args.out / f"pretrain-{arm}", method=args.method,
                           minutes=args.pretrain_minutes, steps=args.pretrain_steps, batch_size=args.pretrain_batch,
                           size=args.pretrain_size, init=init, root=root,
                           channels=int(cfg.get("augment", {}).get("channels") or 3))
            weights, pre = res.weights, {"pretrain_steps": res.steps, "pretrain_s": round(res.seconds, 1)}
        row = {**fine_tune(cfg, arm, weights, args.steps, args.out, args.threads), **pre}
        rows.append(row)
        print(json.dumps(row), flush=True)
        tmp = results.with_suffix(".tmp")
        tmp.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
        tmp.replace(results)
    lines = ["| encoder init | mask AP | AP50 | fine-tune steps | pretrain steps |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['arm']} | {r['AP']:.4f} | {r['AP50']:.4f} | {r['steps']} | {r.get('pretrain_steps', '')} |"
              for r in rows]
    table = "\n".join(lines) + "\n"
    (args.out / "table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
