"""onnxruntime: runs a source ONNX model on an execution provider. One session per engine, created once.

With one request a run uses every core (intra-op threads). With ``requests`` N > 1 the session gets cores/N
intra-op threads and :meth:`OnnxRuntimeEngine.infer_stream` keeps N runs going from N threads (a session may be run
from several threads, and ``run`` releases the GIL): the throughput configuration of ``ssdtool bench``.

``--device`` picks the execution provider (:data:`PROVIDERS`; docs/detect.md, "Devices"): ``CPU``; ``CUDA`` and
``TensorRT`` (``CUDA:1``: the second GPU; from onnxruntime-gpu), ``OpenVINO`` (``OpenVINO:GPU``: its device; from
onnxruntime-openvino), ``DirectML``, ``CoreML``, or any other provider the installed onnxruntime lists, by its name
with or without ``ExecutionProvider``. A provider this onnxruntime lacks is :class:`BackendError` (31) naming the
package that brings it. What each computes in is set explicitly where onnxruntime lets ssdtool choose: CUDA with
TF32 off (``use_tf32=0``: f32 convolutions and matrix products stay f32 on Ampere and later), TensorRT with FP16
and INT8 off, OpenVINO at FP32. The CUDA, TensorRT, OpenVINO and DirectML paths have not yet run on ssdtool's own
machines (which have no such device); the provider options follow onnxruntime's documentation.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ssdtool.backends import import_engine
from ssdtool.backends.spec import EnginePlan, EngineSpec, ModelFile, OpenedEngine, run_info
from ssdtool.constants import CPU_DEVICE, InferencePrecision, IRPrecision, PerformanceHint
from ssdtool.errors import BackendError, ModelFormatError, UsageError

if TYPE_CHECKING:
    from ssdtool.cache import Cache

K = TypeVar("K")
SUFFIX = "ExecutionProvider"


@dataclass(frozen=True)
class Provider:
    """An execution provider as ``--device`` names it: onnxruntime's ``name`` for it, the ``package`` that brings
    it, what it ``computes`` an f32 model in as ssdtool sets it up (None: the provider decides, and ssdtool cannot
    say), whether ``CUDA:N`` picks device N (``numbered``) or ``OpenVINO:GPU`` sets an option (``suffix_option``),
    its fixed ``options``, the providers that run what it cannot (``fallbacks``), and a note for the report."""

    device: str
    name: str
    package: str | None
    computes: str | None
    numbered: bool = False
    suffix_option: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    fallbacks: tuple[str, ...] = ()
    note: str = ""


_F32 = InferencePrecision.F32.value
#: The providers ssdtool knows how to set up; any other the installed onnxruntime lists is used as it comes.
PROVIDERS: tuple[Provider, ...] = (
    Provider(CPU_DEVICE, "CPUExecutionProvider", "onnxruntime", _F32),
    Provider("CUDA", "CUDAExecutionProvider", "onnxruntime-gpu", _F32, numbered=True, options={"use_tf32": 0},
             note="TF32 off (use_tf32=0)"),
    Provider("TensorRT", "TensorrtExecutionProvider", "onnxruntime-gpu", _F32, numbered=True,
             options={"trt_fp16_enable": False, "trt_int8_enable": False}, fallbacks=("CUDAExecutionProvider",),
             note="FP16 and INT8 off; what TensorRT cannot run goes to CUDA with TF32 off"),
    Provider("OpenVINO", "OpenVINOExecutionProvider", "onnxruntime-openvino", _F32, suffix_option="device_type",
             options={"precision": "FP32"}, note="OpenVINO asked for FP32"),
    Provider("DirectML", "DmlExecutionProvider", "onnxruntime-directml", None, numbered=True,
             note="DirectML chooses its arithmetic"),
    Provider("CoreML", "CoreMLExecutionProvider", "onnxruntime (its macOS wheels)", None,
             note="CoreML chooses its arithmetic: f16 on the GPU and the Neural Engine"),
)
#: Other spellings of a provider's device name.
ALIASES = {"DML": "DirectML", "TRT": "TensorRT"}


@dataclass(frozen=True)
class ProviderChoice:
    """The provider a ``--device`` names, with its device number or option value (``CUDA:1``, ``OpenVINO:GPU``)."""

    device: str
    provider: Provider
    suffix: str | None

    def providers(self, available: Sequence[str]) -> list[Any]:
        """The session's provider list: this one with its options, then its fallbacks that are installed."""
        options: dict[str, Any] = dict(self.provider.options)
        if self.provider.numbered:
            options["device_id"] = int(self.suffix or 0)
        elif self.provider.suffix_option and self.suffix:
            options[self.provider.suffix_option] = self.suffix
        chosen: list[Any] = [(self.provider.name, options) if options else self.provider.name]
        for name in self.provider.fallbacks:
            fallback = next(p for p in PROVIDERS if p.name == name)
            if name in available:
                chosen.append((name, {**fallback.options, **({"device_id": options["device_id"]}
                                                             if "device_id" in options else {})}))
        return chosen

    @property
    def reason(self) -> str:
        provider = self.provider
        if provider.name == PROVIDERS[0].name:
            return "onnxruntime computes in f32 on the CPU"
        if provider.computes is None:
            return (f"onnxruntime's {self.device} provider ({provider.name}) does not say what it computes in"
                    f"{f': {provider.note}' if provider.note else ''}")
        return f"onnxruntime's {self.device} provider computes in {provider.computes} ({provider.note})"


