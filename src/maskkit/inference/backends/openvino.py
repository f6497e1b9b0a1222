"""OpenVINO session of an exported ``model.xml`` (CPU, float32 precision: no silent bf16/f16 on CPUs that have it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskkit.inference.backends.artefact import missing_extra


class OpenVinoSession:
    """``run(inputs) -> outputs`` with an OpenVINO compiled model (``threads`` inference threads)."""

    def __init__(self, graph: Path, threads: int | None = None) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise missing_extra("openvino", "openvino") from None
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        self.model = core.compile_model(core.read_model(str(graph)), "CPU", config)
        self.ports = [set(port.get_names()) for port in self.model.inputs]
        self.inputs = set().union(*self.ports)
        self.request = self.model.create_infer_request()

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [sorted(names)[0] for names in self.ports if not names & set(inputs)]
        if missing:  # OpenVINO would read uninitialised memory
            raise ValueError(f"graph input(s) {missing} missing")
        result = self.request.infer({k: v for k, v in inputs.items() if k in self.inputs})
        return [np.array(result[port]) for port in self.model.outputs]
