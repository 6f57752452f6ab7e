"""ONNX -> OpenVINO IR, driven by the registry, proven against onnxruntime before it is installed.

The IR takes raw 0-255 pixels in the registry's target channel order (BGR for SSD-ResNet34) with channel
reversal, mean and scale inside the graph (``openvino.preprocess.PrePostProcessor``), and returns outputs of a
static size (``convert.output_count``): normalized xyxy boxes clipped to [0, 1], labels and scores, padded past
the last detection with score 0, label 0 and a zero box. Tensor names survive the rewrite.

Every conversion is written to a temporary folder beside its destination, reloaded and checked, passed through
the parity gate, and only then renamed into place, so a failed or interrupted conversion never leaves a half IR
where a good one is expected.

INT8 (``precision="INT8"``) quantizes that same FP32 graph with NNCF (:mod:`ssdtool.quantize`) and replaces the
parity gate by the accuracy guard: the INT8 IR against the FP32 IR on held-out images; it installs nothing when
the guard fails unless ``accept_accuracy_drop``.

The gate and the guard run OpenVINO at f32 (pinned): they prove the IR, whatever the CPU would pick by itself.
Where the CPU's default inference precision is not f32 (bf16 on CPUs with native bf16), a *runtime check* then
measures the IR at that default against the IR at f32 and records the figure in provenance
(:mod:`ssdtool.precision`); ``--inference-precision auto`` runs the default only where that check passed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ssdtool import __version__, fsutil, precision
from ssdtool.backends import import_engine
from ssdtool.cache import Cache
from ssdtool.constants import Int8Recipe
from ssdtool.errors import (
    AccuracyError,
    CacheError,
    ConversionError,
    LockTimeoutError,
    ModelFormatError,
    OfflineError,
    ParityError,
    UsageError,
)
from ssdtool.imaging import generated_images, normalized_input, raw_input, resize_rgb
from ssdtool.matching import MatchReport, RawDetections, match_detections
from ssdtool.provenance import (
    RT_INFO_ROOT,
    WEIGHTS_KEY,
    encode,
    ir_problem,
    read_provenance,
    rewrite_provenance,
    weights_record,
)
from ssdtool.quantize import (
    DEFAULT_CALIBRATION_SIZE,
    GUARD_IMAGES,
    AccuracyReport,
    CalibrationSet,
    ProgressCallback,
    accuracy_guard,
    default_recipe,
    import_nncf,
    nncf_version,
    quantization_settings,
    quantize_model,
    resolve_calibration,
)
from ssdtool.registry import ModelEntry

log = logging.getLogger("ssdtool.convert")

PRECISIONS = ("FP32", "FP16", "INT8")
INPUT_TYPES = ("f32", "u8")
INPUT_LAYOUTS = ("NCHW", "NHWC")
# Bump when the graph rewrite changes, so existing IRs are rebuilt instead of reported as up to date.
RECIPE_VERSION = 1
PARITY_IMAGES = 3
PARITY_IOU = 0.5
# FP32 must reproduce onnxruntime; FP16 weights shift scores a little, so only agreement is asked of it (and of
# INT8 when 'ssdtool check' compares it with onnxruntime; at conversion INT8 meets the accuracy guard instead).
FP32_TOLERANCE = 1e-4
FP16_MIN_RECALL = 0.90
LOCK_TIMEOUT_SECONDS = 600.0


# INT8 parameters a request may leave open: without a calibration choice any calibration will do, without a
# recipe any recipe (see same_parameters).
OPEN_INT8_KEYS = ("calibration", "calibration_count", "quantization")


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert.

    INT8 only: ``calibration`` is a folder of images, ``"generated"``, or None (generated images for a synthetic
    model, an error for others). With None and the default ``calibration_size``, an installed INT8 IR is up to
    date whatever its calibration, so ``Detector(precision="INT8")`` uses what ``ssdtool convert`` made.
    ``calibration_size`` images calibrate; ``guard_images`` held-out images feed the accuracy guard;
    ``accept_accuracy_drop`` installs an INT8 IR that fails the guard. ``int8_recipe``: "portable" or "vnni"
    (:class:`ssdtool.constants.Int8Recipe`); None builds portable and accepts any installed recipe.
    ``verify=False`` skips the parity gate (FP32/FP16) or the guard (INT8).
    """

    precision: str = "FP32"
    input_type: str = "f32"
    input_layout: str = "NCHW"
    verify: bool = True
    force: bool = False
    output_dir: Path | None = None
    parity_images: int = PARITY_IMAGES
    calibration: Path | str | None = None
    calibration_size: int = DEFAULT_CALIBRATION_SIZE
    accept_accuracy_drop: bool = False
    guard_images: int = GUARD_IMAGES
    int8_recipe: str | None = None

    @property
    def variant(self) -> str:
        """Folder suffix for non-default inputs, so an f32 NCHW IR and a u8 NHWC IR can live side by side."""
        if (self.input_type, self.input_layout) == ("f32", "NCHW"):
            return ""
        return f"{self.input_type}-{self.input_layout.lower()}"


@dataclass(frozen=True)
class ParityReport:
    precision: str
    passed: bool
    images: int
    reference_detections: int
    ir_detections: int
    matched: int
    recall: float
    max_box_diff: float
    max_score_diff: float
    criteria: str
    per_image: tuple[dict[str, Any], ...] = field(default=())
    inference_precision: str | None = "f32"  # what OpenVINO ran the IR in, read back

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_image"] = list(self.per_image)
        return data


