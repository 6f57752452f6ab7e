"""The ``--server`` client against a misbehaving server (:mod:`tests.hostile_server`): bombs, endless and trickling
bodies, cut connections, junk metadata and outputs, redirects and control characters. Every case through the CLI
with its exit code and message; memory and time in a child process, measured with psutil.

No model is built: with ``--server`` the client needs only the packaged registry entry of the tiny twin.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ssdtool.backends.bounded_http import AnswerTooLarge, HttpClient, TransportError
from ssdtool.backends.remote import RemoteEngine
from ssdtool.backends.remote_answers import MAX_ANSWER_BYTES, OutputContract, read_metadata, read_response
from ssdtool.checked import all_finite
from ssdtool.cli import cli
from ssdtool.errors import ServerError, UsageError
from ssdtool.registry import load_registry
from ssdtool.serving.protocol import ServerTarget
from tests.hostile_server import HostileServer, good_outputs, gzip_bomb, json_header, run_measured

TINY = "ssd-resnet34-300-synthetic-tiny"
MAX_RSS = 300 * 2**20


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "photo.png"
    Image.fromarray(np.full((120, 160, 3), 100, np.uint8)).save(path)
    return path


def detect(url: str, image: Path, *extra: str) -> Result:
    return CliRunner().invoke(cli, ["detect", str(image), "-m", TINY, "--server", url, "-t", "0.1",
                                    "--server-retries", "0", *extra])


def refused(result: Result, code: int, *fragments: str) -> str:
    """The run failed with ``code`` and a message holding every fragment, without a traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    return result.output


def test_a_well_behaved_server_gives_its_detections(image: Path) -> None:
    with HostileServer("ok") as server:
        for protocol in ("binary", "json"):
            result = detect(server.url, image, "--protocol", protocol, "--json")
            assert result.exit_code == 0, result.output
            detections = json.loads(result.stdout)["images"][0]["detections"]
            assert [(d["label"], d["score"], d["box"]) for d in detections] == [
                ("person", 0.9, [16.0, 12.0, 80.0, 60.0]), ("horse", 0.8, [32.0, 36.0, 96.0, 108.0]),
                ("toothbrush", 0.7, [0.0, 60.0, 160.0, 120.0])]


# -- malformed answers: exit 32, naming what was wrong ----------------------------------------------------------
METADATA_CASES = {
    "metadata-array": "sent model metadata that cannot be used: it is an array; expected an object with name, "
                      "inputs and outputs",
    "metadata-no-name": "'name' is missing; expected the model's name",
    "metadata-shape-a": "inputs[0].shape is ['a']; expected a list of at most 8 integers",
    "metadata-inputs-object": "'inputs' is an object; expected an array of tensors",
    "metadata-no-tensor-input": "it lists no tensor input",
    "metadata-other-model": f"input 'image' has shape [1, 3, 1200, 1200]; {TINY}'s IR takes [1, 3, 300, 300]",
    "metadata-huge-input": "input 'image' has shape [1, 3, 2147483647, 2147483647]",
    "metadata-no-outputs": "it declares no output bboxes, labels, scores (it declares 'x')",
    "metadata-nan": "sent model metadata that is not JSON: inputs[0].shape[3]: NaN is not a JSON number",
    "metadata-not-json": "sent model metadata that is not JSON: line 1, column 1",
    "metadata-deep": "sent model metadata that is not JSON: nested too deeply",
    "metadata-huge": "answered GET /v2/models/ssd-resnet34-300-synthetic-tiny with more than 1,048,576 bytes, more "
                     "than model metadata may take",
}


@pytest.mark.parametrize("mode", list(METADATA_CASES))
def test_malformed_metadata_is_exit_32_naming_the_field(image: Path, mode: str) -> None:
    with HostileServer(mode) as server:
        refused(detect(server.url, image), 32, f"the server at {server.url}", METADATA_CASES[mode])
        assert server.hits("infer") == 0  # nothing was sent to a model the client cannot use


