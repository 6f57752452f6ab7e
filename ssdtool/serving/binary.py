"""Reading v2 request bodies: the binary tensor extension with every field checked and tensors as numpy views of
the request's bytes, and JSON.

The protocol marks a binary body by its ``Inference-Header-Content-Length`` header alone: a body without it is
JSON, whatever its ``Content-Type`` (tritonclient sends none; kserve and FastAPI read such a body as bytes and
refused it with "the 'inference-header-content-length' header is missing"). :func:`json_request` reads it with
:func:`ssdtool.checked.loads` and the protocol's data model (kserve's ``InferenceRequest``); whatever is wrong is a
400 naming where.

kserve 0.21's ``InferRequest.from_bytes`` turns every binary input into a Python list of numbers
(``set_data_from_numpy(..., binary_data=False)``): 0.45 s for the tiny twin's 1 MB tensor, seconds for the
1200 px one, and encoded images (BYTES) that are not UTF-8 are refused. It also trusts the JSON header: a
``binary_data_size`` of ``1e400``, a BYTES length prefix past the end, ``"outputs": 5`` or ``"id": {}`` end in a
500 and a traceback. :func:`binary_request` reads the same format strictly (:func:`ssdtool.checked.loads`, whole
numbers, sizes that add up to the body) and refuses anything else with kserve's ``InvalidInput`` (400).
:func:`raw_tensor` is the part the gRPC server shares (``raw_input_contents``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from kserve import InferInput, InferRequest
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import RequestedOutput
from kserve.protocol.rest.v2_datamodels import InferenceRequest

from ssdtool import checked
from ssdtool.serving.protocol import HEADER_LENGTH, numpy_dtype

#: More dimensions than any tensor of this model has; bounds the work of checking a shape.
MAX_DIMENSIONS = 8
#: Every tensor datatype of the protocol that has a numpy type (BYTES is read by :func:`bytes_elements`).
DATATYPES = ("BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES")


def json_request(body: bytes, model_name: str) -> InferRequest:
    """A v2 request whose body is all JSON (no binary tensor extension), checked against the protocol's data model."""
    from pydantic import ValidationError

    try:
        document = checked.loads(body)
    except checked.JsonValueError as exc:
        raise InvalidInput(f"the request body ({len(body)} bytes, no {HEADER_LENGTH} header) is not valid JSON: "
                           f"{exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"the request body must be a JSON object with 'inputs', got {_kind(document)}")
    try:
        request = InferenceRequest.model_validate(document)
    except ValidationError as exc:
        raise InvalidInput(f"the request does not follow the protocol: {located(exc.errors())}") from None
    return InferRequest.from_inference_request(request, model_name)


def located(errors: list[Any]) -> str:
    """pydantic's (or FastAPI's) validation errors as ``inputs[0].shape: Input should be a valid list``, the first
    three of them."""
    parts = []
    for error in errors[:3]:
        where = ""
        for step in error.get("loc", ()):
            where += f"[{step}]" if isinstance(step, int) else f".{step}" if where else str(step)
        parts.append(f"{where or 'the body'}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def binary_request(body: bytes, header_length: int, model_name: str) -> InferRequest:
    """A v2 request in the binary tensor extension: ``header_length`` bytes of JSON, then the tensors' bytes, each
    input's ``binary_data_size`` of them in order; the sizes must account for every byte of the body."""
    if not 0 < header_length <= len(body):
        raise InvalidInput(f"{INFERENCE_CONTENT_LENGTH_HEADER} is {header_length}; expected the length of the JSON "
                           f"header, from 1 to {len(body)} (the body has {len(body)} bytes)")
    try:
        header = checked.loads(bytes(body[:header_length]))
    except checked.JsonValueError as exc:
        raise InvalidInput(f"the binary request's JSON header ({header_length} bytes) is not valid: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidInput(f"the binary request's JSON header must be an object, got {_kind(header)}")
    specs = header.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise InvalidInput(f"'inputs' must be a non-empty list of input objects, got {_kind(specs)}")
    view = memoryview(body)
    offset = header_length
    inputs = []
    for index, spec in enumerate(specs):
        infer_input, offset = _read_input(spec, f"inputs[{index}]", view, offset)
        inputs.append(infer_input)
    if offset != len(body):
        raise InvalidInput(f"{len(body) - offset} bytes follow the last input's data; the inputs' binary_data_size "
                           f"values must add up to the body after the {header_length}-byte header")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {_kind(request_id)}")
    return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=request_id,
                        parameters=_parameters(header.get("parameters"), "'parameters'"),
                        request_outputs=_outputs(header.get("outputs")))


def _read_input(spec: Any, where: str, body: memoryview, offset: int) -> tuple[InferInput, int]:
    if not isinstance(spec, dict):
        raise InvalidInput(f"{where} must be an object with name, shape and datatype, got {_kind(spec)}")
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}.name must be a non-empty string, got {_kind(name)}")
    where = f"input {name!r}"
    if datatype not in DATATYPES:
        raise InvalidInput(f"{where}: datatype must be one of {', '.join(DATATYPES)}, got {_short(datatype)}")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMENSIONS
            or not all(checked.is_int(d) and d >= 0 for d in shape)):
        raise InvalidInput(f"{where}: shape must be a list of at most {MAX_DIMENSIONS} whole numbers >= 0, got "
                           f"{_short(shape)}")
    parameters = _parameters(spec.get("parameters"), f"{where}: parameters") or {}
    if "data" in spec:
        if "binary_data_size" in parameters:
            raise InvalidInput(f"{where} has both 'data' and a binary_data_size; send one of them")
        if not isinstance(spec["data"], list):
            raise InvalidInput(f"{where}: data must be a list, got {_kind(spec['data'])}")
        return InferInput(name, shape, datatype, data=spec["data"], parameters=parameters), offset
    size = parameters.get("binary_data_size")
    left = len(body) - offset
    if not checked.is_int(size) or size < 0:
        raise InvalidInput(f"{where}: parameters.binary_data_size must be a whole number of bytes >= 0 (or send "
                           f"'data'), got {_short(size)}")
    if size > left:
        raise InvalidInput(f"{where}: binary_data_size {size} runs past the end of the body: {left} bytes are "
                           f"left after the header and earlier inputs")
    data = raw_tensor(datatype, shape, body[offset:offset + size], where, "binary_data_size")
    return InferInput(name, shape, datatype, data=data, parameters=parameters), offset + size