@dataclass(frozen=True)
class ConversionResult:
    model: str
    xml: Path
    bin: Path
    precision: str
    input_type: str
    input_layout: str
    input_shape: tuple[int, ...]
    outputs: dict[str, tuple[int, ...]]
    up_to_date: bool
    parity: ParityReport | None
    seconds: float
    provenance: dict[str, Any]
    accuracy: AccuracyReport | None = None  # INT8: the accuracy guard (None when skipped or up to date)
    calibration: dict[str, Any] | None = None  # INT8: the calibration set, as recorded in provenance
    #: This run's check of the IR at the CPU's default inference precision (None: not run, e.g. the default is f32)
    runtime_check: precision.RuntimeCheck | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "xml": str(self.xml), "bin": str(self.bin), "precision": self.precision,
            "input_type": self.input_type, "input_layout": self.input_layout, "input_shape": list(self.input_shape),
            "outputs": {k: list(v) for k, v in self.outputs.items()}, "up_to_date": self.up_to_date,
            "parity": self.parity.to_dict() if self.parity else None, "seconds": round(self.seconds, 3),
            "provenance": self.provenance,
            "accuracy": self.accuracy.to_dict() if self.accuracy else None, "calibration": self.calibration,
            "runtime_check": self.runtime_check.to_dict() if self.runtime_check else None,
        }


def check_options(options: ConvertOptions) -> None:
    if options.precision not in PRECISIONS:
        raise UsageError(f"precision {options.precision!r} is not supported; expected one of {', '.join(PRECISIONS)}")
    if options.input_type not in INPUT_TYPES:
        raise UsageError(f"input type {options.input_type!r}: expected one of {', '.join(INPUT_TYPES)}")
    if options.input_layout not in INPUT_LAYOUTS:
        raise UsageError(f"input layout {options.input_layout!r}: expected one of {', '.join(INPUT_LAYOUTS)}")
    if options.precision != "INT8" and (options.calibration is not None or options.accept_accuracy_drop
                                        or options.int8_recipe is not None):
        raise UsageError(f"calibration, the INT8 recipe and the accuracy guard apply to INT8 only, got precision "
                         f"{options.precision}",
                         hint="add --precision INT8, or drop --calibration / --int8-recipe / --accept-accuracy-drop")
    if options.int8_recipe is not None:
        try:
            Int8Recipe.parse(options.int8_recipe, "INT8 recipe")
        except ValueError as exc:
            raise UsageError(str(exc), hint="pass --int8-recipe portable or vnni") from None
    if options.calibration_size < 1 or options.guard_images < 1:
        raise UsageError(f"calibration size and guard images must be at least 1, got {options.calibration_size} "
                         f"and {options.guard_images}")


def ir_path(entry: ModelEntry, cache: Cache, options: ConvertOptions) -> Path:
    """Where the IR ``.xml`` for these options lives."""
    if options.output_dir is not None:
        return Path(options.output_dir) / f"{entry.name}.xml"
    return cache.ir_xml(entry, options.precision, options.variant)


def conversion_parameters(entry: ModelEntry, options: ConvertOptions,
                          calibration: CalibrationSet | None = None) -> dict[str, Any]:
    """Everything that determines the IR's bytes besides the source file: the idempotency key.

    INT8 adds the calibration identity and count and the quantization settings (``calibration`` is needed then).
    """
    parameters = {
        "recipe": RECIPE_VERSION,
        "precision": options.precision,
        "input_type": options.input_type,
        "input_layout": options.input_layout,
        "input_name": entry.input.name,
        "input_shape": list(entry.input.shape),
        "source_color_order": entry.input.color_order,
        "color_order": entry.convert.color_order,
        "mean": list(entry.input.mean),
        "scale": list(entry.input.scale),
        "output_count": entry.convert.output_count,
        "outputs": [entry.outputs.boxes, entry.outputs.labels, entry.outputs.scores],
        "box_units": entry.outputs.box_units,
        "label_offset": entry.outputs.label_offset,
    }
    if options.precision == "INT8":
        if options.int8_recipe is not None:  # None: only to compare with an installed IR (see same_parameters)
            parameters["quantization"] = quantization_settings(options.int8_recipe)
        if calibration is not None:  # None: only to compare with an installed IR (see same_parameters)
            parameters.update({"calibration": calibration.identity, "calibration_count": calibration.count})
    return parameters


def same_parameters(existing: Any, wanted: dict[str, Any]) -> bool:
    """Whether an installed IR's ``parameters`` (from its provenance) match ``wanted`` (:func:`conversion_parameters`).

    INT8 ``wanted`` without calibration keys (no calibration chosen) accepts any calibration, and without a
    ``quantization`` key (no recipe chosen) any recipe: callers that only ask for "the INT8 IR"
    (``Detector(precision="INT8")``) should compare with this, not with ``==``.
    """
    if not isinstance(existing, dict):
        return False
    if wanted.get("precision") == "INT8":
        open_keys = [key for key in OPEN_INT8_KEYS if key not in wanted]
        return {k: v for k, v in existing.items() if k not in open_keys} == wanted
    return existing == wanted


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _source_path(entry: ModelEntry, cache: Cache, source: Path | None, offline: bool,
                 progress: Callable[[dict[str, Any]], None] | None) -> Path:
    if source is not None:
        if not Path(source).is_file():
            raise ModelFormatError(f"source model {source} does not exist", hint="check the path")
        return Path(source)
    from ssdtool.download import ensure_downloaded

    try:
        return ensure_downloaded(entry, cache, offline=offline, progress=progress)
    except OfflineError as exc:
        raise OfflineError(exc.message, hint=f"run 'ssdtool download {entry.name}' on a machine with network "
                                             f"access (or copy the cache), then 'ssdtool convert {entry.name}'"
                           ) from exc


