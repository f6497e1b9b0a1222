"""Draw instances on images: coloured masks, contours, boxes and ``class score`` labels (OpenCV).

:func:`draw_instances` draws one image; :func:`overlay_grid` tiles captioned panels into one
picture (e.g. ground truth beside prediction for a few validation images).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from maskkit.data.images import to_rgb_uint8
from maskkit.structures import Instances

# Distinct, saturated colours (RGB): one per class, in category order.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0),
)


def class_colour(index: int) -> tuple[int, int, int]:
    """The palette colour of the ``index``-th class (cycles)."""
    return PALETTE[index % len(PALETTE)]


def _text(canvas: np.ndarray, text: str, x: int, y: int, colour: tuple[int, ...], scale: float,
          taken: list[tuple[int, int, int, int]]) -> None:
    """``text`` on a filled box of ``colour`` near (x, y), inside the canvas, moved down past the boxes in ``taken``."""
    import cv2

    font, thick = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    h, w = canvas.shape[:2]
    x = int(min(max(x, 0), max(w - tw - 4, 0)))
    y = int(min(max(y, 0), max(h - th - base - 4, 0)))
    for _ in range(len(taken)):
        hit = [t for t in taken if x < t[2] and t[0] < x + tw + 4 and y < t[3] and t[1] < y + th + base + 4]
        if not hit:
            break
        y = int(min(max(t[3] for t in hit) + 1, max(h - th - base - 4, 0)))
    taken.append((x, y, x + tw + 4, y + th + base + 4))
    cv2.rectangle(canvas, (x, y), (x + tw + 4, y + th + base + 4), colour, -1)
    dark = sum(colour) > 400
    cv2.putText(canvas, text, (x + 2, y + th + 2), font, scale, (0, 0, 0) if dark else (255, 255, 255), thick,
                cv2.LINE_AA)


def draw_instances(
    image: np.ndarray,
    instances: Instances,
    class_names: Mapping[int, str] | None = None,
    colours: Mapping[int, tuple[int, int, int]] | None = None,
    scale: float | None = None,
    alpha: float = 0.45,
    show_boxes: bool = False,
) -> np.ndarray:
    """An RGB uint8 copy of ``image`` with ``instances`` drawn on it.

    ``class_names``/``colours`` map labels (category ids) to names/RGB colours (default: the id and a
    palette colour by id). ``scale`` enlarges the canvas (default: so that the short side is at least
    320 px, keeping labels readable on small images); masks, contours and boxes are drawn at that scale.
    A ``scores`` field adds the score to each label.
    """
    import cv2

    rgb = to_rgb_uint8(np.asarray(image))
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    h, w = rgb.shape[:2]
    if scale is None:
        scale = max(1.0, 320.0 / max(min(h, w), 1))
    size = (round(w * scale), round(h * scale))
    canvas = cv2.resize(rgb, size, interpolation=cv2.INTER_NEAREST if scale >= 2 else cv2.INTER_LINEAR)
    canvas = np.ascontiguousarray(canvas)
    n = len(instances)
    labels = np.asarray(instances.labels if instances.has("labels") else np.zeros(n), dtype=np.int64)
    scores = np.asarray(instances.scores, dtype=float) if instances.has("scores") else None
    masks = instances.masks if instances.has("masks") else None
    boxes = np.asarray(instances.boxes, dtype=float).reshape(-1, 4) if instances.has("boxes") else None
    order = np.argsort(scores, kind="stable") if scores is not None else np.arange(n)  # best drawn last (on top)
    font_scale = 0.45 if min(size) < 500 else 0.6
    labels_at: list[tuple[str, int, int, tuple[int, ...]]] = []
    for i in order:
        label = int(labels[i])
        colour = tuple(int(c) for c in (colours or {}).get(label, class_colour(label)))
        anchor = None
        if masks is not None:
            bitmap = cv2.resize(masks.bitmap(int(i)).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
            on = bitmap.astype(bool)
            if on.any():
                canvas[on] = ((1 - alpha) * canvas[on] + alpha * np.asarray(colour)).astype(np.uint8)
                contours, _ = cv2.findContours(bitmap, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(canvas, contours, -1, (255, 255, 255), 3, cv2.LINE_AA)
                cv2.drawContours(canvas, contours, -1, colour, 1, cv2.LINE_AA)
                ys, xs = np.nonzero(on)
                anchor = (int(xs.min()), int(ys.min()))
        if boxes is not None and (show_boxes or anchor is None):
            x0, y0, x1, y1 = (boxes[i] * scale).round().astype(int)
            cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, 1, cv2.LINE_AA)
            anchor = anchor or (int(x0), int(y0))
        if anchor is None:
            continue
        name = (class_names or {}).get(label, str(label))
        text = f"{name} {scores[i]:.2f}" if scores is not None else name
        labels_at.append((text, anchor[0], anchor[1] - 14, colour))
    taken: list[tuple[int, int, int, int]] = []
    for text, x, y, colour in reversed(labels_at):  # labels above every mask, best first
        _text(canvas, text, x, y, colour, font_scale, taken)
    return canvas


def caption(panel: np.ndarray, text: str, height: int = 26) -> np.ndarray:
    """``panel`` with a white caption strip of ``text`` above it."""
    import cv2

    strip = np.full((height, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (6, height - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
    return np.vstack([strip, panel])


def overlay_grid(panels: Sequence[np.ndarray], cols: int = 4, gap: int = 6) -> np.ndarray:
    """Tile RGB ``panels`` (any sizes) row by row on a white canvas, ``cols`` per row."""
    if not panels:
        raise ValueError("overlay_grid needs at least one panel")
    cols = max(1, min(cols, len(panels)))
    rows = -(-len(panels) // cols)
    ch = max(p.shape[0] for p in panels)
    cw = max(p.shape[1] for p in panels)
    grid = np.full((rows * ch + (rows + 1) * gap, cols * cw + (cols + 1) * gap, 3), 255, np.uint8)
    for k, panel in enumerate(panels):
        r, c = divmod(k, cols)
        y, x = gap + r * (ch + gap), gap + c * (cw + gap)
        grid[y : y + panel.shape[0], x : x + panel.shape[1]] = panel
    return grid
