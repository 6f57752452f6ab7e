"""``convert`` and ``check``: a conversion in named steps, and what it reports.

1. **Current?** An IR whose provenance has the same source checksum and parameters and intact weights is up to
   date: nothing is built (only a missing runtime check for a device of ``check_devices`` is measured and
   recorded). Reading needs no lock, since an IR only ever appears by renaming a complete folder into place.
2. **Locked**: one converter per destination, across processes; it re-checks, then removes what dead
   conversions left (:mod:`ssdtool.convert.workspace`). An IR that differs only in its Model API metadata
   (:mod:`ssdtool.convert.model_info`; an IR of an older ssdtool has none) is **amended**: its XML gets the
   metadata and the new parameters, by rename; graph and weights stay as they are, and nothing is built.
3. **Build**: the graph (:mod:`ssdtool.convert.graph`), saved in a temporary folder beside the destination; INT8
   quantizes it with NNCF (:mod:`ssdtool.quantize`), keeping the FP32 graph apart as the guard's reference.
4. **Prove**: the parity gate against onnxruntime (INT8: the accuracy guard against FP32), both at f32; then the
   runtime check at each device's default precision, on every device of ``check_devices``
   (:mod:`ssdtool.convert.gate`). A failure installs nothing.
5. **Install**: provenance with the weights' size and sha256, then the folder renamed into place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ssdtool import __version__, precision
from ssdtool.accuracy_budget import Budget, BudgetReport
from ssdtool.backends import import_engine
from ssdtool.backends.openvino_rules import plan_devices
from ssdtool.backends.spec import ModelFile
from ssdtool.cache import Cache
from ssdtool.constants import DEFAULT_DEVICE, Backend, InferencePrecision, Int8Phase, Int8Recipe, IRPrecision
from ssdtool.convert.gate import (
    ParityReport,
    check_device_parts,
    parity_check,
    record_missing_runtime_checks,
    runtime_check,
)
from ssdtool.convert.graph import build_ir_model, check_saved, input_shape, save_model, write_failure
from ssdtool.convert.int8 import check_budget, early_int8, guard, int8_provenance, settle_calibration
from ssdtool.convert.model_info import MODEL_INFO_SECTION, model_info
from ssdtool.convert.options import (
    MODEL_INFO_KEY,
    ConvertOptions,
    check_options,
    conversion_parameters,
    ir_path,
    model_info_intact,
    same_but_model_info,
    same_parameters,
)
from ssdtool.convert.workspace import conversion_lock, install, sweep_leftovers, temporary_folders
from ssdtool.download.api import source_model
from ssdtool.download.transfer import hash_file
from ssdtool.errors import CacheError, ConversionError, ModelFormatError, ParityError
from ssdtool.fsutil import InputPath, OutputPath, check_outputs
from ssdtool.int8_recipes import default_recipe
from ssdtool.provenance import (
    RT_INFO_ROOT,
    WEIGHTS_KEY,
    encode,
    ir_problem,
    read_provenance,
    rewrite_provenance,
    weights_record,
)
from ssdtool.quantize import AccuracyReport, CalibrationSet, ProgressCallback, QuantizeEvent, quantize_file
from ssdtool.registry import ModelEntry

log = logging.getLogger("ssdtool.convert")


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
    budget: BudgetReport | None = None  # INT8 with --max-ap-drop: this run's accuracy control (None: not run)
    #: This run's checks of the IR at each device's default inference precision (none where the default is f32)
    runtime_checks: tuple[precision.RuntimeCheck, ...] = ()
    #: The installed IR lacked the current Model API metadata and got it (graph and weights unchanged, nothing built)
    amended: bool = False
    image_input: bool = False

    @property
    def runtime_check(self) -> precision.RuntimeCheck | None:
        """This run's first runtime check (the CPU's by default), or None."""
        return self.runtime_checks[0] if self.runtime_checks else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "xml": str(self.xml), "bin": str(self.bin), "precision": self.precision,
            "input_type": self.input_type, "input_layout": self.input_layout, "input_shape": list(self.input_shape),
            "outputs": {k: list(v) for k, v in self.outputs.items()}, "up_to_date": self.up_to_date,
            "parity": self.parity.to_dict() if self.parity else None, "seconds": round(self.seconds, 3),
            "provenance": self.provenance,
            "accuracy": self.accuracy.to_dict() if self.accuracy else None, "calibration": self.calibration,
            "runtime_check": self.runtime_check.to_dict() if self.runtime_check else None,
            "runtime_checks": [check.to_dict() for check in self.runtime_checks],
            "accuracy_control": self.budget.to_dict() if self.budget else None,
            "amended": self.amended, "image_input": self.image_input,
        }


def convert(entry: ModelEntry, cache: Cache, options: ConvertOptions | None = None, *, source: Path | None = None,
            offline: bool = False, progress: Callable[[Any], None] | None = None,
            quantize_progress: ProgressCallback | None = None) -> ConversionResult:
    """Convert ``entry``'s ONNX file (or ``source``) to an OpenVINO IR and install it; see the module docstring.

    ``progress`` receives download events; ``quantize_progress`` INT8 calibration and guard progress.
    """
    options = options or ConvertOptions(precision=entry.convert.precision)
    check_options(options)
    started = time.perf_counter()
    if options.verify:  # an absent device fails before anything is fetched or built
        options = replace(options, check_devices=check_device_parts(options.check_devices))
    xml = ir_path(entry, cache, options)
    calibration, budget = early_int8(entry, options, xml)
    wanted = conversion_parameters(entry, options, calibration, budget)
    if source is None and entry.primary_file.sha256 \
            and (amended := _amend_installed(cache, entry, options, xml, wanted, started)) is not None:
        return amended  # only the Model API metadata was missing: the source is not needed, nor downloaded
    source_path = _source_path(entry, cache, source, offline, progress)
    if options.output_dir is not None:
        _check_output_files(xml, source_path)
    source_sha256 = (entry.primary_file.sha256 if source is None and entry.primary_file.sha256
                     else hash_file(source_path, ("sha256",))[1]["sha256"])
    if (existing := _current_ir(xml, source_sha256, wanted, options)) is not None:
        sweep_leftovers(cache, entry, options, xml)
        return _up_to_date(entry, xml, options, existing, started)
    with conversion_lock(cache, entry, options, xml):
        if (existing := _current_ir(xml, source_sha256, wanted, options, recheck=True)) is not None:
            return _up_to_date(entry, xml, options, existing, started)  # converted while this one waited
        if (existing := _amendable_ir(xml, source_sha256, wanted, options)) is not None:
            return _amend(entry, xml, options, existing, wanted, started)
        build = _Build(entry, options, source_path, source_sha256, calibration, quantize_progress, budget)
        build.run(xml)
    return replace(_result(entry, xml, build.options, read_provenance(xml) or build.final, False, build.parity,
                           started, build.accuracy, build.checks), budget=build.budget_report)


def _check_output_files(xml: Path, source: Path) -> None:
    """``--output-dir``'s two IR files pass the one output-path guard before anything is converted: neither may be
    the source model (however spelled or linked), a folder, a device or a FIFO. A folder that does not exist yet
    (it is created) holds nothing to collide with."""
    if not xml.parent.is_dir():
        return
    check_outputs([OutputPath(path, "--output-dir", what=f"{path} (an IR file --output-dir writes)", stream=False,
                              metavar="DIR") for path in (xml, xml.with_suffix(".bin"))],
                  [InputPath(source, "the source ONNX model")])


def _source_path(entry: ModelEntry, cache: Cache, source: Path | None, offline: bool,
                 progress: Callable[[Any], None] | None) -> Path:
    if source is None:
        return source_model(entry, cache, offline=offline, progress=progress)
    if not Path(source).is_file():
        raise ModelFormatError(f"source model {source} does not exist", hint="check the path")
    return Path(source)


def _current_ir(xml: Path, source_sha256: str, wanted: dict[str, Any], options: ConvertOptions,
                recheck: bool = False) -> dict[str, Any] | None:
    """The provenance of the IR at ``xml`` when it is up to date and intact: same source checksum and parameters,
    and weights of the recorded size and sha256. None otherwise (then it is rebuilt)."""
    if options.force or not xml.is_file():
        return None
    existing = read_provenance(xml)
    if not existing or existing.get("source_sha256") != source_sha256 \
            or not same_parameters(existing.get("parameters"), wanted):
        return None
    if problem := ir_problem(xml, existing, hash_weights=True):
        # Said once: the check under the lock (``recheck``) finds the same problem unless another process fixed it.
        log.log(logging.DEBUG if recheck else logging.INFO, "rebuilding %s: %s", xml, problem)
        return None
    return existing if model_info_intact(xml, wanted) else None


def _amendable_ir(xml: Path, source_sha256: str, wanted: dict[str, Any], options: ConvertOptions
                  ) -> dict[str, Any] | None:
    """The provenance of the IR at ``xml`` when it differs from ``wanted`` only in its Model API metadata (and is
    intact: same source, weights of the recorded size and sha256); None otherwise."""
    if options.force or not xml.is_file():
        return None
    existing = read_provenance(xml)
    if not existing or existing.get("source_sha256") != source_sha256 \
            or not same_but_model_info(existing.get("parameters"), wanted):
        return None
    return existing if ir_problem(xml, existing, hash_weights=True) is None else None


def _amend_installed(cache: Cache, entry: ModelEntry, options: ConvertOptions, xml: Path, wanted: dict[str, Any],
                     started: float) -> ConversionResult | None:
    """The installed IR amended with the current Model API metadata, when that is all it lacks (else None: the
    caller converts as usual). Where the IR cannot be written (a cache mounted read-only) it is used as it is,
    with a warning: ssdtool runs it the same, only Model API needs the metadata."""
    sha256 = entry.primary_file.sha256
    if (stale := _amendable_ir(xml, sha256, wanted, options)) is None:
        return None
    try:
        with conversion_lock(cache, entry, options, xml):
            if (existing := _current_ir(xml, sha256, wanted, options, recheck=True)) is not None:
                return _up_to_date(entry, xml, options, existing, started)  # amended while this one waited
            if (existing := _amendable_ir(xml, sha256, wanted, options)) is not None:
                return _amend(entry, xml, options, existing, wanted, started)
    except CacheError as exc:
        log.warning("%s lacks the current Model API metadata (rt_info/%s) and cannot be amended here: %s; using it "
                    "as it is (ssdtool runs it the same; for Model API, run 'ssdtool convert %s' where the cache "
                    "is writable)", xml, MODEL_INFO_SECTION, exc.message, entry.name)
        return _result(entry, xml, options, stale, True, None, started)  # nothing can be recorded here either
    return None


def _amend(entry: ModelEntry, xml: Path, options: ConvertOptions, existing: dict[str, Any], wanted: dict[str, Any],
           started: float) -> ConversionResult:
    """Write the current Model API metadata (and the parameters that record it) into the installed IR's XML; the
    graph and the weights are unchanged, so nothing is built or proven again."""
    log.info("%s: writing Model API metadata (rt_info/%s), which the IR lacks or has out of date (made by another "
             "ssdtool or with another label file); graph and weights unchanged", xml, MODEL_INFO_SECTION)
    parameters = {**existing["parameters"], MODEL_INFO_KEY: wanted[MODEL_INFO_KEY]}
    _rewrite_provenance(xml, {"parameters": parameters}, model_info(entry, options))
    result = _up_to_date(entry, xml, options, read_provenance(xml) or existing, started, quiet=True)
    return replace(result, up_to_date=False, amended=True)


def _up_to_date(entry: ModelEntry, xml: Path, options: ConvertOptions, existing: dict[str, Any], started: float,
                quiet: bool = False) -> ConversionResult:
    if not quiet:
        log.info("%s is up to date (same source checksum and parameters); pass --force to rebuild", xml)
    checks = record_missing_runtime_checks(xml, entry, options, existing, _rewrite_provenance) if options.verify \
        else ()
    return _result(entry, xml, options, read_provenance(xml) or existing if checks else existing, True, None,
                   started, runtime=checks)


class _Build:
    """One conversion under the lock: settle the INT8 choices, build, save, prove, install."""

    def __init__(self, entry: ModelEntry, options: ConvertOptions, source: Path, source_sha256: str,
                 calibration: CalibrationSet | None, quantize_progress: ProgressCallback | None,
                 budget: Budget | None = None) -> None:
        self.entry, self.options, self.source, self.source_sha256 = entry, options, source, source_sha256
        self.calibration, self.quantize_progress, self.budget = calibration, quantize_progress, budget
        self.budget_report: BudgetReport | None = None
        self.recipe_reason: str | None = None
        self.parity: ParityReport | None = None
        self.accuracy: AccuracyReport | None = None
        self.checks: tuple[precision.RuntimeCheck, ...] = ()
        self.final: dict[str, Any] = {}

    def run(self, xml: Path) -> None:
        self._settle_int8_choices()
        options = self.options
        log.info("converting %s (%s, %s %s %sinput) ...", self.source.name, options.precision, options.input_type,
                 options.input_layout, "image " if options.image_input else "")
        ov = import_engine("openvino")
        model = build_ir_model(self.source, self.entry, options)
        with temporary_folders(xml, self.options) as new_folder:
            temporary = new_folder()
            temp_xml = temporary / xml.name
            reference_xml = temp_xml
            if options.precision == IRPrecision.INT8 and self.calibration is not None:
                # The FP32 IR of the same graph is NNCF's input and the guard's reference; it lives apart, so it
                # is never installed.
                reference_xml = new_folder() / xml.name
                save_model(ov, model, reference_xml, compress_to_fp16=False)
                del model
                self.budget_report = quantize_file(
                    reference_xml, temp_xml, self.entry, self.calibration, provenance=self._provenance(),
                    input_type=options.input_type, input_layout=options.input_layout,
                    recipe=options.int8_recipe or Int8Recipe.PORTABLE, progress=self.quantize_progress,
                    budget=self.budget)
                check_budget(self.budget_report, self.entry)
            else:
                for key, value in self._provenance().items():
                    model.set_rt_info(encode(value), [RT_INFO_ROOT, key])
                save_model(ov, model, temp_xml, compress_to_fp16=options.precision == IRPrecision.FP16)
                del model
            check_saved(ov, temp_xml, self.entry, options)
            if options.verify:
                self._prove(temp_xml, reference_xml)
            # Last, once the weights are final: their size and sha256, checked on the up-to-date path.
            self.final = {**self._provenance(), WEIGHTS_KEY: weights_record(temp_xml)}
            _rewrite_provenance(temp_xml, self.final, model_info(self.entry, options))
            install(temporary, xml, options)

    def _settle_int8_choices(self) -> None:
        """INT8: the calibration set and the recipe this build uses, so provenance records what was built."""
        if self.options.precision != IRPrecision.INT8:
            return
        self.calibration = settle_calibration(self.entry, self.options, self.calibration)
        if self.options.int8_recipe is None:
            recipe, self.recipe_reason = default_recipe()
        else:
            recipe, self.recipe_reason = Int8Recipe.parse(self.options.int8_recipe, "INT8 recipe"), \
                "chosen by --int8-recipe"
        self.options = replace(self.options, int8_recipe=recipe.value)
        log.info("INT8 recipe %s: %s", recipe.value, self.recipe_reason)

    def _prove(self, temp_xml: Path, reference_xml: Path) -> None:
        """The gate (INT8: the guard), both at f32, then the runtime check; a failure raises, installing nothing."""
        options, entry = self.options, self.entry
        if options.precision == IRPrecision.INT8 and self.calibration is not None:
            if self.budget_report is None:  # an AP budget, met during quantization, replaces the guard
                self.accuracy = guard(reference_xml, temp_xml, entry, options, self.calibration,
                                      self.quantize_progress)
        else:
            log.info("parity gate: onnxruntime vs OpenVINO on %d generated images ...", options.parity_images)
            parity = parity_check(self.source, temp_xml, entry, options)
            if not parity.passed:
                raise ParityError(
                    f"the {options.precision} IR disagrees with onnxruntime: {parity.matched} of "
                    f"{parity.reference_detections} detections matched (recall {parity.recall:.4f}), max box "
                    f"difference {parity.max_box_diff:.3g}, max score difference {parity.max_score_diff:.3g}"
                    f"{_resize_figures(parity)}; required: {parity.criteria}. Nothing was installed.",
                    # detect and bench convert on first use too: the hint names the command the flag is on.
                    hint=f"report this with 'ssdtool --version'; 'ssdtool convert {entry.name} --precision "
                         f"{options.precision} --no-verify' installs it anyway (not advised)")
            self.parity = parity
        progress = self.quantize_progress if options.precision == IRPrecision.INT8 else None
        if progress is not None:
            progress(QuantizeEvent(Int8Phase.CHECK.value, 0, 1))
        self.checks = tuple(check for device in options.check_devices
                            if (check := runtime_check(temp_xml, entry, options, device)) is not None)
        if progress is not None:
            progress(QuantizeEvent(Int8Phase.CHECK.value, 1, 1))

    def _provenance(self) -> dict[str, Any]:
        """What travels with the IR: source, versions, every parameter, labels, the proofs (as far as they ran)."""
        entry, options, parity = self.entry, self.options, self.parity
        record: dict[str, Any] = {
            "model": entry.name,
            "source_file": self.source.name,
            "source_sha256": self.source_sha256,
            "ssdtool_version": __version__,
            "openvino_version": import_engine("openvino").get_version(),
            "parameters": conversion_parameters(entry, options, self.calibration, self.budget),
            "labels": entry.labels,
            "labels_sha256": hash_file(entry.label_path(), ("sha256",))[1]["sha256"],
            "parity": "skipped (--no-verify)" if parity is None else {
                "passed": parity.passed, "images": parity.images, "recall": parity.recall,
                "max_box_diff": parity.max_box_diff, "max_score_diff": parity.max_score_diff,
                "inference_precision": parity.inference_precision,
                **({"resize": _parity_figures(parity.resize)} if parity.resize is not None else {})},
            precision.PROVENANCE_KEY: [check.to_dict() for check in self.checks],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if options.precision == IRPrecision.INT8:
            record.update(int8_provenance(options, self.recipe_reason, self.calibration, self.accuracy, self.budget,
                                          self.budget_report))
        return record


def _parity_figures(report: ParityReport) -> dict[str, Any]:
    """The provenance record of the image-input IR's second gate (whole images resized inside the IR)."""
    return {"passed": report.passed, "images": report.images, "recall": report.recall,
            "matched": report.matched, "reference_detections": report.reference_detections,
            "max_box_diff": report.max_box_diff, "max_score_diff": report.max_score_diff}


