"""The :class:`Detector` API: one model through one engine, for one image or a stream of them.

A detector asks :mod:`ssdtool.artifacts` for the model file its backend runs (downloaded or converted on first
use), compiles the engine in a helper thread while the first images decode (:mod:`ssdtool.pipeline`), and turns
outputs into :class:`~ssdtool.detections.Detection` records (:mod:`ssdtool.detections`). Library code never
prints: per-image problems become :class:`ImageError` (an :class:`InputError`, exit code 30) for single images,
and ``ImageResult.error`` records in :meth:`Detector.many`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssdtool import artifacts
from ssdtool import precision as inference_precisions
from ssdtool.cache import Cache
from ssdtool.constants import Backend, InferencePrecision, PerformanceHint
from ssdtool.detections import DEFAULT_THRESHOLD, Detection, ImageResult, detections_from_arrays, postprocess
from ssdtool.errors import BackendError, ImageError, UsageError
from ssdtool.imaging import DEFAULT_DECODE_MEMORY, DEFAULT_MAX_PIXELS, ImageSource
from ssdtool.labels import resolve_classes
from ssdtool.pipeline import ImagePreparer, Prefetch, ordered_outputs, source_name
from ssdtool.registry import ModelEntry, Registry, load_registry

if TYPE_CHECKING:
    from ssdtool.backends import Engine
    from ssdtool.serving.protocol import ServerTarget

log = logging.getLogger("ssdtool.detect")

PERFORMANCE_MODES = ("auto", *PerformanceHint.values())


@dataclass(frozen=True)
class RunInfo:
    """What ran: model, engine, device, the IR's weights and the inference precision read back from the engine.

    ``precision`` is the IR's weights (FP32/FP16/INT8; None for onnxruntime, which runs the source ONNX);
    ``inference_precision`` the arithmetic that ran (f32, bf16, f16; None when the device does not report it);
    ``inference_precision_requested`` what was asked (``auto`` or a precision) and ``inference_precision_reason`` why
    that became what ran.
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


def _check_arguments(performance: str, workers: int | None, decode_memory: int) -> None:
    if performance not in PERFORMANCE_MODES:
        raise UsageError(f"performance must be one of {', '.join(PERFORMANCE_MODES)}, got {performance!r}")
    if workers is not None and workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    if decode_memory < 1:
        raise UsageError(f"decode_memory must be at least 1 byte, got {decode_memory}")


def _check_device(backend: str, device: str) -> None:
    """A bad device fails when the detector is made, not at the first image."""
    if backend == Backend.OPENVINO and device != "CPU":
        from ssdtool.backends.openvino import available_devices, check_device

        check_device(device, available_devices())
    elif backend == Backend.ONNXRUNTIME and device.upper() != "CPU":
        raise BackendError(f"the onnxruntime backend runs on the CPU only, got --device {device}",
                           hint="use --backend openvino for other devices")


def _check_remote(precision: str | None, requested: InferencePrecision, device: str, image_input: bool = False
                  ) -> None:
    """Precisions, device and IR are chosen where the model runs: on the server."""
    if precision is not None or requested != InferencePrecision.AUTO or device != "CPU" or image_input:
        raise UsageError("--precision, --inference-precision, --device and --image-input choose how a local engine "
                         "runs; with --server the server has chosen them",
                         hint="pass them to 'ssdtool serve' (or the server's own configuration) instead")


