"""COCO evaluation: annotation files (dataset), configurations, the runner, metrics, references, MLPerf logs.

The public call is :func:`evaluate` (``ssdtool.evaluate``); docs/eval.md describes the command and the rules.
"""

from __future__ import annotations

from ssdtool.evaluation.api import EvalReport, RunResult, evaluate, select_images
from ssdtool.evaluation.configurations import Configuration, parse_configurations
from ssdtool.evaluation.dataset import CocoDataset, EvalImage, check_annotations, load_annotations
from ssdtool.evaluation.metrics import STAT_NAMES, CocoMetrics, evaluate_detections
from ssdtool.evaluation.runner import EvalProgress

__all__ = ["STAT_NAMES", "CocoDataset", "CocoMetrics", "Configuration", "EvalImage", "EvalProgress", "EvalReport",
           "RunResult", "check_annotations", "evaluate", "evaluate_detections", "load_annotations",
           "parse_configurations", "select_images"]
