"""What twin to build: :class:`TwinSpec`, its ``synthetic:`` URL form, and planted detections."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import numpy as np

from ssdtool import ssd

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


# Planted models: every non-planted foreground probability is this (far below the 0.05 threshold).
PLANTED_EPSILON = 1e-6


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
    limit = 1.0 - ssd.NUM_CLASSES * PLANTED_EPSILON
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
