"""Per-pixel segmentation losses on logits, and :class:`SegLoss`, a weighted combination of them.

Conventions: ``logits`` are B x C x H x W; ``target`` is B x H x W int64 class indices with
``ignore_index`` marking pixels that do not count. C == 1 means a binary problem (sigmoid on the
single channel, target 0/1); otherwise softmax over C classes. Every loss is a mean over the
pixels that count and is exactly 0 (with a zero, finite gradient) when no pixel counts.

The boundary term is a *boundary-band cross-entropy*: the cross-entropy averaged over the ground-truth
pixels lying within ``radius`` pixels of a label change. Errors of a well-trained segmenter concentrate
on object outlines, which dominate mask AP at high IoU and Boundary IoU, yet they are a small fraction of
all pixels, so a plain pixel mean underweights them. Chosen over Kervadec et al.'s distance-map boundary
loss because it needs no per-image distance transforms (two max-pools, on any device), stays
non-negative and on the CE scale, and is well defined with ignore pixels and multiple classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from maskkit.errors import ConfigError
from maskkit.structures.labels import IGNORE_INDEX

_EPS = 1e-12


def _valid(target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """(valid mask, target with ignored pixels set to 0)."""
    valid = target != ignore_index
    return valid, torch.where(valid, target, torch.zeros_like(target))


def _weights(valid: Tensor, safe: Tensor, class_weights: Tensor | Sequence[float] | None, like: Tensor) -> Tensor:
    w = valid.to(like.dtype)
    if class_weights is not None:
        cw = torch.as_tensor(class_weights, dtype=like.dtype, device=like.device)
        w = w * cw[safe]
    return w


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    return (values * weights).sum() / weights.sum().clamp_min(_EPS)


def _pixel_ce(logits: Tensor, safe: Tensor) -> Tensor:
    """Per-pixel cross-entropy (softmax, or sigmoid for 1-channel logits) against a target without ignores."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], safe.to(logits.dtype), reduction="none")
    return F.cross_entropy(logits, safe, reduction="none")


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    class_weights: Tensor | Sequence[float] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Cross-entropy (BCE for 1-channel logits), weighted mean over non-ignored pixels like torch's ``weight=``."""
    valid, safe = _valid(target, ignore_index)
    return _weighted_mean(_pixel_ce(logits, safe), _weights(valid, safe, class_weights, logits))


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    ignore_index: int = IGNORE_INDEX,
    class_weights: Tensor | Sequence[float] | None = None,
) -> Tensor:
    """Focal loss (Lin et al.): cross-entropy scaled by (1 - p_t)^gamma, mean over non-ignored pixels."""
    valid, safe = _valid(target, ignore_index)
    ce = _pixel_ce(logits, safe)
    focal = (1.0 - torch.exp(-ce)).pow(gamma) * ce
    return _weighted_mean(focal, _weights(valid, safe, class_weights, logits))


def dice_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX, eps: float = 1e-7) -> Tensor:
    """1 - soft Dice, computed over the whole batch per class and averaged over the classes present in the target.

    Multi-class: softmax probabilities against one-hot targets. 1-channel logits: binary Dice of the
    sigmoid foreground probability (0 when the batch has no foreground pixel).
    """
    valid, safe = _valid(target, ignore_index)
    m = valid.unsqueeze(1).to(logits.dtype)
    if logits.shape[1] == 1:
        probs = torch.sigmoid(logits)
        onehot = safe.unsqueeze(1).to(logits.dtype)
    else:
        probs = logits.softmax(dim=1)
        onehot = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    probs, onehot = probs * m, onehot * m
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    gt = onehot.sum(dims)
    dice = 2 * inter / (probs.sum(dims) + gt).clamp_min(eps)
    present = (gt > 0).to(logits.dtype)
    return ((1 - dice) * present).sum() / present.sum().clamp_min(1.0)


