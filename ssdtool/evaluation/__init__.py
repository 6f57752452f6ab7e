"""COCO evaluation: annotation files (dataset), configurations, the runner, metrics, references, MLPerf logs, agreement
AP, plots and the report.

The public call is :func:`evaluate` (``ssdtool.evaluate``); docs/eval.md describes the command and the rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssdtool.lazy import lazy_attributes

if TYPE_CHECKING:
    from ssdtool.evaluation.api import evaluate, select_images
    from ssdtool.evaluation.configurations import Configuration, parse_configurations
    from ssdtool.evaluation.dataset import CocoDataset, EvalImage, check_annotations, load_annotations
    from ssdtool.evaluation.metrics import STAT_NAMES, CocoMetrics, evaluate_detections
    from ssdtool.evaluation.report import EvalReport, RunResult
    from ssdtool.evaluation.runner import EvalProgress

# Names resolve on first use: the scoring core (dataset, metrics, agreement) sits a layer below the rest of the
# package (docs/architecture.md), and a build step importing it (INT8 accuracy control) must not load the model run,
# the engines and the converter through this package's __init__.
_LAZY = {
    **dict.fromkeys(("evaluate", "select_images"), "ssdtool.evaluation.api"),
    **dict.fromkeys(("Configuration", "parse_configurations"), "ssdtool.evaluation.configurations"),
    **dict.fromkeys(("CocoDataset", "EvalImage", "check_annotations", "load_annotations"),
                    "ssdtool.evaluation.dataset"),
    **dict.fromkeys(("STAT_NAMES", "CocoMetrics", "evaluate_detections"), "ssdtool.evaluation.metrics"),
    **dict.fromkeys(("EvalReport", "RunResult"), "ssdtool.evaluation.report"),
    "EvalProgress": "ssdtool.evaluation.runner",
}

__all__ = ["STAT_NAMES", "CocoDataset", "CocoMetrics", "Configuration", "EvalImage", "EvalProgress", "EvalReport",
           "RunResult", "check_annotations", "evaluate", "evaluate_detections", "load_annotations",
           "parse_configurations", "select_images"]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
