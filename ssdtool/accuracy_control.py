"""INT8 within an accuracy budget, the measuring side: NNCF's ``quantize_with_accuracy_control`` with ssdtool's COCO
AP as its validation function. Runs in the INT8 child process (:mod:`ssdtool.quantize`); what the figures mean is
in :mod:`ssdtool.accuracy_budget`.

How NNCF uses the function (``nncf/quantization/algorithms/accuracy_control``): it quantizes every layer it can,
validates the FP32 and the quantized model on all validation images, and while the drop exceeds the budget it ranks
the groups of quantizers (one validation per group, every image, since the ranking subset is the whole set), reverts
the worst group to floating point and validates again, re-ranking when a step makes things worse. Validation is
compiled by NNCF at f32, so the budget compares the models, not the CPU's arithmetic. Its cost grows with the number
of layers times the held-out images; ``docs/convert.md`` has the measured figures.

Which layers run in INT8 is read from the compiled model's runtime graph (the layers OpenVINO executes with 8-bit
inputs), not from where the quantizers sit: that is what the CPU does, and what the speed depends on.
"""

from __future__ import annotations

import hashlib
import logging
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssdtool.accuracy_budget import ANNOTATIONS, DIGITS, Budget, BudgetReport, Latency
from ssdtool.calibration import CalibrationSet, held_out_images, load_rgb, network_input
from ssdtool.constants import CPU_DEVICE, Int8Phase
from ssdtool.detections import detections_from_arrays, network_detections
from ssdtool.errors import ConversionError, UsageError
from ssdtool.registry import ModelEntry

log = logging.getLogger("ssdtool.quantize")

#: Runtime layer types that carry weights (what INT8 speeds up), and the runtime precisions that are 8-bit.
WEIGHTED_LAYERS = frozenset({"Convolution", "Deconvolution", "FullyConnected", "MatMul"})
INT8_PRECISIONS = frozenset({"u8", "i8"})
#: OpenVINO's ONNX frontend names a convolution without its bias "<node>/WithoutBiases"; the node name is shorter.
_FRONTEND_SUFFIX = "/WithoutBiases"
#: An image without ground truth has no AP (COCOeval's -1): nothing on it can be lost, so it counts as 1.
NOTHING_TO_LOSE = 1.0
LATENCY_RUNS = 5
LATENCY_SECONDS = 3.0
MAX_LATENCY_RUNS = 100
F32 = {"INFERENCE_PRECISION_HINT": "f32"}

Progress = Callable[[str, int, int, int | None, float | None], None]


@dataclass(frozen=True)
class ValidationImage:
    image_id: int
    tensor: np.ndarray
    width: int
    height: int


@dataclass(frozen=True)
class RuntimeLayers:
    """What a compiled model runs: its weighted layers in INT8 and in floating point (names of the source's nodes),
    and a signature of its runtime layers and their precisions, which tells the models NNCF made apart."""

    int8: tuple[str, ...]
    floating: tuple[str, ...]
    signature: str


def runtime_layers(compiled: Any) -> RuntimeLayers:
    """The :class:`RuntimeLayers` of a compiled model, read from its runtime graph. The signature counts the other
    layers by type and precision rather than naming them: OpenVINO numbers the names of nodes it creates."""
    int8: list[str] = []
    floating: list[str] = []
    others: Counter[tuple[str, str]] = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer_type = info["layerType"].astype(str) if "layerType" in info else ""
        runtime = info["runtimePrecision"].astype(str).lower() if "runtimePrecision" in info else ""
        if layer_type in WEIGHTED_LAYERS:
            name = op.get_friendly_name().removesuffix(_FRONTEND_SUFFIX)
            (int8 if runtime in INT8_PRECISIONS else floating).append(name)
        else:
            others[(layer_type, runtime)] += 1
    digest = hashlib.sha256(repr((sorted(int8), sorted(floating), sorted(others.items()))).encode())
    return RuntimeLayers(tuple(sorted(int8)), tuple(sorted(floating)), digest.hexdigest())


def _named_outputs(outputs: Any) -> dict[str, np.ndarray]:
    """A compiled model's results keyed by every tensor name (network_detections reads the registry's names)."""
    return {name: np.asarray(value) for port, value in outputs.items() for name in port.get_names()}


def coco_records(outputs: dict[str, np.ndarray], entry: ModelEntry, image: ValidationImage) -> list[dict[str, Any]]:
    """COCO results records of one image: every detection the IR returns (threshold 0, as eval scores them)."""
    found = network_detections(outputs, entry, "ir")
    return [{"image_id": image.image_id, "category_id": d.coco_category_id, "bbox": list(d.coco_bbox),
             "score": d.score}
            for d in detections_from_arrays(found.boxes, found.labels, found.scores, entry,
                                            (image.width, image.height), threshold=0.0)
            if d.coco_category_id is not None]


