"""Numpy reference of the SSD-ResNet34 box geometry, decode and selection.

Everything here follows the MLCommons code that produced ``resnet34-ssd1200.onnx``
(``ssd_r34.py``: ``dboxes_R34_coco``, ``DefaultBoxes``, ``scale_back_batch``, and the traced
``NonMaxSuppression`` + ``TopK`` tail). It is the host-side postprocessor for the twelve-tensor
(Furiosa) form of the model and the oracle the tests hold the ONNX graphs to.

Only numpy is imported: this module sits on hot paths and is imported by the CLI.

Box-index order (the one fact every consumer must agree on). A head conv emits NCHW
``[1, A*4, H, W]`` (loc) or ``[1, A*81, H, W]`` (conf); the model reshapes it to ``[1, 4, A*H*W]``
or ``[1, 81, A*H*W]`` and concatenates the six levels along the last axis. A row-major reshape
of ``[A*4, H, W]`` to ``[4, A*H*W]`` puts channel ``c`` at row ``c // A`` and column
``(c % A)*H*W + y*W + x``, so channel ``c = coord*A + anchor`` (coordinate-major, not
anchor-major) and the box index is ``level_offset + anchor*H*W + y*W + x``. ``DefaultBoxes``
emits boxes in exactly that order: per level, for each anchor size, for each row ``i`` (y), for
each column ``j`` (x), centre ``((j+0.5)/fk, (i+0.5)/fk)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BASE_SCALES",
    "NUM_CLASSES",
    "SCALE_WH",
    "SCALE_XY",
    "SsdGeometry",
    "decode",
    "decode_flat",
    "default_boxes",
    "feature_sizes_for_input",
    "flatten_heads",
    "iou_matrix",
    "nms",
    "select",
    "softmax",
    "source_map_sizes",
    "tail_padding_for_input",
]

#: Classes including background (index 0): the 80 COCO classes of ``coco_80cl_bkgr.txt`` + background.
NUM_CLASSES = 81
SCALE_XY = 0.1
SCALE_WH = 0.2
#: Default-box scales in pixels of a 300 px image; ``dboxes_R34_coco`` rescales them to the input size.
BASE_SCALES: tuple[int, ...] = (21, 45, 99, 153, 207, 261, 315)
#: Aspect ratios per level (besides the two square boxes every cell has).
ASPECT_RATIOS: tuple[tuple[int, ...], ...] = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))

# Score threshold and IoU threshold compared in float32, as onnxruntime's NonMaxSuppression does.
_F32 = np.float32


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def tail_padding_for_input(image_size: int) -> int:
    """Padding of the 3x3 convs of extra blocks 4 and 5.

    The real network uses 0 there (at 1200 px: 19 -> 9 -> 7). Below about 385 px those unpadded
    convs would shrink the map to nothing (300 px: 5 -> 2 -> 0), so smaller inputs pad them by 1,
    which keeps every node of the graph and only changes two ``pads`` attributes.
    """
    size = _backbone_output_size(image_size)
    for _ in range(3):
        size = _conv_out(size, 3, 2, 1)
    if _conv_out(_conv_out(size, 3, 2, 0), 3, 1, 0) >= 1:
        return 0
    return 1


def _backbone_output_size(image_size: int) -> int:
    size = _conv_out(image_size, 7, 2, 3)  # conv1
    size = _conv_out(size, 3, 2, 1)  # maxpool
    size = _conv_out(size, 3, 2, 1)  # layer2 (layer3 keeps the size: its stride was changed to 1)
    return size


def source_map_sizes(image_size: int) -> tuple[int, ...]:
    """Spatial sizes of the six maps the heads read (backbone output, then the five extra blocks)."""
    if image_size < 1:
        raise ValueError(f"image size must be positive, got {image_size}")
    pad = tail_padding_for_input(image_size)
    size = _backbone_output_size(image_size)
    maps = [size]
    for stride, padding in ((2, 1), (2, 1), (2, 1), (2, pad), (1, pad)):
        size = _conv_out(size, 3, stride, padding)
        maps.append(size)
    if min(maps) < 1:
        raise ValueError(f"image size {image_size} is too small for SSD-ResNet34 (a feature map vanishes)")
    return tuple(maps)


def feature_sizes_for_input(image_size: int) -> tuple[int, ...]:
    """Head output sizes (the default-box grids): the 3x3 stride-3 padding-1 heads on the six maps."""
    return tuple(_conv_out(m, 3, 3, 1) for m in source_map_sizes(image_size))


@dataclass(frozen=True)
class SsdGeometry:
    """Everything that fixes the default boxes, as in MLCommons ``dboxes_R34_coco``."""

    image_size: int
    feature_sizes: tuple[int, ...]
    steps: tuple[int, ...]
    scales: tuple[int, ...]
    aspect_ratios: tuple[tuple[int, ...], ...] = ASPECT_RATIOS
    scale_xy: float = SCALE_XY
    scale_wh: float = SCALE_WH

    def __post_init__(self) -> None:
        levels = len(self.feature_sizes)
        if len(self.steps) != levels or len(self.aspect_ratios) != levels or len(self.scales) != levels + 1:
            raise ValueError(
                f"inconsistent geometry: {levels} feature sizes, {len(self.steps)} steps, "
                f"{len(self.aspect_ratios)} aspect-ratio lists, {len(self.scales)} scales (need levels + 1)"
            )

    @classmethod
    def for_input(cls, image_size: int) -> SsdGeometry:
        """Geometry for a square input: feature sizes from the network's shape arithmetic, the rest
        derived the ``dboxes_R34_coco`` way. ``for_input(1200)`` is exactly ``dboxes_R34_coco``."""
        return cls.from_feature_sizes(image_size, feature_sizes_for_input(image_size))

    @classmethod
    def from_feature_sizes(cls, image_size: int, feature_sizes: Sequence[int]) -> SsdGeometry:
        """``dboxes_R34_coco`` generalised: steps ``int(size/fs)``, scales ``int(s*size/300)``."""
        sizes = tuple(int(f) for f in feature_sizes)
        steps = tuple(int(image_size / f) for f in sizes)
        scales = tuple(int(s * image_size / 300) for s in BASE_SCALES)
        return cls(image_size=image_size, feature_sizes=sizes, steps=steps, scales=scales)

    @property
    def anchors_per_cell(self) -> tuple[int, ...]:
        return tuple(2 + 2 * len(ar) for ar in self.aspect_ratios)

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Number of default boxes per level."""
        return tuple(a * f * f for a, f in zip(self.anchors_per_cell, self.feature_sizes, strict=True))

    @property
    def level_offsets(self) -> tuple[int, ...]:
        """Index of each level's first box in the concatenated box axis."""
        offsets = [0]
        for n in self.level_sizes[:-1]:
            offsets.append(offsets[-1] + n)
        return tuple(offsets)

    @property
    def num_boxes(self) -> int:
        return sum(self.level_sizes)

    def head_shapes(self) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int, int]]]:
        """NCHW shapes of the six loc and six conf head tensors."""
        locs = [(1, a * 4, f, f) for a, f in zip(self.anchors_per_cell, self.feature_sizes, strict=True)]
        confs = [(1, a * NUM_CLASSES, f, f) for a, f in zip(self.anchors_per_cell, self.feature_sizes, strict=True)]
        return locs, confs

    def box_index(self, level: int, anchor: int, y: int, x: int) -> int:
        """Index in the concatenated box axis of (level, anchor, row y, column x)."""
        f = self.feature_sizes[level]
        return self.level_offsets[level] + anchor * f * f + y * f + x

    def box_position(self, index: int) -> tuple[int, int, int, int]:
        """Inverse of :meth:`box_index`: (level, anchor, y, x)."""
        if not 0 <= index < self.num_boxes:
            raise ValueError(f"box index {index} out of range 0..{self.num_boxes - 1}")
        for level, (offset, n) in enumerate(zip(self.level_offsets, self.level_sizes, strict=True)):
            if index < offset + n:
                f = self.feature_sizes[level]
                rest = index - offset
                anchor, cell = divmod(rest, f * f)
                y, x = divmod(cell, f)
                return level, anchor, y, x
        raise AssertionError("unreachable")


