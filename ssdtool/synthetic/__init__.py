"""The synthetic twin of ``resnet34-ssd1200.onnx``: same network, interface and export pattern, seeded weights.

The real file cannot be fetched in CI, so every test, benchmark and smoke check runs on this twin.
It is built with ``onnx.helper`` and numpy only, and is byte-reproducible: the same spec gives the
same bytes on every machine, Python and numpy version (see :func:`_uniform` for how).

Variants, all from one builder (``TwinSpec``):

* ``full``: 1200 px, 20.06 M parameters, 433 GFLOPs, ~80.2 MB: the real file's size and cost.
* ``tiny``: 300 px, channel widths / 8, default boxes for the 300 px feature sizes; milliseconds.
* ``planted``: either geometry, head tensors independent of the image that encode a chosen set of
  detections exactly (zero head weights plus a constant added to the conf heads).
* ``heads_only``: the graph cut after the twelve head tensors, conf first then loc (Furiosa form).

URL form used by the registry: ``synthetic:ssd-resnet34?seed=0`` and ``...&variant=tiny``
(optionally ``&outputs=heads``). See docs/synthetic.md.
"""

from ssdtool.synthetic.graph import FlopCount, build_model, build_to_path, count_flops, count_parameters
from ssdtool.synthetic.samples import normalize_image, sample_images
from ssdtool.synthetic.source import SyntheticSource
from ssdtool.synthetic.spec import (
    HEAD_CONF_NAMES,
    HEAD_LOC_NAMES,
    IMAGE_MEAN,
    IMAGE_STD,
    IOU_THRESHOLD,
    MAX_DETECTIONS,
    OPSET,
    PRODUCER_NAME,
    PRODUCER_VERSION,
    SCORE_THRESHOLD,
    URL_MODEL,
    URL_SCHEME,
    PlantedDetection,
    SyntheticUrlError,
    TwinSpec,
    is_synthetic_url,
    parse_synthetic_url,
    planted_expected,
)

__all__ = [
    "HEAD_CONF_NAMES",
    "HEAD_LOC_NAMES",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "IOU_THRESHOLD",
    "MAX_DETECTIONS",
    "OPSET",
    "PRODUCER_NAME",
    "PRODUCER_VERSION",
    "SCORE_THRESHOLD",
    "URL_MODEL",
    "URL_SCHEME",
    "FlopCount",
    "PlantedDetection",
    "SyntheticSource",
    "SyntheticUrlError",
    "TwinSpec",
    "build_model",
    "build_to_path",
    "count_flops",
    "count_parameters",
    "is_synthetic_url",
    "normalize_image",
    "parse_synthetic_url",
    "planted_expected",
    "sample_images",
]
