"""Inference precision: which arithmetic OpenVINO runs an IR in, and whether that was proven for the IR.

OpenVINO's CPU plugin does not run an f32 IR in f32 everywhere. With ``EXECUTION_MODE_HINT=PERFORMANCE`` (its
default) it picks ``INFERENCE_PRECISION_HINT`` by itself: **bf16** on x86 CPUs with native bf16 (Cooper Lake, every
Xeon since Sapphire Rapids, AMD Zen 4 and 5), **f16** on ARM with fp16, f32 elsewhere. It also substitutes quietly:
asked for f16 on a CPU without native f16, it runs bf16 or f32. So ssdtool treats the precision as a property of
the *run*, chosen, read back and reported, and keeps it apart from the IR's weights (FP32/FP16/INT8, a property of
the file):

* **Explicit** (``f32``, ``bf16``, ``f16``): pinned, and read back from the compiled model. When OpenVINO ran
  something else, that is an error (:class:`BackendError`), never a silent substitution.
* **auto**: the device's default, but only where this IR has been *checked* at that precision on a device of
  that kind and model: ``convert`` (``--device D``, CPU by default) runs the IR at D's default and at f32 on the
  parity-gate images and records the figure (:class:`RuntimeCheck`, with D's kind and ``FULL_DEVICE_NAME``) in the
  IR's provenance. A passing check (at least :data:`RUNTIME_MIN_RECALL` of the f32
  detections found, same label, IoU >= 0.5) lets ``auto`` run the default. A failed one makes ``auto`` run f32
  (with a warning); a missing one (an IR converted on another CPU, or with ``--no-verify``) too (with a note
  naming the command that records it). A user never gets a worse answer than the IR was proven to give.
* The parity gate and the INT8 guard pin f32: they prove the IR, not the CPU.

This module holds what every backend shares: the records (a device's facts, a runtime check, a plan) and their
checks. Deciding what to pin is the OpenVINO backend's (:mod:`ssdtool.backends.openvino_rules`, per device, virtual
devices included); measuring a check is the converter's (:func:`ssdtool.convert.gate.runtime_check`). onnxruntime
computes in what its execution provider does (:mod:`ssdtool.backends.onnxruntime`): f32 on the CPU.
"""

from __future__ import annotations

import logging
import reprlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ssdtool.checked import is_finite_number, is_int
from ssdtool.constants import InferencePrecision
from ssdtool.errors import UsageError

#: The floor of a runtime check: the share of the IR's f32 detections that must reappear at the device's default
#: precision (same label, IoU >= 0.5). The same floor as the FP16 parity gate and the INT8 guard.
RUNTIME_MIN_RECALL = 0.90
RUNTIME_CHECK_IOU = 0.5


def parse(value: str | InferencePrecision) -> InferencePrecision:
    """``auto``, ``f32``, ``bf16`` or ``f16`` (any case) as an :class:`InferencePrecision`; UsageError otherwise."""
    try:
        return InferencePrecision.parse(value, "inference precision")  # type: ignore[return-value]
    except ValueError as exc:
        raise UsageError(str(exc), hint="pass --inference-precision auto, f32, bf16 or f16") from None


@dataclass(frozen=True)
class DeviceFacts:
    """What a device says about itself: its name (the CPU model for ``CPU``) and its default inference precision
    (None when it does not report one: virtual devices such as AUTO)."""

    device: str
    name: str
    default_precision: str | None


