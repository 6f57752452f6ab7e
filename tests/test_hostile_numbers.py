"""Every reader of numbers refuses what is not a finite number in range, saying where (issue 20, items 2 and 8).

Python's ``json`` takes ``NaN``, ``Infinity``, ``1e400`` and 400-digit integers, and YAML has ``.nan`` and ``.inf``;
before these checks an MLPerf log of NaN scores scored AP 1.0000 with exit 0, a NaN label exited 1, 100,000 levels
of nesting exited 1 (RecursionError) and ``scale_wh: .inf`` was a valid registry. The readers: ssdtool.checked
(the one strict parser), eval's annotation file, ``--detections`` and ``--mlperf-log``, the registry, and ssdtool's
own records (verification records, lock-owner notes, IR provenance, the QSL's annotation read).
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from ssdtool import checked
from ssdtool.cli import cli
from ssdtool.errors import AnnotationError
from ssdtool.evaluation.dataset import check_annotations
from ssdtool.evaluation.mlperf_log import accuracy_detections, write_accuracy_log

ROOT = Path(__file__).resolve().parent.parent
DEEP = "[" * 100_000 + "]" * 100_000
IMAGES = [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
          {"id": 2, "file_name": "b.jpg", "width": 300, "height": 300}]
ANNOTATION = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0}
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
DOCUMENT = {"images": IMAGES, "annotations": [ANNOTATION], "categories": CATEGORIES}
#: A valid detection row of an MLPerf log: [qsl_idx, ymin, xmin, ymax, xmax, score, label].
ROW = [0, 0.1, 0.2, 0.5, 0.6, 0.9, 1]


def run(tmp_path: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--cache-dir", str(tmp_path / "cache"), *args], catch_exceptions=False)


@pytest.fixture()
def annotations(tmp_path: Path) -> Path:
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(DOCUMENT))
    return path


# ------------------------------------------------------------------------------------------------- checked.loads
@pytest.mark.parametrize(("document", "path", "reason"), [
    ('{"annotations": [{"bbox": [1, 2, NaN, 4]}]}', "annotations[0].bbox[2]", "NaN is not a JSON number"),
    ('[{"score": 0.5}, {"score": -Infinity}]', "[1].score", "-Infinity is not a JSON number"),
    ('{"a b": {"c": [1e999]}}', 'a b"].c[0]', "the number 1e999 is too large for a 64-bit float"),
    ("[0, " + "1" + "0" * 400 + "]", "[1]", "too large for a 64-bit float"),
    ("[" + "9" * 308 + "e1]", "[0]", "too large for a 64-bit float"),
    ("[-" + "7" * 5000 + "]", "[0]", "too large for a 64-bit float"),
    ("NaN", "top level", "NaN is not a JSON number"),
    ("[1, NaN, Infinity]", "[1]", "NaN is not a JSON number"),
])
def test_a_refused_number_is_named_by_its_path_in_the_document(document: str, path: str, reason: str) -> None:
    with pytest.raises(checked.JsonValueError) as caught:
        checked.loads(document)
    assert caught.value.path is not None and caught.value.path.endswith(path)
    assert str(caught.value).startswith(caught.value.path + ": ") and reason in str(caught.value)


def test_the_largest_finite_numbers_pass() -> None:
    largest = "1" + "0" * 308
    assert checked.loads(f"[{largest}, 1.7976931348623157e308, {'9' * 300}e-1]") == [
        int(largest), 1.7976931348623157e308, float("9" * 300 + "e-1")]
    assert checked.is_finite_number(int(largest)) and not checked.is_finite_number(10 ** 400)


def _path_of(keys: list[Any]) -> str:
    """The path checked.loads reports: ``.name`` for identifier keys, ``["key"]`` otherwise, ``[i]`` for items."""
    path = ""
    for key in keys:
        if isinstance(key, int):
            path += f"[{key}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            path += f".{key}" if path else key
        else:
            path += f"[{json.dumps(key)}]"
    return path or "top level"


finite_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, min_size=1, max_size=4) | st.dictionaries(st.text(), inner, min_size=1, max_size=4),
    max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(finite_json, st.data(), st.sampled_from([math.nan, math.inf, -math.inf]))
def test_one_non_finite_leaf_anywhere_is_refused_at_its_path(document: Any, data: st.DataObject, bad: float
                                                             ) -> None:
    keys: list[Any] = []
    parent, value = None, document
    while isinstance(value, (list, dict)):
        key = data.draw(st.sampled_from(list(range(len(value))) if isinstance(value, list) else list(value)))
        keys.append(key)
        parent, value = value, value[key]
    if parent is None:
        document = bad
    else:
        parent[keys[-1]] = bad
    with pytest.raises(checked.JsonValueError) as caught:
        checked.loads(json.dumps(document))
    assert caught.value.path == _path_of(keys)


@st.composite
def number_literals(draw: st.DrawFn) -> str:
    """JSON number literals of any size: up to 400 integer digits, a fraction, an exponent of up to 4 digits."""
    sign = draw(st.sampled_from(["", "-"]))
    digits = draw(st.integers(1, 9).map(str)) + draw(st.text("0123456789", max_size=draw(st.sampled_from([3, 400]))))
    if draw(st.booleans()):
        digits = "0"  # 0.000...1e400 and friends
    fraction = draw(st.none() | st.text("0123456789", min_size=1, max_size=300).map(lambda f: "." + f))
    exponent = draw(st.none() | st.tuples(st.sampled_from("eE"), st.sampled_from(["", "+", "-"]),
                                         st.text("0123456789", min_size=1, max_size=4)).map("".join))
    return sign + digits + (fraction or "") + (exponent or "")


@settings(max_examples=500, deadline=None)
@given(number_literals(), st.sampled_from(["[{}]", '{{"a": [1, {}, 2.5]}}', "{}"]))
def test_a_number_is_refused_exactly_when_it_passes_a_floats_range(literal: str, document: str) -> None:
    """The pre-scan that spares most documents the per-number check must never let an overflowing literal by."""
    is_float = any(c in literal for c in ".eE")
    overflows = math.isinf(float(literal)) if is_float else abs(int(literal)) > 1.7976931348623157e308
    try:
        value = checked.loads(document.format(literal))
    except checked.JsonValueError as exc:
        assert overflows and "too large for a 64-bit float" in str(exc)
        return
    assert not overflows and checked.is_finite_number(value if document == "{}" else value[0] if
                                                      isinstance(value, list) else value["a"][1])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.text(alphabet="[]{}\":,0123456789.eE+-NaInfity tr", max_size=64))
def test_any_bytes_parse_or_raise_json_value_error_and_nothing_else(raw: bytes | str) -> None:
    try:
        value = checked.loads(raw)
    except checked.JsonValueError:
        return
    assert checked.loads(json.dumps(value)) == value  # what passes is strict JSON again


# ------------------------------------------------------------------------------------------------- MLPerf logs
def _log(tmp_path: Path, rows: list[list[float]], index: int = 0) -> Path:
    path = tmp_path / "mlperf_log_accuracy.json"
    write_accuracy_log(path, {index: np.array(rows, np.float32)})
    return path


def test_a_log_of_nan_scores_is_exit_33_not_ap_one(tmp_path: Path, annotations: Path) -> None:
    good = run(tmp_path, "eval", "--annotations", str(annotations), "--mlperf-log",
               str(_log(tmp_path, [[0, 20 / 480, 10 / 640, 60 / 480, 40 / 640, 0.9, 1]])), "--json")
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout)["metrics"]["AP"] == pytest.approx(1.0, abs=1e-6)
    nan = run(tmp_path, "eval", "--annotations", str(annotations), "--mlperf-log",
              str(_log(tmp_path, [[0, 20 / 480, 10 / 640, 60 / 480, 40 / 640, math.nan, 1]])), "--json")
    assert nan.exit_code == 33
    error = json.loads(nan.stdout)
    assert error["error"] == "AnnotationError"
    assert error["message"].endswith("mlperf_log_accuracy.json:\n  [0].data: row 0 score: nan, expected a finite "
                                     "number")
    assert "AP" not in nan.stderr.replace("AnnotationError", "")


@pytest.mark.parametrize(("column", "value", "problem"), [
    (0, math.nan, "row 1 qsl_idx: nan, expected a finite number"),
    (1, math.inf, "row 1 ymin: inf, expected a finite number"),
    (4, -math.inf, "row 1 xmax: -inf, expected a finite number"),
    (5, math.nan, "row 1 score: nan, expected a finite number"),
    (6, math.nan, "row 1 label: nan, expected a finite number"),  # was exit 1: cannot convert float NaN to integer
    (6, math.inf, "row 1 label: inf, expected a finite number"),
    (6, 0, "row 1 label: 0 is not a model label 1..80"),
    (6, 81, "row 1 label: 81 is not a model label 1..80"),
    (6, 1.5, "row 1 label: 1.5 is not a model label 1..80"),
    (6, -3e38, "row 1 label: -3e+38 is not a model label 1..80"),
    (3, 3e38, "row 1 box: [0.10000000149011612, 0.20000000298023224, 3.0000000054977558e+38, 0.6000000238418579] "
              "overflows float32 at the image's 640x480 pixels"),
])
def test_every_value_of_a_log_row_is_checked(tmp_path: Path, annotations: Path, column: int, value: float,
                                             problem: str) -> None:
    bad = list(ROW)
    bad[column] = value
    result = run(tmp_path, "eval", "--annotations", str(annotations), "--mlperf-log",
                 str(_log(tmp_path, [ROW, bad])))
    assert result.exit_code == 33, result.output
    assert f"\n  [0].data: {problem}\n" in result.stderr
    assert "Traceback" not in result.output and "unexpected" not in result.stderr


def test_a_log_record_index_that_is_not_json_is_located(tmp_path: Path, annotations: Path) -> None:
    log = tmp_path / "log.json"
    log.write_text('[{"qsl_idx": 0, "seq_id": 0, "data": ""}, {"qsl_idx": NaN, "seq_id": 1, "data": ""}]')
    result = run(tmp_path, "eval", "--annotations", str(annotations), "--mlperf-log", str(log))
    assert result.exit_code == 33
    assert "\n  [1].qsl_idx: NaN is not a JSON number (non-finite values are refused)\n" in result.stderr
    log.write_text(json.dumps([{"qsl_idx": 2, "seq_id": 0, "data": ""}, {"qsl_idx": True, "data": ""}]))
    result = run(tmp_path, "eval", "--annotations", str(annotations), "--mlperf-log", str(log))
    assert result.exit_code == 33
    assert "[0].qsl_idx: expected an index into the 2 images of the annotation file, found 2" in result.stderr
    assert "[1].qsl_idx: expected an index into the 2 images of the annotation file, found True" in result.stderr


float32s = st.floats(width=32, allow_nan=True, allow_infinity=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(float32s, min_size=7, max_size=7), min_size=1, max_size=5))
def test_a_log_is_scored_only_when_every_value_is_usable(rows: list[list[float]]) -> None:
    """Whatever float32 a log holds: either a located AnnotationError, or detections whose every number is finite."""
    dataset = check_annotations(copy.deepcopy(DOCUMENT))
    record = [{"qsl_idx": 1, "seq_id": 0, "data": np.array(rows, np.float32).tobytes().hex()}]
    values = np.array(rows, np.float32)
    usable = bool(np.isfinite(values).all() and (values[:, 6] == np.floor(values[:, 6])).all()
                  and ((values[:, 6] >= 1) & (values[:, 6] <= 80)).all())
    try:
        parsed = accuracy_detections(record, dataset, "log.json")
    except AnnotationError as exc:
        assert len(exc.problems) == 1 and exc.problems[0].startswith("[0].data: row ")
        assert exc.exit_code == 33
        return
    assert usable
    assert len(parsed.detections) == len(rows)
    for detection in parsed.detections:
        assert all(math.isfinite(v) for v in [*detection["bbox"], detection["score"]])


# ------------------------------------------------------------------------------------------------- detections files
@pytest.mark.parametrize(("text", "problem"), [
    ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": NaN}]',
     "[0].score: NaN is not a JSON number (non-finite values are refused)"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1e400, 1], "score": 0.5}]',
     "[0].bbox[2]: the number 1e400 is too large for a 64-bit float"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1e9, 1], "score": 0.5}]',
     "[0].bbox[2]: 1000000000.0 pixels is beyond 16,777,216 (2^24), the largest coordinate or size read"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1], "score": 0.5}]',
     "[0].bbox: width and height must not be negative, found [0, 0, -1, 1]"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [0, true, 1, 1], "score": 0.5}]',
     "[0].bbox[1]: expected a finite number, found True"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1' + "0" * 400 + "}]",
     "[0].score: the number 1000000000000000000000000000000000000000... is too large for a 64-bit float"),
    (DEEP, "nested too deeply (more than about 1,000 levels)"),  # was exit 1: RecursionError
])
def test_a_detections_file_with_bad_numbers_is_exit_33_located(tmp_path: Path, annotations: Path, text: str,
                                                               problem: str) -> None:
    detections = tmp_path / "detections.json"
    detections.write_text(text)
    result = run(tmp_path, "eval", "--annotations", str(annotations), "--detections", str(detections))
    assert result.exit_code == 33, result.output
    assert f"error: invalid {detections}:\n  {problem}\n" in result.stderr
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------------------------- annotation files
@pytest.mark.parametrize(("text", "problem"), [
    (json.dumps(DOCUMENT).replace("[10, 20, 30, 40]", "[10, 20, NaN, 40]"),
     "annotations[0].bbox[2]: NaN is not a JSON number (non-finite values are refused)"),
    (json.dumps(DOCUMENT).replace('"area": 1200', '"area": Infinity'),
     "annotations[0].area: Infinity is not a JSON number (non-finite values are refused)"),
    (json.dumps(DOCUMENT).replace('"width": 640', '"width": 6' + "0" * 400),
     "images[0].width: the number 6000000000000000000000000000000000000000... is too large for a 64-bit float"),
    (json.dumps(DOCUMENT).replace('"width": 640', '"width": 33554432'),
     "images[0].width: expected a positive integer of at most 16,777,216 (2^24), found 33554432"),
    (json.dumps(DOCUMENT).replace("[10, 20, 30, 40]", "[-2e7, 20, 30, 40]"),
     "annotations[0].bbox[0]: -20000000.0 pixels is beyond 16,777,216 (2^24), the largest coordinate or size read"),
    (json.dumps(DOCUMENT).replace('"iscrowd": 0', '"iscrowd": true'), "annotations[0].iscrowd: expected 0 or 1, "
                                                                     "found True"),
    ('{"images": ' + DEEP + "}", "nested too deeply (more than about 1,000 levels)"),  # was exit 1: RecursionError
])
def test_an_annotation_file_with_bad_numbers_is_exit_33_located(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "annotations.json"
    path.write_text(text)
    detections = tmp_path / "detections.json"
    detections.write_text("[]")
    before = path.read_bytes()
    result = run(tmp_path, "eval", "--annotations", str(path), "--detections", str(detections))
    assert result.exit_code == 33, result.output
    assert f"error: invalid {path}:\n  {problem}\n" in result.stderr
    assert path.read_bytes() == before


def test_python_callers_get_the_element_located_too() -> None:
    document = copy.deepcopy(DOCUMENT)
    document["annotations"][0]["bbox"] = [1, math.inf, math.nan, 4]
    with pytest.raises(AnnotationError) as caught:
        check_annotations(document, "ann.json")
    assert caught.value.problems == ["annotations[0].bbox[1]: expected a finite number, found inf",
                                     "annotations[0].bbox[2]: expected a finite number, found nan"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(2 ** 80),
                                                                             max_value=2 ** 80),
                min_size=4, max_size=4))
def test_a_box_is_accepted_only_when_finite_in_range_and_not_negative(bbox: list[float]) -> None:
    document = copy.deepcopy(DOCUMENT)
    document["annotations"][0]["bbox"] = bbox
    usable = all(math.isfinite(v) and abs(v) <= 1 << 24 for v in bbox) and bbox[2] >= 0 and bbox[3] >= 0
    try:
        dataset = check_annotations(document, "ann.json")
    except AnnotationError as exc:
        assert not usable and all(p.startswith("annotations[0].bbox") for p in exc.problems)
        return
    assert usable and math.isfinite(dataset.data["annotations"][0]["area"])


# ------------------------------------------------------------------------------------------------- the registry
def _registry(tmp_path: Path, mutate: Any) -> Path:
    packaged = yaml.safe_load((ROOT / "models.yml").read_text())
    name = "ssd-resnet34-300-synthetic-tiny-heads"
    entry = copy.deepcopy(packaged["models"][name])
    mutate(entry)
    path = tmp_path / "registry.yml"
    path.write_text(yaml.safe_dump({"version": 1, "models": {"m": entry}}, sort_keys=False))
    return path


def _boxes(**values: Any) -> Any:
    return lambda entry: entry["outputs"].setdefault("default_boxes", {}).update(values)


@pytest.mark.parametrize(("mutate", "problem"), [
    (_boxes(scale_wh=math.inf), "outputs.default_boxes.scale_wh: expected a finite number, got a number .inf"),
    (_boxes(scale_xy=math.nan), "outputs.default_boxes.scale_xy: expected a finite number, got a number .nan"),
    (_boxes(scale_wh=5), "outputs.default_boxes.scale_wh: expected a number in (0, 1], got 5: it multiplies the "
                         "predicted offsets (the reference has scale_xy 0.1, scale_wh 0.2); box-coder weights such "
                         "as 10 and 5 divide, so give their reciprocals"),
    (_boxes(scales=[21, 45, 99, math.inf, 207, 261, 315]),
     "outputs.default_boxes.scales[3]: expected a finite number, got a number .inf"),
    (_boxes(aspect_ratios=[[2], [2, -math.inf], [2, 3], [2, 3], [2], [2]]),
     "outputs.default_boxes.aspect_ratios[1][1]: expected a finite number, got a number -.inf"),
    (_boxes(feature_sizes=[1000, 19, 10, 5, 3, 1]),
     "outputs.default_boxes.feature_sizes: expected feature map sizes of at most the input size 300, got [1000, 19, "
     "10, 5, 3, 1]"),
    (lambda e: e["input"].update(mean=[math.nan, 116.28, 103.53]),
     "input.mean[0]: expected a finite number, got a number .nan"),
    (lambda e: e["input"].update(mean=[123.675, 300, 103.53]), "input.mean[1]: expected a number in [0, 255], got 300"),
    (lambda e: e["input"].update(scale=[58.395, math.inf, 57.375]),
     "input.scale[1]: expected a finite number, got a number .inf"),
    (lambda e: e["input"].update(scale=[1 / 255, 1 / 255, 1 / 255]),
     "input.scale[0]: expected a number in [0.004, 1000], got 0.00392156862745098"),
    (lambda e: e["input"].update(shape=[1, 3, 10 ** 9, 10 ** 9], resize=[10 ** 9, 10 ** 9]),
     "input.shape: expected integers of at most 16,384, got [1, 3, 1000000000, 1000000000]"),
    (lambda e: e["input"].update(shape=[1, 3, 10 ** 100, 300]),
     "input.shape: expected integers of at most 16,384, got [1, 3, ~10^100, 300]"),
    (lambda e: e["convert"].update(output_count=10 ** 6),
     "convert.output_count: expected an integer of at most 10,000, got 1000000"),
    (lambda e: e["outputs"].setdefault("selection", {}).update(iou_threshold=math.nan),
     "outputs.selection.iou_threshold: expected a finite number, got a number .nan"),
])
def test_registry_numbers_are_finite_and_in_range(tmp_path: Path, mutate: Any, problem: str) -> None:
    path = _registry(tmp_path, mutate)
    result = run(tmp_path, "--registry", str(path), "models")
    assert result.exit_code == 3, result.output
    assert f"  {path}: models.m.{problem}\n" in result.stderr


@pytest.mark.parametrize(("value", "problem"), [
    ("!!int 1" + "0" * 5000, "cannot read the value '1000000000000000000000000000000000000000': Exceeds the limit"),
    ("2020-99-99", "cannot read the value '2020-99-99': month must be in 1..12"),
])
def test_yaml_values_pyyaml_cannot_build_are_located(tmp_path: Path, value: str, problem: str) -> None:
    path = tmp_path / "registry.yml"
    path.write_text(f"version: 1\nmodels:\n  m:\n    description: {value}\n")
    result = run(tmp_path, "--registry", str(path), "models")
    assert result.exit_code == 3, result.output
    assert f"{path}: not valid YAML: {problem}" in result.stderr and "line 4, column 18" in result.stderr


@settings(max_examples=100, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_scale_wh_is_accepted_exactly_in_its_range(value: float) -> None:
    from ssdtool.errors import RegistryError
    from ssdtool.registry import parse_registry

    packaged = yaml.safe_load((ROOT / "models.yml").read_text())
    entry = packaged["models"]["ssd-resnet34-300-synthetic-tiny-heads"]
    entry["outputs"]["default_boxes"] = {"scale_wh": value}
    text = yaml.safe_dump({"version": 1, "models": {"m": entry}})
    try:
        registry = parse_registry(text)
    except RegistryError as exc:
        assert not 0 < value <= 1
        assert len(exc.problems) == 1 and "models.m.outputs.default_boxes.scale_wh: expected a" in exc.problems[0]
        return
    assert 0 < value <= 1
    assert registry.model("m").outputs.heads.default_boxes.scale_wh == value


# ------------------------------------------------------------------------------------------------- own records
@pytest.mark.parametrize("text", [
    '{"size": 5, "mtime_ns": 1, "checksums": {}, "verified_at": NaN}',
    '{"size": 5, "mtime_ns": 1, "checksums": {}, "verified_at": 1e400}',
    '{"size": -5, "mtime_ns": 1, "checksums": {}, "verified_at": 0}',
    '{"size": 5, "mtime_ns": 1' + "0" * 400 + ', "checksums": {}, "verified_at": 0}',
    DEEP,
])
def test_a_verification_record_that_is_not_finite_is_not_trusted(tmp_path: Path, text: str) -> None:
    from ssdtool.cache import Cache

    cache = Cache.at(tmp_path)
    path = cache.record_path("m", "model.onnx")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert cache.read_record("m", "model.onnx") is None  # then the file is hashed again
    path.write_text('{"size": 5, "mtime_ns": 1, "checksums": {}, "verified_at": 0}')
    assert cache.read_record("m", "model.onnx") is not None


@pytest.mark.parametrize("text", ['{"pid": 12, "host": "h", "since": Infinity}', '{"pid": 0, "host": "h", "since": 1}',
                                  '{"pid": 1e400, "host": "h", "since": 1}'])
def test_a_lock_owner_note_that_is_not_finite_is_unknown(tmp_path: Path, text: str) -> None:
    from ssdtool.cache import Cache

    cache = Cache.at(tmp_path)
    path = cache.owner_path("m", "model.onnx")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert cache.read_owner("m", "model.onnx") is None


def test_provenance_values_are_strict_json(tmp_path: Path) -> None:
    from ssdtool.provenance import ir_problem, read_provenance

    xml = tmp_path / "m.xml"
    (tmp_path / "m.bin").write_bytes(b"1234")
    template = ("<?xml version='1.0'?>\n<net><rt_info><ssdtool><weights value='{weights}' /><deep value='{deep}' />"
                "</ssdtool></rt_info></net>")
    xml.write_text(template.format(weights='{"file": "m.bin", "size": NaN}', deep=DEEP[:2000] + DEEP[-2000:]))
    record = read_provenance(xml)
    assert record == {"weights": '{"file": "m.bin", "size": NaN}', "deep": DEEP[:2000] + DEEP[-2000:]}
    assert ir_problem(xml) == f"{xml} records no weights size (made by an older ssdtool)"
    xml.write_text(template.format(weights='{"file": "m.bin", "size": true}', deep="1"))
    assert ir_problem(xml) == f"{xml} records no weights size (made by an older ssdtool)"
    xml.write_text(template.format(weights='{"file": "m.bin", "size": 4}', deep="1"))
    assert ir_problem(xml) is None


@pytest.mark.parametrize(("text", "problem"), [
    ('{"images": [{"file_name": "a.png", "width": NaN}]}', "images[0].width: NaN is not a JSON number"),
    ('{"images": [{"file_name": 5}]}', "images[0].file_name: expected"),
    ('{"images": ' + DEEP + "}", "nested too deeply"),
])
def test_the_loadgen_sample_library_reads_annotations_strictly(tmp_path: Path, text: str, problem: str) -> None:
    """bench --scenario's sample order comes from eval's annotation loader: the same rules, the same exit 33."""
    from ssdtool.loadgen.qsl import image_files

    path = tmp_path / "annotations.json"
    path.write_text(text)
    with pytest.raises(AnnotationError) as caught:
        image_files(tmp_path, path)
    assert any(found.startswith(problem) for found in caught.value.problems), caught.value.problems
    assert caught.value.__cause__ is None and caught.value.exit_code == 33
