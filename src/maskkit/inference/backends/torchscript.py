"""TorchScript session of an exported ``model.torchscript`` (a traced graph: no maskkit model code needed)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from maskkit.errors import DataError

INPUT_ORDER = ("images", "score_threshold", "max_detections", "resized_size")


class TorchScriptSession:
    """``run(inputs) -> outputs`` with ``torch.jit.load`` (CPU; ``threads`` torch threads)."""

    def __init__(self, graph: Path, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still supported
                self.module = torch.jit.load(str(graph), map_location="cpu").eval()
        except RuntimeError as exc:
            raise DataError(f"not a TorchScript file ({str(exc).splitlines()[0][:160]})", file=graph) from None

    @torch.inference_mode()
    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = [torch.from_numpy(np.asarray(inputs[k])) for k in INPUT_ORDER if k in inputs]
        out = self.module(*args)
        out = (out,) if isinstance(out, torch.Tensor) else out
        return [o.numpy() for o in out]
