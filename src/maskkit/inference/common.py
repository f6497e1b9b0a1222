"""What every predictor shares (:class:`~maskkit.inference.predictor.Predictor` on a PyTorch model and
:class:`~maskkit.inference.backends.base.RuntimePredictor` on an exported graph): image conversion, batching
by size, the score/class/count filters and the conversion of detections to :class:`Instances`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskkit.config import TrainConfig
from maskkit.data.dataset import convert_channels, prepare_image
from maskkit.data.images import read_image
from maskkit.inference.filters import filter_instances, resolve_classes, select
from maskkit.inference.paste import Detections
from maskkit.models.factory import input_channels
from maskkit.structures import Instances, Masks

ImageLike = np.ndarray | str | Path | torch.Tensor


def image_tensor(image: ImageLike, config: TrainConfig) -> torch.Tensor:
    """A ``C x H x W`` float tensor of an image (array, path or tensor) as the model of ``config`` takes it."""
    if isinstance(image, torch.Tensor):
        return image.float()
    array = read_image(Path(image)) if isinstance(image, str | Path) else np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    aug = config.augment
    # a run that kept its images' own channels (augment.channels unset) still has a network of fixed width:
    # grey or RGBA images are converted to it instead of failing inside the network
    channels = aug.channels if aug.channels is not None else input_channels(config)
    chw = np.ascontiguousarray(convert_channels(array, channels, image if isinstance(image, str | Path) else None)
                               .transpose(2, 0, 1))
    return torch.from_numpy(prepare_image(chw, aug.normalise, aug.fixed_max, aug.appearance))


class PredictorBase:
    """Options, filters, batching and output conversion; subclasses implement ``_predict_same_size``."""

    config: TrainConfig
    class_names: list[str]
    category_ids: list[int]
    device: torch.device

    def _set_options(self, config: TrainConfig, class_names: list[str], category_ids: list[int],
                     score_threshold: float | None, classes: Sequence[int | str] | None, max_det: int | None,
                     mask_threshold: float, dense_masks: bool, batch_size: int) -> None:
        self.config = config
        self.class_names = class_names
        self.category_ids = category_ids
        self.score_threshold = score_threshold
        self.classes = resolve_classes(classes, self.category_ids, self.class_names)
        self.max_det = max_det
        self.mask_threshold = float(mask_threshold)
        self.dense_masks = bool(dense_masks)
        self.batch_size = max(1, int(batch_size))

    # -- inputs -----------------------------------------------------------------------------------
    def _tensor(self, image: ImageLike) -> torch.Tensor:
        return image_tensor(image, self.config)

    # -- prediction -------------------------------------------------------------------------------
    def predict(self, image: ImageLike | list[ImageLike] | tuple[ImageLike, ...],
                score_threshold: float | None = None) -> Instances | list[Instances]:
        """Instances of one image (or a list for a list of images): boxes, labels (category ids), scores, masks."""
        if isinstance(image, (list, tuple)):
            return self.predict_batch(image, score_threshold)
        return self.predict_batch([image], score_threshold)[0]

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[ImageLike], score_threshold: float | None = None) -> list[Instances]:
        """Instances of each image; images of the same size run together, ``batch_size`` at a time."""
        thr = self.score_threshold if score_threshold is None else score_threshold
        return self._predict_tensors([self._tensor(im) for im in images], thr)

    def _predict_tensors(self, tensors: list[torch.Tensor], thr: float | None) -> list[Instances]:
        results: list[Instances | None] = [None] * len(tensors)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(tensors):
            groups.setdefault(tuple(x.shape), []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                batch = [tensors[i].to(self.device) for i in chunk]
                for i, inst in zip(chunk, self._predict_same_size(batch, thr), strict=True):
                    results[i] = inst
        return results  # type: ignore[return-value]

    def _predict_same_size(self, batch: list[torch.Tensor], thr: float | None) -> list[Instances]:
        raise NotImplementedError

    # -- outputs ----------------------------------------------------------------------------------
    def _keep_labels(self) -> np.ndarray | None:
        """Model labels (1..K) of the kept classes."""
        if self.classes is None:
            return None
        return np.asarray([i + 1 for i, c in enumerate(self.category_ids) if c in self.classes], np.int64)

    def _to_instances(self, det: Detections, thr: float | None) -> Instances:
        """Filtered detections as Instances with category ids and RLE (or dense) masks."""
        det = det.take(select(det.scores, det.labels, thr, self._keep_labels(), self.max_det))
        h, w = det.image_size
        ids = np.asarray(self.category_ids, np.int64)
        masks: Any = (det.masks.to_dense(self.mask_threshold) if self.dense_masks
                      else Masks.from_rles(det.masks.to_rles(self.mask_threshold), h, w))
        return Instances((h, w), boxes=det.boxes.astype(np.float32), labels=ids[det.labels - 1] if len(det) else
                         np.zeros(0, np.int64), scores=det.scores.astype(np.float32), masks=masks)

    def _filter(self, inst: Instances, thr: float | None) -> Instances:
        """Score/class/count filters of Instances from the generic path (and dense masks on request)."""
        inst = filter_instances(inst, thr, self.classes, self.max_det)
        if self.dense_masks and inst.has("masks"):
            inst.masks = inst.masks.to_bitmaps()
        return inst
