"""Does corruption / adversarial training help? The same step budget with and without, scored by ``maskkit robustness``.

Four variants of one training config, each trained for the same number of epochs (so the same optimiser steps,
batch size, schedule and seed; adversarial training costs extra forward/backward passes per step, which the
wall time column shows but the budget does not count):

* ``baseline``: the config as it is;
* ``corruption``: ``augment.corruption`` on (``--corruption-p``, severities 1-3, every pixel-preserving corruption);
* ``adversarial``: ``adversarial`` on (PGD, ``--adv-eps``, ``--adv-steps``, ``--adv-fraction`` of the images);
* ``both``.

Each run's ``best.pt`` is then scored by :func:`maskkit.robustness.run_robustness` on held-out images (the
synthetic data's test split, or a config's run val images, as ``maskkit eval --model`` picks them): clean mask
AP, mean corruption AP (``mPC``, ``--corruptions`` at ``--severities``) and relative robustness (``rPC``), and
mask AP under FGSM and PGD at ``--eps``. Held-out corruptions: by default the evaluation uses the ImageNet-C set
(training draws from every pixel-preserving corruption, so most evaluation corruptions were also seen in
training; ``--train-corruptions`` can hold some out).

Data: ``--config CONFIG.yaml`` (e.g. ``configs/dsb2018.yaml``: the nuclei recipe, its data path and its split),
else synthetic shapes (``maskkit.data.synth``, ``--images`` at ``--size`` px, split train/val/test) with a small
bottom-up model. Results: ``OUT/robust_training.json`` (variants of earlier calls kept) and a printed table.

A config's early stopping and time budget are switched off (``--minutes-per-run`` sets one again, which breaks
the equal-steps budget). Run from the repository root (configs name their data relative to it):
``python benchmarks/robust_training.py [--out runs/bench-robust] [--epochs 12] [--config configs/dsb2018.yaml
--minutes-per-run ...] [--variants baseline,corruption,adversarial,both]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

VARIANTS = ("baseline", "corruption", "adversarial", "both")

SYNTH_CONFIG: dict[str, Any] = {
    "model": {"name": "bottomup_mbv2", "pretrained_backbone": False,
              "options": {"decoder_channels": [32, 32, 32, 16, 16]}},
    "data": {"batch_size": 4},
    "augment": {"min_size": [96], "max_size": None, "hflip": 0.5, "vflip": 0.5},
    "optim": {"lr": 3e-3, "warmup_steps": 5},
    "schedule": {"val_loss": False},
    "output": {"tensorboard": False, "plots": False, "progress": False},
    "threads": 1,
}


def variant_config(base: dict[str, Any], variant: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """``base`` with the variant's options, the shared budget and its own output folder."""
    cfg = json.loads(json.dumps(base))
    cfg.setdefault("schedule", {})["epochs"] = args.epochs
    cfg["schedule"]["patience"] = None  # no early stopping: every variant takes the same steps
    cfg["schedule"].pop("max_minutes", None)
    if args.minutes_per_run:
        cfg["schedule"]["max_minutes"] = args.minutes_per_run
    cfg.setdefault("output", {})["out"] = str(out / variant)
    if args.threads:
        cfg["threads"] = args.threads
    if variant in ("corruption", "both"):
        cfg.setdefault("augment", {})["corruption"] = {"p": args.corruption_p, "severities": [1, 2, 3],
                                                        "names": args.train_corruptions}
    if variant in ("adversarial", "both"):
        cfg["adversarial"] = {"method": "pgd", "eps": args.adv_eps, "steps": args.adv_steps,
                              "fraction": args.adv_fraction}
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-robust"))
    ap.add_argument("--config", type=Path, default=None, help="A training config (default: synthetic shapes).")
    ap.add_argument("--epochs", type=int, default=12, help="The budget of every variant.")
    ap.add_argument("--minutes-per-run", type=float, default=None, help="Also cap each run's wall time.")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--images", type=int, default=64, help="Synthetic images (train/val/test split).")
    ap.add_argument("--size", type=int, default=96, help="Synthetic image size.")
    ap.add_argument("--corruption-p", type=float, default=0.5)
    ap.add_argument("--train-corruptions", default=None, help="Corruption names/groups trained on (default: all).")
    ap.add_argument("--adv-eps", type=float, default=2 / 255)
    ap.add_argument("--adv-steps", type=int, default=2)
    ap.add_argument("--adv-fraction", type=float, default=0.5)
    ap.add_argument("--corruptions", default="imagenet-c", help="Corruptions scored.")
    ap.add_argument("--severities", default="1,3,5")
    ap.add_argument("--eps", default="2/255,4/255")
    ap.add_argument("--pgd-steps", type=int, default=5)
    ap.add_argument("--max-dets", default="1,100,1000")
    ap.add_argument("--skip-train", action="store_true", help="Score runs that already exist in --out.")
    ap.add_argument("--threads", type=int, default=None, help="Torch threads of training and scoring.")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.train_corruptions:
        args.train_corruptions = args.train_corruptions.split(",")

    import maskkit
    from maskkit.robustness import run_robustness

    args.out.mkdir(parents=True, exist_ok=True)
    if args.config is not None:
        base = yaml.safe_load(args.config.read_text())
        data, split = Path(base["data"]["path"]), "val"
    else:
        from maskkit.data.synth import write_synthetic

        data = args.out / "data"
        if not (data / "dataset.yaml").is_file():
            write_synthetic(data, images=args.images, size=args.size, seed=0, val_fraction=0.2, test_fraction=0.2,
                            workers=1)
        base = {**SYNTH_CONFIG, "data": {**SYNTH_CONFIG["data"], "path": str(data / "dataset.yaml")}}
        data, split = data / "dataset.yaml", "test"
    results = args.out / "robust_training.json"
    rows: dict[str, Any] = json.loads(results.read_text())["variants"] if results.is_file() else {}
    for variant in args.variants.split(","):
        cfg = variant_config(base, variant, args, args.out)
        run = Path(cfg["output"]["out"])
        seconds = None
        if not args.skip_train:
            t0 = time.perf_counter()
            result = maskkit.train(cfg)
            seconds = round(time.perf_counter() - t0, 1)
            steps = result.steps
        else:
            steps = None
        rob = run_robustness(run, data, run / "robustness", split=split, corruptions=args.corruptions,
                             severities=args.severities, attacks="fgsm,pgd", eps=args.eps, pgd_steps=args.pgd_steps,
                             max_dets=[int(v) for v in args.max_dets.split(",")], plots=True,
                             log=lambda m: print(m, flush=True)).report
        s = rob["summary"]
        rows[variant] = {"steps": steps, "train_seconds": seconds, "clean": s["clean"], "mPC": s.get("mPC"),
                         "rPC": s.get("rPC"), "adversarial": s.get("adversarial"),
                         "attacks": {a: {"eps": v["eps_labels"], "segm": v["segm"]} for a, v in rob["attacks"].items()}}
        saved = json.loads(results.read_text())["variants"] if results.is_file() else {}  # another call's too
        rows = {**saved, variant: rows[variant]}
        results.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "variants": rows},
                                      indent=2))
        print(f"{variant}: done", flush=True)

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:5.1f}"

    print(f"\n{'variant':12s} {'steps':>6s} {'train s':>8s} {'clean':>6s} {'mPC':>6s} {'rPC':>6s} "
          + " ".join(f"{a + ' ' + e:>14s}" for a in ("fgsm", "pgd") for e in args.eps.split(",")))
    for variant, r in rows.items():
        adv = " ".join(f"{pct(x):>14s}" for a in ("fgsm", "pgd") for x in r["attacks"].get(a, {}).get("segm", []))
        print(f"{variant:12s} {r['steps'] or '-':>6} {r['train_seconds'] or '-':>8} {pct(r['clean']['segm']):>6s} "
              f"{pct((r['mPC'] or {}).get('segm')):>6s} {pct((r['rPC'] or {}).get('segm')):>6s} {adv}")
    print("(mask AP %, held-out images; mPC/rPC over", args.corruptions, "at severities", args.severities + ")")


if __name__ == "__main__":
    main()
