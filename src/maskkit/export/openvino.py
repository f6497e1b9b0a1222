"""OpenVINO export: the ONNX graph converted by ``openvino.convert_model`` and saved as IR (``model.xml`` +
``model.bin``, float32 weights). The graph takes the resized size as an input (``resized_size``, computed by
the runtime with the eager rule): OpenVINO computes float64 in float32, so the in-graph rule of
:func:`maskkit.export.graphs.exact_size` would resize some image sizes 1 px differently."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from maskkit.export.onnx import export_onnx
from maskkit.inference.backends.artefact import missing_extra


def export_openvino(graph: nn.Module, kind: str, example: tuple[torch.Tensor, ...], path: Path, dynamic: bool,
                    opset: int | None = None) -> None:
    """Write ``graph`` as OpenVINO IR to ``path`` (``.xml``; the ``.bin`` beside it)."""
    try:
        import openvino as ov
    except ImportError:
        raise missing_extra("openvino", "openvino") from None
    with tempfile.TemporaryDirectory(prefix="maskkit-ov-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(graph, kind, example, onnx_path, dynamic, opset)
        model = ov.convert_model(str(onnx_path))
        ov.save_model(model, str(path), compress_to_fp16=False)
