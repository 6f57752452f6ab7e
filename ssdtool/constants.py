"""Closed sets shared by the library and the command line.

numpy- and engine-free, so the CLI can build its choices from them and ``ssdtool --help`` stays fast. Every
member is a ``str`` too: it compares equal to its value, formats as its value and goes into JSON as is.
"""

from __future__ import annotations

from enum import Enum

#: The environment variable naming a registry file to use instead of the packaged one.
REGISTRY_ENV = "SSDTOOL_REGISTRY"


class Choice(str, Enum):
    """A closed set of strings (``enum.StrEnum`` needs Python 3.11; this works on 3.10)."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)

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
    """``--progress``: a bar on a terminal, log lines elsewhere (auto), JSON lines, or nothing."""

    AUTO = "auto"
    BAR = "bar"
    JSON = "json"
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
