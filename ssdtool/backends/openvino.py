"""OpenVINO engine: compiles an IR (or ONNX) for a device, with an optional compiled-model cache directory.

Two ways to run it: :meth:`OpenVinoEngine.infer` (one synchronous request, for one image or a parity check) and
:meth:`OpenVinoEngine.infer_stream` (the device's optimal number of async requests in flight, results handed back
in input order), which keeps every stream of a THROUGHPUT-compiled model busy. What the runtime says about a device
(:func:`device_facts`) and about a compiled model's precision (:func:`type_name`, :func:`confirm`) is read here;
which device and precision to ask for is decided by :mod:`ssdtool.backends.openvino_rules`.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ssdtool.backends import import_engine
from ssdtool.constants import DEFAULT_DEVICE, PerformanceHint
from ssdtool.errors import BackendError, ModelFormatError
from ssdtool.precision import DeviceFacts

K = TypeVar("K")

#: OpenVINO's performance hints: ssdtool's (:class:`~ssdtool.constants.PerformanceHint`) as OpenVINO spells them,
#: and CUMULATIVE_THROUGHPUT, which only a direct user of :class:`OpenVinoEngine` asks for.
HINTS = (*(hint.upper() for hint in PerformanceHint.values()), "CUMULATIVE_THROUGHPUT")
#: OpenVINO's names for "no precision set" (ACCURACY mode reads back as dynamic).
_UNSET = ("dynamic", "undefined", "")


def available_devices() -> list[str]:
    ov = import_engine("openvino")
    return list(ov.Core().available_devices)


def openvino_version() -> str:
    return str(import_engine("openvino").get_version())


def device_type(device: str) -> str:
    """The kind of a physical device: ``GPU`` for ``GPU.1``; a runtime check speaks for every device of a kind and
    model (two identical GPUs share it)."""
    return device.split(".", 1)[0]


@functools.lru_cache(maxsize=16)
def device_facts(device: str = DEFAULT_DEVICE) -> DeviceFacts:
    """The device's name (``FULL_DEVICE_NAME``: the CPU or GPU model) and default inference precision, asked without
    compiling; ``device`` is recorded by its kind (``GPU`` for ``GPU.1``).

    Virtual devices (AUTO, MULTI, HETERO, BATCH) report neither: their default precision is None. Cached: the
    answers describe the hardware, which does not change while the process runs.
    """
    core = import_engine("openvino").Core()
    try:
        name = str(core.get_property(device, "FULL_DEVICE_NAME"))
    except Exception:  # virtual devices have no name of their own
        name = device
    try:
        default = type_name(core.get_property(device, "INFERENCE_PRECISION_HINT"))
    except Exception:
        default = None
    return DeviceFacts(device=device_type(device), name=name, default_precision=default)


@functools.lru_cache(maxsize=16)
def device_capabilities(device: str) -> frozenset[str]:
    """``OPTIMIZATION_CAPABILITIES`` of a physical device (``FP32``, ``BF16``, ``FP16``, ``INT8``, ...): the
    arithmetic it has natively; empty when it does not say."""
    try:
        return frozenset(str(c) for c in import_engine("openvino").Core().get_property(device,
                                                                                      "OPTIMIZATION_CAPABILITIES"))
    except Exception:
        return frozenset()


def type_name(value: Any) -> str | None:
    """OpenVINO's precision property (an ``openvino.Type`` or a string) as ``f32``/``bf16``/``f16``; None if unset."""
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    name = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)
    return None if name in _UNSET else name


def confirm(pin: str | None, read_back: str | None, device: str) -> None:
    """Raise :class:`BackendError` when a pinned precision is not what the compiled model runs."""
    if pin is None or read_back is None or read_back == pin:
        return
    raise BackendError(
        f"OpenVINO cannot run inference precision {pin} on {device}: asked for {pin}, the compiled model runs "
        f"{read_back} (the device has no native {pin} arithmetic, and OpenVINO substitutes another precision)",
        hint=f"pass --inference-precision auto, f32 or {read_back}")


