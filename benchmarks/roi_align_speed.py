"""RoIAlign speed: maskkit's Numba kernel against torchvision's ``MultiScaleRoIAlign`` on the same inputs.

The shapes of a Mask R-CNN R50-FPN box head at 640x480: four FPN levels (strides 4..32, 256 channels),
1000 proposals, 7x7 bins, sampling ratio 2. maskkit's kernel reads the channels-last features the
Predictor's optimised backbone makes; torchvision's runs on the same channels-last features and on the
NCHW features a plain model makes. Every path is warmed up first, then timed ``--repeats`` times; the table
shows medians and checks that the outputs are bit-identical.

    python benchmarks/roi_align_speed.py [--rois 1000] [--threads 1 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable

import torch
from torchvision.ops import MultiScaleRoIAlign

from maskkit.inference import roi_align

IMAGE = (480, 640)


def _inputs(rois: int, channels: int) -> tuple[OrderedDict[str, torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    h, w = IMAGE
    feats = OrderedDict(
        (str(i), torch.randn(1, channels, h >> (i + 2), w >> (i + 2), generator=gen)
         .contiguous(memory_format=torch.channels_last))
        for i in range(4)
    )
    xy = torch.rand(rois, 2, generator=gen) * torch.tensor([w * 0.9, h * 0.9])
    wh = torch.rand(rois, 2, generator=gen) ** 2 * torch.tensor([w * 0.5, h * 0.5]) + 4
    return feats, [torch.cat([xy, xy + wh], 1)]


def _median_ms(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    fn()  # warm-up (Numba compiles or loads its cache here; torchvision allocates)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rois", type=int, default=1000)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    if not roi_align.available():
        raise SystemExit("numba is not installed: the fast kernel cannot run")
    feats, boxes = _inputs(args.rois, args.channels)
    names = list(feats)
    ours_pool, tv_pool = MultiScaleRoIAlign(names, 7, 2), MultiScaleRoIAlign(names, 7, 2)
    sizes = [IMAGE]
    print(f"RoIAlign, {args.rois} RoIs, 4 FPN levels at {IMAGE[1]}x{IMAGE[0]}, {args.channels} channels "
          f"(channels-last), 7x7, sampling 2; median of {args.repeats} after a warm-up")
    nchw = OrderedDict((k, v.contiguous()) for k, v in feats.items())
    print("| threads | torchvision, NCHW ms | torchvision, channels-last ms | maskkit ms | speed-up (NCHW / "
          "channels-last) | bit-identical |")
    print("|---:|---:|---:|---:|---:|:---:|")
    with torch.inference_mode():
        for threads in args.threads:
            torch.set_num_threads(threads)
            ours_out = roi_align.multiscale_roi_align(ours_pool, feats, boxes, sizes)
            tv_out = tv_pool(feats, boxes, sizes)
            same = torch.equal(ours_out, tv_out) and torch.equal(ours_out, tv_pool(nchw, boxes, sizes))
            nchw_ms = _median_ms(lambda: tv_pool(nchw, boxes, sizes), args.repeats)
            tv_ms = _median_ms(lambda: tv_pool(feats, boxes, sizes), args.repeats)
            ours_ms = _median_ms(lambda: roi_align.multiscale_roi_align(ours_pool, feats, boxes, sizes), args.repeats)
            print(f"| {threads} | {nchw_ms:.1f} | {tv_ms:.1f} | {ours_ms:.1f} | {nchw_ms / ours_ms:.1f}x / "
                  f"{tv_ms / ours_ms:.1f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
