"""The typed training configuration: one pydantic model, saved with every run and checkpoint.

``maskkit train --config run.yaml`` loads it; command-line flags override single fields. A run is
reproducible from its saved ``config.yaml`` and seed. Pydantic only: loading a config imports no torch.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from maskkit.errors import ConfigError
from maskkit.fileio import atomic_write_text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


NormaliseMode = Literal["dtype", "uint8", "minmax", "percentile", "fixed"]
"""How raw pixel values become floats in ``[0, 1]``:

* ``dtype`` – divide by the maximum of the image's integer dtype (uint8 /255, uint16 /65535); floats kept
* ``uint8`` – divide by 255 whatever the dtype
* ``minmax`` – per image ``(x - min) / (max - min)``
* ``percentile`` – per image, the 0.5–99.5 percentiles map to 0–1 (robust to hot pixels)
* ``fixed`` – divide by ``fixed_max`` (e.g. 4095 for 12-bit cameras)
"""

Appearance = Literal["keep", "grey", "dark_background"]
"""How images look to the model after normalisation (training and inference alike):

* ``keep`` – as they are
* ``grey`` – luminance (Rec. 601 weights), repeated over the model's channels: colour stains and grey
  fluorescence look alike
* ``dark_background`` – ``grey``, then inverted when the image's median is above 0.5 (bright-field and H&E:
  dark objects on a bright background become bright objects on a dark one, as in fluorescence)
"""


class CorruptionAugmentConfig(_Strict):
    """Corruption augmentation (training only): with probability ``p`` an image gets one corruption of
    :mod:`maskkit.data.corruptions` (drawn from ``names``) at a severity drawn from ``severities``."""

    p: float = Field(0.0, ge=0.0, le=1.0)
    """Probability per training image (0: off)."""
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3])
    names: list[str] | None = None
    """Corruptions or groups (``noise``, ``blur``, ``weather``, ``digital``, ``microscopy``); None: every one that
    keeps pixels in place (``elastic_transform`` moves pixels but not the masks: refused)."""

    @field_validator("severities")
    @classmethod
    def _severities(cls, v: list[int]) -> list[int]:
        if not v or any(s not in (1, 2, 3, 4, 5) for s in v):
            raise ValueError("severities must be a non-empty list of 1..5")
        return v


class AugmentConfig(BaseModel):
    """Augmentation and image-loading options (embedded in the training config)."""

    model_config = ConfigDict(extra="forbid")

    min_size: list[int] = Field(default_factory=lambda: [800])
    """Shortest-edge sizes; training picks one at random per image (multi-scale), evaluation uses the largest.
    An empty list disables resizing."""
    max_size: int | None = 1333
    """Cap on the longest edge after resizing."""
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    """Probability of a horizontal flip (training only)."""
    vflip: float = Field(0.0, ge=0.0, le=1.0)
    """Probability of a vertical flip (training only)."""
    transpose: float = Field(0.0, ge=0.0, le=1.0)
    """Probability of swapping the image axes (training only); with both flips at 0.5 this draws all eight
    90-degree rotations and mirrorings, for data without a preferred orientation (cells, aerial, shapes)."""
    crop: int | tuple[int, int] | None = None
    """Random crop size (``size`` or ``(height, width)``) after resizing, training only; smaller images are
    zero-padded. Instances are clipped and those left empty are dropped."""
    object_size: tuple[float, float] | None = None
    """Training scale matched to the objects (needs ``crop``): each image is resized so that its median instance
    measures a size drawn log-uniformly from ``(low, high)`` pixels, instead of drawing from ``min_size``
    (images without instances still do). Inference keeps the model's own size."""
    color_jitter: float = Field(0.0, ge=0.0, le=1.0)
    """Photometric strength ``s``: brightness, contrast and saturation factors in ``[1-s, 1+s]`` (training only)."""
    hue: float = Field(0.0, ge=0.0, le=0.5)
    """Hue shift ``±hue`` on RGB images (off by default: on CPU it costs ~4x the other jitters together)."""
    normalise: NormaliseMode = "dtype"
    fixed_max: float | None = None
    """Divisor of the ``fixed`` normalisation mode."""
    appearance: Appearance = "keep"
    """Grey conversion / inversion of bright backgrounds after normalisation (see ``Appearance``)."""
    channels: int | None = None
    """Channels fed to the model: ``None`` keeps each image's own; ``3`` repeats grey and drops alpha."""
    corruption: CorruptionAugmentConfig = Field(default_factory=CorruptionAugmentConfig)
    """Corruption augmentation, applied last (off by default)."""

    @model_validator(mode="after")
    def _object_size(self) -> AugmentConfig:
        if self.object_size is not None:
            lo, hi = self.object_size
            if not 0 < lo <= hi:
                raise ValueError(f"object_size must be (low, high) pixels with 0 < low <= high, got {self.object_size}")
            if self.crop is None:
                raise ValueError("object_size needs crop (it scales the training crops' source window)")
        return self

    @field_validator("min_size")
    @classmethod
    def _positive_sizes(cls, v: list[int]) -> list[int]:
        if any(s <= 0 for s in v):
            raise ValueError("min_size entries must be positive")
        return v

    def image_options(self) -> dict[str, Any]:
        """The image-loading keyword arguments of :class:`~maskkit.data.dataset.InstanceDataset`."""
        return {"normalise": self.normalise, "fixed_max": self.fixed_max, "channels": self.channels,
                "appearance": self.appearance}


