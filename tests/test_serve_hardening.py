"""``ssdtool serve`` against hostile requests, in process on the tiny twin: malformed binary requests are 400 with
the reason and no traceback in the log, non-finite tensors are refused, encoded images over the pixel limit or the
decode budget are 413, model versions and unknown names are 404, and schemathesis, run on the server's own OpenAPI
document, finds no 5xx; afterwards the server still answers a real inference exactly."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
from click.testing import CliRunner
from PIL import Image

from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.errors import UsageError
from ssdtool.imaging import preprocess
from ssdtool.registry import load_registry
from ssdtool.serving.protocol import HEADER_LENGTH, IMAGE_INPUT
from tests.modelkit import ServeWorld, Tracebacks, serve_world, watched_tracebacks

pytest.importorskip("kserve")

MAX_BODY = 4_000_000
MAX_PIXELS = 4_000_000
DECODE_MEMORY = 32 << 20  # an RGB image of 2000 x 1500 is estimated at 36 MB to decode: over it
TENSOR_BYTES = 1 * 3 * 300 * 300 * 4


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ServeWorld:
    return serve_world(tmp_path_factory.mktemp("serve-hardening"))


@pytest.fixture(scope="module")
def tracebacks() -> Iterator[Tracebacks]:
    with watched_tracebacks() as handler:
        yield handler


@pytest.fixture(scope="module")
def server(world: ServeWorld, tracebacks: Tracebacks) -> Iterator[Any]:
    from ssdtool.serving import ServeOptions, start_server

    options = ServeOptions(port=0, inference_precision="f32", model_name="tiny", max_request_bytes=MAX_BODY,
                           max_pixels=MAX_PIXELS, decode_memory=DECODE_MEMORY, offline=True)
    with start_server(load_registry(world.registry).model("tiny"), Cache.at(world.cache), options) as running:
        yield running
    assert tracebacks.records == []


@pytest.fixture(scope="module")
def local_engine(world: ServeWorld) -> Any:
    from ssdtool.backends.openvino import OpenVinoEngine

    return OpenVinoEngine(world.cache / "tiny" / "openvino" / "FP32" / "tiny.xml", inference_precision="f32")


def _post(server: Any, body: bytes, headers: dict[str, str]) -> requests.Response:
    """POST to the model the request is for: the detections model for an encoded image, else the IR model."""
    model = "tiny-detections" if f'"{IMAGE_INPUT}"'.encode() in body[:300] else "tiny"
    return requests.post(f"{server.url}/v2/models/{model}/infer", data=body, headers=headers, timeout=60)


def _binary(header: dict[str, Any] | bytes, raw: bytes = b"") -> tuple[bytes, dict[str, str]]:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    return encoded + raw, {HEADER_LENGTH: str(len(encoded))}


def _image_input(size: int) -> dict[str, Any]:
    return {"name": IMAGE_INPUT, "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": size}}


def _tensor_input(shape: list[Any], size: Any = TENSOR_BYTES) -> dict[str, Any]:
    return {"name": "image", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": size}}


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png((64, 48))
IMAGE = len(PNG).to_bytes(4, "little") + PNG
ZEROS = b"\0" * TENSOR_BYTES

#: case -> (body, headers, the error's text). Each was a 500 with two tracebacks, or accepted, before.
MALFORMED = {
    "binary_data_size 1e400": (
        *_binary(b'{"inputs":[{"name":"image","shape":[1,3,300,300],"datatype":"FP32",'
                 b'"parameters":{"binary_data_size":1e400}}]}', ZEROS),
        "JSON header (109 bytes) is not valid: inputs[0].parameters.binary_data_size: the number 1e400 is too large "
        "for a 64-bit float"),
    "binary_data_size NaN": (
        *_binary(b'{"inputs":[{"name":"image","shape":[1,3,300,300],"datatype":"FP32",'
                 b'"parameters":{"binary_data_size":NaN}}]}', ZEROS),
        "NaN is not a JSON number"),
    "binary_data_size 4.5": (*_binary({"inputs": [_tensor_input([1, 3, 300, 300], 4.5)]}, ZEROS),
                             "binary_data_size must be a whole number of bytes >= 0 (or send 'data'), got 4.5"),
    "BYTES length prefix 2^31": (*_binary({"inputs": [_image_input(8)]}, (2**31).to_bytes(4, "little") + b"abcd"),
                                 "BYTES element 0 declares 2147483648 bytes, but only 4 are left"),
    "BYTES length prefix of 2 bytes": (*_binary({"inputs": [_image_input(2)]}, b"\x01\x00"),
                                       "BYTES element 0 needs a 4-byte length, but only 2 bytes are left"),
    "two BYTES elements for shape [1]": (*_binary({"inputs": [_image_input(2 * len(IMAGE))]}, IMAGE + IMAGE),
                                         f"{len(IMAGE)} bytes follow its 1 BYTES elements"),
    '"outputs": 5': (*_binary({"inputs": [_image_input(len(IMAGE))], "outputs": 5}, IMAGE),
                     "'outputs' must be a list of output objects, got a number 5"),
    '"outputs": [5]': (*_binary({"inputs": [_image_input(len(IMAGE))], "outputs": [5]}, IMAGE),
                       "outputs[0] must be an object with a string 'name', got 5"),
    '"parameters": 5': (*_binary({"inputs": [_image_input(len(IMAGE))], "parameters": 5}, IMAGE),
                        "'parameters' must be an object, got a number 5"),
    '"id": {}': (*_binary({"inputs": [_image_input(len(IMAGE))], "id": {}}, IMAGE), "'id' must be a string"),
    '"id": 5': (*_binary({"inputs": [_image_input(len(IMAGE))], "id": 5}, IMAGE), "'id' must be a string"),
    "input parameters 5": (*_binary({"inputs": [{**_image_input(len(IMAGE)), "parameters": 5}]}, IMAGE),
                           "input 'encoded_image': parameters must be an object, got a number 5"),
    "binary_data_output 'yes'": (
        *_binary({"inputs": [_image_input(len(IMAGE))], "parameters": {"binary_data_output": "yes"}}, IMAGE),
        "parameter 'binary_data_output' must be true or false, got 'yes'"),
    "shape [1,3,300,300.7]": (*_binary({"inputs": [_tensor_input([1, 3, 300, 300.7])]}, ZEROS),
                              "shape must be a list of at most 8 whole numbers >= 0, got [1, 3, 300, 300.7]"),
    "shape [1,3,300,'300']": (*_binary({"inputs": [_tensor_input([1, 3, 300, "300"])]}, ZEROS),
                              "shape must be a list of at most 8 whole numbers >= 0"),
    "size not the shape's": (*_binary({"inputs": [_tensor_input([1, 3, 300, 300], 8)]}, b"\0" * 8),
                             "binary_data_size is 8 bytes; shape [1, 3, 300, 300] of FP32 takes 1080000"),
    "bytes after the last input": (*_binary({"inputs": [_image_input(len(IMAGE))]}, IMAGE + b"junk"),
                                   "4 bytes follow the last input's data"),
    "unknown datatype": (*_binary({"inputs": [{**_tensor_input([1]), "datatype": "FP128"}]}, b""),
                         "datatype must be one of BOOL, UINT8"),
    "header not an object": (*_binary(b"[1, 2]"), "JSON header must be an object, got a list"),
    "header length 0": (b"{}", {HEADER_LENGTH: "0"}, "is 0; expected the length of the JSON header, from 1 to 2"),
    "header length not a number": (b"{}", {HEADER_LENGTH: "\u00b2"}, "must be a whole number of bytes"),
    "NaN in a binary tensor": (*_binary({"inputs": [_tensor_input([1, 3, 300, 300])]},
                                        np.full(270000, np.nan, dtype=np.float32).tobytes()),
                               "input 'image' holds NaN or infinite values"),
    "inf in a JSON tensor": (b'{"inputs":[{"name":"image","shape":[1,3,300,300],"datatype":"FP32","data":[Infinity'
                             + b",1" * 269999 + b"]}]}", {"Content-Type": "application/json"},
                             "is not valid JSON: inputs[0].data[0]: Infinity is not a JSON number"),
    "threshold NaN": (b'{"inputs":[{"name":"encoded_image","shape":[1],"datatype":"BYTES","data":["x"]}],'
                      b'"parameters":{"threshold":NaN}}', {"Content-Type": "application/json"},
                      "is not valid JSON: parameters.threshold: NaN is not a JSON number"),
    "threshold 7": (b'{"inputs":[{"name":"encoded_image","shape":[1],"datatype":"BYTES","data":["x"]}],'
                    b'"parameters":{"threshold":7}}', {"Content-Type": "application/json"},
                    "parameter 'threshold' must be a number from 0 to 1, got 7"),
    "threshold 'nan'": (b'{"inputs":[{"name":"encoded_image","shape":[1],"datatype":"BYTES","data":["x"]}],'
                        b'"parameters":{"threshold":"nan"}}', {},
                        "parameter 'threshold' must be a number from 0 to 1, got 'nan'"),
    "a JSON image that is not one": (
        json.dumps({"inputs": [{"name": IMAGE_INPUT, "shape": [1], "datatype": "BYTES", "data": ["\u20ac"]}]})
        .encode(), {"Content-Type": "application/json"}, "is not an image Pillow can decode (3 bytes)"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_request_is_400_with_the_reason_and_no_traceback(server: Any, tracebacks: Tracebacks,
                                                                      case: str) -> None:
    body, headers, text = MALFORMED[case]
    answer = _post(server, body, headers)
    assert answer.status_code == 400, answer.text
    assert text in answer.json()["error"]
    assert tracebacks.records == []


def test_an_unexpected_error_is_500_with_its_traceback_in_the_log(server: Any, tracebacks: Tracebacks,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """What the traceback checks above would see: a bug (here a planted one) is a 500, logged with its traceback."""
    from ssdtool.serving.model import IRModel

    def broken(*_args: Any) -> Any:
        raise RuntimeError("planted")

    monkeypatch.setattr(IRModel, "_tensor", staticmethod(broken))
    answer = _post(server, *_binary({"inputs": [_tensor_input([1, 3, 300, 300])]}, ZEROS))
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error (RuntimeError); the server's log has the details"}
    assert [str(record.exc_info[1]) for record in tracebacks.records if record.exc_info] == ["planted"]  # once
    tracebacks.records.clear()


def _image_request(data: bytes) -> tuple[bytes, dict[str, str]]:
    raw = len(data).to_bytes(4, "little") + data
    return _binary({"inputs": [_image_input(len(raw))]}, raw)


@pytest.mark.parametrize(("size", "mode", "status", "text"), [
    ((2100, 2000), "L", 413, "2100x2000 = 4,200,000 pixels is over the server's limit of 4,000,000 "
                             "(ssdtool serve --max-pixels)"),
    ((2000, 1500), "RGB", 413, "decoding this 2000x1500 RGB image takes about 34 MiB, over the server's decode "
                               "budget of 32 MiB (ssdtool serve --decode-memory)"),
    ((2000, 1500), "L", 200, ""),  # half the cost of RGB: within the budget
])
def test_an_image_over_the_pixel_limit_or_the_decode_budget_is_413(server: Any, size: tuple[int, int], mode: str,
                                                                    status: int, text: str) -> None:
    answer = _post(server, *_image_request(_png(size, mode)))
    assert answer.status_code == status, answer.text
    if status != 200:
        assert answer.json() == {"error": f"input 'encoded_image': {text}"}


def test_versions_unknown_models_and_the_repository_are_404(server: Any, tracebacks: Tracebacks) -> None:
    versions = "this server serves its models without versions: leave out /versions/VERSION and model_version"
    routes = ("this server answers GET /v2, GET /v2/health/live, GET /v2/health/ready, GET /v2/models, "
              "GET /v2/models/NAME, GET /v2/models/NAME/ready, POST /v2/models/NAME/infer, GET /metrics")
    for method, path, error in (
            ("GET", "/v2/models/tiny?model_version=2", versions),
            ("GET", "/v2/models/tiny/versions/1/ready", versions),
            ("POST", "/v2/models/tiny/versions/1/infer", versions),
            ("POST", "/v2/models/tiny-detections/versions/1/infer", versions),
            ("GET", "/v2/models/nope", "Model with name nope does not exist."),
            ("POST", "/v2/models/nope/infer", "Model with name nope does not exist."),
            ("POST", "/v2/repository/models/tiny/unload",
             f"not found: POST /v2/repository/models/tiny/unload; {routes}"),
            ("GET", "/v2/models/tiny/metadata", f"not found: GET /v2/models/tiny/metadata; {routes}")):
        answer = requests.request(method, f"{server.url}{path}", timeout=30)
        assert (answer.status_code, answer.json()) == (404, {"error": error})
    assert requests.get(f"{server.url}/v2/models/tiny?model_version=", timeout=30).status_code == 200
    assert tracebacks.records == []


def test_schemathesis_finds_no_server_error_and_the_server_still_answers(server: Any, world: ServeWorld,
                                                                          local_engine: Any) -> None:
    """schemathesis on the server's own OpenAPI document (kserve's routes; the binary extension added, see
    :func:`ssdtool.serving.app.openapi_document`), valid and invalid requests, a bounded number of each."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error

    document = server.openapi()
    assert "/v2/repository/models/{model_name}/load" not in document["paths"]
    infer = document["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    schema = schemathesis.openapi.from_dict(document)
    calls: dict[str, list[int]] = {}

    def run(operation: Any, examples: int) -> None:
        strategy = st.one_of(operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
                             operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))

        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def call(case: Any) -> None:
            response = case.call_and_validate(base_url=server.url, checks=[not_a_server_error], timeout=60)
            calls.setdefault(operation.label, []).append(response.status_code)

        call()

    for result in schema.get_all_operations():
        operation = result.ok()
        run(operation, 60 if "infer" in operation.label else 10)
    assert len(calls) >= 7 and len(calls["POST /v2/models/{model_name}/infer"]) >= 30
    entry = load_registry(world.registry).model("tiny")
    tensor = preprocess(np.asarray(Image.open(world.images[0]).convert("RGB")), entry, form="ir")
    body, headers = _binary({"inputs": [_tensor_input([1, 3, 300, 300])]}, tensor.tobytes())
    answer = _post(server, body, headers)
    assert answer.status_code == 200, answer.text
    scores = next(out for out in answer.json()["outputs"] if out["name"] == "scores")
    np.testing.assert_allclose(scores["data"], local_engine.infer(tensor)["scores"].ravel(), atol=1e-5)


