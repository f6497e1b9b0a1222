"""Inference speed on CPU: ``maskkit.Predictor`` against torchvision's Mask R-CNN called the plain way.

Both sides run ``maskrcnn_r50_fpn`` (80 classes) with the SAME random weights (seeded; BatchNorm
statistics and affine parameters randomised as a trained network would have them) and the same
config (``--min-size``/``--max-size`` resize, ``box_score_thresh=--score-thresh`` so that the random
network outputs a realistic number of detections, see the ``dets/img`` column). Inputs: ``--images``
640×480 photos of the shared coco128 set (synthetic images when it is absent), converted once to
the same float tensors for both sides.

Rows:

* ``torchvision plain``: ``model.eval()``, ``torch.no_grad()``, one call per image, masks thresholded
  at 0.5 and encoded with ``pycocotools.mask.encode`` (the usual way);
* ``maskkit exact: crop paste, fast RoIAlign``: ``Predictor(optimize="exact")``, the Mask R-CNN path with
  masks pasted as crops straight into RLE and :mod:`maskkit.inference.roi_align` (both bit-identical to
  torchvision), network unchanged, one image per call;
* ``maskkit: + BN fold, NHWC``: the default Predictor (also BatchNorm folded into the convolutions and
  channels-last convolutions: float rounding differences), one image per call;
* ``maskkit: + batch N``: the default Predictor, ``predict(list)`` with ``batch_size=N``.

Variants are timed round-robin (``--rounds`` rounds, median per variant) because the CPU is shared;
the CPU-time column (all threads of this process) is steadier than wall time on a busy machine.
Exactness: every variant's instances are scored against the plain outputs as ground truth (mask AP,
COCO-style, via maskkit's evaluator) and matched one-to-one (same class, best mask IoU) to report the
mean/min mask IoU of matched detections and the share of bit-identical RLE masks.

Run: ``python benchmarks/inference_speed.py [--images 8] [--rounds 5] [--min-size 480 --max-size 640]``
(``--min-size 800 --max-size 1333`` is torchvision's default resize: ~2.8x the pixels of 640×480).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

COCO128 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "coco128-seg" / "images" / "train2017"
NUM_CLASSES = 80


def load_images(n: int, seed: int = 0) -> tuple[list[torch.Tensor], str]:
    """``n`` 640×480 RGB images as ``3×H×W`` float tensors in [0, 1] (coco128, else synthetic)."""
    from PIL import Image

    from maskkit.data.dataset import normalise_image

    arrays = []
    if COCO128.is_dir():
        for path in sorted(COCO128.glob("*.jpg")):
            with Image.open(path) as im:
                if im.size == (640, 480) and im.mode == "RGB":
                    arrays.append(np.asarray(im))
            if len(arrays) == n:
                break
    source = f"coco128-seg ({len(arrays)} images of 640x480)"
    if len(arrays) < n:
        import cv2

        rng = np.random.default_rng(seed)
        for _ in range(n - len(arrays)):
            noise = rng.random((30, 40, 3)).astype(np.float32)
            arrays.append((cv2.resize(noise, (640, 480), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(
                np.uint8))
        source = f"synthetic 640x480 ({n} images)" if source.startswith("coco128-seg (0") else source + " + synthetic"
    tensors = [torch.from_numpy(normalise_image(np.ascontiguousarray(a.transpose(2, 0, 1)))) for a in arrays]
    return tensors, source


def build_models(min_size: int, max_size: int, score_thresh: float, seed: int = 0) -> tuple[Any, Any]:
    """(maskkit ``maskrcnn_r50_fpn``, torchvision ``maskrcnn_resnet50_fpn``) holding the same random weights."""
    import torchvision

    from maskkit.models import create

    torch.manual_seed(seed)
    ours = create("maskrcnn_r50_fpn", NUM_CLASSES, min_size=min_size, max_size=max_size,
                  box_score_thresh=score_thresh).eval()
    with torch.no_grad():  # BatchNorm as after training (random init has mean 0, var 1, weight 1, bias 0)
        for m in ours.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        ours.roi_heads.mask_predictor.mask_fcn_logits.bias += 0.5  # fewer all-background random masks
    plain = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1, min_size=min_size, max_size=max_size,
        box_score_thresh=score_thresh)
    plain.load_state_dict(ours.state_dict())
    return ours, plain.eval()


def plain_predict(model: Any) -> Callable[[list[torch.Tensor]], list[dict[str, Any]]]:
    """torchvision called the plain way: per image, no_grad, masks > 0.5 -> pycocotools RLE."""

    def run(images: list[torch.Tensor]) -> list[dict[str, Any]]:
        out = []
        with torch.no_grad():
            for x in images:
                det = model([x])[0]
                binary = (det["masks"][:, 0] > 0.5).numpy().astype(np.uint8)
                rles = [mask_utils.encode(np.asfortranarray(b)) for b in binary]
                out.append({"boxes": det["boxes"].numpy(), "labels": det["labels"].numpy(),
                            "scores": det["scores"].numpy(), "rles": rles})
        return out

    return run


def predictor_variant(model: Any, optimize: bool | str, batch_size: int) -> Callable[[list[torch.Tensor]], list[Any]]:
    """A Predictor over ``model`` (a copy): ``optimize="exact"`` is the crop-paste path on the unchanged network."""
    from maskkit.inference.predictor import Predictor

    pred = Predictor.from_model(copy.deepcopy(model), list(range(1, NUM_CLASSES + 1)), device="cpu",
                                batch_size=batch_size, optimize=optimize)
    assert pred.fast

    def run(images: list[torch.Tensor]) -> list[Any]:
        if batch_size == 1:
            return [pred.predict(x) for x in images]
        return pred.predict(images)

    return run


def exactness(ref: list[dict[str, Any]], got: list[Any]) -> dict[str, float]:
    """Mask AP of ``got`` with ``ref`` as ground truth, and one-to-one matched mask IoUs."""
    from maskkit.evaluation import InstanceEvaluator
    from maskkit.structures import Instances, Masks

    ev = InstanceEvaluator([{"id": c, "name": str(c)} for c in range(1, NUM_CLASSES + 1)], extras=(),
                           iou_types=("segm",))
    ious: list[float] = []
    identical = total = 0
    for k, (r, g) in enumerate(zip(ref, got, strict=True)):
        size = g.image_size
        gt = Instances(size, boxes=r["boxes"].astype(np.float32), labels=r["labels"].astype(np.int64),
                       masks=Masks.from_rles(r["rles"], *size))
        # COCO IoU of two empty masks is 0: empty masks (random weights) are left out of the AP
        ev.process([{"image_id": k + 1, "instances": gt[gt.masks.areas() > 0]}], [g[g.masks.areas() > 0]])
        g_rles = g.masks.to_rles()
        total += len(r["rles"])
        if not len(r["rles"]) or not len(g_rles):
            continue
        iou = np.asarray(mask_utils.iou(g_rles, r["rles"], [0] * len(r["rles"])))
        iou[(g.masks.areas() == 0)[:, None] & (gt.masks.areas() == 0)[None, :]] = 1.0  # both empty: the same
        iou[np.asarray(g.labels)[:, None] != r["labels"][None, :]] = -1
        used: set[int] = set()
        for j in np.argsort(-iou.max(0)):  # reference detections, best-matched first
            i = next((int(i) for i in np.argsort(-iou[:, j]) if int(i) not in used and iou[i, j] >= 0), None)
            if i is None:
                ious.append(0.0)
                continue
            used.add(i)
            ious.append(float(iou[i, j]))
            identical += g_rles[i]["counts"] == r["rles"][j]["counts"]
    stats = ev.evaluate()["segm"]
    ap = stats["AP"] if isinstance(stats, dict) else stats.stats["AP"]
    return {"ap": float(ap), "mean_iou": float(np.mean(ious)) if ious else 1.0,
            "min_iou": float(np.min(ious)) if ious else 1.0, "identical": identical / max(total, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-size", type=int, default=480)
    ap.add_argument("--max-size", type=int, default=640)
    ap.add_argument("--score-thresh", type=float, default=0.93)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images, source = load_images(args.images)
    ours, plain = build_models(args.min_size, args.max_size, args.score_thresh)
    variants: dict[str, Callable[[list[torch.Tensor]], list[Any]]] = {
        "torchvision plain": plain_predict(plain),
        "maskkit exact: crop paste, fast RoIAlign": predictor_variant(ours, optimize="exact", batch_size=1),
        "maskkit: + BN fold, NHWC": predictor_variant(ours, optimize=True, batch_size=1),
        f"maskkit: + batch {args.batch_size}": predictor_variant(ours, optimize=True, batch_size=args.batch_size),
    }
    print(f"maskrcnn_r50_fpn, random weights; {source}; resize min {args.min_size} max {args.max_size}; "
          f"box_score_thresh {args.score_thresh}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    outputs: dict[str, list[Any]] = {}
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up (allocator, oneDNN primitive caches)
        fn(images[:1])
    for rnd in range(args.rounds):
        for name, fn in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            outputs[name] = fn(images)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            print(f"  round {rnd + 1} {name}: {times[name][-1]:.1f} s (CPU {cpu[name][-1]:.1f} s)", flush=True)
    ref = outputs["torchvision plain"]
    dets = np.mean([len(r["rles"]) for r in ref])
    base = statistics.median(times["torchvision plain"])
    print(f"\n{len(images)} images, median of {args.rounds} rounds; plain outputs: {dets:.1f} detections/image\n")
    cpu_base = statistics.median(cpu["torchvision plain"])
    print(f"| {'variant':40s} | images/s | ms/image | speedup | CPU s/image (speedup) | mask AP vs plain | "
          "mask IoU mean / min | identical RLE |")
    print(f"|{'-' * 42}|---------:|---------:|--------:|----------------------:|-----------------:|"
          "--------------------:|--------------:|")
    for name in variants:
        t = statistics.median(times[name])
        ex = exactness(ref, outputs[name]) if name != "torchvision plain" else {
            "ap": 1.0, "mean_iou": 1.0, "min_iou": 1.0, "identical": 1.0}
        c = statistics.median(cpu[name])
        print(f"| {name:40s} | {len(images) / t:8.3f} | {1000 * t / len(images):8.0f} | {base / t:6.2f}x | "
              f"{c / len(images):13.2f} ({cpu_base / c:4.2f}x) | {ex['ap']:16.4f} | "
              f"{ex['mean_iou']:.5f} / {ex['min_iou']:.3f} | {100 * ex['identical']:12.1f}% |")


if __name__ == "__main__":
    main()
