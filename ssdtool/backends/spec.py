"""The engine layer's records: what an engine needs (:class:`EngineSpec`), the file it runs (:class:`ModelFile`),
what its backend decided for that file (:class:`EnginePlan`) and what ran (:class:`RunInfo`).

Light on purpose (no numpy, no engine): commands build a spec from their options without slowing ``--help``.
Detection, evaluation, bench, LoadGen, serve and export all take an :class:`EngineSpec`; the options records of
the last four take its fields as keywords too (:func:`takes_engine`), the way they were built before it existed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from ssdtool.constants import (
    BACKEND_CHOICES,
    DEFAULT_DEVICE,
    Backend,
    InferencePrecision,
    IRPrecision,
    PerformanceHint,
)
from ssdtool.errors import BackendError, UsageError
from ssdtool.precision import parse as parse_inference_precision

if TYPE_CHECKING:
    from ssdtool.backends import Engine
    from ssdtool.registry import ModelEntry
    from ssdtool.serving.protocol import ServerTarget

#: ``--backend auto``: OpenVINO when it can be imported, else onnxruntime.
AUTO_BACKEND = BACKEND_CHOICES[0]
#: The backend of a model run on a server (``--server``): chosen by the spec's ``server``, never by name.
REMOTE = "remote"


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine needs, in one record.

    ``backend``: ``openvino`` (the converted IR), ``onnxruntime`` (the source ONNX) or ``auto`` (OpenVINO when it
    can be imported, else onnxruntime, with a warning). ``device``: for OpenVINO any device the runtime accepts
    (``CPU``, ``GPU``, ``GPU.1``, ``NPU``, ``AUTO``, ``AUTO:GPU,CPU``, ``HETERO:GPU,CPU``, ``MULTI:...``); for
    onnxruntime the execution provider (``CPU``, ``CUDA``, ``CUDA:1``, ``TensorRT``, ``OpenVINO``, ``DirectML``,
    ``CoreML``, or any provider the installed onnxruntime lists). ``precision``: the IR's weights (``FP32``,
    ``FP16``, ``INT8``; None: the registry's); onnxruntime runs the source ONNX, which is FP32.
    ``inference_precision``: the arithmetic (``auto``, ``f32``, ``bf16``, ``f16``; see :mod:`ssdtool.precision`).
    ``hint``: ``latency`` or ``throughput`` (None: the caller's default: latency for one image, throughput for
    streams). ``requests``: runs in flight in throughput mode (None: the engine's optimum; onnxruntime: one per
    core). ``image_input``: the image-input IR (OpenVINO: whole images in, resized inside; docs/convert.md).
    ``server``: run the model on this Open Inference Protocol server instead; precision and device are then the
    server's.

    ``compiled_cache``: whether OpenVINO keeps compiled models in the ssdtool cache (``<model>/.ssdtool/ov-cache``,
    safe to delete). Decided once, for every engine: yes, because a warm start then loads the compiled blob instead
    of compiling (most of a warm start for the 1200 px model). ``bench`` alone turns it off by default: its load
    figure is the compile, as benchmark_app's is, and a blob left by an earlier run would change it.
    """

    backend: str = AUTO_BACKEND
    device: str = DEFAULT_DEVICE
    precision: str | None = None
    inference_precision: str = InferencePrecision.AUTO.value
    hint: str | None = None
    requests: int | None = None
    compiled_cache: bool = True
    image_input: bool = False
    server: ServerTarget | None = None

    def replace(self, **changes: Any) -> EngineSpec:
        """This spec with ``changes`` (field names), like :func:`dataclasses.replace`."""
        return dataclasses.replace(self, **changes)

    def hint_or(self, default: str) -> str:
        """The hint, or ``default`` when the spec leaves it to the caller."""
        return self.hint or default


#: The fields of :class:`EngineSpec`, the keywords :func:`engine_spec` and :func:`takes_engine` accept.
SPEC_FIELDS = tuple(f.name for f in fields(EngineSpec))


def engine_spec(engine: EngineSpec | str | None = None, **settings: Any) -> EngineSpec:
    """``engine`` (a spec; a backend name; None: the default spec) with ``settings`` changed. ``settings`` are
    :class:`EngineSpec` field names; any other name is a :class:`TypeError`, as for a function's keyword."""
    unknown = sorted(set(settings) - set(SPEC_FIELDS))
    if unknown:
        raise TypeError(f"unexpected keyword argument{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
                        f" (engine settings are {', '.join(SPEC_FIELDS)})")
    spec = engine if isinstance(engine, EngineSpec) else EngineSpec() if engine is None else EngineSpec(backend=engine)
    return spec.replace(**settings) if settings else spec


R = TypeVar("R")


