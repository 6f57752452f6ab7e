"""A misbehaving Open Inference Protocol server on 127.0.0.1 (port 0), for the ``--server`` client's tests.

It plays the tiny twin (``ssd-resnet34-300-synthetic-tiny``: input ``image`` FP32 ``[1, 3, 300, 300]``, outputs
``bboxes`` ``[1, 200, 4]``, ``labels`` and ``scores`` ``[1, 200]``) and answers ``GET /v2/models/NAME`` and
``POST /v2/models/NAME/infer``; a :data:`MODES` entry says what it does wrong. ``"ok"`` answers correctly (three
detections), in JSON or in the binary extension as asked. Modes that stream (``endless``, ``trickle``) stop when
the client hangs up or the server is closed.

    with HostileServer("gzip-bomb") as server:
        run(["detect", image, "--server", server.url])
        assert server.hits("infer") == 1

Run as a script (``python -m tests.hostile_server MODE``) it serves until killed and prints its URL, for
trying the client by hand or from a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ROWS = 200
INPUT = {"name": "image", "datatype": "FP32", "shape": [1, 3, 300, 300]}
OUTPUTS = [{"name": "bboxes", "datatype": "FP32", "shape": [1, ROWS, 4]},
           {"name": "labels", "datatype": "INT64", "shape": [1, ROWS]},
           {"name": "scores", "datatype": "FP32", "shape": [1, ROWS]}]
HEADER_LENGTH = "Inference-Header-Content-Length"
#: The gzip bomb inflates to this many bytes.
BOMB_SIZE = 2**30


def good_outputs() -> dict[str, np.ndarray]:
    """What the tiny twin's IR returns: three detections, then padding (score 0, label 0, a zero box)."""
    boxes = np.zeros((1, ROWS, 4), np.float32)
    boxes[0, :3] = [[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.6, 0.9], [0.0, 0.5, 1.0, 1.0]]
    labels = np.zeros((1, ROWS), np.int64)
    labels[0, :3] = [1, 18, 80]
    scores = np.zeros((1, ROWS), np.float32)
    scores[0, :3] = [0.9, 0.8, 0.7]
    return {"bboxes": boxes, "labels": labels, "scores": scores}


