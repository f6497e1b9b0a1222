"""Per-image prediction outputs of ``maskkit predict``, each written atomically.

For an image with key ``K`` (see :mod:`maskkit.inference.sources`) in output folder ``OUT``:

* ``OUT/overlays/K.jpg`` – the image with coloured masks, contours, class names and scores
  (downscaled to 4096 px for larger images);
* ``OUT/results/K.json`` – the image's detections (COCO results entries without ``image_id``,
  plus the image's path and size); ``OUT/predictions.json`` is assembled from these at the end
  of a run, so an interrupted run loses nothing and a rerun only predicts what is missing;
* ``OUT/labels/K.png`` – instance-label image, 16-bit (``OUT/labels/K.tif``, 32-bit, above
  65535 instances or for images above 64 Mpx); value ``i + 1`` is detection ``i`` of
  ``results/K.json`` (best score first, higher scores painted on top of overlapping lower ones),
  0 is background;
* ``OUT/labelme/K.json`` – LabelMe 5 JSON for pre-annotation: one polygon per mask part (holes
  are dropped, LabelMe cannot hold them; parts of one object share a ``group_id``), simplified to
  ``tolerance`` px, the score in each shape's ``description``, ``imagePath`` relative to the JSON;
  ``OUT/labelme/labels.txt`` lists the classes so the ids read back are the model's order.

:func:`assemble_predictions` writes ``OUT/predictions.json`` (COCO results, scorable with
``maskkit eval --gt DATASET --pred OUT/predictions.json``) and ``OUT/images.json`` (a COCO file
with the images, their ids and the categories, no annotations).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskkit.data.formats.labelme import VERSION
from maskkit.data.formats.polygonize import mask_to_polygons
from maskkit.data.images import read_image
from maskkit.errors import ConfigError, DataError
from maskkit.fileio import atomic_write_bytes, atomic_write_json, atomic_write_png, atomic_write_text
from maskkit.inference.tiling import write_label_image as write_tiff
from maskkit.inference.visualize import draw_instances
from maskkit.structures import Instances, Masks
from maskkit.structures.results import instances_to_results

SETTINGS_FILE = "predict_settings.json"
PNG_MAX_INSTANCES = 65535
"""More instances than this: the label image is a 32-bit TIFF instead of a 16-bit PNG."""
PNG_MAX_PIXELS = 1 << 26
"""Larger images (64 Mpx) get a label TIFF written band by band (bounded memory)."""
OVERLAY_MAX_SIDE = 4096
"""Overlays of larger images are drawn downscaled to this long side."""


@dataclass(frozen=True)
class OutputOptions:
    """Which per-image outputs to write (defaults: overlays and the COCO results)."""

    overlays: bool = True
    json: bool = True
    labels: bool = False
    labelme: bool = False

    def any(self) -> bool:
        return self.overlays or self.json or self.labels or self.labelme


def output_paths(out: Path, key: str, options: OutputOptions) -> dict[str, Path]:
    """The selected outputs of image ``key`` (``labels``: the PNG path; a TIFF beside it also counts)."""
    paths = {"overlays": out / "overlays" / f"{key}.jpg", "json": out / "results" / f"{key}.json",
             "labels": out / "labels" / f"{key}.png", "labelme": out / "labelme" / f"{key}.json"}
    return {name: p for name, p in paths.items() if getattr(options, name)}


def outputs_done(out: Path, key: str, options: OutputOptions) -> bool:
    """Whether every selected output of image ``key`` exists (a rerun then skips the image)."""
    for name, p in output_paths(out, key, options).items():
        if not (p.is_file() or (name == "labels" and p.with_suffix(".tif").is_file())):
            return False
    return True


def check_settings(out: Path, settings: Mapping[str, Any], overwrite: bool) -> None:
    """Refuse to mix outputs of different settings in one folder (unless ``overwrite``); record them.

    Skipping finished images is only right when they were predicted the same way, so the
    settings that change predictions are kept in ``OUT/predict_settings.json``.
    """
    path = out / SETTINGS_FILE
    current = json.loads(json.dumps(dict(settings)))
    if path.is_file() and not overwrite:
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if isinstance(previous, dict) and previous != current:
            changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
            raise ConfigError(f"{out} holds predictions made with other settings ({', '.join(changed)} changed): "
                              "pass --overwrite to redo them, or choose another --out")
    atomic_write_json(path, current, indent=1)


# -- single outputs ------------------------------------------------------------------------------------
def overlay_jpeg(image: np.ndarray, instances: Instances, class_names: Mapping[int, str], quality: int = 90) -> bytes:
    """JPEG bytes of ``image`` with ``instances`` drawn (:func:`~maskkit.inference.visualize.draw_instances`).

    Images longer than :data:`OVERLAY_MAX_SIDE` are drawn downscaled to it.
    """
    import cv2

    long_side = max(image.shape[:2])
    scale = OVERLAY_MAX_SIDE / long_side if long_side > OVERLAY_MAX_SIDE else None
    canvas = draw_instances(image, instances, class_names=class_names, scale=scale)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError("cannot encode the overlay as JPEG")
    return bytes(buf.tobytes())


def write_overlay(path: Path, image: np.ndarray, instances: Instances, class_names: Mapping[int, str],
                  quality: int = 90) -> None:
    """The overlay JPEG (:func:`overlay_jpeg`) at ``path``."""
    atomic_write_bytes(path, overlay_jpeg(image, instances, class_names, quality), fsync=False)


def write_result(path: Path, source: Path, key: str, instances: Instances) -> None:
    """``results/K.json``: the image's path, size and detections (COCO results entries without ``image_id``)."""
    dets = instances_to_results(0, instances)
    for d in dets:
        del d["image_id"]
    h, w = instances.image_size
    atomic_write_json(path, {"file": str(source), "key": key, "height": h, "width": w, "detections": dets})


