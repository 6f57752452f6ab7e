"""A local HTTP(S) file server on 127.0.0.1 that injects faults and counts what it serves.

Used by the download tests and by ``benchmarks/bench_download.py``. Each route maps a URL path to a payload
(``bytes`` in memory, or a ``Path`` served with ``sendfile`` when no fault applies) and an optional
:class:`Fault`. Faults cover what real mirrors and proxies do: drop the connection mid-body, trickle the body,
flip bytes, announce a wrong length, answer with an error status (for the first N requests only, if wished),
ignore Range requests, answer them with the wrong range, redirect (also to plain http, or in a loop), send
more bytes than the file has, and gzip the body whatever the client asked for (``Content-Encoding: gzip``). A
trickling server is ``Fault(chunk=1, delay=...)``.

    with FaultyServer() as server:
        url = server.add("/m/f.bin", payload, Fault(drop_after=1000, times=1))
        ...
        assert server.hits("/m/f.bin") == 2
"""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Fault:
    """What to do wrong when serving a route. The default Fault serves correctly."""

    status: int | None = None  # answer with this status and a short body instead of the file
    times: int | None = None  # apply the fault to the first N requests of the route only (None: to every request)
    drop_after: int | None = None  # close the connection after this many body bytes (Content-Length stays full)
    delay: float = 0.0  # seconds to sleep between body chunks: a slow server
    chunk: int = 64 * 1024  # body chunk size when writing with faults
    corrupt: bool = False  # flip the bits of one byte in the middle of the body
    content_length: int | None = None  # announce this Content-Length (and send at most that many bytes)
    omit_length: bool = False  # no Content-Length: the body ends when the connection closes
    ignore_range: bool = False  # answer Range requests with 200 and the whole file
    range_shift: int = 0  # answer Range requests from this many bytes off the requested start
    redirect: str | None = None  # answer with 302 to this Location (absolute URL or path)
    extra: bytes = b""  # bytes appended after the file's last byte: an oversized body
    retry_after: str | None = None  # Retry-After header sent with an error status
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    gzip: bool = False  # send the file gzip-compressed with Content-Encoding: gzip (and Range ignored), unasked


@dataclass
class RequestRecord:
    path: str
    range: str | None
    status: int
    bytes_sent: int = 0
    accept_encoding: str | None = None


@dataclass
class _Route:
    payload: bytes | Path
    fault: Fault | None = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        self.server.owner._handle(self)

    def handle(self) -> None:
        # The client going away is normal here: the tests cancel and break downloads on purpose.
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            super().handle()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FaultyServer


