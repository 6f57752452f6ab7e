"""What a server's answers must be before the ``--server`` client uses them: the model's metadata and each inference
response, checked field by field. Every problem is a :class:`ServerError` (exit 32) that names the field
(``outputs[1].shape``), what was expected and what came; the server's strings are shown escaped and shortened.

Given the registry model (:class:`OutputContract`, as detect, bench and eval give it), answers are also held to
what that model's IR can return: its three outputs by name, at most ``convert.output_count`` rows, finite
normalized boxes and scores in [0, 1], label ids its label file names. The same contract bounds the size of an
answer (:attr:`OutputContract.max_answer_bytes`), so a server cannot make the client hold more than that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ssdtool.checked import all_finite, is_int
from ssdtool.errors import ServerError
from ssdtool.redact import printable
from ssdtool.serving.protocol import IMAGE_INPUT, numpy_dtype

if TYPE_CHECKING:
    from ssdtool.registry import ModelEntry

#: Bytes one output element may take in an answer: 8 in binary (FP64, INT64), and a JSON number with its comma and
#: any indentation fits too (float32 as text is at most about 25 characters).
BYTES_PER_ELEMENT = 64
#: Bytes an answer may hold beyond its elements: the JSON header, ids, names, parameters.
ANSWER_OVERHEAD_BYTES = 64 * 1024
#: The model's metadata: a few small tensor descriptions.
MAX_METADATA_BYTES = 1024 * 1024
#: Without a registry model to derive the cap from (a RemoteEngine made by hand), answers stop here.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
#: The datatypes the client sends its tensor in (converting the float32 pixels).
SENDABLE_DATATYPES = ("FP32", "FP16", "UINT8")
MAX_DIMENSIONS = 8
HINT = "check that --server points at an Open Inference Protocol (KServe v2) server running this model"


def shown(value: Any, limit: int = 60) -> str:
    """A server's value for a message: a string quoted, anything else as Python writes it; control characters
    escaped, cut at ``limit`` characters."""
    text = printable(value if isinstance(value, str) else repr(value))
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"'{text}'" if isinstance(value, str) else text


def kind(value: Any) -> str:
    """The JSON name of a value's type, for "expected an object, got an array"."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


@dataclass(frozen=True)
class OutputContract:
    """What the registry model's IR takes and returns: the raw-pixel input ``input_shape``, and outputs
    ``boxes`` ``[1, rows, 4]``, ``labels`` and ``scores`` ``[1, rows]``, label ids below ``label_count``."""

    model: str
    input_shape: tuple[int, ...]
    boxes: str
    labels: str
    scores: str
    rows: int
    label_count: int

    @classmethod
    def of(cls, entry: ModelEntry) -> OutputContract:
        """The contract of ``entry``'s IR (reads its label file, once)."""
        from ssdtool.labels import label_names

        width, height = entry.input.resize
        spec = entry.outputs
        return cls(entry.name, (1, 3, height, width), spec.boxes, spec.labels, spec.scores,
                   entry.convert.output_count, len(label_names(entry)))

    @property
    def max_answer_bytes(self) -> int:
        """The largest inference answer this model's outputs can make, in binary or JSON: the cap."""
        return self.rows * 6 * BYTES_PER_ELEMENT + ANSWER_OVERHEAD_BYTES


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    """``GET /v2/models/NAME``, checked: the tensor input the client sends, and the declared outputs."""

    name: str
    platform: str
    tensor_input: TensorSpec
    outputs: tuple[TensorSpec, ...]


def _refuse(where: str, what: str, problem: str, hint: str = HINT) -> ServerError:
    return ServerError(f"{where} sent {what} that cannot be used: {problem}", hint=hint)