class Validator:
    """ssdtool's metric as NNCF's validation function: COCO AP of a compiled model on the validation images.

    NNCF calls it with a compiled model and an iterable of items (indices into ``images``); every run over all the
    images is remembered with the model's :class:`RuntimeLayers`, so the report can name the figures of the FP32
    model (no layer in INT8), of NNCF's all-INT8 model and of the returned one (by signature), and the best drop of
    a model that kept layers in INT8, without validating any of them again.
    """

    def __init__(self, entry: ModelEntry, images: Sequence[ValidationImage], dataset: Any,
                 progress: Progress | None = None) -> None:
        from ssdtool.evaluation.metrics import ground_truth

        self.entry, self.images, self.dataset, self.progress = entry, list(images), dataset, progress
        self.gt = ground_truth(dataset)
        self.runs = 0
        self.measured: list[tuple[float, RuntimeLayers]] = []

    def __call__(self, compiled: Any, items: Iterable[int]) -> float:
        from ssdtool.evaluation.metrics import evaluate_detections

        chosen = [self.images[index] for index in items]
        self.runs += 1
        records: list[dict[str, Any]] = []
        for done, image in enumerate(chosen, start=1):
            records += coco_records(_named_outputs(compiled(image.tensor)), self.entry, image)
            self._report(done, len(chosen), None)
        stats = evaluate_detections(self.dataset, records, [image.image_id for image in chosen], gt=self.gt).stats
        value = NOTHING_TO_LOSE if stats["AP"] is None else round(float(stats["AP"]), DIGITS)
        if len(chosen) == len(self.images):
            self.measured.append((value, runtime_layers(compiled)))
        self._report(len(chosen), len(chosen), value)
        return value

    def value_of(self, layers: RuntimeLayers) -> float | None:
        """The metric of a model already validated on every image, found by its signature; None if never."""
        return next((value for value, measured in self.measured if measured.signature == layers.signature), None)

    def _report(self, done: int, total: int, value: float | None) -> None:
        if self.progress is not None:
            self.progress(Int8Phase.VALIDATE.value, done, total, self.runs, value)


# ------------------------------------------------------------------------------------------------ images, truth
def validation_images(entry: ModelEntry, budget: Budget, calibration: CalibrationSet, input_type: str,
                      input_layout: str) -> list[ValidationImage]:
    """The held-out images as IR inputs, made once (NNCF validates on them many times)."""
    validation = budget.validation
    if validation.kind == ANNOTATIONS:
        pixels = [(image_id, load_rgb(path)) for image_id, path in zip(validation.image_ids, validation.files,
                                                                        strict=True)]
    else:
        pixels = [(index, rgb) for index, (_, rgb) in enumerate(held_out_images(calibration))]
    return [ValidationImage(image_id, network_input(rgb, entry, input_type, input_layout), int(rgb.shape[1]),
                            int(rgb.shape[0])) for image_id, rgb in pixels]


def ground_truth(entry: ModelEntry, budget: Budget, images: Sequence[ValidationImage], reference_xml: Path,
                 progress: Progress | None = None) -> Any:
    """The checked COCO dataset the metric scores against: the annotations' subset, or FP32's own detections."""
    from ssdtool.evaluation.dataset import check_annotations

    validation = budget.validation
    if validation.kind == ANNOTATIONS:
        return check_annotations(validation.document, validation.annotations or "<annotations>")
    from ssdtool.backends.openvino import OpenVinoEngine
    from ssdtool.evaluation.agreement import DEFAULT_REFERENCE_SCORE, AgreementImage, pseudo_ground_truth

    engine = OpenVinoEngine(reference_xml, inference_precision="f32")  # FP32 at f32 is the reference, as the guard's
    records: list[dict[str, Any]] = []
    for done, image in enumerate(images, start=1):
        records += coco_records(engine.infer(image.tensor), entry, image)
        if progress is not None:
            progress(Int8Phase.REFERENCE.value, done, len(images), None, None)
    dataset = pseudo_ground_truth([AgreementImage(image.image_id, image.width, image.height) for image in images],
                                  records, DEFAULT_REFERENCE_SCORE, name="the FP32 IR")
    if not dataset.annotation_count:
        raise UsageError(f"the FP32 IR finds nothing scoring {DEFAULT_REFERENCE_SCORE} or more on the "
                         f"{validation.description}, so INT8's agreement with it cannot be measured",
                         hint="measure the budget on other images (--calibration DIR holds some out) or against "
                              "annotations (--annotations FILE --images DIR)")
    return dataset


