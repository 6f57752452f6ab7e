"""The kserve models behind ``ssdtool serve``: ssdtool's :class:`~ssdtool.backends.Engine` answering v2 requests.

One engine serves two models (:class:`ServedEngine` holds it and its thread pools):

* :class:`IRModel`, the IR itself: its metadata lists exactly the IR's input and outputs (what OVMS or Triton list
  for the same IR) and the IR's Model API metadata (``rt_info``, as OVMS adds it), and a request carries the IR's
  input tensor. The image-input IR (``serve --image-input``) takes u8 ``[1, H, W, 3]`` BGR images of any size, and,
  as OVMS takes them for an NHWC input, an encoded image (JPEG, PNG, ...) as one BYTES element in their place;
* :class:`~ssdtool.serving.detections.DetectionModel`, under a name of its own: an encoded image in, detections in
  pixels out.

kserve decodes a request (REST: :mod:`ssdtool.serving.binary`; gRPC: :mod:`ssdtool.serving.grpc_server`) into an
``InferRequest``, calls ``predict`` and encodes the ``InferResponse``; bad requests raise kserve's ``InvalidInput``
(400, gRPC ``INVALID_ARGUMENT``) and images too large to decode :class:`ImageTooLarge` (413,
``RESOURCE_EXHAUSTED``). Inference runs on a thread pool (the engine releases the GIL, and OpenVINO's ``infer``
takes its own infer request per call), so requests in flight run in parallel on a THROUGHPUT-compiled model.
Encoded images are decoded on a pool of their own, within a memory budget shared by every decode (detect's
:class:`~ssdtool.pipeline.ImagePreparer`), so large images wait for each other instead of holding up tensor requests
or taking the memory of all at once.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import RequestedOutput

from ssdtool import checked
from ssdtool.imaging import DEFAULT_MAX_PIXELS, decode_cost
from ssdtool.pipeline import ImagePreparer, Prepared
from ssdtool.serving.limits import DEFAULT_DECODE_MEMORY
from ssdtool.serving.protocol import PRECISION_PARAMETER, v2_datatype

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from ssdtool.backends import Engine
    from ssdtool.registry import ModelEntry

#: Threads decoding encoded images (each waits for room in the decode budget; large images decode one at a time).
DECODE_THREADS = 2
T = TypeVar("T")


class ImageTooLarge(Exception):
    """An encoded image over the server's pixel limit or decode budget: answered with 413 and the message."""


