"""Draw detections on an image with Pillow: boxes, class names and scores, readable at any image size.

Line width and font size scale with the image (a 33 px wide strip and a 6000 px photo both stay legible); each
class has a fixed colour, and labels sit on a filled tag in that colour with black or white text, whichever
contrasts more. Pillow's scalable default font (Pillow >= 10.1 with FreeType) is used, falling back to its
bitmap font elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssdtool import fsutil

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from ssdtool.detections import Detection

# 20 distinguishable colours (Tableau 20), picked by label id so a class keeps its colour across images.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
    (219, 219, 141), (158, 218, 229),
)
#: Suffixes kept for annotated copies; anything else is written as PNG.
KEEP_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
                ".webp": "WEBP"}


def colour_for(label_id: int) -> tuple[int, int, int]:
    return PALETTE[label_id % len(PALETTE)]


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    red, green, blue = background
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else (255, 255, 255)


def drawing_sizes(width: int, height: int) -> tuple[int, int]:
    """(line width, font size) in pixels for an image of this size: about 1/300 and 1/40 of its longer side,
    never below 1 px / 10 px and never so large that a label outgrows a narrow image."""
    longer, shorter = max(width, height), min(width, height)
    line = max(1, round(longer / 300))
    font = max(10, round(longer / 40))
    font = min(font, max(10, shorter // 2))  # a 33 px strip gets a font that still fits across it
    return line, font


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow < 10.1 or built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def annotate(image: np.ndarray | PILImage.Image, detections: Sequence[Detection], *,
             show_scores: bool = True) -> PILImage.Image:
    """A copy of ``image`` (RGB array or PIL image) with every detection drawn; boxes in the image's pixels."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image.copy()
    if canvas.mode != "RGB":
        canvas = canvas.convert("RGB")
    width, height = canvas.size
    line, font_size = drawing_sizes(width, height)
    font = _font(font_size)
    draw = ImageDraw.Draw(canvas)
    pad = max(1, font_size // 6)
    ranked = sorted(detections, key=lambda d: -d.score)
    # Boxes first, the most confident last (on top); then the tags, so no box line crosses a label.
    for detection in reversed(ranked):
        x_min, y_min, x_max, y_max = detection.box
        draw.rectangle((x_min, y_min, max(x_min, x_max), max(y_min, y_max)), outline=colour_for(detection.label_id),
                       width=line)
    placed: list[tuple[float, float, float, float]] = []
    for detection in ranked:  # the best detections choose their tag position first
        colour = colour_for(detection.label_id)
        text = f"{detection.label} {detection.score:.2f}" if show_scores else detection.label
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tag_w, tag_h = right - left + 2 * pad, bottom - top + 2 * pad
        tag = _tag_position(detection.box, tag_w, tag_h, width, height, placed)
        placed.append(tag)
        draw.rectangle(tag, fill=colour)
        draw.text((tag[0] + pad - left, tag[1] + pad - top), text, fill=_text_colour(colour), font=font)
    return canvas


def _tag_position(box: tuple[float, float, float, float], tag_w: float, tag_h: float, width: int, height: int,
                  placed: list[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    """Where a label tag goes: above the box's top-left corner, else just inside it, else below the box - the
    first spot that covers no tag placed before (else the first spot); always on the image."""
    x_min, y_min, _x_max, y_max = box
    x = min(max(0.0, x_min), max(0.0, width - tag_w))
    candidates = [y_min - tag_h, y_min, y_max]
    spots = []
    for y in candidates:
        y = min(max(0.0, y), max(0.0, height - tag_h))
        spots.append((x, y, x + tag_w, y + tag_h))
    for spot in spots:
        if not any(_overlap(spot, other) for other in placed):
            return spot
    return spots[0]


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def output_name(relative: str) -> str:
    """The annotated copy's name for an input's relative path: same name, PNG unless the format is kept."""
    path = Path(relative)
    return relative if path.suffix.lower() in KEEP_FORMATS else str(path.with_suffix(".png"))


def save_image(image: PILImage.Image, path: Path) -> None:
    """Write atomically (:func:`ssdtool.fsutil.atomic_write`): a reader never sees half an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image_format = KEEP_FORMATS.get(path.suffix.lower(), "PNG")
    options: dict[str, Any] = {"quality": 90} if image_format in ("JPEG", "WEBP") else {}
    fsutil.atomic_write(path, lambda stream: image.save(stream, format=image_format, **options))
