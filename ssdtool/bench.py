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
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssdtool import artifacts
from ssdtool.backends import backend_rules, open_engine, plan_engine, prepare
from ssdtool.backends.spec import EngineSpec, ModelFile, takes_engine
from ssdtool.cache import Cache
from ssdtool.constants import Backend, InputLayout, InputType, IRPrecision, PerformanceHint
from ssdtool.errors import UsageError
from ssdtool.imaging import generated_images, preprocess
from ssdtool.registry import ModelEntry

if TYPE_CHECKING:
    from ssdtool.backends import Engine

log = logging.getLogger("ssdtool.bench")

#: The backends bench takes (``auto`` would measure whichever imports: bench names what it measures).
BACKENDS = Backend.values()
DEFAULT_SECONDS = 20.0  # when neither iterations nor a time is given (benchmark_app uses 60 s)
BENCH_IMAGES = 4
BENCH_SEED = 21
IMAGE_SIZE = (640, 480)


#: bench's engine unless told otherwise: OpenVINO, and no compiled-model cache, so the load figure is the compile
#: (as benchmark_app's is) whatever earlier runs left (:attr:`EngineSpec.compiled_cache`).
BENCH_ENGINE = EngineSpec(backend=Backend.OPENVINO.value, compiled_cache=False)


@takes_engine
@dataclass(frozen=True)
class BenchOptions:
    """What to measure. ``engine``: what runs it (:class:`~ssdtool.backends.spec.EngineSpec`; its fields may be
    given as keywords instead: ``BenchOptions(backend="onnxruntime", hint="throughput")``). ``iterations`` and
    ``seconds`` are exclusive; neither means ``DEFAULT_SECONDS``. ``images``: distinct inputs cycled.

    The engine's ``hint`` (default latency) and ``requests``: parallel requests in throughput mode (OpenVINO: the
    queue size, default the compiled model's optimal number; onnxruntime: threads, default one per core; a server:
    its ``concurrency``, and throughput when that is more than one); latency mode always uses one. ``precision``
    picks the IR (OpenVINO; default the registry's); onnxruntime runs the source ONNX, which is FP32.
    ``inference_precision``: the arithmetic, as for detection; the report gives what was read back.
    ``image_input``: the image-input IR, fed the generated images whole (640x480), so its inner resize is part of
    every timed inference.
    """

    engine: EngineSpec = BENCH_ENGINE
    iterations: int | None = None
    seconds: float | None = None
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
    #: The image-input IR ran, fed whole images (its inner resize is in the timings).
    image_input: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = round(value, 4)
        return data


def check_options(options: BenchOptions) -> EngineSpec:
    """Refuse what cannot be measured, before anything is fetched; the engine spec, checked
    (:func:`ssdtool.backends.prepare`)."""
    asked = options.engine
    if asked.image_input and asked.backend in BACKENDS and backend_rules(asked).model_form != "ir":
        raise UsageError("--image-input measures the local image-input IR with OpenVINO",
                         hint="drop --image-input, or use --backend openvino without --server")
    spec = prepare(asked, backends=BACKENDS)
    if options.iterations is not None and options.seconds is not None:
        raise UsageError("give either a number of iterations or a time, not both")
    if options.iterations is not None and options.iterations < 1:
        raise UsageError(f"iterations must be at least 1, got {options.iterations}")
    if options.seconds is not None and options.seconds <= 0:
        raise UsageError(f"the time must be positive, got {options.seconds} s")
    if options.images < 1:
        raise UsageError(f"images must be at least 1, got {options.images}")
    return spec


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
def input_tensors(entry: ModelEntry, form: str, count: int = BENCH_IMAGES, input_type: str = InputType.F32.value,
                  layout: str = InputLayout.NCHW.value, image_input: bool = False) -> list[np.ndarray]:
    """``count`` generated images preprocessed for a model file of ``form`` ("onnx": normalized RGB, the source
    model; "ir": raw BGR pixels, an ssdtool IR, served or not; "image", or ``image_input``: the whole 640x480
    images, for the image-input IR), or for the file a backend named runs."""
    if form not in ("ir", "onnx", "image"):
        form = "onnx" if backend_rules(form).model_form == "onnx" else "ir"
    if image_input and form == "ir":
        form = "image"
    return [preprocess(rgb, entry, form=form, input_type=input_type, input_layout=layout)
            for rgb in generated_images(count, seed=BENCH_SEED, size=IMAGE_SIZE)]


