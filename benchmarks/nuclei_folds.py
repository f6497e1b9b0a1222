"""Leave-one-image-type-out folds for a nuclei recipe: train without a whole image type, score on that type.

The hidden set of issue 19 holds new stains, tissues and microscopes. A score on images of types the run trained
on measures fit; these folds measure what a recipe does on a type it has never seen, as the hidden set does.

Image types are the ones of ``benchmarks/nuclei_proxy.py`` (k-means on appearance features of the 260 shared
images, seeded; fixed before anything was scored). A fold names what it holds out:

* ``colour``: every colour image (H&E / bright-field stains; the leave-one-modality-out fold);
* ``grey``: every grey image (fluorescence and grey bright-field);
* ``0`` .. ``7``: one image type;
* ``none``: nothing; the in-distribution reference (the recipe's training images, scored on the pool).

Each fold trains the recipe (``--config``) on the subset's training images (the recipe's split: its 12 val
images are never trained on) minus the held-out ones, for the same ``--epochs`` (or ``--steps``: the same number
of steps, more epochs for a fold with fewer images; thresholds, ``best.pt`` and early stopping from the recipe's
held-back training slice, ``tune.split: train_slice``, never from the scored images), then scores its ``best.pt``
on every shared image of the held-out part it did not train on (the subset's val images and the 200 pool images;
``none`` scores the pool). Scores: COCO ``segm`` AP (maxDets 1000, full-resolution masks), AP50 and F1@0.5,
overall and per image type, so a held-out type's score can be
set against the ``none`` fold's score on the same type (``ratio``).

The pool is only scored here, never trained on. Training images are copied into ``--out`` (a temporary folder by
default), never into the project.

Run: ``python benchmarks/nuclei_folds.py --config configs/dsb2018-bottomup.yaml --folds none colour --epochs 80
--threads 1 --out runs/bench-folds/bottomup`` (``--resume`` keeps finished folds). Writes ``results.json`` and
``table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nuclei_proxy import COLOUR_SATURATION, POOL, SUBSET, TYPES, image_types, segm_scores

ROOT = Path(__file__).resolve().parents[1]


def combined(sets: list[Any], keep: list[set[str]]) -> Any:
    """One ``AnnotationSet`` of the images of ``sets`` whose DSB id is in the matching ``keep`` set: image ids
    renumbered from 1, file names relative to the sets' common folder (which becomes the root)."""
    from maskkit.data.annotations import AnnotationSet

    common = Path(os.path.commonpath([str(s.image_root.resolve()) for s in sets]))
    records = []
    for aset, ids in zip(sets, keep, strict=True):
        for r in aset.images:
            path = aset.image_path(r)
            if path.parent.parent.name in ids:
                records.append(replace(r, id=len(records) + 1, file_name=str(path.relative_to(common))))
    return AnnotationSet(sets[0].categories, records, common, root=common)


def fold_parts(fold: str, types: dict[str, int], colour: set[str]) -> set[str]:
    """The DSB ids a fold holds out."""
    if fold == "none":
        return set()
    if fold in ("colour", "grey"):
        return {i for i in types if (i in colour) == (fold == "colour")}
    if not fold.isdigit() or not 0 <= int(fold) < TYPES:
        raise SystemExit(f"unknown fold {fold!r}: use none, colour, grey or a type 0..{TYPES - 1}")
    return {i for i, t in types.items() if t == int(fold)}


