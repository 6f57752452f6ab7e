"""Pixels in, network tensors out: resizing and normalization driven by the registry's ``InputSpec``.

Shared by detection, the conversion parity gate, INT8 calibration and benchmarks, so every path feeds the
network exactly the same way. numpy and Pillow only.
"""

from __future__ import annotations

import numpy as np

from ssdtool.registry import InputSpec

PIL_FILTERS = {"bilinear": 2, "nearest": 0, "bicubic": 3}  # PIL.Image.Resampling values


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
