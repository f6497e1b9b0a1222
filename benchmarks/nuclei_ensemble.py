"""Model ensembles at the same budget: N models trained side by side, scored alone and together.

The budget of ``benchmarks/nuclei.py`` is 20 minutes of the 2-core machine. An ensemble that costs no more trains
its ``--members`` models at the same time, each as its own ``maskkit train`` process of one thread (``--threads``)
with its own seed (``seed=k``), for the same ``--minutes``; the single model it must beat trains alone with both
threads (``python benchmarks/nuclei.py --recipes <recipe>``). Every member uses the recipe's split (the 12 val
images never trained on), its held-back training slice for its choices, and nothing else.

Scores, for each member and for the ensemble (:class:`maskkit.inference.ensemble.EnsemblePredictor`; ``--combine``
``auto``: raw maps averaged for members of one dense model type, instances soft-voted otherwise): val mask AP,
AP50, Boundary AP, F1@0.5, AR@1000 and seconds per image (``nuclei.score``), the same with flip TTA, and the
held-out-like proxy and shifted proxy (``nuclei.proxy``). The ensemble uses the first member's thresholds.

Run: ``python benchmarks/nuclei_ensemble.py [--recipe dsb2018-cellpose] [--members 2] [--minutes 20]
[--out runs/bench-ensemble] [--skip-train] [--no-tta] [--set KEY=VALUE]``.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nuclei import DATA, ROOT, proxy, score, train, train_rate  # beside this file


def train_members(recipe: str, out: Path, members: int, minutes: float, threads: int,
                  overrides: list[str]) -> list[Path]:
    """Train ``members`` runs of ``recipe`` at once (seeds 0..members-1, ``threads`` each); their folders."""
    runs = [out / f"member-{k}" for k in range(members)]
    with ThreadPoolExecutor(members) as pool:
        jobs = [pool.submit(train, recipe, run, minutes, 1, [f"seed={k}", f"threads={threads}", *overrides])
                for k, run in enumerate(runs)]
        for job in jobs:
            job.result()
    return runs


def ensemble_row(runs: list[Path], combine: str, tta: bool) -> dict[str, Any]:
    """Val scores (and proxy when ``tta`` is off) of the ensemble of ``runs``."""
    from maskkit.inference.ensemble import load_ensemble
    from maskkit.inference.tta import FLIPS

    ens = load_ensemble(runs, combine=combine, device="cpu", tta=tta, tta_flips=FLIPS if tta else None)
    return {"combine": ens.combine, "val": score(runs[0], tta, ens), "proxy": None if tta else proxy(runs[0], ens)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="dsb2018-cellpose")
    ap.add_argument("--members", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each member while training")
    ap.add_argument("--combine", default="auto", choices=("auto", "raw", "instances"))
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-ensemble")
    ap.add_argument("--skip-train", action="store_true", help="Score the members already in --out.")
    ap.add_argument("--no-tta", action="store_true", help="Skip the TTA scores.")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        sys.exit(f"the shared nuclei data is missing: {DATA}")
    if args.members < 2:
        sys.exit("--members must be at least 2")
    runs = [args.out / f"member-{k}" for k in range(args.members)]
    if not args.skip_train:
        runs = train_members(args.recipe, args.out, args.members, args.minutes, args.threads, args.overrides)
    rows = []
    for k, run in enumerate(runs):
        steps = sum(1 for _ in (run / "steps.csv").open()) - 1
        rows.append((f"member {k} (seed {k}, {steps} steps, {train_rate(run):.2f} img/s)", score(run, False),
                     None if args.no_tta else score(run, True), proxy(run)))
        print(rows[-1], flush=True)
    plain = ensemble_row(runs, args.combine, tta=False)
    tta = None if args.no_tta else ensemble_row(runs, args.combine, tta=True)
    rows.append((f"ensemble of the {args.members} ({plain['combine']})", plain["val"],
                 tta["val"] if tta else None, plain["proxy"]))
    print(f"\n{args.recipe}: {args.members} members trained at once for {args.minutes:g} minutes, "
          f"{args.threads} thread(s) each; scored on the 12 val images and the proxy\n")
    print("| model | mask AP | AP50 | Boundary AP | F1@0.5 | AR@1000 | s/image | with TTA: AP / F1@0.5 | proxy AP "
          "| shifted AP |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m, t, held_out in rows:
        tta_cell = f"{t['AP']:.3f} / {t['F1@0.5']:.3f}" if t else "–"
        print(f"| {name} | {m['AP']:.3f} | {m['AP50']:.3f} | {m['boundary_AP']:.3f} | {m['F1@0.5']:.3f} | "
              f"{m['AR@1000']:.3f} | {m['s/image']:.2f} | {tta_cell} | {held_out[0]:.3f} | {held_out[1]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