def _versions(distribution: str | None, weights: str) -> dict[str, str]:
    from importlib import metadata

    from ssdtool import __version__

    versions = {"ssdtool": __version__}
    wanted = [dist for dist in (distribution, "nncf" if weights == IRPrecision.INT8 else None) if dist]
    for dist in wanted:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


def benchmark(entry: ModelEntry, cache: Cache, options: BenchOptions | None = None, *,
              progress: Callable[[Any], None] | None = None) -> BenchReport:
    """Benchmark ``entry`` with ``options`` (see :class:`BenchOptions` and the module docstring).

    The model is downloaded (onnxruntime) or converted (OpenVINO, including INT8 for models whose calibration can
    be chosen automatically) when missing (:func:`ssdtool.artifacts.model_file`); a server's model is measured
    where it runs. ``progress`` receives download events.
    """
    options = options or BenchOptions()
    spec = check_options(options)
    model = artifacts.model_file(entry, cache, spec, offline=options.offline, progress=progress)
    return benchmark_model(model, input_tensors(entry, model.form, options.images), options, cache=cache)


def benchmark_file(path: Path, tensors: Sequence[np.ndarray], options: BenchOptions, *, model: str = ""
                   ) -> BenchReport:
    """Benchmark one model file (an IR or ONNX for OpenVINO, an ONNX for onnxruntime) on ready input tensors:
    the same loop as :func:`benchmark`, for peer models (a plain ``ovc`` conversion, the source ONNX) in
    ``benchmarks/``. The engine's ``precision`` is only reported."""
    spec = check_options(options)
    form = backend_rules(spec).model_form
    weights = (spec.precision or IRPrecision.FP32.value) if form == "ir" else None
    return benchmark_model(ModelFile(model or Path(path).stem, Backend(spec.backend), Path(path), form, weights),
                           tensors, options)


def benchmark_model(model: ModelFile, tensors: Sequence[np.ndarray], options: BenchOptions, *,
                    cache: Cache | None = None) -> BenchReport:
    """The measurement itself: open the engine (timed: the load), run :func:`_measure`, report."""
    if not tensors:
        raise UsageError("a benchmark needs at least one input tensor")
    spec = check_options(options)
    spec = spec.replace(hint=spec.hint_or(PerformanceHint.LATENCY.value))
    _reset_peak_rss()
    decided = plan_engine(model, spec)  # reads the IR's records and logs the decision, outside the load time
    began = time.perf_counter()
    engine, info = open_engine(model, spec, cache, plan=decided)
    load_seconds = time.perf_counter() - began
    throughput = spec.hint == PerformanceHint.THROUGHPUT
    requests = (spec.requests or engine.optimal_requests) if throughput else 1
    timings = _measure(engine, tensors, options, requests)
    peak = peak_rss_bytes()
    latencies = np.asarray(timings.latencies_ms, dtype=np.float64)
    return BenchReport(
        model=model.model, backend=info.backend, precision=info.weights, device=info.device, hint=spec.hint,
        requests=timings.requests, model_path=info.model_path,
        input_shape=tuple(engine.input_shape or tensors[0].shape), load_seconds=load_seconds,
        first_inference_ms=timings.first_ms, iterations=len(latencies), duration_seconds=timings.duration,
        latency_median_ms=float(np.median(latencies)), latency_p90_ms=float(np.percentile(latencies, 90)),
        latency_min_ms=float(latencies.min()), latency_max_ms=float(latencies.max()),
        latency_mean_ms=float(latencies.mean()), throughput_fps=len(latencies) / timings.duration,
        peak_rss_mb=peak / 2**20 if peak is not None else None, streams=engine.streams, threads=engine.threads,
        versions=_versions(backend_rules(spec).distribution, info.weights),
        inference_precision=engine.inference_precision,  # a server reports it with its answers
        inference_precision_requested=info.inference_precision_requested,
        inference_precision_reason=info.inference_precision_reason, image_input=info.image_input)
