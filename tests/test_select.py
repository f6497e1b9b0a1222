"""``maskkit select``: uncertainty components, ranking with a diversity term, the written ranking and
pre-annotations (re-read with maskkit's readers), bad pool images, and the CLI on a real tiny checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from conftest import TINY_MASKRCNN, save_tiny_checkpoint
from maskkit.active.ranking import diverse_order, k_center_order
from maskkit.active.select import Selection, load_model, pool_images, ranking_csv, select, write_selection
from maskkit.active.uncertainty import components, disagreement
from maskkit.cli.main import app
from maskkit.config import TrainConfig
from maskkit.data.formats.coco import read_coco
from maskkit.data.formats.labelme import read as read_labelme
from maskkit.errors import ConfigError, DataError
from maskkit.models.factory import LoadedModel

pytestmark = pytest.mark.usefixtures("one_thread")


class _Encoder(nn.Module):
    """A 4×4 thumbnail as a 1×1 feature map: distinct images get distinct embeddings."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 4).flatten(1)[:, :, None, None]


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder()


class StubSegmenter(nn.Module):
    """A dense model whose foreground probability is the image's first channel (mid-grey: unsure) or, with
    ``dropout``, ``sigmoid(20 (dropout(x) - 0.5))`` (bright pixels flip with the dropout mask, dark ones never).

    Eval output per image: ``sem_seg`` (background, object), one instance (the pixels above 0.5, or the whole
    image when none) scored by its mean probability, its soft mask, box and label.
    """

    def __init__(self, dropout: bool = False) -> None:
        super().__init__()
        self.net = _Net()
        self.drop = nn.Dropout(0.5) if dropout else None

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outs = []
        for x in images:
            self.net.encoder(x[None])
            p = x[0]
            if self.drop is not None:
                p = torch.sigmoid(20 * (self.drop(p) - 0.5))
            fg = p > 0.5
            region = fg if fg.any() else torch.ones_like(fg)
            ys, xs = torch.nonzero(region, as_tuple=True)
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            score = torch.maximum(p[region].mean(), 1 - p[region].mean())[None]
            outs.append({"sem_seg": torch.stack([1 - p, p]), "scores": score, "boxes": box,
                         "labels": torch.ones(1, dtype=torch.int64), "masks": (p * region)[None, None]})
        return outs


def _stub(dropout: bool = False) -> LoadedModel:
    config = TrainConfig.model_validate({"model": {"name": "bottomup_r18", "pretrained_backbone": False},
                                         "data": {"path": "x"}, "augment": {"channels": 3}})
    return LoadedModel(StubSegmenter(dropout), config, ["nucleus"], [1])


def _write(path: Path, image: np.ndarray) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image[:, :, ::-1] if image.ndim == 3 else image)
    return path


