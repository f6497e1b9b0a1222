"""``maskkit explain``: saliency maps per predicted instance (or per class) and feature maps per level, as pictures.

Writes ``--out/<image key>/``: an overlay PNG per map (the instance outlined), a grid PNG per feature level,
``contact_sheet.png`` and ``explanation.json`` (see :mod:`maskkit.explanations.render`). Needs ``maskkit[explain]``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from maskkit.errors import ConfigError, DataError


def command(
    images: list[str] = typer.Argument(..., help="Images, folders (searched recursively) or quoted globs."),
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint (.pt) or run folder (best.pt, else last.pt)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (one sub-folder per image)."),
    instances: str = typer.Option("all", "--instances", help="'all' (the best --max-instances) or indices, "
                                  "comma-separated (0 = best score)."),
    method: str = typer.Option("hirescam", "--method", help="hirescam, gradcam, gradcam++, gradcam-elementwise, "
                               "xgradcam, layercam, eigencam, eigengradcam (grad-cam); saliency, input-x-gradient, "
                               "integrated-gradients (captum). gradcam lights up every object of the class."),
    layers: str | None = typer.Option(None, "--layers", help="CAM layers, comma-separated (default: FPN levels "
                                      "fpn0-fpn3, or the two deepest encoder stages of a dense model)."),
    conf: float = typer.Option(0.5, "--conf", help="Explain predictions scoring at least this."),
    max_instances: int = typer.Option(16, "--max-instances", help="With --instances all: at most this many."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N, auto."),
) -> None:
    """Explain a model's predictions: saliency per instance/class, feature maps, contact sheets."""
    from maskkit.cli.predict import _load_predictor  # deferred: torch
    from maskkit.explanations.api import Explainer, parse_instances
    from maskkit.explanations.methods import check_method, require_libraries
    from maskkit.explanations.render import write_explanation
    from maskkit.inference.backends.artefact import is_exported
    from maskkit.inference.sources import collect_sources

    if not 0.0 <= conf <= 1.0:
        raise ConfigError(f"--conf must be between 0 and 1, got {conf}")
    if max_instances < 1:
        raise ConfigError(f"--max-instances must be >= 1, got {max_instances}")
    name = check_method(method)
    require_libraries(name)
    parse_instances(instances)
    if model.exists() and is_exported(model):
        raise DataError("explain needs a checkpoint or run folder (PyTorch), not an exported model", file=model)
    items = [it for it in collect_sources(images, exclude=out) if it.kind == "image"]
    if not items:
        raise DataError("no image among the arguments (videos are not explained)")
    predictor = _load_predictor(model, device, conf, dense_masks=True, optimize="exact")
    explainer = Explainer(predictor, name, [s.strip() for s in layers.split(",") if s.strip()] if layers else None,
                          conf)
    class_names = dict(zip(predictor.category_ids, predictor.class_names, strict=True))
    maps = 0
    for it in items:
        explanation = explainer.explain(it.path, instances, max_instances)
        summary = write_explanation(explanation, out / it.key, class_names, source=str(it.path))
        maps += len(summary["maps"])
        for note in summary["notes"]:
            typer.secho(f"note: {it.key}: {note}", fg=typer.colors.YELLOW, err=True)
        typer.echo(f"{it.key}: {summary['instances']} instances, {len(summary['maps'])} maps -> "
                   f"{out / it.key / 'contact_sheet.png'}")
    typer.echo(f"{len(items)} images, {maps} maps ({name}) in {out}")
