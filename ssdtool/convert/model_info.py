"""Model API's metadata in every IR: ``rt_info/model_info``, what OpenVINO Model API's wrappers read from an IR.

``model_api.models.DetectionModel.create_model("<ir>.xml")`` (PyPI ``openvino-model-api``) picks its wrapper from
``model_info/model_type`` and takes every wrapper parameter it knows from ``model_info/<name>``, as a string (a
list is one space-separated string; a boolean ``True``/``False``). With what is written here it runs an ssdtool IR
with no configuration and names the labels:

* ``model_type`` ``SSD``: Model API's SSD wrapper reads the three outputs by name (``bboxes``, ``labels``,
  ``scores``), boxes normalized ``[x_min, y_min, x_max, y_max]``, and scales them by the original image size;
* ``labels``: the label file by label id (line 0 is the background), spaces in a name written as ``_``, because
  Model API splits the list at whitespace (its own converter writes COCO names the same way);
* ``confidence_threshold``: ssdtool's default threshold (:data:`ssdtool.detections.DEFAULT_THRESHOLD`);
* preprocessing. Model API passes images as OpenCV reads them (u8, ``H x W x 3``, BGR). The IR takes BGR raw
  pixels with the normalization inside, so ``reverse_input_channels`` is ``False`` (``True`` for a registry entry
  whose IR takes RGB), ``mean_values`` and ``scale_values`` are empty (Model API adds no normalization of its own)
  and ``resize_type`` is ``standard`` (the whole image resized to the network size, aspect ratio not kept, as
  ssdtool does). For the standard IR Model API embeds its own resize and layout change (OpenVINO's linear
  resize); the **image-input IR** has them inside (``embedded_processing`` ``True``, with ``orig_width`` and
  ``orig_height`` the network size), so Model API sends the raw image, locally or through its OVMS adapter.

The values are part of the IR's idempotency key (``parameters.model_info``, a digest; see
:func:`ssdtool.convert.options.conversion_parameters`), so an IR whose metadata is missing or out of date (an
older ssdtool, an edited label file) is *amended* by the next ``convert``: the XML gets the new section, the graph
and the weights stay as they are (:func:`ssdtool.convert.flow.convert`).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from ssdtool.constants import ColorOrder
from ssdtool.labels import label_names

if TYPE_CHECKING:
    from ssdtool.convert.options import ConvertOptions
    from ssdtool.registry import ModelEntry

#: The rt_info section Model API reads (``<rt_info><model_info>`` in the XML).
MODEL_INFO_SECTION = "model_info"
#: Model API's wrapper for models whose outputs are boxes, labels and scores (``model_api.models.SSD``).
MODEL_TYPE = "SSD"


def _list_item(name: str) -> str:
    """A label name as one item of Model API's space-separated list: whitespace runs and characters that are not
    printable (which XML cannot carry either) become ``_``."""
    return "_".join("".join(c if c.isprintable() else "_" for c in part) for part in name.split())


def _flag(value: bool) -> str:
    return "True" if value else "False"


def model_info(entry: ModelEntry, options: ConvertOptions) -> dict[str, str]:
    """The ``model_info`` values of the IR that ``options`` build for ``entry``, as Model API reads them."""
    from ssdtool.detections import DEFAULT_THRESHOLD

    width, height = entry.input.resize
    info = {
        "model_type": MODEL_TYPE,
        "labels": " ".join(_list_item(name) for name in label_names(entry)),
        "confidence_threshold": repr(float(DEFAULT_THRESHOLD)),
        "resize_type": "standard",
        "reverse_input_channels": _flag(entry.convert.color_order == ColorOrder.RGB),
        "mean_values": "",
        "scale_values": "",
        "input_dtype": "u8",
    }
    if options.image_input:
        info.update({"embedded_processing": _flag(True), "orig_width": str(width), "orig_height": str(height)})
    return info


def model_info_digest(info: dict[str, str]) -> str:
    """The idempotency key's record of ``info``: ``sha256:<hex>`` of its canonical JSON."""
    canonical = json.dumps(info, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
