"""An :class:`~ssdtool.backends.Engine` on a model served over the Open Inference Protocol (KServe v2 REST).

It talks to any compliant server (``ssdtool serve``, OpenVINO Model Server, Triton, KServe) with the IR's tensor
input, in JSON or with the binary tensor extension (a JSON header, then the raw tensor bytes; its length in the
``Inference-Header-Content-Length`` header). Connection errors, timeouts and 503 answers are retried with
exponential backoff; a server that stays unreachable is a :class:`NetworkError`, a refused request a
:class:`ServerError`. URLs are redacted wherever they are shown.

Why ``requests`` and not ``tritonclient[http]``: tritonclient's HTTP client is built on geventhttpclient, which
brings gevent (and its monkey-patching concerns) next to OpenVINO's and ssdtool's own threads, plus ~25 MB; the
protocol is a small JSON/bytes format that ~150 lines cover, on the HTTP library ssdtool already depends on.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from ssdtool.constants import WireProtocol
from ssdtool.errors import NetworkError, ServerError, UsageError
from ssdtool.redact import redact_text, redact_url
from ssdtool.serving.protocol import (
    HEADER_LENGTH,
    IMAGE_INPUT,
    PRECISION_PARAMETER,
    ServerTarget,
    numpy_dtype,
    v2_datatype,
)

K = TypeVar("K")
RETRY_STATUSES = (502, 503, 504)
MAX_BACKOFF = 5.0


class RemoteEngine:
    """The model ``target.model`` (default ``model``) on the server at ``target.url``; made from its metadata."""

    name = "remote"

    def __init__(self, target: ServerTarget, model: str) -> None:
        import requests

        if not target.url.lower().startswith(("http://", "https://")):
            raise UsageError(f"--server takes an http:// or https:// URL, got {redact_url(target.url)!r}",
                             hint="for example --server http://127.0.0.1:8080")
        self._requests = requests
        self.target = target
        self.model = target.model or model
        self.base = target.url.rstrip("/")
        self.device = redact_url(self.base)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._in_flight, self._busy_since = 0, 0.0
        self.busy_seconds = 0.0
        self.streams: int | None = None
        self.threads: int | None = None
        #: What the server says its engine computes in (``ssdtool serve`` says; other servers do not: None).
        self.inference_precision: str | None = None
        metadata = self._call("GET", f"/v2/models/{self.model}")
        tensor_inputs = [spec for spec in metadata.get("inputs", [])
                         if spec.get("name") != IMAGE_INPUT and spec.get("datatype") != "BYTES"]
        if not tensor_inputs:
            raise ServerError(f"model {self.model!r} at {self.device} has no tensor input in its metadata",
                              hint="check the model name with --server-model")
        spec = tensor_inputs[0]
        self.input_name: str = spec["name"]
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in spec.get("shape", []))
        self.input_datatype: str = spec["datatype"]
        self.output_names: list[str] = [out["name"] for out in metadata.get("outputs", [])]
        self.platform: str = str(metadata.get("platform", ""))

    @property
    def optimal_requests(self) -> int:
        return max(1, self.target.concurrency)

    # -- HTTP -------------------------------------------------------------------------------------------------
    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:  # one keep-alive session per thread: requests' Session is not thread-safe
            session = self._local.session = self._requests.Session()
        return session

    def _call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
              ) -> Any:
        """One request with retries; returns the decoded JSON, or ``(header, raw bytes)`` for a binary answer."""
        url = self.base + path
        attempts = self.target.retries + 1
        problem = ""
        for attempt in range(attempts):
            if attempt:
                delay = min(MAX_BACKOFF, self.target.backoff * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random() / 2))
            try:
                response = self._session().request(method, url, data=body, headers=headers,
                                                   timeout=self.target.timeout)
            except (self._requests.ConnectionError, self._requests.Timeout) as exc:
                problem = redact_text(f"{type(exc).__name__}: {exc}")
                self._local.session = None  # a dead keep-alive connection: start afresh
                continue
            if response.status_code in RETRY_STATUSES:
                problem = f"HTTP {response.status_code}: {_error_text(response)}"
                continue
            if response.status_code >= 400:
                raise ServerError(
                    f"{self.device} refused {method} {path}: HTTP {response.status_code}: {_error_text(response)}",
                    hint="check --server and --server-model (GET /v2/models/<name> shows what the model takes)")
            return _decode(response, self.device)
        error = ServerError if problem.startswith("HTTP") else NetworkError
        raise error(f"cannot reach a working server at {self.device} after {attempts} attempts: {problem}",
                    hint="check that the server runs (GET /v2/health/ready), or raise --server-retries / "
                         "--server-timeout")

    # -- inference --------------------------------------------------------------------------------------------
    def _encode(self, tensor: np.ndarray) -> tuple[bytes, dict[str, str]]:
        tensor = np.ascontiguousarray(tensor, dtype=numpy_dtype(self.input_datatype)
                                      if self.input_datatype in ("FP32", "FP16", "UINT8") else None)
        spec: dict[str, Any] = {"name": self.input_name, "shape": list(tensor.shape),
                                "datatype": v2_datatype(tensor.dtype)}
        if self.target.protocol == WireProtocol.JSON:
            request = {"inputs": [{**spec, "data": tensor.ravel().tolist()}]}
            return json.dumps(request).encode(), {"Content-Type": "application/json"}
        raw = tensor.tobytes()
        request = {"inputs": [{**spec, "parameters": {"binary_data_size": len(raw)}}],
                   "parameters": {"binary_data_output": True}}
        header = json.dumps(request).encode()
        return header + raw, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}

    def _enter(self) -> None:
        with self._lock:
            if self._in_flight == 0:
                self._busy_since = time.perf_counter()
            self._in_flight += 1

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0:
                self.busy_seconds += time.perf_counter() - self._busy_since

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """One inference on the server (thread-safe); every output by name."""
        body, headers = self._encode(tensor)
        self._enter()
        try:
            answer = self._call("POST", f"/v2/models/{self.model}/infer", body, headers)
        finally:
            self._leave()
        outputs, parameters = parse_response(answer, self.device)
        if isinstance(parameters.get(PRECISION_PARAMETER), str):
            self.inference_precision = parameters[PRECISION_PARAMETER]
        return outputs

    def infer_stream(self, items: Iterable[tuple[K, np.ndarray]], requests: int | None = None,
                     on_done: Callable[[K, float], None] | None = None
                     ) -> Iterator[tuple[K, dict[str, np.ndarray]]]:
        """``requests`` (default: ``concurrency``) inferences in flight; ``(key, outputs)`` in input order.
        ``on_done(key, milliseconds)`` gets each request's round trip, on the calling thread."""
        jobs = max(1, requests or self.optimal_requests)

        def timed(tensor: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
            started = time.perf_counter()
            outputs = self.infer(tensor)
            return outputs, (time.perf_counter() - started) * 1000

        inflight: deque[tuple[K, Future[tuple[dict[str, np.ndarray], float]]]] = deque()
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="ssdtool-remote") as pool:
            try:
                for key, tensor in items:
                    if len(inflight) >= jobs:
                        yield self._collect(inflight, on_done)
                    inflight.append((key, pool.submit(timed, tensor)))
                while inflight:
                    yield self._collect(inflight, on_done)
            finally:
                for _key, future in inflight:
                    future.cancel()

    @staticmethod
    def _collect(inflight: deque[tuple[K, Future[tuple[dict[str, np.ndarray], float]]]],
                 on_done: Callable[[K, float], None] | None) -> tuple[K, dict[str, np.ndarray]]:
        key, future = inflight.popleft()
        outputs, milliseconds = future.result()
        if on_done is not None:
            on_done(key, milliseconds)
        return key, outputs


