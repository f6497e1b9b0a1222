"""Class confusion of class-agnostic instance matches (``confusion_matrix.png``; not in ``metrics.json``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from maskkit.evaluation.base import ImageStore, MaskEvaluator, Pairing, PreparedImage
from maskkit.evaluation.matching import match_at_threshold


class ConfusionEvaluator(MaskEvaluator):
    """Class confusion of class-agnostic mask matches at IoU 0.5 (predictions ``>= score_threshold``).

    ``evaluate()`` adds nothing to the metrics; :meth:`class_confusion` gives the matrix.
    """

    def __init__(self, store: ImageStore | None = None, score_threshold: float = 0.5) -> None:
        super().__init__(store, score_threshold)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._pairs: list[np.ndarray] = []
        """(GT category id, predicted category id) of the matches, then unmatched GT (pred -1) and
        unmatched predictions (GT -1), per image."""

    def add(self, image: PreparedImage, pairing: Pairing) -> None:
        gl, dl = image.gt.labels[pairing.regular], image.dt.labels[pairing.keep]
        gi, di = match_at_threshold(pairing.iou, 0.5)
        lone_g = np.ones(len(gl), dtype=bool)
        lone_g[gi] = False
        lone_d = np.ones(len(dl), dtype=bool)
        lone_d[di] = False
        none_g, none_d = np.full(int(lone_g.sum()), -1), np.full(int(lone_d.sum()), -1)
        self._pairs.append(np.stack([np.concatenate([gl[gi], gl[lone_g], none_d]),
                                     np.concatenate([dl[di], none_g, dl[lone_d]])], axis=1).astype(np.int64))

    @property
    def pairs(self) -> np.ndarray:
        """``N×2`` (GT category id, predicted category id) of every match; -1 = none."""
        return np.concatenate(self._pairs) if self._pairs else np.zeros((0, 2), dtype=np.int64)

    def evaluate(self) -> dict[str, Any]:
        return {}

    def class_confusion(self) -> tuple[list[str], np.ndarray]:
        """Rows are GT classes, columns predicted classes; the last row/column ``background`` counts
        unmatched predictions (FP) and unmatched GT (FN). Returns names and the ``(K+1)×(K+1)`` matrix."""
        cats = self.store.category_dicts()
        names = [c["name"] for c in cats] + ["background"]
        k = len(cats)
        lookup = {c["id"]: i for i, c in enumerate(cats)}
        values, inverse = np.unique(self.pairs, return_inverse=True)
        rows = np.array([lookup.get(int(v), k) for v in values], dtype=np.int64)[inverse.reshape(-1)].reshape(-1, 2)
        n = k + 1
        return names, np.bincount(rows[:, 0] * n + rows[:, 1], minlength=n * n).reshape(n, n).astype(np.int64)
