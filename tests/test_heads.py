"""The split (heads) form: registry description, host decode in the onnxruntime engine, the in-graph tail of the
converted IR, and agreement with the full-form twin of the same weights (issue 16).

Planted heads prove the head order and the channel layout (a conf logit and a loc offset placed at a chosen level,
anchor and cell come back as that detection with that box); the seeded tiny twins prove that the heads form and
the full form give the same detections in both engines; one slow test repeats it at full size.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner
from onnx import helper, numpy_helper
from PIL import Image

from ssdtool import Detector, postprocess_heads, preprocess
from ssdtool.artifacts import model_file
from ssdtool.backends import make_engine
from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.detections import Detection
from ssdtool.errors import ModelFormatError, RegistryError
from ssdtool.imaging import generated_images, raw_input, resize_rgb
from ssdtool.matching import RawDetections, match_detections
from ssdtool.registry import load_registry, parse_registry
from ssdtool.ssd import SsdGeometry, default_boxes
from ssdtool.synthetic import PlantedDetection, TwinSpec, build_model
from tests.modelkit import ROOT, install_model, tiny_entry_template

TINY = SsdGeometry.for_input(300)
CONF = [f"conf_{i}" for i in range(6)]
LOC = [f"loc_{i}" for i in range(6)]
HEADS = {"form": "heads", "conf": CONF, "loc": LOC}
TINY_HEADS = "ssd-resnet34-300-synthetic-tiny-heads"
TINY_FULL = "ssd-resnet34-300-synthetic-tiny"
# The bar for "the same detections": same label, IoU >= 0.99, scores within 1e-5 (at f32).
SAME_IOU, SAME_SCORE = 0.99, 1e-5

# Head order and channel layout: a detection at (level 1, anchor 3, row 2, column 5) whose loc head moves its
# width (coordinate 2), and one at (level 0, anchor 1, row 4, column 9) whose loc head moves its centre x
# (coordinate 0). Channel = coordinate * anchors + anchor (coordinate-major); box index = level offset +
# anchor*F*F + y*F + x. Any other reading of the heads puts the offsets on other boxes.
SHIFTS = ((1, 3, 2, 5, 2, 1.0), (0, 1, 4, 9, 0, 2.0))  # level, anchor, y, x, coordinate, offset
PLANTED = (PlantedDetection(TINY.box_index(1, 3, 2, 5), 7, 0.9), PlantedDetection(TINY.box_index(0, 1, 4, 9), 2, 0.8),
           PlantedDetection(TINY.box_index(3, 2, 1, 0), 45, 0.7))


def _with_loc_offsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with constant offsets added to its loc heads at the channels and cells of :data:`SHIFTS`."""
    model = copy.deepcopy(model)
    anchors = TINY.anchors_per_cell
    for level in sorted({s[0] for s in SHIFTS}):
        f = TINY.feature_sizes[level]
        offsets = np.zeros((1, anchors[level] * 4, f, f), np.float32)
        for lv, anchor, y, x, coordinate, value in SHIFTS:
            if lv == level:
                offsets[0, coordinate * anchors[level] + anchor, y, x] = value
        name = LOC[level]
        producer = next(n for n in model.graph.node if name in n.output)
        producer.output[list(producer.output).index(name)] = f"{name}.before_offsets"
        model.graph.initializer.append(numpy_helper.from_array(offsets, f"{name}.offsets"))
        model.graph.node.append(helper.make_node("Add", [f"{name}.before_offsets", f"{name}.offsets"], [name]))
    return model


def _planted_expected(width: int, height: int) -> list[tuple[int, float, tuple[float, ...]]]:
    """(label, score, pixel box) of :data:`PLANTED`, the loc offsets applied by the decode formula itself."""
    xywh = default_boxes(TINY, "xywh").astype(np.float64)
    shifted = {TINY.box_index(lv, a, y, x): (c, v) for lv, a, y, x, c, v in SHIFTS}
    rows = []
    for p in sorted(PLANTED, key=lambda p: -p.score):
        cx, cy, w, h = xywh[p.box_index]
        if p.box_index in shifted:
            coordinate, value = shifted[p.box_index]
            if coordinate == 0:
                cx += 0.1 * value * w
            else:
                w *= math.exp(0.2 * value)
        box = np.clip(np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), 0, 1)
        rows.append((p.label, p.score, tuple(box * [width, height, width, height])))
    return rows


