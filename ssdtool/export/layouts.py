"""One small class per model server: which configuration files an export writes beside the version folders.

* :class:`OvmsLayout`: ``ROOT/config.json`` with ``model_config_list`` (OVMS's multi-model configuration; a
  relative ``base_path`` is resolved against the file's folder), device pinned and ``plugin_config`` carrying
  ``PERFORMANCE_HINT`` and ``INFERENCE_PRECISION_HINT`` (OpenVINO property names, as OVMS passes them on).
* :class:`TritonLayout`: ``ROOT/<model>/config.pbtxt`` for Triton's OpenVINO backend: ``backend: "openvino"``,
  ``max_batch_size: 0`` (the IR has a fixed batch of 1 in its shape), inputs and outputs with the IR's own names,
  types and dims, ``instance_group`` on the CPU, and the backend's parameters ``TARGET_DEVICE`` and
  ``PERFORMANCE_HINT``. Its only precision parameter is ``HINT_BF16``; see :meth:`TritonLayout.precision`.
* :class:`KServeLayout`: the OVMS repository plus ``ROOT/inferenceservice.yaml``, an InferenceService on the
  ``kserve-openvino`` runtime (OVMS in single-model mode on ``/mnt/models``, with the device and plugin config
  passed as its arguments) reading the model folder from ``--storage-uri``.

Picked from :data:`LAYOUTS` by :class:`~ssdtool.constants.ExportFormat`.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from ssdtool import checked
from ssdtool.constants import ExportFormat, InferencePrecision
from ssdtool.errors import UsageError
from ssdtool.export.options import ServingSettings
from ssdtool.export.repository import Repository
from ssdtool.export.signature import Signature, TensorSpec

OVMS_CONFIG = "config.json"
TRITON_CONFIG = "config.pbtxt"
KSERVE_MANIFEST = "inferenceservice.yaml"
KSERVE_RUNTIME = "kserve-openvino"
KSERVE_MODEL_FORMAT = "openvino"
#: The file names every layout gives the IR in a version folder (Triton's OpenVINO backend looks for these).
IR_FILES = ("model.xml", "model.bin")


class Layout:
    """A server's configuration beside the version folders. ``precision`` says what the layout can pin."""

    format: ClassVar[ExportFormat]

    def precision(self, settings: ServingSettings) -> tuple[str | None, str]:
        """The inference precision this layout writes (None: not pinned) and why."""
        return settings.inference_precision, settings.reason

    def files(self, name: str) -> tuple[str, ...]:
        """The configuration files :meth:`render` makes, relative to the repository."""
        raise NotImplementedError

    def check(self, repository: Repository, name: str) -> None:
        """Refuse, before anything is written, a repository this layout cannot add ``name`` to."""

    def render(self, repository: Repository, name: str, signature: Signature, settings: ServingSettings,
               storage_uri: str | None) -> dict[str, str]:
        """The text of each configuration file (relative path -> text), made before the version is installed so
        that whatever can fail here fails before anything is written."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------------- OVMS
def plugin_config(settings: ServingSettings, precision: str | None) -> dict[str, str]:
    config = {"PERFORMANCE_HINT": settings.hint}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    return config


def _entry_name(entry: Any) -> Any:
    config = entry.get("config") if isinstance(entry, dict) else None
    return config.get("name") if isinstance(config, dict) else None


class OvmsLayout(Layout):
    format = ExportFormat.OVMS

    def model_entry(self, name: str, settings: ServingSettings) -> dict[str, Any]:
        precision, _reason = self.precision(settings)
        return {"config": {"name": name, "base_path": name, "target_device": settings.device,
                           "plugin_config": plugin_config(settings, precision)}}

    def files(self, name: str) -> tuple[str, ...]:
        return (OVMS_CONFIG,)

    def read_config(self, repository: Repository) -> dict[str, Any]:
        """``config.json`` as it is ({} when missing); :class:`UsageError` when it is not strict JSON (finite
        numbers, bounded nesting: :func:`ssdtool.checked.loads`) or not an OVMS configuration."""
        text = repository.read_text(OVMS_CONFIG)
        path = repository.root / OVMS_CONFIG
        if text is None:
            return {}
        try:
            config = checked.loads(text)
        except checked.JsonValueError as exc:
            raise UsageError(f"{path} is not valid JSON ({exc}); it cannot be updated",
                             hint=f"fix or remove {path}, or pass another --output-dir") from None
        if not isinstance(config, dict) or not isinstance(config.get("model_config_list", []), list):
            raise UsageError(f"{path} is not an OVMS configuration (expected an object with a model_config_list "
                             "array)", hint=f"fix or remove {path}, or pass another --output-dir")
        return config

    def check(self, repository: Repository, name: str) -> None:
        self.read_config(repository)

    def render(self, repository: Repository, name: str, signature: Signature, settings: ServingSettings,
               storage_uri: str | None) -> dict[str, str]:
        """``config.json`` with ``name``'s entry added or replaced; other models and keys stay as they were."""
        config = self.read_config(repository)
        entries = [e for e in config.get("model_config_list", []) if _entry_name(e) != name]
        config["model_config_list"] = [*entries, self.model_entry(name, settings)]
        return {OVMS_CONFIG: json.dumps(config, indent=2) + "\n"}


