"""Semi-supervised training on unlabeled images (``data.unlabeled``, options in ``semi``): a mean teacher.

The same scheme for every family, through the model contract only (eval mode: predictions; train mode:
loss terms of target dicts), in the spirit of Unbiased Teacher and FixMatch:

1. Burn-in: the first ``semi.burn_in_steps`` steps are supervised only (``loss_unsup`` is 0).
2. The teacher is then a copy of the student, updated after every step as an exponential moving average
   (:class:`~maskkit.engine.ema.ModelEMA`, decay ``semi.ema_decay``).
3. Each step, ``batch_size * ratio`` unlabeled images get the *weak* view (the training geometry of ``augment``:
   resize, crop, flips; no colour jitter); the teacher predicts on it and its confident predictions become
   pseudo-labels (:mod:`maskkit.engine.pseudo_labels`, per-class thresholds, optionally adaptive).
4. The student sees a *strong* view of the same images: random flips applied to the image and its pseudo-labels
   together, then colour jitter, Gaussian blur, noise and cutout on the image (cut-out pixels are ignored in
   dense targets). Its loss on them, times ``semi.weight``, is the step's ``loss_unsup`` term, added to the
   supervised loss. Mask R-CNN's box-regression terms are left out unless ``semi.box_regression``.

The teacher and the threshold statistics are saved in checkpoints (``semi``), so a resumed run continues them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Sampler
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from maskkit.config import SemiConfig, TrainConfig
from maskkit.data.annotations import AnnotationSet
from maskkit.data.dataset import InstanceDataset, mask_boxes_and_areas
from maskkit.data.transforms import ColorJitterAnyChannels, build_transforms
from maskkit.engine.data import make_loader
from maskkit.engine.ema import ModelEMA
from maskkit.engine.loop import to_device
from maskkit.engine.pseudo_labels import ClassThresholds, base_thresholds, observe_prediction, pseudo_target
from maskkit.structures.labels import IGNORE_INDEX

UNSUP_LOSS = "loss_unsup"
BOX_REGRESSION_TERMS = ("loss_box_reg", "loss_rpn_box_reg")
TEACHER_TAU = 1.0
"""Warm-up of the teacher's EMA (``ModelEMA.tau``): the full decay applies after a few updates (the teacher starts
as a copy of the student)."""


class UnlabeledBatches(Sampler[list[int]]):
    """Endless batches of a seeded permutation per pass over ``n`` images, from batch ``start`` on (resumable)."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int = 0) -> None:
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start

    def __iter__(self) -> Iterator[list[int]]:
        batch = self.start
        perms: dict[int, list[int]] = {}
        while True:
            out = []
            for k in range(batch * self.batch_size, (batch + 1) * self.batch_size):
                rnd, pos = divmod(k, self.n)
                if rnd not in perms:
                    perms = {rnd: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + rnd))
                             .tolist(), **{r: p for r, p in perms.items() if r == rnd - 1}}
                out.append(perms[rnd][pos])
            yield out
            batch += 1