class FaultyServer:
    """See the module docstring. ``tls=(certfile, keyfile)`` serves https instead of http."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self._routes: dict[str, _Route] = {}
        self._lock = threading.Lock()
        self.records: list[RequestRecord] = []
        self.active = 0  # requests being served right now
        self.max_active = 0  # the most served at once: shows that parallel downloads really overlapped
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="faulty-http-server")

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> FaultyServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultyServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- routes and statistics ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, payload: bytes | Path, fault: Fault | None = None) -> str:
        with self._lock:
            self._routes[path] = _Route(payload, fault)
        return self.url(path)

    def set_fault(self, path: str, fault: Fault | None) -> None:
        with self._lock:
            self._routes[path].fault = fault

    def hits(self, path: str, status: int | None = None) -> int:
        """Requests for ``path`` (with that response status, when given)."""
        with self._lock:
            return sum(1 for r in self.records if r.path == path and (status is None or r.status == status))

    def bytes_served(self, path: str) -> int:
        with self._lock:
            return sum(r.bytes_sent for r in self.records if r.path == path)

    def requests_for(self, path: str) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.records if r.path == path]

    # -- serving -----------------------------------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self._serve(handler)
        finally:
            with self._lock:
                self.active -= 1

    def _serve(self, handler: _Handler) -> None:
        path = urlsplit(handler.path).path
        range_header = handler.headers.get("Range")
        with self._lock:
            route = self._routes.get(path)
            earlier = sum(1 for r in self.records if r.path == path)
            record = RequestRecord(path, range_header, 0, accept_encoding=handler.headers.get("Accept-Encoding"))
            self.records.append(record)
        fault = route.fault if route is not None else None
        if fault is not None and fault.times is not None and earlier >= fault.times:
            fault = None
        fault = fault or Fault()
        if route is None:
            self._send_simple(handler, record, 404, {})
            return
        if fault.redirect is not None:
            self._send_simple(handler, record, 302, {"Location": fault.redirect})
            return
        if fault.status is not None:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._send_simple(handler, record, fault.status, extra)
            return
        payload = route.payload
        headers = dict(fault.headers)
        if fault.gzip:
            raw = payload.read_bytes() if isinstance(payload, Path) else payload
            payload = gzip.compress(raw, compresslevel=1, mtime=0)
            headers["Content-Encoding"] = "gzip"
        size = payload.stat().st_size if isinstance(payload, Path) else len(payload)
        start, status = 0, 200
        if range_header and not fault.ignore_range and not fault.gzip:
            first = _range_start(range_header)
            if first is None or first >= size:
                self._send_simple(handler, record, 416, {"Content-Range": f"bytes */{size}"})
                return
            start = min(size, max(0, first + fault.range_shift))
            status = 206
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        length = size - start + len(fault.extra)
        if fault.content_length is not None:
            length = fault.content_length
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Accept-Ranges", "bytes")
        if not fault.omit_length:
            handler.send_header("Content-Length", str(length))
        handler.send_header("Connection", "close")
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.close_connection = True
        record.status = status
        plain = fault == Fault(headers=fault.headers)
        if isinstance(payload, Path) and plain:
            record.bytes_sent = _sendfile(handler.connection, payload, start, size - start)
            return
        body_end = size - start + len(fault.extra)
        limit = min(body_end, length) if fault.content_length is not None else body_end
        if fault.drop_after is not None:
            limit = min(limit, fault.drop_after)
        sent = 0
        corrupt_at = (size - start) // 2 if fault.corrupt else -1
        while sent < limit:
            count = min(fault.chunk, limit - sent)
            piece = bytearray(_slice(payload, fault.extra, size, start + sent, count))
            if 0 <= corrupt_at - sent < count:
                piece[corrupt_at - sent] ^= 0xFF
            try:
                handler.wfile.write(bytes(piece))
            except (ConnectionError, ssl.SSLError):
                break
            sent += count
            with self._lock:
                record.bytes_sent = sent
            if fault.delay:
                threading.Event().wait(fault.delay)
        if fault.drop_after is not None:
            # An abrupt end: the client has fewer bytes than Content-Length promised.
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)

    def _send_simple(self, handler: _Handler, record: RequestRecord, status: int, headers: dict[str, str]) -> None:
        body = f"{status} from the test server\n".encode()
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        handler.wfile.write(body)
        record.status = status


def _range_start(header: str) -> int | None:
    unit, _, spec = header.partition("=")
    first, _, _last = spec.partition("-")
    if unit.strip() != "bytes" or not first.strip().isdigit():
        return None
    return int(first)


def _slice(payload: bytes | Path, extra: bytes, size: int, offset: int, count: int) -> bytes:
    """``count`` bytes at ``offset`` of payload + extra."""
    if isinstance(payload, Path):
        with open(payload, "rb") as stream:
            stream.seek(min(offset, size))
            data = stream.read(max(0, min(count, size - offset)))
    else:
        data = payload[offset:offset + count]
    if offset + count > size:
        tail_start = max(0, offset - size)
        data += extra[tail_start:tail_start + count - len(data)]
    return data


def _sendfile(connection: socket.socket, path: Path, offset: int, count: int) -> int:
    with open(path, "rb") as stream:
        try:
            return connection.sendfile(stream, offset, count)
        except (ConnectionError, ssl.SSLError):
            return 0


def make_self_signed_cert(directory: Path) -> tuple[Path, Path] | None:
    """A certificate for 127.0.0.1 made with the openssl CLI, or None when openssl is not installed."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
               "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
               "-addext", "subjectAltName=IP:127.0.0.1"]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=30, env={**os.environ, "RANDFILE": ""})
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return cert, key
