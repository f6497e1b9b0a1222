"""``MaskTracker``: mask-IoU + Hungarian matching on synthetic moving discs."""

from __future__ import annotations

import numpy as np
import pytest

from maskkit.inference.tracking import MaskTracker
from maskkit.structures import Instances, Masks

H, W = 64, 96


def _disc(cx: float, cy: float, r: float = 7.0) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _frame(discs: list[tuple[float, float, int]], rng: np.random.Generator | None = None) -> Instances:
    """Instances of discs ``(cx, cy, label)``, in a shuffled order when ``rng`` is given."""
    order = rng.permutation(len(discs)) if rng is not None else np.arange(len(discs))
    discs = [discs[i] for i in order]
    if not discs:
        return Instances.empty((H, W))
    masks = Masks.from_bitmaps([_disc(x, y) for x, y, _ in discs], H, W)
    return Instances.from_masks(masks, [lab for _, _, lab in discs], np.full(len(discs), 0.9))


def _track(frames: list[list[tuple[float, float, int]]], tracker: MaskTracker, rng=None) -> list[list[int]]:
    """Track ids per frame, in the discs' given order (undoing the shuffle)."""
    out = []
    for discs in frames:
        inst = _frame(discs, rng)
        ids = tracker.update(inst)
        centres = inst.boxes[:, :2] + 7 if len(inst) else np.zeros((0, 2))
        by_pos = {}
        for (x, y), t in zip(centres, ids, strict=True):
            by_pos[(round(float(x)), round(float(y)))] = int(t)
        out.append([by_pos[(round(x), round(y))] for x, y, _ in discs])
    return out


def test_two_crossing_discs_keep_their_ids() -> None:
    # A moves right along y=28, B left along y=38: they overlap while crossing (same class).
    frames = [[(10 + 4 * t, 28, 1), (86 - 4 * t, 38, 1)] for t in range(20)]
    ids = _track(frames, MaskTracker(iou_threshold=0.3, max_gap=2), rng=np.random.default_rng(0))
    assert all(f == ids[0] for f in ids), ids
    assert ids[0][0] != ids[0][1]


def test_disappearing_disc_within_and_beyond_max_gap() -> None:
    def frames(gap: int) -> list[list[tuple[float, float, int]]]:
        out = []
        for t in range(12):
            discs = [(70, 30, 2)]  # a steady second object
            if not 3 <= t < 3 + gap:
                discs.insert(0, (20 + t, 30, 1))  # moves 1 px per frame, hidden for `gap` frames
            out.append(discs)
        return out

    tracker = MaskTracker(max_gap=3)
    ids = _track(frames(3), tracker)
    assert {f[0] for f in ids if len(f) == 2} == {1}  # back after 3 missed frames: same id
    assert {f[-1] for f in ids} == {2}
    assert len(tracker.tracks) == 2
    assert tracker.tracks[0].frames == [0, 1, 2, 6, 7, 8, 9, 10, 11]

    tracker = MaskTracker(max_gap=3)
    ids = _track(frames(4), tracker)
    firsts = [f[0] for f in ids if len(f) == 2]
    assert firsts[:3] == [1, 1, 1] and set(firsts[3:]) == {3}  # 4 missed frames: a new id (never reused)
    assert {f[-1] for f in ids} == {2}
    assert [t.id for t in tracker.active()] == [2, 3]


def test_class_consistent_and_json() -> None:
    tracker = MaskTracker()
    a = tracker.update(_frame([(30, 30, 1)]))
    b = tracker.update(_frame([(31, 30, 2)]))  # same place, other class: a new track
    c = tracker.update(_frame([(32, 30, 2)]))
    assert a.tolist() == [1] and b.tolist() == [2] and c.tolist() == [2]
    assert tracker.update(_frame([])).tolist() == []
    data = tracker.to_json({1: "disc", 2: "blob"})
    assert [(d["id"], d["class"], d["frames"]) for d in data] == [(1, "disc", [0]), (2, "blob", [1, 2])]
    assert len(data[1]["boxes"]) == 2 and len(data[1]["boxes"][0]) == 4 and data[1]["scores"] == [0.9, 0.9]


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        MaskTracker(iou_threshold=0.0)
    with pytest.raises(ValueError):
        MaskTracker(max_gap=-1)
    tracker = MaskTracker()
    tracker.update(_frame([(30, 30, 1)]), frame=5)
    with pytest.raises(ValueError, match="increase"):
        tracker.update(_frame([(30, 30, 1)]), frame=5)
