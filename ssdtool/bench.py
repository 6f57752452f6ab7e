"""Measure inference speed the way OpenVINO's ``benchmark_app`` does, on ssdtool's own models and engines.

One engine, one model, generated but real-looking images (not zeros: the data path and any data-dependent work,
NMS included, are exercised), preprocessed once before timing, so only the engine is measured. The first
inference is reported apart and excluded (it pays for lazy initialisation); throughput mode also runs one
excluded round over every request before timing.

* OpenVINO, ``latency``: one synchronous request, compiled with the LATENCY hint; latency is the wall time of
  each ``infer()`` call.
* OpenVINO, ``throughput``: an ``AsyncInferQueue`` of N requests (default: the compiled model's optimal number)
  on a THROUGHPUT-compiled model; latency is each request's own time (``InferRequest.latency``).
* onnxruntime, ``latency``: one session using every core, one run at a time.
* onnxruntime, ``throughput``: N threads (default: one per core) sharing one session with cores/N intra-op
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssdtool import precision as inference_precisions
from ssdtool.cache import Cache
from ssdtool.constants import Backend, IRPrecision, PerformanceHint
from ssdtool.errors import OfflineError, UsageError
from ssdtool.imaging import generated_images, normalized_input, raw_input, resize_rgb
from ssdtool.registry import ModelEntry

log = logging.getLogger("ssdtool.bench")

BACKENDS = Backend.values()
HINTS = PerformanceHint.values()
PRECISIONS = IRPrecision.values()
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
    gives what was read back. ``images``: distinct inputs cycled.
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
    offline: bool = False


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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = round(value, 4)
        return data


def check_options(options: BenchOptions) -> None:
    if options.backend not in BACKENDS:
        raise UsageError(f"unknown backend {options.backend!r}; expected one of {', '.join(BACKENDS)}")
    if options.hint not in HINTS:
        raise UsageError(f"unknown hint {options.hint!r}; expected one of {', '.join(HINTS)}")
    if options.precision not in PRECISIONS:
        raise UsageError(f"precision {options.precision!r} is not supported; expected one of {', '.join(PRECISIONS)}")
    if options.backend == "onnxruntime" and options.precision != "FP32":
        raise UsageError(f"onnxruntime runs the source ONNX, which is FP32; got --precision {options.precision}",
                         hint="use --backend openvino for FP16 and INT8 IRs")
    if options.backend == "onnxruntime" and options.device.upper() != "CPU":
        raise UsageError(f"the onnxruntime backend runs on the CPU only, got --device {options.device}")
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
    streams: int | None = None
    threads: int | None = None


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


def _run_openvino(engine: Any, tensors: Sequence[np.ndarray], options: BenchOptions) -> _Timings:
    from ssdtool.backends import import_engine

    ov = import_engine("openvino")
    compiled = engine.compiled
    ov_tensors = [ov.Tensor(tensor, shared_memory=True) for tensor in tensors]
    streams = _int_property(compiled, "NUM_STREAMS")
    threads = _int_property(compiled, "INFERENCE_NUM_THREADS")
    request = compiled.create_infer_request()
    request.set_input_tensor(ov_tensors[0])
    began = time.perf_counter()
    request.infer()
    first_ms = (time.perf_counter() - began) * 1000
    if options.hint == "latency":
        latencies: list[float] = []
        budget = _Budget(options.iterations, options.seconds)
        while (index := budget.take()) is not None:
            request.set_input_tensor(ov_tensors[index % len(ov_tensors)])
            began = time.perf_counter()
            request.infer()
            latencies.append((time.perf_counter() - began) * 1000)
        return _Timings(first_ms, latencies, time.perf_counter() - budget.began, 1, streams, threads)
    requests = options.requests or engine.optimal_requests
    queue = ov.AsyncInferQueue(compiled, requests)
    latencies = []
    finished: list[float] = []
    record = [False]

    def on_done(infer_request: Any, _userdata: Any) -> None:
        # An OpenVINO thread; list.append is atomic under the GIL.
        if record[0]:
            latencies.append(float(infer_request.latency))
            finished.append(time.perf_counter())

    queue.set_callback(on_done)
    for index in range(requests):  # warm-up round: every request (and stream) runs once, untimed
        queue.start_async({0: ov_tensors[index % len(ov_tensors)]})
    queue.wait_all()
    record[0] = True
    budget = _Budget(options.iterations, options.seconds)
    while (index := budget.take()) is not None:
        queue.start_async({0: ov_tensors[index % len(ov_tensors)]})  # blocks until a request is free
    queue.wait_all()
    duration = (max(finished) if finished else time.perf_counter()) - budget.began
    return _Timings(first_ms, latencies, duration, requests, streams, threads)


def _int_property(compiled: Any, name: str) -> int | None:
    try:
        return int(compiled.get_property(name))
    except Exception:  # not every device reports every property
        return None


def _run_onnxruntime(tensors: Sequence[np.ndarray], options: BenchOptions,
                     load: Callable[[int | None], Any]) -> tuple[_Timings, float]:
    cores = os.cpu_count() or 1
    requests = 1 if options.hint == "latency" else (options.requests or cores)
    threads = None if requests == 1 else max(1, cores // requests)
    began = time.perf_counter()
    engine = load(threads)
    load_seconds = time.perf_counter() - began
    session, name = engine.session, engine.input_name
    began = time.perf_counter()
    session.run(None, {name: tensors[0]})
    first_ms = (time.perf_counter() - began) * 1000
    latencies: list[float] = []
    errors: list[BaseException] = []
    if requests > 1:  # warm-up round, one run per thread, untimed
        warm = [threading.Thread(target=session.run, args=(None, {name: tensors[i % len(tensors)]}))
                for i in range(requests)]
        for thread in warm:
            thread.start()
        for thread in warm:
            thread.join()
    budget = _Budget(options.iterations, options.seconds)

    def worker() -> None:
        try:
            while (index := budget.take()) is not None:
                started = time.perf_counter()
                session.run(None, {name: tensors[index % len(tensors)]})
                latencies.append((time.perf_counter() - started) * 1000)
        except BaseException as exc:  # reported on the calling thread
            errors.append(exc)

    workers = [threading.Thread(target=worker, name=f"ssdtool-bench-{i}") for i in range(requests)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    if errors:
        raise errors[0]
    duration = time.perf_counter() - budget.began
    return _Timings(first_ms, latencies, duration, requests, None, threads or cores), load_seconds


# ------------------------------------------------------------------------------------------------ entry point
def input_tensors(entry: ModelEntry, backend: str, count: int = BENCH_IMAGES, input_type: str = "f32",
                  layout: str = "NCHW") -> list[np.ndarray]:
    """``count`` generated images preprocessed for ``backend``: normalized RGB for onnxruntime (the source model),
    raw BGR pixels for an ssdtool IR."""
    tensors = []
    for rgb in generated_images(count, seed=BENCH_SEED, size=IMAGE_SIZE):
        resized = resize_rgb(rgb, entry.input)
        tensors.append(normalized_input(resized, entry.input) if backend == "onnxruntime"
                       else raw_input(resized, entry.convert.color_order, layout, input_type))
    return tensors


def _versions(backend: str, precision: str) -> dict[str, str]:
    from importlib import metadata

    from ssdtool import __version__

    versions = {"ssdtool": __version__}
    for dist in (backend, "nncf") if precision == "INT8" else (backend,):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


def model_file(entry: ModelEntry, cache: Cache, options: BenchOptions,
               progress: Callable[[Any], None] | None = None) -> Path:
    """The file the benchmark runs, downloaded or converted first when missing (unless ``offline``)."""
    if options.backend == "onnxruntime":
        from ssdtool.download import ensure_downloaded

        try:
            return ensure_downloaded(entry, cache, offline=options.offline, progress=progress)
        except OfflineError as exc:
            raise OfflineError(exc.message, hint=f"run 'ssdtool download {entry.name}' first, or drop --offline"
                               ) from exc
    from ssdtool.convert import ConvertOptions, convert

    return convert(entry, cache, ConvertOptions(precision=options.precision), offline=options.offline,
                   progress=progress).xml


def benchmark(entry: ModelEntry, cache: Cache, options: BenchOptions | None = None, *,
              progress: Callable[[Any], None] | None = None) -> BenchReport:
    """Benchmark ``entry`` with ``options`` (see :class:`BenchOptions` and the module docstring).

    The model is downloaded (onnxruntime) or converted (OpenVINO, including INT8 for models whose calibration can
    be chosen automatically) when missing. ``progress`` receives download events.
    """
    options = options or BenchOptions()
    check_options(options)
    path = model_file(entry, cache, options, progress)
    return benchmark_file(path, input_tensors(entry, options.backend, options.images), options, model=entry.name)


def benchmark_file(path: Path, tensors: Sequence[np.ndarray], options: BenchOptions, *, model: str = ""
                   ) -> BenchReport:
    """Benchmark one model file (an IR or ONNX for OpenVINO, an ONNX for onnxruntime) on ready input tensors.

    The engine-only core of :func:`benchmark`, also used by ``benchmarks/`` to measure peer models (a plain
    ``ovc`` conversion, the source ONNX) with exactly the same loop. ``options.precision`` is only reported.
    """
    check_options(options)
    if not tensors:
        raise UsageError("benchmark_file needs at least one input tensor")
    _reset_peak_rss()
    if options.backend == "openvino":
        from ssdtool.backends.openvino import OpenVinoEngine, device_facts
        from ssdtool.provenance import read_provenance

        provenance = read_provenance(Path(path))
        plan = inference_precisions.plan(options.inference_precision, device_facts(options.device),
                                         inference_precisions.recorded_checks(provenance),
                                         model=model or Path(path).stem)
        if options.precision == "INT8":
            from ssdtool.quantize import recipe_warning

            if warning := recipe_warning(provenance, model or Path(path).stem):
                log.warning("%s", warning)
        log.log(plan.level, "inference precision: %s", plan.reason)
        began = time.perf_counter()
        # Streams are the plugin's choice for the hint (as in benchmark_app); requests only size the queue.
        engine = OpenVinoEngine(path, device=options.device, hint=options.hint.upper(), inference_precision=plan.pin)
        load_seconds = time.perf_counter() - began
        timings = _run_openvino(engine, tensors, options)
        input_shape = engine.input_shape or tuple(tensors[0].shape)
        ran, reason = engine.inference_precision, plan.reason
    else:
        from ssdtool.backends.onnxruntime import OnnxRuntimeEngine

        timings, load_seconds = _run_onnxruntime(tensors, options,
                                                 lambda threads: OnnxRuntimeEngine(path, threads=threads))
        input_shape = tuple(tensors[0].shape)
        ran, reason = "f32", "onnxruntime computes in f32 on the CPU"
    peak = peak_rss_bytes()
    latencies = np.asarray(timings.latencies_ms, dtype=np.float64)
    iterations = len(latencies)
    return BenchReport(
        model=model or Path(path).stem, backend=options.backend,
        precision=options.precision if options.backend == "openvino" else "FP32", device=options.device,
        hint=options.hint, requests=timings.requests, model_path=str(path), input_shape=tuple(input_shape),
        load_seconds=load_seconds, first_inference_ms=timings.first_ms, iterations=iterations,
        duration_seconds=timings.duration,
        latency_median_ms=float(np.median(latencies)), latency_p90_ms=float(np.percentile(latencies, 90)),
        latency_min_ms=float(latencies.min()), latency_max_ms=float(latencies.max()),
        latency_mean_ms=float(latencies.mean()), throughput_fps=iterations / timings.duration,
        peak_rss_mb=peak / 2**20 if peak is not None else None, streams=timings.streams, threads=timings.threads,
        versions=_versions(options.backend, options.precision), inference_precision=ran,
        inference_precision_requested=inference_precisions.parse(options.inference_precision).value,
        inference_precision_reason=reason)