def raw_tensor(datatype: str, shape: list[int], raw: memoryview | bytes, where: str, size_name: str) -> np.ndarray:
    """A tensor's raw little-endian bytes as a numpy view of ``shape`` (BYTES: its elements); ``size_name`` says in
    messages what gave the size (``binary_data_size``, or gRPC's ``raw_input_contents``)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return bytes_elements(raw, count, where)
    dtype = numpy_dtype(datatype)
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(f"{where}: {size_name} is {len(raw)} bytes; shape {shape} of {datatype} takes "
                           f"{count * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def bytes_elements(raw: memoryview | bytes, count: int, where: str) -> np.ndarray:
    """The ``count`` elements of a BYTES tensor: each a 4-byte little-endian length and that many bytes, filling
    ``raw`` exactly. A length prefix that runs past the end is refused before anything is copied."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if len(elements) == count:
            raise InvalidInput(f"{where}: {len(raw) - offset} bytes follow its {count} BYTES elements")
        if offset + 4 > len(raw):
            raise InvalidInput(f"{where}: BYTES element {len(elements)} needs a 4-byte length, but only "
                               f"{len(raw) - offset} bytes are left")
        length = int.from_bytes(raw[offset:offset + 4], "little")
        offset += 4
        if length > len(raw) - offset:
            raise InvalidInput(f"{where}: BYTES element {len(elements)} declares {length} bytes, but only "
                               f"{len(raw) - offset} are left")
        elements.append(bytes(raw[offset:offset + length]))
        offset += length
    if len(elements) != count:
        raise InvalidInput(f"{where}: its shape holds {count} BYTES elements, the data {len(elements)}")
    array = np.empty(count, dtype=np.object_)
    array[:] = elements
    return array


def _parameters(value: Any, where: str) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise InvalidInput(f"{where} must be an object, got {_kind(value)}")
    return value


def _outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput(f"'outputs' must be a list of output objects, got {_kind(value)}")
    outputs = []
    for index, output in enumerate(value):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidInput(f"outputs[{index}] must be an object with a string 'name', got {_short(output)}")
        parameters = _parameters(output.get("parameters"), f"outputs[{index}].parameters")
        outputs.append(RequestedOutput(name=output["name"], parameters=parameters))
    return outputs


def _kind(value: Any) -> str:
    """What a JSON value is, for messages: its type and, when short, the value."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "nothing"}
    kind = names.get(type(value), "a number")
    return f"{kind} {_short(value)}" if isinstance(value, (int, float, str)) else kind


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class BinaryDataPlane(DataPlane):
    """kserve's data plane reading request bodies with :func:`binary_request` (the binary tensor extension) and
    :func:`json_request` (everything else), naming this server and the extensions it serves in its metadata, and
    adding a model's ``rt_info`` to its metadata."""

    def metadata(self) -> dict[str, Any]:
        from ssdtool import __version__
        from ssdtool.serving.protocol import EXTENSIONS

        return {"name": "ssdtool", "version": __version__, "extensions": list(EXTENSIONS)}

    async def model_metadata(self, model_name: str) -> dict[str, Any]:
        """kserve's model metadata, with the IR's runtime info (``rt_info``) when the model has some: OVMS answers
        it, and OpenVINO Model API's OVMS adapter reads the model's type, labels and preprocessing from it."""
        metadata: dict[str, Any] = await super().model_metadata(model_name)
        rt_info = getattr(self.get_model_from_registry(model_name), "rt_info", None)
        if rt_info:
            metadata["rt_info"] = rt_info
        return metadata

    def decode_inference_request(self, body: Any, headers: dict[str, str], model_name: str) -> InferRequest:
        if not isinstance(body, bytes):
            return super().decode_inference_request(body, headers, model_name)
        length = headers.get(INFERENCE_CONTENT_LENGTH_HEADER)
        if length is None:
            return json_request(body, model_name)
        if not (length.isascii() and length.isdigit() and len(length) <= 12):
            raise InvalidInput(f"{INFERENCE_CONTENT_LENGTH_HEADER} must be a whole number of bytes, got "
                               f"{_short(length)}")
        return binary_request(body, int(length), model_name)