def strong_view(image: Tensor, target: dict[str, Tensor], cfg: SemiConfig,
                jitter: ColorJitterAnyChannels | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The strong augmentation of a weak view and its pseudo-target (see the module docstring)."""
    target = dict(target)
    if cfg.flip:
        for dim in (-1, -2):
            if bool(torch.rand(()) < 0.5):
                image = image.flip(dim)
                for key in ("masks", "semantic"):
                    if key in target:
                        target[key] = target[key].flip(dim)
        if "masks" in target and len(target["masks"]):
            target["boxes"] = torch.from_numpy(mask_boxes_and_areas(target["masks"].numpy())[0])
    if jitter is not None:
        image = jitter(tv_tensors.Image(image)).as_subclass(Tensor)
    if cfg.blur > 0 and bool(torch.rand(()) < cfg.blur):
        sigma = float(torch.empty(()).uniform_(0.1, 2.0))
        k = 2 * math.ceil(3 * sigma) + 1
        image = TF.gaussian_blur(image, [k, k], [sigma, sigma])
    if cfg.noise > 0:
        image = (image + cfg.noise * torch.randn_like(image)).clamp_(0.0, 1.0)
    h, w = image.shape[-2:]
    if cfg.cutout > 0 and bool(torch.rand(()) < cfg.cutout) and h >= 4 and w >= 4:
        ch, cw = (int(torch.randint(1, max(s // 4, 1) + 1, ())) for s in (h, w))
        y, x = int(torch.randint(0, h - ch + 1, ())), int(torch.randint(0, w - cw + 1, ()))
        image = image.clone()
        image[..., y : y + ch, x : x + cw] = 0.5
        if "semantic" in target:
            sem = target["semantic"].clone()
            sem[y : y + ch, x : x + cw] = IGNORE_INDEX
            target["semantic"] = sem
    return image, target


class SemiSupervised:
    """The unlabeled half of a training step: teacher, unlabeled data, pseudo-labels and ``loss_unsup``."""

    def __init__(self, cfg: TrainConfig, unlabeled: AnnotationSet, class_names: list[str],
                 device: torch.device) -> None:
        self.cfg, self.device = cfg.semi, device
        weak = cfg.augment.model_copy(update={"color_jitter": 0.0, "hue": 0.0})
        self.dataset = InstanceDataset(unlabeled, build_transforms(True, weak), with_masks=False,
                                       **cfg.augment.image_options())
        self.batch_size = cfg.data.batch_size * cfg.semi.ratio
        self.workers, self.seed = cfg.data.workers, cfg.seed
        base = base_thresholds(cfg.semi.threshold, cfg.semi.class_thresholds, class_names)
        self.instance_thresholds = ClassThresholds(base, cfg.semi.adaptive, cfg.semi.min_threshold)
        self.pixel_thresholds = ClassThresholds(base, cfg.semi.adaptive, cfg.semi.min_threshold)
        s = cfg.semi.color_jitter
        self.jitter = ColorJitterAnyChannels(brightness=s, contrast=s, saturation=s) if s > 0 else None
        self.teacher: ModelEMA | None = None
        self._batches: Iterator[Any] | None = None
        self.last: dict[str, float] = {}
        """Statistics of the last unlabeled step: ``pseudo_instances`` per image, ``pseudo_pixels`` (kept share)."""

    def _next_images(self, step: int) -> list[Tensor]:
        if self._batches is None:  # started lazily: a resumed run continues at its own step
            sampler = UnlabeledBatches(len(self.dataset), self.batch_size, self.seed,
                                       max(step - self.cfg.burn_in_steps, 0))
            self._batches = iter(make_loader(self.dataset, sampler, self.workers, self.seed + 7919))
        images, _ = next(self._batches)
        return list(images)

    def losses(self, student: nn.Module, step: int, loss_weights: Mapping[str, float]) -> dict[str, Tensor]:
        """``{"loss_unsup": ...}`` of training step ``step`` (steps done before it): 0 during burn-in, else the
        weighted loss of the student on strong views of pseudo-labelled unlabeled images."""
        zero = torch.zeros((), device=self.device)
        if step < self.cfg.burn_in_steps or self.cfg.weight == 0:
            return {UNSUP_LOSS: zero}
        if self.teacher is None:
            self.teacher = ModelEMA(student, self.cfg.ema_decay, tau=TEACHER_TAU)
        else:
            self.teacher.update(student)
        weak = self._next_images(step)
        with torch.no_grad():
            preds = self.teacher.module([im.to(self.device) for im in weak])
        inst_thr, pix_thr = self.instance_thresholds.current(), self.pixel_thresholds.current()
        images, targets = [], []
        for im, pred in zip(weak, preds, strict=True):
            observe_prediction(pred, self.instance_thresholds, self.pixel_thresholds)
            image, target = strong_view(im, pseudo_target(pred, inst_thr, pix_thr), self.cfg, self.jitter)
            images.append(image)
            targets.append(target)
        self.last = _stats(targets)
        images, targets = to_device(images, targets, self.device)
        terms = student(images, targets)
        if not self.cfg.box_regression:
            terms = {k: v for k, v in terms.items() if k not in BOX_REGRESSION_TERMS}
        total = sum((loss_weights.get(k, 1.0) * v for k, v in terms.items()), zero)
        return {UNSUP_LOSS: self.cfg.weight * total}

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict() if self.teacher is not None else None,
                "instance_thresholds": self.instance_thresholds.state_dict(),
                "pixel_thresholds": self.pixel_thresholds.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], student: nn.Module) -> None:
        if state.get("teacher") is not None:
            self.teacher = ModelEMA(student, self.cfg.ema_decay, tau=TEACHER_TAU)
            self.teacher.load_state_dict(state["teacher"])
        self.instance_thresholds.load_state_dict(state["instance_thresholds"])
        self.pixel_thresholds.load_state_dict(state["pixel_thresholds"])


def _stats(targets: list[dict[str, Tensor]]) -> dict[str, float]:
    out: dict[str, float] = {}
    if any("labels" in t for t in targets):
        out["pseudo_instances"] = sum(len(t["labels"]) for t in targets if "labels" in t) / max(len(targets), 1)
    sems = [t["semantic"] for t in targets if "semantic" in t]
    if sems:
        out["pseudo_pixels"] = sum(float((s != IGNORE_INDEX).float().mean()) for s in sems) / len(sems)
    return out
