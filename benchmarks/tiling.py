"""Tiled prediction on huge images: maskkit's mask-overlap stitching against SAHI-style box merging.

For each size (default 8192² and 16384²) a synthetic grey image is written as a tiled, zlib-compressed
BigTIFF (band by band: the full image is never in memory) holding thousands of separated objects:
small ellipses (one tried per 110x110 px, those overlapping earlier objects dropped), long thin
ellipses spanning 2-4 tiles and big blobs (radius 200-400 px, larger than the overlap). Then each
method runs in its own subprocess (peak RSS is the child's own ``ru_maxrss``, reported when it is
done, so runs cannot mask each other):

* **maskkit** – ``predict_tiled(model, tiff_path, tile, overlap)``: windowed reads, mask-overlap stitching.
* **box-NMM baseline** – the same tiles and model; detections are shifted to image coordinates and merged
  with a faithful re-implementation of SAHI's default postprocess (``GREEDYNMM``, match metric ``IOS``,
  threshold 0.5, per category; a merged prediction takes the union box, the max score, the higher-scoring
  label and the union mask). The ``sahi`` package itself is not used: installing it pulls
  ``opencv-python`` next to the project's ``opencv-python-headless`` (two packages owning ``cv2``).
  SAHI's extra full-image "standard prediction" is skipped (impossible at this size for a real model).

The model is a **stand-in**: threshold + connected components per tile (instant and deterministic; objects
cut by a tile border come out truncated, with a lower score, as a network would report them). The network
is excluded on purpose: a real CPU network would take hours on 16k² (hundreds of 1024² tiles at seconds
each), which would drown the tiling cost being measured. ``model s`` in the table is the stand-in's time.

Objects are scored against the ground truth: ``found`` (a prediction with IoU >= 0.5), ``split`` (two or
more predictions each lying mostly, IoS >= 0.5, inside the object: it was cut into pieces), ``dup``
(two or more predictions with IoU >= 0.5), ``extra`` (predictions inside no object) and the mean IoU
of found objects. Goals: zero split objects, <= 2 GiB peak RSS at any size, time linear in area.

Usage: ``python benchmarks/tiling.py [--sizes 8192,16384] [--quick] [--tile 1024] [--overlap 128]``.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BACKGROUND, FOREGROUND = 40, 200


# -- the synthetic scene -------------------------------------------------------------------------------------
def _raster(obj: tuple, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Pixels of ellipse ``obj = (cy, cx, ry, rx, angle, box)`` inside the window ``[y0, y1) × [x0, x1)``."""
    cy, cx, ry, rx, angle, _ = obj
    yy, xx = np.ogrid[y0:y1, x0:x1]
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _box(cy: float, cx: float, ry: float, rx: float, angle: float, size: int) -> tuple[int, int, int, int]:
    hy = math.sqrt((rx * math.sin(angle)) ** 2 + (ry * math.cos(angle)) ** 2)
    hx = math.sqrt((rx * math.cos(angle)) ** 2 + (ry * math.sin(angle)) ** 2)
    return (max(int(cy - hy) - 1, 0), max(int(cx - hx) - 1, 0), min(int(cy + hy) + 2, size),
            min(int(cx + hx) + 2, size))