RESPONSE = "sent an inference response that cannot be used: "
#: mode -> message fragment in binary, and in JSON where the answer reads differently there.
OUTPUT_CASES: dict[str, tuple[str, str | None]] = {
    "boxes-wrong-shape": ("output bboxes is float32 [1, 200, 3]; expected float boxes [1, N, 4]", None),
    "labels-wrong-count": ("output labels is int64 [1, 7]; expected integer label ids [1, 200], one per box", None),
    "too-many-rows": (f"output bboxes has 400 boxes; {TINY}'s IR returns at most 200", None),
    "labels-float": ("output labels is float32 [1, 200]; expected integer label ids", None),
    "boxes-int": ("output bboxes is int64 [1, 200, 4]; expected float boxes", None),
    "scores-nan": ("outputs[2] ('scores') holds NaN or infinite values",
                   "that is not JSON: outputs[2].data[1]: NaN is not a JSON number"),
    "boxes-inf": ("outputs[0] ('bboxes') holds NaN or infinite values",
                  "that is not JSON: outputs[0].data[2]: Infinity is not a JSON number"),
    "label-999": (f"output labels holds label id 999 (at position 1); {TINY}'s label file has ids 0 to 80", None),
    "label-minus-5": ("output labels holds label id -5 (at position 2)", None),
    "score-above-1": ("output scores holds 7.5 (at position 0); expected values from 0 to 1", None),
    "box-pixels": ("output bboxes holds 280 (at position 3); expected values from 0 to 1", None),
    "no-labels": ("it has no output labels (it has 'bboxes', 'scores')", None),
}


@pytest.mark.parametrize("protocol", ["binary", "json"])
@pytest.mark.parametrize("mode", list(OUTPUT_CASES))
def test_outputs_the_model_cannot_give_are_exit_32(image: Path, mode: str, protocol: str) -> None:
    binary, json_text = OUTPUT_CASES[mode]
    expected = json_text if protocol == "json" and json_text else RESPONSE + binary
    with HostileServer(mode) as server:
        output = refused(detect(server.url, image, "--protocol", protocol), 32, f"the server at {server.url}",
                         expected)
    assert "invalid model registry" not in output  # a server's label is the server's fault, not the registry's


HEADER_CASES = {
    "parameters-list": "'parameters' is an array; expected an object",
    "outputs-object": "'outputs' is an object; expected an array of tensors",
    "response-array": "it is an array; expected an object with outputs",
    "data-strings": "outputs[0].data holds values that are not numbers",
    "data-ragged": "outputs[0].data is not a regular array of numbers",
    "shape-strings": "outputs[1].shape is ['a']; expected a list of at most 8 integers from 0 to 2^31",
    "datatype-bytes": "outputs[2].datatype is 'BYTES'; expected a numeric v2 datatype",
    "label-beyond-int64": "outputs[1].data holds values that are not numbers (or integers beyond 64 bits)",
    "precision-number": "parameters.inference_precision is 5; expected a precision name such as f32",
    "binary-size-lies": "outputs[0].parameters.binary_data_size is 1000000000; expected 3,200 bytes (FP32 "
                        "[1, 200, 4])",
    "binary-trailing": "100 bytes follow the last output's binary data",
    "header-length-junk": "its Inference-Header-Content-Length is '-12'; expected the length of its JSON header",
}


@pytest.mark.parametrize("mode", list(HEADER_CASES))
def test_malformed_responses_are_exit_32_naming_the_field(image: Path, mode: str) -> None:
    with HostileServer(mode) as server:
        refused(detect(server.url, image), 32, RESPONSE + HEADER_CASES[mode])


def test_eval_and_bench_refuse_what_detect_refuses(tmp_path: Path) -> None:
    from ssdtool.synthetic.dataset import write_dataset

    annotations, images = write_dataset(tmp_path / "dataset", count=2, seed=3)
    with HostileServer("label-999") as server:
        result = CliRunner().invoke(cli, ["eval", TINY, "--annotations", str(annotations), "--images", str(images),
                                          "--progress", "none", "--server", server.url, "--server-retries", "0"])
        refused(result, 32, RESPONSE + "output labels holds label id 999")
    with HostileServer("scores-nan") as server:
        result = CliRunner().invoke(cli, ["bench", TINY, "-n", "2", "--server", server.url])
        refused(result, 32, RESPONSE + "outputs[2] ('scores') holds NaN or infinite values")


