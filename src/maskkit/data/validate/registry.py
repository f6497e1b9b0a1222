"""The check registry: each check is a small function registered with its code, name and severity.

A check looks at one *scope* and yields problems, as plain messages or :class:`Hit` objects:

* ``instance`` – ``func(inst: InstanceView)``, once per annotation
* ``image`` – ``func(img: ImageContext)``, once per image record
* ``split`` – ``func(split: SplitContext)``, once per split
* ``dataset`` – ``func(ds: DatasetContext)``, once for all splits together

The runner turns them into :class:`~maskkit.data.validate.report.Finding` objects, filling in the
split, file, image and annotation from the scope. Adding a check is one decorated function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from maskkit.data.annotations import ImageRecord

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")
Scope = Literal["instance", "image", "split", "dataset"]


@dataclass
class Hit:
    """One problem found by a check; unset fields are filled in from the check's scope."""

    message: str
    split: str | None = None
    record: ImageRecord | None = None
    annotation_id: int | None = None
    file: str | None = None


CheckFunc = Callable[[Any], Iterable["str | Hit"]]


@dataclass(frozen=True)
class Check:
    """A registered check: a stable ``code`` (e.g. ``E101``), a ``name`` and a severity."""

    code: str
    name: str
    severity: Severity
    scope: Scope
    description: str
    func: CheckFunc
    needs: tuple[str, ...] = ()
    """Costly inputs the check needs computed (``"phash"``: perceptual hashes of every image)."""

    def info(self) -> dict[str, str]:
        return {"code": self.code, "name": self.name, "severity": self.severity, "description": self.description}


CHECKS: list[Check] = []
"""All registered checks, in registration order (reports sort them by code)."""


def check(
    code: str, name: str, severity: Severity, scope: Scope, description: str, needs: tuple[str, ...] = ()
) -> Callable[[CheckFunc], CheckFunc]:
    """Decorator registering ``func`` as a check."""
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}")

    def register(func: CheckFunc) -> CheckFunc:
        if any(c.code == code or c.name == name for c in CHECKS):
            raise ValueError(f"check {code} {name} registered twice")
        CHECKS.append(Check(code, name, severity, scope, description, func, needs))
        return func

    return register


# The runner reports records whose fields cannot be interpreted under this code (not a registered function).
INVALID = Check(
    "E200",
    "invalid-annotation",
    "error",
    "instance",
    "An annotation or image record that cannot be interpreted at all (wrong types, broken structure).",
    lambda _: (),
)


# A check that crashes for another reason is a bug in maskkit, reported under this code.
INTERNAL = Check(
    "E000",
    "internal-error",
    "error",
    "instance",
    "A check crashed (a bug in maskkit, not a data error; please report it): the exception is in the message.",
    lambda _: (),
)
