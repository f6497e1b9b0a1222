"""The accuracy gate of exported models: mask and box AP of each runtime backend against PyTorch on one val set.

For a trained run folder (``--run``, e.g. ``runs/dsb2018`` from ``maskkit train --config configs/dsb2018.yaml``)
the model is exported (``maskkit export --dynamic``) to each format, and ``maskkit eval --model X --data D``
scores the checkpoint and every export on the same images (the run's ``val_images.json`` travels with the
export). The gate of the deploy issue: mask AP within 0.3 points and box AP within 0.2 points of PyTorch.

``python benchmarks/export_accuracy.py --run runs/bench-nuclei/dsb2018 --data ../shared/data/...``
(``--data`` defaults to the run config's ``data.path``; ``--max-dets 1,100,1000`` for nuclei).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

FORMATS = {"onnxruntime": "onnx", "openvino": "openvino", "torchscript": "torchscript"}
GATE = {"segm": 0.3, "bbox": 0.2}  # AP points


def _maskkit(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "maskkit", *args], check=True, stdout=subprocess.DEVNULL)


def evaluate(model: Path, data: str, max_dets: str, out: Path) -> dict[str, float]:
    """Mask and box AP (COCO, in points) of ``model`` on the val images of ``data``."""
    _maskkit("eval", "--model", str(model), "--data", data, "--max-dets", max_dets, "--no-boundary",
             "--gallery", "0", "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    return {"segm": 100 * metrics["segm"]["AP"], "bbox": 100 * metrics["bbox"]["AP"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", default=None)
    parser.add_argument("--max-dets", default="1,100,1000")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    data = args.data or yaml.safe_load((args.run / "config.yaml").read_text())["data"]["path"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ref = evaluate(args.run, data, args.max_dets, root / "eval-pytorch")
        rows.append(("pytorch", ref, ""))
        for backend, fmt in FORMATS.items():
            _maskkit("export", "--model", str(args.run), "--format", fmt, "--dynamic", "--out", str(root / fmt))
            got = evaluate(root / fmt, data, args.max_dets, root / f"eval-{backend}")
            ok = all(abs(got[k] - ref[k]) <= GATE[k] for k in GATE)
            rows.append((backend, got, "pass" if ok else "FAIL"))
    print(f"{args.run} on {data} (val images of the run; maxDets {args.max_dets}; {args.threads} threads)")
    print("| backend | mask AP | Δ mask | box AP | Δ box | gate (0.3 / 0.2 points) |\n|---|---:|---:|---:|---:|---|")
    for backend, m, verdict in rows:
        print(f"| {backend} | {m['segm']:.2f} | {m['segm'] - ref['segm']:+.2f} | {m['bbox']:.2f} | "
              f"{m['bbox'] - ref['bbox']:+.2f} | {verdict} |")


if __name__ == "__main__":
    main()
