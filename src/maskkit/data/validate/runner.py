"""Running the registered checks over a dataset's splits and collecting a :class:`ValidationReport`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from maskkit.data.annotations import AnnotationSet, ImageRecord
from maskkit.data.validate import (  # noqa: F401 (each check module registers its checks on import)
    checks_annotations,
    checks_categories,
    checks_images,
    checks_paths,
    checks_reader,
    checks_splits,
)
from maskkit.data.validate.context import (
    DatasetContext,
    ImageContext,
    ImageFacts,
    SplitContext,
    Uninterpretable,
    ValidateOptions,
)
from maskkit.data.validate.facts import read_facts
from maskkit.data.validate.registry import CHECKS, INTERNAL, INVALID, Check, Hit
from maskkit.data.validate.report import Finding, ValidationReport

PROGRESS_MIN_IMAGES = 200
"""A progress bar is shown (when asked for) only for datasets with more images than this."""


def all_checks() -> list[Check]:
    """Every registered check (plus the runner's ``invalid-annotation``), sorted by code number."""
    return sorted([*CHECKS, INVALID, INTERNAL], key=_code_number)


def _code_number(chk: Check) -> tuple[int, str]:
    digits = "".join(ch for ch in chk.code if ch.isdigit())
    return (int(digits) if digits else 0, chk.code)


def validate_dataset(
    splits: Mapping[str, AnnotationSet] | AnnotationSet,
    options: ValidateOptions | None = None,
    *,
    checks: Sequence[Check] | None = None,
    progress: bool = False,
    problems: Mapping[str, tuple[str, str | None]] | None = None,
) -> ValidationReport:
    """Run the checks on every split (``{"train": aset, "val": aset}``) and return the report.

    Never raises for bad data: a record field that cannot be interpreted becomes an ``E200
    invalid-annotation`` finding; a check crashing otherwise (a bug) an ``E000 internal-error``
    one. ``problems`` are the dataset's own (``DatasetSplits.problems``). ``progress`` shows a
    bar on stderr for large datasets.
    """
    options = options or ValidateOptions()
    if isinstance(splits, AnnotationSet):
        splits = {"data": splits}
    selected = sorted(checks, key=_code_number) if checks is not None else all_checks()
    missing = [c for c in (INVALID, INTERNAL) if c not in selected]
    if missing:
        selected = sorted([*selected, *missing], key=_code_number)
    by_scope = {s: [c for c in selected if c.scope == s] for s in ("instance", "image", "split", "dataset")}
    ctx = DatasetContext([SplitContext(name, aset, options) for name, aset in splits.items()], options,
                         dict(problems or {}))
    want_phash = options.hashes and len(ctx.splits) > 1 and any("phash" in c.needs for c in selected)

    findings: list[Finding] = []
    n_images = sum(len(s.aset.images) for s in ctx.splits)
    with _progress(n_images, progress and n_images > PROGRESS_MIN_IMAGES) as advance:
        for split in ctx.splits:
            split.facts = list(_read_all_facts(split.aset, options.hashes, want_phash, advance))
        for split in ctx.splits:
            for i in range(len(split.aset.images)):
                findings.extend(_check_image(ImageContext(split, i), by_scope["image"], by_scope["instance"]))
                advance("checking annotations")
    for split in ctx.splits:
        for chk in by_scope["split"]:
            findings.extend(_run(chk, split, split=split.name, file=split.annotation_file))
    for chk in by_scope["dataset"]:
        first = ctx.splits[0] if ctx.splits else None
        findings.extend(_run(chk, ctx, split=first.name if first else None, file=None))

    order = {c.code: i for i, c in enumerate(selected)}
    findings.sort(key=lambda f: order.get(f.code, len(order)))
    stats = {
        "splits": len(ctx.splits),
        "images": n_images,
        "instances": sum(len(r.instances) for s in ctx.splits for r in s.aset.images),
    }
    return ValidationReport(findings, selected, stats)


def _read_all_facts(
    aset: AnnotationSet, hashes: bool, phash: bool, advance: Callable[[str], None]
) -> Iterator[ImageFacts]:
    def one(record: ImageRecord) -> ImageFacts:
        name: object = record.file_name  # read from an annotation file: any JSON value
        if not isinstance(name, str) or not name:
            return ImageFacts(path=None, error=f"file name {name!r} is not a file name"[:200])
        try:
            return read_facts(aset, record, hashes, phash)
        except Exception as exc:  # a bug: reported as an internal error with its cause
            return ImageFacts(path=None, crash=f"reading the image facts crashed: {type(exc).__name__}: {exc}")

    workers = min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # decoding and hashing release the GIL
        for facts in pool.map(one, aset.images):
            advance("reading images")
            yield facts


def _check_image(img: ImageContext, image_checks: list[Check], instance_checks: list[Check]) -> list[Finding]:
    rec, split = img.record, img.split.name
    out: list[Finding] = []
    facts = img.facts
    if facts is not None and facts.crash:
        out.append(_finding(INTERNAL, Hit(facts.crash), split, rec, None, img.annotation_file))
    for chk in image_checks:
        out.extend(_run(chk, img, split=split, record=rec, file=img.annotation_file))
    try:
        views = img.views
    except Uninterpretable as exc:
        return [*out, _finding(INVALID, Hit(_crash(None, exc)), split, rec, None, img.annotation_file)]
    for view in views:
        try:
            ann_id = view.ann_id
        except Uninterpretable:
            ann_id = None
        for chk in instance_checks:
            out.extend(_run(chk, view, split=split, record=rec, file=img.annotation_file, annotation_id=ann_id))
    return _dedupe_invalid(out)


def _run(chk: Check, scope: object, *, split: str | None, file: str | None,
         record: ImageRecord | None = None, annotation_id: int | None = None) -> list[Finding]:
    """Run one check on one scope: uninterpretable data becomes an ``invalid-annotation`` finding,
    any other exception an ``internal-error`` one (with the exception)."""
    out = []
    try:
        for hit in chk.func(scope):
            out.append(_finding(chk, hit, split, record, annotation_id, file))
    except Uninterpretable as exc:
        out.append(_finding(INVALID, Hit(_crash(chk, exc)), split, record, annotation_id, file))
    except Exception as exc:  # a bug in the check: reported with the exception, never hidden
        message = f"check {chk.code} {chk.name} crashed: {type(exc).__name__}: {exc}"[:500]
        out.append(_finding(INTERNAL, Hit(message), split, record, annotation_id, file))
    return out


def _crash(chk: Check | None, exc: Exception) -> str:
    during = f" (while checking {chk.name})" if chk is not None else ""
    return f"{exc}{during}"


def _dedupe_invalid(findings: list[Finding]) -> list[Finding]:
    """Keep one ``invalid-annotation`` finding per annotation (several checks may trip on it)."""
    seen: set[tuple[int | None, int | None]] = set()
    out = []
    for f in findings:
        if f.code == INVALID.code:
            key = (f.image_id, f.annotation_id)
            if key in seen:
                continue
            seen.add(key)
        out.append(f)
    return out


def _finding(chk: Check, hit: str | Hit, split: str | None, record: ImageRecord | None,
             annotation_id: int | None, file: str | None) -> Finding:
    if isinstance(hit, str):
        hit = Hit(hit)
    rec = hit.record or record
    return Finding(
        code=chk.code,
        name=chk.name,
        severity=chk.severity,
        split=hit.split or split,
        file=hit.file or (rec.source if rec is not None and rec.source else None) or file,
        image_id=_int_or_none(rec.id) if rec is not None else None,
        image=str(rec.file_name) if rec is not None else None,
        annotation_id=_int_or_none(hit.annotation_id if hit.annotation_id is not None else annotation_id),
        message=hit.message,
    )


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A rich progress bar on stderr over two passes (reading images, checking annotations)."""
    if not enabled:
        yield lambda _stage: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def advance(stage: str) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.advance(tasks[stage])

        yield advance

