"""ONNX -> OpenVINO IR, driven by the registry, proven against onnxruntime before it is installed.

The IR takes raw 0-255 pixels in the registry's target channel order (BGR for SSD-ResNet34) with channel
reversal, mean and scale inside the graph (the image-input IR takes whole images and resizes them inside too),
and returns outputs of a static size (``convert.output_count``): normalized xyxy boxes clipped to [0, 1], labels
and scores, padded past the last detection with score 0, label 0 and a zero box. Tensor names survive the
rewrite.

The flow is in :mod:`ssdtool.convert.flow`; the graph in :mod:`~ssdtool.convert.graph`; the parity gate and the
runtime check in :mod:`~ssdtool.convert.gate`; options and the idempotency key in :mod:`~ssdtool.convert.options`;
locks, temporary folders and installing in :mod:`~ssdtool.convert.workspace`; Model API's metadata
(``rt_info/model_info``, in every IR) in :mod:`~ssdtool.convert.model_info`. INT8 quantization and its accuracy
guard are :mod:`ssdtool.quantize`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# Imported now, not on first use: the function shares its submodule's name, and a submodule once imported is an
# attribute of its package, which a lazy name would never replace (it is light: labels and hashing).
from ssdtool.convert.model_info import MODEL_INFO_SECTION, model_info
from ssdtool.lazy import lazy_attributes

if TYPE_CHECKING:
    from ssdtool.convert.flow import ConversionResult, check, convert
    from ssdtool.convert.gate import (
        FP16_MIN_RECALL,
        FP32_TOLERANCE,
        PARITY_IOU,
        ParityReport,
        parity_check,
        runtime_check,
    )
    from ssdtool.convert.graph import build_ir_model
    from ssdtool.convert.options import (
        IMAGE_RESIZE,
        OPEN_INT8_KEYS,
        PARITY_IMAGES,
        RECIPE_VERSION,
        ConvertOptions,
        check_options,
        conversion_parameters,
        ir_path,
        same_parameters,
    )

# Names resolve on first use: what an installed IR is (convert.options) is read by detect and export, which must not
# load the converter (onnx, the graph rewrite, NNCF glue) for it.
_LAZY = {
    **dict.fromkeys(("ConversionResult", "check", "convert"), "ssdtool.convert.flow"),
    **dict.fromkeys(("FP16_MIN_RECALL", "FP32_TOLERANCE", "PARITY_IOU", "ParityReport", "parity_check",
                     "runtime_check"), "ssdtool.convert.gate"),
    "build_ir_model": "ssdtool.convert.graph",
    **dict.fromkeys(("IMAGE_RESIZE", "OPEN_INT8_KEYS", "PARITY_IMAGES", "RECIPE_VERSION", "ConvertOptions",
                     "check_options", "conversion_parameters", "ir_path", "same_parameters"),
                    "ssdtool.convert.options"),
}

__all__ = [
    "FP16_MIN_RECALL", "FP32_TOLERANCE", "IMAGE_RESIZE", "MODEL_INFO_SECTION", "OPEN_INT8_KEYS", "PARITY_IMAGES",
    "PARITY_IOU", "RECIPE_VERSION", "ConversionResult", "ConvertOptions", "ParityReport", "build_ir_model", "check",
    "check_options", "conversion_parameters", "convert", "ir_path", "model_info", "parity_check", "runtime_check",
    "same_parameters",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