# -- size caps, redirects, encodings ----------------------------------------------------------------------------
def test_answers_past_the_cap_and_unknown_encodings_are_exit_32(image: Path) -> None:
    infer = f"answered POST /v2/models/{TINY}/infer with more than 142,336 bytes, more than {TINY}'s outputs can " \
            "take (200 detections)"
    cases = {"gzip-bomb": "it announces 1,061,908 bytes (Content-Length)",
             "gzip-bomb-chunked": "inflating to more than 142,336 and was still going",
             "endless": "and was still going",
             "brotli": "it came with Content-Encoding 'br', which ssdtool does not decode"}
    for mode, fragment in cases.items():
        with HostileServer(mode) as server:
            refused(detect(server.url, image), 32, fragment, *([infer] if mode != "brotli" else []))
            assert server.hits("infer") == 1  # not retried: the server would only do it again
    with HostileServer("gzip-ok") as server:  # compressed although not asked: inflated, within the cap
        assert detect(server.url, image).exit_code == 0


def test_redirects_are_refused_and_never_followed_to_another_host(image: Path) -> None:
    with HostileServer("redirect-other-host") as server:
        output = refused(detect(server.url, image), 32,
                         f"redirected POST /v2/models/{TINY}/infer to another host: "
                         "http://collector.example:8080/v2/models/tiny/infer?token=*** (HTTP 307)",
                         "if that host is the right server, pass it with --server")
        assert "stolen" not in output and server.hits("infer") == 1
    with HostileServer("redirect-same-host") as server:
        refused(detect(server.url, image), 32,
                f"redirected POST /v2/models/{TINY}/infer to {server.url}/v2/models/elsewhere/infer (HTTP 307); the "
                "client follows no redirects")
        assert server.hits("infer") == 1
    with HostileServer("redirect-other-host", redirect_metadata=True) as server:
        refused(detect(server.url, image), 32, f"redirected GET /v2/models/{TINY} to another host")


# -- transport failures: retried like connection errors ---------------------------------------------------------
@pytest.mark.parametrize(("mode", "reason"), [("cut", "the connection closed in the middle of the answer"),
                                              ("cut-chunked", "the connection closed in the middle of the answer"),
                                              ("reset", "the server closed the connection without answering")])
def test_a_connection_cut_mid_answer_is_retried_then_exit_10(image: Path, mode: str, reason: str) -> None:
    with HostileServer(mode) as server:
        refused(detect(server.url, image, "--server-retries", "2"), 10,
                f"cannot reach a working server at {server.url} after 3 attempts: {reason}")
        assert server.hits("infer") == 3


@pytest.mark.parametrize("mode", ["cut-once", "error-503-once"])
def test_one_broken_answer_is_retried_and_the_run_succeeds(image: Path, mode: str) -> None:
    with HostileServer(mode) as server:
        result = detect(server.url, image, "--server-retries", "1", "--json")
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.stdout)["images"][0]["detections"]) == 3
        assert server.hits("infer") == 2


def test_an_error_status_is_exit_32_with_the_servers_message(image: Path) -> None:
    with HostileServer("error-500") as server:
        refused(detect(server.url, image), 32, f"{server.url} refused POST /v2/models/{TINY}/infer: HTTP 500: "
                                               "model crashed")


# -- server strings are escaped like file names ------------------------------------------------------------------
def test_control_characters_from_the_server_are_escaped(image: Path) -> None:
    with HostileServer("error-control") as server:
        output = refused(detect(server.url, image), 32, "HTTP 400: bad \\x1b[2Jinput\\nerror: forged line")
    assert "\x1b" not in output and output.count("\n") == 2  # the error line and the hint, nothing forged
    with HostileServer("control-precision") as server:
        result = detect(server.url, image)
        assert result.exit_code == 0, result.output
        assert "f32\\x1b[31mRED\\nfake line\\u202e" in result.output
        assert "\x1b" not in result.output and "\u202e" not in result.output
        bench = CliRunner().invoke(cli, ["bench", TINY, "--server", server.url, "-n", "2"])
        assert bench.exit_code == 0, bench.output
        assert "precision:       f32\\x1b[31mRED\\nfake line\\u202e (inference precision read back" in bench.output
        assert "\x1b" not in bench.output