@pytest.mark.parametrize("name", ["a/b", "..", ".hidden", "", "a b", "tiny?x=1", "x" * 129, "caf\u00e9"])
def test_a_model_name_that_is_not_one_path_segment_is_refused(world: ServeWorld, name: str) -> None:
    result = CliRunner().invoke(cli, world.args("serve", "tiny", "--model-name", name, "--port", "0", "--offline"))
    assert result.exit_code == 2, result.output
    assert "is not one URL path segment (the NAME in /v2/models/NAME/infer)" in result.output
    assert "letters, digits, '.', '_' and '-'" in result.output


@pytest.mark.parametrize(("option", "value", "text"), [
    ("--header-timeout", "nan", "'nan' is not a finite number"),
    ("--body-timeout", "0", "0<x<=3600"),
    ("--max-connections", "0", "1<=x<=65536"),
    ("--decode-memory", "-1", "x>=1"),
    ("--max-pixels", "1.5", "'1.5' is not a valid integer"),
])
def test_a_limit_out_of_range_is_a_usage_error(world: ServeWorld, option: str, value: str, text: str) -> None:
    result = CliRunner().invoke(cli, world.args("serve", "tiny", option, value, "--port", "0", "--offline"))
    assert result.exit_code == 2 and option in result.output and text in result.output, result.output