def write_label_image(path: Path, instances: Instances) -> Path:
    """Instance-label image of ``instances`` (value ``i + 1`` = instance ``i``; higher scores painted on top).

    A 16-bit PNG at ``path``; a TIFF beside it (``uint32`` above 65535 instances, written band by band
    by :func:`maskkit.inference.tiling.write_label_image`) for more than :data:`PNG_MAX_INSTANCES`
    instances or more than :data:`PNG_MAX_PIXELS` pixels. Returns the file written.
    """
    n = len(instances)
    h, w = instances.image_size
    png, tif = path.with_suffix(".png"), path.with_suffix(".tif")
    if n > PNG_MAX_INSTANCES or h * w > PNG_MAX_PIXELS:
        write_tiff(instances, tif)
        png.unlink(missing_ok=True)
        return tif
    scores = np.asarray(instances.get("scores", np.zeros(n)), dtype=np.float64)
    order = np.lexsort((-np.arange(n), scores)).tolist()  # low scores first: the best is painted last, on top
    label = instances.masks.label_image(order) if n else np.zeros((h, w), np.int32)
    atomic_write_png(png, label.astype(np.uint16), fsync=False)
    tif.unlink(missing_ok=True)
    return png


def mask_polygons(bitmap: np.ndarray, tolerance: float = 1.0) -> list[np.ndarray]:
    """Outer boundaries of a mask as ``(K, 2)`` x, y polygons (holes dropped), simplified to ``tolerance`` px."""
    import cv2

    out = []
    for ring in mask_to_polygons(bitmap, holes=False):
        if tolerance > 0:
            simple = cv2.approxPolyDP(ring.astype(np.float32).reshape(-1, 1, 2), tolerance, True).reshape(-1, 2)
            ring = simple.astype(np.float64) if len(simple) >= 3 else ring
        out.append(ring)
    return out


def labelme_document(instances: Instances, class_names: Mapping[int, str], image_path: str,
                     tolerance: float = 1.0) -> dict[str, Any]:
    """A LabelMe 5 JSON document of predicted ``instances`` (see the module docstring)."""
    n = len(instances)
    scores = np.asarray(instances.get("scores", np.ones(n)), dtype=np.float64)
    shapes = []
    for i in range(n):
        label = int(instances.labels[i])
        rings = mask_polygons(instances.masks.bitmap(i), tolerance)
        gid = i + 1 if len(rings) > 1 else None
        shapes += [{"label": class_names.get(label, str(label)), "points": ring.tolist(), "group_id": gid,
                    "description": f"score={scores[i]:.3f}", "shape_type": "polygon", "flags": {}, "mask": None}
                   for ring in rings]
    h, w = instances.image_size
    return {"version": VERSION, "flags": {}, "shapes": shapes, "imagePath": image_path, "imageData": None,
            "imageHeight": h, "imageWidth": w}


