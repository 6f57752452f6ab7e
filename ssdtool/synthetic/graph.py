"""The twin's ONNX graph: seeded weights, backbone, extras, heads and the export's decode/NMS tail; and counting
its parameters and FLOPs."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ssdtool import ssd
from ssdtool.synthetic.spec import (
    HEAD_CONF_NAMES,
    HEAD_LOC_NAMES,
    IOU_THRESHOLD,
    IR_VERSION,
    MAX_DETECTIONS,
    OPSET,
    PLANTED_EPSILON,
    PRODUCER_NAME,
    PRODUCER_VERSION,
    SCORE_THRESHOLD,
    TwinSpec,
    parse_synthetic_url,
)

# --------------------------------------------------------------------------------------------- calibration
# Weight scales. Chosen by measuring activations on sample_images() (see docs/synthetic.md); they are
# fixed constants, never fitted at build time, so the bytes depend on nothing but the spec.
#
# He-uniform for convs followed by ReLU keeps the activation second moment roughly constant; the last
# conv of each residual branch is damped so the 13 residual additions keep activations of order one.
_RESIDUAL_GAIN = 0.25
_BIAS_BOUND = 0.05  # folded-BN / conv biases: small, zero-centred
_LOC_GAIN = 0.35  # loc head: offsets of order one, so decoded boxes stay near their default boxes
# conf head. Class logits spread ~_CONF_GAIN x rms(feature). A (class, anchor) weight is
# _CONF_SHARE x a per-class part + sqrt(1 - _CONF_SHARE^2) x its own part, so one class tends to fire
# on several anchors of a cell at once and NMS has overlapping same-class boxes to suppress.
# The background logit is _BACKGROUND_LOGIT + _BACKGROUND_TRACK x (mean activation in the 3x3 window):
# a ReLU network scales with image contrast, and a background that scales along keeps the share of
# (box, class) pairs above 0.05 within a few hundred to a few thousand on flat and busy images alike.
_CONF_GAIN = 1.0
_CONF_SHARE = 0.9
_BACKGROUND_LOGIT: dict[str, float] = {"full": 4.0, "tiny": 6.0}
_BACKGROUND_TRACK: dict[str, float] = {"full": 5.0, "tiny": 2.5}


# --------------------------------------------------------------------------------------------- weights
def _uniform(seed: int, name: str, shape: Sequence[int], bound: float) -> np.ndarray:
    """Seeded uniform(-bound, bound) float32 tensor, identical on every platform.

    ``RandomState`` is numpy's legacy generator, whose stream is frozen across releases; keyed by
    (seed, crc32(name)) so each tensor's values depend on its name only, not on build order.
    ``random_sample`` turns integer bits into doubles exactly, and the scaling is elementwise IEEE
    arithmetic, so no libm or BLAS difference can change a bit.
    """
    rs = np.random.RandomState([seed, zlib.crc32(name.encode("utf-8"))])
    u = rs.random_sample(int(np.prod(shape, dtype=np.int64)))
    return ((u * 2.0 - 1.0) * bound).astype("<f4").reshape(tuple(shape))


class _Graph:
    """Accumulates nodes and initializers in a fixed order with stable names."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        arr = np.asarray(array)
        if arr.dtype == np.float32 or arr.dtype == np.float64:
            arr = arr.astype("<f4")
            dtype = TensorProto.FLOAT
        elif arr.dtype == np.int64:
            arr = arr.astype("<i8")
            dtype = TensorProto.INT64
        else:
            raise TypeError(f"unsupported constant dtype {arr.dtype}")
        tensor = helper.make_tensor(name, dtype, arr.shape, arr.tobytes(), raw=True)
        self.initializers.append(tensor)
        return name

    def node(self, op: str, inputs: Sequence[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=output, **attrs))
        return output

    def conv(
        self,
        name: str,
        x: str,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        pad: int,
        *,
        gain: float,
        bias_bound: float = _BIAS_BOUND,
        weight: np.ndarray | None = None,
        bias: np.ndarray | None = None,
        output: str | None = None,
    ) -> str:
        """Conv with bias (batch norm folded in, as in the real export); He-uniform x ``gain``."""
        fan_in = cin * kernel * kernel
        w = weight if weight is not None else _uniform(
            self.seed, name + ".weight", (cout, cin, kernel, kernel), gain * math.sqrt(6.0 / fan_in)
        )
        b = bias if bias is not None else _uniform(self.seed, name + ".bias", (cout,), bias_bound)
        self.const(name + ".weight", w)
        self.const(name + ".bias", b)
        return self.node(
            "Conv",
            [x, name + ".weight", name + ".bias"],
            output or name,
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad, pad, pad, pad],
        )