class OpenVinoEngine:
    name = "openvino"

    def __init__(self, model_path: str | os.PathLike[str], device: str = DEFAULT_DEVICE, cache_dir: str | None = None,
                 hint: str = HINTS[0], inference_precision: str | None = None,
                 device_pins: Mapping[str, str] | None = None,
                 expected_precisions: Mapping[str, str | None] | None = None) -> None:
        """Compile ``model_path`` for ``device`` (any device string the runtime accepts; the rules module checks
        it first).

        ``inference_precision`` pins ``INFERENCE_PRECISION_HINT`` (f32, bf16, f16); None leaves the device's
        default. Either way the precision that runs is read back into :attr:`inference_precision`, and a pinned
        one that OpenVINO did not honour raises :class:`BackendError` (see :mod:`ssdtool.precision`).

        A virtual device (AUTO, MULTI, HETERO) reads no precision back. ``device_pins`` pins a precision on each of
        its devices (``DEVICE_PROPERTIES``); ``expected_precisions`` says what each device was set to run, and
        :attr:`inference_precision` is then that of the devices it chose (``EXECUTION_DEVICES``) when they agree.
        """
        ov = import_engine("openvino")
        core = ov.Core()
        if hint not in HINTS:
            raise BackendError(f"unknown OpenVINO performance hint {hint!r}; expected one of {', '.join(HINTS)}")
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if cache_dir:
            config["CACHE_DIR"] = str(cache_dir)
        if inference_precision is not None:
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        if device_pins:
            config["DEVICE_PROPERTIES"] = {part: {"INFERENCE_PRECISION_HINT": pin} for part, pin in device_pins.items()}
        if cache_dir:
            # Compiling from the path lets OpenVINO find a cached blob without parsing the model first, which
            # is most of the cost of a warm start (the blob holds the already transformed graph and weights).
            try:
                self.compiled = core.compile_model(str(model_path), device, config)
            except Exception as exc:
                self._raise_for(core, model_path, device, exc)
        else:
            try:
                model = core.read_model(str(model_path))
            except Exception as exc:
                raise ModelFormatError(f"OpenVINO cannot read {model_path}: {exc}",
                                       hint="reconvert it with 'ssdtool convert --force'") from exc
            try:
                self.compiled = core.compile_model(model, device, config)
            except Exception as exc:
                raise BackendError(f"OpenVINO cannot compile {model_path} for {device}: {exc}",
                                   hint="try --device CPU or --backend onnxruntime") from exc
        first = self.compiled.inputs[0]
        self.input_name: str = first.get_any_name()
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in first.get_shape()) \
            if first.get_partial_shape().is_static else ()
        self.input_type: str = first.get_element_type().get_type_name()
        self.output_names: list[str] = [o.get_any_name() for o in self.compiled.outputs]
        self.path = Path(model_path)
        self.device = device
        self.hint = hint
        self.cache_dir = Path(cache_dir) if cache_dir else None
        #: What was pinned (None: the device's default) and what the compiled model runs, read back from it (None
        #: when the device does not report it, as virtual devices such as AUTO do not).
        self.requested_precision = inference_precision
        self.inference_precision: str | None = self._read_back_precision()
        confirm(inference_precision, self.inference_precision, device)
        if self.inference_precision is None and expected_precisions:
            chosen = {expected_precisions.get(d, expected_precisions.get(device_type(d)))
                      for d in self.execution_devices}
            self.inference_precision = chosen.pop() if len(chosen) == 1 else None
        self._request = self.compiled.create_infer_request()
        self._pool: list[Any] = [self._request]
        # Requests free for infer(), which may be called from several threads (more are made on demand).
        self._idle: list[Any] = [self._request]
        self._idle_lock = threading.Lock()
        #: Seconds with at least one inference in flight, over this engine's life: what the engine itself took,
        #: for telling its time from the time around it (image loading, start-up) in benchmarks and logs.
        self.busy_seconds = 0.0

    @staticmethod
    def _raise_for(core: Any, model_path: str | os.PathLike[str], device: str, exc: Exception) -> None:
        """Tell a bad model file (22) from a model the device cannot run (31) after a combined read+compile."""
        try:
            core.read_model(str(model_path))
        except Exception as read_exc:
            raise ModelFormatError(f"OpenVINO cannot read {model_path}: {read_exc}",
                                   hint="reconvert it with 'ssdtool convert --force'") from exc
        raise BackendError(f"OpenVINO cannot compile {model_path} for {device}: {exc}",
                           hint="try --device CPU or --backend onnxruntime") from exc

    def _read_back_precision(self) -> str | None:
        try:
            return type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        except Exception:  # AUTO, MULTI and other virtual devices do not report it
            return None

    @property
    def execution_devices(self) -> tuple[str, ...]:
        """The devices the compiled model runs on (AUTO's choice; the device itself otherwise)."""
        try:
            return tuple(str(d) for d in self.compiled.get_property("EXECUTION_DEVICES"))
        except Exception:
            return (self.device,)

    @property
    def optimal_requests(self) -> int:
        """How many requests keep the compiled model busy (1 for LATENCY, one per stream for THROUGHPUT)."""
        try:
            return max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        except Exception:  # a plugin without the property: run one request at a time
            return 1

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """One synchronous inference. Safe to call from several threads at once (a server does): each call takes
        an idle infer request, or makes one, so concurrent calls run in parallel on a THROUGHPUT-compiled model."""
        with self._idle_lock:
            request = self._idle.pop() if self._idle else self.compiled.create_infer_request()
        started = time.perf_counter()
        try:
            results = request.infer({0: tensor})
            outputs = {name: np.array(results[output])
                       for name, output in zip(self.output_names, self.compiled.outputs, strict=True)}
        finally:
            with self._idle_lock:
                self._idle.append(request)
                self.busy_seconds += time.perf_counter() - started
        return outputs

    @property
    def streams(self) -> int | None:
        """The CPU streams the plugin chose for the hint (None when the device does not say)."""
        return _int_property(self.compiled, "NUM_STREAMS")

    @property
    def threads(self) -> int | None:
        """The inference threads of the compiled model (None when the device does not say)."""
        return _int_property(self.compiled, "INFERENCE_NUM_THREADS")

    def infer_stream(self, items: Iterable[tuple[K, np.ndarray]], requests: int | None = None,
                     on_done: Callable[[K, float], None] | None = None
                     ) -> Iterator[tuple[K, dict[str, np.ndarray]]]:
        """Run every ``(key, tensor)`` of ``items`` and yield ``(key, outputs)`` in input order.

        Up to ``requests`` (default: :attr:`optimal_requests`) inferences run at once, on infer requests this
        engine keeps. ``items`` is consumed lazily, so a producer that prepares tensors in other threads overlaps
        with inference. Closing the iterator early waits for the requests in flight. ``on_done(key, milliseconds)``
        receives each request's own time as OpenVINO measured it (``InferRequest.latency``), from this thread.

        Requests are started and awaited from this thread, with no Python callbacks: with ``AsyncInferQueue``
        callbacks, OpenVINO 2026.4 can hang or abort when the compiled model is released afterwards (its worker
        threads then hold Python objects). Waiting for the oldest request first gives input order for free; with
        equal-cost images the requests finish in that order anyway.
        """
        jobs = max(1, requests or self.optimal_requests)
        pool = self._requests(jobs)
        inflight: deque[tuple[K, Any]] = deque()
        busy_since = 0.0

        def collect() -> tuple[K, dict[str, np.ndarray]]:
            key, request = inflight.popleft()
            try:
                request.wait()
                # The output tensors belong to the request and are overwritten by its next inference: copy.
                outputs = {name: np.array(request.get_tensor(port).data)
                           for name, port in zip(self.output_names, self.compiled.outputs, strict=True)}
            except Exception as exc:
                raise BackendError(f"OpenVINO inference failed on {self.device}: {exc}",
                                   hint="try --device CPU or --backend onnxruntime") from exc
            if not inflight:
                self.busy_seconds += time.perf_counter() - busy_since
            if on_done is not None:
                on_done(key, float(request.latency))
            return key, outputs

        try:
            for sequence, (key, tensor) in enumerate(items):
                if len(inflight) == jobs:
                    yield collect()
                request = pool[sequence % jobs]
                if not inflight:
                    busy_since = time.perf_counter()
                # share_inputs=False: OpenVINO copies the pixels into the request's own tensor, so no Python
                # object is referenced from its threads (a copy costs ~1% of an inference).
                request.start_async({0: tensor}, share_inputs=False)
                inflight.append((key, request))
            while inflight:
                yield collect()
        finally:
            for _, request in inflight:
                request.wait()

    def _requests(self, count: int) -> list[Any]:
        """``count`` infer requests, created once and reused by later streams."""
        while len(self._pool) < count:
            self._pool.append(self.compiled.create_infer_request())
        return self._pool[:count]


def _int_property(compiled: Any, name: str) -> int | None:
    try:
        return int(compiled.get_property(name))
    except Exception:  # not every device reports every property
        return None
