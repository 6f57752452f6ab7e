"""Inference engines behind one small interface: ``engine.infer(tensor) -> {output name: array}``.

``onnxruntime`` runs the source ONNX (normalized input); ``openvino`` runs an IR or an ONNX file; ``remote`` runs
a model on an Open Inference Protocol server (``--server``). The modules
import their engine lazily, and a missing or broken engine becomes a :class:`DependencyError` with an install hint.
``infer_stream`` runs many tensors with the engine's best concurrency and returns results in input order.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ssdtool.errors import DependencyError

if TYPE_CHECKING:
    from ssdtool.artifacts import ModelFile


class Engine(Protocol):
    name: str
    device: str
    input_name: str
    input_shape: tuple[int, ...]
    #: The arithmetic that runs, read back from the engine (f32, bf16, f16; None when the device does not say).
    inference_precision: str | None
    #: Seconds with at least one inference in flight, over the engine's life.
    busy_seconds: float
    #: CPU streams and threads the engine runs with, for reports (None when it does not say).
    streams: int | None
    threads: int | None

    @property
    def optimal_requests(self) -> int:
        """How many inferences in flight keep this engine busy."""
        ...

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; returns every output by tensor name."""
        ...

    def infer_stream(self, items: Iterable[tuple[Any, np.ndarray]], requests: int | None = None,
                     on_done: Callable[[Any, float], None] | None = None
                     ) -> Iterator[tuple[Any, dict[str, np.ndarray]]]:
        """Run ``(key, tensor)`` pairs, consuming them lazily, ``requests`` at a time (default
        :attr:`optimal_requests`); yield ``(key, outputs)`` in input order. ``on_done(key, milliseconds)``
        receives each run's own time, on the calling thread."""
        ...


def import_engine(module: str, package: str | None = None) -> ModuleType:
    """Import a heavy engine module, turning import failures into an actionable error."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        dist = package or module.split(".")[0]
        raise DependencyError(
            f"cannot import {module}: {exc}",
            hint=f"install it with 'pip install {dist}' (it is a dependency of ssdtool; "
                 f"'pip install --force-reinstall ssdtool' repairs a broken install)",
        ) from exc


def make_engine(model: ModelFile, *, device: str = "CPU", hint: str = "latency", inference_precision: str | None = None,
                cache_dir: Path | None = None, requests: int | None = None) -> Engine:
    """The engine that runs ``model``: OpenVINO for an IR (``hint`` "latency" or "throughput", ``inference_precision``
    pinned or None for the device's default, compiled-model ``cache_dir``), onnxruntime for the source ONNX
    (``requests`` parallel runs for throughput, one otherwise), or :class:`~ssdtool.backends.remote.RemoteEngine`
    when the model is on a server (``model.server``, its answers checked against ``model.entry``; the other arguments
    are the server's business). The source ONNX
    of a heads model (``ModelFile.host_decode``) gets an engine that decodes its heads on the host
    (:func:`ssdtool.heads.host_decoder`), so it returns the full model's three outputs."""
    if model.server is not None:
        from ssdtool.backends.remote import RemoteEngine

        return RemoteEngine(model.server, model.model, model.entry)
    if model.backend == "openvino":
        from ssdtool.backends.openvino import OpenVinoEngine

        return OpenVinoEngine(model.path, device=device, cache_dir=str(cache_dir) if cache_dir else None,
                              hint=hint.upper(), inference_precision=inference_precision)
    from ssdtool.backends.onnxruntime import OnnxRuntimeEngine

    decode = None
    if model.host_decode and model.entry is not None:
        from ssdtool.heads import host_decoder

        decode = host_decoder(model.entry)
    return OnnxRuntimeEngine(model.path, requests=requests, decode=decode)
