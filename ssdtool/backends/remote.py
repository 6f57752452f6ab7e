"""An :class:`~ssdtool.backends.Engine` on a model served over the Open Inference Protocol (KServe v2 REST).

It talks to any compliant server (``ssdtool serve``, OpenVINO Model Server, Triton, KServe) with the IR's tensor
input, in JSON or with the binary tensor extension (a JSON header, then the raw tensor bytes; its length in the
``Inference-Header-Content-Length`` header).

The server is not trusted (docs/serve.md, "What the client accepts"):

* every exchange goes through :mod:`ssdtool.backends.bounded_http`: a total deadline per attempt
  (``ServerTarget.timeout``), answers capped at what the registry model's outputs can take
  (:attr:`~ssdtool.backends.remote_answers.OutputContract.max_answer_bytes`; 1 MiB for metadata), compressed
  answers inflated only up to the cap, and no redirects;
* connection errors, connections cut mid-answer, the deadline, and 502/503/504 answers are retried with
  exponential backoff; a server that stays unreachable is a :class:`NetworkError`;
* everything else - a refused request, a redirect, an answer too large, or one that is not what the model can
  return (:mod:`~ssdtool.backends.remote_answers`) - is a :class:`ServerError` naming what was wrong.

URLs are redacted and server strings escaped wherever they are shown.

Why not ``tritonclient[http]``: its HTTP client is built on geventhttpclient, which brings gevent (and its
monkey-patching concerns) next to OpenVINO's and ssdtool's own threads, plus ~25 MB; the protocol is a small
JSON/bytes format that a few hundred lines cover, on the standard library.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import numpy as np

from ssdtool import checked
from ssdtool.backends.bounded_http import (
    Answer,
    AnswerTooLarge,
    AnswerUnreadable,
    HttpClient,
    Redirected,
    TransportError,
)
from ssdtool.backends.remote_answers import (
    MAX_ANSWER_BYTES,
    MAX_METADATA_BYTES,
    OutputContract,
    read_metadata,
    read_response,
    shown,
    split_binary,
)
from ssdtool.backends.spec import REMOTE, EnginePlan, EngineSpec, ModelFile, OpenedEngine, RunInfo
from ssdtool.constants import DEFAULT_DEVICE, InferencePrecision, PerformanceHint, WireProtocol
from ssdtool.errors import NetworkError, ServerError, UsageError
from ssdtool.redact import printable, redact_text, redact_url
from ssdtool.serving.protocol import HEADER_LENGTH, PRECISION_PARAMETER, ServerTarget, numpy_dtype, v2_datatype

if TYPE_CHECKING:
    from ssdtool.cache import Cache
    from ssdtool.registry import ModelEntry

K = TypeVar("K")
RETRY_STATUSES = (502, 503, 504)
MAX_BACKOFF = 5.0
#: A server's precision name longer than this is no precision name.
MAX_PRECISION_NAME = 32


class RemoteEngine:
    """The model ``target.model`` (default ``model``) on the server at ``target.url``; made from its metadata.

    ``entry``: the registry model the server runs (detect, bench and eval pass it). Its IR's input and outputs are
    the contract every answer is checked against, and they bound an answer's size; without it, answers are checked
    only for their form and finite numbers, and capped at :data:`MAX_ANSWER_BYTES`.
    """

    name = "remote"

    def __init__(self, target: ServerTarget, model: str, entry: ModelEntry | None = None) -> None:
        self.target = target
        self.model = target.model or model
        self.base = target.url.rstrip("/")
        self.device = redact_url(self.base)
        self.contract = OutputContract.of(entry) if entry is not None else None
        self.max_answer_bytes = self.contract.max_answer_bytes if self.contract is not None else MAX_ANSWER_BYTES
        self._path = f"/v2/models/{quote(self.model, safe='')}"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._in_flight, self._busy_since = 0, 0.0
        self.busy_seconds = 0.0
        self.streams: int | None = None
        self.threads: int | None = None
        #: What the server says its engine computes in (``ssdtool serve`` says; other servers do not: None),
        #: escaped for people.
        self.inference_precision: str | None = None
        answer = self._call("GET", self._path, limit=MAX_METADATA_BYTES, allowance="model metadata may take")
        metadata = read_metadata(self._json(answer.body, "model metadata"), self._where, self.contract)
        self.input_name: str = metadata.tensor_input.name
        self.input_shape: tuple[int, ...] = metadata.tensor_input.shape
        self.input_datatype: str = metadata.tensor_input.datatype
        self.output_names: list[str] = [out.name for out in metadata.outputs]
        self.platform: str = metadata.platform

    @property
    def _where(self) -> str:
        return f"the server at {self.device}"

    @property
    def optimal_requests(self) -> int:
        return max(1, self.target.concurrency)

    # -- HTTP -------------------------------------------------------------------------------------------------
    def _client(self) -> HttpClient:
        client = getattr(self._local, "client", None)
        if client is None:  # one keep-alive connection per thread
            client = self._local.client = HttpClient(self.target.url)
        return client

    def _call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None, *,
              limit: int, allowance: str) -> Answer:
        """One request with retries; the 200 answer, whole (at most ``limit`` bytes: what ``allowance``, a phrase
        for the message, may take)."""
        attempts, made = self.target.retries + 1, 0
        problem, hint = "", None
        for attempt in range(attempts):
            made += 1
            if attempt:
                delay = min(MAX_BACKOFF, self.target.backoff * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random() / 2))
            try:
                answer = self._client().request(method, path, body, headers, timeout=self.target.timeout,
                                                max_bytes=limit)
            except TransportError as exc:
                problem, hint = exc.message, exc.hint
                if not exc.retryable:
                    break
                continue
            except AnswerTooLarge as exc:
                raise ServerError(f"{self._where} answered {method} {path} with more than {limit:,} bytes, more "
                                  f"than {allowance}: {exc}",
                                  hint="check that --server points at a server running this model (a compressed "
                                       "answer counts at its inflated size)") from None
            except AnswerUnreadable as exc:
                raise ServerError(f"{self._where} answered {method} {path} with a body that cannot be read: {exc}",
                                  hint="check that --server points at an Open Inference Protocol (KServe v2) "
                                       "server") from None
            except Redirected as exc:
                raise self._redirect_refused(method, path, exc) from None
            if answer.status in RETRY_STATUSES:
                problem = f"HTTP {answer.status}: {_error_text(answer)}"
                continue
            if answer.status >= 400:
                raise ServerError(
                    f"{self.device} refused {method} {path}: HTTP {answer.status}: {_error_text(answer)}",
                    hint="check --server and --server-model (GET /v2/models/<name> shows what the model takes)")
            if answer.status != 200:
                raise ServerError(f"{self._where} answered {method} {path} with HTTP {answer.status} "
                                  f"{shown(answer.reason, 40)}; expected 200 and a v2 response",
                                  hint="check that --server points at an Open Inference Protocol (KServe v2) server")
            return answer
        error = ServerError if problem.startswith("HTTP") else NetworkError
        raise error(f"cannot reach a working server at {self.device} after {made} attempt"
                    f"{'s' if made != 1 else ''}: {problem}",
                    hint=hint or "check that the server runs (GET /v2/health/ready), or raise --server-retries / "
                                 "--server-timeout")

    @property
    def _outputs_take(self) -> str:
        if self.contract is None:
            return "an answer may take without a registry model to size it"
        return f"{self.contract.model}'s outputs can take ({self.contract.rows} detections)"

    def _redirect_refused(self, method: str, path: str, redirect: Redirected) -> ServerError:
        target = printable(redact_url(redirect.location))[:300]
        if redirect.same_origin:
            return ServerError(f"{self._where} redirected {method} {path} to {target} (HTTP {redirect.status}); the "
                               "client follows no redirects",
                               hint="point --server (and --server-model) at where the model is served")
        return ServerError(f"{self._where} redirected {method} {path} to another host: {target} (HTTP "
                           f"{redirect.status}); the client follows no redirects, and never to another host (the "
                           "request and any credentials stay with the server you named)",
                           hint="if that host is the right server, pass it with --server")

    def _json(self, body: bytes, what: str) -> Any:
        try:
            return checked.loads(body)
        except checked.JsonValueError as exc:
            raise ServerError(f"{self._where} sent {what} that is not JSON: {printable(exc)}",
                              hint="check that --server points at an Open Inference Protocol (KServe v2) "
                                   "server") from None

    # -- inference --------------------------------------------------------------------------------------------
    def _encode(self, tensor: np.ndarray) -> tuple[bytes, dict[str, str]]:
        tensor = np.ascontiguousarray(tensor, dtype=numpy_dtype(self.input_datatype))  # FP32, FP16 or UINT8
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
            answer = self._call("POST", f"{self._path}/infer", body, headers, limit=self.max_answer_bytes,
                                allowance=self._outputs_take)
        finally:
            self._leave()
        header, raw = split_binary(answer.body, answer.headers.get(HEADER_LENGTH), self._where)
        outputs, parameters = read_response(self._json(header, "an inference response"), raw, self._where,
                                            self.contract)
        if PRECISION_PARAMETER in parameters:
            self.inference_precision = self._precision(parameters[PRECISION_PARAMETER])
        return outputs

    def _precision(self, value: Any) -> str:
        if not isinstance(value, str) or not 0 < len(value) <= MAX_PRECISION_NAME:
            raise ServerError(f"{self._where} sent an inference response that cannot be used: parameters."
                              f"{PRECISION_PARAMETER} is {shown(value)}; expected a precision name such as f32 (at "
                              f"most {MAX_PRECISION_NAME} characters)",
                              hint="check that --server points at an Open Inference Protocol (KServe v2) server")
        return printable(value)  # escaped like file names: it is printed in tables and run records

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


def _error_text(answer: Answer) -> str:
    """The server's error message: v2's ``{"error": ...}``, FastAPI's ``{"detail": ...}``, or the start of the
    body; shortened, credentials redacted, control characters escaped."""
    try:
        data = checked.loads(answer.body)
    except checked.JsonValueError:
        text = answer.body[:300].decode("utf-8", "replace").strip() or answer.reason or "no message"
        return printable(redact_text(text))
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            if key in data:
                return printable(redact_text(str(data[key])[:500]))
    return printable(redact_text(str(data)[:300]))


class RemoteRules:
    """A server's model in the backend table (``EngineSpec.server``): precisions and device are the server's."""

    name = REMOTE
    model_form = "served"
    one_engine = True
    distribution = None
    load_step = "server metadata"

    def weights(self, precision: str, image_input: bool = False) -> str:
        return "served model"

    def check(self, spec: EngineSpec) -> EngineSpec:
        """Nothing local to choose; the server's ``concurrency`` is the requests in flight, and more than one
        makes throughput the default hint."""
        if (spec.precision is not None or spec.inference_precision != InferencePrecision.AUTO
                or spec.device != DEFAULT_DEVICE or spec.image_input):
            raise UsageError("--precision, --inference-precision, --device and --image-input choose how a local engine "
                             "runs; with --server the server has chosen them",
                             hint="pass them to 'ssdtool serve' (or the server's own configuration) instead")
        assert spec.server is not None
        if spec.hint is None and spec.server.concurrency > 1:
            return spec.replace(hint=PerformanceHint.THROUGHPUT.value,
                                requests=spec.requests or spec.server.concurrency)
        return spec

    def plan(self, model: ModelFile, spec: EngineSpec) -> EnginePlan:
        return EnginePlan(self.name, "chosen by the server")

    def open(self, model: ModelFile, spec: EngineSpec, plan: EnginePlan, cache: Cache | None) -> OpenedEngine:
        assert spec.server is not None
        engine = RemoteEngine(spec.server, model.model, model.entry)  # reads the model's metadata from the server
        info = RunInfo(model=model.model, backend=self.name, device=engine.device, precision=None,
                       inference_precision=engine.inference_precision,
                       inference_precision_requested=InferencePrecision.AUTO.value,
                       inference_precision_reason=plan.reason,
                       model_path=f"{engine.device}/v2/models/{model.path}",
                       performance=spec.hint_or(PerformanceHint.LATENCY.value))
        return OpenedEngine(engine, info)