def _tensor_spec(raw: Any, field: str, *, dynamic: bool) -> TensorSpec | str:
    """A ``{name, datatype, shape}`` entry, or the problem with it. ``dynamic``: -1 dimensions allowed."""
    if not isinstance(raw, dict):
        return f"{field} is {kind(raw)}; expected an object with name, datatype and shape"
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if not isinstance(name, str) or not name:
        return f"{field}.name is {shown(name) if name is not None else 'missing'}; expected a tensor name"
    if not isinstance(datatype, str):
        return f"{field}.datatype is {shown(datatype) if datatype is not None else 'missing'}; expected a v2 " \
               "datatype such as FP32"
    low = -1 if dynamic else 0
    if not isinstance(shape, list) or len(shape) > MAX_DIMENSIONS \
            or not all(is_int(d) and low <= d < 2**31 for d in shape):
        return f"{field}.shape is {shown(shape)}; expected a list of at most {MAX_DIMENSIONS} integers " \
               f"from {low} to 2^31"
    return TensorSpec(name, datatype, tuple(shape))


def read_metadata(data: Any, where: str, contract: OutputContract | None) -> ModelMetadata:
    """Model metadata (parsed JSON) -> :class:`ModelMetadata`; :class:`ServerError` naming what is wrong."""
    what = "model metadata"
    if not isinstance(data, dict):
        raise _refuse(where, what, f"it is {kind(data)}; expected an object with name, inputs and outputs")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise _refuse(where, what, f"'name' is {shown(name) if name is not None else 'missing'}; expected the "
                                   "model's name")
    specs: dict[str, list[TensorSpec]] = {}
    for key in ("inputs", "outputs"):
        entries = data.get(key)
        if not isinstance(entries, list):
            raise _refuse(where, what, f"'{key}' is {kind(entries) if key in data else 'missing'}; expected an "
                                       "array of tensors")
        specs[key] = []
        for index, raw in enumerate(entries[:64]):
            spec = _tensor_spec(raw, f"{key}[{index}]", dynamic=True)
            if isinstance(spec, str):
                raise _refuse(where, what, spec)
            specs[key].append(spec)
    tensor_inputs = [s for s in specs["inputs"] if s.name != IMAGE_INPUT and s.datatype != "BYTES"]
    if not tensor_inputs:
        raise _refuse(where, what, "it lists no tensor input", hint="check the model name with --server-model")
    tensor_input = tensor_inputs[0]
    if tensor_input.datatype not in SENDABLE_DATATYPES:
        raise _refuse(where, what, f"input {shown(tensor_input.name)} takes {shown(tensor_input.datatype)}; the "
                                   f"client sends {', '.join(SENDABLE_DATATYPES)}")
    if contract is not None:
        tensor_input = _check_input(tensor_input, contract, where)
        names = {s.name for s in specs["outputs"]}
        missing = [n for n in (contract.boxes, contract.labels, contract.scores) if n not in names]
        if missing:
            listed = ", ".join(shown(n, 30) for n in sorted(names)[:10]) or "none"
            raise _refuse(where, what, f"it declares no output {', '.join(missing)} (it declares {listed}); "
                                       f"{contract.model}'s IR returns {contract.boxes}, {contract.labels} and "
                                       f"{contract.scores}", hint="check --server-model: it names another model")
    elif any(d < 1 for d in tensor_input.shape):
        raise _refuse(where, what, f"input {shown(tensor_input.name)} has shape {list(tensor_input.shape)}; the "
                                   "client sends a fixed shape")
    platform = data.get("platform", "")
    return ModelMetadata(name, printable(platform)[:80] if isinstance(platform, str) else "", tensor_input,
                         tuple(specs["outputs"]))


def _check_input(spec: TensorSpec, contract: OutputContract, where: str) -> TensorSpec:
    """The served input must take the tensor the registry model's IR takes (-1: any size)."""
    wanted = contract.input_shape
    if len(spec.shape) != len(wanted) or any(d not in (-1, w) for d, w in zip(spec.shape, wanted, strict=False)):
        raise _refuse(where, "model metadata",
                      f"input {shown(spec.name)} has shape {list(spec.shape)}; {contract.model}'s IR takes "
                      f"{list(wanted)} (raw BGR pixels)",
                      hint="check --server-model, and that the server runs this registry model's IR")
    return TensorSpec(spec.name, spec.datatype, wanted)


