"""What the Open Inference Protocol client and ``ssdtool serve`` share. Imports nothing heavy.

``ssdtool serve`` serves two models, each with the metadata of exactly what it takes and answers:

* ``NAME``: the IR itself. Its metadata lists the IR's own input (``[1, 3, H, W]``, ``FP32`` raw BGR pixels) and
  outputs, as any OpenVINO server would list them (OVMS, Triton), and a request holds that tensor;
* ``NAME-detections`` (:func:`detections_model`): one ``BYTES`` input named :data:`IMAGE_INPUT` holding an
  encoded image (JPEG, PNG, ...), which the server decodes, resizes and runs; it answers with pixel-space
  detections in :data:`DETECTION_OUTPUTS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import numpy as np

from ssdtool.checked import is_finite_number, is_int
from ssdtool.constants import WireProtocol
from ssdtool.errors import UsageError
from ssdtool.redact import printable, redact_url

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


# Whitespace, controls and anything beyond ASCII: a URL is sent as ASCII on the request line (non-ASCII paths are
# percent-encoded; a non-ASCII host name is its IDNA form).
_NOT_IN_URL = re.compile(r"[^\x21-\x7e]")


def split_server_url(url: str) -> SplitResult:
    """``url`` as a server's base URL: ``http`` or ``https``, a host, a port from 1 to 65535 when given, an optional
    path prefix, no query or fragment. :class:`UsageError` (the URL shown without its credentials) otherwise."""
    shown = printable(redact_url(url))  # quoted as it is: repr() would double the escapes
    hint = "for example --server http://127.0.0.1:8080"
    if _NOT_IN_URL.search(url):
        raise UsageError(f"--server URL '{shown}' holds a space, a control character or a non-ASCII character",
                         hint=f"percent-encode them; {hint}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # an out-of-range or non-numeric port, an unclosed IPv6 bracket
        problem = "has a port that is not a number from 1 to 65535" if str(exc).startswith("Port") \
            else f"is not a valid URL ({exc})"
        raise UsageError(f"--server URL '{shown}' {problem}", hint=hint) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise UsageError(f"--server takes an http:// or https:// URL, got '{shown}'", hint=hint)
    if not parts.hostname:
        raise UsageError(f"--server URL '{shown}' names no host", hint=hint)
    if port == 0:
        raise UsageError(f"--server URL '{shown}' has port 0; ports run from 1 to 65535", hint=hint)
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise UsageError(f"--server URL '{shown}' has a query or a fragment; it takes the server's base URL "
                         "(the client appends /v2/models/NAME/infer)", hint=hint)
    return parts


@dataclass(frozen=True)
class ServerTarget:
    """A model on an Open Inference Protocol server: where it is and how to talk to it; checked when made
    (:class:`UsageError`), so nothing runs with a target that cannot work.

    ``url``: the server's base URL (``http://host:8080``, see :func:`split_server_url`; credentials in it are sent as
    HTTP basic authentication and never printed). ``model``: the served model's name (None: the registry model's
    name). ``concurrency``: requests in flight for streams. ``timeout``: seconds each attempt may take in all:
    connecting, sending, and receiving the whole answer. ``retries``: further attempts after a connection error, a
    connection cut mid-answer, a timeout, or a 502, 503 or 504 (the wait doubles from ``backoff`` seconds).
    ``protocol``: ``binary`` (the binary tensor extension) or ``json``.
    """

    url: str
    model: str | None = None
    concurrency: int = 1
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 0.2
    protocol: WireProtocol = WireProtocol.BINARY

    def __post_init__(self) -> None:
        split_server_url(self.url)
        if self.model is not None and (not self.model or _NOT_IN_URL.search(self.model)):
            raise UsageError(f"--server-model must be a name of printable ASCII characters without spaces, got "
                             f"'{printable(self.model)}'", hint="leave it out to use the registry model's name")
        for name, value, low in (("concurrency", self.concurrency, 1), ("retries", self.retries, 0)):
            if not is_int(value) or value < low:
                raise UsageError(f"server {name} must be an integer of at least {low}, got {value!r}")
        if not is_finite_number(self.timeout) or self.timeout <= 0:
            raise UsageError(f"server timeout must be a finite number of seconds above 0, got {self.timeout!r}")
        if not is_finite_number(self.backoff) or self.backoff < 0:
            raise UsageError(f"server backoff must be a finite number of seconds, 0 or more, got {self.backoff!r}")
