"""The search space of ``maskkit tune``: a YAML mapping of ``TrainConfig`` dotted paths to typed parameters.

.. code-block:: yaml

    optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
    augment.color_jitter: {type: float, low: 0.0, high: 0.4, step: 0.1}
    data.batch_size: {type: int, low: 1, high: 4}
    model.mask_resolution: {type: categorical, choices: [28, 56]}

Every path must name a field of :class:`~maskkit.config.TrainConfig` (free-form mappings such as
``model.options`` and ``loss_weights`` take any key), and every value a parameter can take (the bounds, each
choice) must give a valid config on top of the base config. Pydantic and PyYAML only: no optuna, no torch.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from maskkit.config import TrainConfig, merge_overrides, validate_config
from maskkit.errors import ConfigError

MANAGED = ("output.out",)
"""Fields ``maskkit tune`` sets itself (each trial's run folder)."""


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FloatParam(_Param):
    """A float in ``[low, high]``: uniform, log-uniform (``log``) or on a grid of ``step``."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> FloatParam:
        _check_bounds(self.low, self.high, self.log, self.step)
        return self

    def values(self) -> list[Any]:
        """The values checked against the config up front: the bounds."""
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        """Whether the parameter can take ``value``."""
        return _on_grid(value, self.low, self.high, self.step)


class IntParam(_Param):
    """An integer in ``[low, high]``: uniform, log-uniform (``log``) or every ``step``-th."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> IntParam:
        _check_bounds(self.low, self.high, self.log, self.step if self.step != 1 else None)
        return self

    def values(self) -> list[Any]:
        """Every value the parameter can take when there are few (so ``28..56`` on a 28-or-56 field is
        refused up front), else the bounds."""
        every = range(self.low, self.high + 1, self.step)
        return list(every) if len(every) <= 256 else [self.low, self.high]

    def contains(self, value: Any) -> bool:
        """Whether the parameter can take ``value``."""
        return isinstance(value, int) and not isinstance(value, bool) and _on_grid(value, self.low, self.high,
                                                                                  self.step)


class CategoricalParam(_Param):
    """One of ``choices`` (numbers, strings, booleans or null)."""

    type: Literal["categorical"]
    choices: list[bool | int | float | str | None] = Field(min_length=1)

    def values(self) -> list[Any]:
        """The values checked against the config up front: every choice."""
        return list(self.choices)

    def contains(self, value: Any) -> bool:
        """Whether the parameter can take ``value``."""
        return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in self.choices)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
_PARAM: TypeAdapter[Any] = TypeAdapter(Param)
_MISSING = object()


def _on_grid(value: Any, low: float, high: float, step: float | None) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        return False
    return step is None or abs((value - low) / step - round((value - low) / step)) < 1e-9


def _check_bounds(low: float, high: float, log: bool, step: float | None) -> None:
    if low > high:
        raise ValueError(f"low ({low}) is above high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log scale needs low > 0 (got {low})")
    if log and step is not None:
        raise ValueError("log and step cannot be combined")


class SearchSpace(BaseModel):
    """Parameters by ``TrainConfig`` dotted path, in file order."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, Param]
    source: str = ""
    """The file the space came from (named in errors)."""

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The dotted overrides an Optuna ``trial`` samples (its parameter names are the dotted paths)."""
        out: dict[str, Any] = {}
        for name, p in self.params.items():
            if isinstance(p, FloatParam):
                out[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
            elif isinstance(p, IntParam):
                out[name] = trial.suggest_int(name, p.low, p.high, log=p.log, step=p.step)
            else:
                out[name] = trial.suggest_categorical(name, p.choices)
        return out

    def config(self, base: Mapping[str, Any], values: Mapping[str, Any],
               extra: Mapping[str, Any] | None = None) -> TrainConfig:
        """``base`` with the sampled ``values`` (a null sets null) and then the dotted ``extra`` overrides (a
        null is skipped) applied, validated; an error names the values."""
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        data = merge_overrides(merge_overrides(base, values, keep_none=True), extra)
        return validate_config(data, f"{self.source} with {shown}")

    def base_values(self, base: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The base config's value of every parameter (its defaults filled in), and a note for each one the
        space cannot take (outside the range or the choices): the parameters of a baseline trial."""
        node_all = validate_config(base).model_dump(mode="json")
        values: dict[str, Any] = {}
        outside: list[str] = []
        for name, p in self.params.items():
            node: Any = node_all
            for part in name.split("."):
                node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
            if node is _MISSING or not p.contains(node):
                outside.append(f"{name}={'(unset)' if node is _MISSING else repr(node)}")
            else:
                values[name] = node
        return values, outside


def load_space(path: str | Path, base: Mapping[str, Any] | None = None) -> SearchSpace:
    """Read and check the space file ``path`` against ``base`` (a config dict; default: the defaults).

    Errors are one-line ``ConfigError``\\ s naming the file, the entry and the problem.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the search space ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: a search space is a non-empty mapping of config paths to parameters, "
                          "e.g. 'optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}'")
    params: dict[str, Any] = {}
    for name, spec in data.items():
        name = str(name)
        _check_path(name, path)
        try:
            params[name] = _PARAM.validate_python(spec)
        except ValidationError as exc:
            raise ConfigError(f"{path}: {name}: {_first_error(exc)}") from None
    space = SearchSpace(params=params, source=str(path))
    _check_values(space, dict(base or {}), path)
    return space


def _first_error(exc: ValidationError) -> str:
    """The first problem pydantic found, on one line (``field: message``)."""
    err = exc.errors()[0]
    parts = [str(p) for p in err["loc"] if p not in ("float", "int", "categorical")]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        parts, msg = ["type"], "'type' must be one of float, int, categorical"
    elif err["type"] in ("model_attributes_type", "dict_type"):
        msg = "a parameter is a mapping, e.g. {type: float, low: 1.0e-4, high: 1.0e-2, log: true}"
    elif parts[:1] == ["choices"] and len(parts) > 1:
        parts, msg = parts[:2], "each choice must be a number, a string, a boolean or null"
    return f"{'.'.join(parts)}: {msg}" if parts else msg


def _check_path(name: str, source: Path) -> None:
    """``name`` is a dotted path to a ``TrainConfig`` field (any key under a free-form mapping)."""
    if name in MANAGED:
        raise ConfigError(f"{source}: {name}: set by maskkit tune (each trial's run folder), not searchable")
    node: Any = TrainConfig
    parts = name.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the config"
        if isinstance(node, type) and issubclass(node, BaseModel):
            fields = node.model_fields
            if part not in fields:
                raise ConfigError(f"{source}: {name}: unknown field {part!r} in {where} (fields: "
                                  f"{', '.join(fields)})")
            node = fields[part].annotation
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1] if typing.get_args(node) else Any
        else:
            raise ConfigError(f"{source}: {name}: {where} is not a section")
    if isinstance(node, type) and issubclass(node, BaseModel):
        raise ConfigError(f"{source}: {name}: is a section; name one of its fields "
                          f"({', '.join(node.model_fields)})")


def _check_values(space: SearchSpace, base: dict[str, Any], source: Path) -> None:
    """Every bound and choice of every parameter gives a valid config on top of ``base``."""
    try:
        validate_config(base)
    except ConfigError as exc:
        raise ConfigError(f"the base config is invalid: {exc}") from None
    for name, p in space.params.items():
        for value in p.values():
            try:
                TrainConfig.model_validate(merge_overrides(base, {name: value}, keep_none=True))
            except ValidationError as exc:
                raise ConfigError(f"{source}: {name}: the value {value!r} is not valid for the config "
                                  f"({_first_error(exc)})") from None
