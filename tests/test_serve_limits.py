"""``ssdtool serve``'s connection limits on uvicorn itself, with a small ASGI app: header deadline, body deadline,
connection cap, body size, and connections closed when a body was not read. Both of uvicorn's HTTP protocols
(httptools and h11) are checked, since the guard relies on what they share. No model: milliseconds per case."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ssdtool.serving.limits import ConnectionLimits, RequestGuard, ThrottledLog, guarded_protocol

uvicorn = pytest.importorskip("uvicorn")

LIMIT = 1000
LIMITS = ConnectionLimits(header_timeout=0.5, body_timeout=0.8, max_connections=4)


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the body (on /echo) and answers its length; other paths answer without reading it."""
    size = 0
    if scope["path"] == "/echo":
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
    body = str(size).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _refuse_blocked(scope: dict[str, Any]) -> tuple[int, str] | None:
    return (404, "not found") if scope["path"].startswith("/blocked/") else None


def _protocols() -> list[Any]:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    classes = [H11Protocol]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is optional in uvicorn; h11 is always there
        return classes
    return [HttpToolsProtocol, *classes]


@pytest.fixture(params=_protocols(), ids=lambda cls: cls.__name__)
def address(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    app = RequestGuard(_echo, LIMIT, LIMITS.body_timeout, refuse=_refuse_blocked)
    config = uvicorn.Config(app, log_config=None, loop="asyncio", lifespan="off", access_log=False,
                            http=guarded_protocol(request.param, LIMITS))
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield sock.getsockname()
    server.should_exit = True
    thread.join(10)
    sock.close()


def _connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    sock.close()
    return data


def _trickle(sock: socket.socket, data: bytes, stop: threading.Event) -> threading.Thread:
    def send() -> None:
        for byte in data:
            if stop.wait(0.05):
                return
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _statuses(data: bytes) -> list[int]:
    """The status of every response in ``data`` (responses follow each other on a keep-alive connection)."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def _status(response: bytes) -> int:
    statuses = _statuses(response)
    assert len(statuses) == 1, response
    return statuses[0]


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One response from a connection that stays open: its status and body (by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return _status(head), body


def test_a_connection_that_sends_nothing_gets_408_and_is_closed(address: tuple[str, int]) -> None:
    response = _read_until_closed(_connect(address))
    assert _status(response) == 408
    assert response.endswith(b'{"error": "no complete request line and headers within 0.5 seconds"}')
    assert b"connection: close" in response


@pytest.mark.parametrize("after_a_response", [False, True], ids=["first request", "next request"])
def test_headers_sent_a_byte_at_a_time_are_cut_off(address: tuple[str, int], after_a_response: bool) -> None:
    sock, stop = _connect(address), threading.Event()
    if after_a_response:  # keep-alive: the next request on the connection gets its own deadline
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    _trickle(sock, b"GET /x HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 1000, stop)
    response = _read_until_closed(sock)
    stop.set()
    assert _statuses(response) == ([200, 408] if after_a_response else [408])


def test_a_body_trickling_in_gets_408_and_the_connection_is_closed(address: tuple[str, int]) -> None:
    sock, stop = _connect(address), threading.Event()
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 900\r\n\r\n")
    _trickle(sock, b"x" * 900, stop)
    response = _read_until_closed(sock)
    stop.set()
    assert _status(response) == 408 and b"connection: close" in response
    assert b"the request body did not arrive within 0.8 seconds" in response


def test_an_unread_body_does_not_keep_the_connection(address: tuple[str, int]) -> None:
    sock, stop = _connect(address), threading.Event()
    sock.sendall(b"POST /unread HTTP/1.1\r\nHost: t\r\nContent-Length: 900\r\n\r\n")
    _trickle(sock, b"x" * 900, stop)
    response = _read_until_closed(sock)
    stop.set()
    assert response.startswith(b"HTTP/1.1 200 ") and b"connection: close" in response.lower()


def test_requests_in_time_and_within_the_limit_are_served_on_one_connection(address: tuple[str, int]) -> None:
    sock = _connect(address)
    for size in (0, 10, LIMIT):
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)
        assert _read_response(sock) == (200, str(size).encode())
    sock.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_gets_413(address: tuple[str, int], chunked: bool) -> None:
    sock = _connect(address)
    body = b"x" * (LIMIT + 1)
    if chunked:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    else:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    response = _read_until_closed(sock)
    assert _status(response) == 413 and b"connection: close" in response
    assert b"larger than the server's limit of 1000 bytes (ssdtool serve --max-request-bytes)" in response


def test_a_refused_path_gets_its_answer_before_the_app(address: tuple[str, int]) -> None:
    sock = _connect(address)
    sock.sendall(b"POST /blocked/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
    response = _read_until_closed(sock)
    assert _status(response) == 404 and response.endswith(b'{"error": "not found"}')


def test_connections_past_the_cap_get_503_and_the_server_recovers(address: tuple[str, int]) -> None:
    held = [_connect(address) for _ in range(LIMITS.max_connections)]
    time.sleep(0.1)  # let the server accept them all (a later connection is not a race with these)
    extra = _connect(address)
    response = _read_until_closed(extra)
    assert _status(response) == 503
    assert b"the server has 4 connections open, its limit; retry later" in response
    for sock in held:
        sock.close()
    for _ in range(100):  # the server notices the closed connections as the loop runs
        sock = _connect(address)
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        response = _read_until_closed(sock)
        if _status(response) == 200:
            break
        time.sleep(0.02)
    assert _status(response) == 200


def test_refusals_are_logged_at_most_once_a_period_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    throttled = ThrottledLog(every=10, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="ssdtool.serving"):
        for second in range(25):  # one refusal a second, of each of two kinds
            now[0] = float(second)
            throttled(logging.INFO, "headers", "closed a connection")
            throttled(logging.WARNING, "cap", "refused a connection")
    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [
        ("INFO", "closed a connection"), ("WARNING", "refused a connection"),
        ("INFO", "closed a connection (and 9 more since the last such line)"),
        ("WARNING", "refused a connection (and 9 more since the last such line)"),
        ("INFO", "closed a connection (and 9 more since the last such line)"),
        ("WARNING", "refused a connection (and 9 more since the last such line)")]
