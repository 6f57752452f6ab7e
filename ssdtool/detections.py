"""The model's outputs -> detections: records in original-image pixels, from either form of the model.

* :func:`network_detections` - the three outputs -> normalized, offset, unpadded boxes, labels and scores (one
  reading of the outputs for detection, the parity gate and the INT8 guard);
* :func:`postprocess` - the same, as :class:`Detection` records in pixels of the original image, filtered;
* :func:`postprocess_heads` - the twelve head tensors of the split (Furiosa) form, decoded and selected on the host
  with :mod:`ssdtool.ssd`, as the same records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ssdtool.errors import BackendError, UsageError
from ssdtool.imaging import check_form
from ssdtool.labels import check_label_ids, coco_category_map, label_name, label_names, resolve_classes
from ssdtool.registry import ModelEntry

if TYPE_CHECKING:  # imported where used: detection of the full form needs neither (a warm start counts them)
    from ssdtool import ssd
    from ssdtool.matching import RawDetections

#: Score threshold of the CLI and of :class:`~ssdtool.detect.Detector` unless told otherwise.
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Detection:
    """One detected object. ``box`` is ``(x_min, y_min, x_max, y_max)`` in pixels of the original image (after
    EXIF rotation), clipped to it. ``label_id`` indexes the model's label file (1..80 for COCO);
    ``coco_category_id`` is the COCO category id (1..90 with gaps), None when the labels are not COCO's."""

    label_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]
    coco_category_id: int | None = None

    @property
    def coco_bbox(self) -> tuple[float, float, float, float]:
        """The box as COCO writes it: ``(x, y, width, height)``."""
        x_min, y_min, x_max, y_max = self.box
        return (x_min, y_min, x_max - x_min, y_max - y_min)

    def to_dict(self, box_digits: int | None = 2, score_digits: int | None = 5) -> dict[str, Any]:
        """JSON-ready form; boxes rounded to 1/100 pixel and scores to 5 decimals unless told otherwise."""
        return {
            "label_id": self.label_id,
            "label": self.label,
            "score": round_to(self.score, score_digits),
            "box": [round_to(v, box_digits) for v in self.box],
        }


@dataclass(frozen=True)
class ImageResult:
    """What :meth:`Detector.many` yields per input, in input order.

    ``path`` is the input as given (None for in-memory images); ``width``/``height`` are the original size after
    EXIF rotation (None when the image could not be read, then ``error`` says why). ``image`` holds the decoded
    RGB pixels only when ``many(..., keep_images=True)`` asked for them (for drawing).
    """

    index: int
    path: str | None
    width: int | None
    height: int | None
    detections: tuple[Detection, ...] = ()
    error: str | None = None
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, box_digits: int | None = 2, score_digits: int | None = 5) -> dict[str, Any]:
        return {
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "detections": [d.to_dict(box_digits, score_digits) for d in self.detections],
            "error": self.error,
        }


def round_to(value: float, digits: int | None) -> float:
    return float(value) if digits is None else round(float(value), digits)


def postprocess(outputs: Mapping[str, np.ndarray], entry: ModelEntry, image_size: tuple[int, int], *,
                form: str = "onnx", threshold: float = DEFAULT_THRESHOLD,
                classes: Iterable[str | int] | str | None = None,
                max_detections: int | None = None) -> list[Detection]:
    """The model's outputs (batch 1) -> detections in pixels of an image of ``image_size = (width, height)``.

    Output names, box units and label offset come from the registry (``outputs``). ``form="onnx"``: the source
    model's outputs (any number of rows; pixel boxes are normalized by the network size, ``label_offset`` added).
    ``form="ir"``: a converted IR's (normalized, offset applied, padded with score-0 rows). Rows with score 0 and
    rows below ``threshold`` are dropped, then rows not in ``classes`` (names or label ids); the rest, highest
    score first, are cut to ``max_detections``. Boxes scale by width (x) and height (y) and are clipped to the
    image.
    """
    found = network_detections(outputs, entry, form)
    return detections_from_arrays(found.boxes, found.labels, found.scores, entry, image_size, threshold=threshold,
                                  classes=classes, max_detections=max_detections)


