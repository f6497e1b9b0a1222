"""``metadata.json`` of an export: classes, preprocessing, input rules, post-processing thresholds, the training
config, versions, export options and the weights' sha256 (what a runtime needs besides the graph)."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from maskkit import __version__
from maskkit.inference.backends.artefact import graph_inputs, graph_outputs
from maskkit.inference.predictor import is_torchvision_rcnn
from maskkit.models.decoders import decoder_spec
from maskkit.models.factory import LoadedModel
from maskkit.models.registry import model_info


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the state dict (names and raw tensor bytes, in key order): the exact weights exported."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def postprocess_spec(model: Any, kind: str) -> dict[str, Any]:
    """The thresholds and decoder the Python post-processing needs (see ``RuntimePredictor``)."""
    if kind == "rcnn":
        rh = model.roi_heads
        return {"score_threshold": float(rh.score_thresh), "detections_per_img": int(rh.detections_per_img),
                "nms_threshold": float(rh.nms_thresh), "mask_resolution": 2 * int(rh.mask_roi_pool.output_size[0]),
                "fast_path": is_torchvision_rcnn(model)}
    # dense: the decoder's name and values, and the (tuned) thresholds of the bottom-up models
    return {**decoder_spec(model.decoder), "params": dict(getattr(model, "thresholds", {}))}


def build_metadata(loaded: LoadedModel, graph: Any, kind: str, fmt: str, graph_file: str,
                   imgsz: tuple[int, int], dynamic: bool, opset: int | None) -> dict[str, Any]:
    """The metadata dict of one export."""
    cfg = loaded.config
    info = model_info(cfg.model.name)
    model: Any = loaded.model  # torchvision / dense model (no type information on its parts)
    min_size, max_size = (None if v is None else int(v) for v in (graph.min_size, graph.max_size))  # the graph's
    if kind == "rcnn":
        t = model.transform
        mean, std, divisor = list(t.image_mean), list(t.image_std), int(t.size_divisible)
        resize = "shorter side to min_size, longer capped at max_size (torchvision), padded to size_divisor"
    else:
        mean, std, divisor = model.input.mean.view(-1).tolist(), model.input.std.view(-1).tolist(), model.input.stride
        resize = "shorter side to min_size, longer capped at max_size, padded to size_divisor, maps resized back"
    channels = len(mean)
    return {
        "format": fmt,
        "graph": graph_file,
        "kind": kind,
        "model": cfg.model.name,
        "family": info.family,
        "task": info.task,
        "classes": [{"id": int(c), "name": n} for c, n in zip(loaded.category_ids, loaded.class_names, strict=True)],
        "inputs": list(graph_inputs(kind, graph.size_input)),
        "outputs": list(graph_outputs(kind)),
        "preprocessing": {
            "image": "B x C x H x W float32 in [0, 1], RGB order as read by maskkit (one size per batch)",
            "channels": cfg.augment.channels, "normalise": cfg.augment.normalise, "fixed_max": cfg.augment.fixed_max,
            "appearance": cfg.augment.appearance,
            "in_graph": {"mean": mean, "std": std},
        },
        "input": {"channels": channels, "batch": "dynamic", "dynamic": bool(dynamic), "imgsz": list(imgsz),
                  "min_size": min_size, "max_size": max_size, "size_divisor": divisor, "resize": resize},
        "postprocess": postprocess_spec(model, kind),
        "config": cfg.model_dump(mode="json"),
        "maskkit_version": __version__,
        "export": {"format": fmt, "imgsz": list(imgsz), "dynamic": bool(dynamic), "opset": opset,
                   "torch": torch.__version__},
        "weights_sha256": weights_sha256(model),
    }
