"""``ssdtool serve`` as a library: an Open Inference Protocol (KServe v2) REST server on kserve's data plane.

kserve provides the protocol: its v2 endpoints (``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/<name>``,
``/v2/models/<name>/infer``, ``/v2``), request decoding (JSON and the binary tensor extension), error handlers
(JSON ``{"error": ...}``) and Prometheus metrics (``/metrics``). Not kserve's ``ModelServer`` itself: it binds
0.0.0.0 with no way to choose, parses the process's command line, installs signal handlers and keeps one global
app per process. Here the same parts are put on a fresh FastAPI app per server, on uvicorn, on a socket bound to
the host asked (127.0.0.1 by default), with a request size limit, in a thread: the caller owns signals and
decides when to :meth:`Server.stop`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ssdtool import artifacts
from ssdtool.cache import Cache
from ssdtool.constants import Backend
from ssdtool.errors import BackendError, DependencyError, UsageError
from ssdtool.imaging import DEFAULT_MAX_PIXELS
from ssdtool.registry import ModelEntry
from ssdtool.serving.protocol import DEFAULT_MAX_REQUEST_BYTES

log = logging.getLogger("ssdtool.serving")
START_TIMEOUT = 120.0


@dataclass(frozen=True)
class ServeOptions:
    """How to serve: ``host`` and ``port`` to bind (port 0: any free one, see :attr:`Server.port`), the IR's
    ``precision`` (None: the registry's), ``inference_precision`` and ``device`` as for detection, the served
    ``model_name`` (None: the registry name), ``max_request_bytes`` (larger bodies get 413), ``max_pixels`` for
    encoded images, ``offline``, and ``grace_seconds`` for requests in flight at shutdown."""

    host: str = "127.0.0.1"
    port: int = 8080
    precision: str | None = None
    inference_precision: str = "auto"
    device: str = "CPU"
    model_name: str | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    offline: bool | None = None
    grace_seconds: float = 10.0


def _import_kserve() -> Any:
    """kserve, whose ``model_server`` module parses ``sys.argv`` when imported (and exits on what it cannot
    parse): it is shown an empty command line, the only way to keep it from reading ssdtool's."""
    saved = sys.argv
    try:
        sys.argv = saved[:1]
        import kserve
        from kserve import model_server  # noqa: F401 - imported here, under the empty command line
    except ImportError as exc:
        raise DependencyError(f"cannot import kserve: {exc}",
                              hint="install the serving extra: pip install 'ssdtool[serve]'") from exc
    finally:
        sys.argv = saved
    return kserve


#: kserve's model repository extension (load/unload over HTTP): one unauthenticated POST would take the model away,
#: or load whatever kserve finds in its default model directory.
BLOCKED_PREFIXES = ("/v2/repository/",)


class _BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets ``413 {"error": ...}`` before it is read whole
    (by its Content-Length, or while it streams in when it has none); paths under :data:`BLOCKED_PREFIXES` get
    404 (checked here, before routing: FastAPI's router internals differ between versions)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if str(scope.get("path", "")).startswith(BLOCKED_PREFIXES):
            await _json_response(send, 404, {"error": "not found"})
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(send)
            return
        received = 0
        refused = False

        async def limited() -> dict[str, Any]:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = True
                    raise _TooLarge
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if not refused:  # after a refusal, whatever the app answers (FastAPI: 400 "error parsing the body")
                await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, limited, guarded_send)
        if refused:
            await self._refuse(send)

    async def _refuse(self, send: Callable[..., Any]) -> None:
        await _json_response(send, 413, {"error": f"request body larger than the server's limit of {self.limit} "
                                                  f"bytes (ssdtool serve --max-request-bytes)"})


async def _json_response(send: Callable[..., Any], status: int, content: dict[str, str]) -> None:
    import json

    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def _application(kserve: Any, model: Any, limit: int) -> Any:
    """A FastAPI app with kserve's v2 endpoints, error handlers and metrics for ``model``."""
    from fastapi import FastAPI
    from kserve import errors
    from kserve.model_repository import ModelRepository
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import metrics_handler
    from kserve.protocol.rest.v2_endpoints import register_v2_endpoints

    repository = ModelRepository()
    repository.update(model)
    app = FastAPI(title="ssdtool serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_api_route("/metrics", metrics_handler, methods=["GET"])
    from ssdtool.serving.binary import BinaryDataPlane

    register_v2_endpoints(app, BinaryDataPlane(model_registry=repository), ModelRepositoryExtension(repository))
    for error, handler in ((errors.InvalidInput, _invalid_input),
                           (errors.InferenceError, errors.inference_error_handler),
                           (errors.ModelNotFound, errors.model_not_found_handler),
                           (errors.ModelNotReady, errors.model_not_ready_handler),
                           (NotImplementedError, errors.not_implemented_error_handler),
                           (errors.ServerNotLive, errors.server_not_live_handler),
                           (errors.ServerNotReady, errors.server_not_ready_handler),
                           (Exception, errors.generic_exception_handler)):
        app.add_exception_handler(error, handler)
    app.add_middleware(_BodyLimit, limit=limit)
    return app


async def _invalid_input(_request: Any, exc: Exception) -> Any:
    """400 with the reason, logged on one line (kserve's own handler logs a traceback per bad request)."""
    from fastapi.responses import JSONResponse

    log.info("bad request: %s", exc)
    return JSONResponse(status_code=400, content={"error": str(exc)})


class Server:
    """A running server (from :func:`start_server`): :attr:`url`, :meth:`stop`, :meth:`wait`; a context manager."""

    def __init__(self, uvicorn_server: Any, sock: socket.socket, model: Any, model_name: str, info: dict[str, Any]
                 ) -> None:
        self._server, self._socket, self._model = uvicorn_server, sock, model
        host, port = sock.getsockname()[:2]
        self.host, self.port, self.model_name = host, int(port), model_name
        #: What runs: model, IR precision, device, inference precision read back from the engine.
        self.info = info
        self._thread = threading.Thread(target=self._run, name="ssdtool-serve", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # reported by wait()
            self._error = exc

    def _start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._server.started:
            self.stop()
            raise BackendError(f"the server did not start: {self._error or 'timed out'}")

    def stop(self) -> None:
        """Stop accepting connections, let requests in flight finish (up to ``grace_seconds``), release the
        engine."""
        self._server.should_exit = True
        self._thread.join()
        with contextlib.suppress(OSError):
            self._socket.close()
        self._model.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the server to end (after :meth:`stop` from another thread); True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot bind {host!r}: {exc}", hint="pass --host an address of this machine") from exc
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                         hint="choose another --port (0: any free one) or stop what uses it") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def start_server(entry: ModelEntry, cache: Cache, options: ServeOptions | None = None, *,
                 progress: Callable[[Any], None] | None = None) -> Server:
    """Serve ``entry``'s IR (converted first when needed) and return once the server answers; stop it with
    :meth:`Server.stop`. ``progress`` receives download events when the model is fetched."""
    from ssdtool.backends import make_engine
    from ssdtool.precision import parse

    options = options or ServeOptions()
    if options.max_request_bytes < 1:
        raise UsageError(f"max_request_bytes must be at least 1, got {options.max_request_bytes}")
    kserve = _import_kserve()
    import uvicorn

    from ssdtool.serving.model import EngineModel

    requested = parse(options.inference_precision)
    model_file = artifacts.model_file(entry, cache, Backend.OPENVINO, options.precision, offline=options.offline,
                                      progress=progress)
    plan = artifacts.precision_plan(model_file, requested, options.device)
    name = options.model_name or entry.name

    def engine() -> Any:
        return make_engine(model_file, device=options.device, hint="throughput", inference_precision=plan.pin,
                           cache_dir=cache.usable_compiled_model_dir(model_file.model))

    model = EngineModel(name, entry, engine, max_pixels=options.max_pixels)
    model.load()
    assert model.engine is not None
    info = {"model": entry.name, "served_as": name, "precision": model_file.precision, "device": options.device,
            "inference_precision": model.engine.inference_precision,
            "inference_precision_requested": requested.value, "inference_precision_reason": plan.reason,
            "model_path": str(model_file.path)}
    sock = _bind(options.host, options.port)
    config = uvicorn.Config(_application(kserve, model, options.max_request_bytes), log_config=None,
                            timeout_graceful_shutdown=int(max(1, options.grace_seconds)), loop="asyncio",
                            access_log=False, lifespan="off")
    server = Server(uvicorn.Server(config), sock, model, name, info)
    server._start()
    log.debug("serving %s at %s", name, server.url)
    return server
