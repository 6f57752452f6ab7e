"""Pixels in, network tensors out: resizing and normalization driven by the registry's ``InputSpec``.

Shared by detection, the conversion parity gate, INT8 calibration and benchmarks, so every path feeds the
network exactly the same way. numpy and Pillow only.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from ssdtool.registry import InputSpec

if TYPE_CHECKING:
    from PIL import Image as PILImage

PIL_FILTERS = {"bilinear": 2, "nearest": 0, "bicubic": 3}  # PIL.Image.Resampling values
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


def resize_rgb(rgb: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Resize an HxWx3 uint8 RGB array to the network size with the registry's Pillow filter (no letterbox)."""
    from PIL import Image

    width, height = spec.resize
    if rgb.shape[0] == height and rgb.shape[1] == width:
        return np.ascontiguousarray(rgb)
    image = Image.fromarray(rgb, mode="RGB") if rgb.dtype == np.uint8 else Image.fromarray(rgb.astype(np.uint8))
    return np.asarray(image.resize((width, height), resample=PIL_FILTERS[spec.interpolation]))


def _to_layout(hwc: np.ndarray, layout: str) -> np.ndarray:
    batch = hwc[np.newaxis]
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2) if layout == "NCHW" else batch)


def normalized_input(rgb_resized: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The source model's input: channel order, mean and scale from the registry, float32, spec layout."""
    pixels = rgb_resized if spec.color_order == "RGB" else rgb_resized[..., ::-1]
    mean = np.asarray(spec.mean, dtype=np.float32)
    scale = np.asarray(spec.scale, dtype=np.float32)
    return _to_layout((pixels.astype(np.float32) - mean) / scale, spec.layout)


def raw_input(rgb_resized: np.ndarray, color_order: str = "BGR", layout: str = "NCHW",
              dtype: str = "f32") -> np.ndarray:
    """A converted IR's input: raw 0-255 pixels in its channel order and layout (normalization is inside)."""
    pixels = rgb_resized if color_order == "RGB" else rgb_resized[..., ::-1]
    return _to_layout(pixels.astype(np.uint8 if dtype == "u8" else np.float32), layout)


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