def _tensor_names(ports: Any) -> list[str]:
    return sorted(name for port in ports for name in port.get_names())


def _find_port(ports: Any, name: str) -> Any | None:
    return next((port for port in ports if name in port.get_names()), None)


def _rewrite_outputs(ov: Any, model: Any, entry: ModelEntry) -> Any:
    """Replace the dynamic N outputs with static, padded, clipped, normalized ones under the same names."""
    ops = import_engine("openvino.opset13")
    slice_op = import_engine("openvino.opset8").slice
    count = entry.convert.output_count
    spec = entry.outputs
    # model.outputs are the Result nodes' ports; the rewrite must start from what feeds each Result.
    produced = [(result.output(0), result.input_value(0)) for result in model.get_results()]
    ports = {key: next((source for named, source in produced if name in named.get_names()), None)
             for key, name in (("boxes", spec.boxes), ("labels", spec.labels), ("scores", spec.scores))}
    missing = [getattr(spec, key) for key, port in ports.items() if port is None]
    if missing:
        raise ModelFormatError(
            f"the model has no output {', '.join(missing)}; it has {', '.join(_tensor_names(model.outputs))}",
            hint=f"the file does not match the registry entry {entry.name!r}: check models.yml 'outputs'")

    def static(port: Any, width: int | None, fill_type: Any, name: str) -> Any:
        rows = port
        zeros_shape = [1, count] + ([width] if width else [])
        zeros = ops.constant(np.zeros(zeros_shape, dtype=fill_type.to_dtype()))
        joined = ops.concat([rows, zeros], axis=1)
        head = slice_op(joined, np.array([0]), np.array([count]), np.array([1]), np.array([1]))
        shaped = ops.reshape(head, np.array(zeros_shape, dtype=np.int64), special_zero=False)
        port.get_tensor().set_names(set())
        shaped.output(0).get_tensor().set_names({name})
        shaped.set_friendly_name(name)
        return shaped

    boxes = ports["boxes"]
    if boxes.get_element_type() != ov.Type.f32:
        boxes = ops.convert(boxes, ov.Type.f32).output(0)
    if spec.box_units == "pixels":
        width, height = entry.input.resize
        boxes = ops.divide(boxes, ops.constant(np.array([width, height, width, height], dtype=np.float32))
                           ).output(0)
    boxes = ops.clamp(boxes, 0.0, 1.0).output(0)
    labels = ports["labels"]
    if spec.label_offset:
        labels = ops.add(labels, ops.constant(np.array(spec.label_offset, dtype=labels.get_element_type().to_dtype()))
                         ).output(0)
    scores = ports["scores"]
    # Free the names first: a tensor name may belong to one tensor only.
    for port in ports.values():
        port.get_tensor().set_names(set())
    new_outputs = [
        static(boxes, 4, ov.Type.f32, spec.boxes),
        static(labels, None, ports["labels"].get_element_type(), spec.labels),
        static(scores, None, ports["scores"].get_element_type(), spec.scores),
    ]
    results = [ops.result(node) for node in new_outputs]
    for result, name in zip(results, (spec.boxes, spec.labels, spec.scores), strict=True):
        result.set_friendly_name(name)
    return ov.Model(results, model.get_parameters(), entry.name)


def _apply_input_preprocessing(ov: Any, model: Any, entry: ModelEntry, options: ConvertOptions) -> Any:
    from openvino.preprocess import ColorFormat, PrePostProcessor

    spec = entry.input
    port = _find_port(model.inputs, spec.name)
    if port is None:
        raise ModelFormatError(
            f"the model has no input {spec.name!r}; it has {', '.join(_tensor_names(model.inputs))}",
            hint=f"the file does not match the registry entry {entry.name!r}: check models.yml 'input.name'")
    if list(port.get_partial_shape().to_shape() if port.get_partial_shape().is_static else []) != list(spec.shape):
        raise ModelFormatError(
            f"input {spec.name!r} has shape {port.get_partial_shape()}, the registry expects {list(spec.shape)}",
            hint="check models.yml 'input.shape'")
    colors = {"RGB": ColorFormat.RGB, "BGR": ColorFormat.BGR}
    ppp = PrePostProcessor(model)
    step = ppp.input(spec.name)
    step.tensor().set_element_type(ov.Type.u8 if options.input_type == "u8" else ov.Type.f32) \
        .set_layout(ov.Layout(options.input_layout)).set_color_format(colors[entry.convert.color_order])
    step.model().set_layout(ov.Layout(spec.layout))
    pre = step.preprocess()
    if options.input_type == "u8":
        pre.convert_element_type(ov.Type.f32)
    if entry.convert.color_order != spec.color_order:
        pre.convert_color(colors[spec.color_order])
    # mean and scale are in the source model's channel order, so they apply after the channel reversal.
    pre.mean(list(spec.mean)).scale(list(spec.scale))
    return ppp.build()


def build_ir_model(source: Path, entry: ModelEntry, options: ConvertOptions) -> Any:
    """Read the source ONNX and return the rewritten ``openvino.Model`` (not saved)."""
    ov = import_engine("openvino")
    try:
        model = ov.convert_model(str(source))
    except Exception as exc:
        raise ModelFormatError(
            f"OpenVINO cannot read {source} as ONNX: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}",
            hint=f"the file is not a valid (or is a truncated) ONNX model; run 'ssdtool verify {entry.name} --repair'",
        ) from exc
    model = _rewrite_outputs(ov, model, entry)
    return _apply_input_preprocessing(ov, model, entry, options)


