"""``RuntimePredictor``: an exported graph behind the :class:`~maskkit.inference.predictor.Predictor` interface.

The graph does what a graph can (normalisation, resize, network, box decoding and NMS for Mask R-CNN); what
follows is the PyTorch path's own code: :meth:`Detections.from_mask_probs` pastes the low-resolution masks
and :class:`~maskkit.inference.common.PredictorBase` filters and encodes them (Mask R-CNN); the model's
decoder (named by the export's metadata, :mod:`maskkit.models.decoders`: connected components, seeded
watershed, star-convex polygon NMS, flow following) and :func:`~maskkit.models.outputs.to_instances` turn
dense maps into instances.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from maskkit.config import TrainConfig
from maskkit.errors import ConfigError
from maskkit.inference.backends.artefact import SIZE_INPUT, locate, resized_size
from maskkit.inference.backends.onnxruntime import OrtSession
from maskkit.inference.backends.openvino import OpenVinoSession
from maskkit.inference.backends.torchscript import TorchScriptSession
from maskkit.inference.common import PredictorBase
from maskkit.inference.paste import Detections
from maskkit.models.outputs import to_instances
from maskkit.structures import Instances

NO_CAP = 2**31 - 1
"""``max_detections`` meaning "no cap" (the class filter applies first, then the cap, as in the Predictor)."""


class Session(Protocol):
    """One loaded graph: ``run(inputs) -> outputs`` in the contract's order (numpy arrays)."""

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def open_session(graph: Path, backend: str, threads: int | None) -> Session:
    """The backend's session on ``graph`` (its package imported here, lazily)."""
    if backend == "onnxruntime":
        return OrtSession(graph, threads)
    if backend == "openvino":
        return OpenVinoSession(graph, threads)
    return TorchScriptSession(graph, threads)


def make_decoder(spec: dict[str, Any]) -> Any:
    """The dense model's decoder of an export's ``postprocess`` metadata (which names it)."""
    from maskkit.models.decoders import decoder_from_spec  # deferred: smp/timm/Numba, needed by dense exports only

    return decoder_from_spec(spec)


class RuntimePredictor(PredictorBase):
    """An exported model (folder, ``model.onnx``, ``model.xml`` or ``model.torchscript``) run by a runtime backend.

    Same interface and options as :class:`~maskkit.inference.predictor.Predictor` (``predict``,
    ``predict_batch``, ``class_names``, ``category_ids``, ``config``; ``score_threshold``, ``classes``,
    ``max_det``, ``mask_threshold``, ``dense_masks``, ``batch_size``, ``threads``), CPU only, no TTA.

    Args:
        path: the export folder or its graph file.
        backend: ``onnxruntime``, ``openvino`` or ``torchscript`` (None: the graph file's own runtime).
    """

    def __init__(
        self,
        path: str | Path,
        backend: str | None = None,
        device: str = "auto",
        score_threshold: float | None = None,
        classes: Sequence[int | str] | None = None,
        max_det: int | None = None,
        mask_threshold: float = 0.5,
        dense_masks: bool = False,
        batch_size: int = 4,
        threads: int | None = None,
        tta: bool = False,
        tta_scales: Sequence[float] | None = None,
        tta_flips: Sequence[str] | None = None,
        ema: bool = True,
        **options: Any,
    ) -> None:
        if options:
            raise ConfigError(f"option(s) {sorted(options)} do not apply to exported models")
        if tta or tta_scales is not None or tta_flips is not None:
            raise ConfigError("test-time augmentation needs the PyTorch checkpoint, not an exported model")
        if device not in ("auto", "cpu"):
            raise ConfigError(f"exported models run on the CPU (device {device!r} requested)")
        del ema  # the export chose the weights
        self.graph, self.backend, self.metadata = locate(path, backend)
        meta = self.metadata
        config = TrainConfig.model_validate(meta["config"])
        classes_meta = meta["classes"]
        self._set_options(config, [c["name"] for c in classes_meta], [int(c["id"]) for c in classes_meta],
                          score_threshold, classes, max_det, mask_threshold, dense_masks, batch_size)
        self.device = torch.device("cpu")
        self.kind: str = meta["kind"]
        self.post: dict[str, Any] = meta["postprocess"]
        self.input_rules: dict[str, Any] = meta.get("input", {})
        self.decoder = make_decoder(self.post) if self.kind == "dense" else None
        self.session = open_session(self.graph, self.backend, threads)

    def _check_size(self, x: torch.Tensor) -> None:
        rules = self.input_rules
        if not rules.get("dynamic", True) and list(x.shape[-2:]) != list(rules["imgsz"]):
            h, w = rules["imgsz"]
            raise ConfigError(f"{self.graph.name} was exported for {h}x{w} images, got {x.shape[-2]}x{x.shape[-1]}: "
                              "export with --dynamic for any size")
        channels = rules.get("channels")
        if channels is not None and x.shape[0] != channels:
            raise ConfigError(f"{self.graph.name} takes {channels}-channel images, got {x.shape[0]}")

    def _inputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's image inputs (and the resized size, for graphs that take it: OpenVINO's)."""
        inputs = {"images": images}
        if SIZE_INPUT in self.metadata["inputs"]:
            rules = self.input_rules
            size = resized_size(self.kind, images.shape[-2:], rules["min_size"], rules["max_size"])
            inputs[SIZE_INPUT] = np.asarray(size, np.int64)
        return inputs

    def _predict_same_size(self, batch: list[torch.Tensor], thr: float | None) -> list[Instances]:
        self._check_size(batch[0])
        images = torch.stack(batch).float().contiguous().numpy()
        sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in batch]
        if self.kind == "rcnn":
            return self._rcnn(images, sizes, thr)
        maps = self.session.run(self._inputs(images))[0]
        assert self.decoder is not None
        out = []
        for m, size in zip(maps, sizes, strict=True):
            raw = self.decoder.from_maps(torch.from_numpy(np.ascontiguousarray(m)), size)
            decoded = self.decoder(raw, **self.post.get("params", {}))
            out.append(self._filter(to_instances(decoded, size, self.category_ids, self.mask_threshold), thr))
        return out

    def _rcnn_limits(self, thr: float | None) -> tuple[float, int]:
        """The graph's score threshold and per-image cap, as the Predictor's paths apply them."""
        model_thr, model_cap = float(self.post["score_threshold"]), int(self.post["detections_per_img"])
        if not self.post.get("fast_path", True):  # the model's own forward, then the filters
            return model_thr, model_cap
        cap = model_cap if self.max_det is None else int(self.max_det)
        return (model_thr if thr is None else float(thr)), (cap if self.classes is None else NO_CAP)

    def _rcnn(self, images: np.ndarray, sizes: list[tuple[int, int]], thr: float | None) -> list[Instances]:
        graph_thr, cap = self._rcnn_limits(thr)
        boxes, scores, labels, masks, index = self.session.run({
            **self._inputs(images), "score_threshold": np.asarray(graph_thr, np.float32),
            "max_detections": np.asarray(cap, np.int64)})
        out = []
        for i, size in enumerate(sizes):
            sel = index == i
            det = Detections.from_mask_probs(torch.from_numpy(boxes[sel]), torch.from_numpy(labels[sel]),
                                             torch.from_numpy(scores[sel]), torch.from_numpy(masks[sel]), size)
            out.append(self._to_instances(det, thr))
        return out