def _error_text(response: Any) -> str:
    """The server's error message: v2's ``{"error": ...}``, FastAPI's ``{"detail": ...}``, or the start of the body."""
    try:
        data = response.json()
    except ValueError:
        return redact_text(response.text[:300].strip() or response.reason or "no message")
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            if key in data:
                return redact_text(str(data[key])[:500])
    return redact_text(str(data)[:300])


def _decode(response: Any, where: str) -> Any:
    length = response.headers.get(HEADER_LENGTH)
    content = response.content
    try:
        if length is not None:
            size = int(length)
            return json.loads(content[:size]), content[size:]
        return json.loads(content)
    except ValueError as exc:
        raise ServerError(f"{where} answered with something that is not a v2 response: {exc}",
                          hint="check that --server points at an Open Inference Protocol (KServe v2) server") from exc


def parse_response(answer: Any, where: str = "the server") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A v2 inference response (JSON, or ``(header, bytes)`` of the binary extension) -> outputs by name, and the
    response's parameters."""
    header, raw = answer if isinstance(answer, tuple) else (answer, b"")
    outputs: dict[str, np.ndarray] = {}
    offset = 0
    try:
        for spec in header["outputs"]:
            shape = [int(d) for d in spec["shape"]]
            dtype = numpy_dtype(spec["datatype"])
            size = (spec.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                array = np.frombuffer(raw[offset:offset + int(size)], dtype=dtype).reshape(shape)
                offset += int(size)
            else:
                array = np.asarray(spec["data"], dtype=dtype).reshape(shape)
            outputs[spec["name"]] = array
    except (KeyError, TypeError, ValueError) as exc:
        raise ServerError(f"{where} sent an inference response that cannot be read: {type(exc).__name__}: {exc}",
                          hint="check that --server points at an Open Inference Protocol (KServe v2) server") from exc
    return outputs, dict(header.get("parameters") or {})
