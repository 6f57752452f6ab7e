"""The system under test: LoadGen's queries run on one ssdtool :class:`~ssdtool.backends.Engine`.

LoadGen calls :meth:`EngineSut.issue` from its own threads; the samples go to a queue that one worker thread
feeds to ``engine.infer_stream``, which keeps up to ``requests`` inferences in flight (OpenVINO async requests on
the compiled model's streams; onnxruntime threads sharing one session). The worker hands the stream every sample
queued so far and ends it when the queue is momentarily empty, so a result never waits for a later arrival:

* SingleStream: one sample at a time on a latency-compiled engine.
* MultiStream: each query's samples (8) in flight together.
* Offline: the one big query streamed through the throughput path, ``requests`` at a time.
* Server: arrivals join the running stream while it runs; when the queue runs dry the stream drains.

No exception may escape into LoadGen (its thread would die and the test hang): a failure is recorded in
:class:`Failure`, every outstanding and later sample is completed with an empty response so LoadGen can end,
and :func:`ssdtool.loadgen.run.run_loadgen` raises the failure after the test.
"""

from __future__ import annotations

import array
import queue
import threading
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ssdtool.loadgen.accuracy import response_records
from ssdtool.loadgen.qsl import SampleLibrary

if TYPE_CHECKING:
    import numpy as np

    from ssdtool.backends import Engine


class Failure:
    """The first error met in a LoadGen callback (or an interrupt), kept for after the test."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    def record(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error

    def __bool__(self) -> bool:
        return self.error is not None


class EngineSut:
    """LoadGen's ``issue_queries`` and ``flush_queries``, with one worker thread driving the engine."""

    def __init__(self, lg: Any, engine: Engine, library: SampleLibrary, requests: int, failure: Failure) -> None:
        self.lg = lg
        self.engine = engine
        self.library = library
        self.requests = requests
        self.failure = failure
        self.completed = 0  # samples answered (read by the progress loop; int updates are atomic)
        self._queue: queue.SimpleQueue[list[Any] | None] = queue.SimpleQueue()
        self._outstanding: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._worker = threading.Thread(target=self._serve, name="ssdtool-loadgen-sut", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ LoadGen's callbacks (its threads)
    def issue(self, samples: list[Any]) -> None:
        try:
            with self._lock:
                for sample in samples:
                    self._outstanding[sample.id] = sample
            if self.failure:
                self._answer_outstanding()
            else:
                self._queue.put(list(samples))
        except BaseException as exc:  # never into LoadGen
            self.failure.record(exc)
            self._answer_outstanding()

    def flush(self) -> None:
        """Nothing is held back: every queued sample is already on its way."""

    # ------------------------------------------------------------------ the worker
    def _serve(self) -> None:
        while not self._stopping:
            first = self._queue.get()
            if first is None:
                return
            try:
                for sample, outputs in self.engine.infer_stream(self._items(deque(first)), self.requests):
                    self._respond(sample, outputs)
            except BaseException as exc:
                self.failure.record(exc)
            if self.failure:
                self._answer_outstanding()

    def _items(self, pending: deque[Any]) -> Iterator[tuple[Any, np.ndarray]]:
        """The queued samples and their tensors, ending when the queue runs dry (so the stream drains and no
        result waits for a later arrival) or after a failure."""
        while not self.failure:
            if not pending:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    return
                if more is None:
                    self._stopping = True
                    return
                pending.extend(more)
            sample = pending.popleft()
            yield sample, self.library.tensor(sample.index)

    def _respond(self, sample: Any, outputs: dict[str, np.ndarray]) -> None:
        records = response_records(outputs, self.library.entry, self.library.form, sample.index)
        # LoadGen copies the bytes during QuerySamplesComplete (accuracy mode), so the buffer lives until then.
        buffer = array.array("B", records.tobytes())
        address, length = buffer.buffer_info()
        with self._lock:
            if self._outstanding.pop(sample.id, None) is None:
                return
        self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(sample.id, address, length)])
        self.completed += 1

    def _answer_outstanding(self) -> None:
        """Complete every sample not yet answered with an empty response (after a failure), so LoadGen ends."""
        with self._lock:
            samples = list(self._outstanding.values())
            self._outstanding.clear()
        if samples:
            try:
                self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(s.id, 0, 0) for s in samples])
            except BaseException as exc:
                self.failure.record(exc)

    def close(self) -> None:
        """Stop the worker (after LoadGen's test has returned, so nothing more is issued)."""
        self._queue.put(None)
        self._worker.join()
