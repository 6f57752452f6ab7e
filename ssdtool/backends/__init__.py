"""The engine layer: inference engines behind one small interface, ``engine.infer(tensor) -> {output: array}``.

``onnxruntime`` runs the source ONNX (normalized input) on an execution provider; ``openvino`` runs an IR on any
OpenVINO device; ``remote`` runs a model on an Open Inference Protocol server (``--server``). Every caller says
what it wants in one :class:`~ssdtool.backends.spec.EngineSpec`; :func:`prepare` checks it (and resolves
``auto``) before any model is fetched, and :func:`open_engine`, the one factory, opens the engine and says what
runs (:class:`~ssdtool.backends.spec.RunInfo`). Each backend's rules (its devices, its precision plan, its reason
strings) live in its own module, found through the :data:`BACKENDS` table; the modules import their engine
lazily, and a missing or broken engine becomes a :class:`DependencyError` with an install hint.
``infer_stream`` runs many tensors with the engine's best concurrency and returns results in input order.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ssdtool.backends.spec import (
    AUTO_BACKEND,
    REMOTE,
    EnginePlan,
    EngineSpec,
    ModelFile,
    OpenedEngine,
    RunInfo,
    check_fields,
    engine_spec,
)
from ssdtool.constants import BACKEND_CHOICES, Backend
from ssdtool.errors import DependencyError

if TYPE_CHECKING:
    from ssdtool.cache import Cache

log = logging.getLogger("ssdtool.backends")

__all__ = ["BACKENDS", "Engine", "EnginePlan", "EngineSpec", "ModelFile", "OpenedEngine", "RunInfo",
           "backend_rules", "engine_spec", "import_engine", "make_engine", "open_engine", "plan_engine", "prepare"]


class Engine(Protocol):
    name: str
    device: str
    input_name: str
    input_shape: tuple[int, ...]
    #: The arithmetic that runs, read back from the engine (f32, bf16, f16; None when the device does not say).
    inference_precision: str | None
    #: Seconds with at least one inference in flight, over the engine's life.
    busy_seconds: float
    #: CPU streams and threads the engine runs with, for reports (None when it does not say).
    streams: int | None
    threads: int | None

    @property
    def optimal_requests(self) -> int:
        """How many inferences in flight keep this engine busy."""
        ...

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; returns every output by tensor name."""
        ...

    def infer_stream(self, items: Iterable[tuple[Any, np.ndarray]], requests: int | None = None,
                     on_done: Callable[[Any, float], None] | None = None
                     ) -> Iterator[tuple[Any, dict[str, np.ndarray]]]:
        """Run ``(key, tensor)`` pairs, consuming them lazily, ``requests`` at a time (default
        :attr:`optimal_requests`); yield ``(key, outputs)`` in input order. ``on_done(key, milliseconds)``
        receives each run's own time, on the calling thread."""
        ...