def _resize_figures(report: ParityReport) -> str:
    """For a failure message: the image-input IR's whole-image figures ("" for the other IRs)."""
    if report.resize is None:
        return ""
    return (f"; on the same images at their own size, resized inside the IR: {report.resize.matched} of "
            f"{report.resize.reference_detections} matched (recall {report.resize.recall:.4f})")


def _rewrite_provenance(xml: Path, record: dict[str, Any], info: dict[str, str] | None = None) -> None:
    """Update the provenance in ``xml`` (and with ``info``, write Model API's ``model_info`` section whole)."""
    try:
        rewritten = rewrite_provenance(xml, record, {MODEL_INFO_SECTION: info} if info is not None else None)
    except OSError as exc:
        raise write_failure(xml.parent, exc) from exc
    if not rewritten:
        raise ConversionError(f"{xml} lost its provenance block", hint="report this with 'ssdtool --version'")


def _result(entry: ModelEntry, xml: Path, options: ConvertOptions, provenance: dict[str, Any],
            up_to_date: bool, parity: ParityReport | None, started: float,
            accuracy: AccuracyReport | None = None, runtime: tuple[precision.RuntimeCheck, ...] = ()
            ) -> ConversionResult:
    count = entry.convert.output_count
    return ConversionResult(
        model=entry.name, xml=xml, bin=xml.with_suffix(".bin"), precision=options.precision,
        input_type=options.input_type, input_layout=options.input_layout, input_shape=input_shape(entry, options),
        outputs={entry.outputs.boxes: (1, count, 4), entry.outputs.labels: (1, count),
                 entry.outputs.scores: (1, count)},
        up_to_date=up_to_date, parity=parity, seconds=time.perf_counter() - started, provenance=provenance,
        accuracy=accuracy, calibration=provenance.get("calibration") if options.precision == IRPrecision.INT8 else None,
        runtime_checks=runtime, image_input=options.image_input)