@dataclass(frozen=True)
class HeadsWorld:
    registry: Path
    cache: Path

    def args(self, *extra: str) -> list[str]:
        return ["--registry", str(self.registry), "--cache-dir", str(self.cache), *extra]


def _entry(outputs: dict[str, Any]) -> dict[str, Any]:
    entry = tiny_entry_template()
    entry["outputs"] = copy.deepcopy(outputs)
    return entry


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> HeadsWorld:
    """The packaged tiny twins (heads and full form), plus planted and re-described heads models."""
    root = tmp_path_factory.mktemp("heads-world")
    registry, cache = root / "registry.yml", root / "cache"
    packaged = yaml.safe_load((ROOT / "models.yml").read_text())
    registry.write_text(yaml.safe_dump({"version": 1, "default_model": TINY_HEADS, "models": {
        name: packaged["models"][name] for name in (TINY_HEADS, TINY_FULL)}}, sort_keys=False))
    planted = _with_loc_offsets(build_model(TwinSpec(variant="tiny", heads_only=True, planted=PLANTED)))
    install_model(cache, registry, "planted-heads", planted, _entry(HEADS))
    seeded = build_model("synthetic:ssd-resnet34?seed=0&variant=tiny&outputs=heads")
    reference_boxes = {"feature_sizes": list(TINY.feature_sizes), "steps": list(TINY.steps),
                       "scales": list(TINY.scales), "aspect_ratios": [list(r) for r in TINY.aspect_ratios],
                       "scale_xy": 0.1, "scale_wh": 0.2}
    by_position = {"form": "heads", "conf": list(range(6)), "loc": list(range(6, 12)),
                   "default_boxes": reference_boxes,
                   "selection": {"score_threshold": 0.05, "iou_threshold": 0.5, "per_class": 200,
                                 "max_detections": 200}}
    install_model(cache, registry, "by-position", seeded, _entry(by_position))
    install_model(cache, registry, "conf-reversed", seeded, _entry({**HEADS, "conf": CONF[::-1]}))
    install_model(cache, registry, "swapped", seeded, _entry({**by_position, "conf": list(range(6, 12)),
                                                               "loc": list(range(6))}))
    install_model(cache, registry, "unknown-head", seeded, _entry({**HEADS, "loc": [*LOC[:5], "loc_9"]}))
    return HeadsWorld(registry, cache)


def _detector(world: HeadsWorld, name: str, backend: str, threshold: float = 0.5) -> Detector:
    return Detector(name, backend, registry=world.registry, cache_dir=world.cache, inference_precision="f32",
                    threshold=threshold)


def _raw(detections: list[Detection], width: int, height: int) -> RawDetections:
    scale = np.array([width, height, width, height], np.float64)
    return RawDetections(np.array([d.box for d in detections]).reshape(-1, 4) / scale,
                         np.array([d.label_id for d in detections], np.int64),
                         np.array([d.score for d in detections], np.float32))


def assert_same_detections(found: list[Detection], reference: list[Detection], width: int, height: int) -> None:
    """The issue's bar, both ways: same label, IoU >= 0.99, scores within 1e-5."""
    a, b = _raw(found, width, height), _raw(reference, width, height)
    forward, backward = match_detections(b, a, SAME_IOU), match_detections(a, b, SAME_IOU)
    assert forward.matched == len(b) == len(a) == backward.matched, (forward, backward)
    assert forward.max_score_diff <= SAME_SCORE


# ------------------------------------------------------------------------------------------------ planted
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_planted_heads_prove_head_order_and_channel_layout(world: HeadsWorld, backend: str) -> None:
    found = _detector(world, "planted-heads", backend)(np.zeros((300, 400, 3), np.uint8))
    expected = _planted_expected(400, 300)
    assert [(d.label_id, round(d.score, 5)) for d in found] == [(label, score) for label, score, _ in expected]
    for detection, (_, _, box) in zip(found, expected, strict=True):
        assert detection.box == pytest.approx(box, abs=1e-3)