def write_labelme(path: Path, image: Path, instances: Instances, class_names: Mapping[int, str],
                  tolerance: float = 1.0) -> None:
    """``labelme/K.json`` with ``imagePath`` relative to the JSON's folder."""
    rel = Path(os.path.relpath(Path(image).resolve(), path.parent.resolve())).as_posix()
    atomic_write_json(path, labelme_document(instances, class_names, rel, tolerance), indent=2)


def write_labelme_labels(folder: Path, class_names: Sequence[str]) -> None:
    """``labels.txt`` as LabelMe's tools expect it (``__ignore__``, ``_background_``, then the classes)."""
    atomic_write_text(folder / "labels.txt", "\n".join(["__ignore__", "_background_", *class_names]) + "\n")


def with_bitmaps(instances: Instances) -> Instances:
    """A copy of ``instances`` whose RLE masks are decoded to bitmaps once (for several bitmap consumers)."""
    masks = instances.get("masks")
    if not isinstance(masks, Masks):
        return instances
    out = instances[np.arange(len(instances))]
    out.masks = masks.decoded()
    return out


class ImageWriter:
    """Write the selected outputs of each predicted image into ``out`` (see the module docstring)."""

    def __init__(self, out: str | Path, class_names: Mapping[int, str], options: OutputOptions | None = None,
                 labelme_tolerance: float = 1.0) -> None:
        self.out = Path(out)
        self.class_names = dict(class_names)
        self.options = options or OutputOptions()
        self.labelme_tolerance = labelme_tolerance
        if self.options.labelme:
            write_labelme_labels(self.out / "labelme", list(self.class_names.values()))

    def done(self, key: str) -> bool:
        return outputs_done(self.out, key, self.options)

    def write(self, key: str, source: Path, image: np.ndarray | None, instances: Instances,
              overlay: bytes | None = None) -> list[Path]:
        """Write every selected output of one image; ``instances`` best score first. Returns the files.

        ``image`` may be ``None`` (a tiled prediction from the file): it is read only for the overlay.
        ``overlay``: the overlay already drawn (:func:`overlay_jpeg`, e.g. by a Ray worker), written as it is.
        """
        paths = output_paths(self.out, key, self.options)
        if "overlays" in paths:
            if overlay is None:
                if "labelme" in paths:  # both draw every mask as a bitmap: decode them once
                    instances = with_bitmaps(instances)
                if image is None:
                    image = read_image(source)
                overlay = overlay_jpeg(image, instances, self.class_names)
            atomic_write_bytes(paths["overlays"], overlay, fsync=False)
        if "labels" in paths:
            paths["labels"] = write_label_image(paths["labels"], instances)
        if "labelme" in paths:
            write_labelme(paths["labelme"], source, instances, self.class_names, self.labelme_tolerance)
        if "json" in paths:  # last: it marks the image as done for predictions.json
            write_result(paths["json"], source, key, instances)
        return list(paths.values())


def assemble_predictions(out: str | Path, keys: Sequence[str], image_ids: Mapping[str, int],
                         categories: Sequence[Mapping[str, Any]],
                         category_map: Mapping[int, int] | None = None) -> dict[str, Any]:
    """Write ``OUT/predictions.json`` and ``OUT/images.json`` from ``OUT/results/<key>.json``.

    ``keys`` are this run's images; those without an id in ``image_ids`` are left out.
    ``category_map`` maps the model's category ids to the dataset's. ``categories`` are
    ``{"id", "name"}`` dicts for ``images.json``. Returns counts.
    """
    out = Path(out)
    results: list[dict[str, Any]] = []
    images = []
    missing = 0
    for key in sorted(keys, key=lambda k: (image_ids.get(k, 0), k)):
        if key not in image_ids:
            continue
        path = out / "results" / f"{key}.json"
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            missing += 1
            continue
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the per-image results ({exc}); rerun with --overwrite", file=path) from None
        image_id = int(image_ids[key])
        rel = Path(os.path.relpath(doc["file"], out.resolve())).as_posix()
        images.append({"id": image_id, "file_name": rel, "height": doc["height"], "width": doc["width"]})
        for det in doc["detections"]:
            cid = int(det["category_id"])
            results.append({"image_id": image_id, **det,
                            "category_id": int((category_map or {}).get(cid, cid))})
    atomic_write_json(out / "predictions.json", results)
    atomic_write_json(out / "images.json", {"images": images, "annotations": [],
                                            "categories": [dict(c) for c in categories]}, indent=1)
    return {"images": len(images), "detections": len(results), "missing": missing,
            "left_out": sum(1 for k in keys if k not in image_ids)}
