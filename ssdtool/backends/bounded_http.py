"""The one HTTP reader of the ``--server`` client: every exchange bounded in time and every answer in size.

Why not ``requests`` (the downloader's library): its timeout bounds each socket read, not an answer, so a server
sending a byte a second holds a request forever; and it inflates a gzip body whatever its size. Here:

* **a total deadline per exchange**: connecting, the TLS handshake, sending the request, the status line, the
  headers and the whole body must all be done by ``timeout`` seconds after the start. Every read and write on the
  socket waits at most the time left (:class:`_DeadlineSocket`), so no trickle stretches it. Name resolution is
  the system resolver's (it takes no timeout);
* **a size cap** (``max_bytes``): a ``Content-Length`` above it is refused before the body is read, a chunked or
  unannounced body is refused as soon as it passes it, and a ``gzip`` or ``deflate`` body (ssdtool asks for
  ``identity``; a server may compress anyway) is inflated only up to the cap: a 1 MB bomb costs at most the cap;
* **no redirects**: a 3xx answer is :class:`Redirected`, for the caller to refuse;
* failures on the way (refused or reset connections, the deadline, a body cut short or a malformed status line
  or chunk) are :class:`TransportError`, which the caller retries; TLS certificate failures are not retried.

One :class:`HttpClient` per thread: it keeps one keep-alive connection, dropped after any failure, any answer not
read to its end, and any connection the server closed while it was idle. Proxies (``HTTP_PROXY``) are not used:
the client connects to the server it is given. TLS verifies the server's certificate against
``$REQUESTS_CA_BUNDLE`` or ``$CURL_CA_BUNDLE`` when set (as the downloader does), else the system's certificates.
"""

from __future__ import annotations

import base64
import http.client
import math
import os
import select
import socket
import ssl
import time
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from ssdtool import __version__
from ssdtool.redact import printable

#: Of an error answer (4xx, 5xx) only this much is read, for its message; the rest goes with the connection.
ERROR_BODY_BYTES = 64 * 1024
#: Most bytes read from the socket at a time.
READ_CHUNK = 64 * 1024
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
#: Content-Encoding values inflated (up to the cap), with zlib's window bits for each (47: zlib or gzip header).
_DECODABLE = {"gzip": 47, "x-gzip": 47, "deflate": 47}


