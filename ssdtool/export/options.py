"""What an export is asked for (:class:`ExportOptions`) and what the server will be told (:class:`ServingSettings`).

The settings are decided here, once, for every layout: the device is pinned (current OVMS picks a GPU first when
none is named), the performance hint is written out, and the inference precision is a pinned value or nothing:

* ``f32``, ``bf16``, ``f16``: written as asked.
* ``auto`` is written as **f32**. In ssdtool ``auto`` means "the device's default where this IR was checked at it
  on this device, else f32" (:mod:`ssdtool.precision`); an export runs on a machine that is not the server, so
  the server's CPU, and whether the IR was checked on it, are unknown. f32 is what the IR was proven at (the
  parity gate), so the served model never answers worse than ``ssdtool check`` proved. Pass ``bf16`` when the
  server's CPU runs it well (``ssdtool check --inference-precision auto`` on that machine says).

A layout that cannot express a precision says so (:meth:`ssdtool.export.layouts.Layout.precision`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ssdtool.backends.spec import EngineSpec, takes_engine
from ssdtool.constants import EXPORT_LOCK_TIMEOUT, Backend, ExportFormat, InferencePrecision, PerformanceHint
from ssdtool.errors import UsageError
from ssdtool.redact import redact_url

#: How long an exporter waits for another one writing into the same repository (its value is in constants.py, which
#: the command line reads without importing this module's engine records).
DEFAULT_LOCK_TIMEOUT = EXPORT_LOCK_TIMEOUT
#: Schemes KServe's storage initializer downloads from (``pvc://`` mounts a volume claim instead).
STORAGE_SCHEMES = ("s3", "gs", "pvc", "https", "http", "hdfs", "webhdfs", "oci")
#: A served model name: a DNS-1035 label, which KServe needs for the InferenceService and which is a safe folder
#: name for every server.
SERVED_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
#: The first version of a model in a repository; OVMS and Triton serve the highest by default.
FIRST_VERSION = 1
#: The largest version a server reads: OVMS and Triton keep model versions as signed 64-bit integers.
MAX_VERSION = 2**63 - 1


#: What an export writes unless told otherwise: the registry's IR, for OpenVINO on the CPU, latency hint.
EXPORT_ENGINE = EngineSpec(backend=Backend.OPENVINO.value)


@takes_engine
@dataclass(frozen=True)
class ExportOptions:
    """One export: ``format`` into the repository ``output_dir``.

    ``engine``: what the server is told to run: the IR's ``precision`` (None: the registry's), ``image_input``
    (the image-input IR: u8 ``[1, ?, ?, 3]`` NHWC images of any size, resized inside; docs/convert.md), the
    ``device`` (any OpenVINO device name; checked for its form only, the server's devices are not known here), the
    ``hint`` (default latency) and the ``inference_precision`` (see the module docstring for ``auto``); its fields
    may be given as keywords. ``version``: the version folder to write (None: the next one; with ``force`` and no
    version, the latest is replaced; from 1 to :data:`MAX_VERSION`). ``served_name``: the model's name on the
    server (None: the registry name; an empty name is refused). ``storage_uri``: where a KServe user uploads the
    model folder (required for kserve, refused for the others; see :func:`check_storage_uri`).
    """

    format: ExportFormat | str
    output_dir: Path
    engine: EngineSpec = EXPORT_ENGINE
    version: int | None = None
    force: bool = False
    storage_uri: str | None = None
    served_name: str | None = None
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT


@dataclass(frozen=True)
class ServingSettings:
    """What the server is told: device, performance hint (OpenVINO's spelling, ``LATENCY``/``THROUGHPUT``) and the
    inference precision to pin (None: not pinned), with the reason for people."""

    device: str
    hint: str
    inference_precision: str | None
    requested_precision: str
    reason: str


def parse_format(value: ExportFormat | str) -> ExportFormat:
    try:
        return ExportFormat.parse(value, "export format")  # type: ignore[return-value]
    except ValueError as exc:
        raise UsageError(str(exc), hint="pass --format ovms, triton or kserve") from None


def serving_settings(options: ExportOptions) -> ServingSettings:
    """The device, hint and precision every layout writes (see the module docstring for ``auto``)."""
    from ssdtool import precision as inference_precisions
    from ssdtool.backends.openvino_rules import check_device_name

    engine = options.engine
    device = check_device_name(engine.device)
    try:
        hint = PerformanceHint.parse(engine.hint_or(PerformanceHint.LATENCY.value), "performance hint")
    except ValueError as exc:
        raise UsageError(str(exc), hint="pass --hint latency or throughput") from None
    requested = inference_precisions.parse(engine.inference_precision)
    if requested is InferencePrecision.AUTO:
        pin = InferencePrecision.F32.value
        reason = ("auto written as f32: the server's device is not known at export time, and f32 is what the IR was "
                  "proven at; pass --inference-precision bf16 for a server whose CPU runs it well")
    else:
        pin = requested.value
        reason = f"{pin} as requested"
    return ServingSettings(device=device, hint=hint.value.upper(), inference_precision=pin,
                           requested_precision=requested.value, reason=reason)


def served_name(options: ExportOptions, model: str) -> str:
    """The name the server gives the model: ``served_name`` (when given, even empty) or the registry name; a
    DNS-1035 label either way."""
    given = options.served_name is not None
    name = options.served_name if given else model
    if not name:
        raise UsageError("--served-name is empty; the server needs a name for the model (it also names its folder)",
                         hint=f"pass --served-name NAME (a DNS-1035 label), or leave it out to use {model!r}")
    if not SERVED_NAME.fullmatch(name):
        what = f"--served-name {name[:80]!r}" if given else f"the registry name {name[:80]!r}"
        raise UsageError(f"{what} is not a DNS-1035 label (lower-case letters, digits and '-', starting with a "
                         "letter, at most 63 characters); KServe needs one, and it names a folder",
                         hint="pass --served-name NAME")
    return name


def check_version(version: int | None) -> None:
    """``--version``: None (the next one) or an integer from 1 to :data:`MAX_VERSION`."""
    if version is None:
        return
    if isinstance(version, bool) or not isinstance(version, int):
        raise UsageError(f"--version must be an integer, got {type(version).__name__} {version!r:.40}",
                         hint="pass --version N with N >= 1")
    if not FIRST_VERSION <= version <= MAX_VERSION:
        # str() of an int of more than 4,300 digits raises; such a number is described by its size
        shown = str(version) if version.bit_length() <= 256 else f"a number of {version.bit_length()} bits"
        raise UsageError(f"--version must be from {FIRST_VERSION} to {MAX_VERSION} (OVMS and Triton read versions "
                         f"as signed 64-bit integers), got {shown}",
                         hint="pass a smaller --version N, or leave it out to add the next version")


def shown_uri(uri: str) -> str:
    """``uri`` as a message may quote it: user info masked, query and fragment left out (``?X-Amz-Signature=...``,
    ``#access_token=...``, ``?pass=...``: either may be a secret, whatever its name)."""
    head, cut, _rest = re.split(r"([?#])", uri, maxsplit=1) if re.search(r"[?#]", uri) else (uri, "", "")
    return redact_url(head) + (f"{cut}..." if cut else "")


def check_storage_uri(uri: str | None, export_format: ExportFormat) -> str | None:
    """``--storage-uri``: required for kserve, refused for the other formats.

    Accepted: a lower-case scheme KServe's storage initializer downloads from (:data:`STORAGE_SCHEMES`; its scheme
    check is case-sensitive), a bucket, claim or host, a port from 1 to 65535 when there is one, and no user info,
    query or fragment (the manifest would store them, and they are where credentials hide). Messages never quote
    the user info, query or fragment (:func:`shown_uri`).
    """
    if export_format is not ExportFormat.KSERVE:
        if uri is not None:
            raise UsageError(f"--storage-uri applies to --format kserve only, got --format {export_format.value}",
                             hint="drop --storage-uri or pass --format kserve")
        return None
    example = "pass --storage-uri s3://BUCKET/PATH (or gs://, pvc://NAME/PATH, https://...)"
    if not uri:
        raise UsageError("--format kserve needs --storage-uri: where you will upload the model folder for KServe",
                         hint=example)
    shown = shown_uri(uri)
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise UsageError(f"--storage-uri {shown!r} is not a URI: {exc}", hint=example) from None
    secret_hint = ("give KServe its credentials through a storage secret on the service account, and pass the URI "
                   "without them")
    if "@" in parts.netloc:
        raise UsageError(f"--storage-uri {shown!r} carries credentials (user info before '@'), which would be "
                         "stored in the InferenceService manifest", hint=secret_hint)
    if "?" in uri or "#" in uri:
        raise UsageError(f"--storage-uri {shown!r} carries a query or fragment (not shown), which would be stored in "
                         "the InferenceService manifest; it often holds credentials (a signature or token), and a "
                         "storage URI needs none", hint=secret_hint)
    written_scheme = uri.partition(":")[0]
    if written_scheme.lower() in STORAGE_SCHEMES and written_scheme != written_scheme.lower():
        lower = written_scheme.lower() + uri[len(written_scheme):]
        raise UsageError(f"--storage-uri {shown!r} has the scheme {written_scheme!r}: KServe's storage initializer "
                         f"matches schemes case-sensitively and knows only {written_scheme.lower()!r}",
                         hint=f"pass --storage-uri {lower!r}")
    if parts.scheme not in STORAGE_SCHEMES or not parts.hostname:
        found = ("no bucket, claim or host" if parts.scheme in STORAGE_SCHEMES
                 else f"scheme {parts.scheme!r}" if parts.scheme else "no scheme")
        raise UsageError(f"--storage-uri {shown!r} is not a storage URI KServe downloads from ({found}); "
                         f"expected one of {', '.join(s + '://' for s in STORAGE_SCHEMES)} with a bucket, claim or "
                         "host", hint=example)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:  # None: no port, which is fine
        raise UsageError(f"--storage-uri {shown!r} has an invalid port; expected a number from 1 to 65535",
                         hint="pass the URI with a valid port, or without one")
    if any(ord(c) < 0x21 or 0x7F <= ord(c) < 0xA0 or c in "\"'\\" for c in uri):
        raise UsageError(f"--storage-uri {shown!r} contains spaces, quotes or control characters",
                         hint="pass a plain URI")
    return uri
