"""Closed sets shared by the library and the command line.

numpy- and engine-free, so the CLI can build its choices from them and ``ssdtool --help`` stays fast. Every
member is a ``str`` too: it compares equal to its value, formats as its value and goes into JSON as is.
"""

from __future__ import annotations

from enum import Enum

#: The environment variable naming a registry file to use instead of the packaged one.
REGISTRY_ENV = "SSDTOOL_REGISTRY"
#: The CPU, as ``--device`` names it: OpenVINO's CPU device, onnxruntime's CPU execution provider.
CPU_DEVICE = "CPU"
#: The device an engine runs on unless told otherwise (``--device``).
DEFAULT_DEVICE = CPU_DEVICE

# Downloads (ssdtool.download.options.FetchOptions): what the command line shows as defaults, without importing it.
MIRROR_ENV = "SSDTOOL_MIRROR"
OFFLINE_ENV = "SSDTOOL_OFFLINE"
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 30.0
DEFAULT_BACKOFF = 0.5
BACKOFF_CAP = 30.0
#: A waiting process gives up only after this long without any sign of progress from the lock holder.
DEFAULT_LOCK_TIMEOUT = 600.0
DEFAULT_PROGRESS_INTERVAL = 0.25
#: How long an exporter waits for another one writing into the same repository (``export --lock-timeout``).
EXPORT_LOCK_TIMEOUT = 600.0
#: The stall rule: in every --timeout window a transfer must receive at least this much (or the rest of the file).
STALL_MIN_BYTES = 64 << 10

#: Largest image (width x height) accepted, checked from the header before any pixel is decoded. The same number as
#: Pillow's own decompression-bomb limit (about 9459 x 9459); a PNG or GIF of this size can be a few KB on disk
#: and hundreds of MB in memory.
DEFAULT_MAX_PIXELS = 89_478_485

# Evaluation (ssdtool.evaluation): what ``eval --help`` shows as defaults, without importing it.
#: Agreement AP: the reference's detections at or above this score are its ground truth (detect's default
#: threshold, and MLPerf's ONNX post-processing's cut).
DEFAULT_REFERENCE_SCORE = 0.5
#: The results file of a model run is checkpointed every this many images (``eval --checkpoint-every``).
DEFAULT_CHECKPOINT_EVERY = 64


