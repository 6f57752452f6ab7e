"""The curl examples of docs/serve.md ("Clients", "curl"), run as they are written with curl and a POSIX shell
against ``ssdtool serve`` of the tiny twin under the default model's name; only the address is changed (the server
listens on a free port)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.modelkit import ROOT, ServeProcess, ServeWorld, serve_world

pytest.importorskip("kserve")

CURL = shutil.which("curl")
SERVED_AS = "ssd-resnet34-1200-onnx"  # the name the examples use
DOC_ADDRESS = "http://127.0.0.1:8080"


def curl_examples() -> list[str]:
    """The ``sh`` blocks of the "curl" part of docs/serve.md's "Clients" section, in order."""
    text = (ROOT / "docs" / "serve.md").read_text()
    clients = text.split("\n## Clients\n", 1)[1]
    section = clients.split("\n### curl\n", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ServeWorld:
    return serve_world(tmp_path_factory.mktemp("serve-docs"))


@pytest.fixture(scope="module")
def server(world: ServeWorld) -> Iterator[ServeProcess]:
    process = ServeProcess(world, 0, "--model-name", SERVED_AS)
    yield process
    assert process.terminate() == 0


def _run(example: str, server: ServeProcess, folder: Path) -> Any:
    assert DOC_ADDRESS in example
    run = subprocess.run(["sh", "-e", "-c", example.replace(DOC_ADDRESS, server.url)], cwd=folder,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.skipif(CURL is None, reason="curl is not installed (apt-get install curl)")
def test_the_curl_examples_run_as_written(server: ServeProcess, world: ServeWorld, tmp_path: Path) -> None:
    from ssdtool.detect import Detector

    examples = curl_examples()
    assert len(examples) == 4, examples
    Image.open(world.images[0]).convert("RGB").save(tmp_path / "photo.jpg", quality=90)
    ready, metadata, detections, error = (_run(example, server, tmp_path) for example in examples)
    assert ready == {"ready": True}
    assert metadata["name"] == SERVED_AS and metadata["inputs"] == [{"name": "image", "datatype": "FP32",
                                                                     "shape": [1, 3, 300, 300]}]
    assert [output["name"] for output in metadata["outputs"]] == ["bboxes", "labels", "scores"]
    threshold = float(re.findall(r'"threshold":([0-9.]+)', examples[2])[0])
    with Detector("tiny", "openvino", inference_precision="f32", registry=world.registry, cache_dir=world.cache,
                  threshold=threshold, offline=True) as detector:
        local = detector(tmp_path / "photo.jpg")
    outputs = {output["name"]: np.asarray(output["data"]).reshape(output["shape"])
               for output in detections["outputs"]}
    assert detections["model_name"] == f"{SERVED_AS}-detections" and len(local) >= 1
    np.testing.assert_allclose(outputs["detection_boxes"], [d.box for d in local], atol=1e-3)
    assert outputs["detection_labels"].tolist() == [d.label_id for d in local]
    np.testing.assert_allclose(outputs["detection_scores"], [d.score for d in local], atol=1e-5)
    assert error == {"error": "Model with name nope does not exist."}
