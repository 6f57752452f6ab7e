"""``ssdtool serve`` with the clients OpenVINO and KServe users already run, each sending exactly what it sends to
any server: tritonclient's HTTP client (sync and asyncio; JSON and binary tensors) and its gRPC client (in a process
of its own: tests/tritonclient_grpc.py says why), and KServe's InferenceRESTClient and InferenceGRPCClient.

Answers are compared with local inference of the same IR at f32 (the server is pinned to f32 too: this CPU class
computes in bf16 by default), and errors with the messages the server's REST answers carry.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ssdtool.imaging import preprocess
from ssdtool.registry import load_registry
from tests.modelkit import ServeProcess, ServeWorld, serve_world

pytest.importorskip("kserve")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the test extra")

TOLERANCE = 1e-5
OUTPUTS = ("bboxes", "labels", "scores")
DETECTIONS = "tiny-detections"
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ServeWorld:
    return serve_world(tmp_path_factory.mktemp("serve-clients"))


@pytest.fixture(scope="module")
def server(world: ServeWorld) -> Iterator[ServeProcess]:
    process = ServeProcess(world, 0, "--grpc-port", "0")
    yield process
    assert process.terminate() == 0


@pytest.fixture(scope="module")
def tensor(world: ServeWorld) -> np.ndarray:
    entry = load_registry(world.registry).model("tiny")
    return preprocess(np.asarray(Image.open(world.images[0]).convert("RGB")), entry, form="ir")


@pytest.fixture(scope="module")
def expected(world: ServeWorld, tensor: np.ndarray) -> dict[str, np.ndarray]:
    from ssdtool.backends.openvino import OpenVinoEngine

    engine = OpenVinoEngine(world.cache / "tiny" / "openvino" / "FP32" / "tiny.xml", inference_precision="f32")
    return engine.infer(tensor)


@pytest.fixture(scope="module")
def local_detections(world: ServeWorld) -> list[Any]:
    from ssdtool.detect import Detector

    with Detector("tiny", "openvino", inference_precision="f32", registry=world.registry, cache_dir=world.cache,
                  threshold=0.1, offline=True) as detector:
        found = detector(world.images[0])
    assert len(found) > 5
    return list(found)


def _host(server: ServeProcess) -> str:
    return server.url.removeprefix("http://")


def _same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, atol=TOLERANCE, rtol=0, err_msg=name)


def _same_detections(boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, local: list[Any]) -> None:
    assert boxes.shape == (len(local), 4)
    np.testing.assert_allclose(boxes, [d.box for d in local], atol=1e-3)
    assert labels.tolist() == [d.label_id for d in local]
    np.testing.assert_allclose(scores, [d.score for d in local], atol=TOLERANCE)


IR_TENSORS = {"name": "tiny", "platform": "",
              "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 300, 300]}],
              "outputs": [{"name": "bboxes", "datatype": "FP32", "shape": [1, 200, 4]},
                          {"name": "labels", "datatype": "INT64", "shape": [1, 200]},
                          {"name": "scores", "datatype": "FP32", "shape": [1, 200]}]}


@pytest.fixture(scope="module")
def ir_metadata(world: ServeWorld) -> dict[str, Any]:
    """The IR model's REST metadata: exactly the IR's tensors, and its Model API section as ``rt_info``."""
    from ssdtool.provenance import read_section

    model_info = read_section(world.cache / "tiny" / "openvino" / "FP32" / "tiny.xml", "model_info")
    assert model_info is not None and model_info["model_type"] == "SSD"
    return {**IR_TENSORS, "rt_info": {"model_info": model_info}}


# -- tritonclient HTTP ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http(server: ServeProcess, tensor: np.ndarray, expected: dict[str, np.ndarray],
                           ir_metadata: dict[str, Any], binary: bool) -> None:
    from ssdtool import __version__

    client = httpclient.InferenceServerClient(_host(server))
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
        assert client.get_server_metadata() == {"name": "ssdtool", "version": __version__,
                                                "extensions": ["binary_tensor_data"]}
        assert client.get_model_metadata("tiny") == ir_metadata
        pixels = httpclient.InferInput("image", list(tensor.shape), "FP32")
        pixels.set_data_from_numpy(tensor, binary_data=binary)  # binary_data=False: JSON, and no Content-Type
        result = client.infer("tiny", [pixels])
        _same({name: result.as_numpy(name) for name in OUTPUTS}, expected)
        assert result.get_response()["parameters"] == {"inference_precision": "f32"}
        chosen = client.infer("tiny", [pixels], outputs=[httpclient.InferRequestedOutput("scores", binary_data=False),
                                                         httpclient.InferRequestedOutput("labels")])
        answered = chosen.get_response()["outputs"]
        assert [output["name"] for output in answered] == ["scores", "labels"]
        assert "data" in answered[0] and answered[1]["parameters"] == {"binary_data_size": 1600}
        _same({name: chosen.as_numpy(name) for name in ("scores", "labels")},
              {name: expected[name] for name in ("scores", "labels")})
    finally:
        client.close()


def test_tritonclient_http_detections(server: ServeProcess, world: ServeWorld, local_detections: list[Any]) -> None:
    client = httpclient.InferenceServerClient(_host(server))
    try:
        assert client.is_model_ready(DETECTIONS)
        encoded = httpclient.InferInput("encoded_image", [1], "BYTES")
        encoded.set_data_from_numpy(np.array([world.images[0].read_bytes()], dtype=np.object_))
        result = client.infer(DETECTIONS, [encoded], parameters={"threshold": 0.1})
        _same_detections(result.as_numpy("detection_boxes"), result.as_numpy("detection_labels"),
                         result.as_numpy("detection_scores"), local_detections)
    finally:
        client.close()


def test_tritonclient_http_decodes_every_error(server: ServeProcess, tensor: np.ndarray) -> None:
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(_host(server))
    wrong = httpclient.InferInput("image", [1, 3, 300, 301], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 300, 301), np.float32), binary_data=False)
    pixels = httpclient.InferInput("image", list(tensor.shape), "FP32")
    pixels.set_data_from_numpy(tensor)
    versions = "this server serves its models without versions: leave out /versions/VERSION and model_version"
    cases = {
        "unknown model": (lambda: client.get_model_metadata("nope"), "404", "Model with name nope does not exist."),
        "wrong shape": (lambda: client.infer("tiny", [wrong]), "400",
                        "input 'image' has shape [1, 3, 300, 301]; expected input 'image', FP32 [1, 3, 300, 300] "
                        "(raw BGR pixels 0-255)"),
        "a version": (lambda: client.infer("tiny", [pixels], model_version="2"), "404", versions),
        "an unknown output": (lambda: client.infer("tiny", [pixels], outputs=[httpclient.InferRequestedOutput("x")]),
                              "400", "unknown output 'x'; the model's outputs are bboxes, labels, scores"),
        "the repository extension": (lambda: client.unload_model("tiny"), "404",
                                     "not found: POST /v2/repository/models/tiny/unload; this server answers GET /v2, "
                                     "GET /v2/health/live, GET /v2/health/ready, GET /v2/models, GET /v2/models/NAME, "
                                     "GET /v2/models/NAME/ready, POST /v2/models/NAME/infer, GET /metrics"),
    }
    try:
        for case, (call, status, message) in cases.items():
            with pytest.raises(InferenceServerException) as raised:
                call()
            assert (raised.value.status(), raised.value.message()) == (status, message), case
    finally:
        client.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_asyncio(server: ServeProcess, tensor: np.ndarray, expected: dict[str, np.ndarray],
                                   ir_metadata: dict[str, Any], binary: bool) -> None:
    aioclient = pytest.importorskip("tritonclient.http.aio")

    async def run() -> dict[str, np.ndarray]:
        client = aioclient.InferenceServerClient(_host(server))
        try:
            assert await client.is_model_ready("tiny")
            assert await client.get_model_metadata("tiny") == ir_metadata
            pixels = aioclient.InferInput("image", list(tensor.shape), "FP32")
            pixels.set_data_from_numpy(tensor, binary_data=binary)
            result = await client.infer("tiny", [pixels])
            return {name: result.as_numpy(name) for name in OUTPUTS}
        finally:
            await client.close()

    _same(asyncio.run(run()), expected)


# -- tritonclient gRPC ----------------------------------------------------------------------------------------
def test_tritonclient_grpc(server: ServeProcess, world: ServeWorld, tensor: np.ndarray,
                           expected: dict[str, np.ndarray], local_detections: list[Any], tmp_path: Path) -> None:
    pytest.importorskip("grpc", reason="tritonclient[grpc] is in the test extra")
    address = server.info["grpc_address"]
    assert address.startswith("127.0.0.1:")  # loopback unless --host says otherwise
    np.save(tmp_path / "tensor.npy", tensor)
    out = tmp_path / "answers.npz"
    run = subprocess.run([sys.executable, str(HERE / "tritonclient_grpc.py"), address, str(tmp_path / "tensor.npy"),
                          str(world.images[0]), str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report, arrays = json.loads(out.with_suffix(".json").read_text()), np.load(out)
    assert report["live"] and report["ready"] and report["model_ready"] == [True, True]
    assert report["server"]["extensions"] == ["binary_tensor_data"] and report["server"]["name"] == "ssdtool"
    assert report["metadata"] == {  # proto3 JSON: int64 shapes as strings, the empty platform left out
        "name": "tiny", "inputs": [{"name": "image", "datatype": "FP32", "shape": ["1", "3", "300", "300"]}],
        "outputs": [{"name": "bboxes", "datatype": "FP32", "shape": ["1", "200", "4"]},
                    {"name": "labels", "datatype": "INT64", "shape": ["1", "200"]},
                    {"name": "scores", "datatype": "FP32", "shape": ["1", "200"]}]}
    assert report["detections_metadata"]["inputs"] == [{"name": "encoded_image", "datatype": "BYTES",
                                                        "shape": ["1"]}]
    _same({name: arrays[name] for name in OUTPUTS}, expected)
    np.testing.assert_allclose(arrays["async_scores"], expected["scores"], atol=TOLERANCE, rtol=0)
    assert report["parameters"] == {"inference_precision": "f32"} and report["requested"] == ["scores"]
    _same_detections(arrays["detection_boxes"], arrays["detection_labels"], arrays["detection_scores"],
                     local_detections)
    assert report["errors"]["unknown model"] == ["StatusCode.NOT_FOUND", "Model with name nope does not exist."]
    assert report["errors"]["wrong shape"] == [
        "StatusCode.INVALID_ARGUMENT", "input 'image' has shape [1, 3, 300, 301]; expected input 'image', FP32 "
                                       "[1, 3, 300, 300] (raw BGR pixels 0-255)"]
    assert report["errors"]["a version"] == [
        "StatusCode.NOT_FOUND", "this server serves its models without versions: leave out /versions/VERSION and "
                                "model_version"]
    assert report["errors"]["a float parameter"] == [
        "StatusCode.INVALID_ARGUMENT", "parameter 'threshold' has a value the protocol's gRPC parameters do not "
                                       "carry (they carry true/false, whole numbers and strings); send a number as "
                                       "a string"]
    assert report["errors"]["over the size limit"] == [  # grpcio's own refusal, at --max-request-bytes
        "StatusCode.RESOURCE_EXHAUSTED", "SERVER: Received message larger than max (17280034 vs. 4000000)"]
    assert report["errors"]["unload"] == ["StatusCode.UNIMPLEMENTED", "this server does not load or unload models"]
    log = server.stderr()
    assert "Traceback" not in log and "bad request (gRPC /inference.GRPCInferenceService/ModelInfer)" in log


# -- KServe's own clients -------------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_kserve_rest_client(server: ServeProcess, tensor: np.ndarray, expected: dict[str, np.ndarray],
                            binary: bool) -> None:
    import httpx
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def run() -> dict[str, np.ndarray]:
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            assert await client.is_server_ready(server.url) and await client.is_model_ready(server.url, "tiny")
            pixels = InferInput("image", list(tensor.shape), "FP32")
            pixels.set_data_from_numpy(tensor, binary_data=binary)
            parameters = {"binary_data_output": True} if binary else None
            response = await client.infer(server.url, InferRequest("tiny", [pixels], parameters=parameters),
                                          model_name="tiny")
            with pytest.raises(httpx.HTTPStatusError) as raised:
                await client.infer(server.url, InferRequest("nope", [pixels]), model_name="nope")
            assert str(raised.value).startswith("Model with name nope does not exist., '404 Not Found' for url")
            return {output.name: output.as_numpy() for output in response.outputs}
        finally:
            await client.close()

    _same(asyncio.run(run()), expected)


def test_kserve_grpc_client(server: ServeProcess, tensor: np.ndarray, expected: dict[str, np.ndarray]) -> None:
    import grpc
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def run() -> dict[str, np.ndarray]:
        client = InferenceGRPCClient(server.info["grpc_address"], retries=0)
        try:
            assert await client.is_server_ready() and await client.is_model_ready("tiny")
            pixels = InferInput("image", list(tensor.shape), "FP32")
            pixels.set_data_from_numpy(tensor, binary_data=True)
            response = await client.infer(InferRequest("tiny", [pixels]))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await client.infer(InferRequest("nope", [pixels]))
            assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.NOT_FOUND,
                                                                     "Model with name nope does not exist.")
            return {output.name: output.as_numpy() for output in response.outputs}
        finally:
            await client.close()

    _same(asyncio.run(run()), expected)