class TransportError(Exception):
    """The exchange failed on the way (no complete answer): worth another attempt unless ``retryable`` is False."""

    def __init__(self, message: str, *, retryable: bool = True, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.retryable, self.hint = message, retryable, hint


class AnswerTooLarge(Exception):
    """The answer is larger than the cap (announced, sent, or once inflated)."""


class AnswerUnreadable(Exception):
    """The answer's body cannot be decoded: an encoding ssdtool does not inflate, or a broken compressed stream."""


class Redirected(Exception):
    """A 3xx answer: ``location`` (absolute) is where it points; ``same_origin``: same scheme, host and port."""

    def __init__(self, status: int, location: str, same_origin: bool) -> None:
        super().__init__(f"HTTP {status} to {location}")
        self.status, self.location, self.same_origin = status, location, same_origin


@dataclass(frozen=True)
class Answer:
    """An HTTP answer read whole (``complete``), or, for an error status, its first :data:`ERROR_BODY_BYTES`."""

    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes
    complete: bool


def _time_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline passed")
    return left


class _DeadlineSocket(socket.socket):
    """A TCP socket whose every read and write waits at most until ``deadline`` (``time.monotonic()``): each call's
    timeout is the time left, so the deadline holds for the exchange as a whole, however the bytes trickle."""

    deadline: float = math.inf

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self.settimeout(_time_left(self.deadline))
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self.settimeout(_time_left(self.deadline))
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        self.settimeout(_time_left(self.deadline))
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:  # one timeout for the whole call (Python >= 3.5)
        self.settimeout(_time_left(self.deadline))
        super().sendall(data, flags)


class _DeadlineSSLSocket(ssl.SSLSocket):
    """The same over TLS (the context's ``sslsocket_class``): the TLS layer reads and writes through these."""

    deadline: float = math.inf

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        self.settimeout(_time_left(self.deadline))
        return super().recv(buflen, flags)

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        self.settimeout(_time_left(self.deadline))
        return super().recv_into(buffer, nbytes, flags)  # type: ignore[arg-type]

    def send(self, data: Any, flags: int = 0) -> int:
        self.settimeout(_time_left(self.deadline))
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.settimeout(_time_left(self.deadline))
        super().sendall(data, flags)


def tls_context() -> ssl.SSLContext:
    """Certificate-verifying TLS whose sockets keep the deadline; ``$REQUESTS_CA_BUNDLE``/``$CURL_CA_BUNDLE``
    (a file or a directory) replace the system's certificates, as they do for the downloader."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle and os.path.isdir(bundle):
        context = ssl.create_default_context(capath=bundle)
    else:
        context = ssl.create_default_context(cafile=bundle or None)
    context.sslsocket_class = _DeadlineSSLSocket
    return context


class _Connection(http.client.HTTPConnection):
    """http.client's connection (it parses the answer) on a :class:`_DeadlineSocket`, TLS-wrapped for https."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        super().__init__(host, port)
        self.tls = tls
        self.deadline = math.inf

    def connect(self) -> None:
        plain = socket.create_connection((self.host, self.port), _time_left(self.deadline))
        sock = _DeadlineSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        sock.deadline = self.deadline
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        if self.tls is not None:
            sock.settimeout(_time_left(self.deadline))  # the handshake
            wrapped = self.tls.wrap_socket(sock, server_hostname=self.host)
            wrapped.deadline = self.deadline  # type: ignore[attr-defined]
            self.sock = wrapped

    def arm(self, deadline: float) -> None:
        """Give the connection (and its socket, when connected) the next exchange's deadline."""
        self.deadline = deadline
        if self.sock is not None:
            self.sock.deadline = deadline

    def idle_and_open(self) -> bool:
        """Connected, and the server has neither closed the connection nor sent anything unasked since the last
        answer (either makes the socket readable): safe to send the next request on it."""
        if self.sock is None:
            return False
        try:
            if hasattr(select, "poll"):  # select() cannot watch descriptors past 1023
                poller = select.poll()
                poller.register(self.sock, select.POLLIN)
                return not poller.poll(0)
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable


class HttpClient:
    """Requests to the server at ``base_url`` (checked by :func:`ssdtool.serving.protocol.split_server_url`; its
    user name and password become basic authentication). Not thread-safe: one per thread."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.scheme = parts.scheme.lower()
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.origin = (self.scheme, self.host.lower(), self.port)
        self.base = base_url
        self._auth: str | None = None
        if parts.username is not None or parts.password is not None:
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
            self._auth = "Basic " + base64.b64encode(pair).decode("ascii")
        self._tls = tls_context() if self.scheme == "https" else None
        self._connection: _Connection | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None, *,
                timeout: float, max_bytes: int) -> Answer:
        """One exchange, all of it within ``timeout`` seconds; a 2xx body of at most ``max_bytes`` (after
        inflating), an error body cut at :data:`ERROR_BODY_BYTES`. Raises :class:`TransportError`,
        :class:`AnswerTooLarge`, :class:`AnswerUnreadable` or :class:`Redirected`."""
        deadline = time.monotonic() + timeout
        connection = self._connection
        if connection is None or not connection.idle_and_open():
            self.close()
            connection = self._connection = _Connection(self.host, self.port, self._tls)
        connection.arm(deadline)
        sent = {"User-Agent": f"ssdtool/{__version__}", "Accept-Encoding": "identity", **(headers or {})}
        if self._auth is not None:
            sent["Authorization"] = self._auth
        try:
            connection.request(method, self.prefix + path, body=body, headers=sent)
            response = connection.getresponse()
            if response.status in REDIRECT_STATUSES and response.headers.get("Location"):
                raise self._redirected(response.status, response.headers["Location"], path)
            if response.status >= 400:
                data, complete = _read_body(response, ERROR_BODY_BYTES, cut=True)
            else:
                data, complete = _read_body(response, max_bytes, cut=False)
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise TransportError(f"TLS certificate not trusted: {exc.verify_message or exc}", retryable=False,
                                 hint="if a private CA signs the server's certificate, point REQUESTS_CA_BUNDLE at "
                                      "its certificate bundle") from None
        except (http.client.HTTPException, OSError) as exc:
            self.close()
            raise TransportError(_failure(exc, deadline, timeout)) from None
        except BaseException:  # AnswerTooLarge, Redirected, KeyboardInterrupt: the connection is mid-answer
            self.close()
            raise
        if complete and not response.will_close:
            response.close()  # read to its end: the connection is ready for the next request
        else:
            self.close()
        return Answer(response.status, response.reason or "", response.headers, data, complete)

    def _redirected(self, status: int, location: str, path: str) -> Redirected:
        target = urljoin(self.base.rstrip("/") + path, location)
        try:
            parts = urlsplit(target)
            origin = (parts.scheme.lower(), (parts.hostname or "").lower(),
                      parts.port or (443 if parts.scheme.lower() == "https" else 80))
        except ValueError:
            origin = ("", "", 0)
        return Redirected(status, target, origin == self.origin)


def _failure(exc: BaseException, deadline: float, timeout: float) -> str:
    """A transport failure for people (no credentials: http.client's messages hold no URL)."""
    if isinstance(exc, TimeoutError) or time.monotonic() >= deadline:
        return f"no complete answer within {timeout:g} s (--server-timeout)"
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection closed in the middle of the answer"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "the connection was reset"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name: {exc.strerror or exc}"
    text = printable(str(exc).strip()[:200])  # a malformed status line is quoted in the message as it came
    return f"{type(exc).__name__}{': ' + text if text else ''}"


def _read_body(response: http.client.HTTPResponse, limit: int, *, cut: bool) -> tuple[bytes, bool]:
    """The body, inflated, of at most ``limit`` bytes: past it, :class:`AnswerTooLarge`, or with ``cut`` the first
    ``limit`` bytes and False (the rest is left unread). A body that ends before its ``Content-Length`` is an
    ``IncompleteRead`` (a transport failure)."""
    announced = response.length
    if announced is not None and announced > limit and not cut:
        raise AnswerTooLarge(f"it announces {announced:,} bytes (Content-Length)")
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    inflater = None
    if encoding in _DECODABLE:
        inflater = zlib.decompressobj(_DECODABLE[encoding])
    elif encoding != "identity" and not cut:  # an error body is shown as it came
        raise AnswerUnreadable(f"it came with Content-Encoding '{printable(encoding[:40])}', which ssdtool does not "
                               "decode (it asks for identity; gzip and deflate are decoded)")
    body = bytearray()
    wire = 0
    while True:
        chunk = response.read1(READ_CHUNK)
        if not chunk:
            break
        wire += len(chunk)
        if inflater is not None:
            try:
                chunk = inflater.decompress(chunk, limit - len(body) + 1)  # never more than one byte past the cap
            except zlib.error as exc:
                raise AnswerUnreadable(f"its {encoding} body does not inflate: {exc}") from None
        body += chunk
        if len(body) > limit or wire > limit:
            if cut:
                return bytes(body[:limit]), False
            sent = f"{wire:,} bytes" + (f" inflating to more than {limit:,}" if inflater is not None else "")
            raise AnswerTooLarge(f"it sent {sent} and was still going")
    if response.length:  # http.client ends a Content-Length body that stops short without a word
        raise http.client.IncompleteRead(bytes(body), response.length)
    if inflater is not None and not inflater.eof and not cut:
        raise AnswerUnreadable(f"its {encoding} body ends before the compressed stream does")
    return bytes(body), True