def split_binary(body: bytes, header_length: str | None, where: str) -> tuple[Any, bytes]:
    """A body of the binary tensor extension -> (JSON header bytes, tensor bytes); JSON bodies come back whole."""
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not text.isdigit() or not 0 < int(text) <= len(body):
        raise _refuse(where, "an inference response",
                      f"its Inference-Header-Content-Length is {shown(header_length, 30)}; expected the length of its "
                      f"JSON header, from 1 to the body's {len(body):,} bytes")
    size = int(text)
    return body[:size], body[size:]


def read_response(header: Any, raw: bytes, where: str, contract: OutputContract | None
                  ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A v2 inference response (its parsed JSON header, and the tensor bytes of the binary extension) -> outputs by
    name, and the response's parameters; every output checked (shape, datatype, finite values; against the
    contract when given)."""
    what = "an inference response"
    if not isinstance(header, dict):
        raise _refuse(where, what, f"it is {kind(header)}; expected an object with outputs")
    parameters = header.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise _refuse(where, what, f"'parameters' is {kind(parameters)}; expected an object")
    specs = header.get("outputs")
    if not isinstance(specs, list) or not specs:
        got = kind(specs) if "outputs" in header else "missing"
        raise _refuse(where, what, f"'outputs' is {got if specs != [] else 'empty'}; expected an array of tensors")
    outputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, spec in enumerate(specs):
        field = f"outputs[{index}]"
        try:
            array, offset = _read_output(spec, field, raw, offset)
        except _Problem as problem:
            raise _refuse(where, what, str(problem)) from None
        name = spec["name"]
        if name in outputs:
            raise _refuse(where, what, f"{field}: output {shown(name)} comes twice")
        outputs[name] = array
    if offset != len(raw):
        raise _refuse(where, what, f"{len(raw) - offset:,} bytes follow the last output's binary data")
    if contract is not None:
        problem = _against_contract(outputs, contract)
        if problem:
            raise _refuse(where, what, problem, hint="check that the server runs this registry model's IR "
                                                     "(--server-model), unchanged")
    return outputs, dict(parameters or {})


class _Problem(Exception):
    pass


_KINDS = {"b": "booleans", "i": "integers", "u": "integers", "f": "fractional numbers"}


def _read_output(spec: Any, field: str, raw: bytes, offset: int) -> tuple[np.ndarray, int]:
    """One output entry -> its array (and where the next binary output starts); :class:`_Problem` otherwise."""
    checked = _tensor_spec(spec, field, dynamic=False)
    if isinstance(checked, str):
        raise _Problem(checked)
    try:
        dtype = numpy_dtype(checked.datatype)
    except KeyError:
        raise _Problem(f"{field}.datatype is {shown(checked.datatype)}; expected a numeric v2 datatype (FP32, "
                       "INT64, ...)") from None
    count = math.prod(checked.shape)
    extra = spec.get("parameters")
    if extra is not None and not isinstance(extra, dict):
        raise _Problem(f"{field}.parameters is {kind(extra)}; expected an object")
    size = (extra or {}).get("binary_data_size")
    if size is not None:
        if not is_int(size) or size != count * dtype.itemsize or offset + size > len(raw):
            raise _Problem(f"{field}.parameters.binary_data_size is {shown(size)}; expected {count * dtype.itemsize:,} "
                           f"bytes ({checked.datatype} {list(checked.shape)}), with {len(raw) - offset:,} bytes left "
                           "in the body")
        array = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(checked.shape)
        offset += size
    else:
        array = _json_data(spec.get("data"), field, dtype, checked)
    if not all_finite(array):
        raise _Problem(f"{field} ({shown(checked.name)}) holds NaN or infinite values")
    return array, offset


def _json_data(data: Any, field: str, dtype: np.dtype, spec: TensorSpec) -> np.ndarray:
    """JSON ``data`` (flat or nested, row-major) as an array of ``dtype`` and ``spec.shape``."""
    if not isinstance(data, list):
        raise _Problem(f"{field}.data is {kind(data) if data is not None else 'missing'} and there is no "
                       "binary_data_size; expected an array of numbers")
    try:
        values = np.asarray(data)
    except (ValueError, TypeError):  # ragged nesting
        raise _Problem(f"{field}.data is not a regular array of numbers") from None
    letter, wanted = values.dtype.kind, dtype.kind
    if values.size and letter not in "biuf":
        raise _Problem(f"{field}.data holds values that are not numbers (or integers beyond 64 bits)")
    fits = letter == "b" if wanted == "b" else letter in "iu" if wanted in "iu" else letter in "iuf"
    if values.size and not fits:
        expected = "booleans" if wanted == "b" else "integers" if wanted in "iu" else "numbers"
        raise _Problem(f"{field}.data holds {_KINDS[letter]} for {spec.datatype}; expected {expected}")
    if values.size != math.prod(spec.shape):
        raise _Problem(f"{field}.data has {values.size:,} values; its shape {list(spec.shape)} takes "
                       f"{math.prod(spec.shape):,}")
    if wanted in "iu" and values.size:
        limits = np.iinfo(dtype)
        if values.min() < limits.min or values.max() > limits.max:
            raise _Problem(f"{field}.data holds integers outside {spec.datatype}'s range")
    with np.errstate(over="ignore"):  # a float too large for FP16 becomes inf, refused by the finite check
        return values.astype(dtype).reshape(spec.shape)


def _against_contract(outputs: dict[str, np.ndarray], contract: OutputContract) -> str | None:
    """What the outputs do that the registry model's IR cannot, or None."""
    missing = [n for n in (contract.boxes, contract.labels, contract.scores) if n not in outputs]
    if missing:
        listed = ", ".join(shown(n, 30) for n in list(outputs)[:10])
        return f"it has no output {', '.join(missing)} (it has {listed})"
    boxes, labels, scores = (outputs[n] for n in (contract.boxes, contract.labels, contract.scores))
    if boxes.ndim < 1 or boxes.shape[-1] != 4 or boxes.dtype.kind != "f":
        return f"output {contract.boxes} is {boxes.dtype} {list(boxes.shape)}; expected float boxes [1, N, 4]"
    rows = boxes.size // 4
    if rows > contract.rows:
        return f"output {contract.boxes} has {rows} boxes; {contract.model}'s IR returns at most {contract.rows}"
    for name, values, letter in ((contract.labels, labels, "iu"), (contract.scores, scores, "f")):
        if values.size != rows or values.dtype.kind not in letter:
            expected = "integer label ids" if letter == "iu" else "float scores"
            return f"output {name} is {values.dtype} {list(values.shape)}; expected {expected} [1, {rows}], one " \
                   f"per box"
    for name, values in ((contract.boxes, boxes), (contract.scores, scores)):
        if values.size and (values.min() < 0 or values.max() > 1):
            return f"output {name} holds {_outside(values, 0, 1)}; expected values from 0 to 1 (normalized boxes " \
                   "and scores)"
    if labels.size and (labels.min() < 0 or labels.max() >= contract.label_count):
        return f"output {contract.labels} holds label id {_outside(labels, 0, contract.label_count - 1)}; " \
               f"{contract.model}'s label file has ids 0 to {contract.label_count - 1}"
    return None


def _outside(values: np.ndarray, low: float, high: float) -> str:
    flat = values.reshape(-1)
    position = int(np.flatnonzero((flat < low) | (flat > high))[0])
    value = flat[position].item()
    return f"{value:g} (at position {position})" if isinstance(value, float) else f"{value} (at position {position})"
