"""What an evaluation returns: :class:`RunResult` per configuration and the :class:`EvalReport` (``--json``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ssdtool.evaluation.metrics import CocoMetrics


@dataclass(frozen=True)
class RunResult:
    """One configuration's outcome. :attr:`detections` are its COCO results records (not in :meth:`to_dict`;
    read on use, from the results file for a model run)."""

    configuration: str
    model: str | None
    backend: str | None
    precision: str | None
    inference_precision: str | None
    inference_precision_requested: str | None
    device: str | None
    metrics: CocoMetrics
    images_per_second: float | None
    seconds: float
    delta_ap: float | None
    load_detections: Callable[[], list[dict[str, Any]]] = field(repr=False, compare=False, default=list)

    @property
    def detections(self) -> list[dict[str, Any]]:
        return self.load_detections()

    @property
    def best_threshold(self) -> dict[str, float] | None:
        """The F1-best score threshold (:class:`~ssdtool.evaluation.curves.BestThreshold`) when curves were
        computed (plots or report) and anything was found; else None."""
        curves = self.metrics.curves
        if curves is None or curves.thresholds.best is None:
            return None
        return curves.thresholds.best.to_dict()

    def to_dict(self, per_class: bool = False, names: Mapping[int, str] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"configuration": self.configuration, "model": self.model, "backend": self.backend,
                "precision": self.precision, "inference_precision": self.inference_precision,
                "inference_precision_requested": self.inference_precision_requested, "device": self.device,
                "metrics": self.metrics.to_dict(), "images_per_second": self.images_per_second,
                "engine_seconds": self.seconds, "coco_eval_seconds": self.metrics.seconds,
                "coco_eval": self.metrics.scorer, "delta_ap": self.delta_ap, "threshold": self.best_threshold}
        if per_class:
            data["per_class"] = [{"category_id": k, "name": (names or {}).get(k, ""), "AP": v}
                                 for k, v in self.metrics.per_class.items()]
        return data


@dataclass(frozen=True)
class EvalReport:
    """What ``ssdtool eval --json`` prints: the first configuration's fields at the top, every configuration
    under ``compare`` when there were several, and what happened to the images.

    ``annotations`` is None for agreement AP (``agreement``: the reference configuration, its minimum score and
    the boxes it made); ``baseline`` is the index of the run ΔAP is measured against (the first, or the
    reference)."""

    annotations: str | None
    images_dir: str | None
    source: str
    runs: list[RunResult]
    images_listed: int
    images_selected: int
    images_evaluated: int
    missing: list[str]
    failed: list[tuple[str, str]]
    size_mismatches: list[str]
    unknown_categories: list[int]
    dropped_detections: int
    references: dict[str, Any] | None
    results_file: str | None
    categories: Mapping[int, str] = field(default_factory=dict)
    #: The ``save_detections`` files written: (path, records).
    saved_detections: list[tuple[str, int]] = field(default_factory=list)
    agreement: dict[str, Any] | None = None
    baseline: int = 0
    #: The plot files (PNG and CSV) written, and the report file.
    plots: list[str] = field(default_factory=list)
    report_file: str | None = None

    @property
    def images_skipped(self) -> int:
        return len(self.missing) + len(self.failed)

    def to_dict(self, per_class: bool = False) -> dict[str, Any]:
        first = self.runs[0].to_dict(per_class, self.categories)
        data: dict[str, Any] = {**first, "source": self.source, "annotations": self.annotations,
                                "images_dir": self.images_dir, "images_listed": self.images_listed,
                                "images_selected": self.images_selected, "images_evaluated": self.images_evaluated,
                                "images_skipped": self.images_skipped, "missing_images": self.missing,
                                "failed_images": [{"file": f, "error": e} for f, e in self.failed],
                                "size_mismatches": self.size_mismatches,
                                "unknown_categories": self.unknown_categories,
                                "dropped_detections": self.dropped_detections, "references": self.references,
                                "results_file": self.results_file, "agreement": self.agreement,
                                "baseline": self.runs[self.baseline].configuration, "plots": self.plots,
                                "report": self.report_file}
        if len(self.runs) > 1:
            data["compare"] = [run.to_dict(per_class, self.categories) for run in self.runs]
        return data
