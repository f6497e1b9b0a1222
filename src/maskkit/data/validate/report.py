"""Findings and the validation report (counts, exit code, JSON, a rich table)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from maskkit.data.validate.registry import INTERNAL, SEVERITIES, Check

if TYPE_CHECKING:
    from rich.console import Console


@dataclass(frozen=True)
class Finding:
    """One problem: which check, where (split, file, image, annotation) and what, with numbers."""

    code: str
    name: str
    severity: str
    split: str | None
    file: str | None
    image_id: int | None
    image: str | None
    annotation_id: int | None
    message: str

    def where(self, short: bool = False) -> str:
        """Location: ``split: file_name (id N) ann M``; ``short`` abbreviates long names for tables."""
        parts = []
        if self.image is not None or self.image_id is not None:
            name = _abbreviate(self.image, short)
            parts.append(f"{name} (id {self.image_id})" if self.image is not None else f"image {self.image_id}")
        if self.annotation_id is not None:
            parts.append(f"ann {self.annotation_id}")
        where = " ".join(parts) or _abbreviate(self.file, short) or ""
        return f"{self.split}: {where}" if self.split and where else (self.split or where)


def _abbreviate(name: str | None, short: bool, keep: int = 40) -> str | None:
    if not short or name is None:
        return name
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base if len(base) <= keep else f"{base[: keep // 2 - 1]}…{base[-(keep // 2):]}"


@dataclass
class ValidationReport:
    """All findings of a validation run; ``exit_code`` is 0 without errors, 1 with errors (3: a check crashed)."""

    findings: list[Finding]
    checks: list[Check]
    stats: dict[str, int] = field(default_factory=dict)
    """``splits``, ``images``, ``instances`` checked."""

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(f.severity for f in self.findings)
        return {s: c.get(s, 0) for s in SEVERITIES}

    @property
    def ok(self) -> bool:
        return self.counts["error"] == 0

    @property
    def exit_code(self) -> int:
        """0 without errors, 1 with data errors, 3 when a check crashed (``E000 internal-error``)."""
        if any(f.code == INTERNAL.code for f in self.findings):
            return 3
        return 0 if self.ok else 1

    def by_check(self) -> dict[str, list[Finding]]:
        out: dict[str, list[Finding]] = {c.code: [] for c in self.checks}
        for f in self.findings:
            out.setdefault(f.code, []).append(f)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object: ok, counts, every check with its count, every finding."""
        groups = self.by_check()
        return {
            "ok": self.ok,
            "counts": self.counts,
            "stats": dict(self.stats),
            "checks": [{**c.info(), "count": len(groups.get(c.code, []))} for c in self.checks],
            "findings": [asdict(f) for f in self.findings],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def summary(self) -> str:
        c, s = self.counts, self.stats
        status = "OK" if self.ok else "FAILED"
        return (
            f"{status}: {c['error']} error(s), {c['warning']} warning(s), {c['info']} info "
            f"in {s.get('images', 0)} images, {s.get('instances', 0)} instances, {s.get('splits', 0)} split(s)"
        )

    def render(self, console: Console, max_per_check: int = 5) -> None:
        """Print a table grouped by check (count and the first findings of each), then the summary."""
        from rich.markup import escape
        from rich.table import Table

        style = {"error": "red", "warning": "yellow", "info": "cyan"}
        table = Table(title="maskkit validate", show_lines=False, expand=False)
        table.add_column("check", no_wrap=True)
        table.add_column("severity", no_wrap=True)
        table.add_column("count", justify="right")
        table.add_column("where")
        table.add_column("problem")
        groups = self.by_check()
        for chk in self.checks:
            found = groups.get(chk.code, [])
            if not found:
                continue
            sev = f"[{style[chk.severity]}]{chk.severity}[/]"
            head = f"[bold]{chk.code}[/] {chk.name}"
            shown = found[: max(max_per_check, 0)]
            if not shown:
                table.add_row(head, sev, str(len(found)), "", escape(chk.description))
            for i, f in enumerate(shown):
                first = i == 0
                table.add_row(head if first else "", sev if first else "", str(len(found)) if first else "",
                              escape(f.where(short=True)), escape(f.message))
            if len(found) > len(shown) and shown:
                table.add_row("", "", "", "", f"[dim]... and {len(found) - len(shown)} more[/]")
            table.add_section()
        if self.findings:
            console.print(table)
        colour = "green" if self.ok else "red"
        console.print(f"[{colour}]{escape(self.summary())}[/]")