def _check_saved(ov: Any, xml: Path, entry: ModelEntry, options: ConvertOptions) -> Any:
    """Reload the written IR and confirm names, shapes and element types survived serialization."""
    model = ov.Core().read_model(str(xml))
    count = entry.convert.output_count
    width, height = entry.input.resize
    expected_input = [1, 3, height, width] if options.input_layout == "NCHW" else [1, height, width, 3]
    problems = []
    port = _find_port(model.inputs, entry.input.name)
    if port is None:
        problems.append(f"input {entry.input.name!r} missing (found {_tensor_names(model.inputs)})")
    else:
        if list(port.get_shape()) != expected_input:
            problems.append(f"input shape {list(port.get_shape())}, expected {expected_input}")
        wanted_type = "u8" if options.input_type == "u8" else "f32"
        if port.get_element_type().get_type_name() != wanted_type:
            problems.append(f"input type {port.get_element_type().get_type_name()}, expected {wanted_type}")
    for name, shape in ((entry.outputs.boxes, [1, count, 4]), (entry.outputs.labels, [1, count]),
                        (entry.outputs.scores, [1, count])):
        out = _find_port(model.outputs, name)
        if out is None:
            problems.append(f"output {name!r} missing (found {_tensor_names(model.outputs)})")
        elif not out.get_partial_shape().is_static or list(out.get_shape()) != shape:
            problems.append(f"output {name!r} shape {out.get_partial_shape()}, expected {shape}")
    if problems:
        raise ConversionError(f"the saved IR {xml} is not what was built: {'; '.join(problems)}",
                              hint="report this with 'ssdtool --version'")
    return model


PARITY_SEED = 7


def _parity_images(options: ConvertOptions) -> list[np.ndarray]:
    """The gate's generated images (RGB); the runtime check uses the same ones."""
    return generated_images(options.parity_images, seed=PARITY_SEED, size=(640, 480))


def parity_check(source: Path, xml: Path, entry: ModelEntry, options: ConvertOptions,
                 device: str = "CPU", inference_precision: str | None = "f32") -> ParityReport:
    """Run the source ONNX (onnxruntime, host normalization) and the IR (OpenVINO, raw pixels) on generated images.

    The IR runs at ``inference_precision`` (pinned; None: the device's default; the gate pins f32, so it proves
    the IR rather than the CPU's arithmetic). An FP32 IR at f32 passes when every onnxruntime detection is found
    in the IR output and vice versa, boxes and scores within 1e-4. Otherwise (FP16 or INT8 weights, or a lower
    inference precision) at least 90% of onnxruntime detections must be found (label match, IoU >= 0.5).
    """
    from ssdtool.backends.onnxruntime import OnnxRuntimeEngine
    from ssdtool.backends.openvino import OpenVinoEngine

    reference_engine = OnnxRuntimeEngine(source)
    ir_engine = OpenVinoEngine(xml, device=device, inference_precision=inference_precision)
    ran = ir_engine.inference_precision
    spec = entry.input
    reports: list[tuple[MatchReport, MatchReport]] = []
    for rgb in _parity_images(options):
        resized = resize_rgb(rgb, spec)
        ref_out = reference_engine.infer(normalized_input(resized, spec))
        ir_out = ir_engine.infer(raw_input(resized, entry.convert.color_order, options.input_layout,
                                           options.input_type))
        reference = _raw(ref_out, entry, normalize_boxes=True)
        converted = _raw(ir_out, entry, normalize_boxes=False)
        reports.append((match_detections(reference, converted, PARITY_IOU),
                        match_detections(converted, reference, PARITY_IOU)))
    forward = [f for f, _ in reports]
    ref_total = sum(r.reference_count for r in forward)
    matched = sum(r.matched for r in forward)
    ir_total = sum(r.candidate_count for r in forward)
    box_diff = max((r.max_box_diff for r in forward), default=0.0)
    score_diff = max((r.max_score_diff for r in forward), default=0.0)
    recall = 1.0 if ref_total == 0 else matched / ref_total
    at = f" at inference precision {ran or 'unknown'}"
    if options.precision == "FP32" and ran == "f32":
        passed = all(f.matched == f.reference_count and b.matched == b.reference_count for f, b in reports) \
            and box_diff <= FP32_TOLERANCE and score_diff <= FP32_TOLERANCE
        criteria = (f"every detection matched both ways (same label, IoU >= {PARITY_IOU}), boxes and scores within "
                    f"{FP32_TOLERANCE:g}{at}")
    else:
        passed = recall >= FP16_MIN_RECALL
        criteria = (f"at least {FP16_MIN_RECALL:.0%} of onnxruntime detections matched (same label, IoU >= "
                    f"{PARITY_IOU}){at}")
    return ParityReport(precision=options.precision, passed=passed, images=len(reports),
                        reference_detections=ref_total, ir_detections=ir_total, matched=matched,
                        recall=recall, max_box_diff=box_diff, max_score_diff=score_diff, criteria=criteria,
                        per_image=tuple(f.to_dict() for f in forward), inference_precision=ran)


