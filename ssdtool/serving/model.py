"""The kserve model behind ``ssdtool serve``: an ssdtool :class:`~ssdtool.backends.Engine` answering v2 requests.

kserve decodes the request (JSON or the binary tensor extension) into an ``InferRequest``, calls :meth:`predict`
and encodes the ``InferResponse``; bad requests raise kserve's ``InvalidInput``, which the server turns into
``400 {"error": "..."}``, and images too large to decode raise :class:`ImageTooLarge` (413). Inference runs on a
thread pool (the engine releases the GIL, and OpenVINO's ``infer`` takes its own infer request per call), so
requests in flight run in parallel on a THROUGHPUT-compiled model. Encoded images are decoded on a pool of their
own, within a memory budget shared by every decode (detect's :class:`~ssdtool.pipeline.ImagePreparer`), so
large images wait for each other instead of holding up tensor requests or taking the memory of all at once.
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

from ssdtool import checked
from ssdtool.detections import DEFAULT_THRESHOLD, postprocess
from ssdtool.imaging import DEFAULT_MAX_PIXELS, decode_cost
from ssdtool.pipeline import ImagePreparer, Prepared
from ssdtool.serving.limits import DEFAULT_DECODE_MEMORY
from ssdtool.serving.protocol import DETECTION_OUTPUTS, IMAGE_INPUT, PRECISION_PARAMETER, v2_datatype

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from ssdtool.backends import Engine
    from ssdtool.registry import ModelEntry

#: Threads decoding encoded images (each waits for room in the decode budget; large images decode one at a time).
DECODE_THREADS = 2


class ImageTooLarge(Exception):
    """An encoded image over the server's pixel limit or decode budget: answered with 413 and the message."""