def default_boxes(geometry: SsdGeometry, order: str = "ltrb") -> np.ndarray:
    """Default boxes ``[N, 4]`` float32 in ``"xywh"`` (centre, size) or ``"ltrb"`` order.

    Bit-for-bit the MLCommons ``DefaultBoxes``: sizes and centres in float64, stored as float32,
    **xywh** clamped to [0, 1], then ltrb computed in float32 from the clamped xywh. So xywh lies in
    [0, 1] but ltrb of the big boxes reaches outside it (the real model's boxes do too).
    """
    if order not in ("ltrb", "xywh"):
        raise ValueError(f"order must be 'ltrb' or 'xywh', got {order!r}")
    g = geometry
    size = g.image_size
    parts: list[np.ndarray] = []
    for idx, fs in enumerate(g.feature_sizes):
        fk = size // g.steps[idx]
        sk1 = g.scales[idx] / size
        sk2 = g.scales[idx + 1] / size
        sk3 = math.sqrt(sk1 * sk2)
        sizes = [(sk1, sk1), (sk3, sk3)]
        for alpha in g.aspect_ratios[idx]:
            w, h = sk1 * math.sqrt(alpha), sk1 / math.sqrt(alpha)
            sizes.append((w, h))
            sizes.append((h, w))
        centres = (np.arange(fs, dtype=np.float64) + 0.5) / fk
        cy, cx = np.meshgrid(centres, centres, indexing="ij")  # row i -> y, column j -> x
        for w, h in sizes:
            block = np.empty((fs * fs, 4), dtype=np.float64)
            block[:, 0] = cx.ravel()
            block[:, 1] = cy.ravel()
            block[:, 2] = w
            block[:, 3] = h
            parts.append(block)
    xywh = np.clip(np.concatenate(parts).astype(np.float32), 0.0, 1.0)
    if order == "xywh":
        return xywh
    half = _F32(0.5)
    ltrb = np.empty_like(xywh)
    ltrb[:, 0] = xywh[:, 0] - half * xywh[:, 2]
    ltrb[:, 1] = xywh[:, 1] - half * xywh[:, 3]
    ltrb[:, 2] = xywh[:, 0] + half * xywh[:, 2]
    ltrb[:, 3] = xywh[:, 1] + half * xywh[:, 3]
    return ltrb


