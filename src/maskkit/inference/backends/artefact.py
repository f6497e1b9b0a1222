"""The exported artefact: a folder with the graph (``model.onnx``, ``model.xml`` + ``model.bin`` or
``model.torchscript``) and ``metadata.json``, and the graph's fixed input/output contract.

Graph contract (all backends; ``B x C x H x W`` float32 images in ``[0, 1]`` of one size):

* ``rcnn`` (Mask R-CNN variants, Panoptic FPN's detector): inputs ``images``, ``score_threshold`` (float32
  scalar), ``max_detections`` (int64 scalar, per image); outputs ``boxes`` (``N x 4`` XYXY at the input size),
  ``scores``, ``labels`` (1..K), ``masks`` (``N x M x M`` probabilities of each row's class, pasted in Python)
  and ``batch_index`` (the image of each row).
* ``dense`` (semantic, bottom-up): input ``images``; output ``maps`` (``B x M x H x W``: the model decoder's
  activated maps at the input size), post-processed in Python by the model's own decoder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from maskkit.errors import ConfigError, DataError

METADATA_FILE = "metadata.json"
GRAPH_FILES: dict[str, str] = {"onnx": "model.onnx", "openvino": "model.xml", "torchscript": "model.torchscript"}
"""Graph file of each export format."""
BACKENDS: dict[str, str] = {"onnxruntime": "onnx", "openvino": "openvino", "torchscript": "torchscript"}
"""Runtime backend -> the export format it runs."""
DEFAULT_BACKEND: dict[str, str] = {"onnx": "onnxruntime", "openvino": "openvino", "torchscript": "torchscript"}
SUFFIX_FORMAT = {".onnx": "onnx", ".xml": "openvino", ".torchscript": "torchscript"}
RCNN_INPUTS = ("images", "score_threshold", "max_detections")
RCNN_OUTPUTS = ("boxes", "scores", "labels", "masks", "batch_index")
DENSE_INPUTS = ("images",)
DENSE_OUTPUTS = ("maps",)
SIZE_INPUT = "resized_size"
"""Extra last input of OpenVINO graphs: the int64 ``(h, w)`` the images are resized to (:func:`resized_size`)."""


def graph_inputs(kind: str, size_input: bool = False) -> tuple[str, ...]:
    return (RCNN_INPUTS if kind == "rcnn" else DENSE_INPUTS) + ((SIZE_INPUT,) if size_input else ())


def graph_outputs(kind: str) -> tuple[str, ...]:
    return RCNN_OUTPUTS if kind == "rcnn" else DENSE_OUTPUTS


def resized_size(kind: str, size: tuple[int, int], min_size: float | None, max_size: float | None) -> list[int]:
    """The size a graph resizes ``(h, w)`` images to: torchvision's eval rule (``rcnn``) or
    :func:`maskkit.models.encoders.resized_size` (``dense``)."""
    h, w = size
    if kind == "rcnn":
        assert min_size is not None and max_size is not None
        scale = min(float(min_size) / min(h, w), float(max_size) / max(h, w))  # torchvision's eager arithmetic
        return [math.floor(h * scale), math.floor(w * scale)]
    from maskkit.models.encoders import resized_size as dense_size  # deferred: torch (this module is torch-free)

    return list(dense_size(h, w, None if min_size is None else int(min_size),
                           None if max_size is None else int(max_size)))


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` is an export folder or one of its graph files (else: a checkpoint or run folder)."""
    path = Path(path)
    if path.is_dir():
        return (path / METADATA_FILE).is_file()
    return path.suffix in SUFFIX_FORMAT


def locate(path: str | Path, backend: str | None = None) -> tuple[Path, str, dict[str, Any]]:
    """``(graph file, backend, metadata)`` of an export folder or graph file, for ``backend`` (None: the
    graph's own runtime: ONNX Runtime for ``model.onnx``, OpenVINO for ``model.xml``...)."""
    path = Path(path)
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    folder = path if path.is_dir() else path.parent
    if not path.exists():
        raise DataError("exported model not found", file=path)
    meta = read_metadata(folder)
    if path.is_dir():
        formats = [f for f in GRAPH_FILES if (folder / GRAPH_FILES[f]).is_file()]
        if backend is not None:
            formats = [f for f in formats if f == BACKENDS[backend]]
        if not formats:
            raise DataError(f"no graph file ({', '.join(GRAPH_FILES.values())}) for backend {backend or 'any'}",
                            file=folder)
        graph = folder / GRAPH_FILES[formats[0]]
    else:
        graph = path
    fmt = SUFFIX_FORMAT.get(graph.suffix)
    if fmt is None:
        raise DataError(f"not an exported graph (expected {', '.join(SUFFIX_FORMAT)})", file=graph)
    chosen = backend or DEFAULT_BACKEND[fmt]
    if BACKENDS[chosen] != fmt:  # OpenVINO runs its own conversion (see maskkit.export.openvino)
        raise ConfigError(f"backend {chosen} cannot run {graph.name} ({fmt} graph)")
    return graph, chosen, meta


def read_metadata(folder: Path) -> dict[str, Any]:
    """The ``metadata.json`` beside an exported graph."""
    file = folder / METADATA_FILE
    if not file.is_file():
        raise DataError(f"{METADATA_FILE} missing beside the exported graph (export with `maskkit export`)",
                        file=folder)
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable metadata ({exc})", file=file) from None
    for key in ("kind", "classes", "config", "postprocess"):
        if key not in meta:
            raise DataError(f"metadata without {key!r}", file=file)
    if meta["kind"] not in ("rcnn", "dense"):
        raise DataError(f"unknown graph kind {meta['kind']!r}", file=file)
    return meta


def missing_extra(package: str, extra: str) -> ConfigError:
    """The one-line error of an optional runtime that is not installed."""
    return ConfigError(f"{package} is not installed: pip install maskkit[{extra}]")
