"""The data behind eval's plots, read from a finished pycocotools ``COCOeval`` (after ``accumulate``).

* **Precision-recall curves** at IoU 0.50 and averaged over 0.50:0.95: COCOeval's own ``eval["precision"]``
  ([IoU thresholds, 101 recall points, categories, area ranges, max detections]) at area ``all`` and 100
  detections, averaged over the categories that have ground truth (COCOeval's -1 marks the others) at each recall
  point. The mean of a curve over its 101 points is COCOeval's AP50 / AP (``stats[1]`` / ``stats[0]``): the same
  numbers, averaged in another order.
* **Precision, recall and F1 against the score threshold**: what ``ssdtool detect --threshold T`` would score,
  for T = 0.00, 0.01, ..., 1.00. From COCOeval's per-image matches (``evalImgs``) at IoU 0.50, area ``all``, 100
  detections per image and category, all categories pooled (detect's threshold is one number for every class):
  a detection is a true positive when COCOeval matched it, a false positive when it did not, and neither when
  COCOeval ignores it (matched to a crowd region); the ground truth is every box COCOeval does not ignore.
  COCOeval matches greedily in score order, so the detections above T are matched exactly as in a run that drops
  those below T: the counts at T are that run's. Scores compare with T in float32, as detect compares them.
  ``precision`` is None where no detection is kept, ``recall`` where there is no ground truth.

numpy only; pycocotools' objects are read, never changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The score thresholds of the threshold curve: what a user can type, 0.00 to 1.00 in steps of 0.01.
THRESHOLDS: tuple[float, ...] = tuple(round(step / 100, 2) for step in range(101))

#: The IoU threshold of the threshold curve.
THRESHOLD_IOU = 0.5


@dataclass(frozen=True)
class PrCurve:
    """Precision at each of COCOeval's recall points (``recall``: 0.00, 0.01, ..., 1.00), for ``iou`` "0.50" or
    "0.50:0.95"; None throughout when no category has ground truth."""

    iou: str
    recall: tuple[float, ...]
    precision: tuple[float | None, ...]


@dataclass(frozen=True)
class ThresholdPoint:
    """What detect would score at ``threshold``: the detections kept (``true_positives`` of them matched)."""

    threshold: float
    detections: int
    true_positives: int
    precision: float | None
    recall: float | None
    f1: float | None


@dataclass(frozen=True)
class BestThreshold:
    """The highest F1 on the grid: at ``threshold`` (the lowest grid value reaching it) and every grid value up to
    ``threshold_max``, which keep the same detections."""

    threshold: float
    threshold_max: float
    precision: float
    recall: float
    f1: float

    def to_dict(self) -> dict[str, float]:
        return {"threshold": self.threshold, "threshold_max": self.threshold_max, "precision": self.precision,
                "recall": self.recall, "f1": self.f1}


@dataclass(frozen=True)
class ThresholdCurve:
    """Precision, recall and F1 against the score threshold (see the module's docstring); ``best`` is None when
    no threshold finds anything (no ground truth, or no match at all)."""

    iou: float
    ground_truth: int
    points: tuple[ThresholdPoint, ...]
    best: BestThreshold | None


@dataclass(frozen=True)
class Curves:
    """Everything eval plots for one configuration."""

    pr: tuple[PrCurve, ...]
    thresholds: ThresholdCurve


def curves_from(evaluator: Any) -> Curves:
    """The curves of a pycocotools ``COCOeval`` that ran ``evaluate()`` and ``accumulate()`` with COCO's default
    parameters (IoU 0.50:0.05:0.95, area ``all`` first, max detections ending in 100)."""
    params = evaluator.params
    if not (np.isclose(params.iouThrs[0], THRESHOLD_IOU) and params.areaRngLbl[0] == "all"):
        raise ValueError("curves need COCOeval's default parameters (IoU thresholds from 0.50, area 'all' first)")
    return Curves(pr=pr_curves(evaluator.eval["precision"], params.recThrs),
                  thresholds=threshold_curve(evaluator.evalImgs, len(params.areaRng), len(params.imgIds)))


def pr_curves(precision: np.ndarray, recall_points: Sequence[float]) -> tuple[PrCurve, ...]:
    """The curves at IoU 0.50 and over 0.50:0.95 from COCOeval's ``precision`` array (area all, 100 detections)."""
    table = precision[:, :, :, 0, -1]  # [T, R, K]
    recall = tuple(float(r) for r in recall_points)
    return (PrCurve("0.50", recall, _category_mean(table[0:1])), PrCurve("0.50:0.95", recall, _category_mean(table)))


def _category_mean(table: np.ndarray) -> tuple[float | None, ...]:
    """Per recall point, the mean over IoU thresholds and categories of the entries COCOeval filled (> -1)."""
    valid = table > -1
    counts = valid.sum(axis=(0, 2))
    sums = np.where(valid, table, 0.0).sum(axis=(0, 2))
    return tuple(float(s / n) if n else None for s, n in zip(sums, counts, strict=True))


def threshold_curve(eval_images: Sequence[dict[str, Any] | None], areas: int, images: int) -> ThresholdCurve:
    """Precision, recall and F1 at :data:`THRESHOLDS` from COCOeval's ``evalImgs`` (ordered category, area range,
    image; ``areas`` area ranges with ``all`` first, ``images`` images), at its first IoU threshold (0.50)."""
    scores, matched = [], []
    ground_truth = 0
    block = areas * images
    for start in range(0, len(eval_images), block) if block else ():
        for item in eval_images[start:start + images]:  # area "all" of this category
            if item is None:
                continue
            ground_truth += int(np.count_nonzero(np.asarray(item["gtIgnore"]) == 0))
            if len(item["dtScores"]):  # dtMatches and dtIgnore: [IoU thresholds, detections]
                kept = ~np.asarray(item["dtIgnore"], dtype=bool)[0]
                scores.append(np.asarray(item["dtScores"], dtype=np.float32)[kept])
                matched.append((np.asarray(item["dtMatches"])[0] > 0)[kept])
    return _curve(np.concatenate(scores) if scores else np.zeros(0, np.float32),
                  np.concatenate(matched) if matched else np.zeros(0, bool), ground_truth)


def _curve(scores: np.ndarray, matched: np.ndarray, ground_truth: int) -> ThresholdCurve:
    order = np.argsort(-scores, kind="stable")
    scores, matched = scores[order], matched[order]
    true_cumulative = np.concatenate([[0], np.cumsum(matched)])
    points = []
    for threshold in THRESHOLDS:
        kept = int(np.searchsorted(-scores, -np.float32(threshold), side="right"))  # scores >= threshold
        hits = int(true_cumulative[kept])
        precision = hits / kept if kept else None
        recall = hits / ground_truth if ground_truth else None
        f1 = None if precision is None or recall is None else \
            (2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0)
        points.append(ThresholdPoint(threshold, kept, hits, precision, recall, f1))
    return ThresholdCurve(THRESHOLD_IOU, ground_truth, tuple(points), _best(points))


def _best(points: list[ThresholdPoint]) -> BestThreshold | None:
    scored = [p for p in points if p.f1 is not None and p.f1 > 0]
    if not scored:
        return None
    top = max(p.f1 for p in scored)  # type: ignore[type-var]
    first = next(k for k, p in enumerate(points) if p.f1 == top)
    last = first
    while last + 1 < len(points) and (points[last + 1].detections, points[last + 1].true_positives) == \
            (points[first].detections, points[first].true_positives):
        last += 1
    best = points[first]
    assert best.precision is not None and best.recall is not None and best.f1 is not None
    return BestThreshold(best.threshold, points[last].threshold, best.precision, best.recall, best.f1)