def check(entry: ModelEntry, cache: Cache, options: ConvertOptions | None = None, *, source: Path | None = None,
          xml: Path | None = None, offline: bool = False, device: str = DEFAULT_DEVICE,
          inference_precision: str = InferencePrecision.F32.value) -> ParityReport:
    """The parity gate on its own, for an installed IR; raises :class:`ParityError` when it fails.

    ``inference_precision`` as for detection (``auto`` resolves the same way, from the IR's runtime checks); at f32
    an FP32 IR must pass the strict criteria, otherwise the recall floor applies (see :func:`parity_check`).
    """
    options = options or ConvertOptions(precision=entry.convert.precision)
    check_options(options)
    ir = Path(xml) if xml is not None else ir_path(entry, cache, options)
    if not ir.is_file():
        raise ModelFormatError(f"no IR at {ir}",
                               hint=f"run 'ssdtool convert {entry.name} --precision {options.precision}"
                                    f"{' --image-input' if options.image_input else ''}' first")
    parameters = (read_provenance(ir) or {}).get("parameters") or {}
    options = replace(options, input_type=parameters.get("input_type", options.input_type),
                      input_layout=parameters.get("input_layout", options.input_layout),
                      image_input="image_input" in parameters if parameters else options.image_input)
    source_path = _source_path(entry, cache, source, offline, None)
    planned = plan_devices(ModelFile(entry.name, Backend.OPENVINO, ir, "ir", options.precision), inference_precision,
                           device)
    report = parity_check(source_path, ir, entry, options, device=device, inference_precision=planned.pin,
                          device_pins=planned.device_pins,
                          expected_precisions=planned.expected if planned.choice.virtual else None)
    if not report.passed:
        raise ParityError(
            f"{ir} disagrees with onnxruntime on {source_path.name}: {report.matched} of "
            f"{report.reference_detections} detections matched, max box difference {report.max_box_diff:.3g}, "
            f"max score difference {report.max_score_diff:.3g}{_resize_figures(report)}; required: {report.criteria}",
            hint=f"reconvert with 'ssdtool convert {entry.name} --force'" if report.inference_precision == "f32"
            else f"at {report.inference_precision} this IR loses accuracy on this device; run it with "
                 "--inference-precision f32")
    return report
