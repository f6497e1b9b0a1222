"""Deployment speed on CPU: latency per image of PyTorch eager vs the exported model on each runtime backend.

For each model (``--models``, default ``maskrcnn_effl0_fpn``, ``bottomup_effl0`` and the semantic
``unet_effl0``) and square size (``--sizes``, default 640 and 512) the model is built with random weights
(seeded; speed does not depend on their values; BatchNorm statistics randomised as a trained network's),
its inference size set to the image size (``min_size = max_size = size``: no internal resize), and run:

* ``pytorch eager``: :class:`maskkit.inference.predictor.Predictor` (its default, optimised Mask R-CNN path);
* ``torchscript``, ``onnxruntime``, ``openvino``: the model exported by :func:`maskkit.export.api.export_model`
  for a static ``size x size`` input (batch dynamic), run through
  :class:`maskkit.inference.backends.base.RuntimePredictor`.

Every row is ``predict(image)`` end to end (pre-processing, graph, mask pasting / watershed / components,
RLE encoding), batch 1, ``--threads`` threads (default 2) for torch and the runtimes, Mask R-CNN with
``--conf`` as its score threshold (random weights: the ``inst/img`` column says how many instances the
timed calls produced). The figure is the median (and p90) of ``--repeats`` timed calls after one untimed
warm-up call (:func:`maskkit.perf.timed_runs`). Run on an idle machine:
``python benchmarks/deploy_speed.py [--models bottomup_effl0] [--sizes 640] [--repeats 20]``.

``--models`` entries may carry builder options: ``bottomup_effl0:output_stride=2``.

``--run RUN`` times a trained run instead (its own inference size and thresholds, or its network at
``--net-size``) on real images (``--images``, default 10 DSB 2018 nuclei images) resized to ``--sizes[0]``
squared: per backend the median over the images of each image's median of ``--repeats`` calls, and the slowest
image.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_MODELS = ("maskrcnn_effl0_fpn", "bottomup_effl0", "unet_effl0")
BACKENDS = ("pytorch", "torchscript", "onnxruntime", "openvino")
FORMAT = {"torchscript": "torchscript", "onnxruntime": "onnx", "openvino": "openvino"}
CLASSES = 3


def test_image(size: int, seed: int = 0) -> np.ndarray:
    """An ``size x size`` RGB uint8 image: noise with bright discs (something for the models to segment)."""
    rng = np.random.default_rng(seed)
    img = rng.uniform(0, 80, (size, size, 3))
    yy, xx = np.mgrid[:size, :size]
    for _ in range(12):
        (cx, cy), r = rng.uniform(0.1, 0.9, 2) * size, rng.uniform(0.03, 0.1) * size
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] += rng.uniform(60, 160)
    return img.clip(0, 255).astype(np.uint8)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name[:option=value,...]`` (e.g. ``bottomup_effl0:output_stride=2``) -> the name and its builder options."""
    import yaml

    name, _, rest = spec.partition(":")
    options = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in rest.split(",") if item)}
    return name, options


def build(spec: str, size: int) -> Any:
    """A :class:`~maskkit.models.factory.LoadedModel` of ``spec`` (random weights) resizing to ``size``."""
    from maskkit.config import TrainConfig
    from maskkit.models.factory import LoadedModel, build_model
    from maskkit.perf import trained_like_batchnorm

    torch.manual_seed(0)
    name, options = parse_spec(spec)
    cfg = TrainConfig.model_validate({"model": {"name": name, "pretrained_backbone": False, "min_size": size,
                                                "max_size": size, "options": options}, "data": {"path": "x"}})
    model = trained_like_batchnorm(build_model(cfg, CLASSES, pretrained=False).eval())
    return LoadedModel(model, cfg, [f"class{i}" for i in range(1, CLASSES + 1)], list(range(1, CLASSES + 1)))


def predictor(loaded: Any, backend: str, size: int, folder: Path, conf: float, threads: int) -> Any:
    from maskkit.export.api import export_model
    from maskkit.inference.predictor import Predictor, load

    if backend == "pytorch":
        return Predictor.from_model(loaded.model, loaded.category_ids, loaded.class_names, config=loaded.config,
                                    device="cpu", score_threshold=conf, threads=threads)
    out = folder / FORMAT[backend]
    export_model(loaded, FORMAT[backend], out, imgsz=size)
    return load(out, backend=backend, score_threshold=conf, threads=threads)