class _Engines:
    """The detector's engines, one per performance hint, each made on first use in a helper thread: compiling
    (or loading the compiled blob) is mostly C++ that releases the GIL, so it overlaps with decoding images."""

    def __init__(self, model_file: artifacts.ModelFile, cache: Cache, device: str,
                 requested: InferencePrecision) -> None:
        self.model_file, self.cache, self.device, self.requested = model_file, cache, device, requested
        self._futures: dict[str, Future[Engine]] = {}
        self._run_infos: dict[str, RunInfo] = {}
        self._starter: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._plan: inference_precisions.PrecisionPlan | None = None

    def _key(self, performance: str) -> str:
        if performance not in PerformanceHint.values():
            raise UsageError(f"performance must be latency or throughput, got {performance!r}")
        # onnxruntime: one session serves both; a server is configured on its side
        single = self.model_file.backend == Backend.ONNXRUNTIME or self.model_file.server is not None
        return PerformanceHint.LATENCY.value if single else performance

    def start(self, performance: str) -> Future[Engine]:
        """Start making the engine for ``performance`` (once); ``.result()`` waits for it."""
        key = self._key(performance)
        with self._lock:
            if (future := self._futures.get(key)) is None:
                if self._starter is None:
                    self._starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssdtool-engine")
                future = self._futures[key] = self._starter.submit(self._make, key)
            return future

    def _make(self, performance: str) -> Engine:
        from ssdtool.backends import make_engine

        started = time.perf_counter()
        model = self.model_file
        if model.server is not None:
            engine = make_engine(model)
            info = RunInfo(model=model.model, backend="remote", device=engine.device, precision=None,
                           inference_precision=engine.inference_precision, inference_precision_requested="auto",
                           inference_precision_reason="chosen by the server",
                           model_path=f"{engine.device}/v2/models/{model.path}", performance=performance)
            self._run_infos[performance] = info
            return engine
        if model.backend == Backend.OPENVINO:
            with self._lock:
                if self._plan is None:
                    self._plan = artifacts.precision_plan(model, self.requested, self.device)
            reason = self._plan.reason
            engine = make_engine(model, device=self.device, hint=performance, inference_precision=self._plan.pin,
                                 cache_dir=self.cache.usable_compiled_model_dir(model.model))
        else:
            engine = make_engine(model)
            reason = "onnxruntime computes in f32 on the CPU"
        info = RunInfo(model=model.model, backend=model.backend.value, device=engine.device,
                       precision=model.precision, inference_precision=engine.inference_precision,
                       inference_precision_requested=self.requested.value, inference_precision_reason=reason,
                       model_path=str(model.path), performance=performance, image_input=model.form == "image")
        self._run_infos[performance] = info
        log.debug("%s engine (%s hint) ready in %.2f s: %s", model.backend.value, performance,
                  time.perf_counter() - started, info.describe())
        return engine

    def last(self) -> str | None:
        """The performance hint of the engine made last."""
        return next(reversed(self._run_infos), None)

    def run_info(self, performance: str) -> RunInfo:
        key = self._key(performance)
        engine = self.start(key).result()
        info = self._run_infos[key]
        if self.model_file.server is not None and engine.inference_precision != info.inference_precision:
            # a server reports its precision with its answers: known from the first result on
            info = self._run_infos[key] = dataclasses.replace(info, inference_precision=engine.inference_precision)
        return info

    def close(self) -> None:
        with self._lock:
            starter, self._starter = self._starter, None
            self._futures.clear()
        if starter is not None:
            starter.shutdown(wait=True)


def _default_workers() -> int:
    # Decoding and resizing take a few percent of an inference; two threads keep ahead of any engine here.
    return max(1, min(4, os.cpu_count() or 1))