def runtime_check(xml: Path, entry: ModelEntry, options: ConvertOptions, device: str = "CPU"
                  ) -> precision.RuntimeCheck | None:
    """The IR at ``device``'s default inference precision against the IR at f32, on the gate's images.

    None when the default is f32 (nothing to check) or the device reports none. Logs the outcome; a failed check
    does not stop the conversion (the IR is proven at f32), it makes ``--inference-precision auto`` run f32.
    """
    from ssdtool.backends.openvino import device_facts

    facts = device_facts(device)
    if facts.default_precision in (None, "f32"):
        return None
    log.info("runtime check: %s (the default of %s, %s) vs f32 on %d generated images ...",
             facts.default_precision, device, facts.name, options.parity_images)
    tensors = [raw_input(resize_rgb(rgb, entry.input), entry.convert.color_order, options.input_layout,
                         options.input_type) for rgb in _parity_images(options)]
    outputs = (entry.outputs.boxes, entry.outputs.labels, entry.outputs.scores)
    check = precision.measure(xml, tensors, outputs, facts)
    if check.passed:
        log.info("runtime check %s", check.summary())
    else:
        log.warning("runtime check %s; '--inference-precision auto' will run f32 for this IR on this device",
                    check.summary())
    return check


def _raw(outputs: dict[str, np.ndarray], entry: ModelEntry, normalize_boxes: bool) -> RawDetections:
    """Source-model or IR outputs as normalized detections with label offsets applied."""
    spec = entry.outputs
    boxes = np.asarray(outputs[spec.boxes], dtype=np.float32).reshape(-1, 4)
    if normalize_boxes:
        if spec.box_units == "pixels":
            width, height = entry.input.resize
            boxes = boxes / np.array([width, height, width, height], dtype=np.float32)
        boxes = np.clip(boxes, 0.0, 1.0)
    labels = np.asarray(outputs[spec.labels]).reshape(-1) + (spec.label_offset if normalize_boxes else 0)
    return RawDetections.from_outputs(boxes, labels, outputs[spec.scores])


