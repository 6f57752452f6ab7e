"""The numpy reference (ssdtool.ssd): geometry, box order, decode and selection.

Ground truth is MLCommons ``ssd_r34.py`` (``dboxes_R34_coco``/``DefaultBoxes``, ``scale_back_batch``) and
onnxruntime's ``NonMaxSuppression``/``TopK``; the literal transliterations below are written loop by loop
from that code, deliberately unvectorised, so they can disagree with the vectorised module.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from ssdtool import ssd

SIZES = st.integers(min_value=64, max_value=1600)


def mlcommons_default_boxes(fig: int, feat: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``dboxes_R34_coco`` + ``DefaultBoxes.__init__`` for a square figure, loop for loop."""
    steps = [int(fig / f) for f in feat]
    scales = [int(s * fig / 300) for s in [21, 45, 99, 153, 207, 261, 315]]
    ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    fk = [fig // s for s in steps]
    boxes = []
    for idx, sfeat in enumerate(feat):
        sk1 = scales[idx] / fig
        sk2 = scales[idx + 1] / fig
        sk3 = math.sqrt(sk1 * sk2)
        sizes = [(sk1, sk1), (sk3, sk3)]
        for alpha in ratios[idx]:
            w, h = sk1 * math.sqrt(alpha), sk1 / math.sqrt(alpha)
            sizes.append((w, h))
            sizes.append((h, w))
        for w, h in sizes:
            for i, j in itertools.product(range(sfeat), range(sfeat)):
                boxes.append(((j + 0.5) / fk[idx], (i + 0.5) / fk[idx], w, h))
    xywh = np.clip(np.array(boxes, dtype=np.float32), 0, 1)  # torch.tensor(...) is float32; clamp_(0, 1)
    ltrb = xywh.copy()
    ltrb[:, 0] = xywh[:, 0] - 0.5 * xywh[:, 2]
    ltrb[:, 1] = xywh[:, 1] - 0.5 * xywh[:, 3]
    ltrb[:, 2] = xywh[:, 0] + 0.5 * xywh[:, 2]
    ltrb[:, 3] = xywh[:, 1] + 0.5 * xywh[:, 3]
    return xywh, ltrb


# --------------------------------------------------------------------------------------------- geometry
def test_geometry_for_1200_is_dboxes_r34_coco() -> None:
    g = ssd.SsdGeometry.for_input(1200)
    assert g.feature_sizes == (50, 25, 13, 7, 3, 3)
    assert g.steps == (24, 48, 92, 171, 400, 400)
    assert g.scales == (84, 180, 396, 612, 828, 1044, 1260)
    assert g.anchors_per_cell == (4, 6, 6, 6, 4, 4)
    assert g.num_boxes == 15130
    assert g.level_offsets == (0, 10000, 13750, 14764, 15058, 15094)
    locs, confs = g.head_shapes()
    assert locs == [(1, 16, 50, 50), (1, 24, 25, 25), (1, 24, 13, 13), (1, 24, 7, 7), (1, 16, 3, 3), (1, 16, 3, 3)]
    assert confs == [(1, 324, 50, 50), (1, 486, 25, 25), (1, 486, 13, 13), (1, 486, 7, 7), (1, 324, 3, 3),
                     (1, 324, 3, 3)]
    assert ssd.source_map_sizes(1200) == (150, 75, 38, 19, 9, 7)
    assert ssd.tail_padding_for_input(1200) == 0


def test_geometry_for_300_pads_the_tail() -> None:
    # Unpadded, the last two extra blocks would take the 5x5 map to 2x2 and then to nothing.
    assert ssd.tail_padding_for_input(300) == 1
    assert ssd.source_map_sizes(300) == (38, 19, 10, 5, 3, 3)
    g = ssd.SsdGeometry.for_input(300)
    assert g.feature_sizes == (13, 7, 4, 2, 1, 1)
    assert g.scales == (21, 45, 99, 153, 207, 261, 315)
    assert g.num_boxes == 1098


@pytest.mark.parametrize("size", [1200, 300])
def test_default_boxes_match_mlcommons_bit_for_bit(size: int) -> None:
    g = ssd.SsdGeometry.for_input(size)
    xywh, ltrb = mlcommons_default_boxes(size, list(g.feature_sizes))
    np.testing.assert_array_equal(ssd.default_boxes(g, "xywh"), xywh)
    np.testing.assert_array_equal(ssd.default_boxes(g, "ltrb"), ltrb)


def test_default_box_order_is_anchor_then_row_then_column() -> None:
    g = ssd.SsdGeometry.for_input(1200)
    xywh = ssd.default_boxes(g, "xywh")
    # level 0, anchor 0: cells run along x first (row y=0: x = 0.01, 0.03, ...), then the next row
    assert xywh[1, 0] > xywh[0, 0] and xywh[1, 1] == xywh[0, 1]
    assert xywh[50, 1] > xywh[0, 1] and xywh[50, 0] == xywh[0, 0]
    # the 2500 cells of anchor 0 come first (size 84/1200), then anchor 1 (sqrt(84*180)/1200)
    assert np.all(xywh[:2500, 2] == np.float32(0.07))
    assert xywh[2500, 2] == np.float32(math.sqrt(0.07 * 0.15))
    assert g.box_index(0, 1, 0, 0) == 2500
    assert g.box_index(2, 3, 4, 5) == 13750 + 3 * 169 + 4 * 13 + 5


def test_large_default_boxes_extend_outside_the_image() -> None:
    # MLCommons clamps xywh, not ltrb: the big boxes of the last levels reach outside [0, 1].
    ltrb = ssd.default_boxes(ssd.SsdGeometry.for_input(1200), "ltrb")
    assert ltrb.min() < 0 and ltrb.max() > 1


@settings(max_examples=40, deadline=None)
@given(SIZES)
def test_geometry_properties(size: int) -> None:
    g = ssd.SsdGeometry.for_input(size)
    assert g.num_boxes == sum(a * f * f for a, f in zip(g.anchors_per_cell, g.feature_sizes, strict=True))
    xywh = ssd.default_boxes(g, "xywh")
    ltrb = ssd.default_boxes(g, "ltrb")
    assert xywh.shape == ltrb.shape == (g.num_boxes, 4)
    assert xywh.dtype == np.float32 and np.all((xywh >= 0) & (xywh <= 1))
    assert np.all(ltrb[:, 2] >= ltrb[:, 0]) and np.all(ltrb[:, 3] >= ltrb[:, 1])
    np.testing.assert_allclose((ltrb[:, :2] + ltrb[:, 2:]) / 2, xywh[:, :2], atol=1e-6)
    for index in {0, g.num_boxes - 1, g.num_boxes // 2, g.num_boxes // 3}:
        assert g.box_index(*g.box_position(index)) == index


@settings(max_examples=25, deadline=None)
@given(SIZES)
def test_decoding_zero_offsets_gives_the_default_boxes(size: int) -> None:
    g = ssd.SsdGeometry.for_input(size)
    boxes, probs = ssd.decode_flat(np.zeros((4, g.num_boxes), np.float32),
                                   np.zeros((ssd.NUM_CLASSES, g.num_boxes), np.float32), g)
    np.testing.assert_array_equal(boxes, ssd.default_boxes(g, "ltrb"))
    np.testing.assert_allclose(probs, 1 / 81, rtol=1e-6)


def test_decode_follows_scale_back_batch() -> None:
    g = ssd.SsdGeometry.for_input(300)
    rng = np.random.RandomState(0)
    loc = rng.standard_normal((4, g.num_boxes)).astype(np.float32)
    conf = rng.standard_normal((81, g.num_boxes)).astype(np.float32)
    boxes, probs = ssd.decode_flat(loc, conf, g)
    a = ssd.default_boxes(g, "xywh").astype(np.float64)
    d = loc.T.astype(np.float64)
    cx = 0.1 * d[:, 0] * a[:, 2] + a[:, 0]
    cy = 0.1 * d[:, 1] * a[:, 3] + a[:, 1]
    w = np.exp(0.2 * d[:, 2]) * a[:, 2]
    h = np.exp(0.2 * d[:, 3]) * a[:, 3]
    np.testing.assert_allclose(boxes, np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), atol=1e-6)
    e = np.exp(conf.T.astype(np.float64))
    np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), rtol=1e-5)


