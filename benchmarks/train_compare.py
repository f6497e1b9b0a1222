"""Mask R-CNN training speed and accuracy on CPU: plain torchvision vs maskkit default vs maskkit fast.

Run through ``python benchmarks/train_speed.py --compare`` (or this file directly). Two measurements:

* ``--compare`` (``compare``): three models trained for the same ``--steps`` by the same plain loop, on the
  same images in the same order with the same augmentations (the recipe's data, its val split and
  ``tune.split`` slice held out; ``data.workers`` >= 1 draws augmentations from the loader's seeded
  generator, so every variant sees identical batches), same optimiser and LR schedule (maskkit's), gradient
  clipping as configured, then scored on the recipe's val images (COCO mask AP at ``max_dets``):

  - ``torchvision``: torchvision's ``MaskRCNN`` with its default heads (1024-wide box MLP, 4x256 mask head,
    512 sampled RoIs) on the same backbone (ImageNet EfficientNet-Lite0 + GroupNorm FPN), anchors and sizes;
  - ``maskkit default``: the recipe with every speed lever off (``model.speed`` defaults, the RoI sampling
    options of :data:`SPEED_OPTION_KEYS` removed, :data:`DEFAULT_RESET` applied);
  - ``maskkit fast``: the recipe as shipped.

  Speed: images of the steps after ``--warmup`` / their wall time (data waits included), and the main
  process's CPU seconds per image (less disturbed by other processes on a shared machine).
* ``--levers`` (``levers``): per-step CPU time of each lever alone and of all together, on the same batches
  (loaded once, no augmentation randomness), variants back-to-back in one process with the order reversed
  every repeat; median CPU seconds per step and the speed-up over the recipe without levers.

Run: ``python benchmarks/train_speed.py --compare [--config configs/dsb2018.yaml] [--steps 200] [--warmup 5]
[--threads 2] [--workers 1] [--variant fast ...]`` and ``python benchmarks/train_speed.py --levers
[--steps 4] [--repeats 2] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

DSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018-stage1-train-subset" / "stage1_train"
VARIANTS = ("torchvision", "default", "fast")
SPEED_OPTION_KEYS = ("box_batch_size_per_image", "rpn_batch_size_per_image", "rpn_pre_nms_top_n_train",
                     "rpn_post_nms_top_n_train")
"""``model.options`` the fast recipe sets for speed (RoI and anchor sampling); ``default`` drops them."""
DEFAULT_RESET: dict[str, Any] = {"trainable_backbone_layers": None}
"""Other ``model`` fields ``default`` resets (the fast recipe freezes the first backbone stages)."""
LEVERS: dict[str, dict[str, Any]] = {
    "roi_align: numba": {"model.speed.roi_align": "numba"},
    "anchor_matching: numba": {"model.speed.anchor_matching": "numba"},
    "mask_targets: sampled": {"model.speed.mask_targets": "sampled"},
    "channels_last": {"model.speed.channels_last": True},
    "backbone_norm: frozen": {"model.speed.backbone_norm": "frozen"},
    "box_batch_size_per_image 256": {"model.options.box_batch_size_per_image": 256},
    "box_head_dim 512": {"model.speed.box_head_dim": 512},
    "mask_head_convs 2": {"model.speed.mask_head_convs": 2},
    "separable_convs": {"model.speed.separable_convs": True},
    "trainable_backbone_layers 5": {"model.trainable_backbone_layers": 5},
}
"""``--levers``: each lever alone over ``default`` (its config overrides)."""


def variant_config(name: str, args: argparse.Namespace) -> Any:
    """The ``TrainConfig`` of a variant: the recipe (``fast``) or the recipe without speed levers."""
    from maskkit.config import SpeedConfig, load_config

    overrides = {"data.path": args.data or str(DSB), "data.workers": args.workers, "threads": args.threads,
                 "device": "cpu", **args.set}
    cfg = load_config(args.config, overrides)
    if name != "fast":
        cfg.model.speed = SpeedConfig()
        for key in SPEED_OPTION_KEYS:
            cfg.model.options.pop(key, None)
        for key, value in DEFAULT_RESET.items():
            setattr(cfg.model, key, value)
    return cfg


def build_variant(name: str, cfg: Any, num_classes: int) -> Any:
    """The variant's model (seeded); ``torchvision`` is torchvision's ``MaskRCNN`` on maskkit's backbone."""
    import torch

    from maskkit.models.factory import build_model, inference_sizes

    torch.manual_seed(cfg.seed)
    if name != "torchvision":
        return build_model(cfg, num_classes)
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    from maskkit.models.backbones import EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD, efficientnet_lite_fpn
    from maskkit.models.maskrcnn import set_train_resize

    min_size, max_size = inference_sizes(cfg)
    kw: dict[str, Any] = {k: v for k, v in cfg.model.options.items() if k not in SPEED_OPTION_KEYS}
    if cfg.model.anchor_sizes:
        sizes = tuple((s,) for s in cfg.model.anchor_sizes)
        kw["rpn_anchor_generator"] = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    backbone = efficientnet_lite_fpn(0, cfg.model.pretrained_backbone, 128, cfg.model.trainable_backbone_layers)
    model = MaskRCNN(backbone, num_classes + 1, min_size=min_size, max_size=max_size,
                     image_mean=list(EFFICIENTNET_LITE_MEAN), image_std=list(EFFICIENTNET_LITE_STD), **kw)
    set_train_resize(model, not cfg.augment.min_size)
    return model


