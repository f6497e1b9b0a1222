"""``maskkit predict`` in one process against ``--ray`` with 1 and 2 local workers, on the same folder.

Each row runs the real CLI in a fresh subprocess (``python -m maskkit predict SRC --model M --out OUT``,
default outputs: overlays + COCO results), twice: on ``--images`` images and on half of them. The
difference gives the steady rate (images/s = extra images / extra seconds: model loads, imports and
Ray's start-up cancel out) and the fixed cost (the intercept: imports, model load, starting Ray and its
actors). Every run uses ``--threads`` torch threads per process (``OMP_NUM_THREADS``; ``--ray-cpus``
for the workers): the single process has one model with T threads, the Ray rows N workers with T each,
plus the driver (which reads headers, writes overlays and results). ``overhead ms/img`` is the extra
per-image time of Ray with ONE worker against the single process (the cost of moving rows and
results through Ray Data and writing on the driver). ``identical``: every output file of the Ray run
has the same bytes as the single-process run's (the same images).

Images: ``--source`` (a folder, searched recursively; default the shared DSB2018 pool); model:
``--model`` (a checkpoint or run folder), else a Mask R-CNN R18-FPN trained for one step on synthetic
data (random-ish weights, ``--min-size`` resize, low score threshold so there are detections to write).

Run: ``python benchmarks/distributed_predict.py [--images 40] [--threads 1] [--workers 1,2]``
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POOL = REPO.parent / "shared" / "data" / "dsb2018-stage1-train-pool"


def build_model(root: Path, min_size: int) -> Path:
    """A one-step Mask R-CNN R18-FPN checkpoint (synthetic data), 3-channel input."""
    import maskkit
    from maskkit.data.synth import write_synthetic

    write_synthetic(root / "data", images=4, size=128, seed=1, workers=1)
    cfg = {
        "model": {"name": "maskrcnn_r18_fpn", "pretrained_backbone": False,
                  "options": {"box_score_thresh": 0.05, "box_detections_per_img": 100}},
        "data": {"path": str(root / "data"), "batch_size": 4, "val_fraction": 0.0},
        "augment": {"min_size": [min_size], "max_size": None, "channels": 3},
        "optim": {"lr": 5e-4, "warmup_steps": 1},
        "schedule": {"epochs": 1, "val_loss": False},
        "output": {"out": str(root / "run"), "tensorboard": False, "plots": False, "progress": False},
        "threads": 1,
    }
    maskkit.train(cfg)
    return root / "run"


def pick_images(source: Path, n: int, root: Path) -> tuple[Path, Path, int, int]:
    """Folders of symlinks to the first ``n`` and first ``n // 2`` images of ``source`` (sorted), their counts."""
    from maskkit.inference.sources import collect_sources

    items = [it for it in collect_sources([source]) if it.kind == "image"][:n]
    if len(items) < 2:
        sys.exit(f"need at least 2 images in {source}")
    folders = []
    for name, subset in (("all", items), ("half", items[: len(items) // 2])):
        folder = root / name
        for it in subset:
            link = folder / f"{it.key}{it.path.suffix}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(it.path.resolve())
        folders.append(folder)
    return folders[0], folders[1], len(items), len(items) // 2


def run(images: Path, model: Path, out: Path, threads: int, workers: int | None) -> float:
    """Wall seconds of one ``maskkit predict`` subprocess."""
    cmd = [sys.executable, "-m", "maskkit", "predict", str(images), "--model", str(model), "--out", str(out),
           "--device", "cpu"]
    if workers is not None:
        cmd += ["--ray", f"local:{workers * threads}", "--ray-workers", str(workers), "--ray-cpus", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def identical(a: Path, b: Path) -> bool:
    """Same relative file list and the same bytes in every file."""
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return fa == fb and all(filecmp.cmp(a / f, b / f, shallow=False) for f in fa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, default=POOL / "stage1_train")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--min-size", type=int, default=512, help="resize of the built model (ignored with --model)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process / per Ray worker")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to run")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="mk-distbench-") as tmp:
        root = Path(tmp)
        model = args.model or build_model(root / "model", args.min_size)
        full, half, n_full, n_half = pick_images(args.source, args.images, root / "images")
        setups: list[int | None] = [None, *(int(w) for w in args.workers.split(","))]
        rows = []
        for workers in setups:
            name = "single process" if workers is None else f"ray local, {workers} worker(s)"
            outs = {k: root / "out" / f"{workers or 0}-{k}" for k in ("full", "half")}
            t_full = run(full, model, outs["full"], args.threads, workers)
            t_half = run(half, model, outs["half"], args.threads, workers)
            per_image = (t_full - t_half) / (n_full - n_half)
            ref = {k: root / "out" / f"0-{k}" for k in outs}
            same = "reference" if workers is None else str(all(identical(ref[k], outs[k]) for k in outs))
            rows.append((name, workers, t_full, t_half, per_image, t_full - per_image * n_full, same))

        print(f"maskkit predict on {n_full} (and {n_half}) images of {args.source}, model {args.model or 'built'}, "
              f"{args.threads} torch thread(s) per process/worker, {os.cpu_count()} CPUs")
        head = (f"{'setup':<26}{'wall s':>9}{'wall s':>9}{'img/s':>8}{'fixed s':>9}{'overhead':>10}  identical\n"
                f"{'':<26}{f'({n_full})':>9}{f'({n_half})':>9}{'':>8}{'':>9}{'ms/img':>10}")
        print(head)
        single = rows[0][4]
        for name, workers, t_full, t_half, per_image, fixed, same in rows:
            over = f"{(per_image - single) * 1000:>10.1f}" if workers == 1 else f"{'':>10}"
            rate = 1 / per_image if per_image > 0 else float("inf")
            print(f"{name:<26}{t_full:>9.1f}{t_half:>9.1f}{rate:>8.2f}{fixed:>9.1f}{over}  {same}")


if __name__ == "__main__":
    main()
