"""Score, class and count filters of predictions, and class selection by name or id (numpy only, no torch).

Used by :class:`~maskkit.inference.predictor.Predictor` (its ``score_threshold``, ``classes`` and
``max_det`` options) and by ``maskkit predict`` (``--conf``, ``--classes``, ``--max-det``) through
:class:`FilteredPredict`, which also tiles large images.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maskkit.data.images import TILED_TIFF_HINT, ImageTooLargeError, image_size, read_image
from maskkit.errors import ConfigError
from maskkit.inference.tiling import predict_tiled
from maskkit.structures import Instances

__all__ = ["FilteredPredict", "filter_instances", "parse_class_list", "resolve_classes", "select"]


def parse_class_list(spec: str | None) -> list[str] | None:
    """The entries of a comma-separated class list (``"cat, 3"`` -> ``["cat", "3"]``); None when empty."""
    if not spec:
        return None
    return [t for t in (t.strip() for t in spec.split(",")) if t]


def resolve_classes(classes: Sequence[int | str] | None, category_ids: Sequence[int], class_names: Sequence[str],
                    what: str = "") -> set[int] | None:
    """Category ids of ``classes``: class names, category ids, or ids written as text (a name wins).

    ``what`` prefixes the error (e.g. ``"--classes: "``) for an unknown class.
    """
    if classes is None:
        return None
    by_name = dict(zip(class_names, category_ids, strict=True))
    out = set()
    for c in classes:
        if isinstance(c, str):
            cid = by_name.get(c)
            if cid is None and c.lstrip("-").isdigit():
                cid = int(c)
        else:
            cid = int(c)
        if cid is None or cid not in category_ids:
            known = ", ".join(f"{i}:{n}" for i, n in zip(category_ids, class_names, strict=True))
            raise ConfigError(f"{what}unknown class {c!r} (the model has {known})")
        out.add(cid)
    return out


def select(scores: np.ndarray, labels: np.ndarray, score_threshold: float | None = None,
           classes: Collection[int] | None = None, max_det: int | None = None) -> np.ndarray:
    """Indices kept by the filters: score >= ``score_threshold``, label in ``classes``, then the best
    ``max_det`` by score (in score order, ties in input order; without ``max_det`` the input order).

    The threshold is compared in the dtype of ``scores`` (float32 scores: in float32).
    """
    scores = np.asarray(scores)
    keep = np.ones(len(scores), bool) if score_threshold is None else scores >= score_threshold
    if classes is not None:
        keep &= np.isin(np.asarray(labels), sorted(classes))
    idx = np.flatnonzero(keep)
    if max_det is not None:
        idx = idx[np.argsort(-scores[idx], kind="stable")][:max_det]
    return idx


def filter_instances(inst: Instances, score_threshold: float | None = None, classes: Collection[int] | None = None,
                     max_det: int | None = None) -> Instances:
    """``inst`` reduced by :func:`select` (``labels`` are category ids)."""
    return inst[select(inst.scores, inst.labels, score_threshold, classes, max_det)]


class FilteredPredict:
    """``image -> Instances`` through ``predictor.predict`` (tiled above ``tile`` px), then filtered by score,
    class and count (best ``max_det`` first)."""

    def __init__(self, predictor: Any, conf: float, classes: Collection[int] | None, max_det: int,
                 tile: int | None = None, overlap: int = 128) -> None:
        self.predictor, self.conf, self.classes, self.max_det = predictor, conf, classes, max_det
        self.tile, self.overlap = tile, overlap

    def _tiled(self, shape: tuple[int, ...]) -> bool:
        return self.tile is not None and max(shape[:2]) > self.tile

    def finish(self, inst: Instances) -> Instances:
        """The ``--conf``/``--classes``/``--max-det`` filter of a (stitched) prediction."""
        scores = np.asarray(inst.scores, dtype=np.float64)  # --conf compares in float64
        return inst[select(scores, inst.labels, self.conf, self.classes, self.max_det)]

    def __call__(self, image: np.ndarray) -> Instances:
        if self.tile is not None and self._tiled(image.shape):
            return self.finish(predict_tiled(self.predictor, image, tile=self.tile, overlap=self.overlap))
        return self.finish(self.predictor.predict(image))

    def file(self, path: Path) -> tuple[np.ndarray | None, Instances]:
        """``(image or None, instances)`` of an image file; a large one is read tile by tile (image None)."""
        if self.tiled_size(path) is not None and self.tile is not None:
            return None, self.finish(predict_tiled(self.predictor, path, tile=self.tile, overlap=self.overlap))
        image = read_image(path)
        return image, self(image)

    def tiled_size(self, path: Path) -> tuple[int, int] | None:
        """``(height, width)`` of an image file that :meth:`file` predicts tile by tile, else None."""
        try:
            size = image_size(path)
        except ImageTooLargeError as exc:
            raise exc.with_hint(TILED_TIFF_HINT) if self.tile is not None else exc from None
        return size if self.tile is not None and self._tiled(size) else None
