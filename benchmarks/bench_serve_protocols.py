"""Serving protocols: gRPC against REST per request, and a served JPEG against a served tensor.

* **gRPC vs REST (binary tensor extension), tiny twin**: the median round trip of sequential requests with
  tritonclient's HTTP client (binary tensors) and with its gRPC client taking turns, against one ``ssdtool serve
  --grpc-port``, each minus the median of the same tensor through a local OpenVINO engine compiled as the server
  compiles it (THROUGHPUT hint, f32; measured first, on its own): the per-request overhead of each protocol.
* **JPEG vs tensor, full twin**: images/s over mixed-size JPEGs with ``--concurrency`` requests in flight, and bytes
  on the wire per image (request and response bodies; HTTP headers not counted):
  - *served JPEG*: the file to ``NAME-detections``; the server decodes, resizes, runs and postprocesses;
  - *served tensor*: the client decodes and resizes the image into the IR's tensor (ssdtool's preprocessing), sends
    it in the binary extension to ``NAME`` and postprocesses the outputs (what ``detect --server`` does);
  - *served JPEG to the image-input IR* (``serve --image-input``): the file as one BYTES element of the IR's input,
    as OVMS takes it; the server decodes, the IR resizes, the client postprocesses (it reads the size from the
    file's header).
  Both through the same HTTP client (``requests``, one session per thread), the bodies as docs/serve.md shows them.

Everything at ``--inference-precision f32``. tritonclient's gRPC client cannot share a process with kserve, so this
script imports no kserve (the server runs in its own process). ``--quick`` uses the tiny twin for both parts and
few requests: it proves the script, not the figures. The machine's load average is recorded before and after.

    python benchmarks/bench_serve_protocols.py [--quick] [--concurrency 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, WORK, load_average, ssdtool_command

sys.path.insert(0, str(ROOT))

FULL, TINY = "ssd-resnet34-1200-synthetic", "ssd-resnet34-300-synthetic-tiny"
CACHE = WORK / "serve-cache"
IMAGES = WORK / "serve-protocol-images"
#: Mixed photo sizes (width, height), cycled over the images.
SIZES = ((640, 480), (1280, 720), (1920, 1080), (800, 1200), (1024, 768), (300, 300))
ENV = {**os.environ, "SSDTOOL_REGISTRY": "", "PYTHONWARNINGS": "ignore"}
HEADER = "Inference-Header-Content-Length"


class _Server:
    """``ssdtool serve MODEL --grpc-port 0`` in a child process."""

    def __init__(self, model: str, *extra: str) -> None:
        command = ssdtool_command("--cache-dir", str(CACHE), "serve", model, "--port", "0", "--grpc-port", "0",
                                  "--json", "--inference-precision", "f32", "--progress", "none", *extra)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                        env=ENV)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"ssdtool serve {model} did not start (exit {self.process.wait()})")
        self.info = json.loads(line)
        self.url, self.model = self.info["url"], self.info["served_as"]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def _entry(model: str) -> Any:
    from ssdtool.registry import load_registry

    return load_registry().model(model)


def _interleaved_medians(calls: dict[str, Any], rounds: int) -> dict[str, float]:
    """The median milliseconds of each call, the calls taking turns round after round (a shared machine's load
    drifts; taking turns spreads it over all of them alike). One warm-up round first."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_number in range(rounds + 1):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if round_number:
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def _local_median(model_path: str, tensor: np.ndarray, count: int) -> float:
    from ssdtool.backends.openvino import OpenVinoEngine

    engine = OpenVinoEngine(model_path, hint="THROUGHPUT", inference_precision="f32")
    return _interleaved_medians({"local": lambda: engine.infer(tensor)}, count)["local"]


