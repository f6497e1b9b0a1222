"""COCO mask AP speed and exactness: maskkit vs pycocotools vs faster-coco-eval (+ Boundary AP).

Generates N images (default 5,000) of 256×256 with ~20 ground-truth instances and ~21 predictions
each (jittered copies of the GT polygons, some dropped, some spurious, random scores and a few
wrong classes), all as compressed RLE, then times

* ``pycocotools``: ``COCO`` + ``loadRes`` + ``COCOeval`` (segm), the reference numbers;
* ``faster-coco-eval``: the same calls through ``faster_coco_eval`` (``COCOeval_faster``);
* ``maskkit coco_evaluate``: :func:`maskkit.evaluation.coco.coco_evaluate` on the same dicts;
* ``maskkit InstanceEvaluator``: ``process()`` of every image's ``Instances`` + ``evaluate()``
  (segm only, no extras) – the streaming path a training loop uses;

and reports the largest absolute difference of the 12 COCO stats to pycocotools. Boundary AP
(on ``--boundary-images`` images, default 1,000): maskkit's ``boundary_evaluate`` against a plain
reference (pycocotools ``COCOeval`` with every boundary computed on the full image per instance,
as the original boundary-iou-api does) and faster-coco-eval's ``iouType="boundary"``.

Every path runs once untimed (warm-up: imports, allocator, caches), then ``--repeats`` timed runs
(default 3); the table gives the median and the min-max range, and speed-ups compare medians. Each
run gets its own copies of the annotation dicts (made untimed), as the evaluators annotate them.

``--whole-process`` instead times whole commands (fresh interpreters, as a user runs them) on the
same data written to a GT JSON and a results JSON (RLE ``segmentation`` plus ``bbox``):
``python -m maskkit eval --gt G --pred P --no-boundary --out DIR`` (COCO bbox and segm AP, matching,
PQ, confusion matrix, CSVs and plots) against a plain faster-coco-eval script scoring bbox and segm
(``COCO`` + ``loadRes`` + ``COCOeval_faster``), run interleaved (one warm-up round, then
``--repeats`` rounds), with the ratio of the medians; ``--baseline-src DIR`` adds the same ``maskkit
eval`` run from other sources (e.g. a checkout's ``src``) to the rounds, for a before/after table.

Run: ``python benchmarks/eval_speed.py [--images 5000] [--boundary-images 1000] [--repeats 3]``
or ``python benchmarks/eval_speed.py --whole-process [--images 5000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from maskkit.perf import timed_runs

SIZE = 256
NUM_CLASSES = 5


def _star(rng: np.random.Generator, cx: float, cy: float, r: float, n: int = 12) -> np.ndarray:
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = r * rng.uniform(0.6, 1.0, n)
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1).clip(0, SIZE - 1)


def generate(num_images: int, seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A COCO GT dict and a COCO results list (RLE counts as bytes), quickly (polygons -> RLE in C)."""
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "height": SIZE, "width": SIZE, "file_name": f"{image_id}.png"})
        n = int(rng.integers(16, 25))
        centres = rng.uniform(20, SIZE - 20, (n, 2))
        radii = rng.choice([4.0, 10.0, 30.0], n, p=[0.3, 0.4, 0.3]) * rng.uniform(0.7, 1.3, n)
        polys = [_star(rng, cx, cy, r) for (cx, cy), r in zip(centres, radii, strict=True)]
        labels = rng.integers(1, NUM_CLASSES + 1, n)
        gt_rles = mask_utils.frPyObjects([p.reshape(-1).tolist() for p in polys], SIZE, SIZE)
        areas = mask_utils.area(gt_rles)
        boxes = mask_utils.toBbox(gt_rles)
        for rle, lab, area, box in zip(gt_rles, labels, areas, boxes, strict=True):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(lab),
                         "segmentation": rle, "area": float(area), "bbox": box.tolist(), "iscrowd": 0})
        keep = rng.random(n) > 0.1
        pred_polys = [p + rng.normal(0, 0.08 * r, p.shape) for p, r, k in zip(polys, radii, keep, strict=True) if k]
        pred_labels = [int(lab) if rng.random() > 0.1 else int(rng.integers(1, NUM_CLASSES + 1))
                       for lab, k in zip(labels, keep, strict=True) if k]
        extra = int(rng.integers(3, 7))
        pred_polys += [_star(rng, *rng.uniform(20, SIZE - 20, 2), rng.uniform(4, 30)) for _ in range(extra)]
        pred_labels += rng.integers(1, NUM_CLASSES + 1, extra).tolist()
        pred_rles = mask_utils.frPyObjects([p.clip(0, SIZE - 1).reshape(-1).tolist() for p in pred_polys], SIZE, SIZE)
        for rle, lab in zip(pred_rles, pred_labels, strict=True):
            results.append({"image_id": image_id, "category_id": lab, "score": float(rng.random()),
                            "segmentation": rle})
    cats = [{"id": i, "name": f"class{i}"} for i in range(1, NUM_CLASSES + 1)]
    return {"images": images, "annotations": anns, "categories": cats}, results


