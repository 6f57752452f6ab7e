"""onnxruntime engine: runs a source ONNX model on the CPU. One session per engine, created once."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from ssdtool.backends import import_engine
from ssdtool.errors import ModelFormatError

K = TypeVar("K")


class OnnxRuntimeEngine:
    name = "onnxruntime"

    def __init__(self, model_path: str | os.PathLike[str], threads: int | None = None) -> None:
        ort = import_engine("onnxruntime")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are noise for users
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelFormatError(
                f"onnxruntime cannot load {model_path}: {exc}",
                hint="the file is not a valid ONNX model; re-download it with 'ssdtool download --force'",
            ) from exc
        first = self.session.get_inputs()[0]
        self.input_name: str = first.name
        self.input_shape: tuple[int, ...] = tuple(d if isinstance(d, int) else -1 for d in first.shape)
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]
        self.path = Path(model_path)
        self.device = "CPU"
        self.inference_precision = "f32"  # the CPU execution provider computes in f32
        self.optimal_requests = 1  # one run at a time uses every core (intra-op threads)
        self.busy_seconds = 0.0  # seconds spent in session.run over this engine's life (see OpenVinoEngine)

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        values = self.session.run(None, {self.input_name: tensor})
        self.busy_seconds += time.perf_counter() - started
        return dict(zip(self.output_names, values, strict=True))

    def infer_stream(self, items: Iterable[tuple[K, np.ndarray]], requests: int | None = None
                     ) -> Iterator[tuple[K, dict[str, np.ndarray]]]:
        """Yield ``(key, outputs)`` for every ``(key, tensor)`` in order.

        One run at a time: the session already spreads each run over all cores (intra-op threads), and it
        releases the GIL while running, so tensors prepared in other threads are ready when the next run starts.
        """
        del requests  # the same signature as OpenVinoEngine.infer_stream
        for key, tensor in items:
            yield key, self.infer(tensor)
