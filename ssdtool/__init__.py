"""ssdtool: download, convert and run the MLCommons SSD-ResNet34 1200x1200 detector."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Detection", "Detector", "ImageResult", "__version__"]

if TYPE_CHECKING:
    from ssdtool.detect import Detection, Detector, ImageResult

# The detection API is imported on first use, so 'import ssdtool' (and 'ssdtool --help') stays light.
_LAZY = {"Detector": "ssdtool.detect", "Detection": "ssdtool.detect", "ImageResult": "ssdtool.detect"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssdtool' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