def test_heads_in_the_wrong_order_are_refused_naming_the_registry_key(world: HeadsWorld) -> None:
    image = np.zeros((300, 300, 3), np.uint8)
    with pytest.raises(ModelFormatError, match=r"conf head 0 \(conf_5\) has shape \[1, 324, 1, 1\]; the default "
                                               r"boxes expect \[1, 324, 13, 13\]") as caught:
        _detector(world, "conf-reversed", "onnxruntime")(image)
    assert "outputs.conf" in (caught.value.hint or "")
    with pytest.raises(ModelFormatError, match=r"conf head 0 \(loc_0\) has shape \[1, 16, 13, 13\]"):
        _detector(world, "swapped", "onnxruntime")(image)
    with pytest.raises(ModelFormatError, match="the model has no output 'loc_9' for a loc head; it has 12 outputs"):
        _detector(world, "unknown-head", "onnxruntime")(image)
    result = CliRunner().invoke(cli, world.args("convert", "unknown-head", "--json", "--progress", "none"))
    assert result.exit_code == 22, result.output
    assert "the model has no output 'loc_9' for a loc head" in result.output
    result = CliRunner().invoke(cli, world.args("convert", "conf-reversed", "--progress", "none"))
    assert result.exit_code == 22 and "conf head 0 (conf_5) has shape [1,324,1,1]" in result.output, result.output


# ------------------------------------------------------------------------------------------------ the twins
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_tiny_heads_twin_matches_the_full_form_twin(world: HeadsWorld, backend: str) -> None:
    heads, full = _detector(world, TINY_HEADS, backend, 0.1), _detector(world, TINY_FULL, backend, 0.1)
    images = generated_images(3, seed=16, size=(400, 300))
    total = 0
    for mine, theirs in zip(heads.many(images), full.many(images), strict=True):
        assert_same_detections(list(mine.detections), list(theirs.detections), 400, 300)
        total += len(theirs.detections)
    assert total > 30  # the seeded twin is busy: the comparison is not of empty sets
    assert heads.run_info().inference_precision == "f32"


def test_the_heads_ir_outputs_equal_the_full_form_irs(world: HeadsWorld) -> None:
    cache = Cache.at(world.cache)
    registry = load_registry(world.registry)
    engines = [make_engine(model_file(registry.model(name), cache, "openvino"), inference_precision="f32")
               for name in (TINY_HEADS, TINY_FULL)]
    entry = registry.model(TINY_HEADS)
    for rgb in generated_images(2, seed=5, size=(640, 480)):
        tensor = raw_input(resize_rgb(rgb, entry.input), "BGR", "NCHW", "f32")
        mine, theirs = (engine.infer(tensor) for engine in engines)
        assert sorted(mine) == sorted(theirs) == ["bboxes", "labels", "scores"]
        assert mine["bboxes"].shape == (1, 200, 4) and mine["scores"].shape == (1, 200)
        np.testing.assert_array_equal(mine["labels"], theirs["labels"])
        np.testing.assert_allclose(mine["bboxes"], theirs["bboxes"], atol=1e-6)
        np.testing.assert_allclose(mine["scores"], theirs["scores"], atol=1e-6)
        assert (mine["scores"] > 0).sum() > 20


def test_positions_and_explicit_reference_boxes_read_the_same_model(world: HeadsWorld) -> None:
    rgb = generated_images(1, seed=3, size=(300, 300))[0]
    by_name = _detector(world, TINY_HEADS, "onnxruntime", 0.1)(rgb)
    assert _detector(world, "by-position", "onnxruntime", 0.1)(rgb) == by_name and len(by_name) > 5


def test_the_engine_returns_the_full_models_outputs_and_bench_times_the_decode(world: HeadsWorld) -> None:
    from ssdtool.bench import BenchOptions, benchmark

    entry = load_registry(world.registry).model(TINY_HEADS)
    engine = make_engine(model_file(entry, Cache.at(world.cache), "onnxruntime"))
    outputs = engine.infer(preprocess(generated_images(1, seed=2, size=(300, 300))[0], entry))
    assert sorted(outputs) == ["bboxes", "labels", "scores"] and outputs["bboxes"].shape[2] == 4
    assert outputs["labels"].dtype == np.int64 and outputs["labels"].min() >= 1
    assert np.all(np.diff(outputs["scores"][0]) <= 0)  # best first, as the full model's TopK
    report = benchmark(entry, Cache.at(world.cache), BenchOptions(backend="onnxruntime", iterations=2, images=1))
    assert report.iterations == 2 and report.model == TINY_HEADS


def test_postprocess_heads_reads_a_heads_entry_by_its_names(world: HeadsWorld) -> None:
    import onnxruntime as ort

    registry = load_registry(world.registry)
    entry = registry.model(TINY_HEADS)
    path = Cache.at(world.cache).file_path(entry, entry.primary_file)
    model_file(entry, Cache.at(world.cache), "onnxruntime")  # downloaded (built) on first use
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rgb = generated_images(1, seed=9, size=(300, 300))[0]
    heads = dict(zip([o.name for o in session.get_outputs()],
                     session.run(None, {"image": preprocess(rgb, entry)}), strict=True))
    shuffled = dict(reversed(list(heads.items())))  # names, not the mapping's order, decide
    found = postprocess_heads(shuffled, entry, (300, 300), threshold=0.1)
    assert found == _detector(world, TINY_HEADS, "onnxruntime", 0.1)(rgb) and found