# ------------------------------------------------------------------------------------------------------- Triton
def pbtxt_string(value: str) -> str:
    """``value`` as a protobuf text-format string literal: quotes and backslashes escaped, anything outside
    printable ASCII as octal escapes of its UTF-8 bytes."""
    out = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _tensor_block(tensor: TensorSpec) -> str:
    dims = ", ".join(str(d) for d in tensor.shape)
    return (f"  {{\n    name: {pbtxt_string(tensor.name)}\n    data_type: {tensor.triton_type}\n"
            f"    dims: [ {dims} ]\n  }}")


def _parameter(key: str, value: str) -> str:
    return f"  {{\n    key: {pbtxt_string(key)}\n    value: {{ string_value: {pbtxt_string(value)} }}\n  }}"


class TritonLayout(Layout):
    format = ExportFormat.TRITON

    def precision(self, settings: ServingSettings) -> tuple[str | None, str]:
        """Triton's OpenVINO backend pins bf16 (``HINT_BF16: YES``) and nothing else: an explicit f32 or f16 is
        refused; ``auto`` leaves the server's device default (bf16 on CPUs with native bf16, else f32)."""
        requested = settings.requested_precision
        if requested == InferencePrecision.BF16.value:
            return requested, "bf16 as requested (the backend's HINT_BF16)"
        if requested == InferencePrecision.AUTO.value:
            return None, ("Triton's OpenVINO backend can pin only bf16 (HINT_BF16), so the server runs "
                          "its device's default, bf16 on CPUs with native bf16 and f32 elsewhere; export --format "
                          "ovms or kserve to pin f32")
        raise UsageError(f"Triton's OpenVINO backend cannot pin inference precision {requested}: its only precision "
                         "parameter is HINT_BF16",
                         hint="pass --inference-precision bf16 or auto (the server's default), or export --format ovms "
                              "or kserve, which pin any precision")

    def config_text(self, name: str, signature: Signature, settings: ServingSettings) -> str:
        precision, _reason = self.precision(settings)
        parameters = [_parameter("TARGET_DEVICE", settings.device), _parameter("PERFORMANCE_HINT", settings.hint)]
        if precision == InferencePrecision.BF16.value:
            parameters.append(_parameter("HINT_BF16", "YES"))
        lines = [
            "# Written by ssdtool export: Triton's OpenVINO backend, one request at a time per instance.",
            f"name: {pbtxt_string(name)}",
            'backend: "openvino"',
            "max_batch_size: 0",
            "input [\n" + ",\n".join(_tensor_block(t) for t in signature.inputs) + "\n]",
            "output [\n" + ",\n".join(_tensor_block(t) for t in signature.outputs) + "\n]",
            "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]",
            "parameters [\n" + ",\n".join(parameters) + "\n]",
        ]
        return "\n".join(lines) + "\n"

    def files(self, name: str) -> tuple[str, ...]:
        return (f"{name}/{TRITON_CONFIG}",)

    def render(self, repository: Repository, name: str, signature: Signature, settings: ServingSettings,
               storage_uri: str | None) -> dict[str, str]:
        return {f"{name}/{TRITON_CONFIG}": self.config_text(name, signature, settings)}


