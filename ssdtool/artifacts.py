"""Which model file runs for a backend and precision, and making it ready: the one answer detect, bench, eval and
anything later ask for.

* onnxruntime runs the registry's source ONNX: downloaded (and verified) on first use;
* OpenVINO runs an IR of the requested weights (FP32, FP16, INT8): the installed one when it is current (same
  source checksum and conversion parameters, weights of the recorded size - one small XML read, no lock, so a
  warm start is cheap and a read-only cache works), else converted on first use. ``image_input`` picks the
  image-input IR instead (whole images in, resized inside; form ``"image"``).

With ``offline`` nothing is downloaded; a missing file is an :class:`OfflineError` naming the command to run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssdtool import precision as inference_precisions
from ssdtool.cache import Cache
from ssdtool.constants import BACKEND_CHOICES, Backend, InferencePrecision, IRPrecision
from ssdtool.errors import BackendError, DependencyError, UsageError
from ssdtool.fsutil import InputPath
from ssdtool.registry import ModelEntry

if TYPE_CHECKING:
    from ssdtool.convert import ConvertOptions
    from ssdtool.serving.protocol import ServerTarget

log = logging.getLogger("ssdtool.artifacts")


@dataclass(frozen=True)
class ModelFile:
    """The file an engine runs: ``form`` "ir" (raw BGR input, normalization inside), "image" (the image-input IR:
    whole BGR images of any size, resize inside too) or "onnx" (the source model);
    ``precision`` the IR's weights, None for the source ONNX. ``server``: the model runs on an Open Inference
    Protocol server instead (:func:`remote_model_file`); ``path`` is then only a name."""

    model: str
    backend: Backend
    path: Path
    form: str
    precision: str | None
    server: ServerTarget | None = None
    #: The registry entry, when the file is its source model (a heads model's engine decodes by it on the host) or
    #: a served IR (the remote engine checks the server's answers against it).
    entry: ModelEntry | None = field(default=None, compare=False, repr=False)

    @property
    def files(self) -> tuple[Path, ...]:
        """The files an engine reads: an IR's ``.xml`` and ``.bin``, or the ONNX; none for a server's model."""
        if self.server is not None:
            return ()
        return (self.path, self.path.with_suffix(".bin")) if self.form == "ir" else (self.path,)

    @property
    def host_decode(self) -> bool:
        """Whether an engine running this file must decode the head tensors on the host (the split form's
        source ONNX; its IR has the decode inside)."""
        return self.form == "onnx" and self.entry is not None and self.entry.outputs.form == "heads"


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


def resolve_backend(backend: str, precision: str | None = None,
                    inference_precision: str | InferencePrecision = InferencePrecision.AUTO) -> Backend:
    """``openvino``, ``onnxruntime`` or ``auto`` (OpenVINO when it can be imported, else onnxruntime, with a
    warning) as the backend that runs; the precisions are checked against it."""
    from ssdtool.backends import import_engine

    if backend not in BACKEND_CHOICES:
        raise BackendError(f"unknown backend {backend!r}; expected one of {', '.join(BACKEND_CHOICES)}",
                           hint="use --backend openvino, onnxruntime or auto")
    if backend == Backend.ONNXRUNTIME:
        if precision is not None:
            raise UsageError("precision selects an OpenVINO IR; onnxruntime runs the source ONNX as it is",
                             hint="drop --precision or use --backend openvino")
        inference_precisions.onnxruntime_precision(inference_precision)
        return Backend.ONNXRUNTIME
    if backend == Backend.OPENVINO:
        import_engine("openvino")
        return Backend.OPENVINO
    try:
        import_engine("openvino")
    except DependencyError as exc:
        log.warning("OpenVINO is not available (%s); using onnxruntime%s", exc.message,
                    f" (precision {precision} applies to OpenVINO only)" if precision else "")
        inference_precisions.onnxruntime_precision(inference_precision)
        return Backend.ONNXRUNTIME
    return Backend.OPENVINO


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


def model_file(entry: ModelEntry, cache: Cache, backend: Backend | str, precision: str | None = None, *,
               offline: bool | None = None, progress: Callable[[Any], None] | None = None,
               image_input: bool = False) -> ModelFile:
    """The file ``backend`` runs for ``entry`` (OpenVINO: the IR of ``precision``, default the registry's; with
    ``image_input`` the image-input IR), made ready: downloaded or converted when missing (``offline``: never
    download; None reads ``$SSDTOOL_OFFLINE``). ``progress`` receives download events."""
    if offline is None:
        from ssdtool.download.options import offline_from_env

        offline = offline_from_env()
    if Backend.parse(backend, "backend") == Backend.ONNXRUNTIME:
        if image_input:
            raise UsageError("the image-input IR is an OpenVINO IR; onnxruntime runs the source ONNX, which takes "
                             "network-size tensors", hint="drop --image-input or use --backend openvino")
        from ssdtool.download.api import source_model

        return ModelFile(entry.name, Backend.ONNXRUNTIME, source_model(entry, cache, offline=offline,
                                                                       progress=progress), "onnx", None, entry=entry)
    from ssdtool.convert.options import ConvertOptions

    weights = ir_precision(precision or entry.convert.precision)
    options = ConvertOptions(precision=weights, image_input=image_input)
    path = installed_ir(entry, cache, options)
    if path is None:  # the converter (and onnx, NNCF glue) only when there is something to convert
        from ssdtool.convert.flow import convert

        path = convert(entry, cache, options, offline=offline, progress=progress).xml
    return ModelFile(entry.name, Backend.OPENVINO, path, "image" if image_input else "ir", weights)


def precision_plan(model: ModelFile, requested: str | InferencePrecision, device: str
                   ) -> inference_precisions.PrecisionPlan:
    """What to pin for OpenVINO running ``model`` on ``device``, from the IR's recorded runtime checks (see
    :func:`ssdtool.precision.plan`); logs the reason, and warns when an INT8 IR's recipe does not suit this CPU."""
    from ssdtool.backends.openvino import device_facts
    from ssdtool.provenance import read_provenance

    provenance = read_provenance(model.path)
    if model.precision == IRPrecision.INT8:
        from ssdtool.int8_recipes import recipe_warning

        if warning := recipe_warning(provenance, model.model):
            log.warning("%s", warning)
    checks, unusable = inference_precisions.read_checks(provenance)
    plan = inference_precisions.plan(requested, device_facts(device), checks, model=model.model, unusable=unusable)
    log.log(plan.level, "inference precision: %s", plan.reason)
    return plan
