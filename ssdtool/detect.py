"""Object detection on images: loading, preprocessing, inference, postprocessing, and the :class:`Detector` API.

The pieces are public so other runtimes can reuse them:

* :func:`load_image` - a path, PIL image or numpy array -> 8-bit RGB ``HxWx3`` (EXIF orientation applied;
  grayscale, palette, alpha, CMYK and 16-bit images converted; size limits checked before decoding).
* :func:`preprocess` - RGB pixels -> the network input tensor, from the registry's ``InputSpec``:
  ``form="onnx"`` is the source model's input (normalized RGB floats), ``form="ir"`` the converted IR's (raw BGR
  pixels, normalization inside the IR).
* :func:`postprocess` - the model's three outputs -> :class:`Detection` records in original-image pixels;
  :func:`postprocess_heads` does the same for the twelve head tensors of the split (Furiosa) form of the model,
  with the numpy decode and selection of :mod:`ssdtool.ssd`.
* :class:`Detector` - all of the above around one engine: ``detector(image)`` for one image, ``detector.many``
  for a stream of images, with decoding and resizing in a thread pool ahead of inference and OpenVINO's async
  requests in flight, results in input order.

Library code never prints: per-image problems become :class:`ImageError` (an :class:`InputError`, exit code 30)
for single images, and ``ImageResult.error`` records in :meth:`Detector.many`.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, Union

import numpy as np

from ssdtool import precision as inference_precisions
from ssdtool import ssd
from ssdtool.cache import Cache
from ssdtool.constants import BACKEND_CHOICES, IRPrecision
from ssdtool.errors import BackendError, CacheError, ImageError, OfflineError, UsageError
from ssdtool.imaging import (
    DEFAULT_DECODE_MEMORY,
    LARGE_DECODE_BYTES,
    DecodeBudget,
    decode_cost,
    resize_rgb,
    resized_for_network,
)
from ssdtool.labels import check_label_ids, coco_category_map, label_name, label_names, resolve_classes
from ssdtool.registry import ModelEntry, Registry, load_registry

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from ssdtool.backends import Engine

log = logging.getLogger("ssdtool.detect")

#: Score threshold of the CLI and of :class:`Detector` unless told otherwise.
DEFAULT_THRESHOLD = 0.5
#: Largest image (width x height) accepted, checked from the header before any pixel is decoded. The same number as
#: Pillow's own decompression-bomb limit (about 9459 x 9459); a PNG or GIF of this size can be a few KB on disk
#: and hundreds of MB in memory.
DEFAULT_MAX_PIXELS = 89_478_485
BACKENDS = BACKEND_CHOICES
FORMS = ("onnx", "ir")
PERFORMANCE_MODES = ("auto", "latency", "throughput")
CHANNEL_ORDERS = ("RGB", "BGR")
#: What a directory walk picks up (explicitly named files are tried whatever their extension).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff",
                              ".webp", ".ppm", ".pgm", ".pbm", ".pnm"})
_GLOB_CHARACTERS = frozenset("*?[")

ImageSource = Union[str, "os.PathLike[str]", "PILImage.Image", np.ndarray]




# ------------------------------------------------------------------------------------------------- records
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
            "score": _round(self.score, score_digits),
            "box": [_round(v, box_digits) for v in self.box],
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


@dataclass(frozen=True)
class RunInfo:
    """What ran: model, engine, device, the IR's weights and the inference precision read back from the engine.

    ``precision`` is the IR's weights (FP32/FP16/INT8; None for onnxruntime, which runs the source ONNX);
    ``inference_precision`` the arithmetic that ran (f32, bf16, f16; None when the device does not report it);
    ``inference_precision_requested`` what was asked (``auto`` or a precision) and ``inference_precision_reason`` why
    that became what ran.
    """

    model: str
    backend: str
    device: str
    precision: str | None
    inference_precision: str | None
    inference_precision_requested: str
    inference_precision_reason: str
    model_path: str
    performance: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def describe(self) -> str:
        """For people: ``openvino CPU FP32 IR, bf16`` or ``onnxruntime CPU, f32``."""
        weights = f" {self.precision} IR" if self.precision else ""
        return f"{self.backend} {self.device}{weights}, {self.inference_precision or 'unreported precision'}"


def _round(value: float, digits: int | None) -> float:
    return float(value) if digits is None else round(float(value), digits)


# ------------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class InputFile:
    """An image file found by :func:`find_images`: ``path`` as the user would write it, and ``relative``, its path
    below the directory argument it was found in (or its file name), for naming outputs."""

    path: str
    relative: str


def _has_glob(text: str) -> bool:
    return any(c in _GLOB_CHARACTERS for c in text)


def _walk_images(root: Path, recursive: bool) -> Iterator[Path]:
    """Image files in ``root`` (sorted, hidden entries skipped), descending into subfolders when ``recursive``."""
    if not recursive:
        with os.scandir(root) as entries:
            names = sorted(e.name for e in entries if e.is_file() and not e.name.startswith("."))
        yield from (root / n for n in names if Path(n).suffix.lower() in IMAGE_EXTENSIONS)
        return
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield Path(folder) / name


def find_images(sources: Sequence[str | os.PathLike[str]], recursive: bool = False,
                exclude: Sequence[str | os.PathLike[str]] = ()) -> tuple[list[InputFile], list[str]]:
    """Expand image files, directories and glob patterns into input files, in argument order.

    Named files are kept even when missing or not images (they become per-image errors, so the user hears about
    them); directories contribute their image files (by extension, sorted; subfolders with ``recursive``); glob
    patterns (``*``, ``?``, ``[``) are expanded (``**`` spans folders with ``recursive``), their image files and
    folders sorted. A file reached twice is processed once. Files found below an ``exclude`` folder are skipped (so
    an output folder inside an input folder is not read back); files named explicitly are always kept.

    Returns the files and notes for people (patterns or folders that gave nothing).
    """
    found: list[InputFile] = []
    notes: list[str] = []
    seen: set[str] = set()
    excluded = [Path(e).resolve() for e in exclude]

    def add(path: Path, relative: str, named: bool = False) -> None:
        try:
            resolved = path.resolve() if _exists(path) else path.absolute()
        except (OSError, RuntimeError):  # a link loop
            resolved = path.absolute()
        key = str(resolved)
        if key in seen or (not named and any(_is_below(resolved, folder) for folder in excluded)):
            return
        seen.add(key)
        found.append(InputFile(str(path), relative))

    for source in sources:
        text = os.fspath(source)
        path = Path(text)
        if _is_dir(path):
            before = len(found)
            for image in _walk_images(path, recursive):
                add(image, image.relative_to(path).as_posix())
            if len(found) == before:
                notes.append(f"no image files in folder {text}"
                             + ("" if recursive else " (use --recursive to search its subfolders)"))
        elif _has_glob(text) and not _exists(path):
            before = len(found)
            for match in sorted(glob.glob(os.path.expanduser(text), recursive=recursive)):
                candidate = Path(match)
                if candidate.is_dir():
                    for image in _walk_images(candidate, recursive):
                        add(image, image.relative_to(candidate.parent).as_posix())
                elif candidate.suffix.lower() in IMAGE_EXTENSIONS:
                    add(candidate, candidate.name)
            if len(found) == before:
                notes.append(f"no image files match {text}")
        else:
            add(path, path.name, named=True)
    return found, notes


def _exists(path: Path) -> bool:
    """``path.exists()`` that is False instead of raising (a name over the file system's limit, say): such a path
    becomes a per-image error, and the other inputs still run."""
    try:
        return path.exists()
    except OSError:
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _is_below(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------------- loading
def _describe_bytes(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError:
        return ""
    return f", starts with {head!r}" if head else ""


def load_image(source: ImageSource, *, channel_order: str = "RGB", max_pixels: int | None = DEFAULT_MAX_PIXELS
               ) -> np.ndarray:
    """Decode ``source`` into an 8-bit RGB ``HxWx3`` array, upright.

    ``source`` is a path, a PIL image or a numpy array. Files and PIL images get their EXIF orientation applied;
    grayscale, palette, RGBA/LA (alpha dropped), CMYK, YCbCr and 16-bit (``I;16``, ``I``) images become 8-bit RGB
    (16-bit values are scaled by 255/65535, not clipped). Arrays are ``HxW`` (gray), ``HxWx3`` or ``HxWx4``
    (alpha dropped), uint8 or uint16, in ``channel_order`` ("RGB" or "BGR", e.g. from OpenCV).

    Raises :class:`ImageError` for a missing, unreadable, empty, truncated or non-image file, an empty image,
    or one with more than ``max_pixels`` pixels (checked from the header, before decoding; None: no limit of
    ours, Pillow's own ``Image.MAX_IMAGE_PIXELS`` still applies).
    """
    if channel_order not in CHANNEL_ORDERS:
        raise UsageError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {channel_order!r}")
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, channel_order, max_pixels)
    from PIL import Image

    if isinstance(source, Image.Image):
        _check_size(source.width, source.height, max_pixels, "the image")
        return _pil_to_rgb(source)
    if not isinstance(source, (str, os.PathLike)):
        raise ImageError(f"cannot read an image from {type(source).__name__}; expected a path, a PIL image or a "
                         "numpy array")
    return _decode_file(Path(source), max_pixels, _pil_to_rgb)


T = TypeVar("T")


def _decode_file(path: Path, max_pixels: int | None, decode: Callable[[PILImage.Image], T]) -> T:
    """Open the image file ``path``, check its size from the header, and return ``decode(image)``; every way a
    file can fail becomes an :class:`ImageError`."""
    from PIL import Image

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file", hint="check the path") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot access: {exc.strerror or exc}") from None
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, expected an image file",
                         hint="pass the folder itself as a source to read the images in it")
    if size == 0:
        raise ImageError(f"{path}: empty file (0 bytes), expected an image")
    try:
        with Image.open(path) as image:
            _check_size(image.width, image.height, max_pixels, str(path))
            return decode(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: too large to decode safely: {exc}",
                         hint="raise the limit with --max-pixels if you trust the file") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read ({size} bytes{_describe_bytes(path)}); expected "
                         "JPEG, PNG, BMP, GIF, TIFF, WebP or another format Pillow supports") from None
    except PermissionError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror or exc}", hint="check the file's permissions") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # Pillow reports truncated and corrupt data as OSError ("image file is truncated"), SyntaxError (broken
        # PNG chunks) and others, depending on the format.
        raise ImageError(f"{path}: truncated or corrupt image data: {exc}",
                         hint="re-export or re-download the file") from None


def _check_size(width: int, height: int, max_pixels: int | None, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{what}: the image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{what}: {width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,} "
            "(a guard against decompression bombs)",
            hint="raise it with --max-pixels (Detector(max_pixels=...)) if you trust the file")


def _pil_to_rgb(image: PILImage.Image) -> np.ndarray:
    from PIL import ImageOps

    upright = ImageOps.exif_transpose(image)
    if upright is None:  # pragma: no cover - only returned with in_place=True
        upright = image
    mode = upright.mode
    if mode == "RGB":
        return np.asarray(upright)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's own I -> L conversion clips at 255; a 16-bit image needs scaling to keep its contrast.
        values = np.asarray(upright).astype(np.float64)
        gray = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(upright, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in upright.info:
        # The documented route for palette transparency; Pillow warns when converting P -> RGB directly.
        upright = upright.convert("RGBA")
    return np.asarray(upright.convert("RGB"))


def _array_to_rgb(array: np.ndarray, channel_order: str, max_pixels: int | None) -> np.ndarray:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageError(f"expected an HxW, HxWx3 or HxWx4 array, got shape {array.shape}")
    _check_size(array.shape[1], array.shape[0], max_pixels, "the array")
    if array.dtype == np.uint16:
        array = np.rint(array.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageError(f"expected a uint8 (or uint16) array, got {array.dtype}",
                         hint="convert float images with (array * 255).round().astype('uint8') first")
    if array.ndim == 2 or array.shape[2] == 1:
        gray = array.reshape(array.shape[0], array.shape[1])
        return np.repeat(gray[..., None], 3, axis=2)
    pixels = array[..., :3]
    if channel_order == "BGR":
        pixels = pixels[..., ::-1]
    return np.ascontiguousarray(pixels)


# ------------------------------------------------------------------------------------------------- pre/post
def preprocess(rgb: np.ndarray, entry: ModelEntry, *, form: str = "onnx", input_type: str = "f32",
               input_layout: str = "NCHW") -> np.ndarray:
    """8-bit RGB ``HxWx3`` pixels -> the network input of batch 1, as the registry entry describes it.

    The whole image is resized to the network size with the registry's Pillow filter (bilinear for SSD-ResNet34;
    no letterbox, so the aspect ratio is not kept - boxes scale back per axis). ``form="onnx"``: the source
    model's input (``input.color_order``, ``(pixel - mean) / scale``, ``input.layout``, float32).
    ``form="ir"``: an ssdtool-converted IR's input, raw 0-255 pixels in ``convert.color_order`` (BGR) with
    ``input_type`` ("f32" or "u8") and ``input_layout`` ("NCHW" or "NHWC"); normalization happens inside the IR.
    """
    _check_form(form)
    resized = resize_rgb(rgb, entry.input)
    spec = entry.input
    if form == "onnx":
        return _tensor(resized, spec.color_order, spec.layout, "f32", spec.mean, spec.scale)
    if input_type not in ("f32", "u8") or input_layout not in ("NCHW", "NHWC"):
        raise UsageError(f"input_type must be f32 or u8 and input_layout NCHW or NHWC, got {input_type!r}, "
                         f"{input_layout!r}")
    return _tensor(resized, entry.convert.color_order, input_layout, input_type)


def _tensor(resized: np.ndarray, color_order: str, layout: str, dtype: str,
            mean: Sequence[float] | None = None, scale: Sequence[float] | None = None) -> np.ndarray:
    """The values of ``imaging.normalized_input`` / ``imaging.raw_input``, bit for bit, in about a tenth of the time.

    Those convert the whole HxWx3 image to float32 and then transpose the float array (a second, cache-unfriendly
    pass over 17 MB at 1200 px); here each channel is cast straight into its plane of the output, and mean and
    scale are applied in place. Same float32 operations in the same order, so the same bits
    (``tests/test_python_api.py`` holds them equal).
    """
    channels = resized if color_order == "RGB" else resized[..., ::-1]
    if dtype == "u8" and mean is None:
        planar = channels.transpose(2, 0, 1) if layout == "NCHW" else channels
        return np.ascontiguousarray(planar[np.newaxis])
    height, width = resized.shape[:2]
    if layout == "NCHW":
        out = np.empty((1, 3, height, width), dtype=np.float32)
        for channel in range(3):
            out[0, channel] = channels[..., channel]
        broadcast: tuple[int, ...] = (3, 1, 1)
    else:
        out = np.empty((1, height, width, 3), dtype=np.float32)
        out[0] = channels
        broadcast = (1, 1, 3)
    if mean is not None and scale is not None:
        np.subtract(out[0], np.asarray(mean, dtype=np.float32).reshape(broadcast), out=out[0])
        np.divide(out[0], np.asarray(scale, dtype=np.float32).reshape(broadcast), out=out[0])
    return out


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise UsageError(f"form must be one of {', '.join(FORMS)}, got {form!r}")


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
    _check_form(form)
    spec = entry.outputs
    missing = [name for name in (spec.boxes, spec.labels, spec.scores) if name not in outputs]
    if missing:
        raise BackendError(f"the model gave no output {', '.join(missing)}; it gave {', '.join(sorted(outputs))}",
                           hint=f"check the registry entry {entry.name!r} ('outputs') against the model file")
    boxes = np.asarray(outputs[spec.boxes], dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(outputs[spec.labels]).reshape(-1).astype(np.int64)
    scores = np.asarray(outputs[spec.scores], dtype=np.float32).reshape(-1)
    if form == "onnx":
        if spec.box_units == "pixels":
            width, height = entry.input.resize
            boxes = boxes / np.array([width, height, width, height], dtype=np.float32)
        labels = labels + spec.label_offset
    return detections_from_arrays(boxes, labels, scores, entry, image_size, threshold=threshold, classes=classes,
                                  max_detections=max_detections)


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
    ``geometry`` defaults to the default boxes of the registry's (square) input size.
    """
    tensors = list(heads.values()) if isinstance(heads, Mapping) else list(heads)
    confs = [t for t in tensors if np.asarray(t).ndim >= 3 and np.asarray(t).shape[-3] % ssd.NUM_CLASSES == 0]
    locs = [t for t in tensors if not (np.asarray(t).ndim >= 3 and np.asarray(t).shape[-3] % ssd.NUM_CLASSES == 0)]
    if len(confs) != 6 or len(locs) != 6:
        raise UsageError(f"expected six conf and six loc head tensors, got {len(confs)} conf (channels a multiple "
                         f"of {ssd.NUM_CLASSES}) and {len(locs)} others")
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


# ------------------------------------------------------------------------------------------------- detector
@dataclass
class _Prepared:
    rgb: np.ndarray | None
    width: int
    height: int
    tensor: np.ndarray | None


def _installed_ir(entry: ModelEntry, cache: Cache, options: Any) -> Path | None:
    """The IR for ``options`` when it is installed and current (same source checksum and conversion parameters).

    The same test ``convert`` makes, without its lock, download check or log line, so a warm start costs one
    small XML read, and an installed IR works even when the source ONNX was removed from the cache.
    """
    from ssdtool.convert import conversion_parameters, ir_path, same_parameters
    from ssdtool.provenance import ir_problem, read_provenance

    xml = ir_path(entry, cache, options)
    if not (entry.primary_file.sha256 and xml.is_file() and xml.with_suffix(".bin").is_file()):
        return None
    record = read_provenance(xml) or {}
    if (record.get("source_sha256") == entry.primary_file.sha256
            and same_parameters(record.get("parameters"), conversion_parameters(entry, options))
            and ir_problem(xml, record) is None):  # weights of the recorded size: a truncated .bin is rebuilt
        return xml
    return None


def _ir_precision(value: str) -> str:
    try:
        return IRPrecision.parse(value, "precision").value
    except ValueError as exc:
        raise UsageError(str(exc), hint="pass --precision FP32, FP16 or INT8") from None


def _default_workers() -> int:
    # Decoding and resizing take a few percent of an inference; two threads keep ahead of any engine here.
    return max(1, min(4, os.cpu_count() or 1))


class Detector:
    """Detect objects with one model through one engine; create once, call many times.

    ``model``: a registry name (default: the registry's default model) or a :class:`ModelEntry`.
    ``backend``: "openvino" (the converted IR, converted on first use), "onnxruntime" (the source ONNX) or "auto"
    (OpenVINO when it can be imported, else onnxruntime). The model is downloaded on first use unless
    ``offline`` (None: ``$SSDTOOL_OFFLINE``), in which case a missing file raises :class:`OfflineError`.
    ``precision`` picks the IR (FP32/FP16/INT8, OpenVINO only); ``device`` the OpenVINO device.
    ``inference_precision``: the arithmetic OpenVINO runs the IR in - "auto" (the device's default where this IR
    was checked at it, else f32; see :mod:`ssdtool.precision`), "f32", "bf16" or "f16" (pinned; an error when the
    device cannot run it); onnxruntime accepts "auto" and "f32". :meth:`run_info` reports what ran. ``threshold``,
    ``classes`` and ``max_detections`` filter results (see :func:`postprocess`). ``performance``: OpenVINO's
    hint - "latency" for one image at a time, "throughput" for streams, "auto" (latency for ``detector(image)``,
    throughput for :meth:`many`; each is compiled on first use, from the compiled-model cache after the first
    run). ``workers``: threads decoding images ahead of inference. ``max_pixels``: see :func:`load_image`.
    ``decode_memory``: bytes that image files being decoded at once may take (estimated from their headers; see
    :class:`ssdtool.imaging.DecodeBudget`): a larger image waits for the others, and one over the budget decodes
    alone. ``progress`` receives download events when the model is fetched.
    """

    def __init__(self, model: str | ModelEntry | None = None, backend: str = "auto", *,
                 precision: str | None = None, inference_precision: str = "auto", device: str = "CPU",
                 threshold: float = DEFAULT_THRESHOLD,
                 classes: Iterable[str | int] | str | None = None, max_detections: int | None = None,
                 cache_dir: str | os.PathLike[str] | Cache | None = None, registry: str | os.PathLike[str] | Registry
                 | None = None, offline: bool | None = None, performance: str = "auto", workers: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, progress: Callable[[Any], None] | None = None,
                 decode_memory: int = DEFAULT_DECODE_MEMORY) -> None:
        if backend not in BACKENDS:
            raise BackendError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}",
                               hint="use --backend openvino, onnxruntime or auto")
        if performance not in PERFORMANCE_MODES:
            raise UsageError(f"performance must be one of {', '.join(PERFORMANCE_MODES)}, got {performance!r}")
        if workers is not None and workers < 1:
            raise UsageError(f"workers must be at least 1, got {workers}")
        if isinstance(model, ModelEntry):
            self.entry: ModelEntry = model
        else:
            self.entry = (registry if isinstance(registry, Registry) else load_registry(registry)).model(model)
        self.cache: Cache = cache_dir if isinstance(cache_dir, Cache) else Cache.at(cache_dir)
        self.threshold = threshold
        self.classes: frozenset[int] | None = resolve_classes(self.entry, classes)
        self.max_detections = max_detections
        detections_from_arrays(np.zeros((0, 4)), np.zeros(0), np.zeros(0), self.entry, (1, 1),
                               threshold=threshold, classes=self.classes, max_detections=max_detections)  # validate
        self.device = device
        self.requested_inference_precision = inference_precisions.parse(inference_precision)
        self.performance = performance
        self.workers = workers or _default_workers()
        self.max_pixels = max_pixels
        if decode_memory < 1:
            raise UsageError(f"decode_memory must be at least 1 byte, got {decode_memory}")
        self._decode_budget = DecodeBudget(decode_memory)
        if offline is None:
            from ssdtool.download import offline_from_env

            offline = offline_from_env()
        self.offline = offline
        self.backend: str = self._resolve_backend(backend, precision)
        self.precision: str | None = None
        self._engines: dict[str, Future[Engine]] = {}
        self._run_infos: dict[str, RunInfo] = {}
        self._plan: inference_precisions.PrecisionPlan | None = None
        self._starter: ThreadPoolExecutor | None = None
        self._large_decodes: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        if self.backend == "openvino":
            from ssdtool.backends.openvino import available_devices, check_device
            from ssdtool.convert import ConvertOptions, convert

            if device != "CPU":  # every OpenVINO build has the CPU plugin; asking costs a Core and a device query
                check_device(device, available_devices())  # a bad --device fails now, not at the first image
            self.precision = _ir_precision(precision or self.entry.convert.precision)
            options = ConvertOptions(precision=self.precision)
            installed = _installed_ir(self.entry, self.cache, options)
            if installed is None:
                installed = convert(self.entry, self.cache, options, offline=offline, progress=progress).xml
            self.model_path: Path = installed
            self.form = "ir"
        else:
            if device.upper() != "CPU":
                raise BackendError(f"the onnxruntime backend runs on the CPU only, got --device {device}",
                                   hint="use --backend openvino for other devices")
            inference_precisions.onnxruntime_precision(self.requested_inference_precision)
            self.model_path = self._source_model(progress)
            self.form = "onnx"
        if performance != "auto":
            self._engine_future(performance)  # compile while the caller gets its images ready

    # -- setup ---------------------------------------------------------------------------------------------
    def _resolve_backend(self, backend: str, precision: str | None) -> str:
        from ssdtool.backends import import_engine
        from ssdtool.errors import DependencyError

        if backend == "onnxruntime":
            if precision is not None:
                raise UsageError("precision selects an OpenVINO IR; onnxruntime runs the source ONNX as it is",
                                 hint="drop --precision or use --backend openvino")
            inference_precisions.onnxruntime_precision(self.requested_inference_precision)
            return backend
        if backend == "openvino":
            import_engine("openvino")
            return backend
        try:
            import_engine("openvino")
        except DependencyError as exc:
            log.warning("OpenVINO is not available (%s); using onnxruntime%s", exc.message,
                        f" (precision {precision} applies to OpenVINO only)" if precision else "")
            return "onnxruntime"
        return "openvino"

    def _source_model(self, progress: Callable[[Any], None] | None) -> Path:
        from ssdtool.download import ensure_downloaded

        try:
            return ensure_downloaded(self.entry, self.cache, offline=self.offline, progress=progress)
        except OfflineError as exc:
            raise OfflineError(exc.message, hint=f"run 'ssdtool download {self.entry.name}' on a machine with "
                                                 "network access (or copy the cache), or drop --offline") from exc

    @property
    def compiled_cache_dir(self) -> Path:
        """OpenVINO's compiled-model cache for this model (blobs per device and hint; safe to delete)."""
        return self.cache.metadata_dir(self.entry) / "ov-cache"

    def _usable_compiled_cache(self) -> Path | None:
        """The compiled-model cache folder, or None to compile without one this run.

        OpenVINO writes blobs there itself (following links), so it is used only when it is a real folder that
        belongs to the user running ssdtool and that nobody else can write; a read-only cache has none. Any
        other case costs a compile, never the run.
        """
        folder = self.compiled_cache_dir
        try:
            self.cache.make_folder(folder)
            info = os.lstat(folder)
        except (CacheError, OSError) as exc:
            log.info("compiling without the compiled-model cache: %s", exc)
            return None
        if info.st_uid != os.geteuid() or info.st_mode & 0o022 or not os.access(folder, os.W_OK):
            log.info("compiling without the compiled-model cache: %s is not a folder only this user (uid %d) can "
                     "write", folder, os.geteuid())
            return None
        return folder

    def engine(self, performance: str = "latency") -> Engine:
        """The engine for ``performance`` ("latency" or "throughput"), created on first use and kept."""
        return self._engine_future(performance).result()

    def _engine_future(self, performance: str) -> Future[Engine]:
        """Start making the engine in a helper thread (once per mode); ``.result()`` waits for it.

        Compiling (or loading the compiled blob) is mostly C++ that releases the GIL, so it overlaps with the
        Python work around it: the constructor starts it when ``performance`` is known, and :meth:`many` starts
        decoding images before it waits for the engine.
        """
        if performance not in ("latency", "throughput"):
            raise UsageError(f"performance must be latency or throughput, got {performance!r}")
        if self.backend == "onnxruntime":
            performance = "latency"  # one session serves both
        with self._lock:
            future = self._engines.get(performance)
            if future is None:
                if self._starter is None:
                    self._starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssdtool-engine")
                future = self._starter.submit(self._make_engine, performance)
                self._engines[performance] = future
            return future

    def _make_engine(self, performance: str) -> Engine:
        started = time.perf_counter()
        engine: Engine
        if self.backend == "openvino":
            from ssdtool.backends.openvino import OpenVinoEngine

            plan = self._precision_plan()
            cache_dir = self._usable_compiled_cache()
            engine = OpenVinoEngine(self.model_path, device=self.device,
                                    cache_dir=str(cache_dir) if cache_dir else None, hint=performance.upper(),
                                    inference_precision=plan.pin)
        else:
            from ssdtool.backends.onnxruntime import OnnxRuntimeEngine

            engine = OnnxRuntimeEngine(self.model_path)
        self._run_infos[performance] = self._describe(engine, performance)
        log.debug("%s engine (%s hint) ready in %.2f s: %s", self.backend, performance,
                  time.perf_counter() - started, self._run_infos[performance].describe())
        return engine

    def _precision_plan(self) -> inference_precisions.PrecisionPlan:
        """What to pin for OpenVINO, decided once (the device's facts and the IR's checks do not change)."""
        with self._lock:
            if self._plan is None:
                from ssdtool.backends.openvino import device_facts
                from ssdtool.provenance import read_provenance

                provenance = read_provenance(self.model_path)
                checks = inference_precisions.recorded_checks(provenance)
                if self.precision == "INT8":
                    from ssdtool.quantize import recipe_warning

                    if warning := recipe_warning(provenance, self.entry.name):
                        log.warning("%s", warning)
                self._plan = inference_precisions.plan(self.requested_inference_precision,
                                                       device_facts(self.device), checks, model=self.entry.name)
                log.log(self._plan.level, "inference precision: %s", self._plan.reason)
            return self._plan

    def _describe(self, engine: Engine, performance: str) -> RunInfo:
        if self.backend == "openvino":
            reason = self._precision_plan().reason
        else:
            reason = "onnxruntime computes in f32 on the CPU"
        return RunInfo(model=self.entry.name, backend=self.backend, device=engine.device, precision=self.precision,
                       inference_precision=engine.inference_precision,
                       inference_precision_requested=self.requested_inference_precision.value,
                       inference_precision_reason=reason, model_path=str(self.model_path), performance=performance)

    def run_info(self, performance: str | None = None) -> RunInfo:
        """What runs for ``performance`` ("latency" or "throughput"; default: the engine made last), making the
        engine first if needed: the inference precision is read back from it."""
        if performance is None:
            performance = next(reversed(self._run_infos), None) or (
                "latency" if self.performance == "auto" else self.performance)
        self.engine(performance)
        key = "latency" if self.backend == "onnxruntime" else performance
        return self._run_infos[key]

    def close(self) -> None:
        """Release the engines (compiled models and sessions hold the weights)."""
        with self._lock:
            starter, self._starter = self._starter, None
            large, self._large_decodes = self._large_decodes, None
            self._engines.clear()
        if starter is not None:
            starter.shutdown(wait=True)
        if large is not None:
            large.shutdown(wait=True)

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Detector(model={self.entry.name!r}, backend={self.backend!r}, device={self.device!r}, "
                f"precision={self.precision!r}, threshold={self.threshold})")

    # -- running -------------------------------------------------------------------------------------------
    def _prepare(self, source: ImageSource, channel_order: str, keep_image: bool) -> _Prepared:
        if not isinstance(source, (str, os.PathLike)):  # arrays and PIL images: already in the caller's memory
            rgb = load_image(source, channel_order=channel_order, max_pixels=self.max_pixels)
            tensor = preprocess(rgb, self.entry, form=self.form)
            return _Prepared(rgb if keep_image else None, int(rgb.shape[1]), int(rgb.shape[0]), tensor)

        def decode(image: PILImage.Image) -> _Prepared:
            cost = decode_cost(image.width, image.height, image.mode, keep_image)
            if cost > LARGE_DECODE_BYTES:
                return self._large_decoder().submit(decode_within_budget, image, cost).result()
            return decode_within_budget(image, cost)

        def decode_within_budget(image: PILImage.Image, cost: int) -> _Prepared:
            # The full-size pixels live only inside the budget's hold; what leaves it is network-sized.
            with self._decode_budget.hold(cost):
                from PIL import ImageOps

                upright = ImageOps.exif_transpose(image) or image
                width, height = upright.size
                resized = None if keep_image else resized_for_network(upright, self.entry.input)
                rgb = _pil_to_rgb(upright) if resized is None else None
                tensor = preprocess(rgb if resized is None else resized, self.entry, form=self.form)
            return _Prepared(rgb if keep_image else None, width, height, tensor)

        return _decode_file(Path(source), self.max_pixels, decode)

    def _large_decoder(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._large_decodes is None:
                self._large_decodes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssdtool-decode-large")
            return self._large_decodes

    def _detections(self, outputs: Mapping[str, np.ndarray], width: int, height: int) -> list[Detection]:
        return postprocess(outputs, self.entry, (width, height), form=self.form, threshold=self.threshold,
                           classes=self.classes, max_detections=self.max_detections)

    def __call__(self, image: ImageSource, *, channel_order: str = "RGB") -> list[Detection]:
        """Detections in one image (a path, PIL image or numpy array in ``channel_order``), best first.

        Raises :class:`ImageError` when the image cannot be used.
        """
        mode = "latency" if self.performance == "auto" else self.performance
        engine = self._engine_future(mode)  # first call: compiles while the image decodes
        prepared = self._prepare(image, channel_order, keep_image=False)
        assert prepared.tensor is not None
        outputs = engine.result().infer(prepared.tensor)
        return self._detections(outputs, prepared.width, prepared.height)

    def many(self, images: Iterable[ImageSource], *, channel_order: str = "RGB", keep_images: bool = False
             ) -> Iterator[ImageResult]:
        """Detect in every image of ``images``, yielding one :class:`ImageResult` per input, in input order.

        A bad image gives a result with ``error`` set and does not stop the others. Images are decoded and
        resized by ``workers`` threads a few images ahead of the engine; OpenVINO keeps its optimal number of
        async requests in flight. ``images`` is read lazily (a generator works) and the results stream out, so
        memory stays bounded whatever the number of images.
        """
        mode = self.performance
        if mode == "auto":
            mode = "latency" if isinstance(images, Sequence) and len(images) <= 1 else "throughput"
        engine_future = self._engine_future(mode)
        prefetch = _Prefetch(self, images, channel_order, keep_images, lookahead=2 * self.workers + 2)
        try:
            engine = engine_future.result()  # the first images decode meanwhile
            busy_before = getattr(engine, "busy_seconds", 0.0)
            count = 0
            for result in self._stream(engine, prefetch):
                count += 1
                yield result
            log.debug("%d image(s); the engine was busy %.3f s", count,
                      getattr(engine, "busy_seconds", 0.0) - busy_before)
        finally:
            prefetch.close()

    def _stream(self, engine: Engine, prefetch: _Prefetch) -> Iterator[ImageResult]:
        finished: dict[int, ImageResult] = {}
        pending: dict[int, tuple[str | None, _Prepared]] = {}

        def feed() -> Iterator[tuple[int, np.ndarray]]:
            for index, source, prepared in prefetch:
                path = _source_name(source)
                if isinstance(prepared, ImageError):
                    finished[index] = ImageResult(index=index, path=path, width=None, height=None,
                                                  error=prepared.message)
                    continue
                tensor, prepared.tensor = prepared.tensor, None  # only the engine keeps the big tensor
                pending[index] = (path, prepared)
                assert tensor is not None
                yield index, tensor

        next_index = 0
        for index, outputs in engine.infer_stream(feed(), getattr(engine, "optimal_requests", 1)):
            path, prepared = pending.pop(index)
            finished[index] = ImageResult(index=index, path=path, width=prepared.width, height=prepared.height,
                                          detections=tuple(self._detections(outputs, prepared.width,
                                                                            prepared.height)),
                                          image=prepared.rgb)
            while next_index in finished:
                yield finished.pop(next_index)
                next_index += 1
        while next_index in finished:
            yield finished.pop(next_index)
            next_index += 1


class _Prefetch:
    """Decodes and preprocesses images in a thread pool, at most ``lookahead`` ahead of the consumer, and hands
    them back in input order. Work starts in the constructor, before anyone waits for the engine."""

    def __init__(self, detector: Detector, images: Iterable[ImageSource], channel_order: str, keep_images: bool,
                 lookahead: int) -> None:
        self.detector = detector
        self.channel_order = channel_order
        self.keep_images = keep_images
        self.lookahead = max(1, lookahead)
        self.source = enumerate(images)
        self.exhausted = False
        self.window: deque[tuple[int, ImageSource, Future[_Prepared]]] = deque()
        self.pool = ThreadPoolExecutor(max_workers=detector.workers, thread_name_prefix="ssdtool-decode")
        try:
            self._fill()
        except BaseException:
            self.close()
            raise

    def _fill(self) -> None:
        while not self.exhausted and len(self.window) < self.lookahead:
            try:
                index, source = next(self.source)
            except StopIteration:
                self.exhausted = True
                return
            future = self.pool.submit(self.detector._prepare, source, self.channel_order, self.keep_images)
            self.window.append((index, source, future))

    def __iter__(self) -> Iterator[tuple[int, ImageSource, _Prepared | ImageError]]:
        while self.window:
            index, source, future = self.window.popleft()
            self._fill()
            yield index, source, self._outcome(index, source, future)

    @staticmethod
    def _outcome(index: int, source: ImageSource, future: Future[_Prepared]) -> _Prepared | ImageError:
        try:
            return future.result()
        except ImageError as exc:
            return exc
        except Exception as exc:  # one odd file must not end the run; say what happened instead
            log.debug("unexpected error reading %s", _source_name(source), exc_info=True)
            return ImageError(f"{_source_name(source) or f'image {index}'}: cannot be processed: "
                              f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _source_name(source: ImageSource) -> str | None:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else None


# ------------------------------------------------------------------------------------------------- COCO
def coco_image_ids(paths: Sequence[str | None]) -> list[int]:
    """COCO ``image_id`` per input: the numeric file stems when every input has a distinct one (COCO val2017
    names such as ``000000000139.jpg`` -> 139), else every input's index (0-based, in input order). One rule for
    the whole run, so ids never collide."""
    stems = [Path(p).stem if p else "" for p in paths]
    if stems and all(s.isdigit() for s in stems):
        ids = [int(s) for s in stems]
        if len(set(ids)) == len(ids):
            return ids
    return list(range(len(paths)))


def coco_results(result: ImageResult, image_id: int, score_digits: int | None = 5, box_digits: int | None = 2
                 ) -> list[dict[str, Any]]:
    """COCO results-format records (``image_id``, ``category_id``, ``bbox`` as ``[x, y, w, h]``, ``score``)."""
    records = []
    for d in result.detections:
        if d.coco_category_id is None:
            raise UsageError(f"label {d.label_id} ({d.label}) has no COCO category id; the model's labels are not "
                             "the 80 COCO classes", hint="use --format json")
        records.append({"image_id": image_id, "category_id": d.coco_category_id,
                        "bbox": [_round(v, box_digits) for v in d.coco_bbox], "score": _round(d.score, score_digits)})
    return records