# ------------------------------------------------------------------------------------------------ quantization
def quantize_within_budget(nncf: Any, model: Any, calibration_dataset: Any, subset_size: int, advanced: Any,
                           entry: ModelEntry, calibration: CalibrationSet, budget: Budget, reference_xml: Path,
                           intermediate_dir: Path, *, input_type: str, input_layout: str,
                           progress: Progress | None = None) -> tuple[Any, BudgetReport]:
    """Quantize ``model`` with NNCF's accuracy control; return the model NNCF returned and the figures.

    ``intermediate_dir`` receives NNCF's model with every layer in INT8 (``intermediate_model.xml``), which the
    latency measurement compares with the returned one.
    """
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    images = validation_images(entry, budget, calibration, input_type, input_layout)
    validator = Validator(entry, images, ground_truth(entry, budget, images, reference_xml, progress), progress)
    validation_dataset = nncf.Dataset(list(range(len(images))))
    intermediate_dir.mkdir(parents=True, exist_ok=True)
    log.info("INT8 within %s drop %g on %s ...", budget.validation.metric, budget.max_drop,
             budget.validation.description)
    quantized = nncf.quantize_with_accuracy_control(
        model, calibration_dataset, validation_dataset, validator, max_drop=budget.max_drop,
        drop_type=nncf.DropType.ABSOLUTE, preset=nncf.QuantizationPreset.PERFORMANCE,
        target_device=nncf.TargetDevice.ANY, subset_size=subset_size, fast_bias_correction=True,
        advanced_quantization_parameters=advanced,
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            ranking_subset_size=len(images), num_ranking_workers=1, intermediate_model_dir=str(intermediate_dir)))
    core = ov.Core()
    compiled = core.compile_model(quantized, CPU_DEVICE, F32)  # as NNCF compiles what it validates: same signatures
    installed = runtime_layers(compiled)
    all_int8 = runtime_layers(core.compile_model(str(intermediate_dir / "intermediate_model.xml"), CPU_DEVICE, F32))
    value = validator.value_of(installed)
    if value is None:
        value = validator(compiled, range(len(images)))
    return quantized, _report(budget, validator, value, installed, all_int8)


def _report(budget: Budget, validator: Validator, installed_value: float, installed: RuntimeLayers,
            all_int8: RuntimeLayers) -> BudgetReport:
    measured = validator.measured
    fp32 = next((value for value, layers in measured if not layers.int8), None)
    all_int8_value = validator.value_of(all_int8)
    if fp32 is None or all_int8_value is None:
        raise ConversionError("NNCF's accuracy control did not validate the FP32 and the quantized model",
                              hint="report this with 'ssdtool --version' and 'pip show nncf'")
    drops = [fp32 - value for value, layers in measured if layers.int8]
    return BudgetReport(
        max_drop=budget.max_drop, metric=budget.validation.metric, validation=budget.validation.to_dict(),
        fp32=fp32, all_int8=all_int8_value, installed=installed_value,
        best_drop=round(min(drops), DIGITS) if drops else None,
        layers=len(installed.int8) + len(installed.floating), all_int8_layers=len(all_int8.int8),
        int8_layers=len(installed.int8), float_layers=installed.floating, validation_runs=validator.runs)


def measure_latency(installed_xml: Path, all_int8_xml: Path, tensor: np.ndarray,
                    progress: Progress | None = None) -> Latency:
    """Median latency of both IRs at the CPU's default precision, one request at a time, runs interleaved so a
    change in machine load hits both alike: at least :data:`LATENCY_RUNS` each, more for a fast model (about
    :data:`LATENCY_SECONDS` in all, at most :data:`MAX_LATENCY_RUNS`)."""
    from ssdtool.backends.openvino import OpenVinoEngine

    engines = [OpenVinoEngine(all_int8_xml), OpenVinoEngine(installed_xml)]
    started = time.perf_counter()
    for engine in engines:
        engine.infer(tensor)  # the first inference allocates; not timed, but it sizes the measurement
    first = max(time.perf_counter() - started, 1e-6)
    runs = min(MAX_LATENCY_RUNS, max(LATENCY_RUNS, math.ceil(LATENCY_SECONDS / first)))
    times: list[list[float]] = [[], []]
    for run in range(1, runs + 1):
        for index, engine in enumerate(engines):
            started = time.perf_counter()
            engine.infer(tensor)
            times[index].append(time.perf_counter() - started)
        if progress is not None:
            progress(Int8Phase.LATENCY.value, run, runs, None, None)
    return Latency(all_int8_ms=round(statistics.median(times[0]) * 1000, 2),
                   installed_ms=round(statistics.median(times[1]) * 1000, 2), runs=runs,
                   inference_precision=engines[1].inference_precision)