def test_the_tails_nms_keeps_the_onnx_semantics_at_the_thresholds() -> None:
    """The tail's NonMaxSuppression on the CPU decides as ONNX (onnxruntime; ssdtool.ssd.nms) does at the edges:
    a score equal to the score threshold is dropped, an IoU equal to the IoU threshold does not suppress (bare
    OpenVINO would suppress it), and only valid rows come back."""
    import openvino as ov
    import openvino.opset13 as ops

    from ssdtool import ssd
    from ssdtool.convert.heads_tail import selection_nms
    from ssdtool.registry import SelectionSpec

    boxes = np.array([[[0, 0, 2, 1], [0, 0, 1, 1], [5, 5, 6, 6], [7, 7, 8, 8], [0, 0, 2, 1.01]]], np.float32)
    just_above = np.nextafter(np.float32(0.05), np.float32(1))
    scores = np.array([[[0.9, 0.8, np.float32(0.05), just_above, 0.7]]], np.float32)
    b, s = ops.parameter([1, 5, 4], ov.Type.f32), ops.parameter([1, 1, 5], ov.Type.f32)
    model = ov.Model([ops.result(selection_nms(b, s, SelectionSpec(per_class=10)))], [b, s])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    selected = compiled([boxes, scores])[0]
    # box 0 kept; box 4 (IoU 0.99 with it) suppressed; box 1 (IoU exactly 0.5) kept; box 3 kept, box 2 (= 0.05) not
    assert selected[:, 2].tolist() == [0, 1, 3] == ssd.nms(boxes[0], scores[0, 0], 0.5, 0.05, 10).tolist()


