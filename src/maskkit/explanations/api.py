"""``maskkit.explain(model, image, ...)``: saliency maps per predicted instance (or per class) as arrays.

Instance models (Mask R-CNN, Panoptic FPN): for each chosen detection, one map for its class score (the class
logit of the fixed detected box) and one for its mask (the mean mask logit over the predicted mask).
Dense models (semantic, bottom-up): one map per predicted class (its logit over its predicted pixels); bottom-up
models also get one per chosen instance (its class logit over its region). Every map is at the image's size, in
``[0, 1]``. The feature maps of every tapped level (FPN levels, encoder stages) come along.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maskkit.errors import ConfigError
from maskkit.explanations.adapters import DenseAdapter, Prepared, RCNNAdapter, to_image
from maskkit.explanations.methods import DEFAULT_METHOD, TARGET_FREE, attribution, check_method, require_libraries
from maskkit.inference.common import ImageLike, PredictorBase
from maskkit.inference.predictor import Predictor, load
from maskkit.structures import Instances

BOX_MARGIN = 0.25
""":func:`mass_in_box` dilates a box by this fraction of its longer side on every side (plus 2 px)."""
DEFAULT_MAX_INSTANCES = 16


@dataclass
class MapInfo:
    """What one map explains: ``kind`` ``class`` (class score or class logit over a region) or ``mask``; the
    instance (index into ``Explanation.instances``, None for a per-class map of a dense model), its class and
    score, its box (XYXY, image pixels) and ``in_box``: the share of the map's mass inside the dilated box."""

    kind: str
    instance: int | None
    category_id: int
    class_name: str
    score: float | None
    box: list[float] | None
    in_box: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "instance": self.instance, "category_id": self.category_id,
                "class_name": self.class_name, "score": self.score, "box": self.box, "in_box": self.in_box}


@dataclass
class Explanation:
    """Maps of one image: ``maps`` (``T x H x W`` float32 in [0, 1]) described by ``targets`` (one
    :class:`MapInfo` each); ``instances`` the predictions (dense bool masks), ``image`` the image as drawn
    (``H x W x 3`` uint8), ``features`` each tapped level's activations (``C x h x w``)."""

    image: np.ndarray
    instances: Instances
    maps: np.ndarray
    targets: list[MapInfo]
    features: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict)
    method: str = DEFAULT_METHOD
    layers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def dilated_box(box: Sequence[float], shape: tuple[int, int], margin: float = BOX_MARGIN, min_size: int = 0
                ) -> tuple[int, int, int, int]:
    """Integer ``x0, y0, x1, y1`` of ``box`` (XYXY) grown by ``margin`` x its longer side (+2 px) on every side (and
    to at least ``min_size`` px), clipped to an image of ``shape`` (h, w)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    pad = margin * max(x1 - x0, y1 - y0) + 2.0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_w, half_h = max((x1 - x0) / 2 + pad, min_size / 2), max((y1 - y0) / 2 + pad, min_size / 2)
    h, w = shape
    return (max(int(np.floor(cx - half_w)), 0), max(int(np.floor(cy - half_h)), 0),
            min(int(np.ceil(cx + half_w)), w), min(int(np.ceil(cy + half_h)), h))


def mass_in_box(saliency: np.ndarray, box: Sequence[float], margin: float = BOX_MARGIN) -> float:
    """Share of the positive mass of ``saliency`` (H x W) inside ``box`` (XYXY) dilated by ``margin`` x its longer
    side (+2 px) on every side; 0 for a map without positive mass."""
    pos = np.clip(np.asarray(saliency, dtype=np.float64), 0, None)
    total = pos.sum()
    if total <= 0:
        return 0.0
    c0, r0, c1, r1 = dilated_box(box, pos.shape[:2], margin)
    return float(pos[r0:r1, c0:c1].sum() / total)


def parse_instances(spec: str | Sequence[int] | None) -> list[int] | None:
    """``all``/None -> None (every instance); ``"0,3"`` or ``[0, 3]`` -> those indices (0 = best score)."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return None
    try:
        values = [int(v) for v in spec.split(",") if v.strip()] if isinstance(spec, str) else [int(v) for v in spec]
    except ValueError:
        raise ConfigError(f"--instances takes 'all' or comma-separated indices (0 = best score), got {spec!r}"
                          ) from None
    if not values or min(values) < 0:
        raise ConfigError(f"--instances takes 'all' or indices >= 0, got {spec!r}")
    return values


