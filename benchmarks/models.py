"""Training and inference speed of every registered architecture on CPU, and parameter counts.

For each model of ``maskkit models`` (filtered by ``--pattern``) and each square size (``--sizes``,
default 256 and 512) it builds the model for ``--classes`` foreground classes with a randomly
initialised backbone (speed does not depend on the weights), then times

* **train**: ``model(images, targets)`` + backward + an AdamW step on a batch of ``--batch`` synthetic
  images with ~12 instances each (masks, boxes, labels and a semantic map, as the engine feeds it);
* **infer**: the eval-mode forward (``torch.inference_mode``) including each model's own
  post-processing (mask pasting, watershed, connected components), one image per call.

Each figure is the median over ``--repeats`` timed iterations after one warm-up. Threads are set
explicitly (``--threads``, default 2). Detection models run at the image size (their own resize
is set to it). Run: ``python benchmarks/models.py [--pattern 'unet_*'] [--sizes 256 512]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch


def synthetic_batch(size: int, batch: int, num_classes: int, seed: int = 0) -> tuple[list, list]:
    """``batch`` images of random discs on noise with their targets (masks, boxes, labels, semantic)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, targets = [], []
    for _ in range(batch):
        img = rng.uniform(0, 0.3, (3, size, size)).astype(np.float32)
        masks, labels = [], []
        for _ in range(12):
            cx, cy, r = rng.uniform(0.1, 0.9) * size, rng.uniform(0.1, 0.9) * size, rng.uniform(0.03, 0.1) * size
            m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            lab = int(rng.integers(1, num_classes + 1))
            img[:, m] += 0.2 * lab
            masks.append(m)
            labels.append(lab)
        m = np.stack(masks).astype(np.uint8)
        sem = np.zeros((size, size), np.int64)
        for mask, lab in zip(m, labels, strict=True):
            sem[mask.astype(bool)] = lab
        boxes = []
        for mm in m:
            rows, cols = np.where(mm.any(axis=1))[0], np.where(mm.any(axis=0))[0]
            boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
        images.append(torch.from_numpy(img.clip(0, 1)))
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                        "masks": torch.from_numpy(m), "semantic": torch.from_numpy(sem),
                        "image_id": len(targets)})
    return images, targets


def _median_time(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_model(name: str, size: int, batch: int, num_classes: int, repeats: int) -> dict[str, Any]:
    from maskkit.models import create, model_info

    info = model_info(name)
    kwargs: dict[str, Any] = {"pretrained_backbone": False, "min_size": size, "max_size": size}
    if info.capabilities.resizes_internally:
        kwargs["train_resize"] = False
    model = create(name, num_classes, **kwargs)
    params = sum(p.numel() for p in model.parameters())
    images, targets = synthetic_batch(size, batch, num_classes)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_step() -> None:
        model.train()
        losses = model(images, targets)
        total = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    def infer() -> None:
        model.eval()
        with torch.inference_mode():
            model(images[:1])

    t_train = _median_time(train_step, repeats)
    t_infer = _median_time(infer, repeats)
    return {"model": name, "family": info.family, "task": info.task, "size": size, "params_m": params / 1e6,
            "train_img_s": batch / t_train, "infer_img_s": 1.0 / t_infer, "infer_ms": 1000 * t_infer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pattern", default=None, help="Glob over model names (default: all).")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from maskkit.models import list_models

    names = [i.name for i in list_models(args.pattern)]
    print(f"{len(names)} models x sizes {args.sizes}, batch {args.batch}, {args.threads} threads, "
          f"median of {args.repeats} (CPU, random init)")
    header = f"{'model':28s} {'family':14s} {'size':>5s} {'params M':>9s} {'train img/s':>12s} {'infer img/s':>12s} " \
             f"{'infer ms':>9s}"
    print(header)
    print("-" * len(header))
    for name in names:
        for size in args.sizes:
            try:
                r = bench_model(name, size, args.batch, args.classes, args.repeats)
            except Exception as exc:  # report and go on: one broken model must not hide the others
                print(f"{name:28s} {'':14s} {size:5d} failed: {type(exc).__name__}: {exc}")
                continue
            print(f"{r['model']:28s} {r['family']:14s} {size:5d} {r['params_m']:9.2f} {r['train_img_s']:12.2f} "
                  f"{r['infer_img_s']:12.2f} {r['infer_ms']:9.1f}", flush=True)


if __name__ == "__main__":
    main()
