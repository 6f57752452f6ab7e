"""The synthetic twin of ``resnet34-ssd1200.onnx``: same network, interface and export pattern, seeded weights.

The real file cannot be fetched in CI, so every test, benchmark and smoke check runs on this twin.
It is built with ``onnx.helper`` and numpy only, and is byte-reproducible: the same spec gives the
same bytes on every machine, Python and numpy version (see :func:`_uniform` for how).

Variants, all from one builder (``TwinSpec``):

* ``full``: 1200 px, 20.06 M parameters, 433 GFLOPs, ~80.2 MB: the real file's size and cost.
* ``tiny``: 300 px, channel widths / 8, default boxes for the 300 px feature sizes; milliseconds.
* ``planted``: either geometry, head tensors independent of the image that encode a chosen set of
  detections exactly (zero head weights plus a constant added to the conf heads).
* ``heads_only``: the graph cut after the twelve head tensors, conf first then loc (Furiosa form).

URL form used by the registry: ``synthetic:ssd-resnet34?seed=0`` and ``...&variant=tiny``
(optionally ``&outputs=heads``). See docs/synthetic.md.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import onnx
from onnx import TensorProto, helper

from ssdtool import ssd

__all__ = [
    "HEAD_CONF_NAMES",
    "HEAD_LOC_NAMES",
    "OPSET",
    "PRODUCER_NAME",
    "PRODUCER_VERSION",
    "URL_SCHEME",
    "FlopCount",
    "PlantedDetection",
    "SyntheticUrlError",
    "TwinSpec",
    "build_model",
    "build_to_path",
    "count_flops",
    "count_parameters",
    "is_synthetic_url",
    "normalize_image",
    "parse_synthetic_url",
    "planted_expected",
    "sample_images",
]

URL_SCHEME = "synthetic"
URL_MODEL = "ssd-resnet34"
OPSET = 10
IR_VERSION = 5  # the IR version that goes with opset 10 (ONNX 1.5), as in the PyTorch export of the real file
PRODUCER_NAME = "ssdtool-synthetic"
PRODUCER_VERSION = "1"  # bump only when the bytes change on purpose; never the ssdtool version

HEAD_LOC_NAMES: tuple[str, ...] = tuple(f"loc_{i}" for i in range(6))
HEAD_CONF_NAMES: tuple[str, ...] = tuple(f"conf_{i}" for i in range(6))

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

MAX_DETECTIONS = 200
IOU_THRESHOLD = 0.5
SCORE_THRESHOLD = 0.05

_VARIANTS: dict[str, tuple[int, int]] = {"full": (1200, 1), "tiny": (300, 8)}  # image size, width divisor
_OUTPUT_FORMS = ("detections", "heads")


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

# Planted models: every non-planted foreground probability is this (far below the 0.05 threshold).
_PLANTED_EPS = 1e-6


# --------------------------------------------------------------------------------------------- specs
class SyntheticUrlError(ValueError):
    """A ``synthetic:`` URL that cannot be parsed; the message says what was expected."""


@dataclass(frozen=True)
class PlantedDetection:
    """One detection a planted model must return: default box ``box_index`` with class ``label``
    (1..80) at probability ``score`` (strictly between 0.05 and 1). Its box is that default box."""

    box_index: int
    label: int
    score: float


@dataclass(frozen=True)
class TwinSpec:
    """What to build. ``planted=None`` means seeded heads; a tuple (even empty) means planted heads."""

    seed: int = 0
    variant: str = "full"
    heads_only: bool = False
    planted: tuple[PlantedDetection, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.variant not in _VARIANTS:
            raise ValueError(f"unknown synthetic variant {self.variant!r}; expected one of {sorted(_VARIANTS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in 0..2**32-1, got {self.seed!r}")
        if self.planted is not None:
            planted = tuple(self.planted)
            object.__setattr__(self, "planted", planted)
            _validate_planted(planted, self.geometry)

    @property
    def image_size(self) -> int:
        return _VARIANTS[self.variant][0]

    @property
    def width_divisor(self) -> int:
        return _VARIANTS[self.variant][1]

    @property
    def geometry(self) -> ssd.SsdGeometry:
        return ssd.SsdGeometry.for_input(self.image_size)

    def to_url(self) -> str:
        """The canonical ``synthetic:`` URL; planted specs have none (they are built in code)."""
        if self.planted is not None:
            raise ValueError("planted twins have no URL form; build them with build_model()")
        url = f"{URL_SCHEME}:{URL_MODEL}?seed={self.seed}"
        if self.variant != "full":
            url += f"&variant={self.variant}"
        if self.heads_only:
            url += "&outputs=heads"
        return url


def _validate_planted(planted: tuple[PlantedDetection, ...], geometry: ssd.SsdGeometry) -> None:
    per_box: dict[int, float] = {}
    seen: set[tuple[int, int]] = set()
    for p in planted:
        if not isinstance(p, PlantedDetection):
            raise ValueError(f"planted entries must be PlantedDetection, got {p!r}")
        if not 0 <= p.box_index < geometry.num_boxes:
            raise ValueError(f"planted box_index {p.box_index} out of range 0..{geometry.num_boxes - 1}")
        if not 1 <= p.label <= ssd.NUM_CLASSES - 1:
            raise ValueError(f"planted label {p.label} out of range 1..{ssd.NUM_CLASSES - 1}")
        if not SCORE_THRESHOLD < p.score < 1.0:
            raise ValueError(f"planted score {p.score} must be strictly between {SCORE_THRESHOLD} and 1")
        if (p.box_index, p.label) in seen:
            raise ValueError(f"box {p.box_index} planted twice with label {p.label}")
        seen.add((p.box_index, p.label))
        per_box[p.box_index] = per_box.get(p.box_index, 0.0) + p.score
    limit = 1.0 - ssd.NUM_CLASSES * _PLANTED_EPS
    for box, total in per_box.items():
        if total >= limit:
            raise ValueError(f"planted scores at box {box} sum to {total}; they must leave room for background")


def is_synthetic_url(url: str) -> bool:
    return url.startswith(URL_SCHEME + ":")


def parse_synthetic_url(url: str) -> TwinSpec:
    """Parse ``synthetic:ssd-resnet34?seed=N[&variant=full|tiny][&outputs=detections|heads]``."""
    prefix = f"{URL_SCHEME}:{URL_MODEL}"
    expected = f"expected {prefix}?seed=N[&variant=full|tiny][&outputs=detections|heads]"
    if not isinstance(url, str) or not url.startswith(URL_SCHEME + ":"):
        raise SyntheticUrlError(f"not a synthetic URL: {url!r}; {expected}")
    head, _, query = url.partition("?")
    if head != prefix:
        raise SyntheticUrlError(f"unknown synthetic model {head[len(URL_SCHEME) + 1:]!r} in {url!r}; {expected}")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise SyntheticUrlError(f"malformed query in {url!r}; {expected}") from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise SyntheticUrlError(f"parameter {key!r} given twice in {url!r}")
        params[key] = value
    unknown = sorted(set(params) - {"seed", "variant", "outputs"})
    if unknown:
        raise SyntheticUrlError(f"unknown parameter(s) {', '.join(unknown)} in {url!r}; {expected}")
    if "seed" not in params:
        raise SyntheticUrlError(f"missing seed in {url!r}; {expected}")
    seed_text = params["seed"]
    if not re.fullmatch(r"0|[1-9][0-9]{0,9}", seed_text) or int(seed_text) >= 2**32:
        raise SyntheticUrlError(f"seed must be a decimal integer in 0..4294967295, got {seed_text!r} in {url!r}")
    variant = params.get("variant", "full")
    if variant not in _VARIANTS:
        raise SyntheticUrlError(f"unknown variant {variant!r} in {url!r}; expected one of {sorted(_VARIANTS)}")
    outputs = params.get("outputs", "detections")
    if outputs not in _OUTPUT_FORMS:
        raise SyntheticUrlError(f"unknown outputs {outputs!r} in {url!r}; expected one of {list(_OUTPUT_FORMS)}")
    return TwinSpec(seed=int(seed_text), variant=variant, heads_only=outputs == "heads")


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
    unchanged: the planted score for its class, ``_PLANTED_EPS`` for every other foreground class,
    background takes the rest. (``np.log`` is the one libm call in the builder; planted twins are
    built in tests and never pinned by checksum, and their outputs are compared with a tolerance.)
    """
    assert spec.planted is not None
    n = spec.geometry.num_boxes
    probs = np.full((ssd.NUM_CLASSES, n), _PLANTED_EPS, dtype=np.float64)
    probs[0, :] = 1.0 - (ssd.NUM_CLASSES - 1) * _PLANTED_EPS
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