def flatten_heads(locs: Sequence[np.ndarray], confs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The model's reshape + concat: six NCHW loc and six conf tensors -> ``[4, N]`` and ``[81, N]``.

    Accepts tensors with or without the batch axis (batch must be 1).
    """
    if len(locs) != len(confs):
        raise ValueError(f"got {len(locs)} loc tensors and {len(confs)} conf tensors")
    flat_locs = [_chw(t, "loc").reshape(4, -1) for t in locs]
    flat_confs = [_chw(t, "conf").reshape(NUM_CLASSES, -1) for t in confs]
    return np.concatenate(flat_locs, axis=1), np.concatenate(flat_confs, axis=1)


def _chw(tensor: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(tensor)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"{what} tensor has batch {arr.shape[0]}; only batch 1 is supported")
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"{what} tensor must be NCHW or CHW, got shape {arr.shape}")
    return arr


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax returned as float32, computed in float64.

    A float32 running sum of 81 terms can drift by a few ulps of the result (many tiny terms added to a
    large one all round the same way); float64 keeps planted probabilities exact to float32 precision.
    """
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def decode(
    locs: Sequence[np.ndarray], confs: Sequence[np.ndarray], geometry: SsdGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """Decode the twelve head tensors (NCHW, in level order) into ltrb boxes ``[N, 4]`` and class
    probabilities ``[N, 81]`` (column 0 is background), both float32."""
    loc, conf = flatten_heads(locs, confs)
    return decode_flat(loc, conf, geometry)


def decode_flat(loc: np.ndarray, conf: np.ndarray, geometry: SsdGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Decode flattened heads ``loc [4, N]`` and ``conf [81, N]`` (``scale_back_batch``).

    The float32 operations run in the same order as in the ONNX graph, so results agree to an ulp
    or two: ``xy = (0.1*d_xy)*wh_a + xy_a``, ``wh = exp(0.2*d_wh)*wh_a``, corners ``xy -/+ 0.5*wh``.
    """
    n = geometry.num_boxes
    loc = np.asarray(loc, dtype=np.float32)
    conf = np.asarray(conf, dtype=np.float32)
    if loc.shape != (4, n) or conf.shape != (NUM_CLASSES, n):
        raise ValueError(
            f"expected loc (4, {n}) and conf ({NUM_CLASSES}, {n}) for this geometry, got {loc.shape} and {conf.shape}"
        )
    anchors = _anchors_xywh(geometry)
    d = loc.T
    xy = d[:, :2] * _F32(geometry.scale_xy) * anchors[:, 2:] + anchors[:, :2]
    wh = np.exp(d[:, 2:] * _F32(geometry.scale_wh)) * anchors[:, 2:]
    half = wh * _F32(0.5)
    boxes = np.concatenate([xy - half, xy + half], axis=1)
    return boxes.astype(np.float32, copy=False), softmax(conf.T, axis=1)


@functools.lru_cache(maxsize=8)
def _anchors_xywh(geometry: SsdGeometry) -> np.ndarray:
    """The default boxes of ``geometry``, made once: decoding every image rebuilds nothing (read-only)."""
    anchors = default_boxes(geometry, "xywh")
    anchors.setflags(write=False)
    return anchors


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[len(a), len(b)]`` of ltrb boxes, in float32 with onnxruntime's rules: corners
    may come in either order, and empty intersections or degenerate boxes give IoU 0."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    ax0, ax1 = np.minimum(a[:, 0], a[:, 2]), np.maximum(a[:, 0], a[:, 2])
    ay0, ay1 = np.minimum(a[:, 1], a[:, 3]), np.maximum(a[:, 1], a[:, 3])
    bx0, bx1 = np.minimum(b[:, 0], b[:, 2]), np.maximum(b[:, 0], b[:, 2])
    by0, by1 = np.minimum(b[:, 1], b[:, 3]), np.maximum(b[:, 1], b[:, 3])
    iw = np.minimum(ax1[:, None], bx1[None, :]) - np.maximum(ax0[:, None], bx0[None, :])
    ih = np.minimum(ay1[:, None], by1[None, :]) - np.maximum(ay0[:, None], by0[None, :])
    inter = iw * ih
    area_a = (ax1 - ax0) * (ay1 - ay0)
    area_b = (bx1 - bx0) * (by1 - by0)
    union = area_a[:, None] + area_b[None, :] - inter
    valid = (iw > 0) & (ih > 0) & (inter > 0) & (area_a[:, None] > 0) & (area_b[None, :] > 0) & (union > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(valid, inter / np.where(valid, union, _F32(1)), _F32(0))
    return iou.astype(np.float32, copy=False)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.05,
    max_output: int = 200,
) -> np.ndarray:
    """Single-class greedy NMS with ONNX ``NonMaxSuppression`` semantics (center_point_box=0).

    Keeps scores strictly above ``score_threshold``; visits them by descending score, lower index
    first on ties; a box is dropped when its IoU with a kept box is strictly above
    ``iou_threshold``; stops after ``max_output`` kept. Returns kept indices in selection order.
    """
    scores = np.asarray(scores, dtype=np.float32)
    candidates = np.flatnonzero(scores > _F32(score_threshold))
    if candidates.size == 0 or max_output <= 0:
        return np.zeros(0, dtype=np.int64)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    kept = _greedy(np.asarray(boxes, dtype=np.float32)[order], iou_threshold, max_output)
    return order[kept].astype(np.int64)


_FULL_MATRIX_LIMIT = 1024  # up to this many candidates, one IoU matrix beats a row per kept box


def _greedy(sorted_boxes: np.ndarray, iou_threshold: float, max_output: int) -> np.ndarray:
    """Greedy suppression over boxes already sorted by descending score; returns kept positions."""
    n = sorted_boxes.shape[0]
    thr = _F32(iou_threshold)
    kept: list[int] = []
    if n <= _FULL_MATRIX_LIMIT:
        over = iou_matrix(sorted_boxes, sorted_boxes) > thr
        suppressed = np.zeros(n, dtype=bool)
        for i in range(n):
            if suppressed[i]:
                continue
            kept.append(i)
            if len(kept) >= max_output:
                break
            suppressed |= over[i]
        return np.asarray(kept, dtype=np.int64)
    # Many candidates: compare each kept box with the remaining survivors only, so the cost is
    # (kept boxes) x (candidates) rather than candidates squared.
    alive = np.arange(n)
    while alive.size and len(kept) < max_output:
        best = alive[0]
        kept.append(int(best))
        rest = alive[1:]
        if rest.size == 0:
            break
        overlap = iou_matrix(sorted_boxes[best], sorted_boxes[rest])[0]
        alive = rest[~(overlap > thr)]
    return np.asarray(kept, dtype=np.int64)


def select(
    boxes: np.ndarray,
    probs: np.ndarray,
    iou: float = 0.5,
    score_threshold: float = 0.05,
    per_class: int = 200,
    max_total: int = 200,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's selection tail: per foreground class NMS, then the ``max_total`` best overall.

    ``boxes [N, 4]`` ltrb, ``probs [N, 81]`` with background in column 0. Returns boxes ``[k, 4]``
    float32, labels ``[k]`` int64 in 1..80 and scores ``[k]`` float32, sorted by score descending;
    ties keep class-then-selection order, as ``TopK`` over the ``NonMaxSuppression`` output does.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    probs = np.asarray(probs, dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or probs.ndim != 2 or probs.shape[0] != boxes.shape[0]:
        raise ValueError(f"expected boxes [N, 4] and probs [N, C], got {boxes.shape} and {probs.shape}")
    thr = _F32(score_threshold)
    fg = probs[:, 1:]
    rows, cols = np.nonzero(fg > thr)  # the few (box, class) pairs above threshold, in one pass
    if rows.size == 0 or per_class <= 0 or max_total <= 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32)
    cand_scores = fg[rows, cols]
    classes = np.unique(cols)
    # Visit classes best-first and keep the max_total-th best selected score as a cutoff: a
    # candidate strictly below it can never reach the output, and greedy NMS visits boxes by
    # descending score, so dropping the tail of a class never changes what it selects above the
    # tail. (Equal scores are kept; the final stable sort settles ties by class order.)
    best_of = {int(c): float(cand_scores[cols == c].max()) for c in classes}
    visit = sorted(best_of, key=lambda c: (-best_of[c], c))
    selected: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    cutoff = -np.inf
    chosen_scores: list[np.ndarray] = []
    for c in visit:
        mask = cols == c
        idx, sc = rows[mask], cand_scores[mask]
        if np.isfinite(cutoff):
            keep_mask = sc >= cutoff
            idx, sc = idx[keep_mask], sc[keep_mask]
        if idx.size == 0:
            continue
        order = np.argsort(-sc, kind="stable")  # rows ascend within a class: ties -> lower index first
        idx, sc = idx[order], sc[order]
        kept = _greedy(boxes[idx], iou, per_class)
        selected[c] = (idx[kept].astype(np.int64), sc[kept])
        chosen_scores.append(sc[kept])
        pooled = np.concatenate(chosen_scores)
        if pooled.size >= max_total:
            cutoff = float(np.partition(pooled, pooled.size - max_total)[pooled.size - max_total])
            chosen_scores = [pooled[pooled >= cutoff]]
    order_c = sorted(selected)  # concatenate in class order, as NonMaxSuppression emits them
    idx = np.concatenate([selected[c][0] for c in order_c])
    labels = np.concatenate([np.full(selected[c][0].size, c + 1, dtype=np.int64) for c in order_c])
    scores = np.concatenate([selected[c][1] for c in order_c])
    top = np.argsort(-scores, kind="stable")[: min(max_total, scores.size)]
    return boxes[idx[top]], labels[top], scores[top]
