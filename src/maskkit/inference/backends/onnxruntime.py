"""ONNX Runtime session of an exported ``model.onnx`` (CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskkit.inference.backends.artefact import missing_extra


class OrtSession:
    """``run(inputs) -> outputs`` with ``onnxruntime.InferenceSession`` (``threads`` intra-op threads)."""

    def __init__(self, graph: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_extra("onnxruntime", "onnx") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3  # warnings about unused initialisers etc. are noise here
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {k: v for k, v in inputs.items() if k in self.inputs})