@dataclass(frozen=True)
class RuntimeCheck:
    """The IR at ``precision`` (a device's default) against the same IR at f32, on the parity-gate images."""

    device: str
    device_name: str
    precision: str
    passed: bool
    images: int
    reference_detections: int
    matched: int
    recall: float
    min_recall: float
    max_box_diff: float
    max_score_diff: float
    openvino_version: str
    checked: str  # UTC time, ISO 8601

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RuntimeCheck | None:
        """A check read back from provenance; None when the record is not one that holds up (see :meth:`parse`)."""
        try:
            return cls.parse(data)
        except ValueError:
            return None

    @classmethod
    def parse(cls, data: Any) -> RuntimeCheck:
        """A check read back from provenance, or ``ValueError`` saying why the record does not hold up.

        Provenance is a file anyone who can write the IR's folder can edit, so nothing is taken on trust: every
        field has its type (``"passed": "false"`` is a string, not a verdict), counts and rates are in range,
        ``recall`` is ``matched / reference_detections``, the floor is at least ssdtool's own
        (:data:`RUNTIME_MIN_RECALL`), and ``passed`` is what recall and floor say.
        """
        if not isinstance(data, Mapping):
            raise ValueError("a runtime check is a JSON object")
        missing = [key for key in _CHECK_FIELDS if key not in data]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        strings = {key: data[key] for key in ("device", "device_name", "precision")}
        strings.update({key: data.get(key, "") for key in ("openvino_version", "checked")})
        for key, value in strings.items():
            if not isinstance(value, str) or (key in ("device", "device_name", "precision") and not value) \
                    or not value.isprintable() or len(value) > _MAX_NAME:
                raise ValueError(f"{key} is {reprlib.repr(value)}, not a name")
        if strings["precision"] not in _CHECKED_PRECISIONS:
            raise ValueError(f"precision is {reprlib.repr(strings['precision'])}, not one of "
                             f"{', '.join(_CHECKED_PRECISIONS)}")
        if not isinstance(data["passed"], bool):
            raise ValueError(f"passed is {reprlib.repr(data['passed'])}, not true or false")
        images, total, matched = data["images"], data["reference_detections"], data["matched"]
        if not (is_int(images) and images >= 1 and is_int(total) and total >= 0 and is_int(matched)
                and 0 <= matched <= total):
            raise ValueError(f"images {reprlib.repr(images)}, reference_detections {reprlib.repr(total)} and "
                             f"matched {reprlib.repr(matched)} are not counts (images >= 1, 0 <= matched <= "
                             "reference_detections)")
        rates = {key: data[key] for key in ("recall", "min_recall", "max_box_diff", "max_score_diff")}
        for key, value in rates.items():
            if not is_finite_number(value) or value < 0 or (key in ("recall", "min_recall") and value > 1):
                raise ValueError(f"{key} is {reprlib.repr(value)}, not a finite number in range")
        expected = 1.0 if total == 0 else matched / total
        if abs(rates["recall"] - expected) > _RECALL_TOLERANCE:
            raise ValueError(f"recall {rates['recall']!r} is not matched / reference_detections ({matched}/{total})")
        if rates["min_recall"] < RUNTIME_MIN_RECALL:
            raise ValueError(f"its floor {rates['min_recall']!r} is below ssdtool's {RUNTIME_MIN_RECALL}")
        verdict = expected >= rates["min_recall"]  # as measure() decides, before rounding recall
        if data["passed"] != verdict:
            raise ValueError(f"it says passed: {str(data['passed']).lower()}, but recall {rates['recall']!r} is "
                             f"{'at least' if verdict else 'below'} its floor {rates['min_recall']!r}")
        return cls(device=strings["device"], device_name=strings["device_name"], precision=strings["precision"],
                   passed=data["passed"], images=images, reference_detections=total, matched=matched,
                   recall=float(rates["recall"]), min_recall=float(rates["min_recall"]),
                   max_box_diff=float(rates["max_box_diff"]), max_score_diff=float(rates["max_score_diff"]),
                   openvino_version=strings["openvino_version"], checked=strings["checked"])

    def matches(self, facts: DeviceFacts) -> bool:
        """Whether this check speaks for a run on ``facts``' device at its default precision."""
        return (self.device, self.device_name, self.precision) == (facts.device, facts.name,
                                                                   facts.default_precision)

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"{self.precision} vs f32 on {self.device} ({self.device_name}): {verdict}, {self.matched}/"
                f"{self.reference_detections} f32 detections found (recall {self.recall:.3f}, floor "
                f"{self.min_recall:.2f}) on {self.images} images, max box diff {self.max_box_diff:.2g}, max score "
                f"diff {self.max_score_diff:.2g}")


