"""Proof before installing: the parity gate (the IR against onnxruntime on the source ONNX) and the runtime check
(the IR at a device's default inference precision against the IR at f32, on each device ``check_devices`` names).

The image-input IR meets the gate twice: on the network-size images every IR gets (its inner resize is then the
identity, so the graph proper must match as the standard IR's does), and on the same images at their own size
(resized inside the IR by OpenVINO's linear resize, against onnxruntime fed Pillow's bilinear resize on the host),
where the recall floor bounds what the two resizes' difference does to the detections (``ParityReport.resize``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ssdtool import precision
from ssdtool.constants import CPU_DEVICE, DEFAULT_DEVICE, InferencePrecision, IRPrecision
from ssdtool.convert.options import ConvertOptions
from ssdtool.detections import network_detections
from ssdtool.errors import UsageError
from ssdtool.imaging import generated_images, normalized_input, preprocess, raw_input, resize_rgb
from ssdtool.matching import MatchReport, RawDetections, match_detections
from ssdtool.registry import ModelEntry

log = logging.getLogger("ssdtool.convert")

PARITY_IOU = 0.5
PARITY_SEED = 7
# FP32 must reproduce onnxruntime; FP16 weights shift scores a little, so only agreement is asked of it (and of
# INT8 when 'ssdtool check' compares it with onnxruntime; at conversion INT8 meets the accuracy guard instead).
FP32_TOLERANCE = 1e-4
FP16_MIN_RECALL = 0.90


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
    #: The image-input IR: the same images at their own size, resized inside the IR (None for the other IRs).
    #: ``passed`` above is the verdict of both parts.
    resize: ParityReport | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_image"] = list(self.per_image)
        data["resize"] = self.resize.to_dict() if self.resize is not None else None
        return data

def _parity_images(options: ConvertOptions) -> list[np.ndarray]:
    """The gate's generated images (RGB); the runtime check uses the same ones."""
    return generated_images(options.parity_images, seed=PARITY_SEED, size=(640, 480))

def parity_check(source: Path, xml: Path, entry: ModelEntry, options: ConvertOptions,
                 device: str = DEFAULT_DEVICE, inference_precision: str | None = "f32",
                 device_pins: dict[str, str] | None = None,
                 expected_precisions: dict[str, str | None] | None = None) -> ParityReport:
    """Run the source ONNX (onnxruntime, host normalization) and the IR (OpenVINO, raw pixels) on generated images.

    The IR runs at ``inference_precision`` (pinned; None: the device's default; the gate pins f32, so it proves
    the IR rather than the CPU's arithmetic; ``device_pins`` and ``expected_precisions``: per device of a virtual
    one, see :class:`~ssdtool.backends.openvino.OpenVinoEngine`). An FP32 IR at f32
    passes when every onnxruntime detection is found in the IR output and vice versa, boxes and scores within
    1e-4. Otherwise (FP16 or INT8 weights, or a lower inference precision) at least 90% of onnxruntime detections
    must be found (label match, IoU >= 0.5).

    The image-input IR (``options.image_input``) is also fed each image at its own size, resized inside; those
    detections must meet the 90% floor against onnxruntime on the host-resized image (``ParityReport.resize``).
    """
    from ssdtool.backends.onnxruntime import OnnxRuntimeEngine
    from ssdtool.backends.openvino import OpenVinoEngine
    from ssdtool.heads import host_decoder, is_heads

    # A heads model's reference is its host decode (ssdtool.ssd), the same the onnxruntime backend runs.
    reference_engine = OnnxRuntimeEngine(source, decode=host_decoder(entry) if is_heads(entry) else None)
    ir_engine = OpenVinoEngine(xml, device=device, inference_precision=inference_precision, device_pins=device_pins,
                               expected_precisions=expected_precisions)
    ran = ir_engine.inference_precision
    spec = entry.input
    reports: list[tuple[MatchReport, MatchReport]] = []
    whole: list[tuple[MatchReport, MatchReport]] = []  # the image-input IR fed each image at its own size
    for rgb in _parity_images(options):
        resized = resize_rgb(rgb, spec)
        reference = network_detections(reference_engine.infer(normalized_input(resized, spec)), entry, "onnx")
        converted = network_detections(ir_engine.infer(raw_input(resized, entry.convert.color_order,
                                                                 options.input_layout, options.input_type)),
                                       entry, "ir")
        reports.append((match_detections(reference, converted, PARITY_IOU),
                        match_detections(converted, reference, PARITY_IOU)))
        if options.image_input:
            resized_inside = network_detections(ir_engine.infer(preprocess(rgb, entry, form="image")), entry, "image")
            whole.append((match_detections(reference, resized_inside, PARITY_IOU),
                          match_detections(resized_inside, reference, PARITY_IOU)))
    report = _report(reports, options, ran, strict=options.precision == IRPrecision.FP32 and ran == "f32")
    if not options.image_input:
        return report
    resize = _report(whole, options, ran, strict=False)
    return replace(report, passed=report.passed and resize.passed, resize=resize,
                   criteria=f"network-size images: {report.criteria}; the same images at their own size, resized "
                            f"inside the IR: {resize.criteria}")


