"""Evaluation: COCO box/mask AP, instance matching, panoptic quality, Boundary AP, semantic metrics.

Entry points: :class:`InstanceEvaluator` (streaming, Detectron2-style ``process``/``evaluate``),
:func:`coco_evaluate` (one COCO evaluation of dicts), :func:`read_results` (validated COCO results
files), :func:`write_outputs` (``metrics.json``, CSVs, plots) and ``maskkit eval``.
"""

from maskkit.evaluation.coco import STAT_KEYS, CocoEvalResult, coco_evaluate, normalise_max_dets
from maskkit.evaluation.evaluator import DatasetEvaluator, Evaluators, InstanceEvaluator
from maskkit.evaluation.report import print_report, write_metrics_json, write_outputs
from maskkit.evaluation.results import read_results, write_results

__all__ = [
    "STAT_KEYS",
    "CocoEvalResult",
    "DatasetEvaluator",
    "Evaluators",
    "InstanceEvaluator",
    "coco_evaluate",
    "normalise_max_dets",
    "print_report",
    "read_results",
    "write_metrics_json",
    "write_outputs",
    "write_results",
]
