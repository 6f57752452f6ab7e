"""What stands between a client and the model: limits on connections, time, size and image decoding.

uvicorn closes a keep-alive connection that stays idle after a response (``timeout_keep_alive``), but nothing
else: a fresh connection that never sends a request, or sends its headers a byte at a time, is held open forever,
and so is a body trickling in at one byte a second. Two layers close those:

* :func:`guarded_protocol` - uvicorn's HTTP protocol with a **header deadline** (a request's line and headers must
  arrive within ``header_timeout`` seconds of the connection opening or the previous response ending; else
  ``408`` and the connection is closed) and a **connection cap** (past ``max_connections`` open connections a new
  one gets ``503`` and is closed at once; clients retry 503);
* :class:`RequestGuard` - ASGI middleware with a **body deadline** (the whole body within ``body_timeout`` seconds
  of the headers; else ``408``, connection closed), the **size limit** (``413`` by Content-Length, or as soon as a
  chunked body passes it, before it is buffered), and the refusals the app decides from the path alone.

Every refusal is ``{"error": "..."}`` JSON, logged as one line, at most one a kind every
:data:`LOG_EVERY` seconds (1,000 slow sockets must not mean 1,000 log lines). Encoded images are bounded by the model
(:class:`ssdtool.serving.model.EngineModel`): pixels per image, and :data:`DEFAULT_DECODE_MEMORY` for all decodes
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("ssdtool.serving")

#: Seconds for a request's line and headers (a few hundred bytes; any client sends them at once).
DEFAULT_HEADER_TIMEOUT = 10.0
#: Seconds for a whole request body: the 64 MiB default limit at about 1 MB/s; a 1200 px tensor (17 MB) needs
#: 300 KB/s. Far above what any client on a working network needs, far below "forever".
DEFAULT_BODY_TIMEOUT = 60.0
#: Open connections at once; each costs a socket and a few KB until it is closed. Requests beyond what the engine
#: runs at once wait in the server anyway, so more buys nothing but exposure.
DEFAULT_MAX_CONNECTIONS = 128
#: Memory that encoded images being decoded at once may take (``ssdtool serve --decode-memory``): 1 GiB, what
#: decoding the largest image the default pixel limit admits is estimated to take (89.5 million 4-byte pixels,
#: their upright copy and the RGB conversion: 12 bytes a pixel, :func:`ssdtool.imaging.decode_cost`).
DEFAULT_DECODE_MEMORY = 1 << 30


#: Seconds between two log lines of one kind of refusal; the ones in between are counted in the next line.
LOG_EVERY = 10.0


class ThrottledLog:
    """Log lines of one kind at most once every ``every`` seconds, counting what was left out. Used from the
    event loop's thread only."""

    def __init__(self, every: float = LOG_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.every, self._clock = every, clock
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def __call__(self, level: int, kind: str, message: str) -> None:
        now = self._clock()
        if now - self._last.get(kind, -math.inf) < self.every:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        log.log(level, "%s%s", message, f" (and {skipped} more since the last such line)" if skipped else "")


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection deadlines and the cap on open connections (see the module's docstring)."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS


def refusal(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 response with ``{"error": message}`` that closes the connection."""
    body = json.dumps({"error": message}).encode()
    reason = {408: "Request Timeout", 503: "Service Unavailable"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


def guarded_protocol(base: type[asyncio.Protocol], limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's HTTP protocol class: httptools or h11) with the header deadline and the connection cap.

    It relies on what both of uvicorn's HTTP protocols have: ``connections`` (the server's open connections),
    ``loop``, ``transport``, ``cycle`` (the current request, replaced when a new request's headers are complete),
    ``connection_made``, ``on_response_complete`` and ``connection_lost``.
    """

    throttled = ThrottledLog()

    class GuardedProtocol(base):  # type: ignore[valid-type, misc]
        _header_timer: asyncio.TimerHandle | None = None
        _armed_cycle: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                throttled(logging.WARNING, "cap", f"refused a connection: {limits.max_connections} are open, the "
                                                  f"limit (ssdtool serve --max-connections)")
                self._refuse(503, f"the server has {limits.max_connections} connections open, its limit; retry later")
                return
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_deadline()  # the next request on this connection gets its own deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_deadline()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            self._cancel_header_deadline()
            self._armed_cycle = self.cycle
            self._header_timer = self.loop.call_later(limits.header_timeout, self._header_deadline)

        def _cancel_header_deadline(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_deadline(self) -> None:
            self._header_timer = None
            if self.cycle is self._armed_cycle and not self.transport.is_closing():  # no new request's headers
                throttled(logging.INFO, "headers",
                          f"closed a connection: no complete request headers within {limits.header_timeout:g}s")
                self._refuse(408, f"no complete request line and headers within {limits.header_timeout:g} seconds")

        def _refuse(self, status: int, message: str) -> None:
            self.transport.write(refusal(status, message))
            self.transport.close()

    GuardedProtocol.__name__ = GuardedProtocol.__qualname__ = f"Guarded{base.__name__}"
    return GuardedProtocol


#: Decides from a request's scope alone whether it is refused: ``(status, message)``, or None to let it through.
Refusal = Callable[[dict[str, Any]], "tuple[int, str] | None"]


class RequestGuard:
    """ASGI middleware: the request body within ``body_timeout`` seconds and ``limit`` bytes; requests that
    ``refuse`` answers for get that answer before the app sees them.

    A refused request's own answer (FastAPI's 400 "error parsing the body", when the app was reading the body) is
    dropped; the refusal is sent instead, with ``connection: close``. An answer sent before the body has arrived
    whole (a 404 or 405 that never read it) carries ``connection: close`` too: the rest of the body must not keep
    the connection.
    """

    def __init__(self, app: Any, limit: int, body_timeout: float = DEFAULT_BODY_TIMEOUT,
                 refuse: Refusal | None = None) -> None:
        self.app, self.limit, self.body_timeout, self.refuse = app, limit, body_timeout, refuse
        self._log = ThrottledLog()

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        refused_by_path = self.refuse(scope) if self.refuse is not None else None
        if refused_by_path is not None:
            has_body = headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers
            await json_response(send, *refused_by_path, close=has_body)
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._too_large(send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        received = 0
        body_done = length in (None, b"0") and b"transfer-encoding" not in headers
        refused: type[Exception] | None = None

        async def guarded_receive() -> dict[str, Any]:
            nonlocal received, body_done, refused
            if body_done:
                return await receive()  # after the body only a disconnect is left to wait for
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                refused = _TimedOut
                raise _TimedOut from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = _TooLarge
                    raise _TooLarge
                body_done = not message.get("more_body", False)
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if refused is not None:
                return
            if message["type"] == "http.response.start" and not body_done:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        with contextlib.suppress(_TooLarge, _TimedOut):
            await self.app(scope, guarded_receive, guarded_send)
        if refused is _TooLarge:
            await self._too_large(send)
        elif refused is _TimedOut:
            self._log(logging.INFO, "body", f"refused a request: its body did not arrive within "
                                            f"{self.body_timeout:g}s ({received} bytes came)")
            await json_response(send, 408, f"the request body did not arrive within {self.body_timeout:g} seconds "
                                           f"({received} bytes came); send it at once", close=True)

    async def _too_large(self, send: Callable[..., Any]) -> None:
        await json_response(send, 413, f"request body larger than the server's limit of {self.limit} bytes "
                                       f"(ssdtool serve --max-request-bytes)", close=True)


async def json_response(send: Callable[..., Any], status: int, message: str, close: bool = False) -> None:
    """Send ``{"error": message}`` with ``status`` (and ``connection: close`` when the body was not read)."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class _TimedOut(Exception):
    pass
