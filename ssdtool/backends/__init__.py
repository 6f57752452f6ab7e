"""Inference engines behind one small interface: ``engine.infer(tensor) -> {output name: array}``.

``onnxruntime`` runs the source ONNX (normalized input); ``openvino`` runs an IR or an ONNX file. Both modules
import their engine lazily, and a missing or broken engine becomes a :class:`DependencyError` with an install hint.
``infer_stream`` runs many tensors with the engine's best concurrency and returns results in input order.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from ssdtool.errors import DependencyError


class Engine(Protocol):
    name: str
    device: str
    input_name: str
    input_shape: tuple[int, ...]
    #: The arithmetic that runs, read back from the engine (f32, bf16, f16; None when the device does not say).
    inference_precision: str | None
    #: Seconds with at least one inference in flight, over the engine's life.
    busy_seconds: float

    @property
    def optimal_requests(self) -> int:
        """How many inferences in flight keep this engine busy."""
        ...

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; returns every output by tensor name."""
        ...

    def infer_stream(self, items: Iterable[tuple[Any, np.ndarray]], requests: int | None = None
                     ) -> Iterator[tuple[Any, dict[str, np.ndarray]]]:
        """Run ``(key, tensor)`` pairs, consuming them lazily; yield ``(key, outputs)`` in input order."""
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
