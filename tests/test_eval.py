"""``ssdtool eval`` and ``ssdtool.evaluate`` on COCO-format datasets built around the planted tiny twin.

The planted twin returns the same five detections in every image (tests/test_detect.py's PLANTED), so ground truth
made from them is a known answer: AP 1.0 when it equals them, 0 when no category matches, and pycocotools run
directly on the same detections for anything in between.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from ssdtool.cli import cli
from ssdtool.evaluation import evaluate
from ssdtool.evaluation.runner import EvalProgress
from ssdtool.imaging import generated_images
from ssdtool.labels import COCO_CATEGORY_IDS
from ssdtool.synthetic import planted_expected
from ssdtool.synthetic.dataset import coco_categories
from tests.test_detect import PLANTED, TINY, World, _build_world

SIZES = ((320, 240), (240, 320), (300, 300), (97, 410))


def planted_boxes(width: int, height: int) -> list[tuple[int, list[float], float]]:
    """(COCO category id, [x, y, w, h] in pixels, score) of what the planted twin finds in such an image."""
    boxes, labels, scores = planted_expected(PLANTED, TINY)
    scale = np.array([width, height, width, height], dtype=np.float64)
    pixels = np.clip(boxes.astype(np.float64) * scale, 0, scale)
    return [(COCO_CATEGORY_IDS[int(label) - 1], [float(p[0]), float(p[1]), float(p[2] - p[0]), float(p[3] - p[1])],
             float(score)) for p, label, score in zip(pixels, labels, scores, strict=True)]


@dataclass
class Dataset:
    world: World
    folder: Path
    images: Path
    sizes: list[tuple[int, int]]  # upright sizes, by image id - 1
    document: dict[str, Any]

    def write(self, document: dict[str, Any] | None = None, name: str = "annotations.json") -> Path:
        path = self.folder / name
        path.write_text(json.dumps(document if document is not None else self.document))
        return path

    def annotate(self, make: Any) -> dict[str, Any]:
        """A copy of the document with annotations from ``make(image_id, width, height) -> [(cat, bbox, crowd)]``."""
        document = copy.deepcopy(self.document)
        annotations = []
        for image in document["images"]:
            width, height = self.sizes[image["id"] - 1]
            for category, bbox, crowd in make(image["id"], width, height):
                annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                                    "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": crowd})
        document["annotations"] = annotations
        return document


@pytest.fixture(scope="session")
def eval_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return _build_world(tmp_path_factory.getbasetemp() / "detect-world")


@pytest.fixture()
def dataset(eval_world: World, tmp_path: Path) -> Dataset:
    """Five images: four sizes as PNG, and a JPEG stored 200x120 with EXIF orientation 6 (upright 120x200)."""
    images = tmp_path / "images"
    images.mkdir()
    entries, sizes = [], []
    for index, (width, height) in enumerate(SIZES, start=1):
        name = f"{index:012d}.png"
        Image.fromarray(generated_images(1, seed=index, size=(width, height))[0]).save(images / name)
        entries.append({"id": index, "file_name": name, "width": width, "height": height})
        sizes.append((width, height))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    name = f"{len(SIZES) + 1:012d}.jpg"
    Image.fromarray(generated_images(1, seed=9, size=(200, 120))[0]).save(images / name, exif=exif, quality=95)
    entries.append({"id": len(SIZES) + 1, "file_name": name, "width": 120, "height": 200})
    sizes.append((120, 200))
    document = {"images": entries, "annotations": [], "categories": coco_categories()}
    return Dataset(eval_world, tmp_path, images, sizes, document)


def exact(_image_id: int, width: int, height: int) -> list[tuple[int, list[float], int]]:
    return [(category, bbox, 0) for category, bbox, _score in planted_boxes(width, height)]


def run_eval(world: World, *args: str) -> Result:
    pinned = () if "--inference-precision" in args or "--compare" in args else ("--inference-precision", "f32")
    return CliRunner().invoke(cli, world.args("eval", *args, *pinned, "--progress", "none"), catch_exceptions=False)


def api(dataset: Dataset, annotations: Path, **options: Any) -> Any:
    options.setdefault("inference_precision", "f32")
    options.setdefault("results", dataset.folder / "results.jsonl")
    return evaluate(annotations, dataset.images, "planted", cache_dir=dataset.world.cache,
                    registry=dataset.world.registry, **options)


def cocoeval(annotations: Path, detections: list[dict[str, Any]], image_ids: list[int]) -> Any:
    """pycocotools' COCOeval run directly, as MLCommons' accuracy-coco.py does (summarized)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(annotations))
    evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(detections)), "bbox")
    evaluator.params.imgIds = image_ids
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator


