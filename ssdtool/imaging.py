"""Pixels in, network tensors out: one image loader, and resizing and normalization driven by the registry.

* :func:`load_image` - a path, PIL image or numpy array -> 8-bit RGB ``HxWx3`` (EXIF orientation applied;
  grayscale, palette, alpha, CMYK and 16-bit images converted; size limits checked before decoding), with
  :func:`decode_file` for callers that decode a file their own way (detection's bounded-memory path);
* :func:`preprocess` - RGB pixels -> the network input tensor (``form="onnx"``: the source model's normalized RGB;
  ``form="ir"``: a converted IR's raw BGR pixels; ``form="image"``: the image-input IR's whole image, BGR);
* :class:`DecodeBudget` - bounds the memory of concurrent decodes; :func:`generated_images` - test images.

Shared by detection, the conversion parity gate, INT8 calibration and benchmarks, so every path feeds the network
exactly the same pixels. numpy and Pillow only.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar, Union

import numpy as np

from ssdtool import fsutil
from ssdtool.constants import DEFAULT_MAX_PIXELS, ColorOrder, InputLayout, InputType, Interpolation
from ssdtool.errors import ImageError, UsageError
from ssdtool.registry import InputSpec, ModelEntry

if TYPE_CHECKING:
    from PIL import Image as PILImage

#: The network inputs: the source ONNX's (normalized RGB floats), a converted IR's (raw BGR pixels at the network
#: size) and the image-input IR's (the whole image as raw 8-bit BGR pixels, resized inside the IR).
FORMS = ("onnx", "ir", "image")
ImageSource = Union[str, "os.PathLike[str]", "PILImage.Image", np.ndarray]
T = TypeVar("T")

PIL_FILTERS = {Interpolation.BILINEAR: 2, Interpolation.NEAREST: 0, Interpolation.BICUBIC: 3}  # Image.Resampling
#: Memory that images being decoded at the same time may take (see :class:`DecodeBudget`).
DEFAULT_DECODE_MEMORY = 512 << 20
#: Decodes estimated above this run on one thread of their own: the C allocator keeps memory a thread freed for
#: that thread's next use, so large decodes spread over four threads would keep four times their peak resident.
LARGE_DECODE_BYTES = 64 << 20
# Bytes per pixel Pillow keeps for an image of each mode (everything else: 4).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


class DecodeBudget:
    """Bounds the memory of concurrent image decodes, not only their number.

    A small PNG can declare 9000 x 9000 pixels: a few KB on disk, hundreds of MB once decoded. Each decode
    holds its estimated cost (:func:`decode_cost`, see :meth:`hold`) while the full-size pixels live; a decode
    that does not fit waits until the others are done, and one larger than the whole budget runs alone. So eight
    such files take the memory of one, while ordinary photos still decode in parallel.
    """

    def __init__(self, capacity: int = DEFAULT_DECODE_MEMORY) -> None:
        self.capacity = max(1, capacity)
        self._used = 0
        self._holders = 0
        self.peak_holders = 0  # the most decodes that ever held memory at once (for tests and logs)
        self._condition = threading.Condition()

    @contextlib.contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        cost = min(max(0, cost), self.capacity)
        with self._condition:
            while self._holders and self._used + cost > self.capacity:
                self._condition.wait()
            self._used += cost
            self._holders += 1
            self.peak_holders = max(self.peak_holders, self._holders)
        try:
            yield
        finally:
            with self._condition:
                self._used -= cost
                self._holders -= 1
                self._condition.notify_all()


def decode_cost(width: int, height: int, mode: str, keep_full_image: bool) -> int:
    """Estimated peak bytes of decoding an image: the decoded pixels, one converted or rotated copy, and (when
    the full-size RGB is kept, for drawing) Pillow's and numpy's RGB copies."""
    pixels = width * height
    source = _MODE_BYTES.get(mode, 4)
    return pixels * (2 * source + 4 + (7 if keep_full_image else 0))


def resized_for_network(image: PILImage.Image, spec: InputSpec) -> np.ndarray | None:
    """The upright ``image`` resized to the network input as 8-bit RGB ``HxWx3``, without a full-size RGB copy.

    The same pixels as ``resize_rgb(load_image(...))``, bit for bit (``tests/test_images.py`` holds them equal):
    1-bit and grayscale images are resized as one band and then repeated into three (Pillow resizes each band
    alike), other modes are converted to RGB by Pillow and resized there, skipping numpy's full-size copy. None
    for modes that need numpy's own conversion (16-bit, 32-bit, float): then the caller takes the usual path.
    """
    mode = image.mode
    size = tuple(spec.resize)
    resample = PIL_FILTERS[spec.interpolation]
    if mode in ("1", "L"):
        gray = image.convert("L") if mode == "1" else image
        if gray.size != size:
            gray = gray.resize(size, resample=resample)
        return np.repeat(np.asarray(gray)[..., None], 3, axis=2)
    if mode.startswith("I") or mode == "F":
        return None
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # as load_image does: Pillow's route for palette transparency
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if rgb.size != size:
        rgb = rgb.resize(size, resample=resample)
    return np.asarray(rgb)


def whole_for_network(image: PILImage.Image, color_order: str) -> np.ndarray | None:
    """The upright ``image`` as the image-input IR's input, u8 ``[1, H, W, 3]`` in ``color_order``, straight from
    Pillow's buffer in that order.

    The same pixels as ``preprocess(load_image(...), entry, form="image")``, bit for bit (``tests/test_images.py``
    holds them equal), without numpy's full-size RGB copy and its channel reversal (a strided copy): at 12 MP those
    two cost more than the decode. None for modes that need numpy's own conversion (16-bit, 32-bit, float).
    """
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        return None
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # as load_image does: Pillow's route for palette transparency
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    pixels = np.frombuffer(rgb.tobytes("raw", color_order), dtype=np.uint8)
    return pixels.reshape(1, rgb.height, rgb.width, 3)


def resize_rgb(rgb: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Resize an HxWx3 uint8 RGB array to the network size with the registry's Pillow filter (no letterbox)."""
    from PIL import Image

    width, height = spec.resize
    if rgb.shape[0] == height and rgb.shape[1] == width:
        return np.ascontiguousarray(rgb)
    image = Image.fromarray(rgb, mode="RGB") if rgb.dtype == np.uint8 else Image.fromarray(rgb.astype(np.uint8))
    return np.asarray(image.resize((width, height), resample=PIL_FILTERS[spec.interpolation]))


