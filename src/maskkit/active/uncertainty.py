"""Per-image uncertainty of one model output, and the disagreement of several passes over the same image.

Every eval output of the model contract works: Mask R-CNN-style outputs (``scores``, ``masks`` as ``N×1×H×W``
probabilities) and dense outputs (``scores`` of the decoded instances, ``sem_seg`` as ``(K+1)×H×W`` class
probabilities). All values are in ``[0, 1]``, higher meaning more uncertain:

* ``score_entropy``: mean binary entropy (bits) of the instance scores (0 without instances);
* ``mask_entropy``: mean per-pixel entropy of the mask probabilities, inside each instance's box (Mask
  R-CNN), or of the class probabilities over the image, normalised by ``log(K+1)`` (dense models);
* ``entropy``: the mean of those two;
* ``margin``: one minus the mean margin, where the margin of a score or pixel is the gap between its best
  and second-best class probability (``|2p - 1|`` for a binary probability);
* ``mc_dropout`` (:func:`disagreement`): the mutual information (BALD) between the passes' foreground maps,
  averaged over the pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["components", "disagreement", "foreground_map"]

_EPS = 1e-6


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of Bernoulli probabilities ``p`` (elementwise, in ``[0, 1]``)."""
    p = p.clamp(_EPS, 1 - _EPS)
    return -(p * p.log2() + (1 - p) * (1 - p).log2())


def _box_crops(masks: torch.Tensor, boxes: torch.Tensor) -> list[torch.Tensor]:
    """Each instance's mask probabilities inside its (rounded, clipped, at least 1 px) box."""
    h, w = masks.shape[-2:]
    out = []
    for m, b in zip(masks.reshape(-1, h, w), boxes.reshape(-1, 4).tolist(), strict=True):
        x0, y0 = min(max(int(b[0]), 0), w - 1), min(max(int(b[1]), 0), h - 1)
        x1, y1 = max(min(int(np.ceil(b[2])), w), x0 + 1), max(min(int(np.ceil(b[3])), h), y0 + 1)
        out.append(m[y0:y1, x0:x1])
    return out


def components(output: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``score_entropy``, ``mask_entropy``, ``entropy`` and ``margin`` of one image's eval output."""
    scores = output["scores"].detach().float().cpu() if "scores" in output else torch.zeros(0)
    score_entropy = float(_binary_entropy(scores).mean()) if len(scores) else 0.0
    score_margin = float((2 * scores - 1).abs().mean()) if len(scores) else 1.0
    if "sem_seg" in output:
        probs = output["sem_seg"].detach().float().cpu()
        k = probs.shape[0]
        ent = -(probs.clamp_min(_EPS) * probs.clamp_min(_EPS).log()).sum(0) / np.log(max(k, 2))
        top2 = probs.topk(2, dim=0).values if k > 1 else torch.stack([probs[0], 1 - probs[0]])
        mask_entropy, pixel_margin = float(ent.mean()), float((top2[0] - top2[1]).mean())
    elif "masks" in output and len(output["masks"]):
        crops = _box_crops(output["masks"].detach().float().cpu(), output["boxes"].detach().float().cpu())
        mask_entropy = float(np.mean([float(_binary_entropy(c).mean()) for c in crops]))
        pixel_margin = float(np.mean([float((2 * c - 1).abs().mean()) for c in crops]))
    else:
        mask_entropy, pixel_margin = 0.0, 1.0
    return {"score_entropy": score_entropy, "mask_entropy": mask_entropy,
            "entropy": (score_entropy + mask_entropy) / 2, "margin": 1.0 - (score_margin + pixel_margin) / 2}


def foreground_map(output: Mapping[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """``H×W`` probability that a pixel belongs to some object: ``1 - sem_seg[0]`` (dense models), else the
    highest ``score × mask probability`` over the instances (zeros without instances)."""
    if "sem_seg" in output:
        return 1.0 - output["sem_seg"][0].detach().float().cpu()
    masks = output.get("masks")
    if masks is None or not len(masks):
        return torch.zeros(size)
    scores = output["scores"].detach().float().cpu()
    probs = masks.detach().float().cpu().reshape(len(masks), *masks.shape[-2:])
    return (probs * scores[:, None, None]).amax(0)


def disagreement(maps: Sequence[torch.Tensor]) -> float:
    """Mutual information (bits) between passes of per-pixel foreground probabilities, averaged over pixels:
    the entropy of the mean map minus the mean entropy of the maps (0 when every pass agrees)."""
    stack = torch.stack([m.float() for m in maps])
    return float((_binary_entropy(stack.mean(0)) - _binary_entropy(stack).mean(0)).clamp_min(0).mean())