class SpeedConfig(_Strict):
    """CPU training-speed options of the Mask R-CNN models (:mod:`maskkit.models.fast_train`). The defaults are
    torchvision's behaviour; ``roi_align``, ``anchor_matching``, ``mask_targets`` and ``channels_last`` change
    speed only, the others change the model (accuracy: ``benchmarks/train_speed.py --compare``)."""

    roi_align: Literal["torchvision", "numba"] = "torchvision"
    """RoI pooling of the box and mask heads: ``numba`` runs forward and backward on Numba channels-last kernels."""
    anchor_matching: Literal["torchvision", "numba"] = "torchvision"
    """RPN anchor matching: ``numba`` fuses IoU and matching without the ``gt x anchors`` matrix (same matches)."""
    mask_targets: Literal["torchvision", "sampled"] = "torchvision"
    """``sampled``: mask targets are cut from the sampled RoIs' ground-truth masks only (the same targets)."""
    backbone_norm: Literal["batch", "frozen"] = "batch"
    """``frozen``: the backbone's BatchNorm layers become fixed affines (ImageNet statistics, not trained)."""
    channels_last: bool = False
    """Parameters (and so activations) in channels-last layout."""
    box_head_dim: int | None = Field(None, ge=1)
    """Width of the two-layer box MLP (None: 1024)."""
    mask_head_convs: int | None = Field(None, ge=1)
    """Convolutions of the mask head (None: 4)."""
    separable_convs: bool = False
    """The 3x3 convolutions of the FPN outputs and of the RPN head as depthwise-separable pairs (3x3 depthwise,
    then 1x1): about 8x fewer multiply-adds where the feature maps are largest."""

    def builder_options(self) -> dict[str, Any]:
        """The fields that differ from the defaults, as builder keyword arguments."""
        return self.model_dump(exclude_defaults=True)


class ModelConfig(_Strict):
    """Which architecture and how it is built (options go to the registry builder)."""

    name: str = "maskrcnn_effl0_fpn"
    weights: str | None = None
    """Local weights: a maskkit checkpoint, or a torchvision-format state dict (backbone or whole model)."""
    pretrained_backbone: bool = True
    """ImageNet backbone: offline for EfficientNet-Lite, an opt-in download for torchvision backbones."""
    trainable_backbone_layers: int | None = None
    """Freeze all but the last N backbone stages (None: the builder's default)."""
    freeze_backbone: bool = False
    """Freeze every backbone parameter (FPN and heads still train)."""
    min_size: int | None = None
    """Inference shortest edge (None: the largest ``augment.min_size``); training sizes come from ``augment``."""
    max_size: int | None = None
    """Inference longest-edge cap (None: ``augment.max_size``)."""
    anchor_sizes: list[int] | None = None
    mask_resolution: Literal[28, 56] = 28
    options: dict[str, Any] = Field(default_factory=dict)
    """Further builder keyword arguments (e.g. ``box_batch_size_per_image``)."""
    speed: SpeedConfig = Field(default_factory=SpeedConfig)
    """CPU training-speed options of the Mask R-CNN models."""


