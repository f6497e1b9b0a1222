"""``export_model``: a checkpoint (or run folder, or loaded model) -> an export folder (graph + ``metadata.json``).

Formats: ``onnx`` (``model.onnx``, run by ONNX Runtime), ``torchscript`` (``model.torchscript``) and
``openvino`` (``model.xml`` + ``model.bin``). The batch size is always dynamic; ``dynamic=True`` also lets
the height and width vary (else the graph takes ``imgsz`` images only). ONNX uses the TorchScript-based
exporter (``dynamo=False``); the dynamo exporter (torch 2.14, ``dynamic_shapes`` on batch/height/width) fails
in ``torch.export`` on the graphs' tensor-valued shape arithmetic (``torch._shape_as_tensor`` under fake
tensors: "data is not allocated yet"), for the Mask R-CNN and the dense graphs alike.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from maskkit.engine.data import RUN_IMAGES
from maskkit.errors import ConfigError, MaskkitError
from maskkit.export.graphs import DenseGraph, RCNNGraph
from maskkit.export.metadata import build_metadata
from maskkit.export.onnx import DEFAULT_OPSET, export_onnx
from maskkit.export.openvino import export_openvino
from maskkit.export.torchscript import export_torchscript
from maskkit.fileio import atomic_write_bytes, atomic_write_json
from maskkit.inference.backends.artefact import GRAPH_FILES, METADATA_FILE, resized_size
from maskkit.models.dense import DenseSegmentationModel
from maskkit.models.factory import LoadedModel, inference_sizes, model_from_checkpoint

FORMATS = tuple(GRAPH_FILES)


def graph_module(model: nn.Module, size_input: bool = False) -> tuple[Any, str]:
    """The export wrapper of ``model`` and its kind (``rcnn``/``dense``); a ConfigError says why not."""
    name = type(model).__name__
    if isinstance(model, GeneralizedRCNN):
        rh = model.roi_heads
        if not rh.has_mask() or rh.keypoint_predictor is not None:
            raise ConfigError(f"{name} cannot be exported: only Mask R-CNN detectors (mask head, no keypoints)")
        return RCNNGraph(model, size_input).eval(), "rcnn"
    if isinstance(model, DenseSegmentationModel) and hasattr(model.decoder, "activate_maps"):
        return DenseGraph(model, size_input).eval(), "dense"
    raise ConfigError(f"{name} cannot be exported: not a Mask R-CNN, Panoptic FPN, bottom-up or semantic model")


def parse_imgsz(spec: str | int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"640"`` -> (640, 640), ``"480,640"`` -> (480, 640) (H, W)."""
    if spec is None:
        return None
    sides: list[int]
    if isinstance(spec, int):
        sides = [spec, spec]
    elif isinstance(spec, str):
        try:
            sides = [int(p) for p in spec.replace("x", ",").split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"--imgsz must be H or H,W (integers), got {spec!r}") from None
        sides = sides * 2 if len(sides) == 1 else sides
    else:
        sides = [int(v) for v in spec]
    if len(sides) != 2 or min(sides) < 16:
        raise ConfigError(f"--imgsz must be H or H,W with sides >= 16, got {spec!r}")
    return sides[0], sides[1]


def export_model(model: str | Path | LoadedModel, format: str, out: str | Path,
                 imgsz: str | int | tuple[int, int] | None = None, dynamic: bool = False,
                 opset: int | None = None, ema: bool = True) -> Path:
    """Export ``model`` (checkpoint, run folder or :class:`LoadedModel`) to the folder ``out``; returns the graph.

    Args:
        format: ``onnx``, ``torchscript`` or ``openvino``.
        imgsz: ``H`` or ``(H, W)``: the traced (and, without ``dynamic``, the only) input size; default the
            model's inference size (``min_size`` square).
        dynamic: any height and width (the batch size is always dynamic).
        opset: ONNX opset (ONNX and OpenVINO; default 17).
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose {', '.join(FORMATS)}")
    if opset is not None and not 11 <= opset <= 21:
        raise ConfigError(f"--opset must be between 11 and 21, got {opset}")
    loaded = model if isinstance(model, LoadedModel) else model_from_checkpoint(model, ema=ema)
    loaded.model.eval()
    size = parse_imgsz(imgsz) or (inference_sizes(loaded.config)[0],) * 2
    size_input = format == "openvino"  # OpenVINO computes float64 in float32: the runtime gives the resized size
    graph, kind = graph_module(loaded.model, size_input)
    channels = int(graph.mean.shape[1])
    images = torch.rand(2, channels, *size)
    example: tuple[torch.Tensor, ...] = (images, torch.tensor(0.05), torch.tensor(100)) if kind == "rcnn" else (images,)
    if size_input:
        example = (*example, torch.tensor(resized_size(kind, size, graph.min_size, graph.max_size)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    graph_file = GRAPH_FILES[format]
    meta = build_metadata(loaded, graph, kind, format, graph_file, size, dynamic,
                          None if format == "torchscript" else opset or DEFAULT_OPSET)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
        target = Path(tmp) / graph_file
        try:
            _write_graph(format, graph, kind, example, target, dynamic, opset)
        except MaskkitError:
            raise
        except Exception as exc:  # exporters raise many types: one line says why
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise ConfigError(f"{loaded.config.model.name} cannot be exported to {format}: "
                              f"{type(exc).__name__}: {first}") from None
        for file in Path(tmp).iterdir():
            os.replace(file, out / file.name)
    if not isinstance(model, LoadedModel):
        _copy_split_record(Path(model), out)
    atomic_write_json(out / METADATA_FILE, meta, indent=2)
    return out / graph_file


def _copy_split_record(model: Path, out: Path) -> None:
    """The run's record of its training and val images, beside the graph: ``maskkit eval --model`` on the export
    then scores only held-out images, as it does for the checkpoint."""
    record = (model if model.is_dir() else model.parent) / RUN_IMAGES
    if record.is_file():
        atomic_write_bytes(out / RUN_IMAGES, record.read_bytes())


def _write_graph(format: str, graph: nn.Module, kind: str, example: tuple[torch.Tensor, ...], target: Path,
                 dynamic: bool, opset: int | None) -> None:
    if format == "onnx":
        export_onnx(graph, kind, example, target, dynamic, opset)
    elif format == "torchscript":
        export_torchscript(graph, example, target)
    else:
        export_openvino(graph, kind, example, target, dynamic, opset)


__all__ = ["FORMATS", "export_model", "graph_module", "parse_imgsz"]
