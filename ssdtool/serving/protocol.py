"""What the Open Inference Protocol client and ``ssdtool serve`` share. Imports nothing heavy.

``ssdtool serve`` serves two models, each with the metadata of exactly what it takes and answers:

* ``NAME``: the IR itself. Its metadata lists the IR's own input (``[1, 3, H, W]``, ``FP32`` raw BGR pixels) and
  outputs, as any OpenVINO server would list them (OVMS, Triton), and a request holds that tensor;
* ``NAME-detections`` (:func:`detections_model`): one ``BYTES`` input named :data:`IMAGE_INPUT` holding an
  encoded image (JPEG, PNG, ...), which the server decodes, resizes and runs; it answers with pixel-space
  detections in :data:`DETECTION_OUTPUTS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssdtool.constants import WireProtocol

#: The BYTES input that carries an encoded image file (not "image": that is the IR's own input's name).
IMAGE_INPUT = "encoded_image"
#: What the detections model's name adds to the IR model's: ``NAME-detections``.
DETECTIONS_SUFFIX = "-detections"
#: The protocol extensions ``ssdtool serve`` serves (``GET /v2`` lists them): the binary tensor data extension.
EXTENSIONS = ("binary_tensor_data",)
#: Outputs answering an image: boxes ``[N, 4]`` (x_min, y_min, x_max, y_max in pixels of the image), label ids
#: ``[N]``, scores ``[N]``, best first.
DETECTION_OUTPUTS = ("detection_boxes", "detection_labels", "detection_scores")
#: Response parameter naming the arithmetic the server's engine runs (f32, bf16, ...), when it knows.
PRECISION_PARAMETER = "inference_precision"
#: Header of the binary tensor extension: the length of the JSON part that precedes the raw tensor bytes.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: A request body larger than this is refused with 413 (``ssdtool serve --max-request-bytes``): a 1200 px
#: FP32 tensor is 17.3 MB, 24 MB in JSON numbers takes more; 64 MiB leaves room for both and for large photos.
DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20

_DATATYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "UINT8": np.uint8, "INT8": np.int8,
              "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


def detections_model(name: str) -> str:
    """The name of the model that answers encoded images with detections, beside the IR model ``name``."""
    return name + DETECTIONS_SUFFIX


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy type of a v2 tensor data type (``FP32`` -> float32); KeyError for BYTES and unknown ones."""
    return np.dtype(_DATATYPES[datatype])


def v2_datatype(dtype: np.dtype) -> str:
    """The v2 data type of a numpy type (float32 -> ``FP32``)."""
    for name, numpy_type in _DATATYPES.items():
        if np.dtype(numpy_type) == dtype:
            return name
    raise KeyError(str(dtype))


@dataclass(frozen=True)
class ServerTarget:
    """A model on an Open Inference Protocol server: where it is and how to talk to it.

    ``url``: the server's base URL (``http://host:8080``; credentials in it are never printed). ``model``: the
    served model's name (None: the registry model's name). ``concurrency``: requests in flight for streams.
    ``timeout``: seconds to connect and to wait for each answer. ``retries``: further attempts after a connection
    error, a timeout or a 503 (the wait doubles from ``backoff`` seconds). ``protocol``: ``binary`` (the binary
    tensor extension) or ``json``.
    """

    url: str
    model: str | None = None
    concurrency: int = 1
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 0.2
    protocol: WireProtocol = WireProtocol.BINARY