def planted_expected(
    planted: Iterable[PlantedDetection], geometry: ssd.SsdGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a planted model returns: (bboxes [k, 4], labels [k], scores [k]) after the model's own
    NMS and TopK (planted boxes of one class that overlap by IoU > 0.5 suppress each other)."""
    items = list(planted)
    boxes = ssd.default_boxes(geometry, "ltrb")
    if not items:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32)
    rows = sorted({p.box_index for p in items})
    row_of = {b: i for i, b in enumerate(rows)}
    probs = np.zeros((len(rows), ssd.NUM_CLASSES), np.float32)
    for p in items:
        probs[row_of[p.box_index], p.label] = np.float32(p.score)
    sel_boxes, labels, scores = ssd.select(boxes[rows], probs, IOU_THRESHOLD, SCORE_THRESHOLD,
                                           MAX_DETECTIONS, MAX_DETECTIONS)
    return sel_boxes, labels, scores


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


# --------------------------------------------------------------------------------------------- images
def sample_images(size: int) -> list[tuple[str, np.ndarray]]:
    """Deterministic RGB uint8 images ``[size, size, 3]`` for smoke tests and calibration:
    gradients, shapes, stripes, smooth blobs and noise. Drawn in normalised coordinates, so the
    same scene appears at every size."""
    t = (np.arange(size, dtype=np.float64) + 0.5) / size
    y, x = np.meshgrid(t, t, indexing="ij")
    images: list[tuple[str, np.ndarray]] = []

    grad = np.stack([x, y, 1.0 - 0.5 * (x + y)], axis=-1)
    images.append(("gradient", grad))

    r = np.hypot(x - 0.5, y - 0.4)
    radial = np.stack([0.5 + 0.5 * np.cos(18 * r), 0.5 + 0.5 * np.sin(11 * r), np.clip(1 - 1.5 * r, 0, 1)], -1)
    images.append(("radial", radial))

    shapes = np.empty((size, size, 3))
    shapes[:] = (0.55, 0.6, 0.5)
    for (x0, y0, x1, y1), colour in (
        ((0.08, 0.1, 0.38, 0.55), (0.9, 0.1, 0.1)),
        ((0.5, 0.55, 0.95, 0.9), (0.1, 0.2, 0.85)),
        ((0.6, 0.08, 0.8, 0.4), (0.95, 0.85, 0.1)),
    ):
        shapes[(x >= x0) & (x < x1) & (y >= y0) & (y < y1)] = colour
    for (cx, cy, rad), colour in (((0.3, 0.78, 0.14), (0.1, 0.7, 0.2)), ((0.75, 0.3, 0.08), (0.05, 0.05, 0.05))):
        shapes[np.hypot(x - cx, y - cy) < rad] = colour
    images.append(("shapes", shapes))

    stripes = np.stack([0.5 + 0.5 * np.sign(np.sin(2 * np.pi * 12 * (x + 0.3 * y)))] * 3, -1)
    stripes[..., 2] = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * y)
    images.append(("stripes", stripes))

    coarse = np.random.RandomState(1).random_sample((8, 8, 3))
    idx = np.minimum((t * 8).astype(int), 7)
    images.append(("blobs", coarse[idx][:, idx]))

    noise = np.random.RandomState(2).random_sample((size, size, 3))
    images.append(("noise", noise))

    return [(name, np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)) for name, img in images]


def normalize_image(image: np.ndarray) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` -> float32 ``[1, 3, H, W]``: /255, minus ImageNet mean, over std."""
    arr = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    arr = (arr - np.asarray(IMAGE_MEAN, np.float32)) / np.asarray(IMAGE_STD, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None])
