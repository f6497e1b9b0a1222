"""Dataset validation: named checks with stable codes, run over all splits, reported as findings.

``validate_dataset({"train": aset, "val": aset2})`` returns a :class:`ValidationReport`
(``.findings``, ``.counts``, ``.exit_code``, ``.to_json()``). Checks live in the ``checks_*``
modules, each a small function registered with :func:`~maskkit.data.validate.registry.check`.
"""

from maskkit.data.validate.context import ValidateOptions
from maskkit.data.validate.registry import CHECKS, Check, Hit, check
from maskkit.data.validate.report import Finding, ValidationReport
from maskkit.data.validate.runner import all_checks, validate_dataset

__all__ = [
    "CHECKS",
    "Check",
    "Finding",
    "Hit",
    "ValidateOptions",
    "ValidationReport",
    "all_checks",
    "check",
    "validate_dataset",
]
