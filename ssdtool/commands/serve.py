"""``ssdtool serve``: a thin command over :func:`ssdtool.serving.start_server`; it owns the process's signals."""

from __future__ import annotations

import json
import signal
import threading
from typing import TYPE_CHECKING, Any

import click

from ssdtool.commands.common import app_context, printable, want_json
from ssdtool.commands.detect import DEFAULT_MAX_PIXELS, allow_pixels
from ssdtool.commands.options import (
    FiniteFloatRange,
    device_option,
    engine_options,
    image_input_option,
    inference_precision_option,
    ir_precision_option,
    json_option,
    model_argument,
    offline_option,
    progress_option,
)
from ssdtool.commands.progress import app_download_progress

if TYPE_CHECKING:
    from ssdtool.backends.spec import EngineSpec

# The library's defaults, not imported (keeps --help light); tests/test_serve.py holds them equal.
DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20  # ssdtool.serving.protocol.DEFAULT_MAX_REQUEST_BYTES
DEFAULT_DECODE_MEMORY = 1 << 30  # ssdtool.serving.limits.DEFAULT_DECODE_MEMORY
DEFAULT_HEADER_TIMEOUT = 10.0  # ssdtool.serving.limits.DEFAULT_HEADER_TIMEOUT
DEFAULT_BODY_TIMEOUT = 60.0  # ssdtool.serving.limits.DEFAULT_BODY_TIMEOUT
DEFAULT_MAX_CONNECTIONS = 128  # ssdtool.serving.limits.DEFAULT_MAX_CONNECTIONS
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@click.command("serve")
@model_argument
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Only this machine can connect by default; 0.0.0.0 (or ::) opens the "
                   "server to the network, with no authentication.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="TCP port (0: any free port; the URL is printed).")
@click.option("--grpc-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Also serve the protocol's gRPC service (inference.GRPCInferenceService) on this port of --host "
                   "(0: any free port; the address is printed). Off by default.")
@click.option("--model-name", metavar="NAME",
              help="Serve the model under this name, the NAME in /v2/models/NAME: letters, digits, '.', '_' and '-' "
                   "[default: the registry name].")
@engine_options(ir_precision_option(), image_input_option(
    "Serve the image-input IR: u8 [1, H, W, 3] BGR images of any size, resized inside (and, as OVMS takes them, an "
    "encoded image as one BYTES element), with Model API's metadata; what OpenVINO Model API's OVMS adapter drives. "
    "Converted on first use, beside the standard IR."), inference_precision_option(), device_option(
    "OpenVINO device (CPU, GPU, GPU.1, NPU, AUTO, AUTO:GPU,CPU, HETERO:GPU,CPU, ...)."), backend="openvino")
@click.option("--max-request-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_REQUEST_BYTES,
              show_default=True, metavar="BYTES",
              help="Refuse request bodies larger than this with 413 (the default holds a 1200 px FP32 tensor in "
                   "binary or JSON, or a large photo).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              metavar="PIXELS", help="Refuse encoded images larger than this (width x height) with 413, from their "
                                     "header, before decoding them.")
@click.option("--decode-memory", type=click.IntRange(min=1), default=DEFAULT_DECODE_MEMORY, show_default=True,
              metavar="BYTES", help="Memory that encoded images being decoded at once may take; others wait, and an "
                                    "image that alone needs more gets 413 (the default fits the largest image "
                                    "--max-pixels admits by default).")
@click.option("--header-timeout", type=FiniteFloatRange(0, 3600, min_open=True), default=DEFAULT_HEADER_TIMEOUT,
              show_default=True, metavar="SECONDS",
              help="Close a connection whose request line and headers take longer than this (408).")
@click.option("--body-timeout", type=FiniteFloatRange(0, 3600, min_open=True), default=DEFAULT_BODY_TIMEOUT,
              show_default=True, metavar="SECONDS",
              help="Refuse a request whose whole body takes longer than this to arrive (408, connection closed).")
@click.option("--max-connections", type=click.IntRange(1, 65536), default=DEFAULT_MAX_CONNECTIONS,
              show_default=True, metavar="N",
              help="Open connections at once; one more gets 503 and is closed.")