def fold_epochs(steps: int, images: int, cfg: dict[str, Any]) -> int:
    """Epochs of at least ``steps`` steps on ``images`` images less the recipe's held-back training slice."""
    from maskkit.engine.data import steps_per_epoch

    tune = cfg.get("tune", {})
    held_back = int(tune.get("images", 0)) if tune.get("split") == "train_slice" else 0
    per_epoch = steps_per_epoch(max(images - held_back, 1), int(cfg.get("data", {}).get("batch_size", 2)))
    return -(-steps // per_epoch)


def train_fold(cfg: dict[str, Any], train: Any, out: Path, epochs: int, threads: int | None) -> Path:
    """Train the recipe on ``train`` (written as COCO under ``out``); returns the run folder."""
    import maskkit
    from maskkit.config import merge_overrides
    from maskkit.data.formats.coco import write_coco

    data = out / "train"
    if not (data / "annotations.json").is_file():
        write_coco(train, data)
    run = out / "run"
    overrides: dict[str, Any] = {
        "data.path": str(data), "data.val_fraction": 0, "tune.split": "train_slice", "schedule.epochs": epochs,
        "schedule.val_every": epochs, "schedule.patience": None, "schedule.max_minutes": None,
        "schedule.val_loss": False, "output.out": str(run), "output.progress": False,
        "output.tensorboard": False, "threads": threads,
    }
    merged = merge_overrides(cfg, overrides, keep_none=False)
    merged["schedule"]["patience"] = None
    merged["schedule"]["max_minutes"] = None
    maskkit.train(merged)
    return run


def score(run: Path, test: Any, types: dict[str, int]) -> dict[str, Any]:
    """AP / AP50 / F1@0.5 of ``run/best.pt`` on ``test``: all images and per image type."""
    from maskkit.evaluation.results import image_loader, readable
    from maskkit.inference.predictor import Predictor

    predictor = Predictor(run, device="cpu")
    load = image_loader(test)
    predictions = {r.id: predictor.predict(np.ascontiguousarray(readable(load(r.id), test, r)[:, :, :3]))
                   for r in test.images}
    kind = {r.id: types[test.image_path(r).parent.parent.name] for r in test.images}

    per_type = {str(t): segm_scores(test.categories, [r for r in test.images if kind[r.id] == t], predictions)
                for t in sorted(set(kind.values()))}
    return {"all": segm_scores(test.categories, test.images, predictions), "types": per_type}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "dsb2018-bottomup.yaml"))
    ap.add_argument("--folds", nargs="+", default=["none", "colour"])
    ap.add_argument("--epochs", type=int, default=80, help="The training budget of every fold.")
    ap.add_argument("--steps", type=int, default=None,
                    help="Instead of --epochs: every fold trains this many steps (a fold with fewer training "
                         "images gets more epochs), so the folds differ only in what they saw.")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="Any config field for every fold, dotted (repeatable).")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "maskkit-nuclei-folds")
    ap.add_argument("--resume", action="store_true", help="Keep the finished folds of --out's results.json.")
    args = ap.parse_args(argv)
    import yaml

    from maskkit.config import merge_overrides, read_config, validate_config
    from maskkit.data.splits import load_split
    from maskkit.engine.data import load_train_data

    if not POOL.is_dir():
        sys.exit(f"the shared nuclei pool is missing: {POOL}")
    if bad := [s for s in args.sets if "=" not in s]:
        sys.exit(f"expected KEY=VALUE, got {bad[0]!r}")
    cfg = merge_overrides(read_config(args.config), {k: yaml.safe_load(v) for k, v in
                                                     (s.split("=", 1) for s in args.sets)})
    cfg.setdefault("data", {})["path"] = str(SUBSET)
    recipe = load_train_data(validate_config({**cfg, "tune": {"split": "val"}}))
    train_ids = {recipe.train.image_path(r).parent.parent.name for r in recipe.train.images}
    folders = sorted(p for p in SUBSET.iterdir() if p.is_dir()) + sorted(p for p in POOL.iterdir() if p.is_dir())
    labels, saturation = image_types(folders)
    types = {f.name: int(t) for f, t in zip(folders, labels, strict=True)}
    colour = {f.name for f, s in zip(folders, saturation, strict=True) if s > COLOUR_SATURATION}
    subset, pool = load_split(SUBSET, "train"), load_split(POOL, "train")
    pool_ids = {f.name for f in folders if f.parent == POOL}
    subset_ids = {f.name for f in folders if f.parent == SUBSET}
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.json"
    rows: dict[str, Any] = json.loads(results.read_text())["folds"] if args.resume and results.is_file() else {}
    for fold in args.folds:
        if fold in rows:
            print(f"fold {fold}: kept from {results}", flush=True)
            continue
        held = fold_parts(fold, types, colour)
        trained = train_ids - held
        scored = pool_ids if fold == "none" else held - trained
        train = combined([subset], [trained])
        test = combined([subset, pool], [subset_ids & scored, pool_ids & scored])
        print(f"fold {fold}: training on {len(train)} images, scoring {len(test)} held-out images", flush=True)
        epochs = args.epochs if args.steps is None else fold_epochs(args.steps, len(train), cfg)
        run = train_fold(cfg, train, args.out / f"fold-{fold}", epochs, args.threads)
        rows[fold] = {"train_images": len(train), "test_images": len(test), **score(run, test, types)}
        a = rows[fold]["all"]
        print(f"fold {fold}: AP {a['AP']:.3f} AP50 {a['AP50']:.3f} F1@0.5 {a['F1@0.5']:.3f}", flush=True)
        tmp = results.with_suffix(".tmp")
        tmp.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "folds": rows}, indent=1))
        tmp.replace(results)
    print(table(rows))
    (args.out / "table.md").write_text(table(rows) + "\n")
    return 0


def table(rows: dict[str, Any]) -> str:
    """One row per fold; ``ratio``: the fold's AP on its held-out images over the ``none`` fold's AP on the pool
    images of the same types (the image-weighted mean of its per-type APs; when both folds are there)."""
    ref = rows.get("none", {}).get("types", {})
    lines = ["| fold (held out) | train images | scored images | mask AP | AP50 | F1@0.5 | in-distribution AP, same "
             "types | ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for fold, r in rows.items():
        a = r["all"]
        same = [ref[t] for t in r["types"] if t in ref] if fold != "none" else []
        n = sum(s["images"] for s in same)
        base = sum(s["AP"] * s["images"] for s in same) / n if n else float("nan")
        ratio = a["AP"] / base if base > 0 else float("nan")
        cells = (f"{base:.3f} | {ratio:.2f}" if n else "– | –")
        lines.append(f"| {fold} | {r['train_images']} | {r['test_images']} | {a['AP']:.3f} | {a['AP50']:.3f} | "
                     f"{a['F1@0.5']:.3f} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
