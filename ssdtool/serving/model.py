"""The kserve model behind ``ssdtool serve``: an ssdtool :class:`~ssdtool.backends.Engine` answering v2 requests.

kserve decodes the request (JSON or the binary tensor extension) into an ``InferRequest``, calls :meth:`predict`
and encodes the ``InferResponse``; bad requests raise kserve's ``InvalidInput``, which its handler turns into
``400 {"error": "..."}``. Inference runs on a thread pool (the engine releases the GIL, and OpenVINO's ``infer``
takes its own infer request per call), so requests in flight run in parallel on a THROUGHPUT-compiled model.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput

from ssdtool.detections import DEFAULT_THRESHOLD, postprocess
from ssdtool.errors import ImageError
from ssdtool.imaging import DEFAULT_MAX_PIXELS, load_image, preprocess
from ssdtool.serving.protocol import DETECTION_OUTPUTS, IMAGE_INPUT, PRECISION_PARAMETER, v2_datatype

if TYPE_CHECKING:
    from ssdtool.backends import Engine
    from ssdtool.registry import ModelEntry


class EngineModel(Model):
    """``entry``'s IR served under ``name``; ``make_engine()`` compiles it in :meth:`load`."""

    def __init__(self, name: str, entry: ModelEntry, make_engine: Callable[[], Engine], *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(name)
        self.entry, self._make_engine, self.max_pixels = entry, make_engine, max_pixels
        self.engine: Engine | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._outputs: list[dict[str, Any]] = []

    def load(self) -> bool:
        engine = self._make_engine()
        self._pool = ThreadPoolExecutor(max_workers=max(1, engine.optimal_requests),
                                        thread_name_prefix="ssdtool-serve")
        # One inference on zeros warms the engine up and tells the outputs' exact shapes and types for metadata.
        warm = engine.infer(np.zeros(engine.input_shape, dtype=np.float32))
        self._outputs = [{"name": name, "datatype": v2_datatype(value.dtype), "shape": list(value.shape)}
                         for name, value in warm.items()]
        self.engine = engine
        self.ready = True
        return self.ready

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.engine, self.ready = None, False

    def get_input_types(self) -> list[dict[str, Any]]:
        assert self.engine is not None
        return [{"name": self.engine.input_name, "datatype": "FP32", "shape": list(self.engine.input_shape)},
                {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [*self._outputs,
                {"name": DETECTION_OUTPUTS[0], "datatype": "FP32", "shape": [-1, 4]},
                {"name": DETECTION_OUTPUTS[1], "datatype": "INT64", "shape": [-1]},
                {"name": DETECTION_OUTPUTS[2], "datatype": "FP32", "shape": [-1]}]

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        engine = self.engine
        if engine is None or self._pool is None:
            raise InvalidInput(f"model {self.name} is not loaded")
        if not isinstance(payload, InferRequest):
            raise InvalidInput("expected an Open Inference Protocol (v2) request")
        if len(payload.inputs) != 1:
            raise InvalidInput(f"expected exactly one input ({engine.input_name!r} or {IMAGE_INPUT!r}), got "
                               f"{len(payload.inputs)}")
        given = payload.inputs[0]
        loop = asyncio.get_running_loop()
        if given.name == IMAGE_INPUT:
            outputs = await loop.run_in_executor(self._pool, self._detect, given, payload.parameters or {})
        else:
            tensor = self._tensor(given, engine)
            outputs = await loop.run_in_executor(self._pool, engine.infer, tensor)
        binary = payload.use_binary_outputs
        answer: list[InferOutput] = []
        for name, value in outputs.items():
            output = InferOutput(name=name, shape=list(value.shape), datatype=v2_datatype(value.dtype))
            output.set_data_from_numpy(value, binary_data=binary)
            answer.append(output)
        parameters = {PRECISION_PARAMETER: engine.inference_precision} if engine.inference_precision else None
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=answer,
                             parameters=parameters, use_binary_outputs=binary)

    @staticmethod
    def _tensor(given: Any, engine: Engine) -> np.ndarray:
        expected = f"input {engine.input_name!r}, FP32 {list(engine.input_shape)} (raw BGR pixels 0-255)"
        if given.name != engine.input_name:
            raise InvalidInput(f"unknown input {given.name!r}; expected {expected}, or {IMAGE_INPUT!r} (BYTES: an "
                               f"encoded image)")
        if given.datatype != "FP32":
            raise InvalidInput(f"input {given.name!r} has datatype {given.datatype}; expected {expected}")
        if [int(d) for d in given.shape] != list(engine.input_shape):
            raise InvalidInput(f"input {given.name!r} has shape {list(given.shape)}; expected {expected}")
        try:
            tensor = np.asarray(given.as_numpy(), dtype=np.float32).reshape(engine.input_shape)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"input {given.name!r}: its data does not fill shape {list(engine.input_shape)}: "
                               f"{exc}") from exc
        return tensor

    def _detect(self, given: Any, parameters: Any) -> dict[str, np.ndarray]:
        """An encoded image -> decoded, resized, run, postprocessed: detections in pixels of the image."""
        from PIL import Image

        assert self.engine is not None
        if given.datatype != "BYTES":
            raise InvalidInput(f"input {IMAGE_INPUT!r} must be BYTES (one encoded image), got {given.datatype}")
        try:
            items = given.as_numpy().ravel()
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"input {IMAGE_INPUT!r}: cannot read its bytes: {exc}") from exc
        if items.size != 1:
            raise InvalidInput(f"input {IMAGE_INPUT!r} must hold exactly one encoded image, got {items.size}")
        data = items[0] if isinstance(items[0], bytes) else str(items[0]).encode("latin-1")
        threshold = _threshold(parameters)
        try:
            with Image.open(io.BytesIO(data)) as image:
                rgb = load_image(image, max_pixels=self.max_pixels)
        except ImageError as exc:
            raise InvalidInput(f"input {IMAGE_INPUT!r}: {exc.message}") from exc
        except Exception as exc:  # Pillow raises many types for undecodable data
            raise InvalidInput(f"input {IMAGE_INPUT!r} is not an image Pillow can decode: {exc}") from exc
        outputs = self.engine.infer(preprocess(rgb, self.entry, form="ir"))
        height, width = rgb.shape[:2]
        found = postprocess(outputs, self.entry, (width, height), form="ir", threshold=threshold)
        return {
            DETECTION_OUTPUTS[0]: np.asarray([d.box for d in found], dtype=np.float32).reshape(-1, 4),
            DETECTION_OUTPUTS[1]: np.asarray([d.label_id for d in found], dtype=np.int64),
            DETECTION_OUTPUTS[2]: np.asarray([d.score for d in found], dtype=np.float32),
        }


def _threshold(parameters: Any) -> float:
    value = parameters.get("threshold", DEFAULT_THRESHOLD) if hasattr(parameters, "get") else DEFAULT_THRESHOLD
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise InvalidInput(f"parameter 'threshold' must be a number from 0 to 1, got {value!r}")
    return float(value)
