"""The IR's tensors as a server sees them: names, element types and shapes, read from the IR itself.

Triton's ``config.pbtxt`` must list them exactly (the OpenVINO backend matches names and checks types and dims),
so they are read with OpenVINO (imported here, on use) rather than assumed from the registry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ssdtool.errors import ModelFormatError

#: OpenVINO element type names -> Triton's DataType names (model_config.proto).
TRITON_TYPES = {
    "boolean": "TYPE_BOOL", "u8": "TYPE_UINT8", "u16": "TYPE_UINT16", "u32": "TYPE_UINT32", "u64": "TYPE_UINT64",
    "i8": "TYPE_INT8", "i16": "TYPE_INT16", "i32": "TYPE_INT32", "i64": "TYPE_INT64", "f16": "TYPE_FP16",
    "f32": "TYPE_FP32", "f64": "TYPE_FP64", "bf16": "TYPE_BF16", "string": "TYPE_STRING",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, OpenVINO element type (``f32``, ``u8``, ``i64``, ...) and shape (-1 for a
    dynamic dimension)."""

    name: str
    element_type: str
    shape: tuple[int, ...]

    @property
    def triton_type(self) -> str:
        try:
            return TRITON_TYPES[self.element_type]
        except KeyError:
            raise ModelFormatError(f"tensor {self.name!r} has element type {self.element_type}, which Triton has no "
                                   "data type for", hint="export with --format ovms or kserve") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


def _tensor(port: Any) -> TensorSpec:
    shape = port.get_partial_shape()
    dims = tuple(int(d.get_length()) if d.is_static else -1 for d in shape)
    return TensorSpec(name=port.get_any_name(), element_type=port.get_element_type().get_type_name(), shape=dims)


def read_signature(xml: Path) -> Signature:
    """The inputs and outputs of the IR at ``xml``; :class:`ModelFormatError` when OpenVINO cannot read it."""
    from ssdtool.backends import import_engine

    ov = import_engine("openvino")
    try:
        model = ov.Core().read_model(str(xml))
        return Signature(inputs=tuple(_tensor(p) for p in model.inputs),
                         outputs=tuple(_tensor(p) for p in model.outputs))
    except RuntimeError as exc:
        # OpenVINO's first lines name its own source files; the last says what is wrong.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ModelFormatError(f"OpenVINO cannot read the IR {xml}: {lines[-1] if lines else type(exc).__name__}",
                               hint="rebuild it with 'ssdtool convert --force'") from None