def make_objects(size: int, seed: int = 0) -> list[tuple]:
    """Separated ellipses (boxes 4 px apart, so none touch): long ones first, then blobs, then small ones."""
    rng = np.random.default_rng(seed)
    cell, grid, objs = 256, {}, []

    def place(cy: float, cx: float, ry: float, rx: float, angle: float) -> None:
        box = _box(cy, cx, ry, rx, angle, size)
        if box[2] - box[0] < 3 or box[3] - box[1] < 3 or cy < 0 or cx < 0 or cy >= size or cx >= size:
            return
        cells = [(a, b) for a in range(box[0] // cell, (box[2] - 1) // cell + 1)
                 for b in range(box[1] // cell, (box[3] - 1) // cell + 1)]
        for key in cells:
            for o in grid.get(key, ()):
                q = objs[o][5]
                if box[0] < q[2] + 4 and q[0] < box[2] + 4 and box[1] < q[3] + 4 and q[1] < box[3] + 4:
                    return
        for key in cells:
            grid.setdefault(key, []).append(len(objs))
        objs.append((cy, cx, ry, rx, angle, box))

    area = size * size
    for _ in range(area // 2048**2):  # long thin ellipses spanning several tiles
        rx = rng.uniform(1200, 3500)
        place(rng.uniform(0, size), rng.uniform(rx, size - rx) if size > 2 * rx else size / 2,
              rng.uniform(10, 22), rx, rng.uniform(-0.08, 0.08) + (rng.random() < 0.5) * math.pi / 2)
    for _ in range(3 * area // 4096**2):  # big blobs, larger than the overlap
        r = rng.uniform(200, 400)
        place(rng.uniform(0, size), rng.uniform(0, size), r * rng.uniform(0.7, 1), r, rng.uniform(0, math.pi))
    for _ in range(area // 110**2):
        place(rng.uniform(0, size), rng.uniform(0, size), rng.uniform(6, 35), rng.uniform(6, 35),
              rng.uniform(0, math.pi))
    return objs


def write_scene(path: Path, size: int, objs: list[tuple], band: int = 256) -> None:
    """A tiled zlib BigTIFF of the scene, written one band of TIFF tiles at a time."""
    import tifffile

    y0s = np.array([o[5][0] for o in objs])
    y1s = np.array([o[5][2] for o in objs])
    xx = np.arange(size)

    def tiles():
        for by in range(0, size, band):
            bh = min(band, size - by)
            img = (BACKGROUND + ((xx[None, :] * 7 + np.arange(by, by + bh)[:, None] * 13) % 17)).astype(np.uint8)
            for o in np.nonzero((y0s < by + bh) & (y1s > by))[0]:
                q = objs[o][5]
                ya, yb = max(q[0], by), min(q[2], by + bh)
                img[ya - by:yb - by, q[1]:q[3]][_raster(objs[o], ya, yb, q[1], q[3])] = FOREGROUND
            for bx in range(0, size, band):
                yield img[:, bx:bx + band]

    tifffile.imwrite(path, tiles(), shape=(size, size), dtype=np.uint8, tile=(band, band), compression="zlib",
                     bigtiff=True, photometric="minisblack", metadata=None)


def gt_rles(size: int, objs: list[tuple]) -> list[dict]:
    from maskkit.structures.rle import crop_to_rle

    out = []
    for o in objs:
        y0, x0, y1, x1 = o[5]
        out.append(crop_to_rle(_raster(o, y0, y1, x0, x1), y0, x0, size, size))
    return out


# -- the stand-in model and the two merging methods (run in children) -------------------------------------------
class ThresholdModel:
    """Stand-in for a network: threshold + connected components; truncated objects get a lower score."""

    def predict(self, image: np.ndarray) -> Any:
        import cv2

        from maskkit.structures import Instances, Masks
        from maskkit.structures.rle import label_image_to_rles

        fg = (image[..., 0] > (BACKGROUND + FOREGROUND) // 2).astype(np.uint8)
        _, lab, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        h, w = fg.shape
        rles, ids = label_image_to_rles(lab)
        x, y, bw, bh = (stats[ids, k] for k in range(4))
        cut = (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
        masks = Masks.from_rles(rles, h, w)
        return Instances.from_masks(masks, np.ones(len(ids), np.int64), np.where(cut, 0.6, 0.9).astype(np.float32))


def greedy_nmm(boxes: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[int, list[int]]:
    """SAHI's greedy NMM with the IOS metric: the best box absorbs every remaining box matching it."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -scores))
    suppressed = np.zeros(len(boxes), bool)
    keep: dict[int, list[int]] = {}
    for k, i in enumerate(order):
        if suppressed[i]:
            continue
        rest = order[k + 1:]
        rest = rest[~suppressed[rest]]
        iw = np.minimum(boxes[rest, 2], boxes[i, 2]) - np.maximum(boxes[rest, 0], boxes[i, 0])
        ih = np.minimum(boxes[rest, 3], boxes[i, 3]) - np.maximum(boxes[rest, 1], boxes[i, 1])
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        ios = inter / np.maximum(np.minimum(areas[rest], areas[i]), 1e-9)
        merged = rest[ios >= threshold]
        suppressed[merged] = True
        keep[int(i)] = merged.tolist()
    return keep


def run_box_nmm(path: str, tile: int, overlap: int) -> tuple[list[dict], dict]:
    """Every tile's detections shifted to the image, then SAHI's GREEDYNMM/IOS/0.5 merge (union masks)."""
    from pycocotools import mask as mask_utils

    from maskkit.data.windows import open_image_windows
    from maskkit.inference.stitching import mask_crops
    from maskkit.inference.tiling import iter_tiles
    from maskkit.structures.rle import crop_to_rle

    model, t_model, t_merge = ThresholdModel(), 0.0, 0.0
    rles, boxes, scores, labels = [], [], [], []
    with open_image_windows(path) as win:
        h, w = win.height, win.width
        for t in iter_tiles(h, w, tile, overlap):
            arr = win.read(t.y0, t.y1, t.x0, t.x1)
            t0 = time.perf_counter()
            inst = model.predict(arr)
            t1 = time.perf_counter()
            t_model += t1 - t0
            for k, item in enumerate(mask_crops(inst.masks)):
                if item is None:
                    continue
                y, x, crop = item
                rles.append(crop_to_rle(crop, t.y0 + y, t.x0 + x, h, w))
                boxes.append((t.x0 + x, t.y0 + y, t.x0 + x + crop.shape[1], t.y0 + y + crop.shape[0]))
                scores.append(float(inst.scores[k]))
                labels.append(int(inst.labels[k]))
            t_merge += time.perf_counter() - t1
    t1 = time.perf_counter()
    boxes_a, scores_a, labels_a = np.asarray(boxes, np.float64), np.asarray(scores), np.asarray(labels)
    out = []
    for cat in np.unique(labels_a):  # per category, as SAHI's default (class_agnostic=False)
        idx = np.nonzero(labels_a == cat)[0]
        for keep, merged in greedy_nmm(boxes_a[idx], scores_a[idx]).items():
            box, rle = boxes_a[idx[keep]].copy(), rles[idx[keep]]
            for m in merged:  # SAHI re-checks each match against the growing merged box
                b = boxes_a[idx[m]]
                iw = min(box[2], b[2]) - max(box[0], b[0])
                ih = min(box[3], b[3]) - max(box[1], b[1])
                small = min((box[2] - box[0]) * (box[3] - box[1]), (b[2] - b[0]) * (b[3] - b[1]))
                if max(iw, 0) * max(ih, 0) / max(small, 1e-9) >= 0.5:
                    box = np.array([min(box[0], b[0]), min(box[1], b[1]), max(box[2], b[2]), max(box[3], b[3])])
                    rle = mask_utils.merge([rle, rles[idx[m]]], intersect=False)
            out.append(rle)
    return out, {"time_model": t_model, "time_stitch": t_merge + time.perf_counter() - t1}


def child(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    if args.child == "maskkit":
        from maskkit.inference.tiling import predict_tiled

        stats: dict = {}
        inst = predict_tiled(ThresholdModel(), args.tiff, tile=args.tile, overlap=args.overlap, stats=stats)
        rles = inst.masks.to_rles()
    else:
        rles, stats = run_box_nmm(args.tiff, args.tile, args.overlap)
    seconds = time.perf_counter() - t0
    with open(args.out, "wb") as f:
        pickle.dump(rles, f)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime, "peak": peak,
                      "time_model": stats.get("time_model", 0.0), "time_stitch": stats.get("time_stitch", 0.0),
                      "objects": len(rles), "source": stats.get("source", "")}))


# -- evaluation ------------------------------------------------------------------------------------------------------
def evaluate(gt: list[dict], pred: list[dict], cell: int = 512) -> dict[str, float]:
    """Found / split / duplicated / extra objects, from candidate pairs with intersecting boxes."""
    from pycocotools import mask as mask_utils

    def boxes(rles: list[dict]) -> np.ndarray:
        b = mask_utils.toBbox(rles).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        return b

    def areas(rles: list[dict]) -> np.ndarray:
        return np.concatenate([mask_utils.area(rles[i:i + 255]) for i in range(0, len(rles), 255)] or [[]])

    gb, pb, ga, pa = boxes(gt), boxes(pred), areas(gt).astype(float), areas(pred).astype(float)
    grid: dict[tuple[int, int], list[int]] = {}
    for g, (x0, y0, x1, y1) in enumerate(gb):
        for a in range(int(y0) // cell, int(y1 - 1) // cell + 1):
            for c in range(int(x0) // cell, int(x1 - 1) // cell + 1):
                grid.setdefault((a, c), []).append(g)
    pieces: dict[int, list[tuple[int, float]]] = {}
    inside_any = np.zeros(len(pred), bool)
    for p, (x0, y0, x1, y1) in enumerate(pb):
        cand = {g for a in range(int(y0) // cell, int(y1 - 1) // cell + 1)
                for c in range(int(x0) // cell, int(x1 - 1) // cell + 1) for g in grid.get((a, c), ())}
        for g in cand:
            if gb[g, 0] >= x1 or x0 >= gb[g, 2] or gb[g, 1] >= y1 or y0 >= gb[g, 3]:
                continue
            iou = float(mask_utils.iou([pred[p]], [gt[g]], [0])[0, 0])
            inter = iou * (pa[p] + ga[g]) / (1 + iou)
            if inter >= 0.5 * pa[p]:
                pieces.setdefault(g, []).append((p, iou))
                inside_any[p] = True
    found = split = dup = 0
    ious = []
    for g in range(len(gt)):
        ps = pieces.get(g, [])
        best = max((iou for _, iou in ps), default=0.0)
        found += best >= 0.5
        split += len(ps) >= 2 and sum(iou >= 0.5 for _, iou in ps) < 2
        dup += sum(iou >= 0.5 for _, iou in ps) >= 2
        if best >= 0.5:
            ious.append(best)
    return {"found": found, "split": split, "dup": dup, "extra": int((~inside_any).sum()),
            "miou": float(np.mean(ious)) if ious else 0.0}


# -- driver ----------------------------------------------------------------------------------------------------------
def run_child(kind: str, tiff: Path, out: Path, tile: int, overlap: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--tiff", str(tiff), "--out", str(out),
           "--tile", str(tile), "--overlap", str(overlap)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{kind} run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="8192,16384", help="comma-separated square image sizes")
    parser.add_argument("--quick", action="store_true", help="sizes 2048,4096 (a smoke run, about a minute)")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=["maskkit", "boxnmm"], help=argparse.SUPPRESS)
    parser.add_argument("--tiff", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sizes = [2048, 4096] if args.quick else [int(s) for s in args.sizes.split(",")]
    print(f"tile {args.tile}, overlap {args.overlap}; model = stand-in (threshold + connected components): "
          "network time excluded (a real CPU network needs hours on 16k²)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="maskkit-tiling-") as tmp:
        for size in sizes:
            t0 = time.perf_counter()
            objs = make_objects(size, args.seed)
            tiff = Path(tmp) / f"scene_{size}.tif"
            write_scene(tiff, size, objs)
            gt = gt_rles(size, objs)
            print(f"{size}x{size}: {len(objs)} objects, TIFF {tiff.stat().st_size / 2**20:.1f} MiB, "
                  f"made in {time.perf_counter() - t0:.0f} s", flush=True)
            for kind, name in [("maskkit", "maskkit (mask overlap)"), ("boxnmm", "SAHI-style GREEDYNMM/IOS")]:
                out = Path(tmp) / f"{kind}_{size}.pkl"
                res = run_child(kind, tiff, out, args.tile, args.overlap)
                with open(out, "rb") as f:
                    metrics = evaluate(gt, pickle.load(f))
                rows.append((size, len(objs), name, res, metrics))
                print(f"  {name}: {res['seconds']:.1f} s (CPU {res['cpu']:.1f} s), peak {res['peak'] / 2**20:.0f} MiB, "
                      f"{metrics}", flush=True)
            tiff.unlink()
    print()
    print("| size | true objects | method | found | split | dup | extra | mean IoU | wall s | model s | merge s "
          "| CPU s | CPU ms / Mpx | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size, n, name, res, m in rows:
        print(f"| {size}² | {n} | {name} | {m['found']} | {m['split']} | {m['dup']} | {m['extra']} | {m['miou']:.4f} "
              f"| {res['seconds']:.1f} | {res['time_model']:.1f} | {res['time_stitch']:.1f} | {res['cpu']:.1f} "
              f"| {1000 * res['cpu'] / (size * size / 1e6):.0f} | {res['peak'] / 2**20:.0f} |")
    print("\nmodel s = wall time in the stand-in model (network excluded, see above); merge s = wall time "
          "stitching / merging; CPU s = the run's user + system time, all included (steadier than wall time on "
          "a shared machine); peak RSS = the run's own subprocess.\n"
          "Goals: 0 split, <= 2048 MiB peak, CPU ms / Mpx flat across sizes (linear in area).")


if __name__ == "__main__":
    main()
