"""Runtime backends: exported graphs (``maskkit export``) run by ONNX Runtime, OpenVINO or TorchScript behind the
:class:`~maskkit.inference.predictor.Predictor` interface (:class:`~maskkit.inference.backends.base.RuntimePredictor`).
"""

from __future__ import annotations

from maskkit.inference.backends.artefact import BACKENDS, is_exported, locate

__all__ = ["BACKENDS", "is_exported", "locate"]
