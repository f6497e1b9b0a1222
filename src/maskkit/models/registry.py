"""One factory over a registry of model builders (timm-style).

``@register_model(task=..., family=..., **capabilities)`` on a small builder function; ``create(name,
num_classes)`` builds it; ``list_models()`` lists what exists. Builders return plain ``nn.Module`` objects.
``num_classes`` always counts foreground classes only; detection models add background themselves.

Each entry declares its :class:`Capabilities` (task, family, the options its builder takes, where its
freezable backbone is, its input rules, whether it resizes internally), so that code building models
from a training config (:mod:`maskkit.models.factory`) asks the entry instead of testing family names.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.error import URLError

from maskkit.errors import ConfigError

Task = Literal["instance", "semantic"]


@dataclass(frozen=True)
class InputSpec:
    """What images a model takes (``C x H x W`` floats in ``[0, 1]``, any ``H x W``)."""

    channels: int | None = 3
    """Fixed channel count, or None: any count, chosen by the builder's ``in_channels`` option."""
    size_divisor: int | None = None
    """The model pads its batch to multiples of this internally (None: depends on the network/encoder)."""


@dataclass(frozen=True)
class Capabilities:
    """What a registered model is and which training-config options apply to it."""

    task: Task
    family: str
    options: frozenset[str] = frozenset()
    """Named builder options beyond ``min_size``/``max_size``/``pretrained_backbone`` (which every builder
    takes); e.g. ``anchor_sizes``, ``mask_resolution``, ``trainable_backbone_layers``, ``in_channels``. Other
    keyword arguments go on to the wrapped constructor (torchvision ``MaskRCNN``, smp)."""
    backbone: str | None = None
    """Dotted path of the backbone body that ``freeze_backbone`` freezes (None: none can be frozen)."""
    semantic_targets: bool = False
    """Trains on per-pixel class maps (``targets[i]["semantic"]``, painted from masks when absent)."""
    resizes_internally: bool = False
    """Resizes its inputs to ``min_size``/``max_size`` itself in train mode too (torchvision's detection
    transform); the builder's ``train_resize=False`` turns that off when the data pipeline resizes."""
    input: InputSpec = field(default_factory=InputSpec)

    def accepts(self, option: str) -> bool:
        """Whether the builder takes the named ``option``."""
        return option in self.options


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model: its name, description, builder and capabilities."""

    name: str
    description: str
    builder: Callable[..., Any]
    capabilities: Capabilities

    @property
    def task(self) -> Task:
        return self.capabilities.task

    @property
    def family(self) -> str:
        return self.capabilities.family

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "task": self.task, "family": self.family, "description": self.description}


_REGISTRY: dict[str, ModelInfo] = {}
_BUILTIN_MODULES = (
    "maskkit.models.maskrcnn",
    "maskkit.models.panoptic",
    "maskkit.models.semantic",
    "maskkit.models.bottomup",
    "maskkit.models.stardist",
    "maskkit.models.cellpose",
)
_loaded = False

BuilderT = TypeVar("BuilderT", bound=Callable[..., Any])
"""A model builder function (registered unchanged)."""


def register_model(
    *, task: Task, family: str, name: str | None = None, **capabilities: Any
) -> Callable[[BuilderT], BuilderT]:
    """Register a builder ``fn(num_classes, **kwargs) -> nn.Module`` under its function name.

    ``capabilities``: the other :class:`Capabilities` fields (``options`` may be any iterable of names).
    """
    if "options" in capabilities:
        capabilities["options"] = frozenset(capabilities["options"])
    caps = Capabilities(task=task, family=family, **capabilities)

    def wrap(fn: BuilderT) -> BuilderT:
        key = name or fn.__name__
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[key] = ModelInfo(key, doc[0] if doc else "", fn, caps)
        return fn

    return wrap


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def list_models(pattern: str | None = None, task: Task | None = None) -> list[ModelInfo]:
    """Registered models, sorted by name, optionally filtered by a glob ``pattern`` and ``task``."""
    _load_builtin()
    infos = sorted(_REGISTRY.values(), key=lambda i: i.name)
    if pattern:
        infos = [i for i in infos if fnmatch.fnmatch(i.name, pattern)]
    if task:
        infos = [i for i in infos if i.task == task]
    return infos


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; a clear error lists the known names otherwise."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"unknown model {name!r}; registered models: {known}") from None


def _is_download_failure(exc: BaseException) -> bool:
    """True for the errors torch.hub, smp and timm raise when weights cannot be fetched (offline, blocked)."""
    if isinstance(exc, URLError | ConnectionError | TimeoutError):
        return True
    return type(exc).__module__.split(".")[0] in {"huggingface_hub", "requests", "urllib3"}


def create(name: str, num_classes: int, **kwargs: Any) -> Any:
    """Build model ``name`` for ``num_classes`` foreground classes; kwargs go to its builder.

    Weights that need a download (torchvision/smp ImageNet backbones, COCO weights) are opt-in: when the
    download fails, a one-line ``ConfigError`` says how to go on offline.
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1 (foreground classes), got {num_classes}")
    info = model_info(name)
    try:
        return info.builder(num_classes=num_classes, **kwargs)
    except Exception as exc:
        if not _is_download_failure(exc):
            raise
        reason = str(getattr(exc, "reason", exc)).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"model {name!r}: pretrained weights could not be downloaded ({reason}); to go on offline use "
            "--set model.pretrained_backbone=false, --weights FILE, or a model with offline weights (*_effl0*)"
        ) from None