def _report(reports: list[tuple[MatchReport, MatchReport]], options: ConvertOptions, ran: str | None, strict: bool
            ) -> ParityReport:
    """The gate's verdict and figures over ``reports`` (onnxruntime against the IR, and back, per image):
    ``strict``, every detection matched both ways within :data:`FP32_TOLERANCE`; otherwise the recall floor."""
    forward = [f for f, _ in reports]
    ref_total = sum(r.reference_count for r in forward)
    matched = sum(r.matched for r in forward)
    ir_total = sum(r.candidate_count for r in forward)
    box_diff = max((r.max_box_diff for r in forward), default=0.0)
    score_diff = max((r.max_score_diff for r in forward), default=0.0)
    recall = 1.0 if ref_total == 0 else matched / ref_total
    at = f" at inference precision {ran or 'unknown'}"
    if strict:
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

def check_device_parts(devices: tuple[str, ...]) -> tuple[str, ...]:
    """The physical devices ``devices`` name (a virtual one: each it may pick), each checked present (31 naming
    what is), in order, once each."""
    from ssdtool.backends.openvino_rules import read_device

    parts: list[str] = []
    for device in devices:
        parts += [part for part in read_device(device).parts if part not in parts]
    return tuple(parts)


def runtime_check(xml: Path, entry: ModelEntry, options: ConvertOptions, device: str = DEFAULT_DEVICE
                  ) -> precision.RuntimeCheck | None:
    """The IR at ``device``'s default inference precision against the IR at f32, on the gate's images.

    None when the default is f32 (nothing to check) or the device reports none. Logs the outcome; a failed check
    does not stop the conversion (the IR is proven at f32), it makes ``--inference-precision auto`` run f32 on
    devices of that kind and model.
    """
    from ssdtool.backends.openvino import device_facts

    facts = device_facts(device)
    if facts.default_precision in (None, "f32"):
        return None
    log.info("runtime check: %s (the default of %s, %s) vs f32 on %d generated images ...",
             facts.default_precision, device, facts.name, options.parity_images)
    tensors = [raw_input(resize_rgb(rgb, entry.input), entry.convert.color_order, options.input_layout,
                         options.input_type) for rgb in _parity_images(options)]
    check = measure(xml, tensors, lambda outputs: network_detections(outputs, entry, "ir"), facts, device=device)
    if check.passed:
        log.info("runtime check %s", check.summary())
    else:
        log.warning("runtime check %s; '--inference-precision auto' will run f32 for this IR on this device",
                    check.summary())
    return check


def measure(xml: Path, tensors: Sequence[Any], read: Callable[[dict[str, Any]], RawDetections],
            facts: precision.DeviceFacts, *, device: str | None = None,
            min_recall: float = precision.RUNTIME_MIN_RECALL) -> precision.RuntimeCheck:
    """Run the IR at ``facts.default_precision`` and at f32 on ``tensors`` (on ``device``, default the device
    ``facts`` describe); match detections order-independently.

    ``read`` turns the IR's outputs into network-level detections (:func:`ssdtool.detections.network_detections`).
    Recall is the share of f32 detections found at the default precision; differences are over matched pairs
    (normalized boxes, scores).
    """
    from ssdtool.backends.openvino import OpenVinoEngine, openvino_version

    if facts.default_precision is None:
        raise UsageError(f"{facts.device} reports no default inference precision to check")
    where = device or facts.device
    reference = OpenVinoEngine(xml, device=where, inference_precision=InferencePrecision.F32.value)
    candidate = OpenVinoEngine(xml, device=where, inference_precision=facts.default_precision)
    reports = [match_detections(read(reference.infer(tensor)), read(candidate.infer(tensor)),
                                precision.RUNTIME_CHECK_IOU) for tensor in tensors]
    total = sum(r.reference_count for r in reports)
    matched = sum(r.matched for r in reports)
    recall = 1.0 if total == 0 else matched / total
    return precision.RuntimeCheck(
        device=facts.device, device_name=facts.name, precision=facts.default_precision,
        passed=recall >= min_recall, images=len(reports), reference_detections=total, matched=matched,
        recall=round(recall, 6), min_recall=min_recall,
        max_box_diff=max((r.max_box_diff for r in reports), default=0.0),
        max_score_diff=max((r.max_score_diff for r in reports), default=0.0),
        openvino_version=openvino_version(), checked=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def record_missing_runtime_checks(xml: Path, entry: ModelEntry, options: ConvertOptions, provenance: dict[str, Any],
                                  rewrite: Callable[[Path, dict[str, Any]], None]
                                  ) -> tuple[precision.RuntimeCheck, ...]:
    """On the up-to-date path: check and record the IR at the default precision of each device of
    ``check_devices`` that no record speaks for.

    An IR converted on another CPU class or for another device (or before runtime checks existed) gets its check
    on the first ``ssdtool convert --device D`` here, so ``--inference-precision auto`` can then use D's faster
    default. Nothing is measured when a record exists or the default is f32; nothing is recorded when the IR's
    folder cannot be written. ``rewrite(xml, record)`` writes a provenance change.
    """
    from ssdtool.backends.openvino import device_facts

    checks: list[precision.RuntimeCheck] = []
    for device in options.check_devices:
        facts = device_facts(device)
        if facts.default_precision in (None, "f32") or any(
                c.matches(facts) for c in precision.recorded_checks(provenance)):
            continue
        if not os.access(xml, os.W_OK) or not os.access(xml.parent, os.W_OK):
            log.info("%s has no runtime check for %s on %s, and its folder is read-only: not recorded", xml,
                     facts.default_precision, "this CPU" if device == CPU_DEVICE else device)
            continue
        check = runtime_check(xml, entry, options, device)
        if check is not None:
            provenance = {**provenance, precision.PROVENANCE_KEY: precision.with_check(provenance, check)}
            rewrite(xml, {precision.PROVENANCE_KEY: provenance[precision.PROVENANCE_KEY]})
            checks.append(check)
    return tuple(checks)