def network_detections(outputs: Mapping[str, np.ndarray], entry: ModelEntry, form: str = "onnx") -> RawDetections:
    """The model's three outputs (batch 1) as network-level detections: normalized xyxy boxes clipped to [0, 1],
    label ids with the registry's ``label_offset`` applied, padded rows (score 0) dropped.

    ``form="onnx"``: the source model's outputs (pixel boxes normalized by the network size, offset added; a
    heads model's engine has already decoded its heads into these three, see :mod:`ssdtool.heads`);
    ``form="ir"``: a converted IR's, which are already so (a heads model's IR included).
    Detection, the parity gate and the INT8 guard all read outputs through this one function.
    """
    check_form(form)
    spec = entry.outputs
    missing = [name for name in (spec.boxes, spec.labels, spec.scores) if name not in outputs]
    if missing:
        hint = (f"these look like the raw heads of {entry.name!r}: run the model through "
                "ssdtool.backends.make_engine (its onnxruntime engine decodes them) or use postprocess_heads"
                if spec.form == "heads" else
                f"check the registry entry {entry.name!r} ('outputs') against the model file")
        raise BackendError(f"the model gave no output {', '.join(missing)}; it gave {', '.join(sorted(outputs))}",
                           hint=hint)
    from ssdtool.matching import RawDetections

    boxes = np.asarray(outputs[spec.boxes], dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(outputs[spec.labels]).reshape(-1).astype(np.int64)
    if form == "onnx":
        if spec.box_units == "pixels":
            width, height = entry.input.resize
            boxes = boxes / np.array([width, height, width, height], dtype=np.float32)
        labels = labels + spec.label_offset
    return RawDetections.from_outputs(np.clip(boxes, 0.0, 1.0), labels, outputs[spec.scores])


def postprocess_heads(heads: Sequence[np.ndarray] | Mapping[str, np.ndarray], entry: ModelEntry,
                      image_size: tuple[int, int], *, threshold: float = DEFAULT_THRESHOLD,
                      classes: Iterable[str | int] | str | None = None, max_detections: int | None = None,
                      geometry: ssd.SsdGeometry | None = None) -> list[Detection]:
    """The twelve head tensors of the split model (six ``conf`` ``[1, A*81, H, W]`` and six ``loc``
    ``[1, A*4, H, W]``, as Furiosa's SSD-ResNet34 returns them) -> the same detections as :func:`postprocess`.

    Decoding (default boxes, ``scale_xy`` 0.1 / ``scale_wh`` 0.2, softmax) and selection (per class: scores over
    0.05, NMS at IoU 0.5, 200 per class; then the best ``convert.output_count`` overall) are the model's own, in
    numpy (:mod:`ssdtool.ssd`). Conf and loc tensors are told apart by their channel count, so any order works
    as long as each kind comes in level order (Furiosa: six conf then six loc; a mapping: in its order).
    ``geometry`` defaults to the default boxes of the registry's (square) input size. For an entry of the heads
    form (``outputs: {form: heads}``) its default boxes and selection parameters apply, and a mapping is read by
    the registry's head names or positions (checked against the default boxes).
    """
    from ssdtool import ssd
    from ssdtool.heads import decode_heads, head_tensors, is_heads

    if is_heads(entry) and isinstance(heads, Mapping) and geometry is None:
        # A heads entry names its outputs: they are picked and checked by the registry, not by channel count.
        boxes, labels, scores = decode_heads(*head_tensors(heads, entry), entry)
        return detections_from_arrays(boxes, labels, scores, entry, image_size, threshold=threshold,
                                      classes=classes, max_detections=max_detections)
    tensors = list(heads.values()) if isinstance(heads, Mapping) else list(heads)
    confs = [t for t in tensors if np.asarray(t).ndim >= 3 and np.asarray(t).shape[-3] % ssd.NUM_CLASSES == 0]
    locs = [t for t in tensors if not (np.asarray(t).ndim >= 3 and np.asarray(t).shape[-3] % ssd.NUM_CLASSES == 0)]
    if len(confs) != 6 or len(locs) != 6:
        raise UsageError(f"expected six conf and six loc head tensors, got {len(confs)} conf (channels a multiple "
                         f"of {ssd.NUM_CLASSES}) and {len(locs)} others")
    if geometry is None and is_heads(entry):
        boxes, labels, scores = decode_heads(confs, locs, entry)
        return detections_from_arrays(boxes, labels, scores, entry, image_size, threshold=threshold,
                                      classes=classes, max_detections=max_detections)
    if geometry is None:
        width, height = entry.input.resize
        if width != height:
            raise UsageError(f"{entry.name}: default boxes need a square input, the registry says {width}x{height}; "
                             "pass geometry=")
        geometry = ssd.SsdGeometry.for_input(width)
    boxes, probs = ssd.decode(locs, confs, geometry)
    selected, labels, scores = ssd.select(boxes, probs, 0.5, 0.05, 200, entry.convert.output_count)
    return detections_from_arrays(selected, labels, scores, entry, image_size, threshold=threshold,
                                  classes=classes, max_detections=max_detections)


def detections_from_arrays(boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, entry: ModelEntry,
                           image_size: tuple[int, int], *, threshold: float = DEFAULT_THRESHOLD,
                           classes: Iterable[str | int] | str | None = None, max_detections: int | None = None
                           ) -> list[Detection]:
    """Normalized xyxy boxes ``[N, 4]``, label ids ``[N]`` and scores ``[N]`` -> :class:`Detection` records
    (the shared tail of :func:`postprocess` and :func:`postprocess_heads`)."""
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"threshold must be between 0 and 1, got {threshold}")
    if max_detections is not None and max_detections < 1:
        raise UsageError(f"max_detections must be at least 1, got {max_detections}")
    width, height = image_size
    if width <= 0 or height <= 0:
        raise UsageError(f"image_size must be positive (width, height), got {image_size}")
    wanted = resolve_classes(entry, classes)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    # Padded rows carry score 0, so "> 0" drops them even at threshold 0.
    keep = (scores > 0) & (scores >= np.float32(threshold))
    if wanted is not None:
        keep &= np.isin(labels, np.fromiter(wanted, dtype=np.int64))
    rows = np.flatnonzero(keep)
    rows = rows[np.argsort(-scores[rows], kind="stable")]  # the model's order is already by score; ties stay
    if max_detections is not None:
        rows = rows[:max_detections]
    # float64 scaling: a pixel coordinate is exactly (normalized float32 value) x (size), then clipped.
    scale = np.array([width, height, width, height], dtype=np.float64)
    pixels = np.clip(boxes[rows].astype(np.float64) * scale, 0.0, np.array([width, height, width, height]))
    names = label_names(entry)
    check_label_ids(entry, names, labels[rows])
    coco = coco_category_map(names)
    return [Detection(label_id=int(labels[r]), label=label_name(names, int(labels[r])), score=float(scores[r]),
                      box=(float(p[0]), float(p[1]), float(p[2]), float(p[3])),
                      coco_category_id=coco.get(int(labels[r])))
            for r, p in zip(rows, pixels, strict=True)]