# ------------------------------------------------------------------------------------------------------- KServe
class KServeLayout(OvmsLayout):
    format = ExportFormat.KSERVE  # type: ignore[assignment]

    def manifest(self, name: str, settings: ServingSettings, storage_uri: str) -> dict[str, Any]:
        precision, _reason = self.precision(settings)
        return {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "ssdtool"}},
            "spec": {"predictor": {"model": {
                "modelFormat": {"name": KSERVE_MODEL_FORMAT},
                "runtime": KSERVE_RUNTIME,
                "storageUri": storage_uri,
                # Appended to the runtime's own arguments (--model_name, --model_path=/mnt/models, ports).
                "args": [f"--target_device={settings.device}",
                         "--plugin_config=" + json.dumps(plugin_config(settings, precision), separators=(",", ":"))],
            }}},
        }

    def files(self, name: str) -> tuple[str, ...]:
        return (*super().files(name), KSERVE_MANIFEST)

    def check(self, repository: Repository, name: str) -> None:
        """The OVMS checks, and a manifest already in the folder must be one for ``name`` (or empty): read with
        the one YAML loader (:mod:`ssdtool.safe_yaml`), so an alias bomb is refused, not expanded."""
        from ssdtool import safe_yaml

        super().check(repository, name)
        existing = repository.read_text(KSERVE_MANIFEST)
        if existing is None:
            return
        path = repository.root / KSERVE_MANIFEST
        fix = f"fix or remove {path}, or pass another --output-dir for this model"
        try:
            manifest = safe_yaml.load(existing).data
        except safe_yaml.YamlValueError as exc:
            raise UsageError(f"{path} cannot be read ({exc.reason}); it cannot be updated", hint=fix) from None
        if manifest is None:
            return
        metadata = manifest.get("metadata") if isinstance(manifest, dict) else None
        other = metadata.get("name") if isinstance(metadata, dict) else None
        if not isinstance(other, str):
            raise UsageError(f"{path} is not an InferenceService manifest (expected a mapping with metadata.name)",
                             hint=fix)
        if other != name:
            raise UsageError(f"{path} describes another model ({other[:80]!r}); one KServe export folder holds one "
                             "InferenceService", hint="pass another --output-dir for this model")

    def render(self, repository: Repository, name: str, signature: Signature, settings: ServingSettings,
               storage_uri: str | None) -> dict[str, str]:
        import yaml

        if storage_uri is None:  # checked with the options; kept for Python callers of the layout
            raise UsageError("--format kserve needs --storage-uri", hint="pass --storage-uri s3://BUCKET/PATH")
        documents = super().render(repository, name, signature, settings, storage_uri)
        header = (f"# Written by ssdtool export. Upload the folder {name}/ beside this file to {storage_uri}\n"
                  f"# (its version folders at the top: {storage_uri.rstrip('/')}/1/model.xml), then: "
                  f"kubectl apply -f {KSERVE_MANIFEST}\n")
        text = header + yaml.safe_dump(self.manifest(name, settings, storage_uri), sort_keys=False)
        return {**documents, KSERVE_MANIFEST: text}


LAYOUTS: dict[ExportFormat, Layout] = {layout.format: layout for layout in (OvmsLayout(), TritonLayout(),
                                                                             KServeLayout())}