class Explainer:
    """A model ready to explain: ``Explainer(model).explain(image)``.

    ``model``: a checkpoint file or run folder (loaded as ``maskkit.load`` does), or a
    :class:`~maskkit.inference.predictor.Predictor`. ``method``: see :data:`~maskkit.explanations.methods.METHODS`.
    ``layers``: tap names for the CAMs (default: the FPN levels P2-P5, or a dense encoder's two deepest stages);
    ``conf``: score threshold of the explained predictions (None: the model's own).
    """

    def __init__(self, model: str | Path | PredictorBase, method: str = DEFAULT_METHOD,
                 layers: Sequence[str] | None = None, conf: float | None = None, device: str = "cpu") -> None:
        self.method = check_method(method)
        require_libraries(self.method)
        if isinstance(model, str | Path):
            model = load(model, device=device, score_threshold=conf, dense_masks=True, optimize="exact")
        if not isinstance(model, Predictor):
            raise ConfigError("explain needs a PyTorch checkpoint or run folder, not an exported model")
        self.predictor = model
        self.conf = conf
        self.adapter = adapter_for(model.model)
        self.layer_names = list(layers) if layers else None

    def explain(self, image: ImageLike, instances: str | Sequence[int] | None = "all",
                max_instances: int = DEFAULT_MAX_INSTANCES, boxes: np.ndarray | Sequence[Sequence[float]] | None = None,
                labels: Sequence[int] | None = None) -> Explanation:
        """The maps of ``image`` (a path, an ``H x W x C`` array or a ``C x H x W`` tensor in [0, 1]) for the chosen
        ``instances`` (``all``: the best ``max_instances``; or indices, 0 = best score).

        ``boxes`` (Mask R-CNN, Panoptic FPN; XYXY image pixels) explains these boxes instead of the predictions,
        as class ``labels`` (category ids; default the first class), e.g. an object the model missed; their score
        and mask are what the heads say of each box.
        """
        predictor = self.predictor
        tensor = predictor._tensor(image).to(predictor.device)
        prepared = self.adapter.prepare(tensor)
        if boxes is None:
            pred = predictor.predict(tensor, score_threshold=self.conf)
            assert isinstance(pred, Instances)
            if pred.has("masks") and not isinstance(pred.masks, np.ndarray):
                pred.masks = pred.masks.to_bitmaps()
        else:
            pred = self._given_boxes(prepared, boxes, labels)
        per_instance = isinstance(self.adapter, RCNNAdapter) or _is_bottomup(self.adapter.model)
        chosen, notes = (_choose(parse_instances(instances), len(pred), max_instances) if per_instance
                         else ([], []))
        features = self.adapter.features(prepared)
        names = self.layer_names or self.adapter.default_layers()
        layers = self.adapter.taps.layers(names)
        names_of = dict(zip(predictor.category_ids, predictor.class_names, strict=True))
        maps: list[np.ndarray] = []
        infos: list[MapInfo] = []
        if isinstance(self.adapter, RCNNAdapter):
            self._rcnn_maps(pred, chosen, prepared, layers, names_of, maps, infos)
        else:
            self._dense_maps(pred, chosen, prepared, layers, names_of, maps, infos)
        for saliency, info in zip(maps, infos, strict=True):
            if info.box is not None:
                info.in_box = round(mass_in_box(saliency, info.box), 4)
        if self.method in TARGET_FREE:
            notes.append(f"{self.method} does not depend on the target: every map is the same")
        h, w = prepared.original
        return Explanation(
            image=display_image(tensor), instances=pred,
            maps=np.stack(maps) if maps else np.zeros((0, h, w), np.float32), targets=infos,
            features=OrderedDict((k, v.numpy()) for k, v in features.items()), method=self.method,
            layers=list(names), notes=notes)

    def _given_boxes(self, prepared: Prepared, boxes: np.ndarray | Sequence[Sequence[float]],
                     labels: Sequence[int] | None) -> Instances:
        if not isinstance(self.adapter, RCNNAdapter):
            raise ConfigError("boxes can be explained for Mask R-CNN and Panoptic FPN models only")
        array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        ids = self.predictor.category_ids
        cats = [ids[0]] * len(array) if labels is None else [int(c) for c in labels]
        unknown = sorted(set(cats) - set(ids))
        if len(cats) != len(array) or unknown:
            raise ConfigError(f"labels: one category id of {ids} per box, got {list(labels or [])}")
        scores, masks = self.adapter.box_predictions(prepared, array, [ids.index(c) + 1 for c in cats])
        return Instances(prepared.original, boxes=array, labels=np.asarray(cats, np.int64), scores=scores,
                         masks=masks)

    def _info(self, kind: str, pred: Instances, i: int, names_of: dict[int, str]) -> MapInfo:
        cat = int(pred.labels[i])
        return MapInfo(kind, i, cat, names_of.get(cat, str(cat)), round(float(pred.scores[i]), 4),
                       [round(float(v), 2) for v in pred.boxes[i]])

    def _rcnn_maps(self, pred: Instances, chosen: list[int], prepared: Prepared, layers: list[nn.Module],
                   names_of: dict[int, str], maps: list[np.ndarray], infos: list[MapInfo]) -> None:
        assert isinstance(self.adapter, RCNNAdapter)
        for i in chosen:
            label = self.predictor.category_ids.index(int(pred.labels[i])) + 1
            module, class_target, mask_target = self.adapter.instance_targets(prepared, pred.boxes[i], label)
            for kind, target in (("class", class_target), ("mask", mask_target)):
                maps.append(to_image(attribution(self.method, module, prepared.x, target, layers), prepared))
                infos.append(self._info(kind, pred, i, names_of))

    def _dense_maps(self, pred: Instances, chosen: list[int], prepared: Prepared, layers: list[nn.Module],
                    names_of: dict[int, str], maps: list[np.ndarray], infos: list[MapInfo]) -> None:
        from maskkit.explanations.adapters import RegionLogits

        assert isinstance(self.adapter, DenseAdapter)
        module = self.adapter.module
        for label, region in self.adapter.class_regions(prepared).items():
            cat = self.predictor.category_ids[label - 1]
            maps.append(to_image(attribution(self.method, module, prepared.x, RegionLogits(label, region), layers),
                                 prepared))
            infos.append(MapInfo("class", None, cat, names_of.get(cat, str(cat)), None, None))
        if _is_bottomup(self.adapter.model) and pred.has("masks"):
            for i in chosen:
                label = self.predictor.category_ids.index(int(pred.labels[i])) + 1
                target = RegionLogits(label, self.adapter.to_input_region(pred.masks[i], prepared))
                maps.append(to_image(attribution(self.method, module, prepared.x, target, layers), prepared))
                infos.append(self._info("class", pred, i, names_of))

    def release(self) -> None:
        """Remove the taps from the model (it predicts as before either way)."""
        self.adapter.taps.remove()