def run_pycocotools(gt: dict[str, Any], results: list[dict[str, Any]], iou_type: str = "segm") -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.copy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in results]), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12])


def run_faster(gt: dict[str, Any], results: list[dict[str, Any]], iou_type: str = "segm") -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    def quiet(*a: Any, **k: Any) -> None:
        return None

    coco_gt = COCO(copy.copy(gt), print_function=quiet)
    ev = COCOeval_faster(coco_gt, coco_gt.loadRes([dict(r) for r in results]), iou_type, print_function=quiet)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return np.asarray(ev.stats[:12])


def _stats(stats: dict[str, float | None]) -> np.ndarray:
    from maskkit.evaluation.coco import STAT_KEYS

    return np.array([-1.0 if stats[k] is None else stats[k] for k in STAT_KEYS])


def run_maskkit(gt: dict[str, Any], results: list[dict[str, Any]]) -> np.ndarray:
    from maskkit.evaluation.coco import coco_evaluate, prepare_detections

    return _stats(coco_evaluate(gt, prepare_detections(results, "segm"), "segm").stats)


def instances_per_image(gt: dict[str, Any], results: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """Per-image GT inputs and predicted ``Instances`` (masks as RLE ``Masks``) for the evaluator."""
    from maskkit.structures import Instances, Masks

    def group(items: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {}
        for a in items:
            out.setdefault(a["image_id"], []).append(a)
        return out

    g, r = group(gt["annotations"]), group(results)
    inputs, outputs = [], []
    for im in gt["images"]:
        h, w = im["height"], im["width"]
        anns, dets = g.get(im["id"], []), r.get(im["id"], [])
        gm = Masks.from_rles([a["segmentation"] for a in anns], h, w)
        inputs.append({"image_id": im["id"], "instances": Instances.from_masks(gm, [a["category_id"] for a in anns])})
        dm = Masks.from_rles([d["segmentation"] for d in dets], h, w)
        outputs.append(Instances.from_masks(dm, [d["category_id"] for d in dets], [d["score"] for d in dets]))
    return inputs, outputs


def run_evaluator(inputs: list[Any], outputs: list[Any], categories: list[dict[str, Any]]) -> np.ndarray:
    from maskkit.evaluation import InstanceEvaluator

    ev = InstanceEvaluator(categories, extras=(), iou_types=("segm",))
    for i in range(0, len(inputs), 8):  # batches of 8, as a data loader would give them
        ev.process(inputs[i : i + 8], outputs[i : i + 8])
    return _stats(ev.evaluate()["segm"])


def boundary_reference(gt: dict[str, Any], results: list[dict[str, Any]]) -> np.ndarray:
    """Plain Boundary AP: pycocotools COCOeval, each boundary from a full-image erosion per instance."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from maskkit.evaluation.boundary import boundary_reference as dense_boundary

    def boundary(rle: dict[str, Any]) -> dict[str, Any]:
        return mask_utils.encode(np.asfortranarray(dense_boundary(mask_utils.decode(rle).astype(bool)),
                                                   dtype=np.uint8))

    class Reference(COCOeval):
        def computeIoU(self, img_id: int, cat_id: int) -> Any:
            ious = super().computeIoU(img_id, cat_id)
            gts, dts = self._gts[img_id, cat_id], self._dts[img_id, cat_id]
            if len(ious) == 0:
                return ious
            dts = [dts[i] for i in np.argsort([-d["score"] for d in dts], kind="mergesort")][: self.params.maxDets[-1]]
            for a in (*gts, *dts):
                a.setdefault("_b", boundary(a["segmentation"]))
            b = np.asarray(mask_utils.iou([d["_b"] for d in dts], [g["_b"] for g in gts], [0] * len(gts)))
            return np.minimum(ious, b)

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = Reference(coco_gt, coco_gt.loadRes([dict(r) for r in results]), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12])


def run_boundary(gt: dict[str, Any], results: list[dict[str, Any]]) -> np.ndarray:
    from maskkit.evaluation.boundary import boundary_evaluate

    return _stats(boundary_evaluate(gt, results).stats)


@dataclass
class Timing:
    """Wall times of the timed runs of one path (after its warm-up run)."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def cell(self) -> str:
        return f"{self.median:8.2f} | {min(self.times):6.2f}-{max(self.times):<6.2f}"


def _fresh(gt: dict[str, Any]) -> dict[str, Any]:
    """A GT dict with its own annotation dicts (the evaluators add keys such as ``ignore`` to them)."""
    return {**gt, "annotations": [dict(a) for a in gt["annotations"]]}


def measure(fn: Callable[..., Any], args: Callable[[], tuple[Any, ...]], repeats: int) -> tuple[Timing, Any]:
    """One untimed warm-up run of ``fn(*args())``, then ``repeats`` timed runs; ``args()`` (fresh inputs
    for each run) is called untimed. Returns the timings and the last result."""
    times, out = timed_runs(fn, repeats, args)
    return Timing(times), out


def _timed(fn: Any, *args: Any) -> tuple[float, Any]:
    """One untimed call's wall time and result (data generation only)."""
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def _subset(gt: dict[str, Any], results: list[dict[str, Any]], n: int) -> tuple[dict[str, Any], list[Any]]:
    ids = {im["id"] for im in gt["images"][:n]}
    return ({**gt, "images": gt["images"][:n], "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]},
            [r for r in results if r["image_id"] in ids])


FASTER_SCRIPT = """
import sys
from faster_coco_eval import COCO, COCOeval_faster

gt = COCO(sys.argv[1])
dt = gt.loadRes(sys.argv[2])
for iou_type in ("bbox", "segm"):
    ev = COCOeval_faster(gt, dt, iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
"""


def write_files(gt: dict[str, Any], results: list[dict[str, Any]], folder: str) -> tuple[str, str]:
    """``gt.json`` and ``pred.json`` (RLE counts as str; each result gets its mask's ``bbox``) in ``folder``."""
    def rle(r: dict[str, Any]) -> dict[str, Any]:
        return {"size": r["size"], "counts": r["counts"].decode("ascii")}

    anns = [{**a, "segmentation": rle(a["segmentation"])} for a in gt["annotations"]]
    boxes = mask_utils.toBbox([r["segmentation"] for r in results]).tolist() if results else []
    preds = [{**r, "segmentation": rle(r["segmentation"]), "bbox": b} for r, b in zip(results, boxes, strict=True)]
    paths = os.path.join(folder, "gt.json"), os.path.join(folder, "pred.json")
    with open(paths[0], "w") as f:
        json.dump({**gt, "annotations": anns}, f)
    with open(paths[1], "w") as f:
        json.dump(preds, f)
    return paths


def whole_process(args: argparse.Namespace) -> None:
    """Time ``maskkit eval --gt --pred --no-boundary`` against a plain faster-coco-eval script, as processes."""
    t, (gt, results) = _timed(generate, args.images, args.seed)
    print(f"generated {args.images} images, {len(gt['annotations'])} GT and {len(results)} predictions "
          f"({SIZE}x{SIZE}, RLE) in {t:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, pred_path = write_files(gt, results, tmp)
        script = os.path.join(tmp, "faster_script.py")
        with open(script, "w") as f:
            f.write(FASTER_SCRIPT)
        commands = {
            "maskkit eval --gt --pred --no-boundary --out": [sys.executable, "-m", "maskkit", "eval", "--gt", gt_path,
                                                             "--pred", pred_path, "--no-boundary", "--out",
                                                             os.path.join(tmp, "out")],
            "faster-coco-eval script (bbox + segm)": [sys.executable, script, gt_path, pred_path],
        }
        if args.baseline_src:  # the same command on other sources (e.g. the main checkout), for before/after
            commands[f"maskkit eval ... (sources of {args.baseline_src})"] = [
                *commands["maskkit eval --gt --pred --no-boundary --out"][:-1], os.path.join(tmp, "out_baseline")]
        if args.pycocotools:
            plain = FASTER_SCRIPT.replace("from faster_coco_eval import COCO, COCOeval_faster",
                                          "from pycocotools.coco import COCO\n"
                                          "from pycocotools.cocoeval import COCOeval as COCOeval_faster")
            commands["pycocotools script (bbox + segm)"] = [sys.executable, "-c", plain, gt_path, pred_path]
        times: dict[str, list[float]] = {k: [] for k in commands}
        for round_ in range(max(args.repeats, 1) + 1):  # round 0: untimed warm-up (file cache, .pyc)
            for name, cmd in commands.items():
                env = None
                if args.baseline_src and name.endswith(f"(sources of {args.baseline_src})"):
                    env = {**os.environ, "PYTHONPATH": args.baseline_src}
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
                if round_:
                    times[name].append(time.perf_counter() - t0)
    base = Timing(times["faster-coco-eval script (bbox + segm)"])
    print(f"\n| {'whole process on ' + str(args.images) + ' images':<50} | median s | min-max s     | ratio |")
    print(f"|{'-' * 52}|----------|---------------|-------|")
    for name, ts in times.items():
        timing = Timing(ts)
        print(f"| {name:<50} | {timing.cell()} | {timing.median / base.median:5.2f} |")
    print(f"\nmedian of {args.repeats} interleaved rounds after one untimed warm-up round; "
          "ratio = median / faster-coco-eval script median.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--boundary-images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per path after one untimed warm-up; the median is reported (default 3)")
    parser.add_argument("--whole-process", action="store_true",
                        help="time `maskkit eval --gt --pred --no-boundary` vs a faster-coco-eval script as processes")
    parser.add_argument("--pycocotools", action="store_true", help="with --whole-process: also a pycocotools script")
    parser.add_argument("--baseline-src", default=None,
                        help="with --whole-process: also time maskkit eval from these sources (PYTHONPATH), e.g. "
                             "another checkout's src/, interleaved in the same rounds (before/after)")
    args = parser.parse_args(argv)
    if args.whole_process:
        whole_process(args)
        return

    import faster_coco_eval  # noqa: F401 - imports are not evaluation time
    import pycocotools.cocoeval  # noqa: F401

    import maskkit.evaluation  # noqa: F401

    t, (gt, results) = _timed(generate, args.images, args.seed)
    print(f"generated {args.images} images, {len(gt['annotations'])} GT and {len(results)} predictions "
          f"({SIZE}x{SIZE}, RLE) in {t:.1f} s")
    inputs, outputs = instances_per_image(gt, results)

    n = args.repeats

    def fresh() -> tuple[Any, ...]:
        return _fresh(gt), results

    rows = []
    t_ref, ref = measure(run_pycocotools, fresh, n)
    rows.append(("pycocotools COCOeval (reference)", t_ref, ref))
    rows.append(("faster-coco-eval COCOeval_faster", *measure(run_faster, fresh, n)))
    rows.append(("maskkit coco_evaluate", *measure(run_maskkit, fresh, n)))
    rows.append(("maskkit InstanceEvaluator (process+evaluate)",
                 *measure(run_evaluator, lambda: (inputs, outputs, gt["categories"]), n)))

    if args.boundary_images > 0:
        bgt, bres = _subset(gt, results, args.boundary_images)

        def bfresh() -> tuple[Any, ...]:
            return _fresh(bgt), bres

        t_bref, bref = measure(boundary_reference, bfresh, n)
        brows = [("Boundary AP plain reference (pycocotools, full-image erosion)", t_bref, bref),
                 ("Boundary AP faster-coco-eval iouType=boundary",
                  *measure(run_faster, lambda: (_fresh(bgt), bres, "boundary"), n)),
                 ("Boundary AP maskkit boundary_evaluate", *measure(run_boundary, bfresh, n))]
    else:
        brows, bref = [], None

    print()
    print(f"| {'mask AP on ' + str(args.images) + ' images':<62} | median s | min-max s     | speed-up | AP     "
          f"| max |diff| |")
    print(f"|{'-' * 64}|----------|---------------|----------|--------|-------------|")
    for name, timing, stats in rows:
        print(f"| {name:<62} | {timing.cell()} | {t_ref.median / timing.median:7.1f}x | {stats[0]:.4f} | "
              f"{np.abs(stats - ref).max():11.2e} |")
    if brows:
        print(f"| {'Boundary AP on ' + str(args.boundary_images) + ' images':<62} |          |               "
              f"|          |        |             |")
        for name, timing, stats in brows:
            print(f"| {name:<62} | {timing.cell()} | {t_bref.median / timing.median:7.1f}x | {stats[0]:.4f} | "
                  f"{np.abs(stats - bref).max():11.2e} |")
    print(f"\nmedian of {n} timed runs after one untimed warm-up per path (min-max: their range); speed-up = "
          "reference median / median.\nmax |diff| = largest absolute difference of the 12 COCO stats to the "
          "reference row of its block.")


if __name__ == "__main__":
    main()