class EngineModel(Model):
    """``entry``'s IR served under ``name``; ``make_engine()`` compiles it in :meth:`load`. Encoded images over
    ``max_pixels`` (None: no limit), or estimated to need more than ``decode_memory`` bytes to decode, are refused
    with :class:`ImageTooLarge`; the others decode within ``decode_memory`` bytes taken together."""

    def __init__(self, name: str, entry: ModelEntry, make_engine: Callable[[], Engine], *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, decode_memory: int = DEFAULT_DECODE_MEMORY) -> None:
        super().__init__(name)
        self.entry, self._make_engine, self.max_pixels = entry, make_engine, max_pixels
        self.engine: Engine | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._decoders: ThreadPoolExecutor | None = None
        self._preparer = ImagePreparer(entry, "ir", max_pixels=max_pixels, decode_memory=decode_memory)
        self._outputs: list[dict[str, Any]] = []

    @property
    def decode_memory(self) -> int:
        return self._preparer.budget.capacity

    def load(self) -> bool:
        engine = self._make_engine()
        self._pool = ThreadPoolExecutor(max_workers=max(1, engine.optimal_requests),
                                        thread_name_prefix="ssdtool-serve")
        self._decoders = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="ssdtool-serve-decode")
        # One inference on zeros warms the engine up and tells the outputs' exact shapes and types for metadata.
        warm = engine.infer(np.zeros(engine.input_shape, dtype=np.float32))
        self._outputs = [{"name": name, "datatype": v2_datatype(value.dtype), "shape": list(value.shape)}
                         for name, value in warm.items()]
        self.engine = engine
        self.ready = True
        return self.ready

    def stop(self) -> None:
        for pool in (self._decoders, self._pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._preparer.close()
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
        if engine is None or self._pool is None or self._decoders is None:
            raise InvalidInput(f"model {self.name} is not loaded")
        if not isinstance(payload, InferRequest):
            raise InvalidInput("expected an Open Inference Protocol (v2) request")
        if len(payload.inputs) != 1:
            raise InvalidInput(f"expected exactly one input ({engine.input_name!r} or {IMAGE_INPUT!r}), got "
                               f"{len(payload.inputs)}")
        parameters = payload.parameters or {}
        binary = parameters.get("binary_data_output", False)
        if not isinstance(binary, bool):
            raise InvalidInput(f"parameter 'binary_data_output' must be true or false, got {binary!r:.60}")
        given = payload.inputs[0]
        loop = asyncio.get_running_loop()
        if given.name == IMAGE_INPUT:
            data, threshold = _encoded_image(given), _threshold(parameters)
            prepared = await loop.run_in_executor(self._decoders, self._decode, data)
            outputs = await loop.run_in_executor(self._pool, self._detect, prepared, threshold)
        else:
            tensor = self._tensor(given, engine)
            outputs = await loop.run_in_executor(self._pool, engine.infer, tensor)
        answer: list[InferOutput] = []
        for name, value in outputs.items():
            output = InferOutput(name=name, shape=list(value.shape), datatype=v2_datatype(value.dtype))
            output.set_data_from_numpy(value, binary_data=binary)
            answer.append(output)
        reported = {PRECISION_PARAMETER: engine.inference_precision} if engine.inference_precision else None
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=answer,
                             parameters=reported, use_binary_outputs=binary)

    @staticmethod
    def _tensor(given: Any, engine: Engine) -> np.ndarray:
        expected = f"input {engine.input_name!r}, FP32 {list(engine.input_shape)} (raw BGR pixels 0-255)"
        if given.name != engine.input_name:
            raise InvalidInput(f"unknown input {given.name!r:.60}; expected {expected}, or {IMAGE_INPUT!r} (BYTES: "
                               f"an encoded image)")
        if given.datatype != "FP32":
            raise InvalidInput(f"input {given.name!r} has datatype {given.datatype!r:.20}; expected {expected}")
        shape = list(given.shape)
        if not all(checked.is_int(d) for d in shape) or shape != list(engine.input_shape):
            raise InvalidInput(f"input {given.name!r} has shape {shape!r:.80}; expected {expected}")
        try:
            tensor = np.asarray(given.as_numpy(), dtype=np.float32).reshape(engine.input_shape)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"input {given.name!r}: its data does not fill shape {list(engine.input_shape)} with "
                               f"numbers: {exc}") from exc
        if not checked.all_finite(tensor):
            raise InvalidInput(f"input {given.name!r} holds NaN or infinite values; expected {expected}")
        return tensor

    def _decode(self, data: bytes) -> Prepared:
        """An encoded image -> the network tensor and the image's size, within the pixel limit and decode budget."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as image:
                self._check_size(image)
                return self._preparer.decode(image)
        except (ImageTooLarge, InvalidInput):  # InvalidInput is a ValueError: not Pillow's
            raise
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"input {IMAGE_INPUT!r} is too large to decode safely: {exc}") from None
        except Image.UnidentifiedImageError:
            raise InvalidInput(f"input {IMAGE_INPUT!r} is not an image Pillow can decode ({len(data)} bytes); "
                               f"expected JPEG, PNG, BMP, GIF, TIFF, WebP or another format Pillow reads") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError) as exc:
            # Pillow reports truncated and corrupt data with all of these, depending on the format.
            raise InvalidInput(f"input {IMAGE_INPUT!r}: truncated or corrupt image data: {exc}") from None

    def _check_size(self, image: PILImage.Image) -> None:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InvalidInput(f"input {IMAGE_INPUT!r}: the image has no pixels ({width}x{height})")
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise ImageTooLarge(f"input {IMAGE_INPUT!r}: {width}x{height} = {width * height:,} pixels is over the "
                                f"server's limit of {self.max_pixels:,} (ssdtool serve --max-pixels)")
        cost = decode_cost(width, height, image.mode, keep_full_image=False)
        if cost > self.decode_memory:
            raise ImageTooLarge(f"input {IMAGE_INPUT!r}: decoding this {width}x{height} {image.mode} image takes "
                                f"about {_mib(cost)}, over the server's decode budget of {_mib(self.decode_memory)} "
                                f"(ssdtool serve --decode-memory)")

    def _detect(self, prepared: Prepared, threshold: float) -> dict[str, np.ndarray]:
        """Run a decoded image and postprocess: detections in pixels of the image, best first."""
        assert self.engine is not None and prepared.tensor is not None
        outputs = self.engine.infer(prepared.tensor)
        found = postprocess(outputs, self.entry, (prepared.width, prepared.height), form="ir", threshold=threshold)
        return {
            DETECTION_OUTPUTS[0]: np.asarray([d.box for d in found], dtype=np.float32).reshape(-1, 4),
            DETECTION_OUTPUTS[1]: np.asarray([d.label_id for d in found], dtype=np.int64),
            DETECTION_OUTPUTS[2]: np.asarray([d.score for d in found], dtype=np.float32),
        }


def _encoded_image(given: Any) -> bytes:
    """The one encoded image of a BYTES input (binary: bytes; JSON: a UTF-8 string)."""
    if given.datatype != "BYTES":
        raise InvalidInput(f"input {IMAGE_INPUT!r} must be BYTES (one encoded image), got {given.datatype!r:.20}")
    try:
        items = given.as_numpy().ravel()
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"input {IMAGE_INPUT!r}: cannot read its bytes: {exc}") from exc
    if items.size != 1:
        raise InvalidInput(f"input {IMAGE_INPUT!r} must hold exactly one encoded image, got {items.size}")
    item = items[0]
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8", "surrogateescape")
    raise InvalidInput(f"input {IMAGE_INPUT!r} must hold the image's bytes, got {type(item).__name__}")


def _threshold(parameters: Any) -> float:
    value = parameters.get("threshold", DEFAULT_THRESHOLD)
    if not checked.is_finite_number(value) or not 0.0 <= value <= 1.0:
        raise InvalidInput(f"parameter 'threshold' must be a number from 0 to 1, got {value!r:.60}")
    return float(value)


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"