class Choice(str, Enum):
    """A closed set of strings (``enum.StrEnum`` needs Python 3.11; this works on 3.10)."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)

    @classmethod
    def spoken(cls, last: str = "or") -> str:
        """The values for a sentence: ``FP32, FP16 or INT8``."""
        values = cls.values()
        return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} {last} {values[-1]}"

    @classmethod
    def parse(cls, value: str | Choice, what: str) -> Choice:
        """The member named by ``value`` (case-insensitive); ValueError naming ``what`` and the choices otherwise."""
        text = value.value if isinstance(value, Enum) else str(value)
        for member in cls:
            if member.value.lower() == text.lower():
                return member
        raise ValueError(f"unknown {what} {text!r}; expected one of {', '.join(cls.values())}")


class CocoScorer(Choice):
    """Which implementation of COCOeval scores ``ssdtool eval`` (docs/eval.md, *Which COCOeval*).

    ``pycocotools`` is the reference (MLCommons' accuracy-coco.py runs it); ``faster-coco-eval`` is its C++ port,
    whose twelve stats the tests prove equal to pycocotools' on ssdtool's test datasets; ``auto`` takes the port
    when it is installed and nothing needs pycocotools' per-detection matches (plots, report).
    """

    AUTO = "auto"
    PYCOCOTOOLS = "pycocotools"
    FASTER = "faster-coco-eval"


class IRPrecision(Choice):
    """The weights of an OpenVINO IR (what ``convert`` builds): a file property, fixed when the IR is written."""

    FP32 = "FP32"
    FP16 = "FP16"
    INT8 = "INT8"


class InputType(Choice):
    """The element type of an IR's input (``convert --input-type``): floats, or decoded pixels without a float copy."""

    F32 = "f32"
    U8 = "u8"


class InputLayout(Choice):
    """The layout of an image tensor: channels first (the ONNX model's) or last (``convert --input-layout``)."""

    NCHW = "NCHW"
    NHWC = "NHWC"


class ColorOrder(Choice):
    """The order of an image tensor's channels (a registry model's input, ``load_image(channel_order=...)``)."""

    RGB = "RGB"
    BGR = "BGR"


class Interpolation(Choice):
    """How an image is resized to the network's input (a registry model's ``input.interpolation``)."""

    BILINEAR = "bilinear"
    NEAREST = "nearest"
    BICUBIC = "bicubic"


class InferencePrecision(Choice):
    """The arithmetic OpenVINO runs an IR in (``INFERENCE_PRECISION_HINT``): a property of the run, not the file.

    ``auto`` is the device's own default (bf16 on CPUs with native bf16, f16 on ARM with fp16, else f32), taken
    only when this IR's accuracy at that precision was checked on this device (see :mod:`ssdtool.precision`).
    """

    AUTO = "auto"
    F32 = "f32"
    BF16 = "bf16"
    F16 = "f16"


class Int8Recipe(Choice):
    """How NNCF quantizes weights for an INT8 IR (its ``overflow_fix``), a property of the file.

    ``portable``: 7-bit weights in every layer, so CPUs without VNNI (AVX2: ``pmaddubsw`` saturates at int16)
    compute them exactly; ``vnni``: NNCF's default, 8-bit weights except the first layer, for CPUs with VNNI or
    AMX. See docs/convert.md for what each measured.
    """

    PORTABLE = "portable"
    VNNI = "vnni"


class Int8Phase(Choice):
    """The phases of an INT8 conversion its progress events name (:class:`ssdtool.quantize.QuantizeEvent`).

    ``calibrate``: statistics collection, one image at a time; ``quantize``: NNCF's work after it (bias correction,
    the quantized graph); ``guard``: the held-out comparison with FP32; ``check``: the runtime check. With an AP
    budget also ``reference`` (FP32 on the held-out images), ``validate`` (one of NNCF's validation runs) and
    ``latency`` (the short speed measurement of the layers kept in floating point).
    """

    CALIBRATE = "calibrate"
    QUANTIZE = "quantize"
    GUARD = "guard"
    CHECK = "check"
    REFERENCE = "reference"
    VALIDATE = "validate"
    LATENCY = "latency"


class Backend(Choice):
    """An inference engine."""

    OPENVINO = "openvino"
    ONNXRUNTIME = "onnxruntime"


#: What ``--backend`` accepts where ssdtool may pick: ``auto`` is OpenVINO when it imports, else onnxruntime.
BACKEND_CHOICES = ("auto", *Backend.values())


class WireProtocol(Choice):
    """How Open Inference Protocol tensors travel: JSON numbers, or raw bytes after a JSON header (the binary
    tensor extension)."""

    BINARY = "binary"
    JSON = "json"


class PerformanceHint(Choice):
    """OpenVINO's performance hint: one request at a time, or as many as keep every core busy."""

    LATENCY = "latency"
    THROUGHPUT = "throughput"


class DownloadEventKind(Choice):
    """What a :class:`ssdtool.download.DownloadEvent` reports (docs/download.md lists each kind's fields)."""

    START = "start"
    PROGRESS = "progress"
    SOURCE_FAILED = "source_failed"
    WAITING = "waiting"
    VERIFIED = "verified"
    DONE = "done"


class FailureKind(Choice):
    """Why a source did not deliver: the network (HTTP error, connection, timeout, missing file), the content
    (bytes of the wrong size or checksum), or not tried (offline mode forbids network sources)."""

    NETWORK = "network"
    CONTENT = "content"
    SKIPPED = "skipped"


class VerifyStatus(Choice):
    """The state of one cached file after ``ssdtool verify`` re-hashed it."""

    OK = "ok"
    REPAIRED = "repaired"
    MISSING = "missing"
    PARTIAL = "partial"
    BAD_SIZE = "bad-size"
    BAD_CHECKSUM = "bad-checksum"


class ModelState(Choice):
    """A model's files in the cache, as ``ssdtool models`` shows it."""

    MISSING = "missing"
    PARTIAL = "partial"
    DOWNLOADED = "downloaded"
    CONVERTED = "converted"


class ProgressMode(Choice):
    """``--progress``: auto (a bar on a terminal, JSON lines elsewhere), a bar, JSON lines, log lines, or nothing."""

    AUTO = "auto"
    BAR = "bar"
    JSON = "json"
    LOG = "log"
    NONE = "none"


class OutputFormat(Choice):
    """``detect --format``."""

    TABLE = "table"
    JSON = "json"
    JSONL = "jsonl"
    COCO = "coco"


class ExportFormat(Choice):
    """``export --format``: the model server a repository is laid out for (docs/export.md)."""

    OVMS = "ovms"
    TRITON = "triton"
    KSERVE = "kserve"


class LoadGenScenario(Choice):
    """MLPerf LoadGen's four scenarios (``ssdtool bench --scenario``; docs/bench.md)."""

    SINGLE_STREAM = "SingleStream"
    MULTI_STREAM = "MultiStream"
    SERVER = "Server"
    OFFLINE = "Offline"


class LoadGenMode(Choice):
    """What a LoadGen run measures: timing (``performance``) or every sample's detections (``accuracy``)."""

    PERFORMANCE = "performance"
    ACCURACY = "accuracy"
