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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import Result

from ssdtool.detect import Detector
from ssdtool.errors import UsageError
from ssdtool.evaluation import evaluate
from ssdtool.evaluation.agreement import (
    AgreementImage,
    detections_agreement,
    pseudo_ground_truth,
    score_against,
)
from ssdtool.evaluation.runner import EvalProgress
from ssdtool.imaging import generated_images
from ssdtool.synthetic import PlantedDetection, TwinSpec, build_model
from tests import test_eval
from tests.modelkit import install_model
from tests.test_detect import PLANTED
from tests.test_eval import Dataset, run_eval

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


# ---------------------------------------------------------------------------------------- ssdtool eval --reference
# test_eval's world: ``planted`` and the seeded ``tiny`` twin, five images of four sizes (one rotated by EXIF)
eval_world = test_eval.eval_world
dataset = test_eval.dataset


def agreement(dataset: Dataset, *args: str, model: str = "planted") -> Result:
    return run_eval(dataset.world, model, "--images", str(dataset.images), "--results",
                    str(dataset.folder / "a.jsonl"), *args)


def test_a_configuration_agrees_with_itself_and_with_its_twin(dataset: Dataset) -> None:
    result = agreement(dataset, "--compare", "onnxruntime,FP32:f32", "--reference", "FP32:f32", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["annotations"] is None and data["source"] == "model" and data["references"] is None
    assert data["agreement"] == {"reference": "openvino:FP32:f32", "min_score": 0.5,
                                 "ground_truth_boxes": 4 * len(dataset.sizes)}
    assert data["baseline"] == "openvino:FP32:f32"  # ΔAP is against the reference, wherever it is listed
    assert [(c["configuration"], c["metrics"]["AP"], c["delta_ap"]) for c in data["compare"]] == [
        ("onnxruntime", pytest.approx(1.0, abs=1e-12), pytest.approx(0.0, abs=1e-12)),
        ("openvino:FP32:f32", pytest.approx(1.0, abs=1e-12), pytest.approx(0.0, abs=1e-12))]
    assert data["images_evaluated"] == len(dataset.sizes) and data["images_listed"] == len(dataset.sizes)
    text = agreement(dataset, "--compare", "onnxruntime,FP32:f32", "--reference", "FP32:f32")
    assert text.stdout.splitlines()[0] == (
        f"planted: {len(dataset.sizes)} images evaluated, 0 skipped, agreement with openvino:FP32:f32 (its "
        f"{4 * len(dataset.sizes)} detections scored at least 0.5 are the ground truth: fidelity to it, not "
        "accuracy)")


def test_agreement_is_cocoeval_against_the_references_detections(dataset: Dataset) -> None:
    """The seeded twin at --reference-score 0.1: ssdtool's numbers are pycocotools' run directly, with the
    reference's saved detections scored at least 0.1 as the annotations and the images' decoded sizes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from ssdtool.labels import coco_categories

    saved = dataset.folder / "dets.json"
    result = agreement(dataset, "--compare", "FP32:f32,onnxruntime", "--reference", "FP32:f32",
                       "--reference-score", "0.1", "--save-detections", str(saved), "--json", model="tiny")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    reference = json.loads(saved.with_name("dets.openvino-FP32-f32.json").read_text())
    candidate = json.loads(saved.with_name("dets.onnxruntime.json").read_text())
    kept = [d for d in reference if d["score"] >= 0.1]
    assert data["agreement"]["ground_truth_boxes"] == len(kept) > 20
    names = sorted(p.name for p in dataset.images.iterdir())  # 000000000001.png ...: COCO ids from the names
    document = {"images": [{"id": int(Path(n).stem), "file_name": n} for n in names],
                "categories": coco_categories(),
                "annotations": [{"id": k + 1, "image_id": d["image_id"], "category_id": d["category_id"],
                                 "bbox": d["bbox"], "area": d["bbox"][2] * d["bbox"][3], "iscrowd": 0}
                                for k, d in enumerate(kept)]}
    gt = COCO()
    gt.dataset = document
    gt.createIndex()
    evaluator = COCOeval(gt, gt.loadRes(candidate), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    ours = [-1.0 if v is None else v for v in data["compare"][1]["metrics"].values()]
    assert ours == pytest.approx([float(v) for v in evaluator.stats], abs=1e-6)


def test_agreement_resumes_like_plain_eval(dataset: Dataset) -> None:
    """Same progress events, checkpoint and resume: an interrupted agreement run, resumed, gives the same JSON."""
    args = ["--compare", "FP32:f32,onnxruntime", "--reference", "FP32:f32", "--reference-score", "0.2"]
    whole = agreement(dataset, *args, "--json", model="tiny")
    assert whole.exit_code == 0, whole.output
    events: list[tuple[str, int]] = []

    class Stop(Exception):
        pass

    def stop_after_two(event: EvalProgress) -> None:
        events.append((event.phase, event.done))
        if event.phase == "evaluate" and event.done == 2:
            raise Stop

    options = {"compare": "FP32:f32,onnxruntime", "reference": "FP32:f32", "reference_score": 0.2,
               "results": dataset.folder / "cut.jsonl", "cache_dir": dataset.world.cache,
               "registry": dataset.world.registry, "checkpoint_every": 1}
    with pytest.raises(Stop):
        evaluate(None, dataset.images, "tiny", progress=stop_after_two, **options)
    assert events == [("evaluate", 0), ("evaluate", 1), ("evaluate", 2)]
    events.clear()
    resumed = evaluate(None, dataset.images, "tiny", resume=True, progress=lambda e: events.append((e.phase, e.done)),
                       **options)
    assert events == [("evaluate", 2), ("evaluate", 3), ("evaluate", 4), ("evaluate", 5), ("score", 0), ("score", 1),
                      ("score", 2)]
    expected = json.loads(whole.stdout)
    assert [r.metrics.to_dict() for r in resumed.runs] == [c["metrics"] for c in expected["compare"]]


@pytest.mark.parametrize(("args", "message"), [
    (["--compare", "FP32:f32,onnxruntime", "--reference", "FP32:f32", "--annotations", "ann.json"],
     "--reference scores agreement with a configuration's detections, --annotations accuracy"),
    (["--reference", "FP32:f32"], "--reference needs the reference and at least one other configuration"),
    (["--compare", "FP32:f32,onnxruntime", "--reference", "INT8"],
     "--reference 'INT8' (openvino:INT8:auto) is not one of the configurations compared: openvino:FP32:f32, "
     "onnxruntime"),
    (["--compare", "FP32:f32,onnxruntime", "--reference", "FP33"], "--reference: cannot read configuration 'FP33'"),
    (["--compare", "FP32:f32,onnxruntime", "--reference", "FP32:f32", "--reference-score", "0"],
     "0<x<=1"),
    ([], "no annotation file: accuracy is scored against annotations"),
])
def test_agreement_usage_errors(dataset: Dataset, args: list[str], message: str) -> None:
    if "ann.json" in args:
        args[args.index("ann.json")] = str(dataset.write(dataset.document, "ann.json"))
    result = agreement(dataset, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert not (dataset.folder / "a.jsonl").exists()


def test_a_folder_without_images_is_a_usage_error(dataset: Dataset) -> None:
    empty = dataset.folder / "empty"
    empty.mkdir()
    result = run_eval(dataset.world, "planted", "--images", str(empty), "--compare", "FP32:f32,onnxruntime",
                      "--reference", "FP32:f32")
    assert result.exit_code == 2 and f"no image files in folder {empty}" in result.stderr


def test_agreement_plots_measure_delta_against_the_reference(dataset: Dataset) -> None:
    plots = dataset.folder / "plots"
    result = agreement(dataset, "--compare", "onnxruntime,FP32:f32", "--reference", "FP32:f32", "--plots",
                       str(plots))
    assert result.exit_code == 0, result.output
    header, *rows = (plots / "per_class_delta_ap.csv").read_text().splitlines()
    assert header == "configuration,baseline,category_id,name,AP,baseline_AP,delta_AP"
    assert {tuple(row.split(",")[:2]) for row in rows} == {("onnxruntime", "openvino:FP32:f32")}