def protocols(requests_count: int) -> dict[str, Any]:
    """Per-request overhead of REST (binary) and gRPC on the tiny twin, with tritonclient's clients."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    server = _Server(TINY)
    try:
        tensor = np.random.default_rng(0).integers(0, 256, (1, 3, 300, 300)).astype(np.float32)
        # The local baseline first, on its own: OpenVINO's worker threads spin for a while after each inference,
        # and taking turns with them slowed gRPC's completion thread (not REST, which reads in the caller's thread).
        local = _local_median(server.info["model_path"], tensor, requests_count)
        time.sleep(1)
        http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        rest_input = httpclient.InferInput("image", list(tensor.shape), "FP32")
        rest_input.set_data_from_numpy(tensor)
        grpc = grpcclient.InferenceServerClient(server.info["grpc_address"])
        grpc_input = grpcclient.InferInput("image", list(tensor.shape), "FP32")
        grpc_input.set_data_from_numpy(tensor)
        medians = _interleaved_medians({"rest": lambda: http.infer(server.model, [rest_input]),
                                        "grpc": lambda: grpc.infer(server.model, [grpc_input])}, requests_count)
        http.close()
        grpc.close()
    finally:
        server.stop()
    rest, over_grpc = medians["rest"], medians["grpc"]
    return {"model": TINY, "requests": requests_count, "local_ms": round(local, 2), "rest_binary_ms": round(rest, 2),
            "grpc_ms": round(over_grpc, 2), "rest_overhead_ms": round(rest - local, 2),
            "grpc_overhead_ms": round(over_grpc - local, 2), "grpc_minus_rest_ms": round(over_grpc - rest, 2)}


def _images(count: int) -> list[Path]:
    from PIL import Image

    from ssdtool.imaging import generated_images

    IMAGES.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        size = SIZES[index % len(SIZES)]
        path = IMAGES / f"{index:03d}-{size[0]}x{size[1]}.jpg"
        if not path.exists():
            Image.fromarray(generated_images(1, seed=50 + index, size=size)[0]).save(path, quality=90)
        paths.append(path)
    return paths


def _binary_outputs(body: bytes, header_length: int) -> dict[str, np.ndarray]:
    header = json.loads(body[:header_length])
    offset, outputs = header_length, {}
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        dtype = np.float32 if output["datatype"] == "FP32" else np.int64
        outputs[output["name"]] = np.frombuffer(body[offset:offset + size], dtype).reshape(output["shape"])
        offset += size
    return outputs


class _Client:
    """One ``requests`` session per thread; counts the body bytes each way."""

    def __init__(self, url: str) -> None:
        self.url, self._local = url, threading.local()
        self.sent = self.received = 0
        self._lock = threading.Lock()

    def post(self, model: str, body: bytes, header_length: int) -> Any:
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        answer = session.post(f"{self.url}/v2/models/{model}/infer", data=body, timeout=600,
                              headers={HEADER: str(header_length)})
        answer.raise_for_status()
        with self._lock:
            self.sent += len(body)
            self.received += len(answer.content)
        return answer


def _jpeg_request(path: Path, client: _Client, model: str) -> int:
    data = path.read_bytes()
    raw = len(data).to_bytes(4, "little") + data
    header = json.dumps({"inputs": [{"name": "encoded_image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    answer = client.post(f"{model}-detections", header + raw, len(header)).json()
    return int(answer["outputs"][2]["shape"][0])


def _tensor_request(path: Path, client: _Client, model: str, entry: Any) -> int:
    from ssdtool.detections import postprocess
    from ssdtool.imaging import load_image, preprocess

    rgb = load_image(path)
    tensor = np.ascontiguousarray(preprocess(rgb, entry, form="ir"))
    raw = tensor.tobytes()
    header = json.dumps({"inputs": [{"name": entry.input.name, "shape": list(tensor.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    answer = client.post(model, header + raw, len(header))
    outputs = _binary_outputs(answer.content, int(answer.headers[HEADER]))
    return len(postprocess(outputs, entry, (rgb.shape[1], rgb.shape[0]), form="ir"))


def _image_input_request(path: Path, client: _Client, model: str, entry: Any) -> int:
    from PIL import Image

    from ssdtool.detections import postprocess

    data = path.read_bytes()
    with Image.open(path) as image:
        size = image.size
    raw = len(data).to_bytes(4, "little") + data
    header = json.dumps({"inputs": [{"name": entry.input.name, "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    answer = client.post(model, header + raw, len(header))
    outputs = _binary_outputs(answer.content, int(answer.headers[HEADER]))
    return len(postprocess(outputs, entry, size, form="ir"))


def _measure(url: str, run: Any, paths: list[Path], concurrency: int) -> dict[str, Any]:
    run(paths[0], _Client(url))  # warm up this path
    client = _Client(url)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        found = list(pool.map(lambda path: run(path, client), paths))
    seconds = time.perf_counter() - started
    return {"images_per_s": round(len(paths) / seconds, 3), "detections": sum(found),
            "request_bytes_per_image": round(client.sent / len(paths)),
            "response_bytes_per_image": round(client.received / len(paths))}


def jpeg_vs_tensor(model: str, count: int, concurrency: int) -> dict[str, Any]:
    """Served JPEG against served tensor: images/s and bytes per image, same images; the first two on one server,
    the third on a server of the image-input IR."""
    entry = _entry(model)
    paths = _images(count)
    figures: dict[str, Any] = {"model": model, "images": count, "concurrency": concurrency,
                               "sizes": sorted({p.stem.split("-", 1)[1] for p in paths})}
    server = _Server(model)
    try:
        figures["jpeg"] = _measure(server.url, lambda path, client: _jpeg_request(path, client, server.model),
                                   paths, concurrency)
        figures["tensor"] = _measure(server.url, lambda path, client: _tensor_request(path, client, server.model,
                                                                                      entry), paths, concurrency)
    finally:
        server.stop()
    server = _Server(model, "--image-input")
    try:
        figures["image_input"] = _measure(
            server.url, lambda path, client: _image_input_request(path, client, server.model, entry), paths,
            concurrency)
    finally:
        server.stop()
    figures["jpeg_over_tensor_images_per_s"] = round(figures["jpeg"]["images_per_s"]
                                                     / figures["tensor"]["images_per_s"], 3)
    figures["tensor_over_jpeg_request_bytes"] = round(figures["tensor"]["request_bytes_per_image"]
                                                      / figures["jpeg"]["request_bytes_per_image"], 1)
    return figures


def run(quick: bool, concurrency: int = 4) -> dict[str, Any]:
    before = load_average()
    figures = {"quick": quick, "load_average_before": before,
               "protocols": protocols(30 if quick else 300),
               "jpeg_vs_tensor": jpeg_vs_tensor(TINY if quick else FULL, 12 if quick else 60, concurrency)}
    figures["load_average_after"] = load_average()
    return figures


def markdown(figures: dict[str, Any]) -> str:
    quick = " (--quick: tiny twin, few requests; not the real figures)" if figures["quick"] else ""
    protocol, images = figures["protocols"], figures["jpeg_vs_tensor"]
    jpeg, tensor, image = images["jpeg"], images["tensor"], images["image_input"]
    return (f"`python benchmarks/bench_serve_protocols.py`{quick}; f32, server and clients on the same machine "
            f"(load average {figures['load_average_before']} before, {figures['load_average_after']} after).\n\n"
            f"Per request, `{protocol['model']}`, {protocol['requests']} sequential requests, REST and gRPC taking "
            "turns (the local baseline measured before, on its own), tritonclient's clients (medians):\n\n"
            "| path | round trip | overhead over local inference |\n| --- | --- | --- |\n"
            f"| local OpenVINO (THROUGHPUT, f32) | {protocol['local_ms']} ms | - |\n"
            f"| REST, binary tensor extension | {protocol['rest_binary_ms']} ms | {protocol['rest_overhead_ms']} ms |\n"
            f"| gRPC | {protocol['grpc_ms']} ms | {protocol['grpc_overhead_ms']} ms |\n\n"
            f"Served JPEG against served tensor, `{images['model']}`, {images['images']} JPEGs of "
            f"{', '.join(images['sizes'])}, {images['concurrency']} in flight:\n\n"
            "| request | images/s | request bytes per image | response bytes per image |\n| --- | --- | --- | --- |\n"
            f"| JPEG to the detections model | {jpeg['images_per_s']} | {jpeg['request_bytes_per_image']:,} | "
            f"{jpeg['response_bytes_per_image']:,} |\n"
            f"| tensor (client decodes and resizes) to the IR model | {tensor['images_per_s']} | "
            f"{tensor['request_bytes_per_image']:,} | {tensor['response_bytes_per_image']:,} |\n"
            f"| JPEG to the image-input IR model (`--image-input`, as OVMS takes it) | {image['images_per_s']} | "
            f"{image['request_bytes_per_image']:,} | {image['response_bytes_per_image']:,} |\n\n"
            f"JPEG over tensor: {images['jpeg_over_tensor_images_per_s']}x the images/s, "
            f"1/{images['tensor_over_jpeg_request_bytes']} of the request bytes.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = run(args.quick, args.concurrency)
    print(json.dumps(figures, indent=2) if args.json else markdown(figures))


if __name__ == "__main__":
    main()