def test_https_verifies_the_certificate_and_keeps_the_deadline(image: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.httpserver import make_self_signed_cert

    tls = make_self_signed_cert(tmp_path)
    if tls is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    with HostileServer("ok", tls=tls) as server:
        refused(detect(server.url, image, "--server-retries", "3"), 10, "TLS certificate not trusted",
                f"at {server.url} after 1 attempt:", "point REQUESTS_CA_BUNDLE at its certificate bundle")
        assert server.hits("metadata") == 0
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls[0]))
        result = detect(server.url, image, "--json")
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.stdout)["images"][0]["detections"]) == 3
        server.mode = "trickle"
        client = HttpClient(server.url)
        with pytest.raises(TransportError, match=r"no complete answer within 1\.5 s"):
            client.request("POST", "/v2/models/tiny/infer", b"{}", timeout=1.5, max_bytes=1_000_000)


# -- bad --server values: exit 2 ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["--server", "http://127.0.0.1:99999"], "--server URL 'http://127.0.0.1:99999' has a port that is not a number "
                                             "from 1 to 65535"),
    (["--server", "http://bob:hunter2@127.0.0.1:99999"], "--server URL 'http://***@127.0.0.1:99999' has a port"),
    (["--server", "http://127.0.0.1:0"], "has port 0"),
    (["--server", "ftp://127.0.0.1:21"], "--server takes an http:// or https:// URL, got 'ftp://127.0.0.1:21'"),
    (["--server", "http://"], "--server URL 'http://' names no host"),
    (["--server", "http://127.0.0.1:8080/?token=abc"], "'http://127.0.0.1:8080/?token=***' has a query or a fragment"),
    (["--server", "http://127.0.0.1:8080/\x1b[2J"], "'http://127.0.0.1:8080/\\x1b[2J' holds a space, a control"),
    (["--server", "http://127.0.0.1:8080", "--server-timeout", "nan"], "'nan' is not a finite number"),
    (["--server", "http://127.0.0.1:8080", "--server-model", ""], "--server-model must be a name"),
])
def test_bad_server_options_are_exit_2(image: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["detect", str(image), "-m", TINY, *args])
    refused(result, 2, message)
    assert "hunter2" not in result.output and "abc" not in result.output


def test_server_target_checks_itself_for_python_callers() -> None:
    with pytest.raises(UsageError, match="has a port that is not a number from 1 to 65535"):
        ServerTarget("http://127.0.0.1:70000")
    for field, value in (("timeout", float("nan")), ("timeout", 0.0), ("backoff", float("inf")), ("retries", -1),
                         ("concurrency", 0)):
        with pytest.raises(UsageError, match=f"server {field} must be"):
            ServerTarget("http://127.0.0.1:8080", **{field: value})


# -- memory and time, in a child process ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["gzip-bomb", "gzip-bomb-chunked", "endless"])
def test_a_bomb_or_an_endless_body_keeps_the_client_small(image: Path, mode: str) -> None:
    with HostileServer(mode) as server:
        code, stderr, peak, _ = run_measured(["detect", str(image), "-m", TINY, "--server", server.url,
                                               "--server-retries", "0"], timeout=120)
    assert code == 32 and "more than 142,336 bytes" in stderr, stderr
    assert peak < MAX_RSS, f"peak RSS {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("mode", ["trickle", "trickle-headers"])
def test_a_trickling_server_is_given_up_on_at_the_deadline(image: Path, mode: str) -> None:
    """The server sends a byte a second for ever; ``--server-timeout 2`` ends each attempt, so the run ends (before
    the fix, the timeout applied to each read and the run never ended)."""
    with HostileServer(mode) as server:
        code, stderr, _, _ = run_measured(["detect", str(image), "-m", TINY, "--server", server.url,
                                            "--server-timeout", "2", "--server-retries", "1"], timeout=120)
        assert server.hits("infer") == 2
    assert code == 10, stderr
    assert "after 2 attempts: no complete answer within 2 s (--server-timeout)" in stderr


