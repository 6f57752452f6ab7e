"""ssdtool: download, convert and run the MLCommons SSD-ResNet34 1200x1200 detector."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