@lru_cache(maxsize=1)
def gzip_bomb() -> bytes:
    """About 1 MB of gzip that inflates to :data:`BOMB_SIZE` zero bytes (a valid stream, trailer included): after a
    full flush deflate's output for the same input repeats, so one compressed MiB is written 1,024 times."""
    block = bytes(2**20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    unit = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    final_block = compressor.flush()[:-8]  # its trailer counts only the two MiB this compressor saw
    crc = 0
    for _ in range(BOMB_SIZE // len(block)):
        crc = zlib.crc32(block, crc)
    return first + unit * (BOMB_SIZE // len(block) - 1) + final_block + struct.pack("<II", crc, BOMB_SIZE % 2**32)


def _metadata(**changes: Any) -> dict[str, Any]:
    return {"name": "tiny", "versions": ["1"], "platform": "hostile", "inputs": [INPUT], "outputs": OUTPUTS,
            **changes}


#: Metadata answers that are not what a v2 server sends: mode -> body (bytes as they go on the wire).
METADATA_MODES: dict[str, bytes] = {
    "metadata-array": b"[]",
    "metadata-no-name": json.dumps({k: v for k, v in _metadata().items() if k != "name"}).encode(),
    "metadata-shape-a": json.dumps(_metadata(inputs=[{**INPUT, "shape": ["a"]}])).encode(),
    "metadata-inputs-object": json.dumps(_metadata(inputs={"image": INPUT})).encode(),
    "metadata-no-tensor-input": json.dumps(_metadata(inputs=[{"name": "x", "datatype": "BYTES", "shape": [1]}])
                                           ).encode(),
    "metadata-other-model": json.dumps(_metadata(inputs=[{**INPUT, "shape": [1, 3, 1200, 1200]}])).encode(),
    "metadata-huge-input": json.dumps(_metadata(inputs=[{**INPUT, "shape": [1, 3, 2**31 - 1, 2**31 - 1]}])).encode(),
    "metadata-no-outputs": json.dumps(_metadata(outputs=[{"name": "x", "datatype": "FP32", "shape": [1]}])).encode(),
    "metadata-nan": json.dumps(_metadata(inputs=[{**INPUT, "shape": [1, 3, 300, float("nan")]}])).encode(),
    "metadata-not-json": b"<html>hello</html>",
    "metadata-deep": b"[" * 100_000 + b"]" * 100_000,
}


def _outputs_with(name: str, value: np.ndarray) -> Callable[[], dict[str, np.ndarray]]:
    def make() -> dict[str, np.ndarray]:
        outputs = good_outputs()
        outputs[name] = value
        return outputs

    return make


def _set(name: str, index: tuple[int, ...], value: Any) -> Callable[[], dict[str, np.ndarray]]:
    def make() -> dict[str, np.ndarray]:
        outputs = good_outputs()
        outputs[name][index] = value
        return outputs

    return make


#: Inference answers with the wrong numbers, shapes or types (in JSON or binary, as asked): mode -> outputs.
OUTPUT_MODES: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    "boxes-wrong-shape": _outputs_with("bboxes", np.zeros((1, ROWS, 3), np.float32)),
    "labels-wrong-count": _outputs_with("labels", np.zeros((1, 7), np.int64)),
    "too-many-rows": lambda: {name: np.concatenate([value, value], axis=1) for name, value in good_outputs().items()},
    "labels-float": _outputs_with("labels", np.zeros((1, ROWS), np.float32)),
    "boxes-int": _outputs_with("bboxes", np.zeros((1, ROWS, 4), np.int64)),
    "scores-nan": _set("scores", (0, 1), np.nan),
    "boxes-inf": _set("bboxes", (0, 0, 2), np.inf),
    "label-999": _set("labels", (0, 1), 999),
    "label-minus-5": _set("labels", (0, 2), -5),
    "score-above-1": _set("scores", (0, 0), 7.5),
    "box-pixels": _set("bboxes", (0, 0, 3), 280.0),
    "no-labels": lambda: {k: v for k, v in good_outputs().items() if k != "labels"},
}

#: Inference answers whose JSON header is wrong: mode -> the header (outputs always as JSON data).
HEADER_MODES: dict[str, Callable[[], Any]] = {
    "parameters-list": lambda: {**json_header(good_outputs()), "parameters": ["inference_precision", "f32"]},
    "outputs-object": lambda: {"outputs": {"bboxes": []}},
    "response-array": lambda: [],
    "data-strings": lambda: _patched(0, data=["x"] * (ROWS * 4)),
    "data-ragged": lambda: _patched(0, data=[[1.0, 2.0], [3.0]]),
    "shape-strings": lambda: _patched(1, shape=["a"]),
    "datatype-bytes": lambda: _patched(2, datatype="BYTES"),
    "label-beyond-int64": lambda: _patched(1, data=[2**70] + [0] * (ROWS - 1)),
    "precision-number": lambda: {**json_header(good_outputs()), "parameters": {"inference_precision": 5}},
    "control-precision": lambda: {**json_header(good_outputs()),
                                  "parameters": {"inference_precision": "f32\x1b[31mRED\nfake line\u202e"}},
}

#: Everything the server can do; "ok" answers correctly.
MODES = ("ok", "gzip-bomb", "gzip-bomb-chunked", "gzip-ok", "brotli", "endless", "trickle", "trickle-headers", "cut",
         "cut-once", "cut-chunked", "reset", "error-500", "error-503-once", "error-control", "redirect-other-host",
         "redirect-same-host", "binary-size-lies", "binary-trailing", "header-length-junk", "metadata-huge",
         *METADATA_MODES, *OUTPUT_MODES, *HEADER_MODES)


def json_header(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    return {"model_name": "tiny", "outputs": [
        {"name": name, "datatype": {"float32": "FP32", "int64": "INT64"}[str(value.dtype)],
         "shape": list(value.shape), "data": value.ravel().tolist()} for name, value in outputs.items()]}


def _patched(index: int, **changes: Any) -> dict[str, Any]:
    header = json_header(good_outputs())
    header["outputs"][index].update(changes)
    return header


def encode(outputs: dict[str, np.ndarray], binary: bool) -> tuple[bytes, dict[str, str]]:
    """A v2 inference answer: JSON numbers, or the binary extension (JSON header, then the tensors' bytes)."""
    if not binary:
        return _dumps(json_header(outputs)), {"Content-Type": "application/json"}
    specs, raw = [], b""
    for name, value in outputs.items():
        data = np.ascontiguousarray(value).tobytes()
        specs.append({"name": name, "datatype": {"float32": "FP32", "int64": "INT64"}[str(value.dtype)],
                      "shape": list(value.shape), "parameters": {"binary_data_size": len(data)}})
        raw += data
    header = _dumps({"model_name": "tiny", "outputs": specs, "parameters": {"inference_precision": "f32"}})
    return header + raw, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def _dumps(data: Any) -> bytes:
    return json.dumps(data).encode()  # NaN and Infinity go out as the literals Python writes (not JSON)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError, ssl.SSLError):
            super().handle()  # the client hanging up on a bomb or a trickle is the point

    def do_GET(self) -> None:
        self.server.owner.record("metadata")
        mode = self.server.owner.mode
        if mode in METADATA_MODES:
            self._send(200, METADATA_MODES[mode])
        elif mode == "metadata-huge":
            self._endless()
        elif mode.startswith("redirect") and self.server.owner.redirect_metadata:
            self._redirect(mode)
        else:
            self._send(200, _dumps(_metadata()))

    def do_POST(self) -> None:
        owner = self.server.owner
        count = owner.record("infer")
        length = int(self.headers.get("Content-Length") or 0)
        request = self.rfile.read(length)
        header_length = self.headers.get(HEADER_LENGTH)
        head = json.loads(request[:int(header_length)] if header_length else request)
        binary = bool((head.get("parameters") or {}).get("binary_data_output"))
        mode = owner.mode
        body, headers = encode(good_outputs(), binary)
        if mode == "gzip-bomb":
            self._send(200, gzip_bomb(), {"Content-Encoding": "gzip", "Content-Type": "application/json"})
        elif mode == "gzip-bomb-chunked":
            self._chunked(gzip_bomb(), {"Content-Encoding": "gzip"})
        elif mode == "gzip-ok":
            self._send(200, zlib.compress(body, wbits=31), {**headers, "Content-Encoding": "gzip"})
        elif mode == "brotli":
            self._send(200, body, {**headers, "Content-Encoding": "br"})
        elif mode == "endless":
            self._endless()
        elif mode == "trickle":
            self._trickle(body, headers)
        elif mode == "trickle-headers":
            self._trickle_headers()
        elif mode == "cut" or (mode == "cut-once" and count == 1):
            self._cut(body, headers)
        elif mode == "cut-chunked":
            self._cut_chunked(body)
        elif mode == "reset":
            self.close_connection = True
            self.connection.close()
        elif mode == "error-500":
            self._send(500, b'{"error": "model crashed"}')
        elif mode == "error-503-once" and count == 1:
            self._send(503, b'{"error": "loading"}')
        elif mode == "error-control":
            self._send(400, _dumps({"error": "bad \x1b[2Jinput\nerror: forged line"}))
        elif mode.startswith("redirect"):
            self._redirect(mode)
        elif mode in ("binary-size-lies", "binary-trailing", "header-length-junk"):
            self._binary_fault(mode)
        elif mode in OUTPUT_MODES:
            self._send(200, *encode(OUTPUT_MODES[mode](), binary))
        elif mode in HEADER_MODES:
            self._send(200, _dumps(HEADER_MODES[mode]()), {"Content-Type": "application/json"})
        else:
            self._send(200, body, headers)

    # -- the ways of answering ------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunked(self, body: bytes, headers: dict[str, str]) -> None:
        """``body`` in 64 KiB chunks, with no Content-Length."""
        self.send_response(200)
        for key, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(key, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(body), 65536):
            piece = body[start:start + 65536]
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def _endless(self) -> None:
        """A chunked body that never ends: 64 KiB chunks of JSON-looking digits."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"1," * 32768
        framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        while not self.server.owner.stopped.is_set():
            self.wfile.write(framed)

    def _trickle(self, body: bytes, headers: dict[str, str]) -> None:
        """Headers at once, then the body one byte a second (the whole body would take minutes)."""
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        for index in range(len(body)):
            if self.server.owner.stopped.wait(1.0):
                return
            self.wfile.write(body[index:index + 1])
            self.wfile.flush()

    def _trickle_headers(self) -> None:
        """A status line and then one header byte a second, for ever."""
        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
        self.wfile.flush()
        while not self.server.owner.stopped.wait(1.0):
            self.wfile.write(b"X")
            self.wfile.flush()

    def _cut(self, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 3])
        self.wfile.flush()
        self.close_connection = True

    def _cut_chunked(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(f"{len(body):x}\r\n".encode() + body[:len(body) // 2])
        self.wfile.flush()
        self.close_connection = True

    def _redirect(self, mode: str) -> None:
        location = ("http://collector.example:8080/v2/models/tiny/infer?token=stolen" if mode == "redirect-other-host"
                    else "/v2/models/elsewhere/infer")
        self.send_response(307)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _binary_fault(self, mode: str) -> None:
        body, headers = encode(good_outputs(), binary=True)
        size = int(headers[HEADER_LENGTH])
        if mode == "binary-size-lies":
            header = json.loads(body[:size])
            header["outputs"][0]["parameters"]["binary_data_size"] = 10**9
            new = _dumps(header)
            body, headers[HEADER_LENGTH] = new + body[size:], str(len(new))
        elif mode == "binary-trailing":
            body += b"\0" * 100
        else:
            headers[HEADER_LENGTH] = "-12"
        self._send(200, body, headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: HostileServer


class HostileServer:
    """The misbehaving server; ``mode`` may change between requests. ``hits(kind)`` counts requests of a kind
    (``"metadata"`` or ``"infer"``). ``redirect_metadata``: redirect modes redirect the metadata request too."""

    def __init__(self, mode: str = "ok", *, redirect_metadata: bool = False,
                 tls: tuple[Path, Path] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.redirect_metadata = redirect_metadata
        self.stopped = threading.Event()
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.scheme = "http"
        if tls is not None:  # (certificate, key), e.g. from tests.httpserver.make_self_signed_cert
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}"

    def record(self, kind: str) -> int:
        with self._lock:
            self._counts[kind] = self._counts.get(kind, 0) + 1
            return self._counts[kind]

    def hits(self, kind: str) -> int:
        with self._lock:
            return self._counts.get(kind, 0)

    def __enter__(self) -> HostileServer:
        if self.mode.startswith("gzip-bomb"):
            gzip_bomb()  # built before the first request, not while the client waits
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self._server.shutdown()
        self._server.server_close()


def run_measured(args: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, int, float]:
    """``ssdtool ARGS`` in a child process: its exit code, stderr, peak resident memory (psutil, sampled every
    10 ms) and seconds. A child still running after ``timeout`` seconds is killed and an AssertionError raised."""
    import psutil

    started = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "ssdtool", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, cwd=ROOT, text=True, env=env)
    watched = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:  # gone between poll and read
            break
        if time.monotonic() - started > timeout:
            child.kill()
            child.wait()
            raise AssertionError(f"ssdtool {' '.join(args)} still ran after {timeout} s")
        time.sleep(0.01)
    assert child.stderr is not None
    return child.wait(), child.stderr.read(), peak, time.monotonic() - started


if __name__ == "__main__":
    with HostileServer(sys.argv[1] if len(sys.argv) > 1 else "ok") as served:
        print(served.url, flush=True)
        threading.Event().wait()