def _listed_names(available: Sequence[str]) -> str:
    return ", ".join(name.removesuffix(SUFFIX) for name in available) or "none"


def choose_provider(device: str, available: Sequence[str]) -> ProviderChoice:
    """The provider ``device`` names (case-insensitive), checked against the providers this onnxruntime lists
    (``available``); :class:`BackendError` (31) naming the package to install, or the names it takes."""
    head, _, suffix = device.strip().partition(":")
    wanted = ALIASES.get(head.upper(), head).removesuffix(SUFFIX).lower()
    known = next((p for p in PROVIDERS if p.device.lower() == wanted), None)
    if known is None:
        listed = next((name for name in available if name.removesuffix(SUFFIX).lower() == wanted), None)
        if listed is None:
            names = ", ".join(f"{p.device}[:N]" if p.numbered else f"{p.device}[:DEVICE]" if p.suffix_option
                              else p.device for p in PROVIDERS)
            raise BackendError(
                f"onnxruntime has no execution provider {device!r}; expected one of {names}, or a provider this "
                f"onnxruntime lists ({_listed_names(available)})",
                hint="pass --device CPU; --device CUDA runs on an NVIDIA GPU (pip install onnxruntime-gpu), and "
                     "--backend openvino --device GPU on an Intel GPU")
        known = Provider(listed.removesuffix(SUFFIX), listed, None, None)
    if known.name not in available:
        install = (f"pip uninstall onnxruntime && pip install {known.package} (it replaces onnxruntime)"
                   if known.package and known.package.startswith("onnxruntime-") else f"install {known.package}")
        raise BackendError(f"onnxruntime has no {known.device} execution provider here: it comes with "
                           f"{known.package}, and this onnxruntime has {_listed_names(available)}",
                           hint=f"{install}, or pass --device CPU")
    if suffix and ((known.numbered and not suffix.isdigit()) or not (known.numbered or known.suffix_option)):
        what = "a device number (CUDA:1)" if known.numbered else "no suffix"
        raise BackendError(f"--device {device!r}: the {known.device} provider takes {what}",
                           hint=f"pass --device {known.device}")
    canonical = f"{known.device}:{suffix}" if suffix else known.device
    return ProviderChoice(canonical, known, suffix or None)


