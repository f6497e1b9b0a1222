"""``maskkit export``: a trained model as a self-describing ONNX, TorchScript or OpenVINO artefact.

:func:`maskkit.export.api.export_model` writes a folder with the graph (:mod:`maskkit.export.graphs`: the
fixed output contract of :mod:`maskkit.inference.backends.artefact`) and ``metadata.json``
(:mod:`maskkit.export.metadata`); :mod:`maskkit.inference.backends` runs it.
"""