def import_engine(module: str, package: str | None = None) -> ModuleType:
    """Import a heavy engine module, turning import failures into an actionable error."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        dist = package or module.split(".")[0]
        raise DependencyError(
            f"cannot import {module}: {exc}",
            hint=f"install it with 'pip install {dist}' (it is a dependency of ssdtool; "
                 f"'pip install --force-reinstall ssdtool' repairs a broken install)",
        ) from exc




class BackendRules(Protocol):
    """What a backend knows about itself: which model file it runs, which devices and precisions it takes, what it
    decides for a model (and why), and how its engine opens. One class per backend module, in :data:`BACKENDS`."""

    #: The backend's name in reports (``RunInfo.backend``).
    name: str
    #: The file it runs: ``ir`` (ssdtool's converted IR), ``onnx`` (the registry's source ONNX) or ``served``.
    model_form: str
    #: Whether one engine serves both hints (the engine has no hint, or a server chose its own).
    one_engine: bool
    #: The package whose version reports name (None: nothing installed here runs the model).
    distribution: str | None
    #: What opening its engine does, for bench's load figure ("read + compile").
    load_step: str

    def weights(self, precision: str, image_input: bool = False) -> str:
        """The model it runs, for people: ``FP32 IR``, ``FP32 image-input IR``, ``source ONNX``, ``served model``."""
        ...

    def check(self, spec: EngineSpec) -> EngineSpec:
        """Refuse what this backend cannot run (devices, precisions), before any model is fetched; the spec with
        its device and precisions in canonical form."""
        ...

    def plan(self, model: ModelFile, spec: EngineSpec) -> EnginePlan:
        """What to ask the engine for running ``model`` (and why); logs the decision."""
        ...

    def open(self, model: ModelFile, spec: EngineSpec, plan: EnginePlan, cache: Cache | None) -> OpenedEngine:
        """The engine, opened as ``plan`` says (``cache``: where compiled models may be kept), and what runs."""
        ...


#: Every backend, by name: the ``"module:Class"`` of its rules, imported on first use (as download's scheme table
#: does for sources). A new backend is a module with its Engine and rules, a line here, and its name in
#: :class:`ssdtool.constants.Backend` (docs/architecture.md, "A new backend or device").
BACKENDS: dict[str, str] = {
    Backend.OPENVINO.value: "ssdtool.backends.openvino_rules:OpenVinoRules",
    Backend.ONNXRUNTIME.value: "ssdtool.backends.onnxruntime:OnnxRuntimeRules",
    REMOTE: "ssdtool.backends.remote:RemoteRules",
}
_RULES: dict[str, BackendRules] = {}


def backend_rules(spec: EngineSpec | str) -> BackendRules:
    """The rules of ``spec``'s backend (the server's when it names one), or of the backend named."""
    name = spec if isinstance(spec, str) else REMOTE if spec.server is not None else spec.backend
    if name not in _RULES:
        if name not in BACKENDS:
            raise ValueError(f"no backend {name!r}; resolve 'auto' with prepare() first")
        module, _, attribute = BACKENDS[name].partition(":")
        _RULES[name] = getattr(importlib.import_module(module), attribute)()
    return _RULES[name]


def prepare(spec: EngineSpec, *, backends: tuple[str, ...] = BACKEND_CHOICES) -> EngineSpec:
    """``spec`` checked and made concrete, before any model is fetched: the fields every backend shares, then the
    backend's own rules (devices, precisions). ``auto`` becomes OpenVINO when it imports, else onnxruntime (with a
    warning; a chosen IR precision is then dropped). ``backends``: the names this caller takes."""
    spec = check_fields(spec, backends)
    if spec.server is None and spec.backend == AUTO_BACKEND:
        try:
            import_engine("openvino")
            spec = spec.replace(backend=Backend.OPENVINO.value)
        except DependencyError as exc:
            log.warning("OpenVINO is not available (%s); using onnxruntime%s", exc.message,
                        f" (precision {spec.precision} applies to OpenVINO only)" if spec.precision else "")
            spec = spec.replace(backend=Backend.ONNXRUNTIME.value, precision=None)
    elif spec.server is None and spec.backend == Backend.OPENVINO:
        import_engine("openvino")
    return backend_rules(spec).check(spec)


def plan_engine(model: ModelFile, spec: EngineSpec) -> EnginePlan:
    """What ``spec``'s backend decides for ``model`` (see :meth:`BackendRules.plan`); ``spec`` from :func:`prepare`."""
    return backend_rules(spec).plan(model, spec)


def open_engine(model: ModelFile, spec: EngineSpec, cache: Cache | None = None, *,
                plan: EnginePlan | None = None) -> OpenedEngine:
    """The one engine factory: the engine that runs ``model`` as ``spec`` (from :func:`prepare`) says, and what
    runs (:class:`RunInfo`). ``cache``: the ssdtool cache, whose compiled-model folder OpenVINO uses (see
    :attr:`EngineSpec.compiled_cache`). ``plan``: a decision made earlier by :func:`plan_engine` for this model.

    OpenVINO runs an IR with the precision its rules plan from the IR's runtime checks; onnxruntime runs the source
    ONNX on the spec's execution provider (the source ONNX of a heads model decodes its heads on the host,
    :func:`ssdtool.heads.host_decoder`, so it returns the full model's three outputs); a server's model gets a
    :class:`~ssdtool.backends.remote.RemoteEngine` whose answers are checked against ``model.entry``."""
    rules = backend_rules(spec)
    return rules.open(model, spec, plan or rules.plan(model, spec), cache)


def make_engine(model: ModelFile, spec: EngineSpec | None = None, *, cache: Cache | None = None,
                **settings: Any) -> Engine:
    """The engine alone, from :func:`open_engine`: for ``model`` as ``spec`` (default: the model's own backend or
    server) with ``settings`` (:class:`EngineSpec` fields) changed, checked by :func:`prepare`."""
    base = spec or EngineSpec(backend=str(model.backend), server=model.server)
    return open_engine(model, prepare(engine_spec(base, **settings)), cache).engine
