"""A conversion's INT8 steps apart from NNCF itself: which images calibrate and which measure (resolved before
anything is downloaded or built), the accuracy guard's verdict, and what the IR's provenance records about them.

NNCF runs in :mod:`ssdtool.quantize` (a child process); an AP budget's measuring in :mod:`ssdtool.accuracy_control`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from ssdtool.accuracy_budget import (
    Budget,
    BudgetReport,
    agreement_validation,
    annotated_validation,
    check_disjoint,
    excluded_paths,
)
from ssdtool.constants import IRPrecision
from ssdtool.convert.options import ConvertOptions
from ssdtool.errors import AccuracyError
from ssdtool.quantize import (
    DEFAULT_CALIBRATION_SIZE,
    AccuracyReport,
    CalibrationSet,
    ProgressCallback,
    accuracy_guard,
    import_nncf,
    nncf_version,
    resolve_calibration,
)
from ssdtool.registry import ModelEntry

log = logging.getLogger("ssdtool.convert")


def early_int8(entry: ModelEntry, options: ConvertOptions, xml: Path) -> tuple[CalibrationSet | None, Budget | None]:
    """INT8: the calibration set (and an AP budget's images), resolved before any download when they are chosen or
    no INT8 IR is installed, so an impossible INT8 build (no images for a real model, no NNCF, no COCOeval for a
    budget) fails first. Without a choice and with an IR installed it stays open: any calibration will do (see
    ``same_parameters``)."""
    if options.precision != IRPrecision.INT8:
        return None, None
    budgeted = options.max_ap_drop is not None
    chosen = options.calibration is not None or options.calibration_size != DEFAULT_CALIBRATION_SIZE or budgeted
    calibration = budget = None
    if budgeted:
        from ssdtool.evaluation.metrics import pycocotools

        pycocotools()  # the budget is scored with COCOeval: no pycocotools, no budget (exit 23, naming the extra)
    validation = (annotated_validation(options.annotations, options.images, options.guard_images)
                  if budgeted and options.annotations is not None and options.images is not None else None)
    if chosen or not xml.is_file():
        calibration = resolve_calibration(entry, options.calibration, options.calibration_size, options.guard_images,
                                          exclude=excluded_paths(validation))
    if budgeted and calibration is not None and options.max_ap_drop is not None:
        validation = validation or agreement_validation(calibration)
        check_disjoint(validation, calibration.files)
        budget = Budget(options.max_ap_drop, validation)
    if not xml.is_file():
        import_nncf()
    return calibration, budget


def settle_calibration(entry: ModelEntry, options: ConvertOptions, calibration: CalibrationSet | None
                       ) -> CalibrationSet:
    """The calibration set a build uses: the one resolved early, else the default for ``entry``."""
    if calibration is not None:
        return calibration
    return resolve_calibration(entry, None, options.calibration_size, options.guard_images)


def guard(reference_xml: Path, int8_xml: Path, entry: ModelEntry, options: ConvertOptions,
          calibration: CalibrationSet, progress: ProgressCallback | None) -> AccuracyReport:
    """The accuracy guard: the INT8 IR against the FP32 IR on held-out images. A failure raises
    :class:`AccuracyError`, unless the caller accepted the drop (then it is recorded as accepted, with a warning)."""
    log.info("accuracy guard: INT8 vs FP32 IR on held-out images (%s) ...", calibration.held_out_description)
    accuracy = accuracy_guard(reference_xml, int8_xml, entry, calibration, input_type=options.input_type,
                              input_layout=options.input_layout, progress=progress)
    if accuracy.passed:
        return accuracy
    figures = (f"{accuracy.matched} of {accuracy.reference_detections} FP32 detections found in the INT8 output "
               f"(recall {accuracy.recall:.4f}) on {accuracy.images} held-out images ({accuracy.held_out}), max "
               f"score difference {accuracy.max_score_diff:.3g}; required: {accuracy.criteria}")
    if not options.accept_accuracy_drop:
        raise AccuracyError(
            f"the INT8 IR of {entry.name} loses too many detections: {figures}. Nothing was installed.",
            hint=f"calibrate on more or more representative images ('ssdtool convert {entry.name} --precision INT8 "
                 "--calibration DIR --calibration-size N'), keep FP32, quantize within an AP budget instead "
                 f"('--max-ap-drop X'), or install it anyway with 'ssdtool convert {entry.name} --precision INT8 "
                 "--accept-accuracy-drop'")
    log.warning("the INT8 IR fails the accuracy guard: %s; installing it anyway (--accept-accuracy-drop)", figures)
    return replace(accuracy, accepted=True)


def check_budget(report: BudgetReport | None, entry: ModelEntry) -> None:
    """An AP budget's outcome: logged, and :class:`AccuracyError` (naming the best drop reached) when not met."""
    if report is None:
        return
    log.info("AP budget %s", report.summary_line())
    if not report.met:
        raise report.refusal(entry.name)


def int8_provenance(options: ConvertOptions, recipe_reason: str | None, calibration: CalibrationSet | None,
                    accuracy: AccuracyReport | None, budget: Budget | None, budget_report: BudgetReport | None
                    ) -> dict[str, Any]:
    """What an INT8 IR's provenance records besides the parameters: recipe, calibration, NNCF's version, and the
    proof that ran (the guard, or the AP budget that replaced it)."""
    record: dict[str, Any] = {
        "parity": "not run for INT8: " + ("accuracy_guard" if budget is None else "accuracy_control")
                  + " compares it with the FP32 IR",
        "int8_recipe": {"recipe": options.int8_recipe, "reason": recipe_reason},
        "calibration": calibration.to_dict() if calibration is not None else None,
        "nncf_version": nncf_version(),
        "accuracy_guard": accuracy.summary() if accuracy is not None else "skipped (--no-verify)",
    }
    if budget is not None:
        record["accuracy_guard"] = "replaced by accuracy_control (--max-ap-drop)"
    if budget_report is not None:
        record["accuracy_control"] = budget_report.to_dict()
    return record