def _check_arithmetic(choice: ProviderChoice, requested: str) -> None:
    wanted = InferencePrecision.parse(requested, "inference precision")
    if wanted not in (InferencePrecision.AUTO, InferencePrecision.F32):
        raise UsageError(f"onnxruntime runs the source ONNX in f32 only; got --inference-precision {wanted.value}",
                         hint="use --backend openvino for bf16 or f16, or pass --inference-precision auto or f32")
    if wanted is InferencePrecision.F32 and choice.provider.computes is None:
        raise BackendError(f"onnxruntime's {choice.device} provider chooses its own arithmetic; f32 cannot be pinned "
                           "on it", hint="pass --inference-precision auto (the report then says it is not known)")


class OnnxRuntimeRules:
    """onnxruntime in the backend table: runs the registry's source ONNX on an execution provider."""

    name = "onnxruntime"
    distribution = "onnxruntime"
    load_step = "session creation"

    def weights(self, precision: str, image_input: bool = False) -> str:
        return "source ONNX"
    model_form = "onnx"
    one_engine = True

    def check(self, spec: EngineSpec) -> EngineSpec:
        if spec.image_input:
            raise UsageError("the image-input IR is an OpenVINO IR; onnxruntime runs the source ONNX, which takes "
                             "network-size tensors", hint="drop --image-input or use --backend openvino")
        if spec.precision not in (None, IRPrecision.FP32.value):
            raise UsageError(f"precision selects an OpenVINO IR; onnxruntime runs the source ONNX as it is (the "
                             f"source ONNX, which is FP32); got --precision {spec.precision}",
                             hint="drop --precision, or use --backend openvino for FP16 and INT8 IRs")
        _check_arithmetic(ProviderChoice(CPU_DEVICE, PROVIDERS[0], None), spec.inference_precision)  # before any import
        choice = self.choice(spec.device)
        _check_arithmetic(choice, spec.inference_precision)
        return spec.replace(device=choice.device)

    @staticmethod
    def choice(device: str) -> ProviderChoice:
        if device.strip().upper() == CPU_DEVICE:  # no import needed: onnxruntime always has its CPU provider
            return ProviderChoice(CPU_DEVICE, PROVIDERS[0], None)
        return choose_provider(device, import_engine("onnxruntime").get_available_providers())

    def plan(self, model: ModelFile, spec: EngineSpec) -> EnginePlan:
        choice = self.choice(spec.device)
        return EnginePlan(self.name, choice.reason, choice)

    def open(self, model: ModelFile, spec: EngineSpec, plan: EnginePlan, cache: Cache | None) -> OpenedEngine:
        decode = None
        if model.host_decode and model.entry is not None:
            from ssdtool.heads import host_decoder

            decode = host_decoder(model.entry)
        hint = spec.hint_or(PerformanceHint.LATENCY.value)
        requests = (spec.requests or os.cpu_count() or 1) if hint == PerformanceHint.THROUGHPUT else 1
        engine = OnnxRuntimeEngine(model.path, requests=requests, decode=decode, provider=plan.settings)
        return OpenedEngine(engine, run_info(model, engine, spec.replace(hint=hint), plan.reason))


