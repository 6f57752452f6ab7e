"""COCO box metrics with pycocotools' COCOeval: the twelve summary stats and per-class AP.

pycocotools is the reference every anchor uses (MLCommons' accuracy-coco.py, OMZ's ``coco_orig_precision``,
ultralytics' ``val`` for its official numbers), so ssdtool runs it itself rather than a re-implementation:
the numbers are pycocotools' by construction. It is imported on first use (the ``eval`` extra).

pycocotools reports through ``print()``. Library code never prints and never swaps ``sys.stdout``, so a module-level
``print`` is put into pycocotools' two modules that forwards their lines to ssdtool's debug log; this touches
pycocotools' namespace only, nothing process-wide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ssdtool.errors import DependencyError
from ssdtool.evaluation.dataset import CocoDataset

log = logging.getLogger("ssdtool.evaluation.metrics")

#: The names of COCOeval's twelve ``stats``, in its order (fractions in [0, 1]).
STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

#: What each stat is, as COCOeval's summary line says it.
STAT_MEANINGS: Mapping[str, str] = {
    "AP": "AP @ IoU 0.50:0.95, all areas, 100 detections per image (the COCO mAP; MLPerf's metric)",
    "AP50": "AP @ IoU 0.50, all areas, 100 detections",
    "AP75": "AP @ IoU 0.75, all areas, 100 detections",
    "APs": "AP @ IoU 0.50:0.95, small objects (area < 32^2)",
    "APm": "AP @ IoU 0.50:0.95, medium objects (32^2 .. 96^2)",
    "APl": "AP @ IoU 0.50:0.95, large objects (area > 96^2)",
    "AR1": "AR @ IoU 0.50:0.95, all areas, 1 detection per image",
    "AR10": "AR @ IoU 0.50:0.95, all areas, 10 detections per image",
    "AR100": "AR @ IoU 0.50:0.95, all areas, 100 detections per image",
    "ARs": "AR @ IoU 0.50:0.95, small objects, 100 detections",
    "ARm": "AR @ IoU 0.50:0.95, medium objects, 100 detections",
    "ARl": "AR @ IoU 0.50:0.95, large objects, 100 detections",
}


@dataclass(frozen=True)
class CocoMetrics:
    """The twelve stats by name (None where COCOeval has nothing to average: its -1, e.g. no small objects),
    per-class AP by COCO category id (None for a category without ground truth in the evaluated images), and the
    seconds COCOeval took."""

    stats: Mapping[str, float | None]
    per_class: Mapping[int, float | None]
    seconds: float

    def to_dict(self) -> dict[str, float | None]:
        return dict(self.stats)


def _quiet(module: ModuleType) -> None:
    def forward(*args: object, **_kwargs: object) -> None:
        log.debug("pycocotools: %s", " ".join(str(a) for a in args))

    module.print = forward  # type: ignore[attr-defined]


def pycocotools() -> tuple[Any, Any]:
    """``(COCO, COCOeval)``, imported on first use; :class:`DependencyError` names the extra when missing."""
    try:
        from pycocotools import coco, cocoeval
    except ImportError as exc:
        raise DependencyError(f"cannot import pycocotools: {exc}",
                              hint="install it with: pip install 'ssdtool[eval]'") from exc
    _quiet(coco)
    _quiet(cocoeval)
    return coco.COCO, cocoeval.COCOeval


def ground_truth(dataset: CocoDataset) -> Any:
    """A pycocotools ``COCO`` object over the checked document."""
    coco_class, _ = pycocotools()
    gt = coco_class()
    gt.dataset = dataset.data
    gt.createIndex()
    return gt


def _as_fraction(value: float) -> float | None:
    return None if value < 0 else float(value)


def evaluate_detections(dataset: CocoDataset, detections: Iterable[Mapping[str, Any]], image_ids: Sequence[int],
                        gt: Any | None = None) -> CocoMetrics:
    """COCOeval (``bbox``) of COCO results records over ``image_ids`` (only those images count: a subset, or a run
    that skipped missing images, is scored on what ran). Records are copied; the caller's stay as they were."""
    coco_class, cocoeval_class = pycocotools()
    started = time.perf_counter()
    gt = gt if gt is not None else ground_truth(dataset)
    # An empty segmentation: loadRes would otherwise add a polygon per detection, which box IoU never reads (about
    # 400 bytes each, 400 MB for val2017 at 200 detections an image)
    records = [{"image_id": r["image_id"], "category_id": r["category_id"], "bbox": list(r["bbox"]),
                "score": r["score"], "segmentation": []} for r in detections]
    if records:
        results = gt.loadRes(records)
    else:  # loadRes cannot take an empty list (it reads records[0]); the same object, built by hand
        results = coco_class()
        results.dataset = {"images": list(gt.dataset["images"]), "annotations": [],
                           "categories": list(gt.dataset.get("categories", []))}
        results.createIndex()
    evaluator = cocoeval_class(gt, results, "bbox")
    evaluator.params.imgIds = sorted(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = {name: _as_fraction(value) for name, value in zip(STAT_NAMES, evaluator.stats, strict=True)}
    precision = evaluator.eval["precision"]  # [IoU thresholds, recall points, categories, areas, max dets]
    per_class: dict[int, float | None] = {}
    for k, category in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        valid = values[values > -1]
        per_class[int(category)] = float(valid.mean()) if valid.size else None
    return CocoMetrics(stats=stats, per_class=per_class, seconds=time.perf_counter() - started)