def test_flatten_heads_uses_the_models_reshape_order() -> None:
    """Channel c of a head is (coord or class) * anchors + anchor; box = offset + anchor*H*W + y*W + x."""
    g = ssd.SsdGeometry.for_input(300)
    locs, confs = [], []
    for level, (a, f) in enumerate(zip(g.anchors_per_cell, g.feature_sizes, strict=True)):
        c, y, x = np.meshgrid(np.arange(4 * a), np.arange(f), np.arange(f), indexing="ij")
        locs.append((level * 1e6 + c * 1e3 + y * 10 + x).astype(np.float64)[None])
        c, y, x = np.meshgrid(np.arange(81 * a), np.arange(f), np.arange(f), indexing="ij")
        confs.append((level * 1e6 + c * 1e3 + y * 10 + x).astype(np.float64)[None])
    loc, conf = ssd.flatten_heads(locs, confs)
    assert loc.shape == (4, g.num_boxes) and conf.shape == (81, g.num_boxes)
    for index in range(g.num_boxes):
        level, anchor, y, x = g.box_position(index)
        a = g.anchors_per_cell[level]
        for coord in range(4):
            assert loc[coord, index] == level * 1e6 + (coord * a + anchor) * 1e3 + y * 10 + x
        assert conf[7, index] == level * 1e6 + (7 * a + anchor) * 1e3 + y * 10 + x


