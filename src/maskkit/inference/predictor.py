"""``Predictor``: a trained checkpoint ready for inference, ``predict(image) -> Instances``.

Images are batched (same-size images share a forward pass, so batching never changes a result),
and results are filtered by score, class and count. Masks come as COCO RLE (default) or as a dense
boolean ``N×H×W`` array (``dense_masks=True``). ``tta=True`` (or ``tta_scales``/``tta_flips``)
merges flipped and rescaled views at mask level (:mod:`maskkit.inference.tta`).

torchvision Mask R-CNN models take a faster path: score/class/count filters applied before the mask
head, masks pasted as crops straight into RLE (:mod:`maskkit.inference.paste`) instead of full-image
canvases (bit-identical to torchvision), plus BatchNorm folded into the convolutions and
channels-last convolutions (float rounding differences only) whose NHWC features go straight to a
fast RoIAlign (:mod:`maskkit.inference.roi_align`, bit-identical to torchvision's, 3-4x faster on
CPU). ``optimize="exact"`` keeps the network unchanged (crop pasting and the fast RoIAlign only:
outputs bit-identical to torchvision's), ``optimize=False`` runs the model's own ``forward``, as
other models always do. A Predictor is not thread-safe (TTA scales the model's own
resize for each view).
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from maskkit.config import TrainConfig
from maskkit.errors import ConfigError
from maskkit.inference import roi_align, tta
from maskkit.inference.backends.artefact import is_exported
from maskkit.inference.backends.base import RuntimePredictor
from maskkit.inference.common import ImageLike, PredictorBase
from maskkit.inference.paste import Detections
from maskkit.inference.tta import make_views
from maskkit.models.factory import model_from_checkpoint, resolve_device
from maskkit.models.outputs import to_instances
from maskkit.structures import Instances

__all__ = ["ImageLike", "Predictor", "load"]


class Predictor(PredictorBase):
    """Load a maskkit checkpoint (weights-only) and predict instances with dataset category ids.

    ``Predictor("runs/x/best.pt").predict(image)`` takes an ``H×W×C`` array, an image path or a
    ``C×H×W`` float tensor in [0, 1] (or a list of them) and returns :class:`Instances` (a list for
    a list) with XYXY ``boxes``, ``labels`` (the dataset's category ids), ``scores`` and ``masks``.

    Args:
        checkpoint: a checkpoint file or a run folder (``best.pt``, else ``last.pt``).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``...
        ema: use the EMA weights when the checkpoint has them.
        score_threshold: keep scores at or above it (None: the model's own threshold).
        classes: keep only these classes (category ids or class names).
        max_det: at most this many instances per image (None: the model's own cap).
        mask_threshold: probability threshold of soft masks.
        dense_masks: ``masks`` as a bool ``N×H×W`` array instead of RLE :class:`Masks`.
        batch_size: images per forward pass.
        tta, tta_scales, tta_flips: test-time augmentation (default views: scale 1, no flip and
            left-right flip); giving scales or flips turns it on.
        tta_iou: mask IoU at which instances of two views are the same instance.
        optimize: ``True``, ``"exact"`` or ``False``: the torchvision Mask R-CNN fast path (module docstring).
        threads: CPU threads of torch (None: torch's default).
    """

    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "auto",
        ema: bool = True,
        score_threshold: float | None = None,
        classes: Sequence[int | str] | None = None,
        max_det: int | None = None,
        mask_threshold: float = 0.5,
        dense_masks: bool = False,
        batch_size: int = 4,
        tta: bool = False,
        tta_scales: Sequence[float] | None = None,
        tta_flips: Sequence[str] | None = None,
        tta_iou: float = 0.5,
        optimize: bool | str = True,
        threads: int | None = None,
    ) -> None:
        loaded = model_from_checkpoint(checkpoint, ema=ema)
        self._setup(loaded.model, loaded.config, loaded.class_names, loaded.category_ids, device, score_threshold,
                    classes, max_det, mask_threshold, dense_masks, batch_size, tta, tta_scales, tta_flips, tta_iou,
                    optimize, threads)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        category_ids: Sequence[int],
        class_names: Sequence[str] | None = None,
        config: TrainConfig | None = None,
        device: str = "auto",
        **options: Any,
    ) -> Predictor:
        """A Predictor around an in-memory model (copied when optimised); ``options`` as in the constructor."""
        self = cls.__new__(cls)
        names = list(class_names) if class_names is not None else [str(c) for c in category_ids]
        opts: dict[str, Any] = {"score_threshold": None, "classes": None, "max_det": None, "mask_threshold": 0.5,
                "dense_masks": False, "batch_size": 4, "tta": False, "tta_scales": None, "tta_flips": None,
                "tta_iou": 0.5, "optimize": True, "threads": None}
        unknown = set(options) - set(opts)
        if unknown:
            raise TypeError(f"unknown Predictor option(s): {sorted(unknown)}")
        opts.update(options)
        if opts["optimize"] is True and is_torchvision_rcnn(model):  # optimize_rcnn changes the model
            model = copy.deepcopy(model)
        self._setup(model, config or TrainConfig(), names, [int(c) for c in category_ids], device, **opts)
        return self

    def _setup(self, model: nn.Module, config: TrainConfig, class_names: list[str], category_ids: list[int],
               device: str, score_threshold: float | None, classes: Sequence[int | str] | None,
               max_det: int | None, mask_threshold: float, dense_masks: bool, batch_size: int, tta: bool,
               tta_scales: Sequence[float] | None, tta_flips: Sequence[str] | None, tta_iou: float,
               optimize: bool | str, threads: int | None) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        self._set_options(config, class_names, category_ids, score_threshold, classes, max_det, mask_threshold,
                          dense_masks, batch_size)
        self.device = resolve_device(device)
        self.model: nn.Module = model.to(self.device).eval()
        use_tta = tta or tta_scales is not None or tta_flips is not None
        self.views = make_views(tta_scales or (1.0,), tta_flips or ("none", "h")) if use_tta else None
        self.tta_iou = float(tta_iou)
        if optimize not in (True, False, "exact"):
            raise ConfigError(f"optimize must be True, False or 'exact', got {optimize!r}")
        self.fast = optimize is not False and is_torchvision_rcnn(self.model)
        self.channels_last = self.fast and optimize is True
        if self.channels_last:
            optimize_rcnn(self.model)

    # -- prediction -------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_batch(self, images: Sequence[ImageLike], score_threshold: float | None = None) -> list[Instances]:
        """Instances of each image; images of the same size run together, ``batch_size`` at a time."""
        if self.views is None:
            return super().predict_batch(images, score_threshold)
        thr = self.score_threshold if score_threshold is None else score_threshold
        return [self._predict_tta(self._tensor(im).to(self.device), thr) for im in images]

    def _predict_same_size(self, batch: list[torch.Tensor], thr: float | None) -> list[Instances]:
        if self.fast:
            return [self._to_instances(d, thr) for d in self._rcnn_detect(batch, thr)]

        outs = self.model(batch)
        return [self._filter(to_instances(o, (x.shape[-2], x.shape[-1]), self.category_ids, self.mask_threshold), thr)
                for o, x in zip(outs, batch, strict=True)]

    def _predict_tta(self, x: torch.Tensor, thr: float | None) -> Instances:
        if self.averages_raw_maps:
            out = self.model.postprocess(self.raw_maps(x))  # type: ignore[operator]
            inst = to_instances(out, (x.shape[-2], x.shape[-1]), self.category_ids, self.mask_threshold)
            return self._filter(inst, thr)
        return self._to_instances(self.detections(x, thr), thr)

    # -- building blocks of TTA and ensembles (one ``C×H×W`` image on the predictor's device) --------------
    @property
    def averages_raw_maps(self) -> bool:
        """Whether views (and ensemble members) are combined as raw maps before post-processing."""
        return not self.fast and tta.has_raw_outputs(self.model)

    def raw_maps(self, x: torch.Tensor) -> Any:
        """The model's raw maps of ``x`` (``predict_raw``), averaged over the TTA views when TTA is on."""
        if self.views is not None:
            return tta.tta_raw(self.model, x, self.views)
        return self.model.predict_raw([x])[0]  # type: ignore[operator]

    def detections(self, x: torch.Tensor, thr: float | None) -> Detections:
        """Detections of ``x`` before the score/class/count filters (merged over the TTA views when TTA is on)."""

        def detect(batch: list[torch.Tensor]) -> list[Detections]:
            if self.fast:  # per-view caps stay the model's: the filters apply to the merged result
                return self._rcnn_detect(batch, None if thr is None else min(thr, self._model_thresh()), view=True)
            return [Detections.from_output(o, (b.shape[-2], b.shape[-1])) for o, b in zip(self.model(batch), batch,
                                                                                 strict=True)]

        if self.views is None:
            return detect([x])[0]
        return tta.tta_detections(self.model, detect, x, self.views, self.tta_iou, self.mask_threshold)

    def _model_thresh(self) -> float:
        rcnn: Any = self.model  # a torchvision Mask R-CNN (no type information)
        return float(rcnn.roi_heads.score_thresh)

    # -- the torchvision Mask R-CNN fast path -------------------------------------------------------
    def _rcnn_detect(self, images: list[torch.Tensor], thr: float | None, view: bool = False) -> list[Detections]:
        """torchvision's Mask R-CNN inference, step by step, with filters before the mask head and crop pasting.

        ``view``: a TTA view (the model's own detection cap, no class filter: they apply after merging).
        """
        from torchvision.models.detection.image_list import ImageList
        from torchvision.models.detection.roi_heads import RoIHeads
        from torchvision.models.detection.transform import resize_boxes

        model: Any = self.model  # a torchvision Mask R-CNN (no type information)
        rh = model.roi_heads
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        batch, _ = model.transform(images)
        x = batch.tensors.contiguous(memory_format=torch.channels_last) if self.channels_last else batch.tensors
        features = model.backbone(x)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals, _ = model.rpn(ImageList(x, batch.image_sizes), features)
        # the fast RoIAlign (bit-identical to torchvision's) reads NHWC, torchvision's NCHW
        layout = torch.channels_last if roi_align.available() and x.device.type == "cpu" else torch.contiguous_format
        features = OrderedDict((k, v.contiguous(memory_format=layout)) for k, v in features.items())
        keep_labels = None if view else self._keep_labels()
        cap = rh.detections_per_img if view or self.max_det is None else self.max_det
        # torchvision's own post-processing with our thresholds (the model itself is left unchanged);
        # NMS is per class, so with a class filter every detection is kept until the classes are filtered
        params = SimpleNamespace(box_coder=rh.box_coder, nms_thresh=rh.nms_thresh,
                                 score_thresh=rh.score_thresh if thr is None else thr,
                                 detections_per_img=cap if keep_labels is None else 10**9)
        box_features = rh.box_head(roi_align.multiscale_roi_align(rh.box_roi_pool, features, proposals,
                                                                  batch.image_sizes))
        class_logits, box_regression = rh.box_predictor(box_features)
        boxes, scores, labels = RoIHeads.postprocess_detections(params, class_logits, box_regression, proposals,
                                                                batch.image_sizes)
        for i in range(len(images)):
            if keep_labels is not None:
                k = torch.isin(labels[i], torch.as_tensor(keep_labels, device=labels[i].device))
                boxes[i], scores[i], labels[i] = boxes[i][k], scores[i][k], labels[i][k]
            boxes[i], scores[i], labels[i] = boxes[i][:cap], scores[i][:cap], labels[i][:cap]
        probs = self._mask_probs(features, boxes, labels, batch.image_sizes)
        return [Detections.from_mask_probs(resize_boxes(b, resized, size), lab, s, p, size)
                for b, s, lab, p, resized, size in zip(boxes, scores, labels, probs, batch.image_sizes, sizes,
                                                       strict=True)]

    def _mask_probs(self, features: OrderedDict[str, torch.Tensor], boxes: list[torch.Tensor],
                    labels: list[torch.Tensor], image_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """``n×M×M`` mask probabilities of each image's detections (of their predicted class)."""
        rh: Any = self.model.roi_heads  # torchvision's RoIHeads (no type information)
        counts = [len(b) for b in boxes]
        if not sum(counts):
            m = 2 * int(rh.mask_roi_pool.output_size[0])
            return [features["0"].new_zeros((0, m, m)) for _ in boxes]
        x = roi_align.multiscale_roi_align(rh.mask_roi_pool, features, boxes, image_sizes)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = rh.mask_predictor(rh.mask_head(x))
        all_labels = torch.cat(labels)
        probs = logits[torch.arange(len(all_labels), device=logits.device), all_labels].sigmoid()
        return list(probs.split(counts))


def is_torchvision_rcnn(model: nn.Module) -> bool:
    """A torchvision Mask R-CNN whose inference is exactly torchvision's (the fast path reproduces it)."""
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from torchvision.models.detection.roi_heads import RoIHeads

    if not isinstance(model, GeneralizedRCNN) or type(model).forward is not GeneralizedRCNN.forward:
        return False
    rh = model.roi_heads
    return (type(rh).forward is RoIHeads.forward and rh.has_mask() and rh.keypoint_predictor is None
            and type(rh).postprocess_detections is RoIHeads.postprocess_detections
            and type(model.transform).postprocess.__module__ == "torchvision.models.detection.transform")


def optimize_rcnn(model: nn.Module) -> None:
    """In place: BatchNorm folded into the preceding convolutions and channels-last convolution weights."""
    rcnn: Any = model  # a torchvision Mask R-CNN (no type information)
    for part in (rcnn.backbone, rcnn.rpn.head, rcnn.roi_heads.box_head, rcnn.roi_heads.mask_head):
        fold_batchnorm(part)
    for part in (rcnn.backbone, rcnn.rpn.head, rcnn.roi_heads.mask_head, rcnn.roi_heads.mask_predictor):
        part.to(memory_format=torch.channels_last)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold eval-mode BatchNorm2d / FrozenBatchNorm2d (exactly these types) that directly follow a Conv2d into it.

    The pairs are found by tracing ``module`` with torch.fx; the conv gets the folded weight and
    bias and the norm becomes ``Identity``. Untraceable modules are left alone. Returns the count.
    """
    from torch import fx
    from torch.nn.utils.fusion import fuse_conv_bn_weights
    from torchvision.ops.misc import FrozenBatchNorm2d

    norms = (nn.BatchNorm2d, FrozenBatchNorm2d)

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return type(m) in norms or super().is_leaf_module(m, qualname)

    try:
        graph = Tracer().trace(module)
    except Exception as exc:  # data-dependent control flow etc.: nothing folded, the cause logged
        logging.getLogger("maskkit.predict").debug("not folding norms: FX trace failed (%s: %s)",
                                                   type(exc).__name__, exc)
        return 0
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":  # its target is the module's qualified name
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or calls[str(node.target)] != 1 or not node.args:
            continue
        norm: Any = module.get_submodule(str(node.target))  # a norm's running stats, eps, affine weights
        src = node.args[0]
        if type(norm) not in norms or norm.training or not isinstance(src, fx.Node):  # not subclasses (BN+act)
            continue
        if src.op != "call_module" or calls[str(src.target)] != 1 or len(src.users) != 1:
            continue
        conv = module.get_submodule(str(src.target))
        if type(conv) is not nn.Conv2d or getattr(norm, "running_mean", None) is None:
            continue
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps,
                                            norm.weight, norm.bias)
        conv.weight, conv.bias = weight, bias
        parent, _, name = str(node.target).rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, name, nn.Identity())
        folded += 1
    return folded


def load(checkpoint: str | Path, device: str = "auto", ema: bool = True, backend: str | None = None,
         **options: Any) -> PredictorBase:
    """``maskkit.load``: a predictor for a checkpoint or run folder (:class:`Predictor`: best.pt, else last.pt), or
    for an exported model (an export folder, ``model.onnx``, ``model.xml``, ``model.torchscript``:
    :class:`~maskkit.inference.backends.base.RuntimePredictor` on ``backend``, default the graph's own runtime).

    Both have the same interface: ``predict``, ``predict_batch``, ``class_names``, ``category_ids``, ``config``.
    """
    if is_exported(checkpoint):
        return RuntimePredictor(checkpoint, backend=backend, device=device, ema=ema, **options)
    if backend not in (None, "torch", "pytorch"):
        raise ConfigError(f"backend {backend!r} runs exported models; {checkpoint} is a checkpoint (PyTorch)")
    return Predictor(checkpoint, device=device, ema=ema, **options)