# ------------------------------------------------------------------------------------------------ commands
def test_detect_and_convert_commands_on_the_heads_twin(world: HeadsWorld, tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    Image.fromarray(generated_images(1, seed=4, size=(640, 480))[0]).save(photo)
    runner = CliRunner()
    outputs = []
    for name in (TINY_HEADS, TINY_FULL):
        result = runner.invoke(cli, world.args("detect", "--model", name, str(photo), "--backend", "onnxruntime",
                                               "--format", "json", "--threshold", "0.1", "--progress", "none"))
        assert result.exit_code == 0, result.output
        outputs.append(json.loads(result.stdout)["images"][0]["detections"])
    assert outputs[0] == outputs[1] and outputs[0]
    result = runner.invoke(cli, world.args("convert", TINY_HEADS, "--json", "--progress", "none"))
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["outputs"] == {"bboxes": [1, 200, 4], "labels": [1, 200], "scores": [1, 200]}
    again = runner.invoke(cli, world.args("convert", TINY_HEADS, "--json", "--progress", "none"))
    assert json.loads(again.stdout)["up_to_date"] is True
    info = runner.invoke(cli, world.args("info", TINY_HEADS))
    assert "heads form: conf ['conf_0'" in info.output and "IoU 0.5, 200 per class, 200 in all" in info.output


# ------------------------------------------------------------------------------------------------ registry
def _registry_with(outputs: Any, **changes: Any) -> dict[str, Any]:
    packaged = yaml.safe_load((ROOT / "models.yml").read_text())
    entry = copy.deepcopy(packaged["models"][TINY_HEADS])
    entry["outputs"] = outputs
    for key, value in changes.items():
        section, field = key.split("__")
        entry[section][field] = value
    return {"version": 1, "models": {"m": entry}}


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(RegistryError) as caught:
        parse_registry(yaml.safe_dump(data, sort_keys=False))
    return caught.value.problems


BAD_HEADS: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], str]] = [
    ("count", lambda h: {**h, "conf": CONF[:5]},
     "models.m.outputs: expected as many conf heads as loc heads (one of each per level), got 5 conf and 6 loc"),
    ("mixed", lambda h: {**h, "conf": ["conf_0", 1, 2, 3, 4, 5]},
     "models.m.outputs.conf: expected output names (strings) or positions (integers >= 0), one kind"),
    ("names-and-positions", lambda h: {**h, "conf": list(range(6))},
     "models.m.outputs: conf and loc must both be names or both be positions"),
    ("repeated", lambda h: {**h, "loc": [*LOC[:5], "loc_0"]}, "models.m.outputs.loc: each head is listed once"),
    ("shared", lambda h: {**h, "loc": [*LOC[:5], "conf_5"]},
     "models.m.outputs: an output cannot be both a conf and a loc head: conf_5"),
    ("negative", lambda h: {**h, "conf": [-1, 1, 2, 3, 4, 5], "loc": list(range(6, 12))},
     "models.m.outputs.conf: expected output names (strings) or positions (integers >= 0)"),
    ("empty", lambda h: {**h, "loc": []}, "models.m.outputs.loc: expected a non-empty list"),
    ("form", lambda h: {**h, "form": "split"}, "models.m.outputs.form: expected one of detections, heads"),
    ("unknown-key", lambda h: {**h, "nms": 0.5}, "models.m.outputs.nms: unknown key"),
    ("full-form-key", lambda h: {**h, "label_offset": 1}, "models.m.outputs.label_offset: unknown key"),
    ("sizes", lambda h: {**h, "default_boxes": {"feature_sizes": [13, 7, 0, 2, 1, 1]}},
     "models.m.outputs.default_boxes.feature_sizes: expected a list of positive integers"),
    ("sizes-count", lambda h: {**h, "default_boxes": {"feature_sizes": [13, 7, 4, 2, 1]}},
     "models.m.outputs.default_boxes.feature_sizes: expected 6 integers, got 5"),
    ("steps", lambda h: {**h, "default_boxes": {"steps": [8, 16, 32, 64, 100, -300]}},
     "models.m.outputs.default_boxes.steps: expected a list of positive integers"),
    ("scales", lambda h: {**h, "default_boxes": {"scales": [21, 45, 99, 153, 207, 261]}},
     "models.m.outputs.default_boxes.scales: expected 7 numbers, got 6"),
    ("scales-order", lambda h: {**h, "default_boxes": {"scales": [21, 45, 99, 153, 207, 315, 261]}},
     "models.m.outputs.default_boxes.scales: expected scales that never decrease"),
    ("ratios", lambda h: {**h, "default_boxes": {"aspect_ratios": [[2], [2, 3]]}},
     "models.m.outputs.default_boxes.aspect_ratios: expected 6 lists of aspect ratios"),
    ("ratio", lambda h: {**h, "default_boxes": {"aspect_ratios": [[2], [2, 0], [2, 3], [2, 3], [2], [2]]}},
     "models.m.outputs.default_boxes.aspect_ratios[1]: expected numbers > 0"),
    ("scale_wh", lambda h: {**h, "default_boxes": {"scale_wh": 0}},
     "models.m.outputs.default_boxes.scale_wh: expected a number in (0, 1], got 0"),
    ("iou", lambda h: {**h, "selection": {"iou_threshold": 1.5}},
     "models.m.outputs.selection.iou_threshold: expected a number in [0, 1], got 1.5"),
    ("score", lambda h: {**h, "selection": {"score_threshold": 1}},
     "models.m.outputs.selection.score_threshold: expected a number in [0, 1), got 1"),
    ("iou-type", lambda h: {**h, "selection": {"iou_threshold": "half"}},
     "models.m.outputs.selection.iou_threshold: expected a number, got a string 'half'"),
    ("per-class", lambda h: {**h, "selection": {"per_class": 0}},
     "models.m.outputs.selection.per_class: expected an integer >= 1, got 0"),
    ("total", lambda h: {**h, "selection": {"max_detections": 201}},
     "models.m.outputs.selection.max_detections: expected at most convert.output_count (200), got 201"),
    ("levels", lambda h: {**h, "conf": CONF[:4], "loc": LOC[:4]},
     "models.m.outputs.default_boxes: missing key 'feature_sizes': the reference default covers 6 levels"),
    ("step-size", lambda h: {**h, "default_boxes": {"steps": [8, 16, 32, 64, 100, 400]}},
     "models.m.outputs.default_boxes.steps: expected steps of at most the input size 300"),
]


@pytest.mark.parametrize(("mutate", "message"), [(m, text) for _, m, text in BAD_HEADS],
                         ids=[name for name, _, _ in BAD_HEADS])
def test_the_registry_rejects_bad_heads_descriptions_with_located_errors(
        mutate: Callable[[dict[str, Any]], dict[str, Any]], message: str) -> None:
    problems = _problems(_registry_with(mutate(copy.deepcopy(HEADS))))
    assert any(message in problem for problem in problems), problems