def _choose(wanted: list[int] | None, count: int, max_instances: int) -> tuple[list[int], list[str]]:
    if wanted is None:
        notes = [f"{count} instances predicted: the best {max_instances} explained"] if count > max_instances else []
        return list(range(min(count, max_instances))), notes
    missing = [i for i in wanted if i >= count]
    if missing:
        raise ConfigError(f"--instances {','.join(map(str, missing))}: the model predicted {count} instance(s) "
                          f"(indices 0-{count - 1})" if count else "--instances: the model predicted no instance")
    return list(dict.fromkeys(wanted)), []


def _is_bottomup(model: nn.Module) -> bool:
    from maskkit.models.bottomup import BottomUpSegmenter

    return isinstance(model, BottomUpSegmenter)


def adapter_for(model: nn.Module) -> RCNNAdapter | DenseAdapter:
    """The adapter of a Mask R-CNN / Panoptic FPN (torchvision GeneralizedRCNN with masks) or a dense model."""
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    from maskkit.models.dense import DenseSegmentationModel

    if isinstance(model, GeneralizedRCNN) and getattr(model.roi_heads, "mask_predictor", None) is not None:
        return RCNNAdapter(model)
    if isinstance(model, DenseSegmentationModel) and hasattr(model.net, "encoder"):
        return DenseAdapter(model)
    raise ConfigError(f"explain supports Mask R-CNN, Panoptic FPN and dense (semantic, bottom-up) models, "
                      f"not {type(model).__name__}")


def display_image(tensor: torch.Tensor) -> np.ndarray:
    """An ``H x W x 3`` uint8 picture of a ``C x H x W`` model input in [0, 1] (first three channels, grey repeated)."""
    from maskkit.data.images import to_rgb_uint8

    chw = tensor.detach().float().cpu().clamp(0, 1)[:3]
    return to_rgb_uint8((chw.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def explain(model: str | Path | PredictorBase, image: ImageLike, instances: str | Sequence[int] | None = "all",
            method: str = DEFAULT_METHOD, layers: Sequence[str] | None = None, conf: float | None = None,
            max_instances: int = DEFAULT_MAX_INSTANCES, device: str = "cpu",
            boxes: np.ndarray | Sequence[Sequence[float]] | None = None, labels: Sequence[int] | None = None
            ) -> Explanation:
    """``maskkit.explain``: saliency maps of one image's predictions (see :class:`Explainer` and
    :class:`Explanation`; ``instances``: ``all`` or indices, 0 = best score; ``boxes``/``labels``: explain these
    boxes instead, Mask R-CNN and Panoptic FPN)."""
    explainer = Explainer(model, method, layers, conf, device)
    try:
        return explainer.explain(image, instances, max_instances, boxes, labels)
    finally:
        explainer.release()
