"""What an export is asked for (:class:`ExportOptions`) and what the server will be told (:class:`ServingSettings`).

The settings are decided here, once, for every layout: the device is pinned (current OVMS picks a GPU first when
none is named), the performance hint is written out, and the inference precision is a pinned value or nothing:

* ``f32``, ``bf16``, ``f16``: written as asked.
* ``auto`` is written as **f32**. In ssdtool ``auto`` means "the device's default where this IR was checked at it
  on this device, else f32" (:mod:`ssdtool.precision`); an export runs on a machine that is not the server, so
  the server's CPU, and whether the IR was checked on it, are unknown. f32 is what the IR was proven at (the
  parity gate), so the served model never answers worse than ``ssdtool check`` proved. Pass ``bf16`` when the
  server's CPU runs it well (``ssdtool check --inference-precision auto`` on that machine says).

A layout that cannot express a precision says so (:meth:`ssdtool.export.layouts.Layout.precision_parameter`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ssdtool.constants import ExportFormat, InferencePrecision, PerformanceHint
from ssdtool.errors import UsageError
from ssdtool.redact import redact_url

#: How long an exporter waits for another one writing into the same repository.
DEFAULT_LOCK_TIMEOUT = 600.0
#: Schemes KServe's storage initializer downloads from (``pvc://`` mounts a volume claim instead).
STORAGE_SCHEMES = ("s3", "gs", "pvc", "https", "http", "hdfs", "webhdfs", "oci")
#: A served model name: a DNS-1035 label, which KServe needs for the InferenceService and which is a safe folder
#: name for every server.
SERVED_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
#: The first version of a model in a repository; OVMS and Triton serve the highest by default.
FIRST_VERSION = 1


@dataclass(frozen=True)
class ExportOptions:
    """One export: ``format`` into the repository ``output_dir``.

    ``version``: the version folder to write (None: the next one; with ``force`` and no version, the latest is
    replaced). ``served_name``: the model's name on the server (None: the registry name). ``storage_uri``: where a
    KServe user uploads the model folder (required for kserve, refused for the others). ``image_input``: export
    the image-input IR (u8 ``[1, ?, ?, 3]`` NHWC images of any size, resized inside; docs/convert.md).
    """

    format: ExportFormat | str
    output_dir: Path
    precision: str | None = None
    inference_precision: InferencePrecision | str = InferencePrecision.AUTO
    device: str = "CPU"
    hint: PerformanceHint | str = PerformanceHint.LATENCY
    version: int | None = None
    force: bool = False
    storage_uri: str | None = None
    served_name: str | None = None
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    image_input: bool = False


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

    device = options.device.strip()
    if not device or not re.fullmatch(r"[A-Za-z0-9_.:,()-]+", device):
        raise UsageError(f"--device {options.device!r} is not an OpenVINO device name",
                         hint="pass --device CPU, GPU, GPU.1, AUTO:GPU,CPU, ...")
    try:
        hint = PerformanceHint.parse(options.hint, "performance hint")
    except ValueError as exc:
        raise UsageError(str(exc), hint="pass --hint latency or throughput") from None
    requested = inference_precisions.parse(options.inference_precision)
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
    """The name the server gives the model: ``served_name`` or the registry name, a DNS-1035 label."""
    name = options.served_name or model
    if not SERVED_NAME.fullmatch(name):
        raise UsageError(f"served model name {name!r} is not a DNS-1035 label (lower-case letters, digits and '-', "
                         "starting with a letter, at most 63 characters); KServe needs one, and it names a folder",
                         hint="pass --served-name NAME")
    return name


def check_storage_uri(uri: str | None, export_format: ExportFormat) -> str | None:
    """``--storage-uri``: required for kserve (an s3://, gs://, pvc://, https://, ... URI without credentials),
    refused for the other formats."""
    if export_format is not ExportFormat.KSERVE:
        if uri is not None:
            raise UsageError(f"--storage-uri applies to --format kserve only, got --format {export_format.value}",
                             hint="drop --storage-uri or pass --format kserve")
        return None
    if not uri:
        raise UsageError("--format kserve needs --storage-uri: where you will upload the model folder for KServe",
                         hint="pass --storage-uri s3://BUCKET/PATH (or gs://, pvc://NAME/PATH, https://...)")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise UsageError(f"--storage-uri {redact_url(uri)!r} is not a URI: {exc}",
                         hint="pass --storage-uri s3://BUCKET/PATH") from None
    if parts.scheme.lower() not in STORAGE_SCHEMES or not parts.netloc:
        found = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise UsageError(f"--storage-uri {redact_url(uri)!r} is not a storage URI KServe downloads from ({found}); "
                         f"expected one of {', '.join(s + '://' for s in STORAGE_SCHEMES)} with a bucket, claim or "
                         "host", hint="pass --storage-uri s3://BUCKET/PATH (or gs://, pvc://NAME/PATH, https://...)")
    if redact_url(uri) != uri:
        raise UsageError(f"--storage-uri {redact_url(uri)!r} carries credentials, which would be stored in the "
                         "InferenceService manifest", hint="give KServe its credentials through a storage secret on "
                         "the service account, and pass the URI without them")
    if any(ord(c) < 0x21 or c in "\"'\\" for c in uri):
        raise UsageError(f"--storage-uri {uri!r} contains spaces, quotes or control characters",
                         hint="pass a plain URI")
    return uri