#: Fields a runtime check record must have (``openvino_version`` and ``checked`` are informational).
_CHECK_FIELDS = ("device", "device_name", "precision", "passed", "images", "reference_detections", "matched",
                 "recall", "min_recall", "max_box_diff", "max_score_diff")
#: Precisions a runtime check can be of: a device default other than f32 (f32 is what the check compares with).
_CHECKED_PRECISIONS = (InferencePrecision.BF16.value, InferencePrecision.F16.value)
#: Longest device name, version or time string believed (they are printed).
_MAX_NAME = 200
#: :func:`measure` rounds recall to six decimals.
_RECALL_TOLERANCE = 1e-6


PROVENANCE_KEY = "runtime_checks"


@dataclass(frozen=True)
class UnusableCheck:
    """A runtime check record that does not hold up (:meth:`RuntimeCheck.parse`): which device and precision it
    claims to speak for (as recorded, possibly not even strings) and why it is not believed."""

    device: Any
    device_name: Any
    precision: Any
    reason: str

    def matches(self, facts: DeviceFacts) -> bool:
        return (self.device, self.device_name, self.precision) == (facts.device, facts.name, facts.default_precision)

    def summary(self) -> str:
        claimed = [value if isinstance(value, str) and value.isprintable() and len(value) <= _MAX_NAME
                   else reprlib.repr(value) for value in (self.precision, self.device, self.device_name)]
        return (f"{claimed[0]} vs f32 on {claimed[1]} ({claimed[2]}): not believed ({self.reason}); auto treats it "
                "as missing")


def read_checks(provenance: Mapping[str, Any] | None) -> tuple[list[RuntimeCheck], list[UnusableCheck]]:
    """The runtime checks an IR's provenance holds (none for IRs made before they existed), and the records that
    do not hold up, with the reason."""
    raw = (provenance or {}).get(PROVENANCE_KEY)
    if not isinstance(raw, list):
        return [], []
    checks: list[RuntimeCheck] = []
    unusable: list[UnusableCheck] = []
    for item in raw:
        try:
            checks.append(RuntimeCheck.parse(item))
        except ValueError as exc:
            fields = item if isinstance(item, Mapping) else {}
            unusable.append(UnusableCheck(fields.get("device"), fields.get("device_name"), fields.get("precision"),
                                          str(exc)))
    return checks, unusable


def recorded_checks(provenance: Mapping[str, Any] | None) -> list[RuntimeCheck]:
    """The runtime checks an IR's provenance holds that hold up (:meth:`RuntimeCheck.parse`)."""
    return read_checks(provenance)[0]


def with_check(provenance: Mapping[str, Any], check: RuntimeCheck) -> list[dict[str, Any]]:
    """The provenance's check list with ``check`` replacing any earlier one for the same device and precision."""
    kept = [c.to_dict() for c in recorded_checks(provenance)
            if (c.device, c.device_name, c.precision) != (check.device, check.device_name, check.precision)]
    return [*kept, check.to_dict()]


@dataclass(frozen=True)
class PrecisionPlan:
    """What to ask OpenVINO for, and why. ``pin`` is the ``INFERENCE_PRECISION_HINT`` to set (None: the device's
    own default, for ``auto`` where it was checked); ``reason`` is for people, logged at ``level``."""

    requested: InferencePrecision
    pin: str | None
    reason: str
    level: int = logging.DEBUG
    check: RuntimeCheck | None = None

    @property
    def expected(self) -> str | None:
        """The precision that should run (None: whatever the device picks)."""
        return self.pin