class ServedEngine:
    """``entry``'s IR, compiled by ``make_engine()`` in :meth:`load`, with the pools every served model runs on.
    Encoded images over ``max_pixels`` (None: no limit), or estimated to need more than ``decode_memory`` bytes to
    decode, are refused with :class:`ImageTooLarge`; the others decode within ``decode_memory`` bytes taken
    together, into the tensor of ``form`` (:data:`ssdtool.imaging.FORMS`)."""

    def __init__(self, entry: ModelEntry, make_engine: Callable[[], Engine], *, form: str = "ir",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, decode_memory: int = DEFAULT_DECODE_MEMORY) -> None:
        self.entry, self.form, self.max_pixels = entry, form, max_pixels
        self._make_engine = make_engine
        self.engine: Engine | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._decoders: ThreadPoolExecutor | None = None
        self._preparer = ImagePreparer(entry, form, max_pixels=max_pixels, decode_memory=decode_memory)
        #: The IR's input and outputs as v2 metadata (``{"name", "datatype", "shape"}``; -1: any size), and its
        #: runtime info for Model API (``{"model_info": {...}}``, None when the IR has none), known after :meth:`load`.
        self.inputs: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []
        self.rt_info: dict[str, dict[str, str]] | None = None

    @property
    def decode_memory(self) -> int:
        return self._preparer.budget.capacity

    def load(self, model_path: Path | None = None) -> None:
        """Compile the engine and read what the metadata says: the input (the image-input IR's is u8
        ``[1, -1, -1, 3]``), the outputs, and ``model_path``'s Model API section (``rt_info/model_info``)."""
        from ssdtool.convert.model_info import MODEL_INFO_SECTION
        from ssdtool.provenance import read_section

        engine = self._make_engine()
        self._pool = ThreadPoolExecutor(max_workers=max(1, engine.optimal_requests),
                                        thread_name_prefix="ssdtool-serve")
        # The image-input IR's decode pool also runs inference (see decode_and_run): as many threads as requests.
        decoders = max(DECODE_THREADS, engine.optimal_requests) if self.form == "image" else DECODE_THREADS
        self._decoders = ThreadPoolExecutor(max_workers=decoders, thread_name_prefix="ssdtool-serve-decode")
        if self.form == "image":
            width, height = self.entry.input.resize
            warm_input = np.zeros((1, height, width, 3), dtype=np.uint8)
            self.inputs = [{"name": engine.input_name, "datatype": "UINT8", "shape": [1, -1, -1, 3]}]
        else:
            warm_input = np.zeros(engine.input_shape, dtype=np.float32)
            self.inputs = [{"name": engine.input_name, "datatype": "FP32", "shape": list(engine.input_shape)}]
        # One inference warms the engine up and tells the outputs' exact shapes and types for metadata.
        warm = engine.infer(warm_input)
        self.outputs = [{"name": name, "datatype": v2_datatype(value.dtype), "shape": list(value.shape)}
                        for name, value in warm.items()]
        section = read_section(model_path, MODEL_INFO_SECTION) if model_path is not None else None
        self.rt_info = {MODEL_INFO_SECTION: section} if section else None
        self.engine = engine

    def stop(self) -> None:
        for pool in (self._decoders, self._pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._preparer.close()
        self.engine = None

    def loaded(self, name: str) -> Engine:
        if self.engine is None:
            raise InvalidInput(f"model {name} is not loaded")
        return self.engine

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` on the inference pool."""
        assert self._pool is not None
        return await asyncio.get_running_loop().run_in_executor(self._pool, work, *args)

    async def decode_and_run(self, data: bytes, where: str, work: Callable[[Prepared], T]) -> T:
        """Decode an encoded image (within the pixel limit and decode budget; ``where`` names the input in
        messages) and ``work(prepared)`` on it.

        The standard IR's tensor is network-sized: the image decodes on the decode pool and the work runs on the
        inference pool. The image-input IR's tensor is the whole image (3 bytes a pixel, up to 268 MB at the
        default pixel limit), kept until its inference ends: both run on the decode pool, one image per thread,
        so whole images do not pile up waiting for the engine (a 11 KB PNG can declare 88 million pixels).
        """
        assert self._decoders is not None
        loop = asyncio.get_running_loop()
        if self.form == "image":
            return await loop.run_in_executor(self._decoders, lambda: work(self._decode(data, where)))
        prepared = await loop.run_in_executor(self._decoders, self._decode, data, where)
        return await self.run(work, prepared)

    def _decode(self, data: bytes, where: str) -> Prepared:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as image:
                self._check_size(image, where)
                return self._preparer.decode(image)
        except (ImageTooLarge, InvalidInput):  # InvalidInput is a ValueError: not Pillow's
            raise
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"{where} is too large to decode safely: {exc}") from None
        except Image.UnidentifiedImageError:
            raise InvalidInput(f"{where} is not an image Pillow can decode ({len(data)} bytes); expected JPEG, PNG, "
                               f"BMP, GIF, TIFF, WebP or another format Pillow reads") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError) as exc:
            # Pillow reports truncated and corrupt data with all of these, depending on the format.
            raise InvalidInput(f"{where}: truncated or corrupt image data: {exc}") from None

    def _check_size(self, image: PILImage.Image, where: str) -> None:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InvalidInput(f"{where}: the image has no pixels ({width}x{height})")
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise ImageTooLarge(f"{where}: {width}x{height} = {width * height:,} pixels is over the server's limit "
                                f"of {self.max_pixels:,} (ssdtool serve --max-pixels)")
        cost = decode_cost(width, height, image.mode, keep_full_image=False)
        if cost > self.decode_memory:
            raise ImageTooLarge(f"{where}: decoding this {width}x{height} {image.mode} image takes about "
                                f"{_mib(cost)}, over the server's decode budget of {_mib(self.decode_memory)} "
                                f"(ssdtool serve --decode-memory)")


class ServedModel(Model):
    """A kserve model on ``served``'s engine, ready once that engine is: what both served models share."""

    def __init__(self, name: str, served: ServedEngine) -> None:
        super().__init__(name)
        self.served = served

    def load(self) -> bool:
        self.ready = self.served.engine is not None
        return self.ready


class IRModel(ServedModel):
    """The IR served under ``name``: metadata and requests are exactly the IR's own tensors."""

    def get_input_types(self) -> list[dict[str, Any]]:
        return [dict(spec) for spec in self.served.inputs]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [dict(spec) for spec in self.served.outputs]

    @property
    def rt_info(self) -> dict[str, dict[str, str]] | None:
        """The IR's Model API metadata, for the model metadata's ``rt_info`` (as OVMS answers it)."""
        return self.served.rt_info

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        engine = self.served.loaded(self.name)
        spec = self.served.inputs[0]
        given = single_input(payload, f"{engine.input_name!r}")
        if given.name == spec["name"] and given.datatype == "BYTES" and self.served.form == "image":
            # As OVMS takes an encoded image for an NHWC input: decoded here into the IR's u8 BGR pixels.
            where = f"input {given.name!r}"
            outputs = await self.served.decode_and_run(encoded_image(given, where), where,
                                                       lambda prepared: engine.infer(prepared.tensor))
        else:
            outputs = await self.served.run(engine.infer, self._tensor(given, spec, self.served.max_pixels))
        return respond(self.name, payload, outputs, engine.inference_precision)

    @staticmethod
    def _tensor(given: Any, spec: dict[str, Any], max_pixels: int | None = None) -> np.ndarray:
        """The request's tensor for the IR's input ``spec`` (-1 in its shape: any size from 1; an image of at most
        ``max_pixels``): FP32 finite numbers, or UINT8 whole numbers 0-255."""
        name, datatype, shape = spec["name"], spec["datatype"], list(spec["shape"])
        pixels = "raw BGR pixels 0-255" + (", or an encoded image as one BYTES element" if -1 in shape else "")
        expected = f"input {name!r}, {datatype} {shape} ({pixels})"
        if given.name != name:
            raise InvalidInput(f"unknown input {given.name!r:.60}; expected {expected}")
        if given.datatype != datatype:
            raise InvalidInput(f"input {given.name!r} has datatype {given.datatype!r:.20}; expected {expected}")
        got = list(given.shape)
        if (not all(checked.is_int(d) for d in got) or len(got) != len(shape)
                or any(g != s and not (s == -1 and g >= 1) for g, s in zip(got, shape, strict=True))):
            raise InvalidInput(f"input {given.name!r} has shape {got!r:.80}; expected {expected}")
        if -1 in shape and max_pixels is not None and got[1] * got[2] > max_pixels:
            raise ImageTooLarge(f"input {given.name!r}: {got[2]}x{got[1]} = {got[1] * got[2]:,} pixels is over the "
                                f"server's limit of {max_pixels:,} (ssdtool serve --max-pixels)")
        if datatype == "UINT8":
            return _pixels(given, got)
        try:
            tensor = np.asarray(given.as_numpy(), dtype=np.float32).reshape(got)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"input {given.name!r}: its data does not fill shape {got} with numbers: "
                               f"{exc}") from exc
        if not checked.all_finite(tensor):
            raise InvalidInput(f"input {given.name!r} holds NaN or infinite values; expected {expected}")
        return tensor


def _pixels(given: Any, shape: list[int]) -> np.ndarray:
    """A UINT8 input's pixels: binary bytes as they are; JSON numbers only when each is a whole number 0-255."""
    data = given.data
    try:
        if isinstance(data, np.ndarray) and data.dtype == np.uint8:
            return data.reshape(shape)
        values = np.asarray(data)
        if values.dtype.kind not in "iu" or (values.size and (values.min() < 0 or values.max() > 255)):
            raise InvalidInput(f"input {given.name!r}: UINT8 data must be whole numbers from 0 to 255")
        return values.astype(np.uint8).reshape(shape)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, InvalidInput):
            raise
        raise InvalidInput(f"input {given.name!r}: its data does not fill shape {shape} with numbers: "
                           f"{exc}") from exc


def encoded_image(given: Any, where: str) -> bytes:
    """The one encoded image of a BYTES input (binary: bytes; JSON: a UTF-8 string)."""
    if given.datatype != "BYTES":
        raise InvalidInput(f"{where} must be BYTES (one encoded image), got {given.datatype!r:.20}")
    try:
        items = given.as_numpy().ravel()
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{where}: cannot read its bytes: {exc}") from exc
    if items.size != 1:
        raise InvalidInput(f"{where} must hold exactly one encoded image, got {items.size}")
    item = items[0]
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8", "surrogateescape")
    raise InvalidInput(f"{where} must hold the image's bytes, got {type(item).__name__}")


def single_input(payload: Any, expected: str) -> Any:
    """The one input of a v2 request (``expected`` names it in the message otherwise)."""
    if not isinstance(payload, InferRequest):
        raise InvalidInput("expected an Open Inference Protocol (v2) request")
    if len(payload.inputs) != 1:
        raise InvalidInput(f"expected exactly one input ({expected}), got {len(payload.inputs)}")
    return payload.inputs[0]


def respond(model: str, payload: InferRequest, outputs: dict[str, np.ndarray],
            precision: str | None) -> InferResponse:
    """The response to ``payload``: the outputs it asks for (all when it names none), each as binary data when the
    request asks for that (``binary_data_output``, or an output's own ``binary_data``; over gRPC always: tritonclient
    reads only ``raw_output_contents``), with the inference precision in the response's parameters."""
    parameters = payload.parameters or {}
    binary = True if payload.from_grpc else _flag(parameters, "binary_data_output", "parameter")
    wanted: list[tuple[str, bool]] = [(name, binary) for name in outputs]
    if payload.request_outputs:
        wanted = []
        for requested in payload.request_outputs:
            if requested.name not in outputs:
                raise InvalidInput(f"unknown output {requested.name!r:.60}; the model's outputs are "
                                   f"{', '.join(outputs)}")
            own = _flag(requested.parameters or {}, "binary_data", f"output {requested.name!r}: parameter", binary)
            wanted.append((requested.name, True if payload.from_grpc else own))
    answer: list[InferOutput] = []
    for name, as_binary in wanted:
        value = outputs[name]
        output = InferOutput(name=name, shape=list(value.shape), datatype=v2_datatype(value.dtype))
        output.set_data_from_numpy(value, binary_data=as_binary)
        answer.append(output)
    chosen = [RequestedOutput(name, {"binary_data": as_binary}) for name, as_binary in wanted]
    reported = {PRECISION_PARAMETER: precision} if precision else None
    return InferResponse(response_id=payload.id or "", model_name=model, infer_outputs=answer, parameters=reported,
                         use_binary_outputs=binary, requested_outputs=None if payload.from_grpc else chosen,
                         from_grpc=payload.from_grpc)


def _flag(parameters: Any, key: str, where: str, default: bool = False) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where} {key!r} must be true or false, got {value!r:.60}")
    return value


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"