@click.option("--grace", "grace_seconds", type=FiniteFloatRange(0, 600), default=10.0, show_default=True,
              metavar="SECONDS", help="On SIGTERM or Ctrl-C, wait this long for requests in flight to finish.")
@offline_option("Never use the network: the model must already be downloaded (and is converted if needed).")
@progress_option
@json_option("When the server is ready, print its URL and what it runs as one JSON document on stdout.")
@click.pass_context
def serve_command(ctx: click.Context, name: str | None, host: str, port: int, grpc_port: int | None,
                  model_name: str | None, engine: EngineSpec, max_request_bytes: int, max_pixels: int,
                  decode_memory: int, header_timeout: float, body_timeout: float, max_connections: int,
                  grace_seconds: float, offline: bool, progress_mode: str, as_json: bool) -> None:
    """Serve NAME (default model) over the Open Inference Protocol (KServe v2 REST; gRPC with --grpc-port) until
    SIGTERM or Ctrl-C.

    Two models: NAME, the IR itself (its input tensor, raw BGR pixels; its outputs), and NAME-detections (an
    encoded image as the BYTES input "encoded_image", answered with detections in pixels). Endpoints: /v2,
    /v2/health/live, /v2/health/ready, /v2/models/MODEL (metadata), /v2/models/MODEL/ready,
    /v2/models/MODEL/infer, /metrics (Prometheus). Needs the serve extra: pip install 'ssdtool[serve]'.

    \b
    Examples:
      ssdtool serve --inference-precision f32
      ssdtool serve --host 0.0.0.0 --port 9000 --grpc-port 9001
      ssdtool detect photos/ --server http://127.0.0.1:8080
    """
    from ssdtool.serving import ServeOptions, start_server
    from ssdtool.serving.limits import ConnectionLimits

    want_json(ctx, as_json)
    app = app_context(ctx)
    limits = ConnectionLimits(header_timeout=header_timeout, body_timeout=body_timeout,
                              max_connections=max_connections)
    options = ServeOptions(host=host, port=port, engine=engine, model_name=model_name,
                           max_request_bytes=max_request_bytes, max_pixels=max_pixels, decode_memory=decode_memory,
                           limits=limits, offline=offline, grace_seconds=grace_seconds, grpc_port=grpc_port)
    allow_pixels(max_pixels)
    if host not in LOOPBACK:
        ports = f"port {port}" + ("" if grpc_port is None else f" (and gRPC port {grpc_port})")
        click.echo(f"warning: listening on {printable(host)}: anyone who can reach this machine on {ports} can "
                   f"use the model (there is no authentication; put a proxy with TLS and auth in front)", err=True)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = start_server(app.registry().model(name), app.cache(), options,
                              progress=app_download_progress(app, progress_mode))
        try:
            _announce(server, as_json, app.quiet)
            while not stop.wait(0.25) and not server.wait(0):
                pass
        finally:
            server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not app.quiet:
        click.echo("stopped", err=True)


def _announce(server: Any, as_json: bool, quiet: bool) -> None:
    info = server.info
    if as_json:
        # One line, so a script reading stdout line by line gets the whole document at once.
        click.echo(json.dumps({"url": server.url, "infer_url": f"{server.url}/v2/models/{server.model_name}/infer",
                               "detections_infer_url": f"{server.url}/v2/models/{server.detections_model}/infer",
                               **info}))
    if not quiet:
        grpc = f", gRPC at {server.grpc_address}" if server.grpc_address else ""
        click.echo(f"serving {printable(server.model_name)} at {server.url}/v2/models/{printable(server.model_name)} "
                   f"({info['precision']} {'image-input ' if info['image_input'] else ''}IR on {info['device']}, "
                   f"{info['inference_precision'] or 'unreported'}) "
                   f"and its detections at {server.url}/v2/models/{printable(server.detections_model)}{grpc}; "
                   f"SIGTERM or Ctrl-C stops", err=True)


COMMANDS = [serve_command]
