"""onnxruntime engine: runs a source ONNX model on the CPU. One session per engine, created once.

With one request a run uses every core (intra-op threads). With ``requests`` N > 1 the session gets cores/N
intra-op threads and :meth:`OnnxRuntimeEngine.infer_stream` keeps N runs going from N threads (a session may be run
from several threads, and ``run`` releases the GIL): the throughput configuration of ``ssdtool bench``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from ssdtool.backends import import_engine
from ssdtool.errors import ModelFormatError

K = TypeVar("K")


class OnnxRuntimeEngine:
    name = "onnxruntime"

    def __init__(self, model_path: str | os.PathLike[str], requests: int | None = None,
                 decode: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None = None) -> None:
        """``decode``: applied to every run's outputs inside the run (so in its thread, counted in its time and in
        :attr:`busy_seconds`): a heads model's host decode (:func:`ssdtool.heads.host_decoder`)."""
        ort = import_engine("onnxruntime")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are noise for users
        cores = os.cpu_count() or 1
        self.requests = max(1, requests or 1)
        #: intra-op threads of each run: every core for one request at a time, an equal share for several
        self.threads = cores if self.requests == 1 else max(1, cores // self.requests)
        if self.requests > 1:
            options.intra_op_num_threads = self.threads
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelFormatError(
                f"onnxruntime cannot load {model_path}: {exc}",
                hint="the file is not a valid ONNX model; re-download it with 'ssdtool download --force'",
            ) from exc
        first = self.session.get_inputs()[0]
        self.input_name: str = first.name
        self.input_shape: tuple[int, ...] = tuple(d if isinstance(d, int) else -1 for d in first.shape)
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]
        self.decode = decode
        self.path = Path(model_path)
        self.device = "CPU"
        self.inference_precision: str | None = "f32"  # the CPU execution provider computes in f32
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
