"""``maskkit export``: a checkpoint or run folder as an ONNX, TorchScript or OpenVINO artefact (graph + metadata.json).

Run it with ``maskkit predict --model DIR/model.onnx``, ``maskkit eval --model ...`` or ``maskkit.load(...)``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from maskkit.errors import DataError


def command(
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint (.pt) or run folder (best.pt, else last.pt)."),
    format: str = typer.Option(..., "--format", "-f", help="onnx, torchscript or openvino."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (graph + metadata.json)."),
    imgsz: str | None = typer.Option(None, "--imgsz", help="Input size H or H,W (default: the model's inference "
                                     "size); without --dynamic the only size the graph takes."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Any image height and width (the batch size is always "
                                 "dynamic)."),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (onnx, openvino; default 17)."),
) -> None:
    """Export a trained model for ONNX Runtime, OpenVINO or TorchScript (self-describing folder)."""
    if not model.exists():
        raise DataError("checkpoint not found", file=model)
    from maskkit.export.api import export_model, parse_imgsz  # deferred: torch

    graph = export_model(model, format, out, imgsz=parse_imgsz(imgsz), dynamic=dynamic, opset=opset)
    typer.echo(f"exported {graph} (+ {graph.parent / 'metadata.json'})")