def _confident(seed: int, size: int = 32) -> np.ndarray:
    """Black with white squares (probabilities 0 and 1: no doubt), laid out by ``seed``."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, size - 8, 2)
        img[y:y + 8, x:x + 8] = 255
    return img


def _unsure(seed: int, size: int = 32) -> np.ndarray:
    """Mid-grey with faint structure (probabilities near 0.5)."""
    rng = np.random.default_rng(seed)
    return (120 + rng.integers(0, 16, (size, size, 1))).repeat(3, axis=2).astype(np.uint8)


def _pool(tmp_path: Path, images: dict[str, np.ndarray]) -> tuple[Path, list]:
    root = tmp_path / "pool"
    for name, img in images.items():
        _write(root / name, img)
    return root, pool_images(root)[0]


# -- components ---------------------------------------------------------------------------------------
def test_components_and_disagreement_order_unsure_above_sure() -> None:
    sure = {"scores": torch.tensor([0.99, 0.97]), "boxes": torch.tensor([[0, 0, 4, 4], [2, 2, 8, 8.0]]),
            "masks": torch.zeros(2, 1, 8, 8).index_fill_(2, torch.arange(4), 1.0)}
    unsure = {"scores": torch.tensor([0.55, 0.4]), "boxes": sure["boxes"], "masks": torch.full((2, 1, 8, 8), 0.45)}
    a, b = components(sure), components(unsure)
    for key in ("score_entropy", "mask_entropy", "entropy", "margin"):
        assert b[key] > a[key] + 0.3, key
    assert components({"sem_seg": torch.tensor([[[0.5]], [[0.5]]])})["mask_entropy"] == pytest.approx(1.0)
    assert components({"sem_seg": torch.tensor([[[1.0]], [[0.0]]])})["mask_entropy"] < 1e-3
    same = [torch.full((4, 4), 0.3)] * 3
    assert disagreement(same) == pytest.approx(0.0, abs=1e-6)
    assert disagreement([torch.zeros(4, 4), torch.ones(4, 4)]) > 0.9


@pytest.mark.parametrize("strategy", ["entropy", "margin"])
def test_uncertain_image_ranked_above_confident(tmp_path: Path, strategy: str) -> None:
    images = {f"sure{i}.png": _confident(i) for i in range(3)} | {"unsure.png": _unsure(0)}
    root, pool = _pool(tmp_path, images)
    sel = select(_stub(), pool, k=1, strategy=strategy, pool_root=root)
    assert sel.top[0].image.rel == "unsure.png"
    assert [s.image.rel for s in sel.ranked][-1].startswith("sure")
    assert sel.scores[0] > sel.scores[-1]


def test_mc_dropout_ranks_the_image_dropout_disagrees_on(tmp_path: Path) -> None:
    bright = np.full((32, 32, 3), 255, np.uint8)  # dropout flips every pixel's decision here
    root, pool = _pool(tmp_path, {"dark0.png": _confident(0) // 8, "dark1.png": np.zeros((32, 32, 3), np.uint8),
                                  "bright.png": bright})
    sel = select(_stub(dropout=True), pool, k=1, strategy="mc-dropout", passes=6, pool_root=root)
    assert sel.stochastic == "dropout"
    assert sel.top[0].image.rel == "bright.png"
    by_name = {s.image.rel: s.components["mc_dropout"] for s in sel.ranked}
    assert by_name["bright.png"] > 0.3 > by_name["dark1.png"]
    # without dropout layers the passes are flip TTA (the stub is flip-equivariant: no disagreement)
    sel = select(_stub(), pool, k=1, strategy="mc-dropout", pool_root=root)
    assert sel.stochastic == "flip-tta"
    assert max(s.components["mc_dropout"] for s in sel.ranked) < 1e-6


# -- diversity ----------------------------------------------------------------------------------------
def test_diversity_term_skips_exact_duplicates(tmp_path: Path) -> None:
    images = {f"dup{i}.png": _unsure(0) for i in range(3)} | {f"other{i}.png": _unsure(i + 1) // 2
                                                               for i in range(3)}
    images |= {"sure.png": _confident(0)}
    root, pool = _pool(tmp_path, images)
    plain = select(_stub(), pool, k=3, strategy="entropy", diversity=0.0, pool_root=root)
    assert sum(s.image.rel.startswith("dup") for s in plain.top) == 3  # the duplicates are the most uncertain
    for strategy in ("entropy", "margin", "diversity"):
        sel = select(_stub(), pool, k=3, strategy=strategy, diversity=0.5, pool_root=root)
        assert sum(s.image.rel.startswith("dup") for s in sel.top) <= 1, (strategy, [s.image.rel for s in sel.top])


def test_ranking_functions() -> None:
    emb = np.array([[1.0, 0], [1.0, 0], [0, 1.0], [0.7071, 0.7071], [-1.0, 0]])
    order, scores, _ = diverse_order(np.array([0.9, 0.9, 0.5, 0.1, 0.8]), emb, weight=1.0)
    assert order.tolist() == [0, 4, 2, 3, 1] and scores[-1] == 0.0  # the duplicate of the first pick comes last
    assert np.all(np.diff(scores) <= 1e-12)  # gains only shrink as picks accumulate (distances over 1 too)
    order, dists = k_center_order(emb, centers=np.array([[1.0, 0]]))
    assert order.tolist()[:2] == [4, 2] and dists[0] == pytest.approx(2.0)  # farthest from the labelled image first
    assert set(order.tolist()[-2:]) == {0, 1}  # copies of the labelled image last
    order, _, _ = diverse_order(np.array([0.9, 0.9, 0.5, 0.1, 0.3]), emb, weight=1.0, centers=np.array([[1.0, 0]]))
    assert order[0] == 2 and set(order.tolist()[-2:]) == {0, 1}  # 0.5 x 0.71 beats 0.3 x 1; labelled copies last
    order, _ = k_center_order(emb)
    assert order[0] == 3  # without centers: the most typical image (nearest the mean) first


# -- outputs ------------------------------------------------------------------------------------------
def test_outputs_reread_with_maskkit_readers(tmp_path: Path) -> None:
    images = {f"sub/sure{i}.png": _confident(i) for i in range(3)} | {"unsure.png": _unsure(0)}
    root, pool = _pool(tmp_path, images)
    sel = select(_stub(), pool, k=2, strategy="entropy", conf=0.0, pool_root=root)
    out = tmp_path / "out"
    write_selection(sel, out, ["nucleus"], [1], coco=True)
    rows = list(csv.DictReader((out / "ranking.csv").open()))
    assert [r["image"] for r in rows] == [s.image.rel for s in sel.ranked]
    assert list(rows[0])[:3] == ["image", "score", "rank"] and {"entropy", "margin", "distance"} <= set(rows[0])
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4] and [r["selected"] for r in rows] == ["1", "1", "0", "0"]
    assert float(rows[0]["score"]) >= float(rows[1]["score"])
    aset = read_labelme(out / "labelme")
    assert len(aset.images) == 2 and aset.class_names == ["nucleus"]
    by_name = {Path(r.file_name).stem: r for r in aset.images}
    for s in sel.top:
        rec = by_name[Path(s.image.key).name]
        assert (aset.image_root / rec.file_name).is_file()
        assert len(rec.instances) == len(s.instances) >= 1
        assert rec.instances.masks.rle(0) is not None
        got, want = rec.instances.masks.bitmap(0), s.instances.masks.bitmap(0)
        if s.image.rel.startswith("sub/"):  # clean squares (the unsure image's mask is speckle, its holes are dropped)
            assert (got & want).sum() / max((got | want).sum(), 1) > 0.9  # polygons of the predicted masks
    coco = read_coco(out / "coco")
    assert sorted(r.file_name for r in coco.images) == sorted(s.image.rel for s in sel.top)
    assert coco.num_instances() == sum(len(s.instances) for s in sel.top)
    # a second run into the same folder needs --overwrite, which removes the first run's files
    with pytest.raises(ConfigError, match="overwrite"):
        write_selection(sel, out, ["nucleus"], [1])
    sel.k = 1
    write_selection(sel, out, ["nucleus"], [1], overwrite=True)
    assert len(read_labelme(out / "labelme").images) == 1 and not (out / "coco").joinpath("annotations.json").exists()


def test_bad_pool_image_skipped_with_its_name(tmp_path: Path) -> None:
    root, _ = _pool(tmp_path, {"good.png": _unsure(0)})
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    sel = select(_stub(), pool_images(root)[0], k=2, pool_root=root)
    assert [s.image.rel for s in sel.ranked] == ["good.png"] and sel.k == 1
    assert len(sel.skipped) == 1 and "broken.png" in sel.skipped[0]
    (root / "good.png").unlink()
    with pytest.raises(DataError, match=r"no pool image could be read.*broken\.png"):
        select(_stub(), pool_images(root)[0], k=2, pool_root=root)


def test_pool_outside_files_and_bad_arguments(tmp_path: Path) -> None:
    root, _ = _pool(tmp_path, {"a.png": _unsure(0)})
    outside = _write(tmp_path / "elsewhere" / "x.png", _unsure(1))
    (root / "link.png").symlink_to(outside)
    images, skipped = pool_images(root)
    assert [im.rel for im in images] == ["a.png"] and "outside the pool" in skipped[0]
    with pytest.raises(ConfigError, match="strategy"):
        select(_stub(), images, k=1, strategy="nope")
    with pytest.raises(DataError, match="folder"):
        pool_images(root / "a.png")
    with pytest.raises(DataError, match="not found"):
        load_model(tmp_path / "missing.pt")


def test_label_folders_of_a_dsb_layout_are_not_pool_images(tmp_path: Path) -> None:
    root, _ = _pool(tmp_path, {"id1/images/id1.png": _unsure(0), "id1/masks/m1.png": _unsure(1),
                               "id2/images/id2.png": _unsure(2), "id2/Masks/m2.png": _unsure(3)})
    assert [im.rel for im in pool_images(root)[0]] == ["id1/images/id1.png", "id2/images/id2.png"]


def test_ranking_csv_of_random_strategy_is_seeded(tmp_path: Path) -> None:
    root, pool = _pool(tmp_path, {f"i{i}.png": _confident(i) for i in range(5)})
    a: Selection = select(_stub(), pool, k=2, strategy="random", seed=3, pool_root=root)
    b = select(_stub(), pool, k=2, strategy="random", seed=3, pool_root=root)
    c = select(_stub(), pool, k=2, strategy="random", seed=4, pool_root=root)
    assert ranking_csv(a) == ranking_csv(b) != ranking_csv(c)


# -- CLI ----------------------------------------------------------------------------------------------
def test_cli_round_trip_on_a_tiny_maskrcnn(tmp_path: Path) -> None:
    from maskkit.data.synth import write_synthetic

    options = {**TINY_MASKRCNN["model"]["options"], "box_score_thresh": 0.0}
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt", {**TINY_MASKRCNN["model"], "options": options}, [1, 2],
                                ["circle", "square"])
    write_synthetic(tmp_path / "syn", images=3, size=64, seed=2, workers=1)
    pool = tmp_path / "syn" / "images"
    _write(pool / "dup.png", __import__("cv2").imread(str(sorted(pool.glob("*.png"))[0]))[:, :, ::-1])
    (pool / "bad.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "sel"
    result = CliRunner().invoke(app, ["select", "--model", str(ckpt), "--pool", str(pool), "--k", "2", "--out",
                                      str(out), "--strategy", "mc-dropout", "--conf", "0", "--coco"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "bad.jpg" in result.output and "flip-tta" in result.output
    rows = list(csv.DictReader((out / "ranking.csv").open()))
    assert len(rows) == 4 and all(r["mc_dropout"] != "" for r in rows)
    assert len(read_labelme(out / "labelme").images) == 2
    assert len(read_coco(out / "coco").images) == 2
    manifest = json.loads((out / "selection.json").read_text())
    assert manifest["strategy"] == "mc-dropout" and manifest["stochastic"] == "flip-tta"
    again = CliRunner().invoke(app, ["select", "--model", str(ckpt), "--pool", str(pool), "--k", "2", "--out",
                                     str(out)])
    assert again.exit_code != 0 and isinstance(again.exception, ConfigError)
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"")
    bad = CliRunner().invoke(app, ["select", "--model", str(exported), "--pool", str(pool), "--k", "1", "--out",
                                   str(tmp_path / "x")])
    assert isinstance(bad.exception, ConfigError) and "exported" in str(bad.exception)


@pytest.mark.slow  # two tiny trainings per strategy (about a minute on a busy 2-core machine)
def test_active_learning_benchmark_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "active_learning.py"
    spec = importlib.util.spec_from_file_location("active_learning_bench", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    assert bench.main(["--data", "synthetic", "--strategies", "random,diversity", "--initial", "2", "--k", "2",
                       "--rounds", "2", "--steps", "1", "--threads", "1", "--synthetic-pool", "6",
                       "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    for strategy in ("random", "diversity"):
        rows = results[strategy]
        assert [r["labelled"] for r in rows] == [2, 4] and len(rows[0]["picked"]) == 2
    assert (tmp_path / "curve.png").is_file() and "| diversity |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "start-r0").is_dir() and not (tmp_path / "diversity-r0").exists()  # round 0 trained once
    assert results["random"][0]["AP"] == results["diversity"][0]["AP"]
    before = (tmp_path / "results.json").read_text()
    assert bench.main(["--data", "synthetic", "--strategies", "random,diversity", "--initial", "2", "--k", "2",
                       "--rounds", "2", "--steps", "1", "--threads", "1", "--synthetic-pool", "6",
                       "--out", str(tmp_path), "--resume"]) == 0  # nothing left to train
    assert "resumed: random, diversity already done" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["results"] == json.loads(before)["results"]
