"""``ssdtool eval`` on bad input: located errors (exit 33), usage errors (2), skipped and unreadable images (30)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssdtool.errors import AnnotationError
from ssdtool.evaluation.configurations import parse_configurations
from ssdtool.evaluation.dataset import check_annotations
from tests import test_eval
from tests.test_eval import Dataset, exact, run_eval

# test_eval's fixtures, shared
eval_world = test_eval.eval_world
dataset = test_eval.dataset

GOOD_IMAGE = {"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}
GOOD_ANNOTATION = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}
CATEGORIES = [{"id": 1, "name": "person"}]


def problems(document: Any) -> list[str]:
    with pytest.raises(AnnotationError) as caught:
        check_annotations(document, "ann.json")
    return caught.value.problems


@pytest.mark.parametrize(("document", "expected"), [
    ([], "top level: expected a JSON object"),
    ({"images": [], "categories": []}, "annotations: expected a list, found nothing"),
    ({"images": {}, "annotations": [], "categories": []}, "images: expected a list, found dict"),
    ({"images": [{"file_name": "a.jpg"}], "annotations": [], "categories": []}, "images[0].id: expected an integer"),
    ({"images": [GOOD_IMAGE, GOOD_IMAGE], "annotations": [], "categories": []}, "images[1].id: 1 is listed twice"),
    ({"images": [{**GOOD_IMAGE, "file_name": "../x.jpg"}], "annotations": [], "categories": []},
     "images[0].file_name: '../x.jpg' must be a relative path inside the images folder"),
    ({"images": [{**GOOD_IMAGE, "width": 0}], "annotations": [], "categories": []},
     "images[0].width: expected a positive integer"),
    ({"images": [GOOD_IMAGE], "annotations": [{**GOOD_ANNOTATION, "bbox": [0, 0, 5]}], "categories": CATEGORIES},
     "annotations[0].bbox: expected [x, y, width, height]"),
    ({"images": [GOOD_IMAGE], "annotations": [{**GOOD_ANNOTATION, "bbox": [0, 0, -1, 5]}],
      "categories": CATEGORIES}, "annotations[0].bbox: width and height must not be negative"),
    ({"images": [GOOD_IMAGE], "annotations": [{**GOOD_ANNOTATION, "image_id": 7}], "categories": CATEGORIES},
     "annotations[0].image_id: 7 is not the id of an entry in images"),
    ({"images": [GOOD_IMAGE], "annotations": [{**GOOD_ANNOTATION, "category_id": 3}], "categories": CATEGORIES},
     "annotations[0].category_id: 3 is not the id of an entry in categories"),
    ({"images": [GOOD_IMAGE], "annotations": [{**GOOD_ANNOTATION, "iscrowd": 2}], "categories": CATEGORIES},
     "annotations[0].iscrowd: expected 0 or 1"),
    ({"images": [GOOD_IMAGE], "annotations": [GOOD_ANNOTATION, GOOD_ANNOTATION], "categories": CATEGORIES},
     "annotations[1].id: 1 is listed twice"),
    ({"images": [GOOD_IMAGE], "annotations": [], "categories": [{"id": "1"}]}, "categories[0].id: expected an integer"),
])
def test_located_problems(document: Any, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(document)), problems(document)


def test_every_problem_is_listed_at_once() -> None:
    found = problems({"images": [{"id": "x"}], "annotations": [{"id": 1}], "categories": []})
    assert len(found) >= 4  # image id, file name, annotation image_id, category_id, bbox


def test_a_valid_document_fills_area_and_iscrowd() -> None:
    checked = check_annotations({"images": [GOOD_IMAGE], "annotations": [GOOD_ANNOTATION], "categories": CATEGORIES})
    assert checked.data["annotations"][0]["area"] == 25.0 and checked.data["annotations"][0]["iscrowd"] == 0
    assert checked.unknown_categories == ()


def test_not_json_is_exit_32_with_line_and_column(dataset: Dataset) -> None:
    bad = dataset.folder / "bad.json"
    bad.write_text('{"images": [\n  {"id": 1,}\n]}')
    result = run_eval(dataset.world, "planted", "--annotations", str(bad), "--images", str(dataset.images))
    assert result.exit_code == 33
    assert f"invalid {bad}" in result.stderr and "line 2, column 12: not JSON" in result.stderr
    assert "Traceback" not in result.output


def test_invalid_annotations_exit_32_before_the_model_runs(dataset: Dataset) -> None:
    document = dataset.annotate(exact)
    document["annotations"][0]["bbox"] = "wide"
    del document["annotations"][1]["category_id"]
    result = run_eval(dataset.world, "planted", "--annotations", str(dataset.write(document)), "--images",
                      str(dataset.images), "--json")
    assert result.exit_code == 33
    error = json.loads(result.stdout)
    assert error["error"] == "AnnotationError" and "(2 problems)" in error["message"]
    assert "annotations[0].bbox" in error["message"] and "annotations[1].category_id" in error["message"]


def test_missing_annotation_file_is_a_usage_error(dataset: Dataset) -> None:
    result = run_eval(dataset.world, "--annotations", str(dataset.folder / "nope.json"), "--images",
                      str(dataset.images))
    assert result.exit_code == 2 and "does not exist" in result.stderr and "--annotations" in result.stderr


def test_missing_images_are_named_and_skipped_and_strict_makes_them_fail(dataset: Dataset) -> None:
    document = dataset.annotate(exact)
    document["images"].append({"id": 77, "file_name": "gone.png", "width": 10, "height": 10})
    annotations = dataset.write(document)
    args = ["planted", "--annotations", str(annotations), "--images", str(dataset.images), "--json"]
    result = run_eval(dataset.world, *args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["images_evaluated"], data["images_skipped"], data["missing_images"]) == (5, 1, ["gone.png"])
    assert data["metrics"]["AP"] == pytest.approx(1.0, abs=1e-12)  # the missing image is left out, not counted
    assert "1 images listed in the annotation file are not in the images folder" in result.stderr
    assert "gone.png" in result.stderr
    strict = run_eval(dataset.world, *args, "--strict")
    assert strict.exit_code == 30 and "1 images are missing (--strict)" in strict.stderr
    assert json.loads(strict.stdout)["metrics"]["AP"] == pytest.approx(1.0, abs=1e-12)  # the report still went out


def test_an_unreadable_image_is_a_per_image_error(dataset: Dataset) -> None:
    (dataset.images / dataset.document["images"][0]["file_name"]).write_bytes(b"not an image at all")
    result = run_eval(dataset.world, "planted", "--annotations", str(dataset.write(dataset.annotate(exact))),
                      "--images", str(dataset.images), "--json")
    assert result.exit_code == 30
    data = json.loads(result.stdout)
    assert data["images_evaluated"] == 4 and data["failed_images"][0]["file"] == "000000000001.png"
    assert "error: 000000000001.png:" in result.stderr and "1 images could not be read" in result.stderr


def test_categories_that_are_not_cocos_are_reported(dataset: Dataset) -> None:
    document = dataset.annotate(exact)
    document["categories"].append({"id": 500, "name": "unicorn"})
    document["annotations"].append({"id": 999, "image_id": 1, "category_id": 500, "bbox": [1, 1, 5, 5]})
    result = run_eval(dataset.world, "planted", "--annotations", str(dataset.write(document)), "--images",
                      str(dataset.images), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["unknown_categories"] == [500]
    assert "categories that are not COCO's 80 (ids 500)" in result.stderr


def test_bad_detections_files(dataset: Dataset) -> None:
    annotations = dataset.write(dataset.annotate(exact))
    bad = dataset.folder / "dets.json"
    bad.write_text(json.dumps([{"image_id": 4242, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},
                               {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": "high"}]))
    result = run_eval(dataset.world, "--annotations", str(annotations), "--detections", str(bad))
    assert result.exit_code == 33
    assert "[0].image_id: 4242 is not the id of an image" in result.stderr
    assert "[1].bbox" in result.stderr and "[1].score" in result.stderr
    unknown = dataset.folder / "unknown.json"
    unknown.write_text(json.dumps([{"image_id": 1, "category_id": 12345, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    result = run_eval(dataset.world, "--annotations", str(annotations), "--detections", str(unknown), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["dropped_detections"] == 1
    assert "1 detections name categories the annotation file does not have" in result.stderr


def test_bad_mlperf_log(dataset: Dataset) -> None:
    annotations = dataset.write(dataset.annotate(exact))
    log = dataset.folder / "mlperf_log_accuracy.json"
    log.write_text(json.dumps([{"qsl_idx": 99, "seq_id": 0, "data": ""}, {"qsl_idx": 0, "data": "zz"}]))
    result = run_eval(dataset.world, "--annotations", str(annotations), "--mlperf-log", str(log))
    assert result.exit_code == 33
    assert "[0].qsl_idx: expected an index into the 5 images" in result.stderr
    assert "[1].data: expected a hex string" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--compare", "FP32:f32,FP32:f32"], "--compare names openvino:FP32:f32 more than once"),
    (["--compare", "FP64"], "--compare: cannot read configuration 'FP64'"),
    (["--compare", "FP32,"], "--compare: empty configuration"),
    (["--compare", "onnxruntime:bf16"], "onnxruntime runs the source ONNX in f32 only"),
    (["--compare", "FP32:f32", "--backend", "onnxruntime"], "--compare names each configuration's backend"),
    (["--limit", "2", "--sample", "2"], "--limit and --sample both pick a subset"),
    (["--detections", "x.json"], "--images and --detections are different sources of detections"),
])
def test_usage_errors(dataset: Dataset, args: list[str], message: str) -> None:
    annotations = dataset.write(dataset.annotate(exact))
    result = run_eval(dataset.world, "planted", "--annotations", str(annotations), "--images", str(dataset.images),
                      *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_an_mlperf_log_is_not_subset(dataset: Dataset) -> None:
    result = run_eval(dataset.world, "--annotations", str(dataset.write()), "--mlperf-log", "log.json",
                      "--limit", "2")
    assert result.exit_code == 2 and "drop --limit/--sample with --mlperf-log" in result.stderr


def test_nothing_to_evaluate(dataset: Dataset) -> None:
    result = run_eval(dataset.world, "--annotations", str(dataset.write()))
    assert result.exit_code == 2 and "pass --images DIR (or --detections FILE, or --mlperf-log FILE)" in result.stderr


def test_compare_grammar() -> None:
    parsed = parse_configurations("FP32:f32,FP32:bf16,INT8,onnxruntime,openvino:FP16:f16,openvino", "auto")
    assert [c.label for c in parsed] == ["openvino:FP32:f32", "openvino:FP32:bf16", "openvino:INT8:auto",
                                         "onnxruntime", "openvino:FP16:f16", "openvino:auto"]
    assert [c.label for c in parse_configurations("int8,fp32", "f32")] == ["openvino:INT8:f32", "openvino:FP32:f32"]


def test_a_link_at_the_results_path_is_replaced_not_followed(dataset: Dataset, tmp_path: Path) -> None:
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    link = dataset.folder / "results.jsonl"
    link.symlink_to(target)
    result = run_eval(dataset.world, "planted", "--annotations", str(dataset.write(dataset.annotate(exact))),
                      "--images", str(dataset.images), "--results", str(link))
    assert result.exit_code == 0, result.output
    assert target.read_text() == "keep me"
    assert not link.is_symlink() and link.read_text().startswith('{"format":"ssdtool-eval-results"')


@settings(max_examples=200, deadline=None)
@given(backend=st.sampled_from(["openvino", "onnxruntime"]), weights=st.sampled_from([None, "FP32", "FP16", "INT8"]),
       arithmetic=st.sampled_from(["auto", "f32", "bf16", "f16"]), upper=st.booleans())
def test_every_configuration_label_reads_back_as_itself(backend: str, weights: str | None, arithmetic: str,
                                                        upper: bool) -> None:
    from ssdtool.evaluation.configurations import Configuration, parse_item

    configuration = (Configuration("onnxruntime", None, "f32") if backend == "onnxruntime"
                     else Configuration("openvino", weights, arithmetic))
    label = configuration.label.upper() if upper else configuration.label
    assert parse_item(label) == configuration


def test_a_results_file_that_cannot_be_written_is_a_usage_error(dataset: Dataset) -> None:
    result = run_eval(dataset.world, "planted", "--annotations", str(dataset.write(dataset.annotate(exact))),
                      "--images", str(dataset.images), "--results", str(dataset.folder / "no" / "such" / "r.jsonl"))
    folder = dataset.folder / "no" / "such"
    assert result.exit_code == 2
    assert result.stderr == (f"error: cannot write --results {folder / 'r.jsonl'}: folder {folder} does not exist\n"
                             "hint: create the folder first, or choose another --results FILE\n")


def test_resuming_a_finished_run_runs_nothing_and_scores_the_same(dataset: Dataset) -> None:
    from tests.test_eval import api

    annotations = dataset.write(dataset.annotate(exact))
    first = api(dataset, annotations)
    events: list[Any] = []
    again = api(dataset, annotations, resume=True, progress=events.append)
    assert [(e.phase, e.done, e.total) for e in events] == [("evaluate", 5, 5), ("score", 0, 1), ("score", 1, 1)]
    assert again.runs[0].metrics.stats == first.runs[0].metrics.stats


def test_a_bad_save_detections_path_fails_before_any_image_runs(dataset: Dataset) -> None:
    events = dataset.folder / "never"
    result = run_eval(dataset.world, "planted", "--annotations", str(dataset.write(dataset.annotate(exact))),
                      "--images", str(dataset.images), "--save-detections", str(events / "dets.json"))
    assert result.exit_code == 2 and "folder" in result.stderr and "does not exist" in result.stderr
    assert not list(dataset.folder.glob("results.jsonl*"))  # no run was started


@pytest.mark.parametrize(("blocked", "option", "missing"), [
    (("pycocotools", "faster_coco_eval"), "auto", "pycocotools"),  # auto takes either; with neither, exit 23
    (("pycocotools",), "pycocotools", "pycocotools"),
    (("faster_coco_eval",), "faster-coco-eval", "faster-coco-eval"),
])
def test_without_the_coco_library_the_error_names_the_extra(dataset: Dataset, monkeypatch: pytest.MonkeyPatch,
                                                            blocked: tuple[str, ...], option: str,
                                                            missing: str) -> None:
    import sys

    for package in blocked:
        for name in [package, *[m for m in sys.modules if m.startswith(package + ".")]]:
            monkeypatch.setitem(sys.modules, name, None)  # import of a None entry raises ImportError
    result = run_eval(dataset.world, "--annotations", str(dataset.write(dataset.annotate(exact))), "--detections",
                      str(dataset.write([], "empty.json")), "--coco-eval", option)
    assert result.exit_code == 23
    assert f"cannot import {missing}" in result.stderr and "pip install 'ssdtool[eval]'" in result.stderr


@pytest.mark.parametrize(("blocked", "scorer"), [("pycocotools", "faster-coco-eval"),
                                                 ("faster_coco_eval", "pycocotools")])
def test_auto_scores_with_whichever_library_is_installed(dataset: Dataset, monkeypatch: pytest.MonkeyPatch,
                                                         blocked: str, scorer: str) -> None:
    import sys

    for name in [blocked, *[m for m in sys.modules if m.startswith(blocked + ".")]]:
        monkeypatch.setitem(sys.modules, name, None)
    detections = [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.5}]
    result = run_eval(dataset.world, "--annotations", str(dataset.write(dataset.annotate(exact))), "--detections",
                      str(dataset.write(detections, "one.json")), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["coco_eval"].startswith(scorer + " ")


@settings(max_examples=100, deadline=None)
@given(width=st.integers(1, 5000), height=st.integers(1, 5000),
       rows=st.lists(st.tuples(st.floats(0, 1, width=32), st.floats(0, 1, width=32), st.floats(0, 1, width=32),
                               st.floats(0, 1, width=32), st.floats(0.5, 1, width=32), st.integers(1, 80)),
                     min_size=1, max_size=5))
def test_mlperf_boxes_are_computed_as_accuracy_coco_does(width: int, height: int, rows: list[Any]) -> None:
    """float32 products with the annotation file's size, [xmin, ymin, xmax - xmin, ymax - ymin], label -> COCO id."""
    import numpy as np

    from ssdtool.evaluation.mlperf_log import accuracy_detections
    from ssdtool.labels import COCO_CATEGORY_IDS

    checked = check_annotations({"images": [{"id": 7, "file_name": "a.jpg", "width": width, "height": height}],
                                 "annotations": [], "categories": CATEGORIES})
    data = np.array([[0, y0, x0, y1, x1, score, label] for y0, x0, y1, x1, score, label in rows], np.float32)
    found = accuracy_detections([{"qsl_idx": 0, "seq_id": 0, "data": data.tobytes().hex()}], checked)
    for row, record in zip(data, found.detections, strict=True):
        _, ymin, xmin, ymax, xmax, score, label = row
        ymin, xmin, ymax, xmax = ymin * height, xmin * width, ymax * height, xmax * width  # numpy float32 scalars
        assert record == {"image_id": 7, "category_id": COCO_CATEGORY_IDS[int(label) - 1],
                          "bbox": [float(xmin), float(ymin), float(xmax - xmin), float(ymax - ymin)],
                          "score": float(score)}
    assert found.image_ids == [7]


