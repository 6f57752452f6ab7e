"""OpenVINO engine: compiles an IR (or ONNX) for a device, with an optional compiled-model cache directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ssdtool.backends import import_engine
from ssdtool.errors import BackendError, ModelFormatError


def available_devices() -> list[str]:
    ov = import_engine("openvino")
    return list(ov.Core().available_devices)


class OpenVinoEngine:
    name = "openvino"

    def __init__(self, model_path: str | os.PathLike[str], device: str = "CPU", cache_dir: str | None = None,
                 hint: str = "LATENCY", streams: int | None = None) -> None:
        ov = import_engine("openvino")
        core = ov.Core()
        devices = list(core.available_devices)
        if device.split(":")[0].split(".")[0] not in devices and device not in devices and not device.startswith(
                ("AUTO", "MULTI", "HETERO")):
            raise BackendError(f"OpenVINO device {device!r} is not available; found: {', '.join(devices)}",
                               hint="pass --device with one of those (default CPU)")
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if cache_dir:
            config["CACHE_DIR"] = str(cache_dir)
        if streams:
            config["NUM_STREAMS"] = str(streams)
        try:
            model = core.read_model(str(model_path))
        except Exception as exc:
            raise ModelFormatError(f"OpenVINO cannot read {model_path}: {exc}",
                                   hint="reconvert it with 'ssdtool convert --force'") from exc
        try:
            self.compiled = core.compile_model(model, device, config)
        except Exception as exc:
            raise BackendError(f"OpenVINO cannot compile {model_path} for {device}: {exc}",
                               hint="try --device CPU or --backend onnxruntime") from exc
        first = self.compiled.inputs[0]
        self.input_name: str = first.get_any_name()
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in first.get_shape()) \
            if first.get_partial_shape().is_static else ()
        self.input_type: str = first.get_element_type().get_type_name()
        self.output_names: list[str] = [o.get_any_name() for o in self.compiled.outputs]
        self.path = Path(model_path)
        self.device = device
        self._request = self.compiled.create_infer_request()

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        results = self._request.infer({0: tensor})
        return {name: np.array(results[output]) for name, output in zip(self.output_names, self.compiled.outputs,
                                                                         strict=True)}