class DataConfig(_Strict):
    """Where the data comes from and how it is batched."""

    path: str = ""
    """A dataset YAML, or any dataset path the data layer reads."""
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """Used only when the source has no val split: a deterministic split (see ``val_split``)."""
    val_split: Literal["random", "interleaved"] = "random"
    """How that split is carved: ``random`` (a permutation seeded by ``seed``) or ``interleaved`` (images sorted
    by file name, every ``round(1 / val_fraction)``-th one from the first, as in the peer baselines)."""
    batch_size: int = Field(2, ge=1)
    workers: int = Field(0, ge=0)
    val_batch_size: int | None = None
    """Batch size of validation (None: ``batch_size``)."""
    skip_bad_images: bool = False
    """Images whose pixels fail to decode (cut off, corrupt): ``False`` stops with an error naming the file;
    ``True`` drops them before training (every image is decoded once up front), counting them in the log
    and listing them in ``skipped_images.json``."""
    allow_outside_root: bool = False
    """Accept image paths resolving outside the dataset root (``--allow-outside-root``; refused by default)."""
    unlabeled: str | None = None
    """A folder of unlabeled images for semi-supervised training (``--unlabeled``; see ``semi``): every image
    file below it, except those in ``labels``/``masks``/``annotations`` folders (any labels there are ignored)."""


class OptimConfig(_Strict):
    """Optimiser, schedule and the safety nets."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = 0.9
    scheduler: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    step_milestones: list[float] = Field(default_factory=lambda: [0.7, 0.9])
    """Fractions of the run at which the step schedule multiplies the LR by ``gamma``."""
    gamma: float = 0.1
    grad_clip: float | None = 10.0
    ema: bool = False
    ema_decay: float = 0.999
    amp: bool = True
    """Mixed precision on CUDA (ignored on CPU)."""
    max_bad_steps: int = 20
    """Stop the run after this many non-finite losses (each one skips its step)."""


class ScheduleConfig(_Strict):
    """How long, how often to validate, when to stop."""

    epochs: int = Field(10, ge=1)
    val_every: int = Field(1, ge=1)
    patience: int | None = None
    """Early stopping: epochs without improvement of ``metric`` (None disables)."""
    metric: str | None = None
    """Validation metric that picks ``best.pt`` and drives early stopping, scored on the ``tune.split`` images
    (dotted path into metrics.json; None: ``semantic.miou`` for semantic models, ``segm.AP`` otherwise)."""
    tune_thresholds: bool = True
    """Choose tunable post-processing thresholds (bottom-up model) by mask AP at each validation, on the
    images ``tune.split`` names (every combination scored goes to ``tuning.csv``)."""
    max_dets: int = 100
    save_every_steps: int = Field(0, ge=0)
    """Also write ``last.pt`` every N optimiser steps (0: only at epoch ends); a resume continues mid-epoch."""
    val_loss: bool = True
    """Compute the validation loss (a second pass over val in train mode, BatchNorm frozen)."""
    max_minutes: float | None = Field(None, gt=0)
    """Wall-clock budget of the training loop: the LR schedule runs on ``max(step, time)`` progress so that it
    ends at the budget, and the step that crosses it ends the run (validated and saved as a last epoch).
    Under DDP the budget is checked at epoch ends only. None: no limit."""


class TuneConfig(_Strict):
    """Which images make the run's choices: post-processing thresholds, ``best.pt`` and early stopping.

    ``val`` (default): the val split makes them, so its metrics are optimistic; report another split (the
    demo's ``test``). ``train_slice``: ``images`` training images (a permutation seeded by ``seed``, taken
    after the val split is set aside) are held back from training and make every choice; the val split is
    then only scored, with the thresholds chosen on the slice, and never chosen on.
    """

    split: Literal["val", "train_slice"] = "val"
    images: int = Field(8, ge=1)
    """Size of the ``train_slice``."""


class SemiConfig(_Strict):
    """Semi-supervised training on ``data.unlabeled`` (mean teacher): an EMA of the student predicts pseudo-labels
    on weakly augmented unlabeled images; the student learns them on strongly augmented views."""

    threshold: float = Field(0.7, gt=0.0, lt=1.0)
    """Confidence a pseudo-label needs: instance score (Mask R-CNN, Panoptic FPN) or pixel class probability
    (dense models; less confident pixels are ignored)."""
    class_thresholds: dict[str, float] = Field(default_factory=dict)
    """Per-class thresholds by class name (``background`` for the dense models' class 0); others use ``threshold``."""
    adaptive: bool = False
    """FlexMatch-style per-class thresholds: classes the teacher is less often confident about get lower ones,
    ``threshold * b / (2 - b)`` with ``b`` the class's confident share relative to the best class (never below
    ``min_threshold``)."""
    min_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    """Floor of the adaptive thresholds."""
    weight: float = Field(1.0, ge=0.0)
    """Weight of the unlabeled loss (``loss_unsup``) against the supervised one."""
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0)
    """Decay of the teacher's exponential moving average of the student."""
    ratio: int = Field(1, ge=1)
    """Unlabeled images per labelled image in a step."""
    burn_in_steps: int = Field(100, ge=0)
    """Supervised-only steps before the teacher (a copy of the student then) starts pseudo-labelling."""
    box_regression: bool = False
    """Mask R-CNN: also learn box regression (RPN and RoI) from pseudo-boxes (Unbiased Teacher leaves it out)."""
    color_jitter: float = Field(0.4, ge=0.0, le=1.0)
    """Strong view: brightness/contrast/saturation jitter strength."""
    blur: float = Field(0.5, ge=0.0, le=1.0)
    """Strong view: probability of a Gaussian blur."""
    noise: float = Field(0.03, ge=0.0)
    """Strong view: standard deviation of additive Gaussian noise (images are in ``[0, 1]``)."""
    cutout: float = Field(0.5, ge=0.0, le=1.0)
    """Strong view: probability of erasing one random rectangle (up to a quarter of each side)."""
    flip: bool = True
    """Strong view: random horizontal/vertical flips, applied to the image and its pseudo-labels together."""


