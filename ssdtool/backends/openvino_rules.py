"""OpenVINO's rules: which devices it takes, what inference precision to pin on each, and why.

**Devices.** Any device string the runtime accepts: a physical device (``CPU``, ``GPU``, ``GPU.1``, ``NPU``) or a
virtual one over several (``AUTO``, ``AUTO:GPU,CPU``, ``AUTO:-CPU``, ``MULTI:GPU,CPU``, ``HETERO:GPU,CPU``,
``BATCH:GPU(4)``). Each physical device named, or each a virtual device may pick from, must be present; an absent
one is :class:`BackendError` (exit 31) naming what is present (``core.available_devices``).

**Precision.** ``auto`` is each device's own default where this IR was checked at it on a device of that kind and
model (a :class:`~ssdtool.precision.RuntimeCheck` in the IR's provenance, recorded by ``ssdtool convert
--device D``), else f32; a pinned precision is asked for and read back (see :mod:`ssdtool.precision`). Under a
virtual device ``auto`` means the same on every device it may pick: each gets its own plan, pinned through
``DEVICE_PROPERTIES``. A virtual device reads no precision back, so what runs is reported as what the device it
chose was set to run; an explicit precision is refused up front on a device without that arithmetic, as a
physical device's read-back would refuse it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ssdtool.backends import import_engine
from ssdtool.backends import openvino as runtime
from ssdtool.backends.spec import EnginePlan, EngineSpec, ModelFile, OpenedEngine, run_info
from ssdtool.constants import CPU_DEVICE, DEFAULT_DEVICE, InferencePrecision, IRPrecision, PerformanceHint
from ssdtool.errors import BackendError, UsageError
from ssdtool.precision import DeviceFacts, PrecisionPlan, RuntimeCheck, UnusableCheck, read_checks

if TYPE_CHECKING:
    from ssdtool.cache import Cache

log = logging.getLogger("ssdtool.precision")

#: Devices that run a model on other devices.
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")
#: What a device name may hold (it is written into server configurations by export).
DEVICE_NAME = re.compile(r"[A-Za-z0-9_.:,()-]+")
#: ``OPTIMIZATION_CAPABILITIES`` naming native arithmetic for a precision that can be pinned.
_CAPABILITY = {InferencePrecision.BF16.value: "BF16", InferencePrecision.F16.value: "FP16"}
_PICK = f"pass --device with one of those (default {DEFAULT_DEVICE})"


def check_device_name(device: str) -> str:
    """``device`` stripped, when it can be a device name at all (export writes it for a server elsewhere, so
    only its form is checked); :class:`UsageError` otherwise."""
    name = device.strip()
    if not name or not DEVICE_NAME.fullmatch(name):
        raise UsageError(f"--device {device!r} is not an OpenVINO device name",
                         hint="pass --device CPU, GPU, GPU.1, AUTO:GPU,CPU, ...")
    return name


@dataclass(frozen=True)
class DeviceChoice:
    """A device string read: ``virtual`` (AUTO, MULTI, HETERO, BATCH; None for a physical device) and the physical
    devices it may run on."""

    device: str
    virtual: str | None
    parts: tuple[str, ...]


def _present(device: str, available: Sequence[str]) -> bool:
    """``GPU`` and ``GPU.0`` are the same device, whether the runtime lists it as ``GPU`` (one) or ``GPU.0``."""
    kind = runtime.device_type(device)
    return (device in available or (device == f"{kind}.0" and kind in available)
            or (device == kind and f"{kind}.0" in available))


def parse_device(device: str, available: Sequence[str]) -> DeviceChoice:
    """``device`` read against the devices present; :class:`BackendError` (31) naming them when one is absent."""
    name = check_device_name(device)
    head, _, listed = name.partition(":")
    virtual = head if head in VIRTUAL_DEVICES else None
    if virtual is None:
        parts: tuple[str, ...] = (name,)
    else:
        items = [re.sub(r"\(\d+\)$", "", item.strip()) for item in listed.split(",") if item.strip()]
        excluded = {item[1:] for item in items if item.startswith("-")}
        chosen = [item for item in items if not item.startswith("-")]
        parts = tuple(chosen or [d for d in available if d not in excluded and runtime.device_type(d) not in excluded])
        if not parts:
            raise BackendError(f"OpenVINO device {name!r} leaves no device to run on; found: "
                               f"{', '.join(available) or 'none'}", hint=_PICK)
    for part in parts:
        if runtime.device_type(part) in VIRTUAL_DEVICES:
            raise BackendError(f"OpenVINO device {name!r} nests {part!r}; ssdtool takes one virtual device over "
                               "physical ones", hint="pass --device AUTO:GPU,CPU, HETERO:GPU,CPU, ...")
        if not _present(part, available):
            inside = f" (in {name!r})" if virtual else ""
            raise BackendError(f"OpenVINO device {part!r}{inside} is not available; found: "
                               f"{', '.join(available) or 'none'}", hint=_PICK)
    return DeviceChoice(name, virtual, parts)


def read_device(device: str) -> DeviceChoice:
    """``device`` checked against this machine. ``CPU`` needs no listing (the CPU plugin is always there, and
    listing devices loads every plugin, ~40 ms)."""
    if device == CPU_DEVICE:
        return DeviceChoice(device, None, (device,))
    return parse_device(device, runtime.available_devices())


def convert_command(model: str, weights: str | None, device: str) -> str:
    """The command that records a runtime check of ``model``'s IR of ``weights`` on ``device``."""
    precision = f" --precision {weights}" if weights and weights != IRPrecision.FP32 else ""
    where = f" --device {device}" if device != DEFAULT_DEVICE else ""
    return f"ssdtool convert {model}{precision}{where}"


