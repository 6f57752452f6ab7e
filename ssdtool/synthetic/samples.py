"""Deterministic sample images for smoke tests and calibration, and the model's normalization."""

from __future__ import annotations

import numpy as np

from ssdtool.synthetic.spec import IMAGE_MEAN, IMAGE_STD


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
