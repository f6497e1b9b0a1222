"""Annotation I/O benchmark: maskkit's COCO reader and writers against pycocotools.

Generates a synthetic COCO file (``--images`` x ``--per-image`` annotations: polygons, compressed RLE
and crowd uncompressed RLE; no image files) in a temporary folder and times

* ``json.load`` alone (the floor every reader pays),
* pycocotools ``COCO(path)`` (the reference, ratio 1.0) and faster-coco-eval's ``COCO`` when installed,
* ``maskkit.data.read_annotations(path, "coco")`` (goal: <= 2x pycocotools),
* rasterising every annotation to RLE (pycocotools ``annToRLE`` vs ``Masks.to_rles``),
* writing the set back as COCO and as YOLO (when those writers are registered).

Every operation runs once untimed (warm-up: imports, allocator, file cache), then ``--repeats`` timed
runs (default 3); the table gives the median and the min-max range, and ratios compare medians. Runs
that would hit a cache filled by an earlier run get fresh inputs (made untimed): the mask rows
rasterise a freshly read set, the writers write to a new folder.

Usage: ``python benchmarks/data_io.py --images 5000 --per-image 10 [--repeats 3] [--profile] [--check]``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from maskkit.perf import timed_runs

GOAL = 2.0
"""Maximum accepted ratio of maskkit's COCO read time to pycocotools'."""


def make_coco(n_images: int, per_image: int, seed: int = 0, height: int = 480, width: int = 640) -> dict[str, Any]:
    """A COCO dict with ``n_images * per_image`` annotations: ~85% polygons, ~10% RLE, ~5% crowd RLE."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    # A pool of RLE masks (ellipses), reused: the reader cost does not depend on their uniqueness.
    yy, xx = np.mgrid[0:height, 0:width]
    pool_c, pool_u = [], []
    for _ in range(32):
        cy, cx = rng.uniform(50, height - 50), rng.uniform(50, width - 50)
        ry, rx = rng.uniform(10, 45, size=2)
        m = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(m))
        box = [float(v) for v in mask_utils.toBbox(rle)]
        area = float(mask_utils.area(rle))
        pool_c.append(({"size": [height, width], "counts": rle["counts"].decode("ascii")}, box, area))
        flat = m.reshape(-1, order="F")
        change = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
        counts = runs if flat[0] == 0 else [0, *runs]
        pool_u.append(({"size": [height, width], "counts": counts}, box, area))

    categories = [{"id": i * 2 + 1, "name": f"class_{i}", "supercategory": "thing"} for i in range(80)]
    images, annotations = [], []
    n = n_images * per_image
    kind = rng.random(n)
    n_pts = rng.integers(8, 33, size=n)
    centres = rng.uniform([40, 40], [width - 40, height - 40], size=(n, 2))
    radii = rng.uniform(5, 40, size=n)
    cat_ids = rng.integers(0, 80, size=n) * 2 + 1
    pool_idx = rng.integers(0, len(pool_c), size=n)
    for i in range(n_images):
        images.append({"id": i + 1, "file_name": f"{i:06d}.jpg", "height": height, "width": width, "license": 1})
    for a in range(n):
        ann: dict[str, Any] = {"id": a + 1, "image_id": a // per_image + 1, "category_id": int(cat_ids[a])}
        if kind[a] < 0.85:
            t = np.sort(rng.uniform(0, 2 * np.pi, size=n_pts[a]))
            r = radii[a] * rng.uniform(0.6, 1.0, size=n_pts[a])
            pts = np.round(np.stack([centres[a, 0] + r * np.cos(t), centres[a, 1] + r * np.sin(t)], 1), 2)
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0)
            xs, ys = pts[:, 0], pts[:, 1]
            area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
            ann.update(
                segmentation=[pts.reshape(-1).tolist()],
                area=area,
                iscrowd=0,
                bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            )
        else:
            crowd = kind[a] >= 0.95
            seg, box, area = (pool_u if crowd else pool_c)[pool_idx[a]]
            ann.update(segmentation=seg, area=area, iscrowd=int(crowd), bbox=box)
        annotations.append(ann)
    return {
        "info": {"description": "maskkit data_io benchmark", "version": "1.0"},
        "licenses": [{"id": 1, "name": "CC-BY"}],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


Times = list[float]
"""Wall times of the timed runs of one operation (after its warm-up run)."""


def timed(fn: Callable[..., Any], repeats: int, setup: Callable[[], tuple[Any, ...]] = tuple) -> tuple[Times, Any]:
    """One untimed warm-up run of ``fn(*setup())``, then ``repeats`` timed runs (:func:`maskkit.perf.timed_runs`)."""
    return timed_runs(fn, repeats, setup)


def run(args: argparse.Namespace) -> int:
    from pycocotools.coco import COCO

    from maskkit.data import read_annotations, write_annotations
    from maskkit.data.formats import formats

    rows: list[tuple[str, Times | None, str]] = []
    n = args.repeats
    with tempfile.TemporaryDirectory(prefix="maskkit-bench-") as tmp:
        tmpdir = Path(tmp)
        path = tmpdir / "annotations.json"
        t0 = time.perf_counter()
        data = make_coco(args.images, args.per_image, seed=args.seed)
        path.write_text(json.dumps(data))
        n_ann = len(data["annotations"])
        del data
        print(
            f"generated {args.images} images, {n_ann} annotations, {path.stat().st_size / 1e6:.1f} MB "
            f"in {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )

        def quiet(fn: Callable[[], Any]) -> Callable[[], Any]:
            def call() -> Any:
                with contextlib.redirect_stdout(io.StringIO()):
                    return fn()

            return call

        def load_json() -> Any:
            with open(path, "rb") as f:
                return json.load(f)

        t_json, _ = timed(load_json, n)
        rows.append(("json.load (floor)", t_json, ""))
        t_ref, coco = timed(quiet(lambda: COCO(str(path))), n)
        rows.append(("pycocotools COCO(path)", t_ref, "reference"))
        try:
            from faster_coco_eval import COCO as FasterCOCO

            t_fast, _ = timed(quiet(lambda: FasterCOCO(str(path))), n)
            rows.append(("faster-coco-eval COCO(path)", t_fast, ""))
        except ImportError:
            pass

        if "coco" not in formats():
            rows.append(("maskkit read_annotations(coco)", None, "COCO reader not available"))
            _print_table(rows, t_ref, n)
            return 1
        t_read, aset = timed(lambda: read_annotations(path, "coco"), n)
        rows.append(("maskkit read_annotations(coco)", t_read, f"{aset.num_instances()} instances"))

        if args.masks:
            anns = list(coco.anns.values())
            t, _ = timed(lambda: [coco.annToRLE(a) for a in anns], n)
            rows.append(("pycocotools annToRLE (all)", t, ""))

            def rasterise(fresh: Any) -> list[Any]:
                return [r.instances.masks.to_rles() for r in fresh.images if r.instances.has("masks")]

            t, _ = timed(rasterise, n, lambda: (read_annotations(path, "coco"),))  # to_rles caches: fresh sets
            rows.append(("maskkit Masks.to_rles (all)", t, "freshly read set each run"))

        for fmt in ("coco", "yolo"):
            spec = formats().get(fmt)
            if spec is None or spec.write is None:
                rows.append((f"maskkit write {fmt}", None, "writer not available"))
                continue
            def new_dst(fmt: str = fmt, runs: Any = iter(range(1 << 30))) -> tuple[Path]:
                return (tmpdir / f"out_{fmt}_{next(runs)}",)

            t, report = timed(lambda dst, fmt=fmt: write_annotations(aset, dst, fmt), n, new_dst)
            changed = ", ".join(f"{k} {reason}" for reason, k in sorted(report.changes.items())) or "lossless"
            rows.append((f"maskkit write {fmt}", t, changed))
            written = tmpdir / f"out_{fmt}_0" / "annotations.json"
            if fmt == "coco" and written.exists():
                t, _ = timed(lambda written=written: read_annotations(written, "coco"), n)
                rows.append(("maskkit re-read written coco", t, ""))

        _print_table(rows, t_ref, n)
        ratio = statistics.median(t_read) / statistics.median(t_ref)
        verdict = "OK" if ratio <= GOAL else "TOO SLOW"
        print(f"maskkit COCO read overhead: {ratio:.2f}x pycocotools (goal <= {GOAL:.0f}x): {verdict}")

        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            read_annotations(path, "coco")
            prof.disable()
            out = io.StringIO()
            stats = pstats.Stats(prof, stream=out).strip_dirs()
            stats.sort_stats("tottime").print_stats(args.profile_lines)
            stats.sort_stats("cumulative").print_stats(args.profile_lines)
            print(out.getvalue())
        return 1 if args.check and ratio > GOAL else 0


def _print_table(rows: list[tuple[str, Times | None, str]], ref: Times, repeats: int) -> None:
    ref_median = statistics.median(ref)
    cells = [
        (name, "-", "-", "-", note) if t is None else
        (name, f"{statistics.median(t):.3f}", f"{min(t):.3f}-{max(t):.3f}",
         f"{statistics.median(t) / ref_median:.2f}x", note)
        for name, t, note in rows
    ]
    header = ("operation", "median s", "min-max s", "vs pycocotools", "note")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
        for r in [header, *cells]:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        return
    table = Table(title=f"annotation I/O (median of {repeats} timed runs after one warm-up)")
    for i, h in enumerate(header):
        table.add_column(h, justify="right" if i in (1, 2, 3) else "left")
    for r in cells:
        table.add_row(*r)
    Console(width=None if sys.stdout.isatty() else 110).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="number of images (default 5000)")
    parser.add_argument("--per-image", type=int, default=10, help="annotations per image (default 10)")
    parser.add_argument("--repeats", "--repeat", dest="repeats", type=int, default=3,
                        help="timed runs per operation after one untimed warm-up; the median is reported (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-masks", dest="masks", action="store_false", help="skip the rasterise-to-RLE rows")
    parser.add_argument("--profile", action="store_true", help="cProfile maskkit's COCO read and print the top")
    parser.add_argument("--profile-lines", type=int, default=25)
    parser.add_argument("--check", action="store_true", help=f"exit 1 when the read ratio exceeds {GOAL:.0f}x")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
