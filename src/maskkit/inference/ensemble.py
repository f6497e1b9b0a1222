"""Model ensembles: several trained checkpoints predicting as one (``EnsemblePredictor``).

Each member reads the image with its own input settings (channels, normalisation, appearance) and may use
its own test-time augmentation; the members' outputs are then combined in one of two ways:

* ``raw`` (members that are the same dense model type, e.g. several Cellpose-style runs): the members' raw
  maps (probabilities, flows, distances; each already averaged over its TTA views) are averaged before one
  post-processing, with the first member's tuned thresholds: the ensemble of the Cellpose paper, which
  averages the flows of several networks;
* ``instances`` (any members, e.g. Mask R-CNN with a bottom-up model): the instances of all members are matched
  by mask IoU and soft-voted exactly as TTA views are (:func:`maskkit.inference.tta.merge_detections`): a
  matched group becomes one instance with the mean soft mask and box, scored by its members' score sum over the
  number of models, so an instance only one of two models finds keeps half its score.

``combine="auto"`` takes ``raw`` when every member allows it and all are the same model class, else
``instances``. The score/class/count filters of the first member apply to the combined result.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskkit.data.images import read_image
from maskkit.errors import ConfigError
from maskkit.inference import tta
from maskkit.inference.common import ImageLike, PredictorBase
from maskkit.inference.predictor import Predictor
from maskkit.models.outputs import to_instances
from maskkit.structures import Instances

COMBINE = ("auto", "raw", "instances")


class EnsemblePredictor(PredictorBase):
    """Several :class:`Predictor` members predicting as one (module docstring); same interface as a Predictor.

    Args:
        members: predictors of models trained on the same categories (their options apply per member).
        combine: ``auto``, ``raw`` (average raw maps) or ``instances`` (soft-vote instances).
        iou: mask IoU at which two members' instances are the same instance (``instances``).
    """

    def __init__(self, members: Sequence[PredictorBase], combine: str = "auto", iou: float = 0.5) -> None:
        if not members:
            raise ConfigError("an ensemble needs at least one model")
        if bad := [type(m).__name__ for m in members if not isinstance(m, Predictor)]:
            raise ConfigError(f"ensembles take PyTorch checkpoints (Predictor), got {bad[0]}")
        self.members = [m for m in members if isinstance(m, Predictor)]
        if combine not in COMBINE:
            raise ConfigError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
        first = self.members[0]
        for k, m in enumerate(self.members[1:], 2):
            if m.category_ids != first.category_ids:
                raise ConfigError(f"ensemble member {k} has categories {m.category_ids}, member 1 has "
                                  f"{first.category_ids}: members must be trained on the same categories")
        raw_ok = all(m.averages_raw_maps for m in self.members) and len({type(m.model) for m in self.members}) == 1
        if combine == "raw" and not raw_ok:
            raise ConfigError("combine='raw' needs members of one dense model type (raw maps to average); "
                              "use combine='instances'")
        self.combine = "raw" if combine == "raw" or (combine == "auto" and raw_ok) else "instances"
        self.iou = float(iou)
        self._set_options(first.config, first.class_names, first.category_ids, first.score_threshold,
                          None if first.classes is None else sorted(first.classes),
                          first.max_det, first.mask_threshold, first.dense_masks, first.batch_size)
        self.device = first.device

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[ImageLike], score_threshold: float | None = None) -> list[Instances]:
        """Instances of each image from all members combined."""
        thr = self.score_threshold if score_threshold is None else score_threshold
        return [self._predict_one(read_image(Path(im)) if isinstance(im, str | Path) else im, thr) for im in images]

    def _predict_one(self, image: np.ndarray | torch.Tensor, thr: float | None) -> Instances:
        xs = [m._tensor(image).to(m.device) for m in self.members]
        size = (int(xs[0].shape[-2]), int(xs[0].shape[-1]))
        if self.combine == "raw":
            raws = [m.raw_maps(x) for m, x in zip(self.members, xs, strict=True)]
            lead: Any = self.members[0].model  # a dense model with predict_raw/postprocess (checked on creation)
            out = lead.postprocess(tta.average_raw([tta.align_raw(lead, r, "none", raws[0]) for r in raws]))
            return self._filter(to_instances(out, size, self.category_ids, self.mask_threshold), thr)
        dets = [m.detections(x, thr) for m, x in zip(self.members, xs, strict=True)]
        return self._to_instances(tta.merge_detections(dets, self.iou, self.mask_threshold), thr)


def load_ensemble(checkpoints: Sequence[str | Path], combine: str = "auto", iou: float = 0.5,
                  **options: Any) -> EnsemblePredictor:
    """An :class:`EnsemblePredictor` of checkpoints or run folders; ``options`` as :class:`Predictor`'s, for each."""
    return EnsemblePredictor([Predictor(c, **options) for c in checkpoints], combine=combine, iou=iou)
