"""Reading the binary tensor extension: every field checked, tensors as numpy views of the request's bytes.

kserve 0.21's ``InferRequest.from_bytes`` turns every binary input into a Python list of numbers
(``set_data_from_numpy(..., binary_data=False)``): 0.45 s for the tiny twin's 1 MB tensor, seconds for the
1200 px one, and encoded images (BYTES) that are not UTF-8 are refused. It also trusts the JSON header: a
``binary_data_size`` of ``1e400``, a BYTES length prefix past the end, ``"outputs": 5`` or ``"id": {}`` end in a
500 and a traceback. :func:`binary_request` reads the same format strictly (:func:`ssdtool.checked.loads`, whole
numbers, sizes that add up to the body) and refuses anything else with kserve's ``InvalidInput`` (400); JSON
requests still go through kserve (FastAPI validates them against the protocol's data model).
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

from ssdtool import checked
from ssdtool.serving.protocol import numpy_dtype

#: More dimensions than any tensor of this model has; bounds the work of checking a shape.
MAX_DIMENSIONS = 8
#: Every tensor datatype of the protocol that has a numpy type (BYTES is read by :func:`bytes_elements`).
DATATYPES = ("BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES")


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
    count = math.prod(shape)
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
    raw = body[offset:offset + size]
    if datatype == "BYTES":
        data: np.ndarray = bytes_elements(raw, count, where)
    else:
        dtype = numpy_dtype(datatype)
        if size != count * dtype.itemsize:
            raise InvalidInput(f"{where}: binary_data_size is {size} bytes; shape {shape} of {datatype} takes "
                               f"{count * dtype.itemsize}")
        data = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)
    return InferInput(name, shape, datatype, data=data, parameters=parameters), offset + size


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
    """kserve's data plane with :func:`binary_request` for bodies in the binary tensor extension."""

    def decode_inference_request(self, body: Any, headers: dict[str, str], model_name: str) -> InferRequest:
        length = headers.get(INFERENCE_CONTENT_LENGTH_HEADER) if isinstance(body, bytes) else None
        if length is None:
            return super().decode_inference_request(body, headers, model_name)
        if not (length.isascii() and length.isdigit() and len(length) <= 12):
            raise InvalidInput(f"{INFERENCE_CONTENT_LENGTH_HEADER} must be a whole number of bytes, got "
                               f"{_short(length)}")
        return binary_request(body, int(length), model_name)
