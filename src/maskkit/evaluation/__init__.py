"""Evaluation: COCO box/mask AP, instance matching, panoptic quality, Boundary AP, semantic metrics.

Entry points: :class:`InstanceEvaluator` (streaming, Detectron2-style ``process``/``evaluate``; the
composition of one ``DatasetEvaluator`` per metric family, see :mod:`maskkit.evaluation.evaluator`),
:func:`inference_on_dataset` (the predict-then-evaluate loop),
:func:`coco_evaluate` (one COCO evaluation of dicts), :func:`read_results` (validated COCO results
files), :func:`write_outputs` (``metrics.json``, CSVs, plots) and ``maskkit eval``.
"""

from maskkit.evaluation.ap import BoundaryEvaluator, COCOEvaluator
from maskkit.evaluation.base import DatasetEvaluator, Evaluators, ImageEvaluator, ImageStore
from maskkit.evaluation.coco import STAT_KEYS, CocoEvalResult, coco_evaluate, normalise_max_dets
from maskkit.evaluation.confusion import ConfusionEvaluator
from maskkit.evaluation.evaluator import InstanceEvaluator, build_evaluators, build_metrics, inference_on_dataset
from maskkit.evaluation.matching import MatchingEvaluator
from maskkit.evaluation.panoptic import PanopticEvaluator
from maskkit.evaluation.report import print_report, write_metrics_json, write_outputs
from maskkit.evaluation.results import read_results, write_results
from maskkit.evaluation.semantic import SemanticEvaluator

__all__ = [
    "STAT_KEYS",
    "BoundaryEvaluator",
    "COCOEvaluator",
    "CocoEvalResult",
    "ConfusionEvaluator",
    "DatasetEvaluator",
    "Evaluators",
    "ImageEvaluator",
    "ImageStore",
    "InstanceEvaluator",
    "MatchingEvaluator",
    "PanopticEvaluator",
    "SemanticEvaluator",
    "build_evaluators",
    "build_metrics",
    "coco_evaluate",
    "inference_on_dataset",
    "normalise_max_dets",
    "print_report",
    "read_results",
    "write_metrics_json",
    "write_outputs",
    "write_results",
]