def plan(requested: str | InferencePrecision, facts: DeviceFacts | None, checks: Sequence[RuntimeCheck],
         *, model: str = "the model", unusable: Sequence[UnusableCheck] = (), command: str | None = None
         ) -> PrecisionPlan:
    """What to pin for a run of an IR whose provenance holds ``checks``, on the physical device ``facts``
    describes. ``unusable``: its records that do not hold up (treated as missing, and named in the reason);
    ``command``: the one that records a check for this device (default ``ssdtool convert MODEL``)."""
    wanted = InferencePrecision.parse(requested, "inference precision")
    if wanted is not InferencePrecision.AUTO:
        return PrecisionPlan(wanted, wanted.value, f"{wanted.value} as requested")  # type: ignore[arg-type]
    if facts is None or facts.default_precision is None:
        device = facts.device if facts else "the device"
        return PrecisionPlan(wanted, InferencePrecision.F32.value,  # type: ignore[arg-type]
                             f"{device} does not report its default inference precision; running f32, the "
                             "precision the IR was proven at")
    default = facts.default_precision
    if default == InferencePrecision.F32.value:
        return PrecisionPlan(wanted, None, f"f32, the default of {facts.device} ({facts.name})")  # type: ignore[arg-type]
    check = next((c for c in checks if c.matches(facts)), None)
    if check is None:
        rejected = next((u for u in unusable if u.matches(facts)), None)
        if rejected is None:
            found, again = f"{model}'s IR has no record of its accuracy at {default} on this device", ""
        else:
            found = (f"{model}'s IR's record of its accuracy at {default} on this device does not hold up "
                     f"({rejected.reason})")
            again = " again"
        return PrecisionPlan(
            wanted, InferencePrecision.F32.value,  # type: ignore[arg-type]
            f"{facts.device} ({facts.name}) runs {default} by default, and {found}; running f32. Run "
            f"'{command or f'ssdtool convert {model}'}' here to check and record it{again}, or pass "
            f"--inference-precision {default} to run it unchecked",
            level=logging.INFO if rejected is None else logging.WARNING)
    if not check.passed:
        return PrecisionPlan(
            wanted, InferencePrecision.F32.value,  # type: ignore[arg-type]
            f"{model}'s IR fails its accuracy check at {default}, the default of {facts.device} ({check.summary()});"
            f" running f32. Pass --inference-precision {default} to run it anyway", level=logging.WARNING,
            check=check)
    return PrecisionPlan(wanted, None,  # type: ignore[arg-type]
                         f"{default}, the default of {facts.device} ({facts.name}), checked for this IR at "
                         f"conversion: recall {check.recall:.3f} (floor {check.min_recall:.2f})", check=check)