def bench(models: list[str], sizes: list[int], backends: list[str], repeats: int, threads: int,
          conf: float) -> list[dict[str, Any]]:
    from maskkit.perf import timed_runs

    torch.set_num_threads(threads)
    rows = []
    for name in models:
        for size in sizes:
            loaded = build(name, size)
            image = test_image(size)
            eager = None
            with tempfile.TemporaryDirectory(prefix="deploy-speed-") as tmp:
                for backend in backends:
                    try:
                        p = predictor(loaded, backend, size, Path(tmp), conf, threads)
                    except Exception as exc:  # report the backend as failed, keep measuring the others
                        rows.append({"model": name, "size": size, "backend": backend, "error": str(exc)[:80]})
                        continue
                    times, inst = timed_runs(lambda p=p, image=image: p.predict(image), repeats)
                    ms = 1000 * statistics.median(times)
                    eager = ms if backend == "pytorch" else eager
                    rows.append({"model": name, "size": size, "backend": backend, "ms": ms,
                                 "p90": 1000 * float(np.percentile(times, 90)), "instances": len(inst),
                                 "speedup": (eager / ms) if eager else None})
    return rows


NUCLEI = Path(__file__).resolve().parents[1].parent / "shared/data/dsb2018-stage1-train-subset/stage1_train"


def trained(run: Path, net_size: int | None) -> Any:
    """The ``run``'s best model as a :class:`~maskkit.models.factory.LoadedModel`; with ``net_size`` its network
    runs at that size (``min_size = max_size = net_size``) instead of the recipe's inference size."""
    from maskkit.models.factory import model_from_checkpoint

    loaded = model_from_checkpoint(run)
    if net_size is not None:
        loaded.model.input.min_size = loaded.model.input.max_size = net_size
        loaded.config.model.min_size = loaded.config.model.max_size = net_size
    return loaded


def bench_run(run: Path, images: list[Path], size: int, backends: list[str], repeats: int, threads: int,
              net_size: int | None = None) -> str:
    """A table of the trained ``run``'s latency per backend on ``images`` resized to ``size`` squared."""
    import cv2

    from maskkit.data.images import read_image
    from maskkit.export.api import export_model
    from maskkit.inference.predictor import Predictor, load
    from maskkit.perf import timed_runs

    torch.set_num_threads(threads)
    arrays = [cv2.resize(np.ascontiguousarray(read_image(f)[:, :, :3]), (size, size)) for f in images]
    lines = ["| backend | median ms | slowest image ms | inst/img |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="deploy-speed-") as tmp:
        for backend in backends:
            loaded = trained(run, net_size)
            if backend == "pytorch":
                p = Predictor.from_model(loaded.model, loaded.category_ids, loaded.class_names, config=loaded.config,
                                         device="cpu", threads=threads)
            else:
                export_model(loaded, FORMAT[backend], Path(tmp) / backend, imgsz=size)
                p = load(Path(tmp) / backend, backend=backend, threads=threads)
            medians, counts = [], []
            for a in arrays:
                times, inst = timed_runs(lambda p=p, a=a: p.predict(a), repeats)
                medians.append(statistics.median(times))
                counts.append(len(inst))
            lines.append(f"| {backend} | {1000 * statistics.median(medians):.1f} | {1000 * max(medians):.1f} | "
                         f"{np.mean(counts):.0f} |")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | size | backend | median ms | p90 ms | inst/img | vs eager |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['size']} | {r['backend']} | failed: {r['error']} | | | |")
            continue
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] else ""
        lines.append(f"| {r['model']} | {r['size']} | {r['backend']} | {r['ms']:.1f} | {r['p90']:.1f} | "
                     f"{r['instances']} | {speedup} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[640, 512])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--conf", type=float, default=0.5, help="Score threshold of the Mask R-CNN models.")
    parser.add_argument("--run", type=Path, default=None, help="Time this trained run on real images instead.")
    parser.add_argument("--images", nargs="+", type=Path, default=None,
                        help="Images of --run (default: 10 DSB 2018 nuclei images).")
    parser.add_argument("--net-size", type=int, default=None,
                        help="Run --run's network at this size (default: the recipe's own inference size).")
    args = parser.parse_args(argv)
    import platform

    if args.run is not None:
        images = args.images or sorted(NUCLEI.glob("*/images/*.png"))[:60:6]
        net = f"network at {args.net_size} px" if args.net_size else "the run's own inference size"
        print(f"deploy speed of {args.run}: {len(images)} images resized to {args.sizes[0]}x{args.sizes[0]}, batch 1, "
              f"{args.threads} threads, {net} and thresholds; median of {args.repeats} calls per image after one "
              "warm-up")
        print(bench_run(args.run, images, args.sizes[0], args.backends, args.repeats, args.threads, args.net_size))
        return 0

    print(f"deploy speed: batch 1, {args.threads} threads, random weights, {CLASSES} classes, Mask R-CNN score "
          f"threshold {args.conf}; median of {args.repeats} timed runs after one warm-up; torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print(table(bench(args.models, args.sizes, args.backends, args.repeats, args.threads, args.conf)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