# --------------------------------------------------------------------------------------------- network
def _backbone(g: _Graph, x: str, div: int) -> str:
    """torchvision ResNet-34 to layer3 with layer3's first stride set to 1 (MLCommons ``ResNet34``)."""
    c64, c128, c256 = 64 // div, 128 // div, 256 // div
    x = g.conv("backbone.conv1", x, 3, c64, 7, 2, 3, gain=1.0)
    x = g.node("Relu", [x], "backbone.relu")
    x = g.node("MaxPool", [x], "backbone.maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = c64
    for layer, (cout, blocks, stride) in enumerate(((c64, 3, 1), (c128, 4, 2), (c256, 6, 1)), start=1):
        for block in range(blocks):
            name = f"backbone.layer{layer}.{block}"
            s = stride if block == 0 else 1
            y = g.conv(f"{name}.conv1", x, cin, cout, 3, s, 1, gain=1.0)
            y = g.node("Relu", [y], f"{name}.relu1")
            y = g.conv(f"{name}.conv2", y, cout, cout, 3, 1, 1, gain=_RESIDUAL_GAIN)
            identity = x
            if block == 0 and (s != 1 or cin != cout):
                # linear projection: variance 1/fan_in, i.e. He-uniform / sqrt(2)
                identity = g.conv(f"{name}.downsample", x, cin, cout, 1, s, 0, gain=math.sqrt(0.5))
            y = g.node("Add", [y, identity], f"{name}.add")
            x = g.node("Relu", [y], f"{name}.relu2")
            cin = cout
    return x


def _extras(g: _Graph, x: str, div: int, tail_pad: int) -> list[str]:
    """The five extra blocks of ``SSD_R34._build_additional_features``."""
    plan = (  # (in, mid, out, stride, pad) before the width divisor
        (256, 256, 512, 2, 1),
        (512, 256, 512, 2, 1),
        (512, 128, 256, 2, 1),
        (256, 128, 256, 2, tail_pad),
        (256, 128, 256, 1, tail_pad),
    )
    maps = []
    for i, (cin, mid, cout, stride, pad) in enumerate(plan):
        name = f"extra.{i}"
        x = g.conv(f"{name}.conv1", x, cin // div, mid // div, 1, 1, 0, gain=1.0)
        x = g.node("Relu", [x], f"{name}.relu1")
        x = g.conv(f"{name}.conv2", x, mid // div, cout // div, 3, stride, pad, gain=1.0)
        x = g.node("Relu", [x], f"{name}.relu2")
        maps.append(x)
    return maps


def _heads(g: _Graph, spec: TwinSpec, sources: list[str]) -> tuple[list[str], list[str]]:
    """Six loc and six conf heads: 3x3, stride 3, padding 1. Outputs are named loc_i / conf_i."""
    geometry = spec.geometry
    channels = [c // spec.width_divisor for c in (256, 512, 512, 256, 256, 256)]
    planted_logits = _planted_logits(spec) if spec.planted is not None else None
    locs, confs = [], []
    for i, (src, cin, anchors) in enumerate(zip(sources, channels, geometry.anchors_per_cell, strict=True)):
        fs = geometry.feature_sizes[i]
        n_loc, n_conf = anchors * 4, anchors * ssd.NUM_CLASSES
        if planted_logits is None:
            loc = g.conv(f"head.loc.{i}", src, cin, n_loc, 3, 3, 1, gain=_LOC_GAIN / math.sqrt(2.0),
                         output=HEAD_LOC_NAMES[i])
            conf_w, conf_b = _conf_weights(spec, i, cin, anchors)
            conf = g.conv(f"head.conf.{i}", src, cin, n_conf, 3, 3, 1, gain=0.0, weight=conf_w, bias=conf_b,
                          output=HEAD_CONF_NAMES[i])
        else:
            # Zero weights make the heads ignore the image; a conv bias is the same at every cell, so
            # the per-cell logits come from a constant added after the conv.
            loc = g.conv(f"head.loc.{i}", src, cin, n_loc, 3, 3, 1, gain=0.0,
                         weight=np.zeros((n_loc, cin, 3, 3), np.float32), bias=np.zeros(n_loc, np.float32),
                         output=HEAD_LOC_NAMES[i])
            raw = g.conv(f"head.conf.{i}", src, cin, n_conf, 3, 3, 1, gain=0.0,
                         weight=np.zeros((n_conf, cin, 3, 3), np.float32), bias=np.zeros(n_conf, np.float32),
                         output=f"head.conf.{i}.zero")
            lo = geometry.level_offsets[i]
            block = planted_logits[:, lo:lo + geometry.level_sizes[i]]
            # inverse of the model's reshape [1, A*81, H, W] -> [1, 81, A*H*W]
            const = g.const(f"head.conf.{i}.planted", block.reshape(1, n_conf, fs, fs))
            conf = g.node("Add", [raw, const], HEAD_CONF_NAMES[i])
        locs.append(loc)
        confs.append(conf)
    return locs, confs


def _conf_weights(spec: TwinSpec, level: int, cin: int, anchors: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded conf head of one level; channel ``class*anchors + anchor`` (see ssdtool.ssd)."""
    name = f"head.conf.{level}"
    shape = (anchors * ssd.NUM_CLASSES, cin, 3, 3)
    fan_in = cin * 9
    bound = _CONF_GAIN * math.sqrt(3.0 / fan_in)  # logit std ~ _CONF_GAIN x rms(input)
    own = _uniform(spec.seed, name + ".weight", shape, bound).astype(np.float64)
    shared = _uniform(spec.seed, name + ".weight.shared", (ssd.NUM_CLASSES, cin, 3, 3), bound).astype(np.float64)
    w = math.sqrt(1.0 - _CONF_SHARE**2) * own + _CONF_SHARE * np.repeat(shared, anchors, axis=0)
    w[:anchors] += _BACKGROUND_TRACK[spec.variant] / fan_in  # background rows: class 0, every anchor
    b = np.zeros(shape[0], dtype=np.float32)
    b[:anchors] = _BACKGROUND_LOGIT[spec.variant]
    return w.astype("<f4"), b


def _planted_logits(spec: TwinSpec) -> np.ndarray:
    """Conf logits ``[81, N]`` whose softmax is exactly the planted probabilities.

    Logits are log-probabilities of a distribution that sums to one, so softmax returns them
    unchanged: the planted score for its class, ``PLANTED_EPSILON`` for every other foreground class,
    background takes the rest. (``np.log`` is the one libm call in the builder; planted twins are
    built in tests and never pinned by checksum, and their outputs are compared with a tolerance.)
    """
    assert spec.planted is not None
    n = spec.geometry.num_boxes
    probs = np.full((ssd.NUM_CLASSES, n), PLANTED_EPSILON, dtype=np.float64)
    probs[0, :] = 1.0 - (ssd.NUM_CLASSES - 1) * PLANTED_EPSILON
    for p in spec.planted:
        probs[p.label, p.box_index] = p.score
    fg_sum = probs[1:, :].sum(axis=0)
    probs[0, :] = 1.0 - fg_sum
    return np.log(probs).astype(np.float32)


def _tail(g: _Graph, locs: list[str], confs: list[str], geometry: ssd.SsdGeometry) -> None:
    """Reshape/concat, decode (``scale_back_batch``) and the selection the PyTorch export produced:
    NonMaxSuppression over the 80 foreground classes, gather, TopK(min(200, selected)), labels + 1."""
    n = geometry.num_boxes
    g.const("shape.loc", np.array([1, 4, -1], np.int64))
    g.const("shape.conf", np.array([1, ssd.NUM_CLASSES, -1], np.int64))
    flat_locs = [g.node("Reshape", [t, "shape.loc"], f"{t}.flat") for t in locs]
    flat_confs = [g.node("Reshape", [t, "shape.conf"], f"{t}.flat") for t in confs]
    loc = g.node("Concat", flat_locs, "locs", axis=2)  # [1, 4, N]
    conf = g.node("Concat", flat_confs, "confs", axis=2)  # [1, 81, N]

    # decode, in the operation order of scale_back_batch
    anchors = ssd.default_boxes(geometry, "xywh")[None]  # [1, N, 4]
    # A traced export folds each slice of the anchor tensor into its own constant: wh is taken twice.
    g.const("dboxes.wh_for_xy", anchors[:, :, 2:])
    g.const("dboxes.xy", anchors[:, :, :2])
    g.const("dboxes.wh", anchors[:, :, 2:])
    g.const("scale_xy", np.array(geometry.scale_xy, np.float32))
    g.const("scale_wh", np.array(geometry.scale_wh, np.float32))
    g.const("half", np.array(0.5, np.float32))
    for name, values in (("slice.xy", (0, 2)), ("slice.wh", (2, 4))):
        g.const(f"{name}.starts", np.array([values[0]], np.int64))
        g.const(f"{name}.ends", np.array([values[1]], np.int64))
    g.const("axis2", np.array([2], np.int64))
    loc_t = g.node("Transpose", [loc], "locs.t", perm=[0, 2, 1])  # [1, N, 4]
    d_xy = g.node("Slice", [loc_t, "slice.xy.starts", "slice.xy.ends", "axis2"], "decode.d_xy")
    d_wh = g.node("Slice", [loc_t, "slice.wh.starts", "slice.wh.ends", "axis2"], "decode.d_wh")
    xy = g.node("Mul", [d_xy, "scale_xy"], "decode.xy_scaled")
    xy = g.node("Mul", [xy, "dboxes.wh_for_xy"], "decode.xy_offset")
    xy = g.node("Add", [xy, "dboxes.xy"], "decode.xy")
    wh = g.node("Mul", [d_wh, "scale_wh"], "decode.wh_scaled")
    wh = g.node("Exp", [wh], "decode.wh_exp")
    wh = g.node("Mul", [wh, "dboxes.wh"], "decode.wh")
    half = g.node("Mul", [wh, "half"], "decode.half_wh")
    lt = g.node("Sub", [xy, half], "decode.lt")
    rb = g.node("Add", [xy, half], "decode.rb")
    boxes = g.node("Concat", [lt, rb], "decode.boxes", axis=2)  # [1, N, 4] ltrb

    conf_t = g.node("Transpose", [conf], "confs.t", perm=[0, 2, 1])  # [1, N, 81]
    # opset < 13 Softmax flattens from `axis` on, so the class axis must be last
    probs = g.node("Softmax", [conf_t], "probs", axis=2)
    probs_t = g.node("Transpose", [probs], "probs.t", perm=[0, 2, 1])  # [1, 81, N]
    g.const("slice.fg.starts", np.array([1], np.int64))
    g.const("slice.fg.ends", np.array([ssd.NUM_CLASSES], np.int64))
    g.const("axis1", np.array([1], np.int64))
    fg = g.node("Slice", [probs_t, "slice.fg.starts", "slice.fg.ends", "axis1"], "probs.fg")  # [1, 80, N]

    g.const("nms.max_per_class", np.array([MAX_DETECTIONS], np.int64))
    g.const("nms.iou_threshold", np.array([IOU_THRESHOLD], np.float32))
    g.const("nms.score_threshold", np.array([SCORE_THRESHOLD], np.float32))
    selected = g.node(
        "NonMaxSuppression",
        [boxes, fg, "nms.max_per_class", "nms.iou_threshold", "nms.score_threshold"],
        "nms.selected",
    )  # [K, 3]: batch, class, box
    g.const("index1", np.array(1, np.int64))
    g.const("index2", np.array(2, np.int64))
    sel_class = g.node("Gather", [selected, "index1"], "nms.class", axis=1)
    sel_box = g.node("Gather", [selected, "index2"], "nms.box", axis=1)
    g.const("shape.flat", np.array([-1], np.int64))
    g.const("num_boxes", np.array(n, np.int64))
    fg_flat = g.node("Reshape", [fg, "shape.flat"], "probs.fg.flat")
    flat_index = g.node("Mul", [sel_class, "num_boxes"], "nms.class_offset")
    flat_index = g.node("Add", [flat_index, sel_box], "nms.flat_index")
    sel_scores = g.node("Gather", [fg_flat, flat_index], "nms.scores", axis=0)

    g.const("topk.max", np.array([MAX_DETECTIONS], np.int64))
    count = g.node("Shape", [sel_scores], "topk.count")
    k = g.node("Concat", ["topk.max", count], "topk.candidates", axis=0)
    k = g.node("ReduceMin", [k], "topk.k", keepdims=1)
    g.nodes.append(helper.make_node("TopK", [sel_scores, k], ["topk.values", "topk.indices"], name="topk", axis=0))

    top_box = g.node("Gather", [sel_box, "topk.indices"], "select.box", axis=0)
    boxes_2d = g.node("Squeeze", [boxes], "decode.boxes.2d", axes=[0])
    picked = g.node("Gather", [boxes_2d, top_box], "select.bboxes", axis=0)
    g.node("Unsqueeze", [picked], "bboxes", axes=[0])
    g.const("one", np.array(1, np.int64))
    top_class = g.node("Gather", [sel_class, "topk.indices"], "select.class", axis=0)
    labels = g.node("Add", [top_class, "one"], "select.labels")
    g.node("Unsqueeze", [labels], "labels", axes=[0])
    g.node("Unsqueeze", ["topk.values"], "scores", axes=[0])


def build_model(spec: TwinSpec | str) -> onnx.ModelProto:
    """Build the twin described by ``spec`` (a :class:`TwinSpec` or a ``synthetic:`` URL)."""
    if isinstance(spec, str):
        spec = parse_synthetic_url(spec)
    geometry = spec.geometry
    div = spec.width_divisor
    g = _Graph(spec.seed)
    trunk = _backbone(g, "image", div)
    sources = [trunk, *_extras(g, trunk, div, ssd.tail_padding_for_input(spec.image_size))]
    locs, confs = _heads(g, spec, sources)
    size = spec.image_size
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])]
    if spec.heads_only:
        loc_shapes, conf_shapes = geometry.head_shapes()
        outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))
                   for name, shape in zip(HEAD_CONF_NAMES, conf_shapes, strict=True)]
        outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))
                    for name, shape in zip(HEAD_LOC_NAMES, loc_shapes, strict=True)]
    else:
        _tail(g, locs, confs, geometry)
        outputs = [
            helper.make_tensor_value_info("bboxes", TensorProto.FLOAT, [1, "num_detections", 4]),
            helper.make_tensor_value_info("labels", TensorProto.INT64, [1, "num_detections"]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, "num_detections"]),
        ]
    graph = helper.make_graph(g.nodes, "ssd-resnet34-synthetic", inputs, outputs, initializer=g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
    )
    description = spec.to_url() if spec.planted is None else f"planted ({len(spec.planted)} detections)"
    helper.set_model_props(model, {"ssdtool.synthetic": description, "ssdtool.variant": spec.variant})
    return model


def build_to_path(spec: TwinSpec | str, path: str | Path) -> None:
    """Build and write the twin to ``path`` (written directly; callers handle temp + rename)."""
    data = build_model(spec).SerializeToString()
    with open(path, "wb") as fh:
        fh.write(data)



# --------------------------------------------------------------------------------------------- counting
def count_parameters(model: onnx.ModelProto) -> int:
    """Elements of all float initializers (conv weights and biases, anchor constants, scalars)."""
    total = 0
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            total += int(np.prod(t.dims, dtype=np.int64))
    return total


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one inference. A multiply-add counts 2; a bias add, ReLU, residual Add 1 per output
    element; a max pool one comparison per window element. ``conv`` is the conv share."""

    conv: int
    other: int

    @property
    def total(self) -> int:
        return self.conv + self.other


def count_flops(model: onnx.ModelProto) -> FlopCount:
    """Count FLOPs of the Conv, Relu, Add (residual) and MaxPool nodes of a static-shape network.

    Uses ONNX shape inference for the activation shapes; nodes past the heads (decode, NMS) are
    not counted (they are a rounding error next to 433 GFLOPs).
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    conv = other = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out = shapes[node.output[0]]
            _cout, cin_per_group, kh, kw = weights[node.input[1]]
            out_elems = int(np.prod(out, dtype=np.int64))
            conv += out_elems * 2 * cin_per_group * kh * kw
            if len(node.input) > 2 and node.input[2]:
                conv += out_elems
        elif node.op_type in ("Relu", "Add") and node.output[0] in shapes and not _is_tail(node):
            other += int(np.prod(shapes[node.output[0]], dtype=np.int64))
        elif node.op_type == "MaxPool":
            kernel = next(a.ints for a in node.attribute if a.name == "kernel_shape")
            other += int(np.prod(shapes[node.output[0]], dtype=np.int64)) * int(np.prod(kernel))
    return FlopCount(conv=conv, other=other)


def _is_tail(node: onnx.NodeProto) -> bool:
    return not node.name.startswith(("backbone.", "extra.", "head."))