@pytest.mark.parametrize(("changes", "text"), [
    ({"decode_memory": 0}, "decode_memory must be a whole number of at least 1, got 0"),
    ({"max_pixels": 2.5}, "max_pixels must be None or a whole number of at least 1, got 2.5"),
    ({"grace_seconds": math.nan}, "grace_seconds must be a finite number of seconds >= 0, got nan"),
    ({"limits": {"header_timeout": math.inf}}, "header_timeout must be a finite number of seconds above 0, got inf"),
    ({"limits": {"body_timeout": 0}}, "body_timeout must be a finite number of seconds above 0, got 0"),
    ({"limits": {"max_connections": True}}, "max_connections must be a whole number of at least 1, got True"),
])
def test_serve_options_are_checked_before_anything_loads(changes: dict[str, Any], text: str) -> None:
    from ssdtool.serving.limits import ConnectionLimits
    from ssdtool.serving.server import ServeOptions, check_options

    limits = ConnectionLimits(**changes.pop("limits", {}))
    with pytest.raises(UsageError) as raised:
        check_options(ServeOptions(limits=limits, **changes))
    assert raised.value.message == text


def test_the_command_defaults_are_the_library_defaults() -> None:
    from ssdtool.commands import serve
    from ssdtool.serving import limits, protocol

    assert serve.DEFAULT_MAX_REQUEST_BYTES == protocol.DEFAULT_MAX_REQUEST_BYTES
    for name in ("DEFAULT_DECODE_MEMORY", "DEFAULT_HEADER_TIMEOUT", "DEFAULT_BODY_TIMEOUT", "DEFAULT_MAX_CONNECTIONS"):
        assert getattr(serve, name) == getattr(limits, name), name