def test_decode_rejects_wrong_shapes() -> None:
    g = ssd.SsdGeometry.for_input(300)
    with pytest.raises(ValueError, match="expected loc"):
        ssd.decode_flat(np.zeros((4, 10), np.float32), np.zeros((81, 10), np.float32), g)
    with pytest.raises(ValueError, match="batch"):
        ssd.flatten_heads([np.zeros((2, 16, 13, 13))], [np.zeros((2, 324, 13, 13))])
    with pytest.raises(ValueError, match="positive"):
        ssd.SsdGeometry.for_input(0)


# --------------------------------------------------------------------------------------------- IoU / NMS
box_strategy = st.tuples(*[st.floats(-0.5, 1.5, width=32)] * 4)


@settings(max_examples=100, deadline=None)
@given(st.lists(box_strategy, min_size=1, max_size=8), st.lists(box_strategy, min_size=1, max_size=8))
def test_iou_is_symmetric_bounded_and_corner_order_free(a: list[tuple[float, ...]], b: list[tuple[float, ...]]) -> None:
    a_arr, b_arr = np.array(a, np.float32), np.array(b, np.float32)
    m = ssd.iou_matrix(a_arr, b_arr)
    np.testing.assert_array_equal(m, ssd.iou_matrix(b_arr, a_arr).T)
    assert np.all((m >= 0) & (m <= 1 + 1e-6))
    np.testing.assert_array_equal(m, ssd.iou_matrix(a_arr[:, [2, 3, 0, 1]], b_arr))
    self_iou = np.diag(ssd.iou_matrix(a_arr, a_arr))
    area = np.abs((a_arr[:, 2] - a_arr[:, 0]) * (a_arr[:, 3] - a_arr[:, 1]))
    np.testing.assert_allclose(self_iou[area > 1e-6], 1.0, rtol=1e-6)


def greedy_nms_literal(boxes: np.ndarray, scores: np.ndarray, thr: float, score_thr: float, limit: int) -> list[int]:
    """onnxruntime's loop, written out: candidates by score (ties: lower index), drop IoU > thr."""
    cand = sorted((i for i in range(len(scores)) if scores[i] > np.float32(score_thr)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in cand:
        if len(kept) >= limit:
            break
        if all(ssd.iou_matrix(boxes[i], boxes[k])[0, 0] <= np.float32(thr) for k in kept):
            kept.append(i)
    return kept


def random_boxes(rng: np.random.RandomState, n: int) -> np.ndarray:
    xy = rng.random_sample((n, 2)) * 0.8
    wh = rng.random_sample((n, 2)) * 0.3 + 0.01
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 60), st.integers(1, 10))
def test_nms_matches_the_literal_greedy_loop(seed: int, n: int, limit: int) -> None:
    rng = np.random.RandomState(seed)
    boxes = random_boxes(rng, n)
    scores = np.round(rng.random_sample(n), 1).astype(np.float32)  # coarse: many ties
    kept = ssd.nms(boxes, scores, 0.5, 0.05, limit)
    assert kept.tolist() == greedy_nms_literal(boxes, scores, 0.5, 0.05, limit)