def takes_engine(cls: type[R]) -> type[R]:
    """Let an options record with an ``engine`` field take :class:`EngineSpec`'s fields as keywords too
    (``BenchOptions(backend="onnxruntime", iterations=2)``), folded into ``engine`` (the record's default spec
    when none is given). The fields are declared once, in :class:`EngineSpec`."""
    names = [f.name for f in fields(cls) if f.init]  # type: ignore[arg-type]
    at = names.index("engine")
    default = cls.__dataclass_fields__["engine"].default  # type: ignore[attr-defined]
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        settings = {key: kwargs.pop(key) for key in list(kwargs) if key in SPEC_FIELDS and key not in names}
        if settings:
            if len(args) > at:  # the spec given by position
                args = (*args[:at], engine_spec(args[at], **settings), *args[at + 1:])
            else:
                kwargs["engine"] = engine_spec(kwargs.get("engine") or default, **settings)
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def check_fields(spec: EngineSpec, backends: Sequence[str] = BACKEND_CHOICES) -> EngineSpec:
    """The checks every backend shares: a backend of ``backends``, a hint, IR weights, an inference precision,
    requests. Returns the spec with names normalized (``fp16`` -> ``FP16``, ``F32`` -> ``f32``)."""
    if spec.backend not in backends:
        raise BackendError(f"unknown backend {spec.backend!r}; expected one of {', '.join(backends)}",
                           hint=f"use --backend {', '.join(backends[:-1])} or {backends[-1]}")
    if spec.hint is not None and spec.hint not in PerformanceHint.values():
        raise UsageError(f"unknown hint {spec.hint!r}; expected one of {', '.join(PerformanceHint.values())}")
    weights = spec.precision
    if weights is not None:
        try:
            weights = IRPrecision.parse(weights, "precision").value
        except ValueError:
            raise UsageError(f"precision {spec.precision!r} is not supported; expected one of "
                             f"{', '.join(IRPrecision.values())}", hint="pass --precision FP32, FP16 or INT8") from None
    arithmetic = parse_inference_precision(spec.inference_precision).value
    if spec.requests is not None and (isinstance(spec.requests, bool) or not isinstance(spec.requests, int)
                                      or spec.requests < 1):
        raise UsageError(f"requests must be at least 1, got {spec.requests}")
    if not isinstance(spec.device, str) or not spec.device.strip():
        raise BackendError(f"--device {spec.device!r} names no device", hint="pass --device CPU (the default)")
    return spec.replace(precision=weights, inference_precision=arithmetic)


@dataclass(frozen=True)
class ModelFile:
    """The file an engine runs: ``form`` "ir" (raw BGR input, normalization inside), "image" (the image-input IR:
    whole BGR images of any size, resize inside too) or "onnx" (the source model); ``precision`` the IR's weights,
    None for the source ONNX. ``server``: the model runs on an Open Inference
    Protocol server instead (``artifacts.remote_model_file``); ``path`` is then only a name."""

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
        return (self.path, self.path.with_suffix(".bin")) if self.form in ("ir", "image") else (self.path,)

    @property
    def host_decode(self) -> bool:
        """Whether an engine running this file must decode the head tensors on the host (the split form's
        source ONNX; its IR has the decode inside)."""
        return self.form == "onnx" and self.entry is not None and self.entry.outputs.form == "heads"


@dataclass(frozen=True)
class EnginePlan:
    """What a backend decided for a spec and a model file before any engine opens: the reason, for people, and its
    own settings (OpenVINO: the precision to pin per device; onnxruntime: the execution provider). A caller that
    opens several engines of one model (one per hint) plans once, so the decision and its log line happen once."""

    backend: str
    reason: str
    settings: Any = None


@dataclass(frozen=True)
class RunInfo:
    """What ran: model, engine, device, the IR's weights and the inference precision read back from the engine.

    ``precision`` is the IR's weights (FP32/FP16/INT8; None for onnxruntime, which runs the source ONNX, and for a
    server's model); ``inference_precision`` the arithmetic that ran (f32, bf16, f16; None when the engine does
    not say); ``inference_precision_requested`` what was asked (``auto`` or a precision) and
    ``inference_precision_reason`` why that became what ran.
    """

    model: str
    backend: str
    device: str
    precision: str | None
    inference_precision: str | None
    inference_precision_requested: str
    inference_precision_reason: str
    model_path: str
    performance: str
    #: The image-input IR ran (whole images in, resized inside the IR).
    image_input: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def describe(self) -> str:
        """For people: ``openvino CPU FP32 IR, bf16`` or ``onnxruntime CPU, f32``."""
        weights = f" {self.precision} {'image-input ' if self.image_input else ''}IR" if self.precision else ""
        return f"{self.backend} {self.device}{weights}, {self.inference_precision or 'unreported precision'}"

    @property
    def weights(self) -> str:
        """The weights, for reports: the IR's precision, ``FP32`` for the source ONNX, ``served`` for a server's
        model (whose weights the server knows)."""
        return self.precision or ("served" if self.backend == REMOTE else IRPrecision.FP32.value)


class OpenedEngine(NamedTuple):
    """An engine and what it runs (from :func:`ssdtool.backends.open_engine`)."""

    engine: Engine
    info: RunInfo


def run_info(model: ModelFile, engine: Engine, spec: EngineSpec, reason: str, *, backend: str | None = None,
             model_path: str | None = None) -> RunInfo:
    """The :class:`RunInfo` of ``engine`` running ``model`` for ``spec``: the common case of every backend."""
    return RunInfo(model=model.model, backend=backend or str(model.backend), device=engine.device,
                   precision=model.precision, inference_precision=engine.inference_precision,
                   inference_precision_requested=parse_inference_precision(spec.inference_precision).value,
                   inference_precision_reason=reason, model_path=model_path or str(model.path),
                   performance=spec.hint_or(PerformanceHint.LATENCY.value), image_input=model.form == "image")
