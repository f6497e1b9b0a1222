"""Training throughput on a small CPU: one process on all threads against DDP processes on one thread each.

Only the convolutions of a step use PyTorch's intra-op threads; the Numba kernels, the detection heads' many
small ops and the Python between them run on one thread. ``torchrun --nproc_per_node N`` with one thread per
process keeps every core busy through the whole step; the global batch stays the recipe's (``batch / N`` per
process), so the optimiser sees the same number of images per step.

For each recipe: ``maskkit train`` for ``--epochs`` epochs (1) as one process with ``--threads`` threads and (2)
under ``torchrun`` with ``--procs`` processes of 1 thread; images/s over the steps after ``--warmup``, from the
run's ``steps.csv`` (step time + wait for the batch; validation, checkpoints and start-up excluded).

Run: ``python benchmarks/ddp_train.py --recipes dsb2018,dsb2018-bottomup [--epochs 3] [--procs 2]`` on an idle
machine. BatchNorm normalises over the global batch under DDP (``sync_batchnorm``, on by default), which costs
time; accuracy is not measured here (``benchmarks/nuclei.py --procs 2`` trains the recipe at the full budget).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(config: Path, out: Path, procs: int, threads: int, epochs: int, batch: int) -> None:
    """One ``maskkit train`` run (``procs`` > 1: under torchrun)."""
    sets = [f"threads={threads}", f"schedule.epochs={epochs}", f"schedule.val_every={epochs}",
            "schedule.patience=null", "schedule.tune_thresholds=false", "schedule.val_loss=false",
            f"data.batch_size={batch}", "output.progress=false", "output.tensorboard=false", "output.plots=false"]
    cmd = ["-m", "maskkit", "train", "--config", str(config), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    if procs > 1:
        cmd = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def throughput(steps_csv: Path, images_per_step: int, warmup: int) -> tuple[float, int]:
    """Images/s over the steps after ``warmup`` (step + data wait) and how many steps that is."""
    with steps_csv.open() as f:
        rows = list(csv.DictReader(f))[warmup:]
    seconds = sum(float(r["seconds"]) + float(r.get("data_seconds") or 0.0) for r in rows)
    return len(rows) * images_per_step / max(seconds, 1e-9), len(rows)


def main(argv: list[str] | None = None) -> None:
    from maskkit.config import load_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="dsb2018,dsb2018-bottomup", help="config names under configs/")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps at the start")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="threads of the single process")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ddp-train-") as tmp:
        for name in args.recipes.split(","):
            config = ROOT / "configs" / f"{name}.yaml"
            batch = load_config(config).data.batch_size
            if batch % args.procs:
                raise SystemExit(f"{name}: batch {batch} does not split over {args.procs} processes")
            single = Path(tmp) / f"{name}-1x{args.threads}"
            run(config, single, 1, args.threads, args.epochs, batch)
            ddp = Path(tmp) / f"{name}-{args.procs}x1"
            run(config, ddp, args.procs, 1, args.epochs, batch // args.procs)
            a, n = throughput(single / "steps.csv", batch, args.warmup)
            b, _ = throughput(ddp / "steps.csv", batch, args.warmup)
            rows.append((name, batch, n, a, b))
    print(f"training images/s, {args.epochs} epochs, first {args.warmup} steps untimed; global batch as the recipe\n")
    print(f"| recipe | batch | timed steps | 1 process x {args.threads} threads | {args.procs} DDP processes x 1 "
          "thread | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, batch, n, a, b in rows:
        print(f"| {name} | {batch} | {n} | {a:.2f} | {b:.2f} | x{b / a:.2f} |")


if __name__ == "__main__":
    main()
