"""The dense decoders an export can name: ``metadata.json``'s ``postprocess.decoder`` -> the decoder class.

Every dense model's decoder describes itself with ``export_spec()`` (its name and constructor values; the
exporter adds the tuned thresholds as ``params``) and is rebuilt by the runtime with
:func:`decoder_from_spec`, so an exported model is post-processed by the same code as the PyTorch one.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from maskkit.errors import ConfigError

DECODERS: dict[str, str] = {
    "components": "maskkit.models.semantic:ComponentInstances",
    "watershed": "maskkit.models.bottomup:WatershedInstances",
    "stardist": "maskkit.models.stardist:StarPolygonInstances",
    "cellpose": "maskkit.models.cellpose:FlowInstances",
}
"""Decoder names of export metadata -> ``module:class`` (imported on use: smp/timm/Numba)."""


def decoder_spec(decoder: Any) -> dict[str, Any]:
    """The ``postprocess`` entry of a dense decoder (``decoder`` name and constructor values)."""
    spec = dict(decoder.export_spec())
    if spec.get("decoder") not in DECODERS:
        raise ConfigError(f"{type(decoder).__name__} names decoder {spec.get('decoder')!r}, not one of "
                          f"{sorted(DECODERS)}")
    return spec


def decoder_from_spec(spec: Mapping[str, Any]) -> Any:
    """The decoder an export's ``postprocess`` metadata names, rebuilt from its values."""
    name = spec.get("decoder")
    if name not in DECODERS:
        raise ConfigError(f"unknown decoder {name!r} in the export metadata; known: {', '.join(sorted(DECODERS))}")
    module, cls = DECODERS[str(name)].split(":")
    return getattr(importlib.import_module(module), cls).from_spec(spec)
