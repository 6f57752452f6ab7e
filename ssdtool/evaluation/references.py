"""Published accuracy of the real SSD-ResNet34 1200 model, and what each figure measures.

Shown beside a run only when the model file is MLCommons' ``resnet34-ssd1200.onnx`` (by checksum): the figures
say nothing about the synthetic twin or any other model. Sources: MLCommons inference
(``tools/accuracy-coco.py``, the submission checker's 99% rule) and Open Model Zoo's model page and
``accuracy-check.yml`` (docs/eval.md says what can and cannot be established about each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: sha256 of MLCommons' resnet34-ssd1200.onnx (models.yml, ssd-resnet34-1200-onnx).
REAL_MODEL_SHA256 = "b417a8186967f1e78670b0075aa72a10e5c7d1a6d5c08af9d13dc97f3d29ef0d"

MLPERF_TARGET_AP = 0.20
MLPERF_PASS_FRACTION = 0.99


@dataclass(frozen=True)
class Reference:
    name: str
    value: float
    comparable_to: str | None
    meaning: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


REFERENCES: tuple[Reference, ...] = (
    Reference("MLPerf target", MLPERF_TARGET_AP, "AP",
              "MLCommons' accuracy target for ssd-resnet34 (COCOeval stats[0] over the 5,000 val2017 images, "
              "tools/accuracy-coco.py); a result passes at 99% of it, AP >= 0.198"),
    Reference("OMZ coco_orig_precision", 0.1997, "AP",
              "Open Model Zoo accuracy checker: pycocotools COCOeval AP with include_boundaries False "
              "(accuracy-check.yml reference)"),
    Reference("OMZ coco_precision", 0.2073, None,
              "Open Model Zoo accuracy checker's own COCO-style AP (IoU .50:.95, 101 points, 20 detections per "
              "class per image, no area ranges): close to, but not, COCOeval AP (model page: 20.7198%)"),
    Reference("OMZ page mAP", 0.392752, None,
              "the model page's \"mAP 39.2752%\": no committed config produces it; most likely the checker's "
              "VOC-style mAP at IoU 0.5 (near AP50, not equal to it); not established"),
)


def applies_to(sha256: str | None) -> bool:
    """True when the evaluated model file is the real MLCommons model."""
    return sha256 == REAL_MODEL_SHA256


def mlperf_verdict(ap: float | None) -> dict[str, Any]:
    """MLPerf's rule on ``ap``: pass at 99% of the 0.20 target."""
    threshold = round(MLPERF_TARGET_AP * MLPERF_PASS_FRACTION, 6)
    return {"target": MLPERF_TARGET_AP, "threshold": threshold,
            "passed": None if ap is None else ap >= threshold}


def references_for(sha256: str | None, ap: float | None) -> dict[str, Any] | None:
    """The references and the MLPerf verdict for a run of the model with ``sha256``, None for other models."""
    if not applies_to(sha256):
        return None
    return {"mlperf": mlperf_verdict(ap), "published": [r.to_dict() for r in REFERENCES]}