def _provenance(entry: ModelEntry, source: Path, source_sha256: str, options: ConvertOptions,
                parity: ParityReport | None, calibration: CalibrationSet | None = None,
                accuracy: AccuracyReport | None = None,
                check: precision.RuntimeCheck | None = None, recipe_reason: str | None = None) -> dict[str, Any]:
    ov = import_engine("openvino")
    label_path = entry.label_path()
    record: dict[str, Any] = {
        "model": entry.name,
        "source_file": source.name,
        "source_sha256": source_sha256,
        "ssdtool_version": __version__,
        "openvino_version": ov.get_version(),
        "parameters": conversion_parameters(entry, options, calibration),
        "labels": entry.labels,
        "labels_sha256": sha256_of(label_path),
        "parity": "skipped (--no-verify)" if parity is None else {
            "passed": parity.passed, "images": parity.images, "recall": parity.recall,
            "max_box_diff": parity.max_box_diff, "max_score_diff": parity.max_score_diff,
            "inference_precision": parity.inference_precision},
        precision.PROVENANCE_KEY: [check.to_dict()] if check is not None else [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if options.precision == "INT8":
        record["parity"] = "not run for INT8: accuracy_guard compares it with the FP32 IR"
        record["int8_recipe"] = {"recipe": options.int8_recipe, "reason": recipe_reason}
        record["calibration"] = calibration.to_dict() if calibration is not None else None
        record["nncf_version"] = nncf_version()
        record["accuracy_guard"] = accuracy.summary() if accuracy is not None else "skipped (--no-verify)"
    return record


def _install(temporary: Path, destination: Path) -> None:
    """Swap the verified temporary folder into place; the old IR (if any) is removed only afterwards.

    Whatever is at ``destination`` (an IR folder, or a link or file planted there) is renamed away, never
    written through.
    """
    old = None
    if os.path.lexists(destination):
        old = destination.with_name(_temporary_prefix(destination.name, "old") + "0")
        os.replace(destination, old)
    os.replace(temporary, destination)
    if old is not None:
        with contextlib.suppress(OSError):
            fsutil.remove_tree(old)


# Temporary and replaced IR folders beside the target: ``.tmp-<target>@<host>.<pid>.<random>`` (and ``.old-``).
# Every converter into a target holds its lock while such a folder exists, so under the lock they are all left by
# a process that died (a SIGKILL, a power cut), except one of a live process on this host (kept, to be safe).
_LEFTOVER = re.compile(r"\.(tmp|old)-(?P<target>.+)@(?P<host>[^@/]*)\.(?P<pid>\d+)\.[0-9a-f]+")
# What ssdtool 0.x left: ``.tmp-<target>-<mkdtemp suffix>``, ``.tmp-<target>-fp32-<suffix>``, ``.old-<target>-<pid>``.
_OLD_LEFTOVER = r"\.tmp-{target}-(fp32-)?[a-z0-9_]{{8}}|\.old-{target}-\d+"


def _temporary_prefix(target: str, kind: str = "tmp") -> str:
    return f".{kind}-{target}@{socket.gethostname()}.{os.getpid()}."


def _remove_leftovers(parent: Path, target: str) -> None:
    """Remove the temporary and replaced folders of ``target`` that a dead conversion left in ``parent``."""
    old_format = re.compile(_OLD_LEFTOVER.format(target=re.escape(target)))
    host = socket.gethostname()
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        match = _LEFTOVER.fullmatch(name)
        if match is not None:
            if match["target"] != target or (match["host"] == host and _process_alive(int(match["pid"]))):
                continue
        elif not old_format.fullmatch(name):
            continue
        log.info("removing %s, left by a conversion that did not finish", parent / name)
        with contextlib.suppress(OSError):
            fsutil.remove_tree(parent / name)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, under another user
    return True


def _write_failure(folder: Path, exc: BaseException) -> CacheError:
    """A failure to write IR files (OpenVINO says ``basic_ios::clear`` for a full disk) as a CacheError."""
    try:
        free = f"; {shutil.disk_usage(folder).free} bytes free there"
    except OSError:
        free = ""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CacheError(f"cannot write the IR into {folder}: {text}{free}; nothing was installed",
                      hint="free some space there (or choose another cache with --cache-dir) and run the command "
                           "again")


def _save_model(ov: Any, model: Any, xml: Path, compress_to_fp16: bool) -> None:
    try:
        ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    except Exception as exc:  # OpenVINO reports I/O failures as RuntimeError
        raise _write_failure(xml.parent, exc) from exc


def _prepare_target(entry: ModelEntry, cache: Cache, options: ConvertOptions, xml: Path) -> None:
    """Make the folders a conversion writes into: real folders in the cache, or the user's --output-dir."""
    if options.output_dir is None:
        cache.make_folder(xml.parent.parent)
        return
    try:
        xml.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot use --output-dir {xml.parent}: {exc.strerror or exc}",
                         hint="pass a folder you can write (it is created when missing)") from None


def _current_ir(xml: Path, source_sha256: str, wanted: dict[str, Any], options: ConvertOptions
                ) -> dict[str, Any] | None:
    """The provenance of the IR at ``xml`` when it is up to date and intact: same source checksum and parameters,
    and weights of the recorded size and sha256. None otherwise (then it is rebuilt)."""
    if options.force or not xml.is_file():
        return None
    existing = read_provenance(xml)
    if not existing or existing.get("source_sha256") != source_sha256 \
            or not same_parameters(existing.get("parameters"), wanted):
        return None
    if problem := ir_problem(xml, existing, hash_weights=True):
        log.info("rebuilding %s: %s", xml, problem)
        return None
    return existing


def _result(entry: ModelEntry, xml: Path, options: ConvertOptions, provenance: dict[str, Any],
            up_to_date: bool, parity: ParityReport | None, started: float,
            accuracy: AccuracyReport | None = None, runtime: precision.RuntimeCheck | None = None
            ) -> ConversionResult:
    count = entry.convert.output_count
    width, height = entry.input.resize
    shape = (1, 3, height, width) if options.input_layout == "NCHW" else (1, height, width, 3)
    return ConversionResult(
        model=entry.name, xml=xml, bin=xml.with_suffix(".bin"), precision=options.precision,
        input_type=options.input_type, input_layout=options.input_layout, input_shape=shape,
        outputs={entry.outputs.boxes: (1, count, 4), entry.outputs.labels: (1, count),
                 entry.outputs.scores: (1, count)},
        up_to_date=up_to_date, parity=parity, seconds=time.perf_counter() - started, provenance=provenance,
        accuracy=accuracy, calibration=provenance.get("calibration") if options.precision == "INT8" else None,
        runtime_check=runtime)


def _record_missing_runtime_check(xml: Path, entry: ModelEntry, options: ConvertOptions,
                                  provenance: dict[str, Any]) -> precision.RuntimeCheck | None:
    """On the up-to-date path: check and record the IR at this CPU's default precision if no record speaks for it.

    An IR converted on another CPU class (or before runtime checks existed) gets its check on the first
    ``ssdtool convert`` here, so ``--inference-precision auto`` can then use the faster default. Nothing is measured
    when a record exists or the default is f32; nothing is recorded when the IR's folder cannot be written.
    """
    from ssdtool.backends.openvino import device_facts

    facts = device_facts("CPU")
    if facts.default_precision in (None, "f32") or any(
            c.matches(facts) for c in precision.recorded_checks(provenance)):
        return None
    if not os.access(xml, os.W_OK) or not os.access(xml.parent, os.W_OK):
        log.info("%s has no runtime check for %s on this CPU, and its folder is read-only: not recorded", xml,
                 facts.default_precision)
        return None
    check = runtime_check(xml, entry, options)
    if check is not None:
        _rewrite_provenance(xml, {precision.PROVENANCE_KEY: precision.with_check(provenance, check)})
    return check


def convert(entry: ModelEntry, cache: Cache, options: ConvertOptions | None = None, *, source: Path | None = None,
            offline: bool = False, progress: Callable[[Any], None] | None = None,
            quantize_progress: ProgressCallback | None = None) -> ConversionResult:
    """Convert ``entry``'s ONNX file to an OpenVINO IR and install it; see the module docstring.

    ``progress`` receives download events; ``quantize_progress`` INT8 calibration and guard progress.
    """
    options = options or ConvertOptions(precision=entry.convert.precision)
    check_options(options)
    started = time.perf_counter()
    xml = ir_path(entry, cache, options)
    calibration: CalibrationSet | None = None
    if options.precision == "INT8":
        # Without a calibration choice (no folder, default size), any installed INT8 IR will do. Otherwise, and
        # when none is installed, resolve it now: this fails before a download when INT8 cannot be built (no
        # calibration images for a real model, no NNCF).
        chosen = options.calibration is not None or options.calibration_size != DEFAULT_CALIBRATION_SIZE
        if chosen or not xml.is_file():
            calibration = resolve_calibration(entry, options.calibration, options.calibration_size,
                                              options.guard_images)
        if not xml.is_file():
            import_nncf()
    source_path = _source_path(entry, cache, source, offline, progress)
    source_sha256 = (entry.primary_file.sha256 if source is None and entry.primary_file.sha256
                     else sha256_of(source_path))
    wanted = conversion_parameters(entry, options, calibration)

    def up_to_date(existing: dict[str, Any]) -> ConversionResult:
        log.info("%s is up to date (same source checksum and parameters); pass --force to rebuild", xml)
        check = _record_missing_runtime_check(xml, entry, options, existing) if options.verify else None
        return _result(entry, xml, options, read_provenance(xml) or existing if check else existing, True,
                       None, started, runtime=check)

    # An IR only ever appears by renaming a complete folder into place, so reading one needs no lock (and works
    # on a read-only cache).
    if (existing := _current_ir(xml, source_sha256, wanted, options)) is not None:
        return up_to_date(existing)

    from filelock import FileLock, Timeout

    _prepare_target(entry, cache, options, xml)
    target_key = hashlib.sha256(str(xml.parent.resolve()).encode()).hexdigest()[:16]
    lock_path = cache.metadata_dir(entry) / f"convert-{target_key}.lock"
    try:
        cache.make_folder(lock_path.parent)
        lock = FileLock(str(fsutil.safe_lock_path(lock_path)))
        lock.acquire(timeout=LOCK_TIMEOUT_SECONDS)
    except Timeout:
        raise LockTimeoutError(f"another ssdtool process has been converting into {xml.parent} for over "
                               f"{LOCK_TIMEOUT_SECONDS:.0f} s (lock file {lock_path})",
                               hint="wait for it to finish, or stop it and run the command again") from None
    except OSError as exc:
        raise CacheError(f"cannot take the conversion lock {lock_path}: {exc}",
                         hint="pass a writable --cache-dir or set SSDTOOL_HOME") from exc
    try:
        _remove_leftovers(xml.parent.parent, xml.parent.name)
        if (existing := _current_ir(xml, source_sha256, wanted, options)) is not None:
            return up_to_date(existing)  # another process converted it while this one waited for the lock
        recipe_reason: str | None = None
        if options.precision == "INT8":
            if calibration is None:
                calibration = resolve_calibration(entry, None, options.calibration_size, options.guard_images)
            # From here on the build's own choices: what provenance records is what was built.
            if options.int8_recipe is None:
                recipe, recipe_reason = default_recipe()
            else:
                recipe, recipe_reason = (Int8Recipe.parse(options.int8_recipe, "INT8 recipe"),
                                         "chosen by --int8-recipe")
            options = replace(options, int8_recipe=recipe.value)
            log.info("INT8 recipe %s: %s", recipe.value, recipe_reason)
        log.info("converting %s (%s, %s %s input) ...", source_path.name, options.precision, options.input_type,
                 options.input_layout)
        ov = import_engine("openvino")
        model = build_ir_model(source_path, entry, options)
        try:
            temporary = fsutil.make_temporary_folder(xml.parent.parent, _temporary_prefix(xml.parent.name))
        except OSError as exc:
            raise _write_failure(xml.parent.parent, exc) from exc
        reference_dir: Path | None = None
        try:
            temp_xml = temporary / xml.name
            provisional = _provenance(entry, source_path, source_sha256, options, None, calibration,
                                      recipe_reason=recipe_reason)
            reference_xml = temp_xml
            if options.precision == "INT8" and calibration is not None:
                # The FP32 IR of the same graph is the guard's reference; it lives apart, so it is never installed.
                try:
                    reference_dir = fsutil.make_temporary_folder(xml.parent.parent,
                                                                 _temporary_prefix(xml.parent.name))
                except OSError as exc:
                    raise _write_failure(xml.parent.parent, exc) from exc
                reference_xml = reference_dir / xml.name
                _save_model(ov, model, reference_xml, compress_to_fp16=False)
                model = quantize_model(model, entry, calibration, input_type=options.input_type,
                                       input_layout=options.input_layout, progress=quantize_progress,
                                       recipe=options.int8_recipe or Int8Recipe.PORTABLE)
            _store_provenance(model, provisional)
            _save_model(ov, model, temp_xml, compress_to_fp16=options.precision == "FP16")
            del model
            _check_saved(ov, temp_xml, entry, options)
            parity = None
            accuracy = None
            check = None
            if options.verify and options.precision == "INT8" and calibration is not None:
                log.info("accuracy guard: INT8 vs FP32 IR on held-out images (%s) ...",
                         calibration.held_out_description)
                accuracy = accuracy_guard(reference_xml, temp_xml, entry, calibration, input_type=options.input_type,
                                          input_layout=options.input_layout, progress=quantize_progress)
                if not accuracy.passed:
                    _refuse_or_accept(accuracy, entry, options)
                    accuracy = replace(accuracy, accepted=True)
                check = runtime_check(temp_xml, entry, options)
                final = _provenance(entry, source_path, source_sha256, options, None, calibration, accuracy, check,
                                    recipe_reason)
                _rewrite_provenance(temp_xml, final)
            elif options.verify:
                log.info("parity gate: onnxruntime vs OpenVINO on %d generated images ...", options.parity_images)
                parity = parity_check(source_path, temp_xml, entry, options)
                if not parity.passed:
                    raise ParityError(
                        f"the {options.precision} IR disagrees with onnxruntime: {parity.matched} of "
                        f"{parity.reference_detections} detections matched (recall {parity.recall:.4f}), "
                        f"max box difference {parity.max_box_diff:.3g}, max score difference "
                        f"{parity.max_score_diff:.3g}; required: {parity.criteria}. Nothing was installed.",
                        # detect and bench convert on first use too: the hint names the command the flag is on.
                        hint=f"report this with 'ssdtool --version'; 'ssdtool convert {entry.name} --precision "
                             f"{options.precision} --no-verify' installs it anyway (not advised)")
                check = runtime_check(temp_xml, entry, options)
                final = _provenance(entry, source_path, source_sha256, options, parity, check=check)
                _rewrite_provenance(temp_xml, final)
            else:
                final = provisional
            # Last, once the weights are final: their size and sha256, checked on the up-to-date path.
            final = {**final, WEIGHTS_KEY: weights_record(temp_xml)}
            _rewrite_provenance(temp_xml, {WEIGHTS_KEY: final[WEIGHTS_KEY]})
            try:
                if options.output_dir is None:
                    _install(temporary, xml.parent)
                else:
                    _install_files(temporary, xml)
            except OSError as exc:
                raise _write_failure(xml.parent, exc) from exc
        finally:
            with contextlib.suppress(OSError):
                fsutil.remove_tree(temporary)
            if reference_dir is not None:
                with contextlib.suppress(OSError):
                    fsutil.remove_tree(reference_dir)
        return _result(entry, xml, options, read_provenance(xml) or final, False, parity, started, accuracy,
                       runtime=check)
    finally:
        lock.release()


def _refuse_or_accept(accuracy: AccuracyReport, entry: ModelEntry, options: ConvertOptions) -> None:
    """Raise :class:`AccuracyError` for a failed guard, unless the caller accepted the drop (then only warn)."""
    figures = (f"{accuracy.matched} of {accuracy.reference_detections} FP32 detections found in the INT8 output "
               f"(recall {accuracy.recall:.4f}) on {accuracy.images} held-out images ({accuracy.held_out}), max "
               f"score difference {accuracy.max_score_diff:.3g}; required: {accuracy.criteria}")
    if options.accept_accuracy_drop:
        log.warning("the INT8 IR fails the accuracy guard: %s; installing it anyway (--accept-accuracy-drop)",
                    figures)
        return
    raise AccuracyError(
        f"the INT8 IR of {entry.name} loses too many detections: {figures}. Nothing was installed.",
        hint=f"calibrate on more or more representative images ('ssdtool convert {entry.name} --precision INT8 "
             "--calibration DIR --calibration-size N'), keep FP32, or install it anyway with 'ssdtool convert "
             f"{entry.name} --precision INT8 --accept-accuracy-drop'")


def _install_files(temporary: Path, xml: Path) -> None:
    """For --output-dir: a user's folder may hold other files, so only the IR's two files are replaced."""
    xml.parent.mkdir(parents=True, exist_ok=True)
    # .bin first: an .xml never points at a missing or older .bin for longer than one rename.
    os.replace(temporary / xml.with_suffix(".bin").name, xml.with_suffix(".bin"))
    os.replace(temporary / xml.name, xml)


def _store_provenance(model: Any, record: dict[str, Any]) -> None:
    for key, value in record.items():
        model.set_rt_info(encode(value), [RT_INFO_ROOT, key])


def _rewrite_provenance(xml: Path, record: dict[str, Any]) -> None:
    try:
        rewritten = rewrite_provenance(xml, record)
    except OSError as exc:
        raise _write_failure(xml.parent, exc) from exc
    if not rewritten:
        raise ConversionError(f"{xml} lost its provenance block", hint="report this with 'ssdtool --version'")


def check(entry: ModelEntry, cache: Cache, options: ConvertOptions | None = None, *, source: Path | None = None,
          xml: Path | None = None, offline: bool = False, device: str = "CPU",
          inference_precision: str = "f32") -> ParityReport:
    """The parity gate on its own, for an installed IR; raises :class:`ParityError` when it fails.

    ``inference_precision`` as for detection (``auto`` resolves the same way, from the IR's runtime checks); at f32
    an FP32 IR must pass the strict criteria, otherwise the recall floor applies (see :func:`parity_check`).
    """
    options = options or ConvertOptions(precision=entry.convert.precision)
    check_options(options)
    ir = Path(xml) if xml is not None else ir_path(entry, cache, options)
    if not ir.is_file():
        raise ModelFormatError(f"no IR at {ir}",
                               hint=f"run 'ssdtool convert {entry.name} --precision {options.precision}' first")
    provenance = read_provenance(ir) or {}
    parameters = provenance.get("parameters") or {}
    options = replace(options, input_type=parameters.get("input_type", options.input_type),
                      input_layout=parameters.get("input_layout", options.input_layout))
    source_path = _source_path(entry, cache, source, offline, None)
    from ssdtool.backends.openvino import device_facts

    choice = precision.plan(inference_precision, device_facts(device), precision.recorded_checks(provenance),
                            model=entry.name)
    log.log(choice.level, "inference precision: %s", choice.reason)
    report = parity_check(source_path, ir, entry, options, device=device, inference_precision=choice.pin)
    if not report.passed:
        raise ParityError(
            f"{ir} disagrees with onnxruntime on {source_path.name}: {report.matched} of "
            f"{report.reference_detections} detections matched, max box difference {report.max_box_diff:.3g}, "
            f"max score difference {report.max_score_diff:.3g}; required: {report.criteria}",
            hint=f"reconvert with 'ssdtool convert {entry.name} --force'" if report.inference_precision == "f32"
            else f"at {report.inference_precision} this IR loses accuracy on this device; run it with "
                 "--inference-precision f32")
    return report
