"""tritonclient's gRPC client against ``ssdtool serve --grpc-port``, run in a process of its own by
tests/test_serve_clients.py.

Why a process of its own: tritonclient.grpc and kserve both register the protocol's messages (``inference.*``) in
protobuf's default descriptor pool, so once kserve is imported (any serve test imports it) ``import
tritonclient.grpc`` fails with "duplicate symbol 'inference.ServerLiveRequest'". Users meet the same: a process
uses one or the other.

    python tests/tritonclient_grpc.py ADDRESS TENSOR.npy IMAGE OUT.npz

Every call is what tritonclient's own API sends; the answers go to OUT.npz (arrays) and OUT.json (the rest).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException


def _error(call: Any) -> list[str]:
    try:
        call()
    except InferenceServerException as exc:
        return [str(exc.status()), str(exc.message())]
    return ["no error", ""]


def main(address: str, tensor_path: str, image_path: str, out: str) -> None:
    tensor = np.load(tensor_path)
    image = Path(image_path).read_bytes()
    client = grpcclient.InferenceServerClient(address)
    report: dict[str, Any] = {
        "live": client.is_server_live(), "ready": client.is_server_ready(),
        "model_ready": [client.is_model_ready("tiny"), client.is_model_ready("tiny-detections")],
        "server": client.get_server_metadata(as_json=True),
        "metadata": client.get_model_metadata("tiny", as_json=True),
        "detections_metadata": client.get_model_metadata("tiny-detections", as_json=True),
    }
    arrays: dict[str, np.ndarray] = {}
    pixels = grpcclient.InferInput("image", list(tensor.shape), "FP32")
    pixels.set_data_from_numpy(tensor)
    result = client.infer("tiny", [pixels])
    for name in ("bboxes", "labels", "scores"):
        arrays[name] = result.as_numpy(name)
    report["parameters"] = {key: value.string_param for key, value in result.get_response().parameters.items()}
    only = client.infer("tiny", [pixels], outputs=[grpcclient.InferRequestedOutput("scores")])
    report["requested"] = [output.name for output in only.get_response().outputs]
    encoded = grpcclient.InferInput("encoded_image", [1], "BYTES")
    encoded.set_data_from_numpy(np.array([image], dtype=np.object_))
    found = client.infer("tiny-detections", [encoded], parameters={"threshold": "0.1"})
    for name in ("detection_boxes", "detection_labels", "detection_scores"):
        arrays[name] = found.as_numpy(name)
    wrong = grpcclient.InferInput("image", [1, 3, 300, 301], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 300, 301), np.float32))
    large = grpcclient.InferInput("image", [1, 3, 1200, 1200], "FP32")
    large.set_data_from_numpy(np.zeros((1, 3, 1200, 1200), np.float32))
    report["errors"] = {
        "unknown model": _error(lambda: client.get_model_metadata("nope")),
        "wrong shape": _error(lambda: client.infer("tiny", [wrong])),
        "a version": _error(lambda: client.infer("tiny", [pixels], model_version="2")),
        "a float parameter": _error(lambda: client.infer("tiny-detections", [encoded],
                                                         parameters={"threshold": 0.1})),
        "over the size limit": _error(lambda: client.infer("tiny", [large])),
        "unload": _error(lambda: client.unload_model("tiny")),
    }
    client.close()
    arrays["async_scores"] = asyncio.run(_async_scores(address, tensor))
    np.savez(out, **arrays)
    Path(out).with_suffix(".json").write_text(json.dumps(report))


async def _async_scores(address: str, tensor: np.ndarray) -> np.ndarray:
    client = aioclient.InferenceServerClient(address)
    try:
        pixels = aioclient.InferInput("image", list(tensor.shape), "FP32")
        pixels.set_data_from_numpy(tensor)
        result = await client.infer("tiny", [pixels])
        return result.as_numpy("scores")
    finally:
        await client.close()


if __name__ == "__main__":
    main(*sys.argv[1:5])