def train_and_score(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one variant for ``args.steps`` steps, then score it on the recipe's val images."""
    import torch

    from maskkit.data.dataset import InstanceDataset, collate_fn
    from maskkit.engine.data import EpochBatchSampler, load_train_data, make_loader
    from maskkit.engine.schedule import build_optimizer, build_scheduler
    from maskkit.engine.validation import evaluate

    cfg = variant_config(name, args)
    torch.set_num_threads(args.threads)
    data = load_train_data(cfg)
    model = build_variant(name, cfg, len(data.categories))
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, args.steps)
    train_ds = InstanceDataset.from_config(data.train, cfg.augment, train=True)
    stamps: list[tuple[float, float]] = [(time.perf_counter(), time.process_time())]
    losses: list[float] = []
    epoch = 0
    model.train()
    while len(losses) < args.steps:
        sampler = EpochBatchSampler(len(train_ds), cfg.data.batch_size, cfg.seed, epoch)
        for images, targets in make_loader(train_ds, sampler, cfg.data.workers, cfg.seed + epoch):
            loss = sum(model(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                               cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            stamps.append((time.perf_counter(), time.process_time()))
            if len(losses) % 10 == 0:
                (w0, c0), (w1, c1) = stamps[-11], stamps[-1]
                print(f"  {name}: step {len(losses)}/{args.steps} loss {statistics.mean(losses[-10:]):.3f} "
                      f"({w1 - w0:.1f} s, {c1 - c0:.1f} CPU s / 10 steps)", flush=True)
            if len(losses) == args.steps:
                break
        epoch += 1
    w = min(args.warmup, args.steps - 1)
    images = (args.steps - w) * cfg.data.batch_size
    wall, cpu = stamps[-1][0] - stamps[w][0], stamps[-1][1] - stamps[w][1]
    eval_ds = InstanceDataset(data.val, None, **cfg.augment.image_options())
    t = time.perf_counter()
    metrics = evaluate(model, (collate_fn([eval_ds[i]]) for i in range(len(eval_ds))),
                       {r.id: r for r in data.val.images}, data.categories, torch.device("cpu"),
                       cfg.schedule.max_dets)
    tail = losses[-min(20, len(losses)):]
    return {"variant": name, "ips": images / wall, "cpu_per_image": cpu / images, "loss": statistics.mean(tail),
            "segm": metrics.get("segm", {}), "bbox": metrics.get("bbox", {}), "eval_s": time.perf_counter() - t}


def compare(args: argparse.Namespace) -> None:
    """``--compare``: the three variants one after the other, then the table."""
    rows = []
    for name in args.variant or VARIANTS:
        rows.append(train_and_score(name, args))
        r = rows[-1]
        print(f"{name}: {r['ips']:.3f} images/s, {r['cpu_per_image']:.3f} CPU s/image, loss {r['loss']:.3f}, "
              f"mask AP {100 * r['segm'].get('AP', float('nan')):.1f}", flush=True)
    print(f"\n| variant | images/s (wall) | CPU s/image | loss (last 20 steps) | val mask AP | AP50 | box AP |  "
          f"({args.steps} steps, {args.warmup} untimed, {args.threads} threads, {args.workers} loader workers)")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        s, b = r["segm"], r["bbox"]
        print(f"| {r['variant']} | {r['ips']:.3f} | {r['cpu_per_image']:.3f} | {r['loss']:.3f} | "
              f"{100 * s.get('AP', float('nan')):.1f} | {100 * s.get('AP50', float('nan')):.1f} | "
              f"{100 * b.get('AP', float('nan')):.1f} |")


def levers(args: argparse.Namespace) -> None:
    """``--levers``: median CPU seconds per step of each lever, on fixed batches, back-to-back."""
    import torch

    from maskkit.config import merge_overrides, validate_config
    from maskkit.data.dataset import InstanceDataset, collate_fn
    from maskkit.engine.data import load_train_data
    from maskkit.engine.schedule import build_optimizer

    torch.set_num_threads(args.threads)
    base = variant_config("default", args)
    fast = variant_config("fast", args)
    data = load_train_data(base)
    torch.manual_seed(0)
    ds = InstanceDataset.from_config(data.train, base.augment, train=True)
    n = base.data.batch_size
    batches = [collate_fn([ds[(i * n + j) % len(ds)] for j in range(n)]) for i in range(args.steps + 1)]
    configs: dict[str, Any] = {"default": base}
    for lever, overrides in LEVERS.items():
        configs[lever] = validate_config(merge_overrides(base.model_dump(mode="json"), overrides), lever)
    configs["fast (the recipe)"] = fast
    times: dict[str, list[float]] = {k: [] for k in configs}
    for rep in range(args.repeats):
        for name in list(configs) if rep % 2 == 0 else list(configs)[::-1]:
            cfg = configs[name]
            model = build_variant("fast", cfg, len(data.categories))
            optimizer = build_optimizer(model, cfg.optim)
            model.train()
            for i, (images, targets) in enumerate(batches):
                c = time.process_time()
                loss = sum(model(images, targets).values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if i:  # the first step warms up (Numba compilation, allocator)
                    times[name].append(time.process_time() - c)
            print(f"  repeat {rep + 1} {name}: {statistics.median(times[name]):.2f} CPU s/step", flush=True)
    ref = statistics.median(times["default"])
    print(f"\n| lever | CPU s/step (median) | speed-up over default |  ({args.threads} threads, batch {n}, "
          f"{args.steps} steps x {args.repeats} repeats)")
    print("|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} | x{ref / statistics.median(ts):.2f} |")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``--compare``/``--levers`` (``train_speed.py`` shares ``--steps``/``--warmup``/...)."""
    parser.add_argument("--config", default="configs/dsb2018.yaml", help="the recipe (--compare, --levers)")
    parser.add_argument("--variant", action="append", choices=VARIANTS, help="--compare: only these variants")
    parser.add_argument("--workers", type=int, default=1, help="--compare: DataLoader workers (>= 1: same batches)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("compare", "levers"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", help="dataset (default: the recipe's, else the shared DSB subset)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    add_arguments(parser)
    args = parser.parse_args(argv)
    run(args)


def run(args: argparse.Namespace) -> None:
    """Dispatch ``args.mode`` (``args.set`` as a list of ``key=value`` strings is parsed here)."""
    import yaml

    if isinstance(args.set, list):
        args.set = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    (compare if args.mode == "compare" else levers)(args)


if __name__ == "__main__":
    main()
