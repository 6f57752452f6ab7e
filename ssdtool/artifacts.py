"""Which model file runs for an engine spec, and making it ready: the one answer detect, bench, eval, LoadGen,
serve and export ask for. The backend says which form it runs (``BackendRules.model_form``):

* ``onnx`` (onnxruntime): the registry's source ONNX, downloaded (and verified) on first use;
* ``ir`` (OpenVINO): an IR of the requested weights (FP32, FP16, INT8): the installed one when it is current (same
  source checksum and conversion parameters, weights of the recorded size - one small XML read, no lock, so a
  warm start is cheap and a read-only cache works), else converted on first use, with its runtime check measured
  on the spec's device; ``image_input`` picks the image-input IR instead (whole images in, resized inside; form
  ``"image"``);
* ``served`` (a ``--server``): the IR as the server runs it; nothing is fetched.

With ``offline`` nothing is downloaded; a missing file is an :class:`OfflineError` naming the command to run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssdtool.backends.spec import EngineSpec, ModelFile
from ssdtool.cache import Cache
from ssdtool.constants import Backend, IRPrecision
from ssdtool.errors import UsageError
from ssdtool.fsutil import InputPath
from ssdtool.registry import ModelEntry

if TYPE_CHECKING:
    from ssdtool.convert import ConvertOptions
    from ssdtool.serving.protocol import ServerTarget

log = logging.getLogger("ssdtool.artifacts")

__all__ = ["ModelFile", "installed_ir", "ir_precision", "model_file", "model_inputs", "registry_inputs",
           "remote_model_file"]


def model_inputs(model_files: Iterable[ModelFile]) -> list[InputPath]:
    """The files engines read, named for the output-path guard (:func:`ssdtool.fsutil.check_outputs`)."""
    return [InputPath(path, f"a model file of {model_file.model}") for model_file in model_files
            for path in model_file.files]


def registry_inputs(source: str) -> list[InputPath]:
    """The registry file a run read (when it is a file), named for the output-path guard."""
    return [InputPath(Path(source), "the registry file")] if os.path.isfile(source) else []


def remote_model_file(entry: ModelEntry, server: ServerTarget) -> ModelFile:
    """``entry``'s IR as served at ``server``: nothing is downloaded or converted here; the engine takes the IR's
    input (raw BGR pixels) from the server (the server's metadata says its shape and type)."""
    return ModelFile(entry.name, Backend.OPENVINO, Path(server.model or entry.name), "ir", None, server=server,
                     entry=entry)


def ir_precision(value: str) -> str:
    """``FP32``, ``FP16`` or ``INT8`` (any case); :class:`UsageError` otherwise."""
    try:
        return IRPrecision.parse(value, "precision").value
    except ValueError as exc:
        raise UsageError(str(exc), hint=f"pass --precision {IRPrecision.spoken()}") from None


def installed_ir(entry: ModelEntry, cache: Cache, options: ConvertOptions) -> Path | None:
    """The IR for ``options`` when it is installed and current (same source checksum and conversion parameters,
    weights of the recorded size), else None.

    The test ``convert`` makes, without its lock, download check or log line, so a warm start costs one small XML
    read, and an installed IR works even when the source ONNX was removed from the cache.
    """
    from ssdtool.convert.options import conversion_parameters, ir_path, model_info_intact, same_parameters
    from ssdtool.provenance import ir_problem, read_provenance

    xml = ir_path(entry, cache, options)
    if not (entry.primary_file.sha256 and xml.is_file() and xml.with_suffix(".bin").is_file()):
        return None
    record = read_provenance(xml) or {}
    wanted = conversion_parameters(entry, options)
    if (record.get("source_sha256") == entry.primary_file.sha256
            and same_parameters(record.get("parameters"), wanted)
            and ir_problem(xml, record) is None  # weights of the recorded size: a truncated .bin is rebuilt
            and model_info_intact(xml, wanted)):  # Model API's metadata as recorded, else convert amends it
        return xml
    return None


def model_file(entry: ModelEntry, cache: Cache, engine: EngineSpec | Backend | str, precision: str | None = None, *,
               offline: bool | None = None, progress: Callable[[Any], None] | None = None,
               image_input: bool = False) -> ModelFile:
    """The file ``engine`` runs for ``entry`` (a spec from :func:`ssdtool.backends.prepare`, or a backend name with
    ``precision``, the IR's weights, default the registry's, and ``image_input``, the image-input IR), made ready:
    downloaded or converted when missing (``offline``: never download; None reads ``$SSDTOOL_OFFLINE``).
    ``progress`` receives download events."""
    from ssdtool.backends import backend_rules

    spec = engine
    if not isinstance(spec, EngineSpec):  # a backend named: its rules check the rest (as prepare does for a spec)
        named = EngineSpec(backend=Backend.parse(spec, "backend").value, precision=precision, image_input=image_input)
        spec = backend_rules(named).check(named)
    form = backend_rules(spec).model_form
    if form == "served":
        return remote_model_file(entry, spec.server)  # type: ignore[arg-type]  # a served form has one
    if offline is None:
        from ssdtool.download.options import offline_from_env

        offline = offline_from_env()
    if form == "onnx":
        from ssdtool.download.api import source_model

        return ModelFile(entry.name, Backend(spec.backend), source_model(entry, cache, offline=offline,
                                                                         progress=progress), "onnx", None, entry=entry)
    return _ir_file(entry, cache, spec, offline, progress)


def _ir_file(entry: ModelEntry, cache: Cache, spec: EngineSpec, offline: bool,
             progress: Callable[[Any], None] | None) -> ModelFile:
    """The installed IR when current, else converted now (its runtime check measured on the spec's device, so
    ``auto`` can use that device's default from the first run)."""
    from ssdtool.convert.options import ConvertOptions

    weights = ir_precision(spec.precision or entry.convert.precision)
    options = ConvertOptions(precision=weights, image_input=spec.image_input)
    path = installed_ir(entry, cache, options)
    if path is None:  # the converter (and onnx, NNCF glue) only when there is something to convert
        from ssdtool.convert.flow import convert

        options = replace(options, check_devices=(spec.device,))
        path = convert(entry, cache, options, offline=offline, progress=progress).xml
    if weights == IRPrecision.INT8:
        _warn_about_recipe(entry, path)
    return ModelFile(entry.name, Backend(spec.backend), path, "image" if spec.image_input else "ir", weights)


def _warn_about_recipe(entry: ModelEntry, xml: Path) -> None:
    """An INT8 IR quantized for CPUs with VNNI, handed to a run on a CPU without it: say so."""
    from ssdtool.int8_recipes import recipe_warning
    from ssdtool.provenance import read_provenance

    if warning := recipe_warning(read_provenance(xml), entry.name):
        log.warning("%s", warning)