def mse_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Pixel-wise squared error, averaged with the (broadcast) weighting ``mask``; 0 when the mask is empty."""
    err = (pred - target.to(pred.dtype)) ** 2
    if mask is None:
        return err.mean()
    w = mask.to(pred.dtype).expand_as(err)
    return _weighted_mean(err, w)


def boundary_band(target: Tensor, ignore_index: int = IGNORE_INDEX, radius: int = 2) -> Tensor:
    """Bool B x H x W: valid pixels with another valid label within ``radius`` (Chebyshev) pixels."""
    valid = target != ignore_index
    t = target.unsqueeze(1).float()
    big = float(2**20)
    kernel, pad = 2 * radius + 1, radius
    hi = F.max_pool2d(torch.where(valid.unsqueeze(1), t, torch.full_like(t, -big)), kernel, 1, pad)
    lo = -F.max_pool2d(torch.where(valid.unsqueeze(1), -t, torch.full_like(t, -big)), kernel, 1, pad)
    return valid & (hi != lo).squeeze(1)


def boundary_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = IGNORE_INDEX,
    radius: int = 2,
    class_weights: Tensor | Sequence[float] | None = None,
) -> Tensor:
    """Boundary-band cross-entropy: CE averaged over :func:`boundary_band` pixels (see the module docstring)."""
    _, safe = _valid(target, ignore_index)
    band = boundary_band(target, ignore_index, radius)
    return _weighted_mean(_pixel_ce(logits, safe), _weights(band, safe, class_weights, logits))


def brier_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean squared error between class probabilities and the one-hot target over non-ignored pixels."""
    valid, safe = _valid(target, ignore_index)
    if logits.shape[1] == 1:
        probs, onehot = torch.sigmoid(logits), safe.unsqueeze(1)
    else:
        probs = logits.softmax(dim=1)
        onehot = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2)
    return mse_loss(probs, onehot, valid.unsqueeze(1)) * probs.shape[1]


LOSS_TERMS = ("ce", "dice", "focal", "boundary", "mse")


class SegLoss:
    """A weighted sum of named loss terms, returned term by term.

    ``spec`` maps term names (``ce``, ``dice``, ``focal``, ``boundary``, ``mse``) to weights; calling it
    returns ``{"loss_<term>": weight * value}`` for each term with a non-zero weight. ``class_weights``
    (one per channel) apply to the CE-based terms. ``mse`` compares probabilities with the one-hot
    target (Brier score) for integer targets, and the raw outputs with float targets.
    """

    def __init__(
        self,
        spec: Mapping[str, float],
        class_weights: Tensor | Sequence[float] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        unknown = sorted(set(spec) - set(LOSS_TERMS))
        if unknown:
            raise ConfigError(f"unknown loss term(s) {unknown}; known: {list(LOSS_TERMS)}")
        if not any(float(w) for w in spec.values()):
            raise ConfigError(f"loss spec {dict(spec)} has no term with a non-zero weight")
        self.spec = {k: float(w) for k, w in spec.items() if float(w) != 0.0}
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.ignore_index = ignore_index

    def term(self, name: str, logits: Tensor, target: Tensor) -> Tensor:
        """The unweighted value of term ``name``."""
        cw, ig = self.class_weights, self.ignore_index
        if cw is not None and cw.numel() != logits.shape[1] and not (logits.shape[1] == 1 and cw.numel() == 2):
            raise ConfigError(f"class_weights has {cw.numel()} values for {logits.shape[1]} output channels")
        if name == "ce":
            return cross_entropy(logits, target, cw, ig)
        if name == "dice":
            return dice_loss(logits, target, ig)
        if name == "focal":
            return focal_loss(logits, target, ignore_index=ig, class_weights=cw)
        if name == "boundary":
            return boundary_loss(logits, target, ig, class_weights=cw)
        if target.is_floating_point():
            return mse_loss(logits, target)
        return brier_loss(logits, target, ig)

    def __call__(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {f"loss_{name}": w * self.term(name, logits, target) for name, w in self.spec.items()}