def test_nms_agrees_with_onnxruntime() -> None:
    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["b", "s", "m", "i", "t"], ["o"])], "nms",
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, None, 4]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, None, None])],
        [helper.make_tensor_value_info("o", TensorProto.INT64, [None, 3])],
        [helper.make_tensor("m", TensorProto.INT64, [1], [7]), helper.make_tensor("i", TensorProto.FLOAT, [1], [0.5]),
         helper.make_tensor("t", TensorProto.FLOAT, [1], [0.05])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)], ir_version=5)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for seed in range(40):
        rng = np.random.RandomState(seed)
        n = 1 + seed * 3
        boxes = random_boxes(rng, n)
        scores = np.round(rng.random_sample((3, n)), 2).astype(np.float32)
        scores[0, 0] = np.float32(0.05)  # exactly at threshold: dropped
        (selected,) = session.run(None, {"b": boxes[None], "s": scores[None]})
        for c in range(3):
            ours = ssd.nms(boxes, scores[c], 0.5, 0.05, 7).tolist()
            assert ours == selected[selected[:, 1] == c, 2].tolist(), (seed, c)


def naive_select(boxes: np.ndarray, probs: np.ndarray, per_class: int, total: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx, labels, scores = [], [], []
    for c in range(1, probs.shape[1]):
        kept = greedy_nms_literal(boxes, probs[:, c], 0.5, 0.05, per_class)
        idx += kept
        labels += [c] * len(kept)
        scores += [probs[k, c] for k in kept]
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:total]
    return (boxes[np.array(idx, dtype=np.int64)[order]].reshape(-1, 4), np.array(labels, np.int64)[order],
            np.array(scores, np.float32)[order])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31 - 1), st.integers(1, 80), st.integers(1, 12), st.integers(1, 30))
def test_select_properties_and_naive_agreement(seed: int, n: int, per_class: int, total: int) -> None:
    rng = np.random.RandomState(seed)
    boxes = random_boxes(rng, n)
    logits = rng.standard_normal((n, 6)).astype(np.float32) * 3
    probs = np.round(ssd.softmax(logits), 2).astype(np.float32)  # rounding makes ties
    b, lab, s = ssd.select(boxes, probs, per_class=per_class, max_total=total)
    assert len(b) == len(lab) == len(s) <= total
    assert np.all(np.diff(s) <= 0) and np.all(s > np.float32(0.05))
    assert np.all((lab >= 1) & (lab <= 5))
    for c in set(lab.tolist()):
        same = b[lab == c]
        assert (lab == c).sum() <= per_class
        iou = ssd.iou_matrix(same, same)
        np.fill_diagonal(iou, 0)
        assert np.all(iou <= np.float32(0.5))
    nb, nl, ns = naive_select(boxes, probs, per_class, total)
    np.testing.assert_array_equal(b, nb)
    np.testing.assert_array_equal(lab, nl)
    np.testing.assert_array_equal(s, ns)


def test_select_full_size_is_fast_and_capped() -> None:
    g = ssd.SsdGeometry.for_input(1200)
    rng = np.random.RandomState(0)
    logits = rng.standard_normal((g.num_boxes, 81)).astype(np.float32) * 4
    logits[:, 0] += 8
    probs = ssd.softmax(logits)
    assert (probs[:, 1:] > 0.05).sum() > 20_000  # a heavy load: ~30 k candidates
    start = time.perf_counter()
    _, _, scores = ssd.select(ssd.default_boxes(g), probs)
    elapsed = time.perf_counter() - start
    assert len(scores) == 200 and np.all(np.diff(scores) <= 0)
    assert elapsed < 2.0, f"select took {elapsed:.2f} s"  # ~0.03 s here; generous for slow CI machines


def test_select_of_nothing() -> None:
    b, lab, s = ssd.select(np.zeros((5, 4), np.float32), np.full((5, 81), 1 / 81, np.float32))
    assert b.shape == (0, 4) and lab.shape == (0,) and s.shape == (0,)
    assert lab.dtype == np.int64 and s.dtype == np.float32


def test_ssd_module_imports_only_numpy() -> None:
    code = ("import sys; import ssdtool.ssd; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('onnx', 'onnxruntime', 'openvino', 'yaml', 'requests', 'PIL', 'click')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