class AdversarialConfig(_Strict):
    """Adversarial training: a ``fraction`` of each batch's images replaced by L-inf FGSM/PGD examples of the current
    model on its own training loss (:mod:`maskkit.engine.adversarial`), ``eps`` in ``[0, 1]`` image units."""

    method: Literal["fgsm", "pgd"] = "pgd"
    eps: float = Field(2.0 / 255.0, ge=0.0, le=1.0)
    steps: int = Field(3, ge=1)
    """PGD steps (FGSM takes one)."""
    fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Probability per training image of being replaced (0: off)."""


class OutputConfig(_Strict):
    """Where the run folder goes and what is logged into it."""

    out: str = "runs/train"
    tensorboard: bool = True
    """TensorBoard events (skipped quietly when tensorboard is not installed)."""
    plots: bool = True
    """``curves.png`` at the end of the run."""
    progress: bool = True
    """A progress bar with ETA and current losses."""


class TrainConfig(_Strict):
    """Everything a training run needs; saved as ``config.yaml`` and inside every checkpoint."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig(min_size=[512], max_size=853))
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    semi: SemiConfig = Field(default_factory=SemiConfig)
    """Semi-supervised options; used only with ``data.unlabeled``."""
    loss_weights: dict[str, float] = Field(default_factory=dict)
    """Weight per loss term (``loss_classifier``, ``loss_box_reg``, ``loss_mask``, ``loss_objectness``,
    ``loss_rpn_box_reg``); missing terms weigh 1."""
    output: OutputConfig = Field(default_factory=OutputConfig)
    adversarial: AdversarialConfig = Field(default_factory=AdversarialConfig)
    seed: int = 0
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    deterministic: bool = True
    """Deterministic algorithms (warn-only) so that a run and its resume give the same losses."""
    threads: int | None = None
    """CPU threads of torch (None: torch's default)."""
    sync_batchnorm: bool = True
    """Under DDP, BatchNorm statistics over every process's images (the global batch), as one process would see
    them (``maskkit.engine.sync_batchnorm``); false: each process normalises over its own images."""


def merge_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
                    keep_none: bool = False) -> dict[str, Any]:
    """A copy of the config dict ``data`` with dotted ``overrides`` (``{"schedule.epochs": 3}``) merged in.

    Intermediate sections are created as needed; ``None`` values are skipped (an unset flag) unless
    ``keep_none`` (then they set the field to null). ``data`` is not modified.
    """
    merged = copy.deepcopy(dict(data))
    for dotted, value in (overrides or {}).items():
        if value is None and not keep_none:
            continue
        node = merged
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"cannot set {dotted!r}: {key!r} is not a section")
        node[leaf] = value
    return merged


def validate_config(data: Mapping[str, Any], source: str | Path | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of a config dict; a ``ConfigError`` (naming ``source``) lists what is invalid."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}invalid config:\n{exc}") from None


def read_config(path: str | Path) -> dict[str, Any]:
    """The mapping of sections in the YAML file ``path``, unvalidated."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections")
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Load a YAML config (or the defaults) and apply dotted overrides like ``{"schedule.epochs": 3}``."""
    data = read_config(path) if path is not None else {}
    return validate_config(merge_overrides(data, overrides), path)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
