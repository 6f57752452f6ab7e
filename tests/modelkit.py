"""Test helpers: registries whose models are small ONNX files already placed in a cache, and ``ssdtool serve`` in a
child process on them."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import yaml

ROOT = Path(__file__).resolve().parent.parent
TINY_URL = "synthetic:ssd-resnet34?seed=0&variant=tiny"


def tiny_entry_template() -> dict[str, Any]:
    """The packaged real-model entry with the tiny twin's input size (300 px)."""
    data = yaml.safe_load((ROOT / "models.yml").read_text())
    entry = copy.deepcopy(data["models"]["ssd-resnet34-1200-onnx"])
    entry["input"]["shape"] = [1, 3, 300, 300]
    entry["input"]["resize"] = [300, 300]
    return entry


def install_model(cache_dir: Path, registry_path: Path, name: str, model: onnx.ModelProto | bytes,
                  entry: dict[str, Any] | None = None, file_name: str = "model.onnx",
                  sources: list[str] | None = None) -> Path:
    """Write ``model`` into ``cache_dir`` as a verified-looking download and add ``name`` to the registry file."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    entry = copy.deepcopy(entry or tiny_entry_template())
    entry["files"] = [{"name": file_name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                       "sources": sources or [f"file:///nonexistent/{name}/{file_name}"]}]
    registry: dict[str, Any] = {"version": 1, "models": {}}
    if registry_path.exists():
        registry = yaml.safe_load(registry_path.read_text())
    registry["models"][name] = entry
    registry.setdefault("default_model", name)
    registry_path.write_text(yaml.safe_dump(registry, sort_keys=False))
    target = cache_dir / name / file_name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


@dataclass(frozen=True)
class ServeWorld:
    """The tiny twin as registry model ``tiny``, converted to its IR, and three PNG images (for the serve tests)."""

    registry: Path
    cache: Path
    images: tuple[Path, ...]

    def args(self, *extra: str) -> list[str]:
        return ["--registry", str(self.registry), "--cache-dir", str(self.cache), *extra]


def serve_world(root: Path) -> ServeWorld:
    from PIL import Image

    from ssdtool.cache import Cache
    from ssdtool.convert import ConvertOptions, convert
    from ssdtool.imaging import generated_images
    from ssdtool.registry import load_registry
    from ssdtool.synthetic import TwinSpec, build_model

    registry, cache = root / "registry.yml", root / "cache"
    install_model(cache, registry, "tiny", build_model(TwinSpec(variant="tiny")))
    convert(load_registry(registry).model("tiny"), Cache.at(cache), ConvertOptions(verify=False))
    images = []
    for index, size in enumerate(((640, 480), (300, 300), (333, 500))):
        path = root / f"image-{index}.png"
        Image.fromarray(generated_images(1, seed=40 + index, size=size)[0]).save(path)
        images.append(path)
    return ServeWorld(registry, cache, tuple(images))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: The serve tests' request size limit: the tiny twin's tensor is 1.08 MB in binary and about 1.6 MB as JSON numbers.
SERVE_MAX_BODY = 4_000_000


class ServeProcess:
    """``ssdtool serve`` of the tiny twin (model ``tiny``, at f32) in a child process; :attr:`info` is the JSON line
    it prints when ready."""

    def __init__(self, world: ServeWorld, port: int = 0, *extra: str) -> None:
        self.log = open(world.registry.parent / f"serve-{time.monotonic_ns()}.log", "w+")  # noqa: SIM115
        command = [sys.executable, "-m", "ssdtool", *world.args("serve", "tiny", "--port", str(port),
                                                                 "--inference-precision", "f32", "--json",
                                                                 "--max-request-bytes", str(SERVE_MAX_BODY), *extra)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                        env={**os.environ, "SSDTOOL_OFFLINE": "1"})
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(10)
            self.log.seek(0)
            raise AssertionError(f"serve did not start: {self.log.read()[-2000:]}")
        self.info: dict[str, Any] = json.loads(line)
        self.url: str = self.info["url"]

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.log.close()
        return code

    def stderr(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text()


class Tracebacks(logging.Handler):
    """Every log record that carries a traceback, from any logger (kserve, uvicorn, ssdtool)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and not any(seen is record for seen in self.records):  # on two loggers: once
            self.records.append(record)


@contextlib.contextmanager
def watched_tracebacks() -> Iterator[Tracebacks]:
    """A :class:`Tracebacks` on the root logger and ssdtool's (the CLI stops ssdtool's from propagating)."""
    handler = Tracebacks()
    loggers = [logging.getLogger(), logging.getLogger("ssdtool")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def hide_openvino(monkeypatch: Any) -> None:
    """Make OpenVINO fail to import for ssdtool's engine layer (as on a machine without it), for this test only."""
    from ssdtool import backends
    from ssdtool.errors import DependencyError

    real = backends.import_engine

    def without_openvino(module: str, package: str | None = None) -> Any:
        if module.startswith("openvino"):
            raise DependencyError(f"cannot import {module}: No module named 'openvino'")
        return real(module, package)

    monkeypatch.setattr(backends, "import_engine", without_openvino)