@dataclass(frozen=True)
class DevicePlan:
    """The precision plan of every physical device a run may use: one for a physical device, one per device a
    virtual device may pick."""

    choice: DeviceChoice
    parts: tuple[tuple[str, PrecisionPlan, DeviceFacts], ...]

    @property
    def pin(self) -> str | None:
        """``INFERENCE_PRECISION_HINT`` for a physical device (None: its default); a virtual one pins per device."""
        return None if self.choice.virtual else self.parts[0][1].pin

    @property
    def device_pins(self) -> dict[str, str]:
        """A virtual device's pins, per device (``DEVICE_PROPERTIES``)."""
        if not self.choice.virtual:
            return {}
        return {part: plan.pin for part, plan, _facts in self.parts if plan.pin is not None}

    @property
    def expected(self) -> dict[str, str | None]:
        """What each device is set to run: its pin, else its default."""
        return {part: plan.pin or facts.default_precision for part, plan, facts in self.parts}

    @property
    def level(self) -> int:
        return max(plan.level for _part, plan, _facts in self.parts)

    @property
    def reason(self) -> str:
        if not self.choice.virtual:
            return self.parts[0][1].reason
        each = "; ".join(f"{part}: {plan.reason}" for part, plan, _facts in self.parts)
        return f"{self.choice.device} may run on {', '.join(p for p, _plan, _facts in self.parts)}; {each}"


def plan_devices(model: ModelFile, requested: str | InferencePrecision, device: str) -> DevicePlan:
    """What to pin for OpenVINO running ``model`` on ``device`` (every device a virtual one may pick), from the IR's
    recorded runtime checks; logs the reason."""
    from ssdtool.provenance import read_provenance

    choice = read_device(device)
    checks, unusable = read_checks(read_provenance(model.path))
    parts = []
    for part in choice.parts:
        facts = runtime.device_facts(part)
        parts.append((part, plan(requested, facts, checks, model=model.model, unusable=unusable,
                                 command=convert_command(model.model, model.precision, part)), facts))
    decided = DevicePlan(choice, tuple(parts))
    log.log(decided.level, "inference precision: %s", decided.reason)
    return decided


def _check_native(choice: DeviceChoice, wanted: InferencePrecision) -> None:
    """A virtual device reads no precision back, so a pinned one its devices lack is refused before compiling,
    as a physical device's read-back refuses it after (:func:`ssdtool.backends.openvino.confirm`)."""
    capability = _CAPABILITY.get(wanted.value)
    if choice.virtual is None or capability is None:
        return
    for part in choice.parts:
        capabilities = runtime.device_capabilities(part)
        if capabilities and capability not in capabilities:
            raise BackendError(
                f"OpenVINO cannot run inference precision {wanted.value} on {part} (in {choice.device}): the device "
                f"has no native {wanted.value} arithmetic (it offers {', '.join(sorted(capabilities))}), and OpenVINO "
                "would substitute another precision without saying so on a virtual device",
                hint=f"pass --inference-precision auto or f32, or a --device list without {part}")


class OpenVinoRules:
    """OpenVINO in the backend table: runs ssdtool's IR on any device the runtime accepts."""

    name = "openvino"
    distribution = "openvino"
    load_step = "read + compile"

    def weights(self, precision: str, image_input: bool = False) -> str:
        return f"{precision} {'image-input ' if image_input else ''}IR"
    model_form = "ir"
    one_engine = False

    def check(self, spec: EngineSpec) -> EngineSpec:
        import_engine("openvino")
        choice = read_device(spec.device)
        _check_native(choice, InferencePrecision.parse(spec.inference_precision, "inference precision"))
        return spec.replace(device=choice.device)

    def plan(self, model: ModelFile, spec: EngineSpec) -> EnginePlan:
        decided = plan_devices(model, spec.inference_precision, spec.device)
        return EnginePlan(self.name, decided.reason, decided)

    def open(self, model: ModelFile, spec: EngineSpec, plan: EnginePlan, cache: Cache | None) -> OpenedEngine:
        decided: DevicePlan = plan.settings
        compiled = cache.usable_compiled_model_dir(model.model) if cache is not None and spec.compiled_cache else None
        hint = spec.hint_or(PerformanceHint.LATENCY.value)
        # Streams are the plugin's choice for the hint (as in benchmark_app); requests only size the queue.
        engine = runtime.OpenVinoEngine(model.path, device=spec.device, cache_dir=str(compiled) if compiled else None,
                                        hint=hint.upper(), inference_precision=decided.pin,
                                        device_pins=decided.device_pins,
                                        expected_precisions=decided.expected if decided.choice.virtual else None)
        reason = plan.reason
        if decided.choice.virtual:
            chosen = ", ".join(engine.execution_devices)
            reason += (f"; {spec.device} reads no precision back: {engine.inference_precision} is what {chosen} was set"
                       " to run" if engine.inference_precision else
                       f"; {spec.device} reads no precision back, and {chosen} were set to different ones")
        return OpenedEngine(engine, run_info(model, engine, spec.replace(hint=hint), reason))

