"""Frame-to-frame instance tracking by mask IoU (for video prediction).

:class:`MaskTracker` keeps a set of tracks, each with the mask it had when last seen. Every frame,
the detections are matched to the live tracks by mask IoU (computed on RLE with
:func:`~maskkit.structures.masks_iou`) with an optimal one-to-one assignment
(:func:`scipy.optimize.linear_sum_assignment`); a pair is accepted when the IoU reaches
``iou_threshold`` and both have the same class. Unmatched detections start new tracks (ids
1, 2, ... in order of appearance, never reused). A track that is not matched stays alive for
``max_gap`` missed frames: an object hidden for up to ``max_gap`` frames keeps its id when it
reappears overlapping its last mask; after that it is closed and a reappearance gets a new id.
There is no motion model: an object must overlap where it was last seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maskkit.structures import Instances, Masks, masks_iou


@dataclass
class Track:
    """One tracked object: its id, class, and per-frame history (frames, XYXY boxes, scores)."""

    id: int
    label: int
    rle: dict[str, Any]
    """Compressed RLE of the mask when last seen."""
    frames: list[int] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    @property
    def last_frame(self) -> int:
        return self.frames[-1]

    def to_json(self, class_names: dict[int, str] | None = None) -> dict[str, Any]:
        """JSON-safe summary: ``id``, ``category_id``, ``class``, ``frames``, ``boxes`` (XYXY), ``scores``."""
        return {"id": self.id, "category_id": self.label, "class": (class_names or {}).get(self.label, str(self.label)),
                "frames": list(self.frames), "boxes": [[round(v, 2) for v in b] for b in self.boxes],
                "scores": [round(s, 4) for s in self.scores]}


class MaskTracker:
    """Assign stable track ids to per-frame instances (see the module docstring)."""

    def __init__(self, iou_threshold: float = 0.3, max_gap: int = 15) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {max_gap}")
        self.iou_threshold = float(iou_threshold)
        self.max_gap = int(max_gap)
        self.tracks: list[Track] = []
        """Every track ever started, in id order."""
        self._active: list[Track] = []
        self._frame = -1

    def active(self) -> list[Track]:
        """Tracks that can still be matched (missed at most ``max_gap`` frames so far)."""
        return list(self._active)

    def update(self, instances: Instances, frame: int | None = None) -> np.ndarray:
        """Match one frame's ``instances`` (``masks``, ``labels``, optional ``scores``/``boxes``); their track ids.

        ``frame`` is the frame index (default: one more than the previous call); frames must increase.
        """
        frame = self._frame + 1 if frame is None else int(frame)
        if frame <= self._frame:
            raise ValueError(f"frames must increase: got {frame} after {self._frame}")
        self._frame = frame
        self._active = [t for t in self._active if frame - t.last_frame - 1 <= self.max_gap]
        n = len(instances)
        masks: Masks = instances.masks
        labels = np.asarray(instances.labels, dtype=np.int64).reshape(n)
        scores = np.asarray(instances.get("scores", np.ones(n)), dtype=np.float64).reshape(n)
        boxes = (np.asarray(instances.boxes, dtype=np.float64).reshape(n, 4) if instances.has("boxes")
                 else masks.boxes().astype(np.float64))
        ids = np.zeros(n, dtype=np.int64)
        matched = self._match(masks, labels)
        for det, old in matched.items():
            ids[det] = old.id
        for det in range(n):
            track = matched.get(det)
            if track is None:
                track = Track(len(self.tracks) + 1, int(labels[det]), masks.rle(det))
                self.tracks.append(track)
                self._active.append(track)
                ids[det] = track.id
            track.rle = masks.rle(det)
            track.frames.append(frame)
            track.boxes.append([float(v) for v in boxes[det]])
            track.scores.append(float(scores[det]))
        return ids

    def _match(self, masks: Masks, labels: np.ndarray) -> dict[int, Track]:
        """Optimal detection -> live track assignment by mask IoU, same class, IoU >= threshold."""
        if not len(masks) or not self._active:
            return {}
        from scipy.optimize import linear_sum_assignment

        previous = Masks.from_rles([t.rle for t in self._active], masks.height, masks.width)
        iou = masks_iou(masks, previous)
        iou[labels[:, None] != np.array([t.label for t in self._active])[None, :]] = 0.0
        rows, cols = linear_sum_assignment(iou, maximize=True)
        return {int(r): self._active[c] for r, c in zip(rows, cols, strict=True) if iou[r, c] >= self.iou_threshold}

    def to_json(self, class_names: dict[int, str] | None = None) -> list[dict[str, Any]]:
        """All tracks as JSON-safe dicts (see :meth:`Track.to_json`), in id order."""
        return [t.to_json(class_names) for t in self.tracks]