def normalized_input(rgb_resized: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The source model's input: channel order, mean and scale from the registry, float32, spec layout."""
    return _tensor(rgb_resized, spec.color_order, spec.layout, InputType.F32, spec.mean, spec.scale)


def raw_input(rgb_resized: np.ndarray, color_order: str = ColorOrder.BGR.value, layout: str = InputLayout.NCHW.value,
              dtype: str = InputType.F32.value) -> np.ndarray:
    """A converted IR's input: raw 0-255 pixels in its channel order and layout (normalization is inside)."""
    return _tensor(rgb_resized, color_order, layout, dtype)


# ------------------------------------------------------------------------------------------------ loading
def _looks_like_text(stream: BinaryIO) -> bool:
    """Whether a file Pillow could not read starts with text (an HTML error page saved as .jpg, say). Only this
    is said about it: a file that is not an image may be anything (a link to a secret), so no byte of it is
    ever printed."""
    with contextlib.suppress(OSError, ValueError):
        stream.seek(0)
        head = stream.read(512)
        with contextlib.suppress(UnicodeDecodeError):
            text = head.decode("utf-8")
            return bool(text) and all(c.isprintable() or c in "\t\n\r" for c in text)
    return False


def load_image(source: ImageSource, *, channel_order: str = ColorOrder.RGB.value,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``source`` into an 8-bit RGB ``HxWx3`` array, upright.

    ``source`` is a path, a PIL image or a numpy array. Files and PIL images get their EXIF orientation applied;
    grayscale, palette, RGBA/LA (alpha dropped), CMYK, YCbCr and 16-bit (``I;16``, ``I``) images become 8-bit RGB
    (16-bit values are scaled by 255/65535, not clipped). Arrays are ``HxW`` (gray), ``HxWx3`` or ``HxWx4``
    (alpha dropped), uint8 or uint16, in ``channel_order`` ("RGB" or "BGR", e.g. from OpenCV).

    Raises :class:`ImageError` for a missing, unreadable, empty, truncated or non-image file, an empty image,
    or one with more than ``max_pixels`` pixels (checked from the header, before decoding; None: no limit of
    ours, Pillow's own ``Image.MAX_IMAGE_PIXELS`` still applies).
    """
    if channel_order not in ColorOrder.values():
        raise UsageError(f"channel_order must be one of {', '.join(ColorOrder.values())}, got {channel_order!r}")
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, channel_order, max_pixels)
    from PIL import Image

    if isinstance(source, Image.Image):
        _check_size(source.width, source.height, max_pixels, "the image")
        return pil_to_rgb(source)
    if not isinstance(source, (str, os.PathLike)):
        raise ImageError(f"cannot read an image from {type(source).__name__}; expected a path, a PIL image or a "
                         "numpy array")
    return decode_file(Path(source), max_pixels, pil_to_rgb)


def decode_file(path: Path, max_pixels: int | None, decode: Callable[[PILImage.Image], T]) -> T:
    """Open the image file ``path``, check its size from the header, and return ``decode(image)``; every way a
    file can fail becomes an :class:`ImageError`."""
    from PIL import Image

    descriptor = _open_image_file(path)
    with os.fdopen(descriptor, "rb") as stream:
        size = os.fstat(descriptor).st_size
        try:
            with Image.open(stream) as image:
                _check_size(image.width, image.height, max_pixels, str(path))
                return decode(image)
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{path}: too large to decode safely: {exc}",
                             hint="raise the limit with --max-pixels if you trust the file") from None
        except Image.UnidentifiedImageError:
            content = " of text" if _looks_like_text(stream) else ""
            raise ImageError(f"{path}: not an image Pillow can read ({size} bytes{content}); expected JPEG, PNG, "
                             "BMP, GIF, TIFF, WebP or another format Pillow supports") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
            # Pillow reports truncated and corrupt data as OSError ("image file is truncated"), SyntaxError
            # (broken PNG chunks) and others, depending on the format.
            raise ImageError(f"{path}: truncated or corrupt image data: {exc}",
                             hint="re-export or re-download the file") from None


def _open_image_file(path: Path) -> int:
    """A descriptor of the regular file ``path`` (links followed: the user named it), or an :class:`ImageError`
    that says what is there instead: nothing, a folder, a FIFO, a device, a socket, an empty file.

    What ``path`` is comes from ``stat`` first (opening a FIFO or some devices has effects), then from the open
    descriptor again (the file may have been swapped in between); it is opened non-blocking, so a FIFO planted in
    that instant cannot hang the run.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file", hint="check the path") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot access: {exc.strerror or exc}") from None
    _check_kind(path, info.st_mode)
    try:
        descriptor = os.open(path, os.O_RDONLY | fsutil.O_CLOEXEC | fsutil.O_NONBLOCK | fsutil.O_BINARY)
    except PermissionError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror or exc}", hint="check the file's permissions") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot access: {exc.strerror or exc}") from None
    try:
        info = os.fstat(descriptor)
        _check_kind(path, info.st_mode)
        if info.st_size == 0:
            raise ImageError(f"{path}: empty file (0 bytes), expected an image")
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _check_kind(path: Path, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise ImageError(f"{path}: is a folder, expected an image file",
                         hint="pass the folder itself as a source to read the images in it")
    if not stat.S_ISREG(mode):
        link = ""
        with contextlib.suppress(OSError):
            if path.is_symlink():
                link = f" (through the link {path} -> {os.readlink(path)})"
        raise ImageError(f"{path}: it is {fsutil.describe(mode)}{link}, not an image file",
                         hint="pass a regular image file")


def _check_size(width: int, height: int, max_pixels: int | None, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{what}: the image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{what}: {width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,} "
            "(a guard against decompression bombs)",
            hint="raise it with --max-pixels (Detector(max_pixels=...)) if you trust the file")


def pil_to_rgb(image: PILImage.Image) -> np.ndarray:
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
    if channel_order == ColorOrder.BGR:
        pixels = pixels[..., ::-1]
    return np.ascontiguousarray(pixels)


# ------------------------------------------------------------------------------------------------ tensors
def preprocess(rgb: np.ndarray, entry: ModelEntry, *, form: str = "onnx", input_type: str = InputType.F32.value,
               input_layout: str = InputLayout.NCHW.value) -> np.ndarray:
    """8-bit RGB ``HxWx3`` pixels -> the network input of batch 1, as the registry entry describes it.

    The whole image is resized to the network size with the registry's Pillow filter (bilinear for SSD-ResNet34;
    no letterbox, so the aspect ratio is not kept - boxes scale back per axis). ``form="onnx"``: the source
    model's input (``input.color_order``, ``(pixel - mean) / scale``, ``input.layout``, float32).
    ``form="ir"``: an ssdtool-converted IR's input, raw 0-255 pixels in ``convert.color_order`` (BGR) with
    ``input_type`` ("f32" or "u8") and ``input_layout`` ("NCHW" or "NHWC"); normalization happens inside the IR.
    ``form="image"``: the image-input IR's input, the whole image unresized: u8 ``[1, H, W, 3]`` in
    ``convert.color_order`` (resize and normalization happen inside the IR; ``input_type`` and ``input_layout`` do
    not apply).
    """
    check_form(form)
    if form == "image":
        return raw_input(rgb, entry.convert.color_order, InputLayout.NHWC, InputType.U8)
    resized = resize_rgb(rgb, entry.input)
    if form == "onnx":
        return normalized_input(resized, entry.input)
    if input_type not in InputType.values() or input_layout not in InputLayout.values():
        raise UsageError(f"input_type must be {InputType.spoken()} and input_layout {InputLayout.spoken()}, got "
                         f"{input_type!r}, {input_layout!r}")
    return raw_input(resized, entry.convert.color_order, input_layout, input_type)


def _tensor(resized: np.ndarray, color_order: str, layout: str, dtype: str,
            mean: Sequence[float] | None = None, scale: Sequence[float] | None = None) -> np.ndarray:
    """Resized 8-bit RGB pixels -> a batch-1 tensor in ``color_order`` and ``layout``, ``(pixel - mean) / scale``
    when those are given.

    Each channel is cast straight into its plane of the output and mean and scale are applied in place: a tenth
    of the time of converting the whole HxWx3 image to float32 and then transposing the float array (a second,
    cache-unfriendly pass over 17 MB at 1200 px), with the same float32 operations in the same order, so the same
    bits (``tests/test_python_api.py`` holds them equal to that formula).
    """
    channels = resized if color_order == ColorOrder.RGB else resized[..., ::-1]
    if dtype == InputType.U8 and mean is None:
        planar = channels.transpose(2, 0, 1) if layout == InputLayout.NCHW else channels
        return np.ascontiguousarray(planar[np.newaxis])
    height, width = resized.shape[:2]
    if layout == InputLayout.NCHW:
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


def check_form(form: str) -> None:
    if form not in FORMS:
        raise UsageError(f"form must be one of {', '.join(FORMS)}, got {form!r}")


def generated_images(count: int, seed: int = 0, size: tuple[int, int] = (640, 480)) -> list[np.ndarray]:
    """Deterministic RGB uint8 test images: gradients, rectangles, discs and noise, like ordinary photos have.

    Uses the legacy ``RandomState`` stream, which numpy keeps frozen across releases, so every machine makes the
    same pixels for the same seed.
    """
    width, height = size
    images = []
    for index in range(count):
        rng = np.random.RandomState(seed * 1000 + index)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack([
            255 * xs / max(width - 1, 1),
            255 * ys / max(height - 1, 1),
            127.5 + 127.5 * np.sin((xs + ys) / (7.0 + 5 * index)),
        ], axis=-1)
        image = base * rng.uniform(0.3, 1.0, size=3)
        for _ in range(3 + index % 5):
            x0, y0 = rng.randint(0, width), rng.randint(0, height)
            w, h = rng.randint(width // 10, width // 2), rng.randint(height // 10, height // 2)
            image[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, size=3)
        for _ in range(2):
            cx, cy, r = rng.randint(0, width), rng.randint(0, height), rng.randint(10, max(11, min(size) // 4))
            disc = (xs - cx) ** 2 + (ys - cy) ** 2 < r * r
            image[disc] = rng.uniform(0, 255, size=3)
        image += rng.normal(0, 8, size=image.shape)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images
