"""L-inf adversarial examples on a model's own training loss (FGSM, PGD), for ``maskkit robustness`` and training.

The loss is the one training minimises: the model in train mode given targets returns its loss dict (every
family follows that contract), weighted and summed by :func:`~maskkit.engine.loop.weighted_total`, with BatchNorm
statistics used and left untouched (:func:`~maskkit.engine.validation.frozen_norm_train_mode`). Images are float
``C×H×W`` tensors in ``[0, 1]``; a perturbed image stays in ``[0, 1]`` and within ``eps`` of the original (L-inf,
in the same units: ``eps = 4/255`` is four grey levels of an 8-bit image).

* FGSM (Goodfellow et al. 2015): one step of ``eps`` along the sign of the loss gradient.
* PGD (Madry et al. 2018): ``steps`` steps of ``alpha`` (default ``2.5 * eps / steps``) from a uniform random start
  in the eps-ball, each projected back onto the ball and the valid range.

:class:`AdversarialTraining` mixes such examples into training batches (``TrainConfig.adversarial``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskkit.config import TrainConfig
from maskkit.engine.loop import unwrap, weighted_total
from maskkit.engine.validation import frozen_norm_train_mode
from maskkit.errors import ConfigError

LossFn = Callable[[list[Tensor]], Tensor]
"""``loss(images) -> scalar``: the quantity an attack increases."""

ATTACKS = ("fgsm", "pgd")


def model_loss(model: nn.Module, targets: Sequence[dict[str, Any]], weights: dict[str, float] | None = None,
               sizes: Sequence[tuple[int, int]] | None = None) -> LossFn:
    """The weighted training loss of ``model`` on ``targets`` as a function of the images.

    ``sizes``: the size each image is resized to (bilinear, differentiable) before the model sees it, where the
    targets were made at another size than the images (e.g. the evaluation resize of the training config).
    """

    def loss(images: list[Tensor]) -> Tensor:
        batch = images
        if sizes is not None:
            batch = [x if tuple(x.shape[-2:]) == tuple(s) else
                     F.interpolate(x[None], size=tuple(s), mode="bilinear", align_corners=False)[0]
                     for x, s in zip(images, sizes, strict=True)]
        with frozen_norm_train_mode(model):
            losses = model(batch, list(targets))
        return weighted_total(losses, weights or {})

    return loss


def _gradients(loss: LossFn, images: list[Tensor]) -> list[Tensor] | None:
    """d loss / d image for each image (None when the loss is not finite); the model's own gradients untouched."""
    xs = [x.detach().clone().requires_grad_(True) for x in images]
    with torch.enable_grad():
        total = loss(xs)
        if not bool(torch.isfinite(total)):
            return None
        grads: tuple[Tensor | None, ...] = torch.autograd.grad(total, xs, allow_unused=True)
    return [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, xs, strict=True)]


def _check(eps: float, steps: int = 1) -> None:
    if not math.isfinite(eps) or eps < 0:
        raise ConfigError(f"eps must be a non-negative number, got {eps!r}")
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps!r}")


def fgsm(loss: LossFn, images: Sequence[Tensor], eps: float) -> list[Tensor]:
    """One signed-gradient step of ``eps`` (clipped to ``[0, 1]``); unchanged images when the loss is not finite."""
    _check(eps)
    originals = [x.detach() for x in images]
    if eps == 0:
        return [x.clone() for x in originals]
    grads = _gradients(loss, originals)
    if grads is None:
        return [x.clone() for x in originals]
    return [(x + eps * g.sign()).clamp_(0.0, 1.0) for x, g in zip(originals, grads, strict=True)]


def pgd(loss: LossFn, images: Sequence[Tensor], eps: float, steps: int = 10, alpha: float | None = None,
        random_start: bool = True, generator: torch.Generator | None = None) -> list[Tensor]:
    """Projected gradient ascent in the L-inf ``eps``-ball (module docstring); ``generator`` seeds the start."""
    _check(eps, steps)
    originals = [x.detach() for x in images]
    if eps == 0:
        return [x.clone() for x in originals]
    alpha = 2.5 * eps / steps if alpha is None else float(alpha)
    xs = [x.clone() for x in originals]
    if random_start:
        xs = [(x + (torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1) * eps).clamp_(0, 1)
              for x in xs]
    for _ in range(steps):
        grads = _gradients(loss, xs)
        if grads is None:
            break
        xs = [torch.min(torch.max(x + alpha * g.sign(), x0 - eps), x0 + eps).clamp_(0.0, 1.0)
              for x, g, x0 in zip(xs, grads, originals, strict=True)]
    return xs


def attack(method: str, loss: LossFn, images: Sequence[Tensor], eps: float, steps: int = 10,
           generator: torch.Generator | None = None) -> list[Tensor]:
    """``fgsm`` or ``pgd`` (``steps`` steps) of ``images`` on ``loss``."""
    if method == "fgsm":
        return fgsm(loss, images, eps)
    if method == "pgd":
        return pgd(loss, images, eps, steps, generator=generator)
    raise ConfigError(f"unknown attack {method!r}; choose from {', '.join(ATTACKS)}")


class AdversarialTraining:
    """Replace a ``fraction`` of each training batch (each image with that probability, drawn from torch's global
    generator so a seeded run repeats) by adversarial examples of the current model on its own loss."""

    def __init__(self, method: str, eps: float, steps: int, fraction: float,
                 weights: dict[str, float] | None = None) -> None:
        if method not in ATTACKS:
            raise ConfigError(f"unknown attack {method!r}; choose from {', '.join(ATTACKS)}")
        _check(eps, steps)
        self.method, self.eps, self.steps, self.fraction = method, float(eps), int(steps), float(fraction)
        self.weights = dict(weights or {})

    def __call__(self, model: nn.Module, images: list[Tensor], targets: list[dict[str, Any]]) -> list[Tensor]:
        """``images`` with the chosen ones perturbed (the others are the same tensors)."""
        chosen = [i for i in range(len(images)) if float(torch.rand(())) < self.fraction]
        if not chosen or self.eps == 0:
            return images
        loss = model_loss(unwrap(model), [targets[i] for i in chosen], self.weights)
        adv = attack(self.method, loss, [images[i] for i in chosen], self.eps, self.steps)
        out = list(images)
        for i, x in zip(chosen, adv, strict=True):
            out[i] = x.detach()
        return out


def adversarial_training(cfg: TrainConfig) -> AdversarialTraining | None:
    """The batch hook of ``cfg.adversarial`` (None when its ``fraction`` is 0)."""
    a = cfg.adversarial
    if a.fraction <= 0:
        return None
    return AdversarialTraining(a.method, a.eps, a.steps, a.fraction, dict(cfg.loss_weights))