class Detector:
    """Detect objects with one model through one engine; create once, call many times.

    ``model``: a registry name (default: the registry's default model) or a :class:`ModelEntry`.
    ``backend``: "openvino" (the converted IR, converted on first use), "onnxruntime" (the source ONNX) or "auto"
    (OpenVINO when it can be imported, else onnxruntime). The model is downloaded on first use unless
    ``offline`` (None: ``$SSDTOOL_OFFLINE``), in which case a missing file raises :class:`OfflineError`.
    ``precision`` picks the IR (FP32/FP16/INT8, OpenVINO only); ``device`` the OpenVINO device.
    ``inference_precision``: the arithmetic OpenVINO runs the IR in - "auto" (the device's default where this IR
    was checked at it, else f32; see :mod:`ssdtool.precision`), "f32", "bf16" or "f16" (pinned; an error when the
    device cannot run it); onnxruntime accepts "auto" and "f32". :meth:`run_info` reports what ran. ``threshold``,
    ``classes`` and ``max_detections`` filter results (see :func:`~ssdtool.detections.postprocess`).
    ``performance``: OpenVINO's hint - "latency" for one image at a time, "throughput" for streams, "auto" (latency
    for ``detector(image)``, throughput for :meth:`many`; each is compiled on first use, from the compiled-model
    cache after the first run). ``workers``: threads decoding images ahead of inference. ``max_pixels``: see
    :func:`~ssdtool.imaging.load_image`. ``decode_memory``: bytes that image files being decoded at once may take
    (see :class:`~ssdtool.pipeline.ImagePreparer`). ``progress`` receives download events when the model is fetched.
    ``server``: run the model on an Open Inference Protocol server (:class:`~ssdtool.serving.ServerTarget`)
    instead of here; nothing is downloaded, and precision and device are the server's. ``image_input``: run the
    image-input IR (OpenVINO only), which takes each whole image and resizes it inside (docs/convert.md).
    """

    def __init__(self, model: str | ModelEntry | None = None, backend: str = "auto", *,
                 precision: str | None = None, inference_precision: str = "auto", device: str = "CPU",
                 threshold: float = DEFAULT_THRESHOLD, classes: Iterable[str | int] | str | None = None,
                 max_detections: int | None = None, cache_dir: str | os.PathLike[str] | Cache | None = None,
                 registry: str | os.PathLike[str] | Registry | None = None, offline: bool | None = None,
                 performance: str = "auto", workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 progress: Callable[[Any], None] | None = None, decode_memory: int = DEFAULT_DECODE_MEMORY,
                 server: ServerTarget | None = None, image_input: bool = False) -> None:
        _check_arguments(performance, workers, decode_memory)
        self.entry: ModelEntry = model if isinstance(model, ModelEntry) else (
            registry if isinstance(registry, Registry) else load_registry(registry)).model(model)
        self.cache: Cache = cache_dir if isinstance(cache_dir, Cache) else Cache.at(cache_dir)
        self.threshold, self.max_detections = threshold, max_detections
        self.classes: frozenset[int] | None = resolve_classes(self.entry, classes)
        detections_from_arrays(np.zeros((0, 4)), np.zeros(0), np.zeros(0), self.entry, (1, 1),
                               threshold=threshold, classes=self.classes, max_detections=max_detections)  # validate
        self.device, self.performance = device, performance
        self.workers = workers or _default_workers()
        requested = inference_precisions.parse(inference_precision)
        if server is not None:
            _check_remote(precision, requested, device, image_input)
            self.backend = "remote"
            self.model_file = artifacts.remote_model_file(self.entry, server)
        else:
            self.backend = artifacts.resolve_backend(backend, precision, requested).value
            _check_device(self.backend, device)
            self.model_file = artifacts.model_file(self.entry, self.cache, self.backend, precision,
                                                   offline=offline, progress=progress, image_input=image_input)
        self.model_path, self.form, self.precision = self.model_file.path, self.model_file.form, \
            self.model_file.precision
        self._prepare = ImagePreparer(self.entry, self.form, max_pixels=max_pixels, decode_memory=decode_memory)
        self._engines = _Engines(self.model_file, self.cache, device, requested)
        if performance != "auto":
            self._engines.start(performance)  # compile while the caller gets its images ready

    @property
    def requested_inference_precision(self) -> InferencePrecision:
        """What the caller asked for (``auto`` or a precision); :meth:`run_info` says what ran."""
        return self._engines.requested

    @property
    def compiled_cache_dir(self) -> Path:
        """OpenVINO's compiled-model cache for this model (blobs per device and hint; safe to delete)."""
        return self.cache.compiled_model_dir(self.entry)

    def engine(self, performance: str = "latency") -> Engine:
        """The engine for ``performance`` ("latency" or "throughput"), created on first use and kept."""
        return self._engines.start(performance).result()

    def run_info(self, performance: str | None = None) -> RunInfo:
        """What runs for ``performance`` ("latency" or "throughput"; default: the engine made last), making the
        engine first if needed: the inference precision is read back from it."""
        return self._engines.run_info(performance or self._engines.last()
                                      or ("latency" if self.performance == "auto" else self.performance))

    def close(self) -> None:
        """Release the engines (compiled models and sessions hold the weights) and the helper threads."""
        self._engines.close()
        self._prepare.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Detector(model={self.entry.name!r}, backend={self.backend!r}, device={self.device!r}, "
                f"precision={self.precision!r}, threshold={self.threshold})")

    # -- running ---------------------------------------------------------------------------------------------
    def detections_from_outputs(self, outputs: dict[str, np.ndarray], width: int, height: int) -> list[Detection]:
        """The engine's ``outputs`` for an image of ``width`` x ``height`` as this detector's filtered detections
        (for callers that drive :meth:`engine` themselves, such as evaluation)."""
        return self._detections(outputs, width, height)

    def _detections(self, outputs: dict[str, np.ndarray], width: int, height: int) -> list[Detection]:
        return postprocess(outputs, self.entry, (width, height), form=self.form, threshold=self.threshold,
                           classes=self.classes, max_detections=self.max_detections)

    def __call__(self, image: ImageSource, *, channel_order: str = "RGB") -> list[Detection]:
        """Detections in one image (a path, PIL image or numpy array in ``channel_order``), best first.

        Raises :class:`ImageError` when the image cannot be used.
        """
        engine = self._engines.start("latency" if self.performance == "auto" else self.performance)
        prepared = self._prepare(image, channel_order)  # the first call compiles meanwhile
        assert prepared.tensor is not None
        return self._detections(engine.result().infer(prepared.tensor), prepared.width, prepared.height)

    def many(self, images: Iterable[ImageSource], *, channel_order: str = "RGB", keep_images: bool = False
             ) -> Iterator[ImageResult]:
        """Detect in every image of ``images``, yielding one :class:`ImageResult` per input, in input order.

        A bad image gives a result with ``error`` set and does not stop the others. Images are decoded and
        resized by ``workers`` threads a few images ahead of the engine; OpenVINO keeps its optimal number of
        async requests in flight. ``images`` is read lazily (a generator works) and the results stream out, so
        memory stays bounded whatever the number of images.
        """
        mode = self.performance
        if mode == "auto":
            mode = "latency" if isinstance(images, Sequence) and len(images) <= 1 else "throughput"
        engine_future = self._engines.start(mode)
        prefetch = Prefetch(self._prepare, images, channel_order=channel_order, keep_images=keep_images,
                            workers=self.workers)
        try:
            engine = engine_future.result()  # the first images decode meanwhile
            busy_before, count = engine.busy_seconds, 0
            for index, source, prepared, outputs in ordered_outputs(engine, prefetch):
                count += 1
                if isinstance(prepared, ImageError) or outputs is None:
                    yield ImageResult(index=index, path=source_name(source), width=None, height=None,
                                      error=prepared.message if isinstance(prepared, ImageError) else None)
                    continue
                yield ImageResult(index=index, path=source_name(source), width=prepared.width,
                                  height=prepared.height, image=prepared.rgb,
                                  detections=tuple(self._detections(outputs, prepared.width, prepared.height)))
            log.debug("%d image(s); the engine was busy %.3f s", count, engine.busy_seconds - busy_before)
        finally:
            prefetch.close()