def test_a_heads_model_needs_a_square_input() -> None:
    problems = _problems(_registry_with(HEADS, input__shape=[1, 3, 300, 400], input__resize=[400, 300]))
    assert any("models.m.input.resize: a heads model needs a square input" in p for p in problems), problems


def test_bad_heads_registry_exits_3_listing_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    bad = {**HEADS, "conf": CONF[:5], "selection": {"iou_threshold": -0.1, "per_class": 0}}
    path.write_text(yaml.safe_dump(_registry_with(bad), sort_keys=False))
    result = CliRunner().invoke(cli, ["--registry", str(path), "models"])
    assert result.exit_code == 3
    for text in ("models.m.outputs: expected as many conf heads", "models.m.outputs.selection.iou_threshold",
                 "models.m.outputs.selection.per_class"):
        assert text in result.output


def test_the_packaged_heads_entries_parse_with_the_reference_defaults() -> None:
    registry = load_registry()
    for name in (TINY_HEADS, "ssd-resnet34-1200-synthetic-heads"):
        spec = registry.model(name).outputs
        assert spec.form == "heads" and spec.heads is not None
        assert (spec.boxes, spec.labels, spec.scores, spec.label_offset) == ("bboxes", "labels", "scores", 0)
        assert spec.heads.conf == tuple(CONF) and spec.heads.loc == tuple(LOC)
        selection = spec.heads.selection
        assert (selection.score_threshold, selection.iou_threshold, selection.per_class,
                selection.max_detections) == (0.05, 0.5, 200, 200)
    from ssdtool.heads import entry_geometry

    assert entry_geometry(registry.model("ssd-resnet34-1200-synthetic-heads")) == SsdGeometry.for_input(1200)


def test_tiny_heads_twin_matches_its_registry_pin(world: HeadsWorld) -> None:
    entry = load_registry().model(TINY_HEADS)
    data = build_model(entry.primary_file.sources[0]).SerializeToString()
    assert len(data) == entry.primary_file.size
    assert hashlib.sha256(data).hexdigest() == entry.primary_file.sha256
    assert hashlib.sha384(data).hexdigest() == entry.primary_file.sha384


# ------------------------------------------------------------------------------------------------ full size
@pytest.mark.slow
def test_full_heads_twin_matches_the_full_form_twin_in_both_engines(full_twin_path: Path, tmp_path: Path) -> None:
    """At 1200 px (15,130 default boxes): the pin, the host decode against the full-form twin on onnxruntime, and the
    heads IR (converted without the gate, which the tiny tests run: this comparison is the proof) against both at
    f32. The tiny twins show the heads IR equal to the full-form IR; here the full geometry is what is new."""
    from ssdtool.convert import ConvertOptions, convert

    registry = load_registry()
    heads_entry, full_entry = registry.model("ssd-resnet34-1200-synthetic-heads"), \
        registry.model("ssd-resnet34-1200-synthetic")
    cache = Cache.at(tmp_path / "cache")
    target = cache.file_path(full_entry, full_entry.primary_file)
    target.parent.mkdir(parents=True)
    shutil.copyfile(full_twin_path, target)
    heads_file = model_file(heads_entry, cache, "onnxruntime")  # built from its synthetic: URL and verified
    assert hashlib.sha256(heads_file.path.read_bytes()).hexdigest() == heads_entry.primary_file.sha256
    rgb = generated_images(1, seed=12, size=(640, 480))[0]
    host = make_engine(heads_file).infer(preprocess(rgb, heads_entry))
    full = make_engine(model_file(full_entry, cache, "onnxruntime")).infer(preprocess(rgb, full_entry))
    convert(heads_entry, cache, ConvertOptions(verify=False))
    ir = make_engine(model_file(heads_entry, cache, "openvino"), inference_precision="f32").infer(
        preprocess(rgb, heads_entry, form="ir"))
    reference = RawDetections.from_outputs(full["bboxes"], full["labels"], full["scores"])
    assert len(reference) > 20
    for outputs in (host, ir):
        found = RawDetections.from_outputs(np.clip(outputs["bboxes"], 0, 1), outputs["labels"], outputs["scores"])
        report = match_detections(RawDetections(np.clip(reference.boxes, 0, 1), reference.labels, reference.scores),
                                  found, SAME_IOU)
        assert report.matched == len(reference) == len(found) and report.max_score_diff <= SAME_SCORE, report
