"""The conditions of a robustness run: clean, each corruption x severity, each attack x eps; parsing their flags."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from maskkit.data.corruptions import SEVERITIES, corruption_names
from maskkit.engine.adversarial import ATTACKS
from maskkit.errors import ConfigError

DEFAULT_EPS = ("1/255", "2/255", "4/255", "8/255")


@dataclass(frozen=True)
class Condition:
    """``kind`` ``clean``, ``corruption`` (``name`` at ``severity``) or ``attack`` (``name`` at ``eps``)."""

    kind: str
    name: str = "clean"
    severity: int = 0
    eps: float = 0.0
    eps_label: str = ""

    @property
    def key(self) -> str:
        """``clean``, ``fog/3`` or ``pgd/eps=4/255``: the condition's key in ``robustness.json``."""
        if self.kind == "clean":
            return "clean"
        if self.kind == "corruption":
            return f"{self.name}/{self.severity}"
        return f"{self.name}/eps={self.eps_label}"

    @property
    def slug(self) -> str:
        """A file name for the condition's saved result."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.key)


def image_seed(seed: int, image_id: int, name: str) -> int:
    """The corruption seed of one image: the same for every severity (so a higher one is the same draw, stronger),
    different per image and corruption."""
    return zlib.crc32(f"{seed}/{image_id}/{name}".encode()) & 0x7FFFFFFF


def parse_severities(text: str | Sequence[int] | None) -> list[int]:
    """``1..5``, ``1-3``, ``1,3,5`` or a list of ints (None: all five)."""
    if text is None:
        return list(SEVERITIES)
    if not isinstance(text, str):
        values = [int(v) for v in text]
    else:
        m = re.fullmatch(r"\s*(\d)\s*(?:\.\.|-)\s*(\d)\s*", text)
        try:
            values = list(range(int(m.group(1)), int(m.group(2)) + 1)) if m else \
                [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--severities must look like 1..5 or 1,3,5, got {text!r}") from None
    if not values or any(v not in SEVERITIES for v in values):
        raise ConfigError(f"--severities must be within 1..5, got {text!r}")
    return sorted(set(values))


def parse_attacks(text: str | Sequence[str] | None) -> list[str]:
    """``fgsm,pgd`` (or a list); empty or None: no attacks."""
    if text is None:
        return []
    items = [s.strip().lower() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    for a in items:
        if a not in ATTACKS:
            raise ConfigError(f"unknown attack {a!r}; choose from {', '.join(ATTACKS)}")
    return list(dict.fromkeys(items))


def parse_eps(text: str | Sequence[str | float] | None) -> list[tuple[str, float]]:
    """``(label, value)`` of ``1/255,2/255`` or ``0.01,0.02`` (or a list); None: :data:`DEFAULT_EPS`."""
    items = DEFAULT_EPS if text is None else (text.split(",") if isinstance(text, str) else text)
    out: list[tuple[str, float]] = []
    for item in items:
        label = str(item).strip()
        if not label:
            continue
        try:
            value = float(Fraction(label))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"--eps values must be numbers or fractions like 4/255, got {label!r}") from None
        if not 0 < value <= 1:
            raise ConfigError(f"--eps values must be in (0, 1] (image units), got {label!r}")
        out.append((label, value))
    if not out:
        raise ConfigError("--eps names no value")
    return out


def build_conditions(corruptions: str | Sequence[str] | None, severities: Sequence[int], attacks: Sequence[str],
                     eps: Sequence[tuple[str, float]]) -> list[Condition]:
    """Clean first, then every corruption at every severity, then every attack at every eps."""
    names = [] if corruptions in ("none", "", []) else corruption_names(corruptions)
    out = [Condition("clean")]
    out += [Condition("corruption", n, s) for n in names for s in severities]
    out += [Condition("attack", a, eps=v, eps_label=label) for a in attacks for label, v in eps]
    return out