class OnnxRuntimeEngine:
    name = OnnxRuntimeRules.name

    def __init__(self, model_path: str | os.PathLike[str], requests: int | None = None,
                 decode: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
                 provider: ProviderChoice | None = None) -> None:
        """``decode``: applied to every run's outputs inside the run (so in its thread, counted in its time and in
        :attr:`busy_seconds`): a heads model's host decode (:func:`ssdtool.heads.host_decoder`). ``provider``: the
        execution provider (default the CPU's; :func:`choose_provider`)."""
        ort = import_engine("onnxruntime")
        choice = provider or ProviderChoice(CPU_DEVICE, PROVIDERS[0], None)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are noise for users
        cores = os.cpu_count() or 1
        self.requests = max(1, requests or 1)
        #: intra-op threads of each run: every core for one request at a time, an equal share for several
        self.threads = cores if self.requests == 1 else max(1, cores // self.requests)
        if self.requests > 1:
            options.intra_op_num_threads = self.threads
        providers = choice.providers(ort.get_available_providers() if choice.provider.fallbacks else ())
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            if choice.provider.name != PROVIDERS[0].name:
                raise BackendError(f"onnxruntime cannot load {model_path} on its {choice.device} provider: {exc}",
                                   hint="try --device CPU") from exc
            raise ModelFormatError(
                f"onnxruntime cannot load {model_path}: {exc}",
                hint="the file is not a valid ONNX model; re-download it with 'ssdtool download --force'",
            ) from exc
        if choice.provider.name not in self.session.get_providers():
            # onnxruntime falls back to the CPU when a provider cannot start (its libraries missing, no device)
            raise BackendError(f"onnxruntime could not start its {choice.device} provider ({choice.provider.name}); "
                               f"the session would run on {_listed_names(self.session.get_providers())} instead",
                               hint="check the device and its libraries (CUDA and cuDNN for CUDA, TensorRT for "
                                    "TensorRT), or pass --device CPU")
        first = self.session.get_inputs()[0]
        self.input_name: str = first.name
        self.input_shape: tuple[int, ...] = tuple(d if isinstance(d, int) else -1 for d in first.shape)
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]
        self.decode = decode
        self.path = Path(model_path)
        self.device = choice.device
        #: What the provider computes in as ssdtool set it up (the CPU provider: f32); None when it decides.
        self.inference_precision: str | None = choice.provider.computes
        self.streams: int | None = None
        self.busy_seconds = 0.0  # seconds with at least one run in flight, over this engine's life
        self._busy_lock = threading.Lock()
        self._running = 0
        self._busy_since = 0.0

    @property
    def optimal_requests(self) -> int:
        return self.requests

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        self._enter()
        try:
            outputs = dict(zip(self.output_names, self.session.run(None, {self.input_name: tensor}), strict=True))
            return outputs if self.decode is None else self.decode(outputs)
        finally:
            self._leave()

    def infer_stream(self, items: Iterable[tuple[K, np.ndarray]], requests: int | None = None,
                     on_done: Callable[[K, float], None] | None = None
                     ) -> Iterator[tuple[K, dict[str, np.ndarray]]]:
        """Yield ``(key, outputs)`` for every ``(key, tensor)`` in input order, ``requests`` runs at a time
        (default: the engine's). ``on_done(key, milliseconds)`` receives each run's own time, from this thread."""
        jobs = max(1, requests or self.requests)
        if jobs == 1:
            for key, tensor in items:
                started = time.perf_counter()
                outputs = self.infer(tensor)
                if on_done is not None:
                    on_done(key, (time.perf_counter() - started) * 1000)
                yield key, outputs
            return
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="ssdtool-onnxruntime") as pool:
            window: list[tuple[K, Future[tuple[dict[str, np.ndarray], float]]]] = []
            for key, tensor in items:
                if len(window) == jobs:
                    yield self._collect(window.pop(0), on_done)
                window.append((key, pool.submit(self._timed, tensor)))
            for pending in window:
                yield self._collect(pending, on_done)

    def _timed(self, tensor: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        started = time.perf_counter()
        outputs = self.infer(tensor)
        return outputs, (time.perf_counter() - started) * 1000

    @staticmethod
    def _collect(pending: tuple[K, Future[tuple[dict[str, np.ndarray], float]]],
                 on_done: Callable[[K, float], None] | None) -> tuple[K, dict[str, np.ndarray]]:
        key, future = pending
        outputs, milliseconds = future.result()
        if on_done is not None:
            on_done(key, milliseconds)
        return key, outputs

    def _enter(self) -> None:
        with self._busy_lock:
            if self._running == 0:
                self._busy_since = time.perf_counter()
            self._running += 1

    def _leave(self) -> None:
        with self._busy_lock:
            self._running -= 1
            if self._running == 0:
                self.busy_seconds += time.perf_counter() - self._busy_since
