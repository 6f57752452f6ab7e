"""``ssdtool serve --grpc-port`` against hostile requests, in process on the tiny twin, through the protocol's
generated stub (kserve's ``grpc_predict_v2``): malformed requests are INVALID_ARGUMENT with the REST message and no
traceback, an image over the pixel limit is RESOURCE_EXHAUSTED, a bug is INTERNAL with its traceback logged once;
the port options are checked. The real clients (tritonclient, KServe's) are in tests/test_serve_clients.py."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.registry import load_registry
from tests.modelkit import ServeWorld, Tracebacks, serve_world, watched_tracebacks

pytest.importorskip("kserve")
grpc = pytest.importorskip("grpc")

MAX_BODY = 4_000_000
MAX_PIXELS = 4_000_000
TENSOR = np.zeros((1, 3, 300, 300), np.float32).tobytes()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ServeWorld:
    return serve_world(tmp_path_factory.mktemp("serve-grpc"))


@pytest.fixture(scope="module")
def tracebacks() -> Iterator[Tracebacks]:
    with watched_tracebacks() as handler:
        yield handler


@pytest.fixture(scope="module")
def server(world: ServeWorld, tracebacks: Tracebacks) -> Iterator[Any]:
    from ssdtool.serving import ServeOptions, start_server

    options = ServeOptions(port=0, grpc_port=0, inference_precision="f32", model_name="tiny",
                           max_request_bytes=MAX_BODY, max_pixels=MAX_PIXELS, offline=True)
    with start_server(load_registry(world.registry).model("tiny"), Cache.at(world.cache), options) as running:
        yield running
    assert tracebacks.records == []


@pytest.fixture(scope="module")
def stub(server: Any) -> Iterator[Any]:
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    with grpc.insecure_channel(server.grpc_address) as channel:
        yield GRPCInferenceServiceStub(channel)


def _request(model: str = "tiny", **fields: Any) -> Any:
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    return pb.ModelInferRequest(model_name=model, **fields)


def _tensor(name: str = "image", shape: tuple[int, ...] = (1, 3, 300, 300), datatype: str = "FP32",
            **fields: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape), **fields}


def _png(size: tuple[int, int], mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def _image(data: bytes) -> bytes:
    return len(data).to_bytes(4, "little") + data


#: case -> (model, request fields, the error's text)
MALFORMED = {
    "raw contents for two inputs, one input": (
        "tiny", {"inputs": [_tensor()], "raw_input_contents": [TENSOR, TENSOR]},
        "the request has 1 inputs and 2 raw_input_contents; send one raw_input_contents per input, in order, or none"),
    "raw contents not the shape's size": (
        "tiny", {"inputs": [_tensor()], "raw_input_contents": [b"\0" * 8]},
        "input 'image': raw_input_contents is 8 bytes; shape [1, 3, 300, 300] of FP32 takes 1080000"),
    "contents and raw contents": (
        "tiny", {"inputs": [_tensor(contents={"fp32_contents": [1.0]})], "raw_input_contents": [TENSOR]},
        "input 'image' has both contents and raw_input_contents; send one of them"),
    "an unknown datatype": (
        "tiny", {"inputs": [_tensor(datatype="FP128")], "raw_input_contents": [TENSOR]},
        "input 'image': datatype must be one of BOOL, UINT8, INT8, INT32, INT64, FP16, FP32, FP64, BYTES, got "
        "'FP128'"),
    "a negative dimension": (
        "tiny", {"inputs": [_tensor(shape=(1, -3, 300, 300))]},
        "input 'image': shape must be a list of at most 8 whole numbers >= 0, got [1, -3, 300, 300]"),
    "an input without a name": ("tiny", {"inputs": [_tensor(name="")]}, "inputs[0].name must be a non-empty string"),
    "too few numbers in contents": (
        "tiny", {"inputs": [_tensor(contents={"fp32_contents": [1.0, 2.0]})]},
        "input 'image': its data does not fill shape [1, 3, 300, 300] with numbers"),
    "NaN in a tensor": (
        "tiny", {"inputs": [_tensor()], "raw_input_contents": [np.full(270000, np.nan, np.float32).tobytes()]},
        "input 'image' holds NaN or infinite values"),
    "a parameter without a value": (
        "tiny", {"inputs": [_tensor()], "raw_input_contents": [TENSOR], "parameters": {"threshold": {}}},
        "parameter 'threshold' has a value the protocol's gRPC parameters do not carry"),
    "BYTES length prefix 2^31": (
        "tiny-detections", {"inputs": [_tensor("encoded_image", (1,), "BYTES")],
                            "raw_input_contents": [(2**31).to_bytes(4, "little") + b"abcd"]},
        "input 'encoded_image': BYTES element 0 declares 2147483648 bytes, but only 4 are left"),
    "threshold '7'": (
        "tiny-detections", {"inputs": [_tensor("encoded_image", (1,), "BYTES")],
                            "raw_input_contents": [_image(_png((8, 8)))],
                            "parameters": {"threshold": {"string_param": "7"}}},
        "parameter 'threshold' must be a number from 0 to 1, got '7'"),
    "not an image": (
        "tiny-detections", {"inputs": [_tensor("encoded_image", (1,), "BYTES", contents={"bytes_contents": [b"x"]})]},
        "input 'encoded_image' is not an image Pillow can decode (1 bytes)"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_request_is_invalid_argument_with_the_rest_message(stub: Any, tracebacks: Tracebacks,
                                                                        case: str) -> None:
    model, fields, text = MALFORMED[case]
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(_request(model, **fields), timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(text), raised.value.details()
    assert tracebacks.records == []


def test_an_image_over_the_pixel_limit_is_resource_exhausted(stub: Any) -> None:
    request = _request("tiny-detections", inputs=[_tensor("encoded_image", (1,), "BYTES")],
                       raw_input_contents=[_image(_png((2100, 2000)))])
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.details() == ("input 'encoded_image': 2100x2000 = 4,200,000 pixels is over the server's limit "
                                      "of 4,000,000 (ssdtool serve --max-pixels)")


def test_a_request_answers_as_over_rest(stub: Any, server: Any) -> None:
    import requests
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    tensor = np.random.default_rng(3).integers(0, 256, (1, 3, 300, 300)).astype(np.float32)  # raw pixels
    answer = stub.ModelInfer(_request(inputs=[_tensor()], raw_input_contents=[tensor.tobytes()], id="7"), timeout=60)
    assert answer.model_name == "tiny" and answer.id == "7" and [o.name for o in answer.outputs] == ["bboxes", "labels",
                                                                                                    "scores"]
    assert answer.parameters["inference_precision"].string_param == "f32"
    over_rest = requests.post(f"{server.url}/v2/models/tiny/infer", timeout=60, json={
        "inputs": [{"name": "image", "shape": [1, 3, 300, 300], "datatype": "FP32", "data": tensor.ravel().tolist()}],
        "parameters": {"binary_data_output": False}}).json()
    assert "outputs" in over_rest, over_rest
    for index, output in enumerate(over_rest["outputs"]):
        dtype = np.float32 if output["datatype"] == "FP32" else np.int64
        np.testing.assert_array_equal(np.frombuffer(answer.raw_output_contents[index], dtype),
                                      np.asarray(output["data"], dtype))
    assert stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10).extensions == ["binary_tensor_data"]
    assert stub.ModelReady(pb.ModelReadyRequest(name="tiny-detections"), timeout=10).ready


def test_an_unexpected_error_is_internal_with_its_traceback_logged_once(stub: Any, tracebacks: Tracebacks,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from ssdtool.serving.model import IRModel

    def broken(*_args: Any) -> Any:
        raise RuntimeError("planted")

    monkeypatch.setattr(IRModel, "_tensor", staticmethod(broken))
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(_request(inputs=[_tensor()], raw_input_contents=[TENSOR]), timeout=60)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details() == "internal error (RuntimeError); the server's log has the details"
    assert [str(record.exc_info[1]) for record in tracebacks.records if record.exc_info] == ["planted"]
    tracebacks.records.clear()


def test_the_server_options_are_the_rest_limits() -> None:
    from ssdtool.serving.grpc_server import server_options
    from ssdtool.serving.limits import ConnectionLimits

    assert dict(server_options(1234, ConnectionLimits(header_timeout=2.5, body_timeout=7, max_connections=9))) == {
        "grpc.max_receive_message_length": 1234, "grpc.max_send_message_length": 1234,
        "grpc.server_handshake_timeout_ms": 2500, "grpc.max_connection_idle_ms": 2500,
        "grpc.max_connection_age_ms": 7000, "grpc.max_connection_age_grace_ms": 7000, "grpc.so_reuseport": 0}


def test_grpc_and_rest_cannot_share_a_port(world: ServeWorld) -> None:
    result = CliRunner().invoke(cli, world.args("serve", "tiny", "--port", "9123", "--grpc-port", "9123",
                                                "--offline"))
    assert result.exit_code == 2 and "REST and gRPC cannot share port 9123" in result.output
    assert "pass --grpc-port another port" in result.output


def test_a_grpc_port_in_use_is_a_usage_error(world: ServeWorld) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, world.args("serve", "tiny", "--port", "0", "--grpc-port", str(port),
                                                    "--offline"))
    assert result.exit_code == 2, result.output
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in result.output and "--grpc-port" in result.output


def test_the_warning_names_the_grpc_port_beyond_this_machine(world: ServeWorld,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "kserve", None)  # stop right after the warning, before any socket is bound
    result = CliRunner().invoke(cli, world.args("serve", "tiny", "--host", "0.0.0.0", "--port", "0", "--grpc-port",
                                                "9001", "--offline"))
    assert "port 0 (and gRPC port 9001) can use the model" in result.output and result.exit_code == 23
