"""What ``--compare`` names: a backend, the IR's weights and the arithmetic, as one short word each.

Grammar (case-insensitive; items separated by commas)::

    item      := "onnxruntime" [":f32"]
               | ["openvino:"] WEIGHTS [":" ARITHMETIC]
               | "openvino" [":" ARITHMETIC]
    WEIGHTS   := FP32 | FP16 | INT8                      (the IR: a file property)
    ARITHMETIC:= auto | f32 | bf16 | f16                 (OpenVINO's inference precision: a run property)

``FP32:bf16`` is the FP32 IR computed in bf16; ``INT8`` the INT8 IR at ``--inference-precision`` (default
auto); ``openvino`` the registry's IR; ``onnxruntime`` the source ONNX (f32 only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ssdtool.constants import Backend, InferencePrecision, IRPrecision
from ssdtool.errors import UsageError

if TYPE_CHECKING:
    from ssdtool.backends.spec import EngineSpec

GRAMMAR = ("comma-separated configurations, each onnxruntime, openvino[:ARITHMETIC] or [openvino:]WEIGHTS[:ARITHMETIC] "
           "with WEIGHTS FP32, FP16 or INT8 and ARITHMETIC auto, f32, bf16 or f16, e.g. FP32:f32,FP32:bf16,INT8,"
           "onnxruntime")


@dataclass(frozen=True)
class Configuration:
    """One engine setup to evaluate: ``precision`` the IR (None: the registry's, or onnxruntime's source ONNX),
    ``inference_precision`` what is asked of OpenVINO (``auto`` or pinned)."""

    backend: str
    precision: str | None
    inference_precision: str

    @property
    def label(self) -> str:
        """The canonical spelling: ``openvino:FP32:f32``, ``onnxruntime``."""
        if self.backend == Backend.ONNXRUNTIME:
            return Backend.ONNXRUNTIME.value
        parts = [Backend.OPENVINO.value, *([self.precision] if self.precision else []), self.inference_precision]
        return ":".join(parts)

    def engine(self, base: EngineSpec) -> EngineSpec:
        """The engine this configuration runs: ``base`` (the run's device, cache, ...) with this backend, IR and
        arithmetic."""
        return base.replace(backend=self.backend, precision=self.precision,
                            inference_precision=self.inference_precision)


def _choice(value: str, kind: type[IRPrecision] | type[InferencePrecision]) -> str | None:
    try:
        return kind.parse(value, "value").value
    except ValueError:
        return None


def parse_item(text: str, default_inference: str = InferencePrecision.AUTO.value) -> Configuration:
    """One configuration (see the module docstring); :class:`UsageError` naming the item otherwise."""
    parts = [p.strip() for p in text.strip().split(":")]
    bad = UsageError(f"--compare: cannot read configuration {text.strip()!r}", hint=f"--compare takes {GRAMMAR}")
    if not parts or not parts[0]:
        raise bad
    head = parts[0].lower()
    if head == Backend.ONNXRUNTIME:
        if len(parts) > 2 or (len(parts) == 2 and parts[1].lower() != InferencePrecision.F32):
            raise UsageError(f"--compare: {text.strip()!r}: onnxruntime runs the source ONNX in f32 only",
                             hint="write onnxruntime or onnxruntime:f32")
        return Configuration(Backend.ONNXRUNTIME.value, None, InferencePrecision.F32.value)
    if head == Backend.OPENVINO:
        parts = parts[1:]
    weights = _choice(parts[0], IRPrecision) if parts else None
    if parts and weights is not None:
        parts = parts[1:]
    if len(parts) > 1:
        raise bad
    arithmetic = _choice(parts[0], InferencePrecision) if parts else default_inference
    if arithmetic is None:
        raise bad
    if head != Backend.OPENVINO and weights is None:
        raise bad
    return Configuration(Backend.OPENVINO.value, weights, arithmetic)


def parse_configurations(text: str, default_inference: str = InferencePrecision.AUTO.value) -> list[Configuration]:
    """``--compare`` as configurations, in the order given; duplicates and empty items are usage errors."""
    items = text.split(",")
    if any(not item.strip() for item in items):
        raise UsageError(f"--compare: empty configuration in {text!r}", hint=f"--compare takes {GRAMMAR}")
    configurations = [parse_item(item, default_inference) for item in items]
    labels = [c.label for c in configurations]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UsageError(f"--compare names {', '.join(repeated)} more than once", hint="list each configuration once")
    return configurations


def find_configuration(text: str, configurations: list[Configuration],
                       default_inference: str = InferencePrecision.AUTO.value, option: str = "--reference") -> int:
    """The position in ``configurations`` of the one ``text`` names (the ``--compare`` grammar, same default
    arithmetic); :class:`UsageError` naming ``option`` when it is unreadable or not among them."""
    try:
        wanted = parse_item(text, default_inference)
    except UsageError:
        raise UsageError(f"{option}: cannot read configuration {text.strip()!r}",
                         hint=f"{option} takes one of the --compare configurations ({GRAMMAR})") from None
    for index, configuration in enumerate(configurations):
        if configuration == wanted:
            return index
    raise UsageError(f"{option} {text.strip()!r} ({wanted.label}) is not one of the configurations compared: "
                     f"{', '.join(c.label for c in configurations)}", hint=f"name one of them in {option}, or add "
                     "it to --compare")
