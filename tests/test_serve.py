"""``ssdtool serve`` and the ``--server`` client on the tiny twin, all on 127.0.0.1.

One server process per module (started with ``--port 0``; its URL is read from the JSON line it prints), pinned
to f32 so its numbers can be compared with local inference of the same IR. The restart and SIGTERM test starts
its own servers on one free port.
"""

from __future__ import annotations

import io
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from click.testing import CliRunner
from PIL import Image

from ssdtool.cli import cli
from ssdtool.errors import NetworkError, ServerError
from ssdtool.imaging import generated_images, preprocess
from ssdtool.registry import load_registry
from ssdtool.serving.protocol import DETECTION_OUTPUTS, EXTENSIONS, HEADER_LENGTH, IMAGE_INPUT, ServerTarget
from tests.modelkit import SERVE_MAX_BODY as MAX_BODY
from tests.modelkit import ServeProcess, ServeWorld, free_port, serve_world

pytest.importorskip("kserve")

TOLERANCE = 1e-5
DETECTIONS = "tiny-detections"  # the detections model beside the IR model "tiny"


World = ServeWorld


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return serve_world(tmp_path_factory.mktemp("serve-world"))


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[ServeProcess]:
    process = ServeProcess(world)
    yield process
    assert process.terminate() == 0


@pytest.fixture(scope="module")
def local_engine(world: World) -> Any:
    from ssdtool.backends.openvino import OpenVinoEngine

    return OpenVinoEngine(world.cache / "tiny" / "openvino" / "FP32" / "tiny.xml", inference_precision="f32")


def _tensor(world: World, index: int) -> np.ndarray:
    entry = load_registry(world.registry).model("tiny")
    rgb = np.asarray(Image.open(world.images[index % len(world.images)]).convert("RGB"))
    return preprocess(rgb, entry, form="ir")


def _remote(url: str, **options: Any) -> Any:
    from ssdtool.backends.remote import RemoteEngine

    return RemoteEngine(ServerTarget(url, **options), "tiny")


# -- protocol -------------------------------------------------------------------------------------------------
def test_binds_loopback_and_answers_health_metadata_and_metrics(server: ServeProcess) -> None:
    from ssdtool import __version__
    from ssdtool.provenance import read_section

    assert server.url.startswith("http://127.0.0.1:")
    assert server.info["inference_precision"] == "f32" and server.info["precision"] == "FP32"
    assert server.info["detections_model"] == DETECTIONS and server.info["grpc_address"] is None
    assert requests.get(f"{server.url}/v2/health/live", timeout=10).json() == {"live": True}
    assert requests.get(f"{server.url}/v2/health/ready", timeout=10).json() == {"ready": True}
    assert requests.get(f"{server.url}/v2", timeout=10).json() == {
        "name": "ssdtool", "version": __version__, "extensions": ["binary_tensor_data"]}
    assert EXTENSIONS == ("binary_tensor_data",)
    # The IR model lists exactly the IR's tensors, as OVMS and Triton list them for the same IR, and the IR's Model
    # API section (rt_info/model_info) as OVMS adds it.
    model_info = read_section(Path(server.info["model_path"]), "model_info")
    assert model_info is not None and model_info["model_type"] == "SSD"
    assert requests.get(f"{server.url}/v2/models/tiny", timeout=10).json() == {
        "name": "tiny", "platform": "", "rt_info": {"model_info": model_info},
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 300, 300]}],
        "outputs": [{"name": "bboxes", "datatype": "FP32", "shape": [1, 200, 4]},
                    {"name": "labels", "datatype": "INT64", "shape": [1, 200]},
                    {"name": "scores", "datatype": "FP32", "shape": [1, 200]}]}
    assert requests.get(f"{server.url}/v2/models/{DETECTIONS}", timeout=10).json() == {
        "name": DETECTIONS, "platform": "", "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": DETECTION_OUTPUTS[0], "datatype": "FP32", "shape": [-1, 4]},
                    {"name": DETECTION_OUTPUTS[1], "datatype": "INT64", "shape": [-1]},
                    {"name": DETECTION_OUTPUTS[2], "datatype": "FP32", "shape": [-1]}]}
    for model in ("tiny", DETECTIONS):
        assert requests.get(f"{server.url}/v2/models/{model}/ready", timeout=10).json() == {"name": model,
                                                                                           "ready": True}
    requests.post(f"{server.url}/v2/models/tiny/infer", data=b"{}", timeout=10)
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert "request_predict_seconds" in metrics
    for path in ("/v2/repository/models/tiny/unload", "/v2/repository/index", "/docs", "/openapi.json"):
        method = requests.post if "repository" in path else requests.get
        answer = method(f"{server.url}{path}", timeout=10)
        assert answer.status_code == 404 and answer.json()["error"].startswith(f"not found: {answer.request.method}")
    assert requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200