def pycocotools_stats(annotations: Path, detections: list[dict[str, Any]], image_ids: list[int]) -> list[float]:
    """COCOeval's twelve statistics, run directly."""
    return [float(v) for v in cocoeval(annotations, detections, image_ids).stats]


# ------------------------------------------------------------------------------------------------ known answers
@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_ground_truth_equal_to_the_planted_boxes_gives_ap_one(dataset: Dataset, backend: str) -> None:
    annotations = dataset.write(dataset.annotate(exact))
    result = run_eval(dataset.world, "planted", "--annotations", str(annotations), "--images", str(dataset.images),
                      "--backend", backend, "--json", "--results", str(dataset.folder / "r.jsonl"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["metrics"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert data["metrics"]["AP50"] == data["metrics"]["AP75"] == pytest.approx(1.0, abs=1e-12)
    assert list(data["metrics"]) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs",
                                     "ARm", "ARl"]
    assert (data["backend"], data["inference_precision"], data["device"]) == (backend, "f32", "CPU")
    assert data["precision"] == ("FP32" if backend == "openvino" else None)
    assert (data["images_evaluated"], data["images_skipped"]) == (5, 0)
    assert data["images_per_second"] > 0 and data["references"] is None  # the twin is not the real model
    assert data["size_mismatches"] == []  # the EXIF image decodes upright, as its annotation entry says


def test_disjoint_ground_truth_gives_zero(dataset: Dataset) -> None:
    """Ground truth in places and categories the model never predicts."""
    def disjoint(_image_id: int, width: int, height: int) -> list[tuple[int, list[float], int]]:
        return [(90, [0.0, 0.0, width / 4, height / 4], 0), (88, [width / 2, height / 2, width / 3, height / 3], 0)]

    report = api(dataset, dataset.write(dataset.annotate(disjoint)))
    assert report.runs[0].metrics.stats["AP"] == 0.0
    assert report.runs[0].metrics.stats["AR100"] == 0.0


def test_mixed_cases_agree_with_pycocotools(dataset: Dataset) -> None:
    """Shifted boxes, missing and extra ground truth, crowd regions, an image without annotations: ssdtool's numbers
    are pycocotools' on the same detections, to 1e-6."""
    rng = np.random.RandomState(4)

    def mixed(image_id: int, width: int, height: int) -> list[tuple[int, list[float], int]]:
        if image_id == 3:
            return []  # no annotations: its detections are false positives
        made = []
        for k, (category, (x, y, w, h), _score) in enumerate(planted_boxes(width, height)):
            if k == image_id % 5:
                continue  # a detection without ground truth: a false positive
            shift = rng.uniform(-0.3, 0.3) * w
            made.append((category, [x + shift, y, w, h * rng.uniform(0.7, 1.3)], int(k == 4 and image_id == 2)))
        made.append((1, [1.0, 1.0, width / 5, height / 5], 0))  # ground truth nobody finds
        return made

    annotations = dataset.write(dataset.annotate(mixed))
    report = api(dataset, annotations)
    run = report.runs[0]
    direct = pycocotools_stats(annotations, run.detections, [i["id"] for i in dataset.document["images"]])
    ours = [(-1.0 if v is None else v) for v in run.metrics.stats.values()]
    assert ours == pytest.approx(direct, abs=1e-6)
    assert 0.0 < run.metrics.stats["AP"] < 1.0


def test_crowd_regions_neither_count_nor_penalize(dataset: Dataset) -> None:
    """A detection on a crowd region is ignored, not a false positive; the other boxes still give AP 1.0."""
    def crowd(_image_id: int, width: int, height: int) -> list[tuple[int, list[float], int]]:
        boxes = exact(_image_id, width, height)
        category, bbox, _ = boxes[-1]
        return [*boxes[:-1], (category, bbox, 1)]

    report = api(dataset, dataset.write(dataset.annotate(crowd)))
    assert report.runs[0].metrics.stats["AP"] == pytest.approx(1.0, abs=1e-12)


def test_every_detection_is_kept_not_only_those_above_half(dataset: Dataset) -> None:
    report = api(dataset, dataset.write(dataset.annotate(exact)))
    scores = sorted({round(d["score"], 5) for d in report.runs[0].detections})
    assert scores == [0.3, 0.6, 0.7, 0.8, 0.9]  # 0.3 is below detect's display threshold
    assert len(report.runs[0].detections) == 5 * len(dataset.sizes)


def test_exif_rotation_that_the_annotations_did_not_apply_is_reported(dataset: Dataset) -> None:
    document = dataset.annotate(exact)
    document["images"][-1].update(width=200, height=120)  # the stored size, as if annotated without rotation
    report = api(dataset, dataset.write(document))
    assert report.size_mismatches == [document["images"][-1]["file_name"]]


# ------------------------------------------------------------------------------------------------ compare, resume
def test_compare_two_configurations_in_one_table(dataset: Dataset) -> None:
    annotations = dataset.write(dataset.annotate(exact))
    args = ["planted", "--annotations", str(annotations), "--images", str(dataset.images), "--compare",
            "FP32:f32,onnxruntime", "--results", str(dataset.folder / "r.jsonl")]
    table = run_eval(dataset.world, *args)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    header = next(line for line in lines if line.startswith("configuration"))
    assert header.split() == ["configuration", "ran", "in", "AP", "AP50", "ΔAP", "images/s"]
    rows = [line.split() for line in lines[lines.index(header) + 1:]]
    assert [row[:5] for row in rows] == [["openvino:FP32:f32", "f32", "1.0000", "1.0000", "+0.0000"],
                                         ["onnxruntime", "f32", "1.0000", "1.0000", "+0.0000"]]
    data = json.loads(run_eval(dataset.world, *args, "--json").stdout)
    assert [c["configuration"] for c in data["compare"]] == ["openvino:FP32:f32", "onnxruntime"]
    assert [c["backend"] for c in data["compare"]] == ["openvino", "onnxruntime"]
    assert all(c["images_per_second"] > 0 for c in data["compare"])


def test_compare_decodes_each_image_once(dataset: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    from ssdtool import pipeline

    decoded: list[str] = []
    real = pipeline.decode_file

    def counting(path: Path, *args: Any) -> Any:
        decoded.append(path.name)
        return real(path, *args)

    monkeypatch.setattr(pipeline, "decode_file", counting)
    report = api(dataset, dataset.write(dataset.annotate(exact)), compare="FP32:f32,onnxruntime")
    assert sorted(decoded) == sorted(i["file_name"] for i in dataset.document["images"])
    assert [r.metrics.stats["AP"] for r in report.runs] == pytest.approx([1.0, 1.0], abs=1e-12)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("compare", [None, "FP32:f32,onnxruntime"])
def test_resume_after_an_interruption_gives_identical_metrics(dataset: Dataset, compare: str | None) -> None:
    annotations = dataset.write(dataset.annotate(TestMixed.make))
    whole = api(dataset, annotations, compare=compare, results=dataset.folder / "whole.jsonl")

    def stop_after_three(event: EvalProgress) -> None:
        if event.phase == "evaluate" and event.done == 3:
            raise Interrupted

    results = dataset.folder / "cut.jsonl"
    with pytest.raises(Interrupted):
        api(dataset, annotations, compare=compare, results=results, checkpoint_every=2, progress=stop_after_three)
    state = json.loads((dataset.folder / "cut.jsonl.checkpoint.json").read_text())
    assert state["images"] == 3  # the interruption checkpointed what was complete
    with open(results, "ab") as stream:
        stream.write(b'{"image_id": 4, "half a line')  # a write cut short by a crash: dropped on resume
    seen: list[int] = []
    resumed = api(dataset, annotations, compare=compare, results=results, resume=True,
                  progress=lambda e: seen.append(e.done) if e.phase == "evaluate" else None)
    assert seen == [3, 4, 5]  # from where it stopped, only the rest ran
    for a, b in zip(whole.runs, resumed.runs, strict=True):
        assert json.dumps(a.metrics.stats) == json.dumps(b.metrics.stats)
        assert json.dumps(a.metrics.per_class) == json.dumps(b.metrics.per_class)
        assert a.detections == b.detections


class TestMixed:
    @staticmethod
    def make(image_id: int, width: int, height: int) -> list[tuple[int, list[float], int]]:
        boxes = exact(image_id, width, height)
        return [(c, [x + image_id, y, w * 0.8, h], crowd) for c, (x, y, w, h), crowd in boxes[: 1 + image_id % 4]]


def test_resume_refuses_a_results_file_of_another_run(dataset: Dataset) -> None:
    annotations = dataset.write(dataset.annotate(exact))
    api(dataset, annotations, limit=2)
    result = run_eval(dataset.world, "planted", "--annotations", str(annotations), "--images", str(dataset.images),
                      "--results", str(dataset.folder / "results.jsonl"), "--resume", "--limit", "3")
    assert result.exit_code == 2
    assert "holds the results of a different run" in result.stderr and "drop --resume" in result.stderr


def test_limit_and_sample_are_deterministic(dataset: Dataset) -> None:
    annotations = dataset.write(dataset.annotate(exact))
    assert api(dataset, annotations, limit=2).images_evaluated == 2
    first = api(dataset, annotations, sample=3, seed=7)
    again = api(dataset, annotations, sample=3, seed=7)
    assert first.images_evaluated == 3
    assert [d["image_id"] for d in first.runs[0].detections] == [d["image_id"] for d in again.runs[0].detections]


# ------------------------------------------------------------------------------------------------ other sources
def test_detections_round_trip_with_detect_format_coco(dataset: Dataset) -> None:
    annotations = dataset.write(dataset.annotate(exact))
    out = dataset.folder / "detections.json"
    detected = CliRunner().invoke(cli, dataset.world.args(
        "detect", str(dataset.images), "--model", "planted", "--format", "coco", "--threshold", "0",
        "--inference-precision", "f32", "-o", str(out), "--progress", "none"), catch_exceptions=False)
    assert detected.exit_code == 0, detected.output
    result = run_eval(dataset.world, "--annotations", str(annotations), "--detections", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["source"] == "detections" and data["images_evaluated"] == 5
    assert data["metrics"]["AP"] == pytest.approx(1.0, abs=1e-12)


def test_save_detections_then_evaluate_them_gives_the_same_numbers(dataset: Dataset) -> None:
    annotations = dataset.write(dataset.annotate(TestMixed.make))
    saved = dataset.folder / "saved.json"
    first = run_eval(dataset.world, "planted", "--annotations", str(annotations), "--images", str(dataset.images),
                     "--save-detections", str(saved), "--json", "--per-class")
    again = run_eval(dataset.world, "--annotations", str(annotations), "--detections", str(saved), "--json",
                     "--per-class")
    assert first.exit_code == again.exit_code == 0, first.output + again.output
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    assert a["metrics"] == b["metrics"] and a["per_class"] == b["per_class"]
    person = next(c for c in a["per_class"] if c["category_id"] == 1)
    assert person["name"] == "person" and person["AP"] is not None


def test_mlperf_accuracy_log(dataset: Dataset, tmp_path: Path) -> None:
    """A LoadGen-format log of the planted detections: AP 1.0 with boxes from the annotation file's sizes; a repeat
    of an image is ignored and an image without detections still counts (accuracy-coco.py's rules)."""
    from ssdtool.evaluation.dataset import load_annotations
    from ssdtool.evaluation.mlperf_log import read_accuracy_log, write_accuracy_log

    annotations = dataset.write(dataset.annotate(exact))
    boxes, labels, scores = planted_expected(PLANTED, TINY)
    rows = {}
    for position in range(4):  # images 1..4; image 5 is not in the log, so it is not evaluated
        # [qsl_idx, ymin, xmin, ymax, xmax, score, label]
        rows[position] = np.array([[position, b[1], b[0], b[3], b[2], s, lab] for b, lab, s in
                                   zip(np.clip(boxes, 0, 1), labels, scores, strict=True)], np.float32)
    log = tmp_path / "mlperf_log_accuracy.json"
    write_accuracy_log(log, rows)
    records = json.loads(log.read_text())
    records.append({**records[0], "data": "00" * 28})  # a repeat of qsl_idx 0: ignored
    log.write_text(json.dumps(records))
    parsed = read_accuracy_log(log, load_annotations(annotations))
    assert (parsed.duplicates, parsed.empty_images, parsed.image_ids) == (1, 0, [1, 2, 3, 4])
    result = run_eval(dataset.world, "--annotations", str(annotations), "--mlperf-log", str(log), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["metrics"]["AP"] == pytest.approx(1.0, abs=1e-6) and data["images_evaluated"] == 4


def test_library_prints_nothing(dataset: Dataset, capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    api(dataset, dataset.write(dataset.annotate(exact)))
    assert capfd.readouterr() == ("", "")


def test_python_api_returns_what_json_prints(dataset: Dataset) -> None:
    import ssdtool

    annotations = dataset.write(dataset.annotate(TestMixed.make))
    report = ssdtool.evaluate(annotations, dataset.images, "planted", cache_dir=dataset.world.cache,
                              registry=dataset.world.registry, inference_precision="f32", backend="onnxruntime")
    printed = json.loads(run_eval(dataset.world, "planted", "--annotations", str(annotations), "--images",
                                  str(dataset.images), "--backend", "onnxruntime", "--json").stdout)
    assert report.to_dict()["metrics"] == printed["metrics"]



def test_references_are_shown_for_the_real_model_only() -> None:
    from ssdtool.commands.eval import format_report
    from ssdtool.evaluation.metrics import STAT_MEANINGS, STAT_NAMES
    from ssdtool.evaluation.references import REAL_MODEL_SHA256, references_for
    from ssdtool.registry import load_registry

    assert load_registry().model("ssd-resnet34-1200-onnx").primary_file.sha256 == REAL_MODEL_SHA256
    assert references_for("0" * 64, 0.3) is None
    assert references_for(REAL_MODEL_SHA256, 0.1980)["mlperf"] == {"target": 0.2, "threshold": 0.198, "passed": True}
    assert references_for(REAL_MODEL_SHA256, 0.1979)["mlperf"]["passed"] is False
    data = {"source": "model", "model": "ssd-resnet34-1200-onnx", "images_evaluated": 5000, "images_skipped": 0,
            "annotations": "instances_val2017.json", "backend": "openvino", "device": "CPU", "precision": "FP32",
            "inference_precision": "f32", "images_per_second": 0.5,
            "metrics": dict.fromkeys(STAT_NAMES, 0.199), "references": references_for(REAL_MODEL_SHA256, 0.199)}
    text = format_report(data, dict(STAT_MEANINGS))
    assert "MLPerf: AP 0.1990 against 0.198 (99% of 0.2): pass" in text
    assert "OMZ coco_orig_precision  0.1997  AP" in text and "OMZ coco_precision" in text
