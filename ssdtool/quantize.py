"""INT8 post-training quantization of the converted IR with NNCF, and the accuracy guard that gates installing it.

Where quantization sits: NNCF quantizes the *finished* FP32 ``openvino.Model``, after the output rewrite and
after ``PrePostProcessor`` folded the channel reversal, mean and scale into the graph. So:

* the calibration dataset yields exactly what detection feeds the IR (raw 0-255 BGR pixels, through detection's
  loader and preprocessing, :mod:`ssdtool.calibration`): one path for calibration, the guard and detection;
* the graph NNCF sees is the graph that is installed; quantizing before PPP would need a second rewrite of an
  already quantized model and a second, normalized-input calibration path that could drift from the first;
* NNCF still places the first quantizer after the folded normalization (it quantizes convolution inputs), so the
  ranges are those of normalized activations, as they would be on the source model. The decoding and NMS tail
  has no quantizable operations and stays in float.

The accuracy guard runs the FP32 IR (built from the same graph, never installed) and the INT8 IR on held-out
images - different generated images (another seed) or image files not used for calibration - and matches
detections order-independently (same label, IoU >= 0.5). It passes when at least ``GUARD_MIN_RECALL`` of the
FP32 detections are found in the INT8 output.

NNCF is an optional dependency (``pip install 'ssdtool[int8]'``); it is imported only here, only when a model is
quantized, and quantization runs in a child process (:func:`quantize_file`): NNCF's rich progress bars land on
that process's stdout, which goes nowhere, while its progress (:class:`QuantizeEvent`, rendered on stderr by the
CLI) and log records (the ``ssdtool`` logger, at debug level) come back as JSON lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ssdtool import fsutil
from ssdtool.accuracy_budget import Budget, BudgetReport
from ssdtool.backends import import_engine
from ssdtool.calibration import (
    DEFAULT_CALIBRATION_SIZE,
    GENERATED,
    GUARD_IMAGES,
    GUARD_SEED,
    CalibrationSet,
    calibration_items,
    held_out_images,
    load_rgb,
    network_input,
    resolve_calibration,
)
from ssdtool.constants import DEFAULT_DEVICE, InputLayout, InputType, Int8Phase, Int8Recipe
from ssdtool.detections import network_detections
from ssdtool.errors import ConversionError, DependencyError, SsdtoolError, all_error_classes
from ssdtool.int8_recipes import quantization_settings
from ssdtool.matching import MatchReport, match_detections
from ssdtool.provenance import RT_INFO_ROOT, encode
from ssdtool.registry import ModelEntry

__all__ = ["DEFAULT_CALIBRATION_SIZE", "GUARD_IMAGES", "CalibrationSet", "resolve_calibration"]

log = logging.getLogger("ssdtool.quantize")

GUARD_IOU = 0.5
# The floor: 90% of the FP32 IR's detections must reappear in the INT8 output (same label, IoU >= 0.5). The
# same floor as the FP16 parity gate. Trained weights quantize well above it; the synthetic twin's random weights
# sit closer to it (see docs/convert.md).
GUARD_MIN_RECALL = 0.90
INSTALL_HINT = "pip install 'ssdtool[int8]'"

@dataclass(frozen=True)
class QuantizeEvent:
    """Progress of one INT8 phase: ``calibrate`` (statistics collection), ``quantize`` (NNCF's work after it: bias
    correction, the quantized graph; 0 of 1 when it starts, 1 of 1 when it ends) and ``guard`` (held-out
    comparison) and ``check`` (the runtime check at the CPU's default precision, 0 of 1 then 1 of 1); with
    ``--max-ap-drop`` also ``reference`` (FP32 on the held-out images, for agreement AP), ``validate`` (one NNCF
    validation: ``run`` counts them, the last event of a run carries its metric as ``value``) and ``latency`` (the
    short speed measurement)."""

    phase: str
    done: int
    total: int
    run: int | None = None
    value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event's fields, without the ones a phase does not use."""
        return {key: value for key, value in asdict(self).items() if value is not None}


ProgressCallback = Callable[[QuantizeEvent], None]


@dataclass(frozen=True)
class AccuracyReport:
    """INT8 IR against the FP32 IR on held-out images."""

    passed: bool
    images: int
    held_out: str
    reference_detections: int
    int8_detections: int
    matched: int
    recall: float
    max_box_diff: float
    max_score_diff: float
    min_recall: float
    criteria: str
    accepted: bool = False  # installed although it failed (--accept-accuracy-drop)
    per_image: tuple[dict[str, Any], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_image"] = list(self.per_image)
        return data

    def summary(self) -> dict[str, Any]:
        """The provenance form: figures without the per-image breakdown."""
        return {k: v for k, v in self.to_dict().items() if k != "per_image"}

# ------------------------------------------------------------------------------------------------ dependency
def import_nncf() -> ModuleType:
    """``import nncf``, or :class:`DependencyError` naming the extra that installs it."""
    try:
        import nncf
    except ImportError as exc:
        raise DependencyError(f"INT8 quantization needs NNCF, which cannot be imported: {exc}",
                              hint=f"install the extra with: {INSTALL_HINT}") from exc
    except Exception as exc:  # a broken install fails in many ways at import time
        raise DependencyError(f"NNCF is installed but fails to import: {type(exc).__name__}: {exc}",
                              hint=f"reinstall it with: {INSTALL_HINT} --force-reinstall") from exc
    return nncf

def nncf_version() -> str | None:
    """The installed NNCF version from package metadata (no import)."""
    from importlib import metadata

    try:
        return metadata.version("nncf")
    except metadata.PackageNotFoundError:
        return None

# ------------------------------------------------------------------------------------------------ quantization
def _unique_friendly_names(model: Any) -> None:
    """Give every non-Result op a unique friendly name.

    The output rewrite names a Result and the Reshape feeding it after the output tensor (``scores``), so the IR
    reads naturally; NNCF builds its graph keyed by friendly name, and duplicates make it see a cycle. Tensor
    names (what users and ssdtool address outputs by) are not touched.
    """
    seen: dict[str, int] = {}
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        seen[name] = seen.get(name, 0) + 1
    taken = set(seen)
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if seen[name] > 1 and op.get_type_name() != "Result":
            candidate = f"{name}/{op.get_type_name()}"
            suffix = 1
            while candidate in taken:
                suffix += 1
                candidate = f"{name}/{op.get_type_name()}_{suffix}"
            op.set_friendly_name(candidate)
            taken.add(candidate)

def calibration_dataset(nncf: ModuleType, entry: ModelEntry, calibration: CalibrationSet, input_type: str,
                        input_layout: str, progress: ProgressCallback | None) -> tuple[Any, int]:
    """``(nncf.Dataset, size)`` of the calibration images as IR inputs, reporting ``calibrate`` progress; when the
    last image has been handed to NNCF, the ``quantize`` phase starts."""
    items = calibration_items(calibration)
    total = len(items)
    done = 0

    def transform(item: Any) -> np.ndarray:
        nonlocal done
        if done == 0 and progress is not None:  # statistics collection starts now (NNCF may have work before it)
            progress(QuantizeEvent(Int8Phase.CALIBRATE.value, 0, total))
        rgb = item if isinstance(item, np.ndarray) else load_rgb(item)
        tensor = network_input(rgb, entry, input_type, input_layout)
        done = min(done + 1, total)
        if progress is not None:
            progress(QuantizeEvent(Int8Phase.CALIBRATE.value, done, total))
            if done == total:
                progress(QuantizeEvent(Int8Phase.QUANTIZE.value, 0, 1))
        return tensor

    source = "generated images" if calibration.kind == GENERATED else f"images from {calibration.folder}"
    log.info("INT8: collecting activation statistics on %d %s (NNCF %s) ...", total, source, nncf_version())
    return nncf.Dataset(items, transform), total


def advanced_parameters(recipe: str | Int8Recipe) -> Any:
    """NNCF's advanced quantization parameters of ``recipe`` (its overflow fix)."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    return AdvancedQuantizationParameters(overflow_fix=OverflowFix(quantization_settings(recipe)["overflow_fix"]))


def quantize_model(model: Any, entry: ModelEntry, calibration: CalibrationSet, *, input_type: str = InputType.F32.value,
                   input_layout: str = InputLayout.NCHW.value, progress: ProgressCallback | None = None,
                   recipe: str | Int8Recipe = Int8Recipe.PORTABLE) -> Any:
    """Post-training INT8 quantization of a converted FP32 ``openvino.Model`` (preprocessing inside).

    Returns the quantized ``openvino.Model``. ``model``'s friendly names may be made unique (see
    :func:`_unique_friendly_names`); its tensors and weights are not changed.
    """
    nncf = import_nncf()
    _unique_friendly_names(model)
    dataset, total = calibration_dataset(nncf, entry, calibration, input_type, input_layout, progress)
    quantized = nncf.quantize(model, dataset, subset_size=total, preset=nncf.QuantizationPreset.PERFORMANCE,
                              target_device=nncf.TargetDevice.ANY, fast_bias_correction=True,
                              advanced_parameters=advanced_parameters(recipe))
    if progress is not None:
        progress(QuantizeEvent(Int8Phase.QUANTIZE.value, 1, 1))
    return quantized


def quantize_within_budget(model: Any, entry: ModelEntry, calibration: CalibrationSet, budget: Budget,
                           reference_xml: Path, *, input_type: str = InputType.F32.value,
                           input_layout: str = InputLayout.NCHW.value,
                           progress: ProgressCallback | None = None, recipe: str | Int8Recipe = Int8Recipe.PORTABLE
                           ) -> tuple[Any, BudgetReport]:
    """:func:`quantize_model` within an AP budget (NNCF's accuracy control, :mod:`ssdtool.accuracy_control`):
    the quantized model and its figures. NNCF's model with every layer in INT8 is left beside ``reference_xml``
    (see :func:`intermediate_xml`)."""
    from ssdtool import accuracy_control

    nncf = import_nncf()
    _unique_friendly_names(model)
    dataset, total = calibration_dataset(nncf, entry, calibration, input_type, input_layout, progress)

    def forward(phase: str, done: int, total: int, run: int | None, value: float | None) -> None:
        if progress is not None:
            progress(QuantizeEvent(phase, done, total, run, value))

    quantized, report = accuracy_control.quantize_within_budget(
        nncf, model, dataset, total, advanced_parameters(recipe), entry, calibration, budget, reference_xml,
        intermediate_xml(reference_xml).parent, input_type=input_type, input_layout=input_layout, progress=forward)
    if progress is not None:
        progress(QuantizeEvent(Int8Phase.QUANTIZE.value, 1, 1))
    return quantized, report


def intermediate_xml(reference_xml: Path) -> Path:
    """Where NNCF's accuracy control leaves its model with every layer in INT8: beside the FP32 reference, in the
    conversion's temporary folder that is never installed."""
    return reference_xml.parent / "nncf-intermediate" / "intermediate_model.xml"


# ------------------------------------------------------------------------------------------------ worker process
def quantize_file(reference_xml: Path, int8_xml: Path, entry: ModelEntry, calibration: CalibrationSet, *,
                  provenance: dict[str, Any], input_type: str = InputType.F32.value,
                  input_layout: str = InputLayout.NCHW.value,
                  recipe: str | Int8Recipe = Int8Recipe.PORTABLE, progress: ProgressCallback | None = None,
                  budget: Budget | None = None) -> BudgetReport | None:
    """Quantize the FP32 IR at ``reference_xml`` into ``int8_xml`` (carrying ``provenance``), in a child process.

    With ``budget`` NNCF's accuracy control keeps the AP drop within it and the figures are returned (whether the
    budget was met or not: the caller decides; see :class:`~ssdtool.accuracy_budget.BudgetReport`); else None.

    NNCF draws rich progress bars on stdout, which a library must not touch and a ``--json`` caller must not get;
    a process of its own is the one place where that output can go nowhere without changing this process's
    ``sys.stdout``. It also returns NNCF's memory (about 3 GB at 1200 px) when it ends. The child reports
    progress, NNCF's log records, its result and errors as JSON lines; an ssdtool error there is raised here as the
    same class.
    """
    job = int8_xml.with_name(f".{int8_xml.stem}.quantize-job.pickle")
    with open(fsutil.open_regular(job, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as stream:
        pickle.dump({"reference_xml": str(reference_xml), "int8_xml": str(int8_xml), "entry": entry,
                     "calibration": calibration, "provenance": provenance, "input_type": input_type,
                     "input_layout": input_layout, "recipe": Int8Recipe.parse(recipe, "INT8 recipe").value,
                     "budget": budget}, stream)
    result: dict[str, Any] | None = None
    try:
        with tempfile.TemporaryFile("w+") as errors:
            child = subprocess.Popen([sys.executable, "-m", "ssdtool.quantize", str(job)], stdout=subprocess.PIPE,
                                     stderr=errors, text=True)
            failure: dict[str, Any] | None = None
            assert child.stdout is not None
            with child.stdout:
                for line in child.stdout:
                    event = json.loads(line)
                    if "phase" in event and progress is not None:
                        progress(QuantizeEvent(event["phase"], event["done"], event["total"], event.get("run"),
                                               event.get("value")))
                    elif "log" in event:
                        log.log(logging.DEBUG if event["log"] <= logging.INFO else event["log"], "nncf: %s",
                                event["message"])
                    elif "result" in event:
                        result = event["result"]
                    elif "error" in event:
                        failure = event
            code = child.wait()
            errors.seek(0)
            stderr = errors.read()
    finally:
        with contextlib.suppress(OSError):
            job.unlink()
    if failure is not None:
        raise _error_class(failure["error"])(failure["message"], hint=failure.get("hint"))
    if code != 0:
        text = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {code}"
        raise ConversionError(f"INT8 quantization stopped: {text}", hint="rerun with --debug, and report it with "
                                                                          "'ssdtool --version'")
    if budget is None:
        return None
    if result is None:
        raise ConversionError("INT8 quantization within the budget ended without its figures",
                              hint="rerun with --debug, and report it with 'ssdtool --version'")
    return BudgetReport.from_dict(result)


def _error_class(name: str) -> type[SsdtoolError]:
    return next((cls for cls in all_error_classes() if cls.__name__ == name), ConversionError)


def _worker(job_path: str) -> int:
    """The child of :func:`quantize_file`: JSON lines on the original stdout, everything else's stdout to nothing."""
    events = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # rich's bars and anything else printing now go nowhere; the events keep their own fd

    def emit(event: dict[str, Any]) -> None:
        events.write(json.dumps(event) + "\n")

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            emit({"log": record.levelno, "message": record.getMessage()})

    try:
        with open(job_path, "rb") as stream:
            job = pickle.load(stream)
        nncf = import_nncf()
        nncf.nncf_logger.handlers.clear()
        nncf.nncf_logger.addHandler(Forward())
        ov = import_engine("openvino")
        model = ov.Core().read_model(job["reference_xml"])
        budget, reference_xml, int8_xml = job.get("budget"), Path(job["reference_xml"]), Path(job["int8_xml"])
        options = {"input_type": job["input_type"], "input_layout": job["input_layout"], "recipe": job["recipe"],
                   "progress": lambda event: emit(event.to_dict())}
        report = None
        if budget is None:
            quantized = quantize_model(model, job["entry"], job["calibration"], **options)
        else:
            quantized, report = quantize_within_budget(model, job["entry"], job["calibration"], budget,
                                                       reference_xml, **options)
        for key, value in job["provenance"].items():
            quantized.set_rt_info(encode(value), [RT_INFO_ROOT, key])
        from ssdtool.convert.graph import save_model  # not at the top: ssdtool.convert imports this module

        save_model(ov, quantized, int8_xml, compress_to_fp16=False)
        if report is not None:
            emit({"result": _with_latency(report, job, int8_xml, options["progress"]).to_dict()})
    except SsdtoolError as exc:
        emit({"error": type(exc).__name__, "message": exc.message, "hint": exc.hint})
        return 1
    except Exception as exc:  # reported to the parent, which turns it into a ConversionError
        emit({"error": "ConversionError", "message": f"INT8 quantization failed: {type(exc).__name__}: {exc}"})
        return 1
    return 0

def _with_latency(report: BudgetReport, job: dict[str, Any], int8_xml: Path, progress: ProgressCallback
                  ) -> BudgetReport:
    """The report with the cost of the layers kept in floating point, measured (nothing kept: no cost to measure)."""
    if not report.float_layers or report.int8_layers == 0:
        return report
    from ssdtool import accuracy_control
    from ssdtool.imaging import generated_images

    entry = job["entry"]
    tensor = network_input(generated_images(1, seed=GUARD_SEED)[0], entry, job["input_type"], job["input_layout"])
    latency = accuracy_control.measure_latency(
        int8_xml, intermediate_xml(Path(job["reference_xml"])), tensor,
        progress=lambda phase, done, total, run, value: progress(QuantizeEvent(phase, done, total)))
    return replace(report, latency=latency)


def accuracy_guard(reference_xml: Path, int8_xml: Path, entry: ModelEntry, calibration: CalibrationSet, *,
                   input_type: str = InputType.F32.value, input_layout: str = InputLayout.NCHW.value,
                   device: str = DEFAULT_DEVICE,
                   min_recall: float = GUARD_MIN_RECALL, progress: ProgressCallback | None = None
                   ) -> AccuracyReport:
    """Compare the INT8 IR with the FP32 IR on the held-out images of ``calibration``."""
    from ssdtool.backends.openvino import OpenVinoEngine

    # f32 pinned for both: the guard proves the INT8 file, not the CPU's default arithmetic (see ssdtool.precision).
    reference_engine = OpenVinoEngine(reference_xml, device=device, inference_precision="f32")
    int8_engine = OpenVinoEngine(int8_xml, device=device, inference_precision="f32")
    reports: list[MatchReport] = []
    per_image: list[dict[str, Any]] = []
    total = len(calibration.held_out) if calibration.kind != GENERATED else calibration.guard_images
    if progress is not None:
        progress(QuantizeEvent(Int8Phase.GUARD.value, 0, total))
    for name, rgb in held_out_images(calibration):
        tensor = network_input(rgb, entry, input_type, input_layout)
        reference = network_detections(reference_engine.infer(tensor), entry, "ir")
        candidate = network_detections(int8_engine.infer(tensor), entry, "ir")
        report = match_detections(reference, candidate, GUARD_IOU)
        reports.append(report)
        per_image.append({"image": name, **report.to_dict()})
        if progress is not None:
            progress(QuantizeEvent(Int8Phase.GUARD.value, len(reports), total))
    reference_count = sum(r.reference_count for r in reports)
    matched = sum(r.matched for r in reports)
    if reference_count == 0:
        log.warning("the FP32 model found nothing on the %d held-out images, so the accuracy guard compares "
                    "nothing; check the model and the images", len(reports))
    recall = 1.0 if reference_count == 0 else matched / reference_count
    return AccuracyReport(
        passed=recall >= min_recall, images=len(reports), held_out=calibration.held_out_description,
        reference_detections=reference_count, int8_detections=sum(r.candidate_count for r in reports),
        matched=matched, recall=recall, max_box_diff=max((r.max_box_diff for r in reports), default=0.0),
        max_score_diff=max((r.max_score_diff for r in reports), default=0.0), min_recall=min_recall,
        criteria=f"at least {min_recall:.0%} of FP32 IR detections found in the INT8 output (same label, "
                 f"IoU >= {GUARD_IOU}) on held-out images",
        per_image=tuple(per_image))


if __name__ == "__main__":
    from ssdtool.telemetry import disable_engine_telemetry

    disable_engine_telemetry()  # this child is ssdtool's own process; NNCF and OpenVINO are imported after this
    sys.exit(_worker(sys.argv[1]))
