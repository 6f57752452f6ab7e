"""``ssdtool serve --image-input``: the image-input IR served as OVMS serves it, on the tiny twin.

Its metadata lists the IR's u8 ``[1, -1, -1, 3]`` input and its Model API metadata (``rt_info``), so OpenVINO
Model API's OVMS adapter drives it with no configuration: its detections equal ``ssdtool detect --image-input``'s at
f32. tritonclient sends images as u8 tensors of any size (binary and JSON) or, as OVMS takes them for an NHWC
input, as encoded files (BYTES); all give the local engine's outputs. ssdtool's own ``--server`` client, which
sends the standard IR's tensor, is refused with a message saying what the server takes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
from click.testing import CliRunner
from PIL import Image

from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.imaging import generated_images
from ssdtool.registry import load_registry
from tests.modelkit import ServeProcess, ServeWorld, serve_world

pytest.importorskip("kserve")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the test extra")

TOLERANCE = 1e-5
OUTPUTS = ("bboxes", "labels", "scores")
MAX_PIXELS = 1_000_000
#: Image sizes on which the tiny twin finds several objects above Model API's default threshold (0.5).
SIZES = ((640, 480), (200, 450), (1000, 300))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ServeWorld:
    from ssdtool.convert import ConvertOptions, convert

    made = serve_world(tmp_path_factory.mktemp("serve-image-input"))
    convert(load_registry(made.registry).model("tiny"), Cache.at(made.cache), ConvertOptions(image_input=True))
    return made


@pytest.fixture(scope="module")
def server(world: ServeWorld) -> Iterator[ServeProcess]:
    process = ServeProcess(world, 0, "--image-input", "--max-pixels", str(MAX_PIXELS), "--grpc-port", "0")
    yield process
    assert process.terminate() == 0


@pytest.fixture(scope="module")
def xml(world: ServeWorld) -> Any:
    return world.cache / "tiny" / "openvino" / "FP32-image" / "tiny.xml"


@pytest.fixture(scope="module")
def local_engine(xml: Any) -> Any:
    from ssdtool.backends.openvino import OpenVinoEngine

    return OpenVinoEngine(xml, inference_precision="f32")


def _bgr(size: tuple[int, int], seed: int = 9) -> np.ndarray:
    """A generated image as OpenCV (and OVMS, and Model API) hold it: u8 ``[1, H, W, 3]`` BGR."""
    return np.ascontiguousarray(generated_images(1, seed=seed, size=size)[0][None, ..., ::-1])


def _same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, atol=TOLERANCE, rtol=0, err_msg=name)


def test_metadata_is_the_image_input_irs_with_its_model_api_metadata(server: ServeProcess, xml: Any) -> None:
    from ssdtool.provenance import read_section

    assert server.info["image_input"] is True and server.info["model_path"] == str(xml)
    metadata = requests.get(f"{server.url}/v2/models/tiny", timeout=30).json()
    assert metadata["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [1, -1, -1, 3]}]
    assert [output["name"] for output in metadata["outputs"]] == list(OUTPUTS)
    model_info = read_section(xml, "model_info")
    assert model_info is not None and metadata["rt_info"] == {"model_info": model_info}
    assert model_info["embedded_processing"] == "True" and model_info["model_type"] == "SSD"
    assert "rt_info" not in requests.get(f"{server.url}/v2/models/tiny-detections", timeout=30).json()


@pytest.mark.parametrize("size", SIZES)
def test_model_api_ovms_adapter_equals_ssdtool_detect(server: ServeProcess, world: ServeWorld,
                                                      size: tuple[int, int]) -> None:
    """What the issue found broken in three steps: the adapter's constructor (a 1-D input in the metadata), no
    ``rt_info``, and a raw image the IR could not take. Now ``create_model`` with the server's URL alone (no model
    type, no configuration) gives ssdtool's detections."""
    pytest.importorskip("model_api", reason="Model API is in the test extra (Python 3.11+)")
    from model_api.models import SSD, DetectionModel

    from ssdtool import Detector

    model = DetectionModel.create_model(f"{server.url.removeprefix('http://')}/v2/models/tiny")
    assert isinstance(model, SSD) and model.params.embedded_processing is True
    assert model.params.labels[:3] == ["__background__", "person", "bicycle"]
    image = _bgr(size)
    result = model(image[0])  # Model API's image: H x W x 3, BGR, as OpenCV reads it
    with Detector("tiny", "openvino", inference_precision="f32", registry=world.registry, cache_dir=world.cache,
                  image_input=True, offline=True) as detector:
        ours = detector(np.ascontiguousarray(image[0, ..., ::-1]))
    assert len(ours) >= 3 and len(result.bboxes) == len(ours)
    assert [int(label) for label in result.labels] == [d.label_id for d in ours]
    assert list(result.label_names) == [d.label.replace(" ", "_") for d in ours]
    np.testing.assert_allclose(np.asarray(result.scores, np.float64), [d.score for d in ours], atol=1e-5)
    boxes = np.asarray(result.bboxes, np.float64)
    assert np.abs(boxes - np.asarray([d.box for d in ours])).max() <= 0.5 + 1e-3  # Model API's whole pixels


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_sends_images_of_any_size(server: ServeProcess, local_engine: Any, binary: bool) -> None:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        for size in ((640, 480), (123, 77)):
            image = _bgr(size)
            pixels = httpclient.InferInput("image", list(image.shape), "UINT8")
            pixels.set_data_from_numpy(image, binary_data=binary)
            result = client.infer("tiny", [pixels])
            _same({name: result.as_numpy(name) for name in OUTPUTS}, local_engine.infer(image))
    finally:
        client.close()


