"""The shifted conditions of ``benchmarks/nuclei_proxy.py`` (images shifted, predictions of rescaled images
brought back to the original size) and the fold sets of ``benchmarks/nuclei_folds.py``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from maskkit.structures import Instances, Masks
from maskkit.structures.masks import masks_iou

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "nuclei_proxy.py"
_spec = importlib.util.spec_from_file_location("nuclei_proxy_bench", _path)
assert _spec is not None and _spec.loader is not None
proxy = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = proxy
_spec.loader.exec_module(proxy)


def _discs(h: int, w: int, centres: list[tuple[float, float, float]]) -> Masks:
    yy, xx = np.mgrid[:h, :w]
    return Masks.from_bitmaps(np.stack([(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r for cy, cx, r in centres]), h, w)


def test_shifts_change_the_image_and_scale_it() -> None:
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    for shift in proxy.SHIFTS:
        out = proxy.shifted(image, shift, seed=1)
        assert out.dtype == np.uint8 and out.shape[2] == 3 and not np.array_equal(out, image[: out.shape[0]])
        if shift[0] == "scale":
            assert out.shape[:2] == (round(60 * shift[1]), round(80 * shift[1]))
        else:
            assert out.shape == image.shape


def test_predictions_of_a_rescaled_image_come_back_to_the_original_size() -> None:
    h, w = 61, 83
    centres = [(15.0, 20.0, 9.0), (40.0, 50.0, 12.0), (20.0, 68.0, 9.0)]
    truth = _discs(h, w, centres)
    for factor in (0.5, 2.0):
        small = _discs(round(h * factor), round(w * factor),  # pixel centres map as cv2.resize maps them
                       [((y + 0.5) * factor - 0.5, (x + 0.5) * factor - 0.5, r * factor) for y, x, r in centres])
        inst = Instances.from_masks(small, [1, 1, 1], [0.9, 0.8, 0.7])
        back = proxy.rescaled(inst, h, w)
        assert back.image_size == (h, w) and back.scores.tolist() == inst.scores.tolist()
        iou = np.diag(masks_iou(back.masks, truth))
        assert iou.min() > 0.85, (factor, iou)


def _folds_module() -> object:
    spec = importlib.util.spec_from_file_location("nuclei_folds_bench", _path.with_name("nuclei_folds.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_fold_sets_keep_the_held_out_ids_from_two_roots(tmp_path: Path) -> None:
    import pytest

    from maskkit.data.annotations import AnnotationSet, Category, ImageRecord

    folds = _folds_module()
    cats = [Category(1, "nucleus")]

    def dsb(root: Path, ids: list[str]) -> AnnotationSet:
        recs = [ImageRecord(i + 1, f"{n}/images/{n}.png", 8, 8, Instances((8, 8))) for i, n in enumerate(ids)]
        return AnnotationSet(cats, recs, root, root=root)

    a, b = dsb(tmp_path / "subset", ["a1", "a2", "a3"]), dsb(tmp_path / "pool", ["b1", "b2"])
    both = folds.combined([a, b], [{"a2", "a3"}, {"b2"}])
    assert [r.id for r in both.images] == [1, 2, 3]  # renumbered: the two sources' ids collide
    wanted = ("subset/a2/images/a2.png", "subset/a3/images/a3.png", "pool/b2/images/b2.png")
    assert [both.image_path(r) for r in both.images] == [(tmp_path / p).resolve() for p in wanted]
    assert both.root == tmp_path.resolve()
    types, colour = {"a1": 0, "a2": 1, "b1": 1, "b2": 2}, {"a2", "b1"}
    assert folds.fold_parts("none", types, colour) == set()
    assert folds.fold_parts("colour", types, colour) == {"a2", "b1"}
    assert folds.fold_parts("grey", types, colour) == {"a1", "b2"}
    assert folds.fold_parts("1", types, colour) == {"a2", "b1"}
    with pytest.raises(SystemExit, match="unknown fold"):
        folds.fold_parts("blue", types, colour)


def test_fold_epochs_give_every_fold_the_same_steps() -> None:
    """``--steps``: a fold with fewer training images trains more epochs of fewer steps (held-back slice excluded)."""
    folds = _folds_module()
    cfg = {"data": {"batch_size": 4}, "tune": {"split": "train_slice", "images": 8}}
    assert folds.fold_epochs(2000, 48, cfg) == 200  # 40 trained images: 10 steps per epoch
    assert folds.fold_epochs(2000, 36, cfg) == 286  # 28: 7 steps per epoch, 2002 steps
    assert folds.fold_epochs(100, 10, {"data": {"batch_size": 2}}) == 20  # no slice held back


def test_fold_table_sets_a_held_out_type_against_the_reference_fold() -> None:
    """``ratio``: held-out AP over the ``none`` fold's image-weighted AP on the same types; dashes without them."""
    folds = _folds_module()

    def fold(ap: float, types: dict[str, tuple[float, int]]) -> dict[str, object]:
        return {"train_images": 4, "test_images": sum(n for _, n in types.values()),
                "all": {"AP": ap, "AP50": 0.5, "F1@0.5": 0.5},
                "types": {t: {"AP": a, "images": n} for t, (a, n) in types.items()}}

    rows = {"none": fold(0.6, {"1": (0.3, 1), "2": (0.6, 3), "3": (0.9, 2)}), "colour": fold(0.2, {"1": (0.1, 5),
            "2": (0.2, 5)}), "9": fold(0.1, {"9": (0.1, 1)})}
    lines = folds.table(rows).splitlines()
    assert lines[2].endswith("| – | – |")
    assert lines[3].endswith("| 0.525 | 0.38 |")  # (0.3 * 1 + 0.6 * 3) / 4 = 0.525; 0.2 / 0.525
    assert lines[4].endswith("| – | – |")  # type 9 was not scored by the reference fold