@pytest.mark.parametrize(("rows", "ok"), [
    ([], True),
    ([[1, 0.5, 0, 0, 10, 10]], True),
    ([[90, 1.0, -3.5, 1e9, 0, 0], [1, 0.25, 1, 2, 3, 4]], True),
    ([[1, 0.5, 0, 0, 10]], False),  # five values
    ([[1, 0.5, 0, 0, 10, 10, 1]], False),  # seven
    ([[1, True, 0, 0, 10, 10]], False),  # a bool is no number
    ([[1, 0.5, "0", 0, 10, 10]], False),
    ([[1, 0.5, None, 0, 10, 10]], False),
    ([[1, 0.5, 0, 0, 10, 10], [1, 0.5, [0], 0, 10, 10]], False),
    ([[1, 0.5, 0, 0, 10, 10], "row"], False),
    ([[1, 0.5, 0, 0, 10, 10], {"a": 1}], False),
    ([[1, 0.5, 0, 0, 10 ** 20, 10]], False),  # finite, but no pixel coordinate
    ([[1, 0.5, 0, -1.5e9, 10, 10]], False),
])
def test_results_records_refuse_rows_that_are_no_detections(rows: list[Any], ok: bool) -> None:
    """Every row of a results record is six numbers within 1e9 (what the runner writes); anything else makes the
    record unreadable, and so a resume refuses the state it is in."""
    from ssdtool.evaluation.results import ImageRecord

    line = json.dumps({"image_id": 1, "width": 10, "height": 10, "error": None, "detections": [rows]})
    if ok:
        assert ImageRecord.from_json(line).detections == [rows]
    else:
        with pytest.raises(ValueError, match=r"detections are not lists of \[category_id, score, x, y, w, h\] rows"):
            ImageRecord.from_json(line)
    with pytest.raises(ValueError, match="detections are not lists"):
        ImageRecord.from_json(line.replace('"detections": [', '"detections": [7, '))
