"""``ssdtool serve`` as a library: an Open Inference Protocol (KServe v2) server on kserve's data plane, REST and,
when asked, gRPC.

kserve provides the protocol: its v2 endpoint handlers (``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/<name>``, ``/v2/models/<name>/infer``, ``/v2``), its data plane, its gRPC servicer and messages, and
Prometheus metrics (``/metrics``). Not kserve's ``ModelServer`` itself: it binds 0.0.0.0 with no way to choose,
parses the process's command line, installs signal handlers and keeps one global app per process. Here the same
parts are put on a fresh FastAPI app per server, on uvicorn, on a socket bound to the host asked (127.0.0.1 by
default), behind the limits of :mod:`ssdtool.serving.limits` (connections, header and body deadlines, body size),
with the gRPC service (:mod:`ssdtool.serving.grpc_server`) on the same host in the same event loop, in a thread:
the caller owns signals and decides when to :meth:`Server.stop`.

Two models are served on one engine: the IR under its name, with exactly the IR's tensors, and the detections
model (``NAME-detections``: an encoded image in, detections in pixels out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ssdtool import artifacts
from ssdtool.backends.spec import EngineSpec, RunInfo, takes_engine
from ssdtool.cache import Cache
from ssdtool.checked import is_finite_number, is_int
from ssdtool.constants import Backend, PerformanceHint
from ssdtool.errors import BackendError, DependencyError, UsageError
from ssdtool.imaging import DEFAULT_MAX_PIXELS
from ssdtool.registry import ModelEntry
from ssdtool.serving.limits import DEFAULT_DECODE_MEMORY, ConnectionLimits, guarded_protocol
from ssdtool.serving.protocol import DEFAULT_MAX_REQUEST_BYTES, detections_model

if TYPE_CHECKING:
    from ssdtool.backends import Engine

log = logging.getLogger("ssdtool.serving")
START_TIMEOUT = 120.0


#: A served model's name: one URL path segment (``/v2/models/NAME/infer``), as registry names are.
SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


#: What serve runs unless told otherwise: the IR with OpenVINO, throughput hint (requests arrive in parallel).
SERVE_ENGINE = EngineSpec(backend=Backend.OPENVINO.value, hint=PerformanceHint.THROUGHPUT.value)


@takes_engine
@dataclass(frozen=True)
class ServeOptions:
    """How to serve: ``host`` and ``port`` to bind (port 0: any free one, see :attr:`Server.port`), the
    ``engine`` (OpenVINO on the IR; its ``precision``, None: the registry's, ``inference_precision`` and ``device``
    as for detection, and ``image_input``: serve the image-input IR, u8 ``[1, H, W, 3]`` images of any size, resized
    inside, converted on first use, instead of the standard IR; the spec's fields may be given as keywords), the
    served ``model_name`` (None: the registry name; else :data:`SERVED_NAME`), ``max_request_bytes`` (larger bodies
    get 413), ``max_pixels`` per encoded image and ``decode_memory`` for all decoding at once (larger images get
    413), ``limits`` on connections and on how long headers and bodies may take, ``offline``, ``grace_seconds`` for
    requests in flight at shutdown, and ``grpc_port`` (None: no gRPC; 0: any free port) for the protocol's gRPC
    service on ``host``."""

    host: str = "127.0.0.1"
    port: int = 8080
    engine: EngineSpec = SERVE_ENGINE
    model_name: str | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    decode_memory: int = DEFAULT_DECODE_MEMORY
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    offline: bool | None = None
    grace_seconds: float = 10.0
    grpc_port: int | None = None


def check_options(options: ServeOptions) -> EngineSpec:
    """Refuse what cannot be served (UsageError; an engine that cannot run: 31), before anything is loaded; the
    engine spec, checked (:func:`ssdtool.backends.prepare`)."""
    from ssdtool.backends import backend_rules, prepare

    spec = prepare(options.engine.replace(hint=options.engine.hint_or(PerformanceHint.THROUGHPUT.value)))
    if backend_rules(spec).model_form != "ir":
        raise UsageError(f"serve runs ssdtool's IR with OpenVINO; the engine asked for runs the "
                         f"{backend_rules(spec).model_form} model", hint="serve with the openvino backend")
    served = options.model_name
    grpc_port = options.grpc_port
    if grpc_port is not None and (not is_int(grpc_port) or not 0 <= grpc_port <= 65535):
        raise UsageError(f"grpc_port must be None or a port number from 0 to 65535, got {grpc_port!r}")
    if grpc_port is not None and grpc_port == options.port != 0:
        raise UsageError(f"REST and gRPC cannot share port {grpc_port}",
                         hint="pass --grpc-port another port (0: any free one)")
    if served is not None and not SERVED_NAME.fullmatch(served):
        raise UsageError(f"served model name {served!r:.80} is not one URL path segment (the NAME in "
                         f"/v2/models/NAME/infer)",
                         hint="pass --model-name 1 to 128 letters, digits, '.', '_' and '-', starting with a letter "
                              "or digit")
    limits = options.limits
    numbers = {"max_request_bytes": (options.max_request_bytes, 1), "decode_memory": (options.decode_memory, 1),
               "max_connections": (limits.max_connections, 1)}
    for name, (value, least) in numbers.items():
        if not is_int(value) or value < least:
            raise UsageError(f"{name} must be a whole number of at least {least}, got {value!r}")
    if options.max_pixels is not None and (not is_int(options.max_pixels) or options.max_pixels < 1):
        raise UsageError(f"max_pixels must be None or a whole number of at least 1, got {options.max_pixels!r}")
    seconds = {"header_timeout": (limits.header_timeout, False), "body_timeout": (limits.body_timeout, False),
               "grace_seconds": (options.grace_seconds, True)}
    for name, (value, zero) in seconds.items():
        if not is_finite_number(value) or value < 0 or (value == 0 and not zero):
            raise UsageError(f"{name} must be a finite number of seconds {'>= 0' if zero else 'above 0'}, got "
                             f"{value!r}")
    return spec


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


class Server:
    """A running server (from :func:`start_server`): :attr:`url`, :attr:`grpc_address`, :meth:`stop`,
    :meth:`wait`; a context manager."""

    def __init__(self, uvicorn_server: Any, sock: socket.socket, app: Any, plane: Any, served: Any,
                 model_name: str, info: dict[str, Any], grpc: Callable[[], tuple[Any, int]] | None = None) -> None:
        self._server, self._socket, self._app, self._plane, self._served = uvicorn_server, sock, app, plane, served
        host, port = sock.getsockname()[:2]
        self.host, self.port, self.model_name = host, int(port), model_name
        #: The detections model's name (``NAME-detections``).
        self.detections_model = detections_model(model_name)
        #: The gRPC port (None: no gRPC service).
        self.grpc_port: int | None = None
        #: What runs: model, IR precision, device, inference precision read back from the engine.
        self.info = info
        self._make_grpc = grpc
        self._thread = threading.Thread(target=self._run, name="ssdtool-serve", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def grpc_address(self) -> str | None:
        """``host:port`` of the gRPC service (a gRPC target has no scheme), None without one."""
        if self.grpc_port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.grpc_port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by _start() or wait()
            self._error = exc

    async def _serve(self) -> None:
        """uvicorn and, when asked, the gRPC server in this thread's event loop; both stop together (each lets its
        requests in flight finish, up to the grace period)."""
        grpc = None
        if self._make_grpc is not None:
            grpc, self.grpc_port = self._make_grpc()
            await grpc.start()
        try:
            rest = asyncio.ensure_future(self._server.serve(sockets=[self._socket]))
            while not rest.done() and not self._server.should_exit:
                await asyncio.sleep(0.05)
            if grpc is not None:
                stopping, grpc = grpc, None
                await stopping.stop(self._server.config.timeout_graceful_shutdown)
            await rest
        finally:
            if grpc is not None:
                await grpc.stop(0)

    def _start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._server.started:
            self.stop()
            if isinstance(self._error, UsageError):
                raise self._error
            raise BackendError(f"the server did not start: {self._error or 'timed out'}")

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document of this server's routes (:func:`ssdtool.serving.app.openapi_document`); not served
        over HTTP."""
        from ssdtool.serving.app import openapi_document
        from ssdtool.serving.detections import DetectionModel

        inputs = [*self._served.inputs, *DetectionModel(self.detections_model, self._served).get_input_types()]
        return openapi_document(self._app, [self.model_name, self.detections_model], inputs)

    def stop(self) -> None:
        """Stop accepting connections, let requests in flight finish (up to ``grace_seconds``), release the
        engine."""
        self._server.should_exit = True
        self._thread.join()
        with contextlib.suppress(OSError):
            self._socket.close()
        self._served.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the server to end (after :meth:`stop` from another thread); True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _http_protocol() -> type[Any]:
    """uvicorn's own choice of HTTP protocol class (httptools when installed, else h11)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return AutoHTTPProtocol


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
    from ssdtool.backends import open_engine, plan_engine

    options = options or ServeOptions()
    spec = check_options(options)
    _import_kserve()
    import uvicorn

    from ssdtool.serving.app import AnsweredOnce, application, data_plane
    from ssdtool.serving.detections import DetectionModel
    from ssdtool.serving.model import IRModel, ServedEngine

    model_file = artifacts.model_file(entry, cache, spec, offline=options.offline, progress=progress)
    decided = plan_engine(model_file, spec)
    name = options.model_name or entry.name
    opened: list[RunInfo] = []

    def engine() -> Engine:
        made, what = open_engine(model_file, spec, cache, plan=decided)
        opened.append(what)
        return made

    served = ServedEngine(entry, engine, form=model_file.form, max_pixels=options.max_pixels,
                          decode_memory=options.decode_memory)
    served.load(model_file.path)
    assert served.engine is not None
    models = [IRModel(name, served), DetectionModel(detections_model(name), served)]
    for model in models:
        model.load()
    ran = opened[-1]
    info = {"model": entry.name, "served_as": name, "detections_model": detections_model(name),
            "precision": model_file.precision, "image_input": spec.image_input, "device": ran.device,
            "inference_precision": served.engine.inference_precision,
            "inference_precision_requested": ran.inference_precision_requested,
            "inference_precision_reason": ran.inference_precision_reason,
            "model_path": str(model_file.path),
            "limits": {"max_request_bytes": options.max_request_bytes, "max_pixels": options.max_pixels,
                       "decode_memory": options.decode_memory, "header_timeout": options.limits.header_timeout,
                       "body_timeout": options.limits.body_timeout,
                       "max_connections": options.limits.max_connections}}
    try:
        sock = _bind(options.host, options.port)
    except BaseException:
        served.stop()
        raise
    plane = data_plane(models)
    app = application(plane, options.max_request_bytes, options.limits.body_timeout)
    config = uvicorn.Config(AnsweredOnce(app), log_config=None, loop="asyncio", access_log=False,
                            timeout_graceful_shutdown=int(max(1, options.grace_seconds)), lifespan="off",
                            http=guarded_protocol(_http_protocol(), options.limits))
    make_grpc = None
    if options.grpc_port is not None:
        from ssdtool.serving.grpc_server import start_grpc

        grpc_port = int(options.grpc_port)

        def make_grpc() -> tuple[Any, int]:
            return start_grpc(plane, options.host, grpc_port, options.max_request_bytes, options.limits)

    server = Server(uvicorn.Server(config), sock, app, plane, served, name, info, make_grpc)
    server._start()
    server.info["grpc_address"] = server.grpc_address
    log.debug("serving %s at %s (gRPC: %s)", name, server.url, server.grpc_address or "off")
    return server
