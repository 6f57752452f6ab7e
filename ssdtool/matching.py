"""Order-independent comparison of two detection sets (parity gate, INT8 guard, engine agreement tests).

Two engines may swap near-tied scores, so detections are matched greedily by label and IoU, highest reference
score first, rather than compared row by row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RawDetections:
    """Network-level detections: boxes [N,4] xyxy normalized, labels [N] (model label ids), scores [N]."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    @classmethod
    def from_outputs(cls, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                     min_score: float = 0.0) -> RawDetections:
        """From batch-1 output tensors; drops padded rows (score 0) and rows at or below ``min_score``."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        keep = scores > min_score
        return cls(boxes[keep], labels[keep], scores[keep])

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [N,4] with every box in ``b`` [M,4] (xyxy)."""
    a = a.astype(np.float64)[:, None, :]
    b = b.astype(np.float64)[None, :, :]
    inter_w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    inter_h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = inter_w * inter_h
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@dataclass(frozen=True)
class MatchReport:
    reference_count: int
    candidate_count: int
    matched: int
    max_box_diff: float
    max_score_diff: float
    unmatched_reference: tuple[int, ...] = field(default=())

    @property
    def recall(self) -> float:
        """Share of reference detections found in the candidate set (1.0 when both are empty)."""
        return 1.0 if self.reference_count == 0 else self.matched / self.reference_count

    def to_dict(self) -> dict[str, float | int]:
        return {"reference": self.reference_count, "candidate": self.candidate_count, "matched": self.matched,
                "recall": round(self.recall, 6), "max_box_diff": self.max_box_diff,
                "max_score_diff": self.max_score_diff}


def match_detections(reference: RawDetections, candidate: RawDetections, iou_threshold: float = 0.5
                     ) -> MatchReport:
    """Greedy one-to-one matching by equal label and best IoU (>= ``iou_threshold``)."""
    used = np.zeros(len(candidate), dtype=bool)
    ious = iou_matrix(reference.boxes, candidate.boxes) if len(reference) and len(candidate) else None
    matched, box_diff, score_diff, missing = 0, 0.0, 0.0, []
    for index in np.argsort(-reference.scores, kind="stable"):
        if ious is None:
            missing.append(int(index))
            continue
        options = np.where((candidate.labels == reference.labels[index]) & ~used, ious[index], -1.0)
        best = int(np.argmax(options))
        if options[best] < iou_threshold:
            missing.append(int(index))
            continue
        used[best] = True
        matched += 1
        box_diff = max(box_diff, float(np.max(np.abs(candidate.boxes[best] - reference.boxes[index]))))
        score_diff = max(score_diff, float(abs(candidate.scores[best] - reference.scores[index])))
    return MatchReport(reference_count=len(reference), candidate_count=len(candidate), matched=matched,
                       max_box_diff=box_diff, max_score_diff=score_diff, unmatched_reference=tuple(missing))
