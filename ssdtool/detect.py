"""The :class:`Detector` API: one model through one engine, for one image or a stream of them.

A detector checks its :class:`~ssdtool.backends.spec.EngineSpec` (:func:`ssdtool.backends.prepare`), asks
:mod:`ssdtool.artifacts` for the model file its backend runs (downloaded or converted on first use), opens the
engine (:func:`ssdtool.backends.open_engine`) in a helper thread while the first images decode
(:mod:`ssdtool.pipeline`), and turns
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssdtool import artifacts
from ssdtool.backends import backend_rules, open_engine, plan_engine, prepare
from ssdtool.backends.spec import AUTO_BACKEND, EnginePlan, EngineSpec, ModelFile, RunInfo, engine_spec
from ssdtool.cache import Cache
from ssdtool.constants import InferencePrecision, PerformanceHint
from ssdtool.detections import DEFAULT_THRESHOLD, Detection, ImageResult, detections_from_arrays, postprocess
from ssdtool.errors import ImageError, UsageError
from ssdtool.imaging import DEFAULT_DECODE_MEMORY, DEFAULT_MAX_PIXELS, ImageSource
from ssdtool.labels import resolve_classes
from ssdtool.pipeline import ImagePreparer, Prefetch, ordered_outputs, source_name
from ssdtool.registry import ModelEntry, Registry, load_registry

if TYPE_CHECKING:
    from ssdtool.backends import Engine

log = logging.getLogger("ssdtool.detect")

PERFORMANCE_MODES = ("auto", *PerformanceHint.values())
__all__ = ["PERFORMANCE_MODES", "Detector", "EngineSpec", "RunInfo"]


def _check_arguments(performance: str, workers: int | None, decode_memory: int) -> None:
    if performance not in PERFORMANCE_MODES:
        raise UsageError(f"performance must be one of {', '.join(PERFORMANCE_MODES)}, got {performance!r}")
    if workers is not None and workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    if decode_memory < 1:
        raise UsageError(f"decode_memory must be at least 1 byte, got {decode_memory}")


class _Engines:
    """The detector's engines, one per performance hint, each made on first use in a helper thread: compiling
    (or loading the compiled blob) is mostly C++ that releases the GIL, so it overlaps with decoding images."""

    def __init__(self, model_file: ModelFile, cache: Cache, spec: EngineSpec) -> None:
        self.model_file, self.cache, self.spec = model_file, cache, spec
        self._futures: dict[str, Future[Engine]] = {}
        self._run_infos: dict[str, RunInfo] = {}
        self._starter: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._plan: EnginePlan | None = None

    def _key(self, performance: str) -> str:
        if performance not in PerformanceHint.values():
            raise UsageError(f"performance must be latency or throughput, got {performance!r}")
        # an engine without hints (onnxruntime), or a server configured on its side, serves both
        return PerformanceHint.LATENCY.value if backend_rules(self.spec).one_engine else performance

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
        started = time.perf_counter()
        with self._lock:
            if self._plan is None:  # decided (and logged) once for every hint's engine
                self._plan = plan_engine(self.model_file, self.spec)
        engine, info = open_engine(self.model_file, self.spec.replace(hint=performance), self.cache, plan=self._plan)
        self._run_infos[performance] = info
        log.debug("%s engine (%s hint) ready in %.2f s: %s", info.backend, performance, time.perf_counter() - started,
                  info.describe())
        return engine

    def last(self) -> str | None:
        """The performance hint of the engine made last."""
        return next(reversed(self._run_infos), None)

    def run_info(self, performance: str) -> RunInfo:
        key = self._key(performance)
        engine = self.start(key).result()
        info = self._run_infos[key]
        if engine.inference_precision != info.inference_precision:
            # an engine may learn its precision later (a server reports it with its answers)
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
    ``engine``: what runs it, an :class:`~ssdtool.backends.spec.EngineSpec` or a backend name: "openvino" (the
    converted IR, converted on first use), "onnxruntime" (the source ONNX) or "auto" (OpenVINO when it can be
    imported, else onnxruntime). ``settings`` change the spec's fields by name: ``precision`` picks the IR
    (FP32/FP16/INT8, OpenVINO only); ``device`` the OpenVINO device (CPU, GPU, AUTO, HETERO:..., any the runtime
    accepts) or the onnxruntime execution provider (CPU, CUDA, TensorRT, OpenVINO, ...); ``inference_precision``
    the arithmetic - "auto" (the device's default where this IR was checked at it on such a device, else f32; see
    :mod:`ssdtool.precision`), "f32", "bf16" or "f16" (pinned; an error when the device cannot run it);
    onnxruntime accepts "auto" and "f32". ``server``: run the model on an Open Inference Protocol server
    (:class:`~ssdtool.serving.ServerTarget`) instead of here; nothing is downloaded, and precision and device are
    the server's. :meth:`run_info` reports what ran. The model is downloaded on first use unless ``offline``
    (None: ``$SSDTOOL_OFFLINE``), in which case a missing file raises :class:`OfflineError`. ``threshold``,
    ``classes`` and ``max_detections`` filter results (see :func:`~ssdtool.detections.postprocess`).
    ``performance``: the hint - "latency" for one image at a time, "throughput" for streams, "auto" (the spec's
    hint when it has one; else latency for ``detector(image)``, throughput for :meth:`many`; each is compiled on
    first use, from the compiled-model cache after the first run). ``workers``: threads decoding images ahead of
    inference. ``max_pixels``: see :func:`~ssdtool.imaging.load_image`. ``decode_memory``: bytes that image files
    being decoded at once may take (see :class:`~ssdtool.pipeline.ImagePreparer`). ``progress`` receives download
    events when the model is fetched. ``image_input`` (a spec field too): run the image-input IR (OpenVINO only),
    which takes each whole image and resizes it inside (docs/convert.md).
    """

    def __init__(self, model: str | ModelEntry | None = None, engine: EngineSpec | str = AUTO_BACKEND, *,
                 threshold: float = DEFAULT_THRESHOLD, classes: Iterable[str | int] | str | None = None,
                 max_detections: int | None = None, cache_dir: str | os.PathLike[str] | Cache | None = None,
                 registry: str | os.PathLike[str] | Registry | None = None, offline: bool | None = None,
                 performance: str = "auto", workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 progress: Callable[[Any], None] | None = None, decode_memory: int = DEFAULT_DECODE_MEMORY,
                 **settings: Any) -> None:
        _check_arguments(performance, workers, decode_memory)
        asked = engine_spec(engine, **settings)
        spec = prepare(asked)  # a bad backend or device fails now, not at the first image
        self.entry: ModelEntry = model if isinstance(model, ModelEntry) else (
            registry if isinstance(registry, Registry) else load_registry(registry)).model(model)
        self.cache: Cache = cache_dir if isinstance(cache_dir, Cache) else Cache.at(cache_dir)
        self.threshold, self.max_detections = threshold, max_detections
        self.classes: frozenset[int] | None = resolve_classes(self.entry, classes)
        detections_from_arrays(np.zeros((0, 4)), np.zeros(0), np.zeros(0), self.entry, (1, 1),
                               threshold=threshold, classes=self.classes, max_detections=max_detections)  # validate
        if performance == "auto" and asked.hint is not None:
            performance = asked.hint
        self.spec, self.device, self.performance = spec, spec.device, performance
        self.workers = workers or _default_workers()
        self.backend: str = backend_rules(spec).name
        self.model_file = artifacts.model_file(self.entry, self.cache, spec, offline=offline, progress=progress)
        self.model_path, self.form, self.precision = self.model_file.path, self.model_file.form, \
            self.model_file.precision
        self._prepare = ImagePreparer(self.entry, self.form, max_pixels=max_pixels, decode_memory=decode_memory)
        self._engines = _Engines(self.model_file, self.cache, spec)
        if performance != "auto":
            self._engines.start(performance)  # compile while the caller gets its images ready

    @property
    def requested_inference_precision(self) -> InferencePrecision:
        """What the caller asked for (``auto`` or a precision); :meth:`run_info` says what ran."""
        return InferencePrecision(self.spec.inference_precision)

    @property
    def compiled_cache_dir(self) -> Path:
        """OpenVINO's compiled-model cache for this model (blobs per device and hint; safe to delete)."""
        return self.cache.compiled_model_dir(self.entry)

    def engine(self, performance: str = PerformanceHint.LATENCY.value) -> Engine:
        """The engine for ``performance`` ("latency" or "throughput"), created on first use and kept."""
        return self._engines.start(performance).result()

    def run_info(self, performance: str | None = None) -> RunInfo:
        """What runs for ``performance`` ("latency" or "throughput"; default: the engine made last), making the
        engine first if needed: the inference precision is read back from it."""
        return self._engines.run_info(performance or self._engines.last() or self._single_image_hint())

    def _single_image_hint(self) -> str:
        """The hint for one image at a time: latency, unless the detector was made for one hint."""
        return PerformanceHint.LATENCY.value if self.performance == "auto" else self.performance

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
        engine = self._engines.start(self._single_image_hint())
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
            mode = (PerformanceHint.LATENCY if isinstance(images, Sequence) and len(images) <= 1
                    else PerformanceHint.THROUGHPUT).value
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