@pytest.mark.parametrize("protocol", ["binary", "json"])
def test_tensor_request_equals_local_inference(world: World, server: ServeProcess, local_engine: Any,
                                               protocol: str) -> None:
    remote = _remote(server.url, protocol=protocol)
    tensor = _tensor(world, 0)
    expected, got = local_engine.infer(tensor), remote.infer(tensor)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, atol=TOLERANCE, rtol=0)
    assert remote.inference_precision == "f32"  # reported by the server with each answer
    assert remote.device == server.url and remote.input_shape == (1, 3, 300, 300)


def _image_request(data: bytes, threshold: float | None = None) -> tuple[bytes, dict[str, str]]:
    raw = len(data).to_bytes(4, "little") + data
    header: dict[str, Any] = {"inputs": [{"name": IMAGE_INPUT, "shape": [1], "datatype": "BYTES",
                                          "parameters": {"binary_data_size": len(raw)}}]}
    if threshold is not None:
        header["parameters"] = {"threshold": threshold}
    encoded = json.dumps(header).encode()
    return encoded + raw, {HEADER_LENGTH: str(len(encoded)), "Content-Type": "application/octet-stream"}


def test_encoded_image_request_equals_local_detect(world: World, server: ServeProcess) -> None:
    from ssdtool.detect import Detector

    path = world.images[0]
    body, headers = _image_request(path.read_bytes(), threshold=0.1)
    answer = requests.post(f"{server.url}/v2/models/{DETECTIONS}/infer", data=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    outputs = {out["name"]: np.asarray(out["data"]).reshape(out["shape"]) for out in answer.json()["outputs"]}
    with Detector("tiny", "openvino", inference_precision="f32", registry=world.registry, cache_dir=world.cache,
                  threshold=0.1, offline=True) as detector:
        local = detector(path)
    assert len(local) > 5 and outputs["detection_boxes"].shape == (len(local), 4)
    np.testing.assert_allclose(outputs["detection_boxes"], [d.box for d in local], atol=1e-3)
    assert outputs["detection_labels"].tolist() == [d.label_id for d in local]
    np.testing.assert_allclose(outputs["detection_scores"], [d.score for d in local], atol=TOLERANCE)


@pytest.mark.parametrize("protocol", ["binary", "json"])
def test_detect_with_server_equals_local_detect(world: World, server: ServeProcess, protocol: str) -> None:
    images = [str(p) for p in world.images]
    local = CliRunner().invoke(cli, world.args("detect", *images, "-m", "tiny", "--inference-precision", "f32",
                                               "--json", "-t", "0.2", "--offline"))
    remote = CliRunner().invoke(cli, world.args("detect", *images, "-m", "tiny", "--server", server.url,
                                                "--protocol", protocol, "--concurrency", "3", "--json", "-t", "0.2"))
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    local_images, remote_images = json.loads(local.stdout)["images"], json.loads(remote.stdout)["images"]
    assert sum(len(image["detections"]) for image in local_images) > 10
    assert remote_images == local_images
    run = json.loads(remote.stdout)["run"]
    assert run["backend"] == "remote" and run["device"] == server.url
    assert run["inference_precision"] == "f32"  # what the server reported with its answers


# -- bad requests -----------------------------------------------------------------------------------------------
def _tensor_json(name: str = "image", shape: tuple[int, ...] = (1, 3, 300, 300), datatype: str = "FP32",
                 count: int | None = None) -> bytes:
    size = count if count is not None else int(np.prod(shape))
    return json.dumps({"inputs": [{"name": name, "shape": list(shape), "datatype": datatype,
                                   "data": [1.0] * size}]}).encode()


JSON_TYPE = {"Content-Type": "application/json"}
BAD_REQUESTS = {
    "wrong shape": (_tensor_json(shape=(1, 3, 200, 200)), JSON_TYPE, 400, "shape"),
    "wrong dtype": (_tensor_json(datatype="INT32"), JSON_TYPE, 400, "datatype"),
    "wrong name": (_tensor_json(name="pixels"), JSON_TYPE, 400, "unknown input 'pixels'"),
    "too little data": (_tensor_json(count=10), JSON_TYPE, 400, "image"),
    "garbage JSON": (b"{not json", JSON_TYPE, 400, "is not valid JSON: line 1, column 2"),
    "garbage JSON, no Content-Type": (b"{not json", {}, 400, "is not valid JSON: line 1, column 2"),
    "JSON off the protocol": (b'{"inputs": 5}', JSON_TYPE, 400,
                              "the request does not follow the protocol: inputs: Input should be a valid list"),
    "no inputs": (b'{"inputs": []}', JSON_TYPE, 400, "exactly one input"),
    "over the size limit": (b"x" * (MAX_BODY + 1), JSON_TYPE, 413, "limit"),
    "bad binary header": (b'{"inputs": [}' + b"\0" * 16, {HEADER_LENGTH: "13"}, 400, "binary request"),
    "binary size past the end": (b'{"inputs":[{"name":"image","shape":[1,3,300,300],"datatype":"FP32",'
                                 b'"parameters":{"binary_data_size":1080000}}]}' + b"\0" * 8, {}, 400, "past the end"),
    "an image to the IR model": (*_image_request(b"x"), 400, "unknown input 'encoded_image'; expected input 'image'"),
    "not an image": (*_image_request(b"this is not a picture"), 400, "decode"),
    "bad threshold": (*_image_request(b"x", threshold=7), 400, "threshold"),
    "a tensor to the detections model": (_tensor_json(), JSON_TYPE, 400, "unknown input 'image'; expected "
                                                                         "'encoded_image'"),
}
#: The cases sent to the detections model; the others go to the IR model.
TO_DETECTIONS = ("not an image", "bad threshold", "a tensor to the detections model")


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_4xx_json_and_the_server_keeps_serving(world: World, server: ServeProcess,
                                                                local_engine: Any, case: str) -> None:
    body, headers, status, text = BAD_REQUESTS[case]
    if case == "binary size past the end":
        headers = {HEADER_LENGTH: str(len(body) - 8)}
    model = DETECTIONS if case in TO_DETECTIONS else "tiny"
    answer = requests.post(f"{server.url}/v2/models/{model}/infer", data=body, headers=headers, timeout=30)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert list(error) == ["error"] and text in error["error"]
    assert requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
    tensor = _tensor(world, 1)
    np.testing.assert_allclose(_remote(server.url).infer(tensor)["scores"], local_engine.infer(tensor)["scores"],
                               atol=TOLERANCE)


def test_client_errors_are_ssdtool_errors_with_exit_codes(world: World, server: ServeProcess) -> None:
    with pytest.raises(ServerError, match="HTTP 404"):
        _remote(server.url, model="no-such-model")
    port = free_port()
    with pytest.raises(NetworkError, match="after 2 attempts"):
        _remote(f"http://user:secret@127.0.0.1:{port}", retries=1, backoff=0.01)
    result = CliRunner().invoke(cli, world.args("detect", str(world.images[0]), "-m", "tiny", "--server",
                                                f"http://user:secret@127.0.0.1:{port}", "--server-retries", "0"))
    assert result.exit_code == 10 and "secret" not in result.output
    result = CliRunner().invoke(cli, world.args("detect", str(world.images[0]), "-m", "tiny", "--server",
                                                server.url, "--server-model", "nope"))
    assert result.exit_code == 32 and "HTTP 404" in result.output
    result = CliRunner().invoke(cli, world.args("detect", str(world.images[0]), "-m", "tiny", "--server",
                                                server.url, "--inference-precision", "bf16"))
    assert result.exit_code == 2 and "ssdtool serve" in result.output


# -- load and failures ------------------------------------------------------------------------------------------
def test_eight_concurrent_clients_fifty_requests_each(world: World, server: ServeProcess,
                                                      local_engine: Any) -> None:
    tensors = [_tensor(world, i) for i in range(3)]
    expected = [local_engine.infer(t) for t in tensors]
    failures: list[str] = []

    def client(number: int) -> None:
        engine = _remote(server.url)
        for request in range(50):
            index = (number + request) % len(tensors)
            try:
                got = engine.infer(tensors[index])
                for name, value in expected[index].items():
                    np.testing.assert_allclose(got[name], value, atol=TOLERANCE)
            except Exception as exc:  # collected: an assertion in a thread would be lost
                failures.append(f"client {number} request {request}: {exc}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_client_retries_through_a_restart_and_sigterm_is_graceful(world: World, local_engine: Any) -> None:
    port = free_port()
    first = ServeProcess(world, port)
    remote = _remote(first.url, retries=12, backoff=0.1, concurrency=2)
    tensors = [_tensor(world, i) for i in range(3)]
    expected = [local_engine.infer(t)["scores"] for t in tensors]
    second: ServeProcess | None = None
    results = []
    try:
        for key, outputs in remote.infer_stream(((i, tensors[i % 3]) for i in range(30)), 2):
            results.append((key, outputs))
            if key == 5:
                assert first.terminate() == 0  # SIGTERM: requests in flight finish, then exit 0
                assert "stopped" in first.stderr()
                second = ServeProcess(world, port)
        assert [key for key, _ in results] == list(range(30))
        for key, outputs in results:
            np.testing.assert_allclose(outputs["scores"], expected[key % 3], atol=TOLERANCE)
        assert second is not None
    finally:
        if second is not None:
            assert second.terminate() == 0
        if first.process.poll() is None:
            first.terminate()


def test_serve_refuses_a_port_in_use(world: World, server: ServeProcess) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    result = CliRunner().invoke(cli, world.args("serve", "tiny", "--port", str(port), "--offline"))
    assert result.exit_code == 2 and "--port" in result.output


def test_bench_with_server_measures_the_served_model(world: World, server: ServeProcess) -> None:
    result = CliRunner().invoke(cli, world.args("bench", "tiny", "--server", server.url, "--concurrency", "2",
                                                "-n", "6", "--json"))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["backend"] == "remote" and report["requests"] == 2 and report["hint"] == "throughput"
    assert report["iterations"] == 6 and report["device"] == server.url
    assert report["inference_precision"] == "f32"


def test_encoded_image_json_round_trip_through_pil(server: ServeProcess) -> None:
    """A JPEG made in memory (any encoder's bytes work): the answer's boxes lie inside the image."""
    buffer = io.BytesIO()
    Image.fromarray(generated_images(1, seed=7, size=(200, 120))[0]).save(buffer, format="JPEG")
    body, headers = _image_request(buffer.getvalue(), threshold=0.0)
    answer = requests.post(f"{server.url}/v2/models/{DETECTIONS}/infer", data=body, headers=headers,
                           timeout=30).json()
    boxes = np.asarray(answer["outputs"][0]["data"]).reshape(answer["outputs"][0]["shape"])
    assert len(boxes) > 0 and boxes[:, [0, 2]].max() <= 200 and boxes[:, [1, 3]].max() <= 120


class PeakRss:
    """A process's resident memory while something runs: psutil sampled every 5 ms, and on Linux the kernel's own
    high-water mark (VmHWM, reset first through /proc/PID/clear_refs), which no sample can miss."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.peak = self.before = self.process.memory_info().rss
        self._stop = threading.Event()
        self._status = Path(f"/proc/{pid}/status")
        self._kernel_peak = self._reset_high_water_mark()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _reset_high_water_mark(self) -> bool:
        try:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._kernel_peak:
            for line in self._status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)


def test_eight_concurrent_88_megapixel_pngs_stay_within_the_decode_budget(server: ServeProcess) -> None:
    """The reproduction from issue 20: eight 11 KB PNGs of 9381 x 9381 one-bit pixels at once took 2.4 GB and kept
    1.3 GB. Now they decode within the documented budget (``--decode-memory``, 1 GiB by default) and the memory
    is given back."""
    from ssdtool.serving.limits import DEFAULT_DECODE_MEMORY

    buffer = io.BytesIO()
    Image.new("1", (9381, 9381)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 12_000
    body, headers = _image_request(buffer.getvalue())
    statuses: list[int] = []

    def send() -> None:
        answer = requests.post(f"{server.url}/v2/models/{DETECTIONS}/infer", data=body, headers=headers,
                               timeout=600)
        statuses.append(answer.status_code)

    with PeakRss(server.process.pid) as memory:
        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    after = memory.process.memory_info().rss
    assert statuses == [200] * 8
    assert memory.peak - memory.before <= DEFAULT_DECODE_MEMORY
    assert after - memory.before <= 128 << 20  # given back (measured: a few MB stay)


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(server: ServeProcess) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"x" * 65536

    answer = requests.post(f"{server.url}/v2/models/tiny/infer", data=chunks(), timeout=30,
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and "--max-request-bytes" in answer.json()["error"]
    assert requests.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200


def test_serve_without_kserve_names_the_extra(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "kserve" or m.startswith("kserve.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "kserve", None)  # import kserve -> ImportError
    result = CliRunner().invoke(cli, world.args("serve", "tiny", "--port", "0", "--offline"))
    assert result.exit_code == 23 and "pip install 'ssdtool[serve]'" in result.output


def test_serve_warns_before_listening_beyond_this_machine(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kserve", None)  # stop right after the warning, before any socket is bound
    result = CliRunner().invoke(cli, world.args("serve", "tiny", "--host", "0.0.0.0", "--port", "0", "--offline"))
    assert "anyone who can reach this machine" in result.output and result.exit_code == 23


def test_eval_with_server_equals_local_eval(world: World, server: ServeProcess, tmp_path: Path) -> None:
    """The scale-out path: eval sends only inference to the server; detections and metrics equal a local run."""
    from ssdtool.synthetic.dataset import write_dataset

    annotations, images = write_dataset(tmp_path / "dataset", count=4, seed=3)
    common = ["eval", "tiny", "--annotations", str(annotations), "--images", str(images), "--json",
              "--progress", "none"]
    local = CliRunner().invoke(cli, world.args(*common, "--inference-precision", "f32", "--offline",
                                               "--save-detections", str(tmp_path / "local.json")))
    remote = CliRunner().invoke(cli, world.args(*common, "--server", server.url, "--concurrency", "3",
                                                "--save-detections", str(tmp_path / "remote.json")))
    assert local.exit_code == 0, local.output
    assert remote.exit_code == 0, remote.output
    local_detections = json.loads((tmp_path / "local.json").read_text())
    assert len(local_detections) > 20
    assert json.loads((tmp_path / "remote.json").read_text()) == local_detections
    local_report, remote_report = json.loads(local.stdout), json.loads(remote.stdout)
    assert remote_report["metrics"] == local_report["metrics"]
    assert remote_report["backend"] == "remote" and remote_report["device"] == server.url
    assert remote_report["inference_precision"] == "f32"  # what the server reported
    refused = CliRunner().invoke(cli, world.args(*common, "--server", server.url, "--compare", "FP32,onnxruntime"))
    assert refused.exit_code == 2 and "--compare runs several local configurations" in refused.output
