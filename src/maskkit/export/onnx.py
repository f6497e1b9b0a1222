"""ONNX export of a graph module (TorchScript-based ``torch.onnx.export``, ``dynamo=False``).

The dynamo exporter (``dynamo=True``) was tried on these graphs and fails: see :mod:`maskkit.export.api`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from maskkit.inference.backends.artefact import graph_inputs, graph_outputs

DEFAULT_OPSET = 17


def dynamic_axes(kind: str, dynamic: bool) -> dict[str, dict[int, str]]:
    """Batch always dynamic (one artefact serves batch 1..N); height and width with ``dynamic``."""
    image = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    if kind == "rcnn":
        return {"images": image, **{name: {0: "detections"} for name in graph_outputs(kind)}}
    return {"images": image, "maps": dict(image)}


def export_onnx(graph: nn.Module, kind: str, example: tuple[torch.Tensor, ...], path: Path, dynamic: bool,
                opset: int | None = None) -> None:
    """Write ``graph`` (traced on ``example``) as ONNX to ``path``."""
    inputs, outputs = graph_inputs(kind, getattr(graph, "size_input", False)), graph_outputs(kind)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-derived Python values (checked by tests)
        torch.onnx.export(graph, example, str(path), input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=dynamic_axes(kind, dynamic), opset_version=opset or DEFAULT_OPSET,
                          dynamo=False, do_constant_folding=True)
