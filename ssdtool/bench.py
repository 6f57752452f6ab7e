"""Measure inference speed the way OpenVINO's ``benchmark_app`` does, on ssdtool's own models and engines.

One engine, one model, generated but real-looking images (not zeros: the data path and any data-dependent work,
NMS included, are exercised), preprocessed once before timing, so only the engine is measured. The first
inference is reported apart and excluded (it pays for lazy initialisation); throughput mode also runs one
excluded round over every request before timing.

Everything runs through the :class:`~ssdtool.backends.Engine` that detection uses, so the figures are those of the
engine path users run:

* OpenVINO, ``latency``: one synchronous request (``engine.infer``), compiled with the LATENCY hint; latency is
  the wall time of each call.
* OpenVINO, ``throughput``: N requests in flight (default: the compiled model's optimal number) on a
  THROUGHPUT-compiled model (``engine.infer_stream``, no Python callbacks); latency is each request's own time
  (``InferRequest.latency``).
* onnxruntime, ``latency``: one session using every core, one run at a time.
* onnxruntime, ``throughput``: N runs at a time (default: one per core) sharing one session with cores/N intra-op
  threads each (a session is safe to run from several threads, and ``run`` releases the GIL).

Peak memory is the process's resident high-water mark, reset (Linux ``/proc/self/clear_refs``) after the model is
downloaded or converted, so it covers loading, compiling and running the model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssdtool import artifacts
from ssdtool import precision as inference_precisions
from ssdtool.cache import Cache
from ssdtool.constants import Backend, InputLayout, InputType, IRPrecision, PerformanceHint
from ssdtool.errors import BackendError, UsageError
from ssdtool.imaging import generated_images, preprocess
from ssdtool.registry import ModelEntry

if TYPE_CHECKING:
    from ssdtool.backends import Engine
    from ssdtool.serving.protocol import ServerTarget

log = logging.getLogger("ssdtool.bench")

DEFAULT_SECONDS = 20.0  # when neither iterations nor a time is given (benchmark_app uses 60 s)
BENCH_IMAGES = 4
BENCH_SEED = 21
IMAGE_SIZE = (640, 480)


@dataclass(frozen=True)
class BenchOptions:
    """What to measure. ``iterations`` and ``seconds`` are exclusive; neither means ``DEFAULT_SECONDS``.

    ``requests``: parallel requests in throughput mode (OpenVINO: the queue size, default the compiled model's
    optimal number; onnxruntime: threads, default one per core); latency mode always uses one. ``precision``
    picks the IR (OpenVINO); onnxruntime runs the source ONNX, which is FP32. ``inference_precision``: OpenVINO's
    arithmetic, as for detection (``auto``, ``f32``, ``bf16``, ``f16``; see :mod:`ssdtool.precision`); the report
    gives what was read back. ``images``: distinct inputs cycled. ``image_input``: the image-input IR, fed the
    generated images whole (640x480), so its inner resize is part of every timed inference.
    """

    backend: str = "openvino"
    precision: str = "FP32"
    inference_precision: str = "auto"
    hint: str = "latency"
    requests: int | None = None
    iterations: int | None = None
    seconds: float | None = None
    device: str = "CPU"
    images: int = BENCH_IMAGES
    #: Measure a model served over the Open Inference Protocol instead (precision and device are the server's;
    #: ``requests`` in flight, default the target's ``concurrency``).
    server: ServerTarget | None = None
    offline: bool = False
    image_input: bool = False


@dataclass(frozen=True)
class BenchReport:
    model: str
    backend: str
    precision: str
    device: str
    hint: str
    requests: int
    model_path: str
    input_shape: tuple[int, ...]
    load_seconds: float  # OpenVINO: read + compile; onnxruntime: session creation
    first_inference_ms: float
    iterations: int
    duration_seconds: float
    latency_median_ms: float
    latency_p90_ms: float
    latency_min_ms: float
    latency_max_ms: float
    latency_mean_ms: float
    throughput_fps: float
    peak_rss_mb: float | None
    streams: int | None = None
    threads: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    #: The arithmetic that ran, read back from the compiled model (None when the device does not report it),
    #: what was asked, and why the one became the other.
    inference_precision: str | None = None
    inference_precision_requested: str = "auto"
    inference_precision_reason: str = ""
    #: The image-input IR ran, fed whole images (its inner resize is in the timings).
    image_input: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = round(value, 4)
        return data


def check_options(options: BenchOptions) -> None:
    if options.backend not in Backend.values():
        raise BackendError(f"unknown backend {options.backend!r}; expected one of {', '.join(Backend.values())}",
                           hint="use --backend openvino or onnxruntime")
    if options.hint not in PerformanceHint.values():
        raise UsageError(f"unknown hint {options.hint!r}; expected one of {', '.join(PerformanceHint.values())}")
    if options.precision not in IRPrecision.values():
        raise UsageError(f"precision {options.precision!r} is not supported; expected one of "
                         f"{', '.join(IRPrecision.values())}")
    if options.backend == "onnxruntime" and options.precision != "FP32":
        raise UsageError(f"onnxruntime runs the source ONNX, which is FP32; got --precision {options.precision}",
                         hint="use --backend openvino for FP16 and INT8 IRs")
    if options.backend == "onnxruntime" and options.device.upper() != "CPU":
        raise UsageError(f"the onnxruntime backend runs on the CPU only, got --device {options.device}")
    if options.image_input and (options.backend == "onnxruntime" or options.server is not None):
        raise UsageError("--image-input measures the local image-input IR with OpenVINO",
                         hint="drop --image-input, or use --backend openvino without --server")
    inference_precisions.parse(options.inference_precision)
    if options.backend == "onnxruntime":
        inference_precisions.onnxruntime_precision(options.inference_precision)
    if options.iterations is not None and options.seconds is not None:
        raise UsageError("give either a number of iterations or a time, not both")
    if options.iterations is not None and options.iterations < 1:
        raise UsageError(f"iterations must be at least 1, got {options.iterations}")
    if options.seconds is not None and options.seconds <= 0:
        raise UsageError(f"the time must be positive, got {options.seconds} s")
    if options.requests is not None and options.requests < 1:
        raise UsageError(f"requests must be at least 1, got {options.requests}")
    if options.images < 1:
        raise UsageError(f"images must be at least 1, got {options.images}")


# ------------------------------------------------------------------------------------------------ memory
def _reset_peak_rss() -> None:
    """Start a new resident high-water mark (Linux); elsewhere the process's lifetime peak is reported."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_bytes() -> int | None:
    """The resident high-water mark of this process (``VmHWM``), or ``ru_maxrss`` where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# ------------------------------------------------------------------------------------------------ runs
@dataclass
class _Timings:
    first_ms: float
    latencies_ms: list[float]
    duration: float
    requests: int


class _Budget:
    """Stops after ``iterations`` starts, or after ``seconds`` (whichever the options set)."""

    def __init__(self, iterations: int | None, seconds: float | None) -> None:
        self.iterations = iterations
        self.seconds = seconds if iterations is None else None
        if self.iterations is None and self.seconds is None:
            self.seconds = DEFAULT_SECONDS
        self.started = 0
        self.began = time.perf_counter()
        self._lock = threading.Lock()

    def take(self) -> int | None:
        """The next iteration number, or None when the budget is spent (thread-safe)."""
        with self._lock:
            if self.iterations is not None and self.started >= self.iterations:
                return None
            if self.seconds is not None and self.started > 0 and time.perf_counter() - self.began >= self.seconds:
                return None
            self.started += 1
            return self.started - 1

    def items(self, tensors: Sequence[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        """``(iteration, tensor)`` pairs, the tensors cycled, until the budget is spent."""
        while (index := self.take()) is not None:
            yield index, tensors[index % len(tensors)]


def _measure(engine: Engine, tensors: Sequence[np.ndarray], options: BenchOptions, requests: int) -> _Timings:
    """The first inference apart, then the timed iterations: one at a time (latency) or ``requests`` in flight."""
    began = time.perf_counter()
    engine.infer(tensors[0])
    first_ms = (time.perf_counter() - began) * 1000
    latencies: list[float] = []
    if requests == 1:
        budget = _Budget(options.iterations, options.seconds)
        for _index, tensor in budget.items(tensors):
            started = time.perf_counter()
            engine.infer(tensor)
            latencies.append((time.perf_counter() - started) * 1000)
        return _Timings(first_ms, latencies, time.perf_counter() - budget.began, 1)
    warm_up = [(i, tensors[i % len(tensors)]) for i in range(requests)]  # every request (and stream) runs once
    for _ in engine.infer_stream(warm_up, requests):
        pass
    budget = _Budget(options.iterations, options.seconds)
    for _ in engine.infer_stream(budget.items(tensors), requests, lambda _key, ms: latencies.append(ms)):
        pass
    return _Timings(first_ms, latencies, time.perf_counter() - budget.began, requests)


# ------------------------------------------------------------------------------------------------ entry point
def input_tensors(entry: ModelEntry, backend: str, count: int = BENCH_IMAGES, input_type: str = InputType.F32.value,
                  layout: str = InputLayout.NCHW.value, image_input: bool = False) -> list[np.ndarray]:
    """``count`` generated images preprocessed for ``backend``: normalized RGB for onnxruntime (the source model),
    raw BGR pixels for an ssdtool IR (``image_input``: the whole 640x480 images, for the image-input IR)."""
    form = "onnx" if backend == Backend.ONNXRUNTIME else "image" if image_input else "ir"
    return [preprocess(rgb, entry, form=form, input_type=input_type, input_layout=layout)
            for rgb in generated_images(count, seed=BENCH_SEED, size=IMAGE_SIZE)]


def _versions(backend: str, precision: str) -> dict[str, str]:
    from importlib import metadata

    from ssdtool import __version__

    versions = {"ssdtool": __version__}
    for dist in (backend, "nncf") if precision == IRPrecision.INT8 else (backend,):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


def benchmark(entry: ModelEntry, cache: Cache, options: BenchOptions | None = None, *,
              progress: Callable[[Any], None] | None = None) -> BenchReport:
    """Benchmark ``entry`` with ``options`` (see :class:`BenchOptions` and the module docstring).

    The model is downloaded (onnxruntime) or converted (OpenVINO, including INT8 for models whose calibration can
    be chosen automatically) when missing (:func:`ssdtool.artifacts.model_file`). ``progress`` receives download
    events.
    """
    options = options or BenchOptions()
    check_options(options)
    if options.server is not None:
        return benchmark_model(artifacts.remote_model_file(entry, options.server),
                               input_tensors(entry, Backend.OPENVINO.value, options.images), options)
    model = artifacts.model_file(entry, cache, options.backend,
                                 options.precision if options.backend == Backend.OPENVINO else None,
                                 offline=options.offline, progress=progress, image_input=options.image_input)
    return benchmark_model(model, input_tensors(entry, options.backend, options.images,
                                                image_input=options.image_input), options)


def benchmark_file(path: Path, tensors: Sequence[np.ndarray], options: BenchOptions, *, model: str = ""
                   ) -> BenchReport:
    """Benchmark one model file (an IR or ONNX for OpenVINO, an ONNX for onnxruntime) on ready input tensors:
    the same loop as :func:`benchmark`, for peer models (a plain ``ovc`` conversion, the source ONNX) in
    ``benchmarks/``. ``options.precision`` is only reported."""
    check_options(options)
    backend = Backend.parse(options.backend, "backend")
    form = "ir" if backend == Backend.OPENVINO else "onnx"
    return benchmark_model(artifacts.ModelFile(model or Path(path).stem, backend, Path(path), form,
                                               options.precision if form == "ir" else None), tensors, options)


def benchmark_model(model: artifacts.ModelFile, tensors: Sequence[np.ndarray], options: BenchOptions
                    ) -> BenchReport:
    """The measurement itself: make the engine (timed: the load), run :func:`_measure`, report."""
    from ssdtool.backends import make_engine

    if not tensors:
        raise UsageError("a benchmark needs at least one input tensor")
    _reset_peak_rss()
    throughput = options.hint == PerformanceHint.THROUGHPUT
    if model.server is not None:
        began = time.perf_counter()
        engine = make_engine(model)  # reads the model's metadata from the server
        reason = "chosen by the server"
    elif model.backend == Backend.OPENVINO:
        plan = artifacts.precision_plan(model, options.inference_precision, options.device)
        began = time.perf_counter()
        # Streams are the plugin's choice for the hint (as in benchmark_app); requests only size the queue.
        engine = make_engine(model, device=options.device, hint=options.hint, inference_precision=plan.pin)
        reason = plan.reason
    else:
        began = time.perf_counter()
        engine = make_engine(model, requests=(options.requests or os.cpu_count() or 1) if throughput else 1)
        reason = "onnxruntime computes in f32 on the CPU"
    load_seconds = time.perf_counter() - began
    requests = (options.requests or engine.optimal_requests) if throughput else 1
    timings = _measure(engine, tensors, options, requests)
    peak = peak_rss_bytes()
    latencies = np.asarray(timings.latencies_ms, dtype=np.float64)
    remote = model.server is not None
    return BenchReport(
        model=model.model, backend="remote" if remote else model.backend.value,
        precision="served" if remote else options.precision if model.backend == Backend.OPENVINO else "FP32",
        device=engine.device if remote else options.device,
        hint=options.hint, requests=timings.requests,
        model_path=f"{engine.device}/v2/models/{model.path}" if remote else str(model.path),
        input_shape=tuple(engine.input_shape or tensors[0].shape), load_seconds=load_seconds,
        first_inference_ms=timings.first_ms, iterations=len(latencies), duration_seconds=timings.duration,
        latency_median_ms=float(np.median(latencies)), latency_p90_ms=float(np.percentile(latencies, 90)),
        latency_min_ms=float(latencies.min()), latency_max_ms=float(latencies.max()),
        latency_mean_ms=float(latencies.mean()), throughput_fps=len(latencies) / timings.duration,
        peak_rss_mb=peak / 2**20 if peak is not None else None, streams=engine.streams, threads=engine.threads,
        versions=_versions("requests" if remote else model.backend.value, options.precision),
        inference_precision=engine.inference_precision,
        inference_precision_requested="auto" if remote
        else inference_precisions.parse(options.inference_precision).value,
        inference_precision_reason=reason, image_input=model.form == "image")