def test_an_encoded_image_in_place_of_the_tensor_as_ovms_takes_it(server: ServeProcess, local_engine: Any) -> None:
    """OVMS's binary input: a JPEG or PNG as one BYTES element for an NHWC input, decoded into BGR pixels; a PNG
    (lossless) gives exactly the outputs of its pixels sent as a tensor."""
    image = _bgr((640, 480))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[0, ..., ::-1])).save(buffer, format="PNG")
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        encoded = httpclient.InferInput("image", [1], "BYTES")
        encoded.set_data_from_numpy(np.array([buffer.getvalue()], dtype=np.object_))
        result = client.infer("tiny", [encoded])
    finally:
        client.close()
    _same({name: result.as_numpy(name) for name in OUTPUTS}, local_engine.infer(image))


def test_kserve_grpc_client_sends_pixels_and_files(server: ServeProcess, local_engine: Any) -> None:
    """Over gRPC too: the pixels as a u8 tensor, and a PNG as one BYTES element of the same input."""
    import asyncio

    from kserve import InferenceGRPCClient, InferInput, InferRequest

    image = _bgr((320, 240))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[0, ..., ::-1])).save(buffer, format="PNG")

    async def run() -> list[dict[str, np.ndarray]]:
        client = InferenceGRPCClient(server.info["grpc_address"], retries=0)
        try:
            pixels = InferInput("image", list(image.shape), "UINT8")
            pixels.set_data_from_numpy(image, binary_data=True)
            encoded = InferInput("image", [1], "BYTES")
            encoded.set_data_from_numpy(np.array([buffer.getvalue()], dtype=np.object_), binary_data=True)
            answers = [await client.infer(InferRequest("tiny", [given])) for given in (pixels, encoded)]
            return [{output.name: output.as_numpy() for output in answer.outputs} for answer in answers]
        finally:
            await client.close()

    for got in asyncio.run(run()):
        _same(got, local_engine.infer(image))


def test_the_detections_model_runs_the_image_input_ir(server: ServeProcess, world: ServeWorld) -> None:
    from ssdtool import Detector

    path = world.images[0]
    data = path.read_bytes()
    raw = len(data).to_bytes(4, "little") + data
    header = json.dumps({"inputs": [{"name": "encoded_image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"threshold": 0.1}}).encode()
    answer = requests.post(f"{server.url}/v2/models/tiny-detections/infer", data=header + raw, timeout=60,
                           headers={"Inference-Header-Content-Length": str(len(header))}).json()
    outputs = {output["name"]: np.asarray(output["data"]).reshape(output["shape"]) for output in answer["outputs"]}
    with Detector("tiny", "openvino", inference_precision="f32", registry=world.registry, cache_dir=world.cache,
                  image_input=True, threshold=0.1, offline=True) as detector:
        local = detector(path)
    assert len(local) > 3
    np.testing.assert_allclose(outputs["detection_boxes"], [d.box for d in local], atol=1e-3)
    assert outputs["detection_labels"].tolist() == [d.label_id for d in local]


def _json(shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "image", "shape": shape, "datatype": "UINT8", "data": data}]}


@pytest.mark.parametrize(("request_body", "status", "error"), [
    (_json([1, 2, 2, 4], [0] * 16), 400,
     "input 'image' has shape [1, 2, 2, 4]; expected input 'image', UINT8 [1, -1, -1, 3] (raw BGR pixels 0-255, or an "
     "encoded image as one BYTES element)"),
    (_json([1, 0, 2, 3], []), 400, "input 'image' has shape [1, 0, 2, 3]"),
    (_json([1, 1, 2, 3], [0, 1, 2, 3, 4, 256]), 400, "input 'image': UINT8 data must be whole numbers from 0 to 255"),
    (_json([1, 1, 2, 3], [0, 1, 2, 3, 4, 5.5]), 400, "input 'image': UINT8 data must be whole numbers from 0 to 255"),
    (_json([1, 2, 2, 3], [0, 1, 2]), 400, "input 'image': its data does not fill shape [1, 2, 2, 3] with numbers"),
    (_json([1, 1001, 1000, 3], []), 413,
     "input 'image': 1000x1001 = 1,001,000 pixels is over the server's limit of 1,000,000 (ssdtool serve "
     "--max-pixels)"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["not an image"]}]}, 400,
     "input 'image' is not an image Pillow can decode (12 bytes)"),
], ids=["four channels", "no rows", "256", "a fraction", "too few", "over the pixel limit", "not an image"])
def test_what_the_image_input_model_refuses(server: ServeProcess, request_body: dict[str, Any], status: int,
                                            error: str) -> None:
    answer = requests.post(f"{server.url}/v2/models/tiny/infer", json=request_body, timeout=60)
    assert answer.status_code == status and answer.json()["error"].startswith(error), answer.text


def test_the_server_client_is_told_what_the_server_takes(server: ServeProcess, world: ServeWorld) -> None:
    result = CliRunner().invoke(cli, world.args("detect", str(world.images[0]), "-m", "tiny", "--server",
                                                server.url))
    assert result.exit_code == 32, result.output
    assert "input 'image' has shape [1, -1, -1, 3]; tiny's IR takes" in result.output
