"""ssdtool: download, convert and run the MLCommons SSD-ResNet34 1200x1200 detector.

The Python API (docs/python-api.md): :class:`Detector` for detection; :func:`load_image`, :func:`preprocess`,
:func:`postprocess` and :func:`postprocess_heads` for other runtimes; :func:`find_images` for sources as the CLI
expands them; :func:`run_loadgen` for MLPerf LoadGen scenarios (``bench --scenario``). Everything is imported
on first use, so ``import ssdtool`` (and ``ssdtool --help``) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssdtool.lazy import lazy_attributes

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ssdtool.backends.spec import EngineSpec, RunInfo
    from ssdtool.detect import Detector
    from ssdtool.detections import Detection, ImageResult, postprocess, postprocess_heads
    from ssdtool.errors import ImageError
    from ssdtool.evaluation import EvalReport, evaluate
    from ssdtool.export import ExportOptions, ExportResult, export_model
    from ssdtool.imaging import load_image, preprocess
    from ssdtool.inputs import find_images
    from ssdtool.loadgen import LoadGenOptions, LoadGenReport, SettingsOverrides, run_loadgen

_LAZY = {
    "Detector": "ssdtool.detect", "RunInfo": "ssdtool.backends.spec", "EngineSpec": "ssdtool.backends.spec",
    "Detection": "ssdtool.detections", "ImageResult": "ssdtool.detections", "postprocess": "ssdtool.detections",
    "postprocess_heads": "ssdtool.detections",
    "load_image": "ssdtool.imaging", "preprocess": "ssdtool.imaging",
    "find_images": "ssdtool.inputs",
    "ImageError": "ssdtool.errors",
    "ExportOptions": "ssdtool.export", "ExportResult": "ssdtool.export", "export_model": "ssdtool.export",
    "start_server": "ssdtool.serving.server", "ServeOptions": "ssdtool.serving.server",
    "ServerTarget": "ssdtool.serving.protocol", "RemoteEngine": "ssdtool.backends.remote",
    "run_loadgen": "ssdtool.loadgen", "LoadGenOptions": "ssdtool.loadgen", "LoadGenReport": "ssdtool.loadgen",
    "SettingsOverrides": "ssdtool.loadgen",
    "evaluate": "ssdtool.evaluation", "EvalReport": "ssdtool.evaluation",
}

__all__ = ["Detection", "Detector", "EngineSpec", "EvalReport", "ExportOptions", "ExportResult", "ImageError",
           "ImageResult", "LoadGenOptions", "LoadGenReport", "RemoteEngine", "RunInfo", "ServeOptions", "ServerTarget",
           "SettingsOverrides", "__version__", "evaluate", "export_model", "find_images", "load_image", "postprocess",
           "postprocess_heads", "preprocess", "run_loadgen", "start_server"]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
