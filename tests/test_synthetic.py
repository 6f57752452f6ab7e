"""The synthetic twin (ssdtool.synthetic): interface, size and cost, reproducibility, planted detections,
agreement with the numpy reference, and the candidate load the selection tail sees.

Full-twin tests are marked slow; they share one build (``full_twin_path``) and one pass over the sample
images (``full_runs``), about 20 s on a 2-core machine.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ssdtool import ssd, synthetic
from ssdtool.registry import load_registry
from ssdtool.synthetic import PlantedDetection, SyntheticUrlError, TwinSpec

FULL_URL = "synthetic:ssd-resnet34?seed=0"
TINY_URL = "synthetic:ssd-resnet34?seed=0&variant=tiny"
TINY = ssd.SsdGeometry.for_input(300)
FULL = ssd.SsdGeometry.for_input(1200)

# Published figures of the real resnet34-ssd1200.onnx (shared/reference/ssd-resnet34.md).
REAL_PARAMS = 20.058e6
REAL_GFLOPS = 433.411
REAL_SIZE = 80_363_696


def session(model: onnx.ModelProto | Path, extra_outputs: tuple[str, ...] = ()) -> ort.InferenceSession:
    if isinstance(model, Path):
        model = onnx.load(str(model))
    if extra_outputs:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in extra_outputs)
        model = copy
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


HEADS = (*synthetic.HEAD_LOC_NAMES, *synthetic.HEAD_CONF_NAMES)


# internal values of the detection graph: decoded boxes [1, N, 4] and class probabilities [1, N, 81]
DECODED = ("decode.boxes", "probs")


def run_with_heads(sess: ort.InferenceSession, image: np.ndarray) -> dict[str, np.ndarray]:
    names = ["bboxes", "labels", "scores", *HEADS, *DECODED]
    return dict(zip(names, sess.run(names, {"image": synthetic.normalize_image(image)}), strict=True))


def reference(out: dict[str, np.ndarray], geometry: ssd.SsdGeometry) -> tuple[np.ndarray, ...]:
    """numpy decode + select of the head tensors: (boxes, labels, scores, probs)."""
    boxes, probs = ssd.decode([out[n] for n in synthetic.HEAD_LOC_NAMES],
                              [out[n] for n in synthetic.HEAD_CONF_NAMES], geometry)
    return (*ssd.select(boxes, probs), probs)


def assert_same_detections(ref: tuple[np.ndarray, ...], got: dict[str, np.ndarray]) -> int:
    """Order-independent match by label, score and IoU. numpy and onnxruntime round exp and softmax
    differently, so where two candidates of one class tie to a few ulps (flat image regions give
    neighbouring cells identical logits) either may be visited first and NMS can then keep a different
    set for that class; detections of such classes, or at the 0.05 threshold or the 200th place, may
    differ. Returns how many differed."""
    rb, rl, rs, probs = ref
    gb, gl, gs = got["bboxes"][0], got["labels"][0], got["scores"][0]
    tied = _tied_classes(probs)
    unmatched = list(range(len(rs)))
    differing = 0
    for i in range(len(gs)):
        hit = next((j for j in unmatched if rl[j] == gl[i] and abs(rs[j] - gs[i]) < 1e-5
                    and ssd.iou_matrix(rb[j], gb[i])[0, 0] > 0.999), None)
        if hit is None:
            differing += 1
            assert gl[i] in tied or _near_edge(gs[i], rs), f"onnxruntime's ({gl[i]}, {gs[i]}) not in the reference"
        else:
            unmatched.remove(hit)
    for j in unmatched:
        differing += 1
        assert rl[j] in tied or _near_edge(rs[j], gs), f"reference ({rl[j]}, {rs[j]}) not in onnxruntime's output"
    assert differing <= max(2, len(gs) // 10), f"{differing} of {len(gs)} detections differ"
    return differing


def _tied_classes(probs: np.ndarray, tolerance: float = 2e-6) -> set[int]:
    tied = set()
    for c in range(1, probs.shape[1]):
        scores = np.sort(probs[:, c][probs[:, c] > np.float32(0.05 - tolerance)])
        if scores.size > 1 and np.min(np.diff(scores)) < tolerance:
            tied.add(c)
    return tied


def _near_edge(score: float, others: np.ndarray) -> bool:
    edge = others.min() if len(others) else 0.05
    return abs(score - 0.05) < 1e-5 or abs(score - edge) < 1e-5


# --------------------------------------------------------------------------------------------- URLs and specs
@pytest.mark.parametrize(("url", "spec"), [
    (FULL_URL, TwinSpec(seed=0)),
    (TINY_URL, TwinSpec(seed=0, variant="tiny")),
    ("synthetic:ssd-resnet34?variant=full&seed=42", TwinSpec(seed=42)),
    ("synthetic:ssd-resnet34?seed=7&variant=tiny&outputs=heads", TwinSpec(seed=7, variant="tiny", heads_only=True)),
    ("synthetic:ssd-resnet34?seed=4294967295&outputs=detections", TwinSpec(seed=2**32 - 1)),
])
def test_parse_url(url: str, spec: TwinSpec) -> None:
    parsed = synthetic.parse_synthetic_url(url)
    assert parsed == spec
    assert synthetic.parse_synthetic_url(parsed.to_url()) == spec
    assert synthetic.is_synthetic_url(url)


@pytest.mark.parametrize(("url", "message"), [
    ("https://example.org/x.onnx", "not a synthetic URL"),
    ("synthetic:ssd-mobilenet?seed=0", "unknown synthetic model 'ssd-mobilenet'"),
    ("synthetic:ssd-resnet34", "missing seed"),
    ("synthetic:ssd-resnet34?variant=tiny", "missing seed"),
    ("synthetic:ssd-resnet34?seed=-1", "seed must be"),
    ("synthetic:ssd-resnet34?seed=01", "seed must be"),
    ("synthetic:ssd-resnet34?seed=4294967296", "seed must be"),
    ("synthetic:ssd-resnet34?seed=x", "seed must be"),
    ("synthetic:ssd-resnet34?seed=0&variant=huge", "unknown variant 'huge'"),
    ("synthetic:ssd-resnet34?seed=0&outputs=logits", "unknown outputs 'logits'"),
    ("synthetic:ssd-resnet34?seed=0&colour=red", "unknown parameter"),
    ("synthetic:ssd-resnet34?seed=0&seed=1", "given twice"),
    ("synthetic:ssd-resnet34?seed", "malformed query"),
])
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(SyntheticUrlError, match=message) as info:
        synthetic.parse_synthetic_url(url)
    assert isinstance(info.value, ValueError)
    assert "expected" in str(info.value) or "must be" in str(info.value) or "twice" in str(info.value)


@pytest.mark.parametrize(("planted", "message"), [
    ((PlantedDetection(TINY.num_boxes, 1, 0.5),), "out of range"),
    ((PlantedDetection(0, 0, 0.5),), "label 0 out of range"),
    ((PlantedDetection(0, 81, 0.5),), "label 81 out of range"),
    ((PlantedDetection(0, 1, 0.05),), "strictly between"),
    ((PlantedDetection(0, 1, 1.0),), "strictly between"),
    ((PlantedDetection(0, 1, 0.5), PlantedDetection(0, 1, 0.3)), "planted twice"),
    ((PlantedDetection(0, 1, 0.6), PlantedDetection(0, 2, 0.4)), "room for background"),
])
def test_bad_planted_sets_are_rejected(planted: tuple[PlantedDetection, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TwinSpec(variant="tiny", planted=planted)


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="variant"):
        TwinSpec(variant="small")
    with pytest.raises(ValueError, match="seed"):
        TwinSpec(seed=-1)
    with pytest.raises(ValueError, match="no URL form"):
        TwinSpec(variant="tiny", planted=()).to_url()


# --------------------------------------------------------------------------------------------- tiny twin
def test_tiny_interface(tiny_twin_path: Path) -> None:
    model = onnx.load(str(tiny_twin_path))
    onnx.checker.check_model(model)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 10)]
    assert model.producer_name == "ssdtool-synthetic" and model.producer_version == "1"
    sess = session(model)
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.type, inp.shape) == ("image", "tensor(float)", [1, 3, 300, 300])
    outs = {o.name: (o.type, o.shape) for o in sess.get_outputs()}
    assert list(outs) == ["bboxes", "labels", "scores"]
    assert outs["bboxes"][0] == "tensor(float)" and outs["labels"][0] == "tensor(int64)"
    assert outs["scores"][0] == "tensor(float)"
    ops = [n.op_type for n in model.graph.node]
    for op in ("NonMaxSuppression", "TopK", "Softmax", "Exp", "ReduceMin"):
        assert ops.count(op) == 1, op
    produced = {o for n in model.graph.node for o in n.output}
    assert set(HEADS) <= produced


def test_tiny_matches_its_registry_pin_and_is_reproducible(tiny_twin_path: Path) -> None:
    entry = load_registry().model("ssd-resnet34-300-synthetic-tiny")
    file = entry.files[0]
    data = tiny_twin_path.read_bytes()
    assert file.sources[0] == TINY_URL
    assert entry.input.shape == (1, 3, 300, 300)
    assert len(data) == file.size
    assert hashlib.sha256(data).hexdigest() == file.sha256
    if file.sha384:
        assert hashlib.sha384(data).hexdigest() == file.sha384
    again = synthetic.build_model(TwinSpec(variant="tiny")).SerializeToString()
    assert again == data


def test_seed_changes_weights_not_structure() -> None:
    a = synthetic.build_model(TwinSpec(variant="tiny", seed=0))
    b = synthetic.build_model(TwinSpec(variant="tiny", seed=1))
    assert [n.name for n in a.graph.node] == [n.name for n in b.graph.node]
    assert a.SerializeToString() != b.SerializeToString()


def test_weight_streams_are_distinct() -> None:
    # each tensor's random stream is keyed by crc32(name): no two weight tensors may share a key
    model = synthetic.build_model(TwinSpec(variant="tiny"))
    keys = [zlib.crc32(t.name.encode()) for t in model.graph.initializer if t.name.endswith((".weight", ".bias"))]
    assert len(keys) == len(set(keys)) > 100


def test_tiny_heads_only_is_the_furiosa_form(tiny_twin_path: Path) -> None:
    model = synthetic.build_model(TwinSpec(variant="tiny", heads_only=True))
    assert synthetic.parse_synthetic_url(TwinSpec(variant="tiny", heads_only=True).to_url()).heads_only
    loc_shapes, conf_shapes = TINY.head_shapes()
    sess = session(model)
    outs = [(o.name, tuple(o.shape)) for o in sess.get_outputs()]
    assert outs == [*zip(synthetic.HEAD_CONF_NAMES, conf_shapes, strict=True),
                    *zip(synthetic.HEAD_LOC_NAMES, loc_shapes, strict=True)]
    # the cut graph computes exactly the head tensors of the full-form graph
    image = synthetic.sample_images(300)[2][1]
    full = run_with_heads(session(tiny_twin_path, HEADS + DECODED), image)
    heads = dict(zip([o.name for o in sess.get_outputs()],
                     sess.run(None, {"image": synthetic.normalize_image(image)}), strict=True))
    for name in HEADS:
        np.testing.assert_array_equal(heads[name], full[name])


@pytest.fixture(scope="module")
def tiny_runs(tiny_twin_path: Path) -> dict[str, dict[str, np.ndarray]]:
    sess = session(tiny_twin_path, HEADS + DECODED)
    return {name: run_with_heads(sess, image) for name, image in synthetic.sample_images(300)}


def check_reference(runs: dict[str, dict[str, np.ndarray]], geometry: ssd.SsdGeometry) -> int:
    differing = 0
    for out in runs.values():
        # decode: the same numbers to float32 rounding
        boxes, probs = ssd.decode([out[n] for n in synthetic.HEAD_LOC_NAMES],
                                  [out[n] for n in synthetic.HEAD_CONF_NAMES], geometry)
        np.testing.assert_allclose(boxes, out["decode.boxes"][0], atol=1e-6, rtol=0)
        np.testing.assert_allclose(probs, out["probs"][0], atol=2e-6, rtol=0)
        # selection: given onnxruntime's own decoded values, exactly onnxruntime's output
        sb, sl, ss = ssd.select(out["decode.boxes"][0], out["probs"][0])
        np.testing.assert_array_equal(sl, out["labels"][0])
        np.testing.assert_array_equal(sb, out["bboxes"][0])
        np.testing.assert_array_equal(ss, out["scores"][0])
        # end to end
        differing += assert_same_detections(reference(out, geometry), out)
    return differing


def test_tiny_agrees_with_numpy_reference(tiny_runs: dict[str, dict[str, np.ndarray]]) -> None:
    assert check_reference(tiny_runs, TINY) == 0


def test_tiny_candidate_load(tiny_runs: dict[str, dict[str, np.ndarray]]) -> None:
    check_candidate_load(tiny_runs, TINY)


def check_candidate_load(runs: dict[str, dict[str, np.ndarray]], geometry: ssd.SsdGeometry) -> None:
    finals, suppressed, truncated = [], 0, 0
    for name, out in runs.items():
        assert all(np.isfinite(out[n]).all() for n in HEADS), name
        boxes, probs = out["decode.boxes"][0], out["probs"][0]  # onnxruntime's own, so counts are exact
        candidates = int((probs[:, 1:] > np.float32(0.05)).sum())
        assert 100 <= candidates <= 5000, (name, candidates)
        after_nms = len(ssd.select(boxes, probs, max_total=10**6, per_class=200)[2])
        suppressed += candidates - after_nms
        truncated += after_nms > 200
        n = out["scores"].shape[1]
        assert n == min(200, after_nms), name
        finals.append(n)
        labels, scores, bboxes = out["labels"][0], out["scores"][0], out["bboxes"][0]
        assert np.all(np.diff(scores) <= 0) and np.all(scores > np.float32(0.05))
        assert np.all((labels >= 1) & (labels <= 80)) and np.isfinite(bboxes).all()
    assert any(n < 200 for n in finals) and any(n == 200 for n in finals), finals
    assert suppressed > 0 and truncated > 0  # NMS removes boxes and TopK cuts lists


# --------------------------------------------------------------------------------------------- planted
PLANTED = (
    PlantedDetection(box_index=0, label=1, score=0.9),  # level 0, anchor 0, top-left cell
    PlantedDetection(box_index=TINY.box_index(1, 2, 3, 4), label=17, score=0.55),
    PlantedDetection(box_index=TINY.box_index(1, 2, 3, 4), label=18, score=0.25),  # second class, same box
    PlantedDetection(box_index=TINY.box_index(3, 5, 1, 0), label=3, score=0.07),
    PlantedDetection(box_index=TINY.num_boxes - 1, label=80, score=0.3),  # last level, last anchor
)


def run_planted(path: Path, image_index: int = 5) -> dict[str, np.ndarray]:
    sess = session(path)
    image = synthetic.sample_images(300)[image_index][1]
    return dict(zip(["bboxes", "labels", "scores"], sess.run(None, {"image": synthetic.normalize_image(image)}),
                    strict=True))


def assert_exactly(out: dict[str, np.ndarray], expected: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    boxes, labels, scores = expected
    assert out["labels"].shape == (1, len(labels))
    np.testing.assert_array_equal(out["labels"][0], labels)
    np.testing.assert_allclose(out["bboxes"][0], boxes, atol=1e-6, rtol=0)
    np.testing.assert_allclose(out["scores"][0], scores, atol=1e-6, rtol=0)


def test_planted_tiny_returns_exactly_the_planted_detections(planted_tiny_factory: Callable[..., Path]) -> None:
    path = planted_tiny_factory(PLANTED)
    out = run_planted(path)
    default = ssd.default_boxes(TINY, "ltrb")
    by_score = sorted(PLANTED, key=lambda p: -p.score)
    expected = (default[[p.box_index for p in by_score]], np.array([p.label for p in by_score]),
                np.array([p.score for p in by_score], np.float32))
    assert_exactly(out, expected)
    assert_exactly(out, synthetic.planted_expected(PLANTED, TINY))
    # the heads ignore the image
    other = run_planted(path, image_index=0)
    for name in out:
        np.testing.assert_array_equal(out[name], other[name])


def test_planted_overlaps_go_through_nms(planted_tiny_factory: Callable[..., Path]) -> None:
    # anchors 0 and 2 of one level-0 cell overlap by IoU 0.55: the weaker of one class is suppressed,
    # another class on the same box survives
    a, b = TINY.box_index(0, 0, 6, 6), TINY.box_index(0, 2, 6, 6)
    assert ssd.iou_matrix(ssd.default_boxes(TINY)[a], ssd.default_boxes(TINY)[b])[0, 0] > 0.5
    planted = (PlantedDetection(a, 5, 0.8), PlantedDetection(b, 5, 0.6), PlantedDetection(b, 6, 0.3))
    boxes, labels, scores = synthetic.planted_expected(planted, TINY)
    assert labels.tolist() == [5, 6] and scores.tolist() == pytest.approx([0.8, 0.3])
    assert_exactly(run_planted(planted_tiny_factory(planted)), (boxes, labels, scores))


def test_planted_nothing_and_more_than_200(planted_tiny_factory: Callable[..., Path]) -> None:
    assert_exactly(run_planted(planted_tiny_factory(())), synthetic.planted_expected((), TINY))
    # 300 well-separated detections (one class per box index, distinct scores): TopK keeps the best 200
    many = tuple(PlantedDetection(i, 1 + i % 80, 0.06 + 0.003 * k) for k, i in enumerate(range(0, 1098, 3))
                 if k < 300)
    expected = synthetic.planted_expected(many, TINY)
    assert len(expected[2]) == 200
    assert_exactly(run_planted(planted_tiny_factory(many)), expected)


def test_planted_heads_only_decodes_on_the_host(planted_tiny_factory: Callable[..., Path]) -> None:
    sess = session(planted_tiny_factory(PLANTED, heads_only=True))
    outs = dict(zip([o.name for o in sess.get_outputs()],
                    sess.run(None, {"image": synthetic.normalize_image(synthetic.sample_images(300)[0][1])}),
                    strict=True))
    boxes, probs = ssd.decode([outs[n] for n in synthetic.HEAD_LOC_NAMES],
                              [outs[n] for n in synthetic.HEAD_CONF_NAMES], TINY)
    got = ssd.select(boxes, probs)
    assert_exactly({"bboxes": got[0][None], "labels": got[1][None], "scores": got[2][None]},
                   synthetic.planted_expected(PLANTED, TINY))


# --------------------------------------------------------------------------------------------- counters
def test_flop_counter_on_a_hand_computable_graph() -> None:
    w = np.zeros((4, 3, 3, 3), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="backbone.c", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"], name="backbone.r"),
         helper.make_node("MaxPool", ["r"], ["p"], name="backbone.p", kernel_shape=[3, 3], strides=[2, 2]),
         helper.make_node("Conv", ["p", "w2"], ["y"], name="head.y", kernel_shape=[1, 1])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(np.zeros(4, np.float32), "b"),
         onnx.numpy_helper.from_array(np.zeros((2, 4, 1, 1), np.float32), "w2")])
    flops = synthetic.count_flops(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)]))
    # conv: 4x5x5 outputs x (2 x 3x3x3 multiply-adds + 1 bias) = 100 x 55; 1x1 conv: 8 outputs x 2 x 4, no bias
    assert flops.conv == 100 * 55 + 8 * 8
    # ReLU: 100 outputs; max pool: 4x2x2 outputs x 9 window elements
    assert flops.other == 100 + 16 * 9
    assert flops.total == flops.conv + flops.other


def test_tiny_counts() -> None:
    model = synthetic.build_model(TwinSpec(variant="tiny"))
    assert synthetic.count_parameters(model) == 1_222_599
    assert 0.4e9 < synthetic.count_flops(model).total < 0.7e9


# --------------------------------------------------------------------------------------------- full twin
@pytest.mark.slow
def test_full_matches_its_registry_pin_and_is_reproducible(full_twin_path: Path) -> None:
    entry = load_registry().model("ssd-resnet34-1200-synthetic")
    file = entry.files[0]
    data = full_twin_path.read_bytes()
    assert file.sources[0] == FULL_URL
    assert len(data) == file.size
    assert hashlib.sha256(data).hexdigest() == file.sha256
    assert hashlib.sha256(synthetic.build_model(FULL_URL).SerializeToString()).hexdigest() == file.sha256


@pytest.mark.slow
def test_full_size_and_cost_match_the_real_file(full_twin_path: Path) -> None:
    assert abs(full_twin_path.stat().st_size - REAL_SIZE) / REAL_SIZE < 0.01
    model = onnx.load(str(full_twin_path))
    params = synthetic.count_parameters(model)
    assert abs(params - REAL_PARAMS) / REAL_PARAMS < 0.01, params
    flops = synthetic.count_flops(model)
    assert abs(flops.total / 1e9 - REAL_GFLOPS) / REAL_GFLOPS < 0.01, flops
    assert abs(flops.conv / 1e9 - REAL_GFLOPS) / REAL_GFLOPS < 0.01, flops


@pytest.mark.slow
def test_full_interface(full_twin_path: Path) -> None:
    model = onnx.load(str(full_twin_path), load_external_data=False)
    onnx.checker.check_model(model)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 10)]
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["bboxes", "labels", "scores"]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT, TensorProto.INT64,
                                                                          TensorProto.FLOAT]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 1200, 1200]
    heads = synthetic.build_model(TwinSpec(heads_only=True))
    loc_shapes, conf_shapes = FULL.head_shapes()
    got = [(o.name, tuple(d.dim_value for d in o.type.tensor_type.shape.dim)) for o in heads.graph.output]
    assert got == [*zip(synthetic.HEAD_CONF_NAMES, conf_shapes, strict=True),
                   *zip(synthetic.HEAD_LOC_NAMES, loc_shapes, strict=True)]


@pytest.fixture(scope="module")
def full_runs(full_twin_path: Path) -> dict[str, dict[str, np.ndarray]]:
    """One onnxruntime pass of the full twin per sample image, detections and head tensors together."""
    sess = session(full_twin_path, HEADS + DECODED)
    return {name: run_with_heads(sess, image) for name, image in synthetic.sample_images(1200)}


@pytest.mark.slow
def test_full_output_shapes(full_runs: dict[str, dict[str, np.ndarray]]) -> None:
    for out in full_runs.values():
        n = out["scores"].shape[1]
        assert out["bboxes"].shape == (1, n, 4) and out["labels"].shape == (1, n) and n <= 200
        assert out["bboxes"].dtype == np.float32 and out["labels"].dtype == np.int64
        for name, shape in zip(synthetic.HEAD_LOC_NAMES, FULL.head_shapes()[0], strict=True):
            assert out[name].shape == shape


@pytest.mark.slow
def test_full_agrees_with_numpy_reference(full_runs: dict[str, dict[str, np.ndarray]]) -> None:
    check_reference(full_runs, FULL)


@pytest.mark.slow
def test_full_candidate_load(full_runs: dict[str, dict[str, np.ndarray]]) -> None:
    check_candidate_load(full_runs, FULL)


@pytest.mark.slow
def test_planted_full_returns_exactly_the_planted_detections(tmp_path: Path) -> None:
    planted = (
        PlantedDetection(FULL.box_index(0, 3, 49, 49), 44, 0.95),
        PlantedDetection(FULL.box_index(2, 1, 6, 6), 1, 0.5),
        PlantedDetection(FULL.num_boxes - 1, 80, 0.2),
    )
    path = tmp_path / "planted.onnx"
    synthetic.build_to_path(TwinSpec(planted=planted), path)
    sess = session(path)
    image = synthetic.sample_images(1200)[3][1]
    out = dict(zip(["bboxes", "labels", "scores"], sess.run(None, {"image": synthetic.normalize_image(image)}),
                   strict=True))
    assert_exactly(out, synthetic.planted_expected(planted, FULL))
