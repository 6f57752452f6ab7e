"""Agreement AP (``ssdtool.evaluation.agreement``): planted models whose answers are known.

``planted`` returns tests/test_detect.py's five PLANTED detections in every image (person 0.9, car 0.8, toilet 0.7,
stop sign 0.6, person 0.3). At the default reference score 0.5 its ground truth is the first four. Two more planted
models differ from it in one known way:

* ``drop``: no toilet. Per-class AP 1, 1, 0, 1 -> AP 0.75 (AP50 and AP75 too).
* ``shift``: the toilet on default box 1040 instead of 1008, IoU 0.6899 with it: matched at the IoU thresholds
  0.50, 0.55, 0.60 and 0.65 only, so the toilet's AP is 4/10 and AP = (1 + 1 + 0.4 + 1) / 4 = 0.85; AP50 1.0, AP75
  0.75.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ssdtool.detect import Detector
from ssdtool.errors import UsageError
from ssdtool.evaluation.agreement import (
    AgreementImage,
    detections_agreement,
    pseudo_ground_truth,
    score_against,
)
from ssdtool.imaging import generated_images
from ssdtool.synthetic import PlantedDetection, TwinSpec, build_model
from tests.modelkit import install_model
from tests.test_detect import PLANTED

SIZES = ((320, 240), (240, 320), (97, 410))
TOILET = PLANTED[2]
assert (TOILET.box_index, TOILET.label) == (1008, 62)
DROP = tuple(p for p in PLANTED if p is not TOILET)
SHIFT = tuple(PlantedDetection(1040, 62, TOILET.score) if p is TOILET else p for p in PLANTED)


@dataclass(frozen=True)
class PlantedWorld:
    registry: Path
    cache: Path
    images: list[np.ndarray]

    def detections(self, model: str) -> list[list[Any]]:
        """What ``model`` finds in every image, at threshold 0 (as eval keeps them), on onnxruntime."""
        detector = Detector(model, "onnxruntime", threshold=0.0, cache_dir=self.cache, registry=self.registry)
        try:
            return [detector(image) for image in self.images]
        finally:
            detector.close()


@pytest.fixture(scope="module")
def planted_world(tmp_path_factory: pytest.TempPathFactory) -> PlantedWorld:
    root = tmp_path_factory.mktemp("agreement")
    registry, cache = root / "registry.yml", root / "cache"
    for name, planted in (("planted", PLANTED), ("drop", DROP), ("shift", SHIFT)):
        install_model(cache, registry, name, build_model(TwinSpec(variant="tiny", planted=planted)))
    images = [generated_images(1, seed=k, size=size)[0] for k, size in enumerate(SIZES)]
    return PlantedWorld(registry, cache, images)


@pytest.mark.parametrize(("candidate", "expected"), [
    ("planted", {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AR100": 1.0}),
    ("drop", {"AP": 0.75, "AP50": 0.75, "AP75": 0.75, "AR100": 0.75}),
    ("shift", {"AP": 0.85, "AP50": 1.0, "AP75": 0.75, "AR100": 0.85}),
])
def test_planted_models_give_the_known_agreement(planted_world: PlantedWorld, candidate: str,
                                                 expected: dict[str, float]) -> None:
    reference = planted_world.detections("planted")
    metrics = detections_agreement(reference, planted_world.detections(candidate),
                                   [(w, h) for w, h in SIZES])
    assert {name: metrics.stats[name] for name in expected} == pytest.approx(expected, abs=1e-12)
    toilet = metrics.per_class[70]  # COCO id of label 62
    assert toilet == pytest.approx({"planted": 1.0, "drop": 0.0, "shift": 0.4}[candidate], abs=1e-12)
    assert metrics.per_class[1] == pytest.approx(1.0, abs=1e-12)  # person: 0.3 ranks below the 0.9 it matches
    assert metrics.per_class[2] is None  # bicycle: no reference box, no AP


def test_the_stated_score_decides_what_is_ground_truth(planted_world: PlantedWorld) -> None:
    """At 0.75 only the person and the car are ground truth: losing or moving the toilet (0.7) costs nothing; the
    toilet is then a category without ground truth (None), not a false positive."""
    reference = planted_world.detections("planted")
    for candidate in ("drop", "shift"):
        metrics = detections_agreement(reference, planted_world.detections(candidate), list(SIZES), min_score=0.75)
        assert metrics.stats["AP"] == pytest.approx(1.0, abs=1e-12)
        assert metrics.per_class[70] is None
    truth = pseudo_ground_truth([AgreementImage(0, *SIZES[0])], _records(reference[0]), min_score=0.75)
    assert truth.annotation_count == 2
    assert sorted(a["category_id"] for a in truth.data["annotations"]) == [1, 3]


def test_pseudo_ground_truth_is_a_checked_coco_document(planted_world: PlantedWorld) -> None:
    reference = planted_world.detections("planted")
    images = [AgreementImage(k, w, h, f"{k}.png") for k, (w, h) in enumerate(SIZES)]
    records = [r for k, found in enumerate(reference) for r in _records(found, k)]
    truth = pseudo_ground_truth(images, records)
    assert truth.annotation_count == 4 * len(SIZES)  # 0.3 is below the default 0.5
    assert [(i.id, i.file_name, i.width, i.height) for i in truth.images] == [
        (k, f"{k}.png", w, h) for k, (w, h) in enumerate(SIZES)]
    first = truth.data["annotations"][0]
    assert first["bbox"] == records[0]["bbox"] and first["area"] == records[0]["bbox"][2] * records[0]["bbox"][3]
    assert first["iscrowd"] == 0 and len(truth.categories) == 80
    # Scored against itself, over a subset of the images
    metrics = score_against(truth, [r for r in records if r["image_id"] == 1], image_ids=[1])
    assert metrics.stats["AP"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("score", [0.0, -0.5, 1.5, float("nan"), float("inf")])
def test_a_reference_score_outside_0_1_is_refused(score: float) -> None:
    with pytest.raises(UsageError, match="reference score must be a number above 0 and at most 1"):
        pseudo_ground_truth([AgreementImage(0, 10, 10)], [], min_score=score)


def test_reference_records_of_unlisted_images_are_refused() -> None:
    record = {"image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.9}
    with pytest.raises(UsageError, match="image 7, which is not among the images scored"):
        pseudo_ground_truth([AgreementImage(0, 10, 10)], [record])


def test_mismatched_lists_are_refused() -> None:
    with pytest.raises(UsageError, match="one detection list per image on both sides"):
        detections_agreement([[]], [[], []], [(10, 10)])


def _records(detections: list[Any], image_id: int = 0) -> list[dict[str, Any]]:
    return [{"image_id": image_id, "category_id": d.coco_category_id, "bbox": list(d.coco_bbox), "score": d.score}
            for d in detections]