# -- the library: the HTTP reader and the answer checks ---------------------------------------------------------
def test_the_reader_inflates_only_up_to_the_cap_and_keeps_the_deadline() -> None:
    with HostileServer("gzip-bomb-chunked") as server:
        client = HttpClient(server.url)
        with pytest.raises(AnswerTooLarge, match="inflating to more than 1,000,000"):
            client.request("POST", "/v2/models/tiny/infer", b"{}", timeout=30, max_bytes=1_000_000)
    with HostileServer("trickle") as server:
        client = HttpClient(server.url)
        with pytest.raises(TransportError, match=r"no complete answer within 1\.5 s"):
            client.request("POST", "/v2/models/tiny/infer", b"{}", timeout=1.5, max_bytes=1_000_000)
    assert len(gzip_bomb()) < 1_100_000  # the bomb is what the issue says: about 1 MB ...


def test_the_reader_reuses_its_connection_between_answers() -> None:
    with HostileServer("ok") as server:
        client = HttpClient(server.url)
        first = client.request("GET", "/v2/models/tiny", timeout=10, max_bytes=10**6)
        connection = client._connection
        second = client.request("GET", "/v2/models/tiny", timeout=10, max_bytes=10**6)
        assert first.body == second.body and first.complete and client._connection is connection


def test_a_remote_engine_without_a_registry_model_checks_form_and_numbers() -> None:
    with HostileServer("ok") as server:
        engine = RemoteEngine(ServerTarget(server.url), "tiny")
        assert engine.max_answer_bytes == MAX_ANSWER_BYTES and engine.input_shape == (1, 3, 300, 300)
        outputs = engine.infer(np.zeros((1, 3, 300, 300), np.float32))
        assert outputs["labels"][0, :3].tolist() == [1, 18, 80] and engine.inference_precision == "f32"
        server.mode = "label-999"  # no label file to hold it against: a well-formed answer
        assert engine.infer(np.zeros((1, 3, 300, 300), np.float32))["labels"][0, 1] == 999
        server.mode = "scores-nan"  # but never a non-finite number
        with pytest.raises(ServerError, match="holds NaN or infinite values"):
            engine.infer(np.zeros((1, 3, 300, 300), np.float32))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(
        st.sampled_from(["name", "datatype", "shape", "data", "parameters", "outputs", "inputs", "binary_data_size",
                         "FP32", "INT64", "bboxes", "labels", "scores", "image"]), children, max_size=6),
    max_leaves=40)
CONTRACT = OutputContract.of(load_registry().model(TINY))


def _mutated(index: int, key: str, value: Any) -> dict[str, Any]:
    """A correct JSON answer of the tiny twin with one field of one output replaced."""
    header = json_header(good_outputs())
    header["outputs"][index][key] = value
    return header


NEAR_MISSES = st.builds(_mutated, st.integers(0, 2), st.sampled_from(["name", "datatype", "shape", "data",
                                                                       "parameters"]), JSON_VALUES)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=JSON_VALUES | NEAR_MISSES, raw=st.binary(max_size=64))
def test_any_json_answer_is_used_or_refused_with_a_server_error(header: Any, raw: bytes) -> None:
    """Whatever JSON a server sends, the checks raise nothing but a ServerError, and what they let through is
    finite numbers (and, with the contract, the model's three outputs)."""
    for contract in (CONTRACT, None):
        try:
            outputs, parameters = read_response(header, raw, "the server", contract)
        except ServerError:
            pass
        else:
            assert isinstance(parameters, dict) and all(all_finite(value) for value in outputs.values())
            assert contract is None or {"bboxes", "labels", "scores"} <= set(outputs)
        try:
            metadata = read_metadata(header, "the server", contract)
        except ServerError:
            pass
        else:
            assert contract is None or metadata.tensor_input.shape == (1, 3, 300, 300)
