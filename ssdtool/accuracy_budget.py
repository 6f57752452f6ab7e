"""INT8 within an accuracy budget (``convert --precision INT8 --max-ap-drop X``): the images the budget is measured
on, the budget's figures, and what they mean. Light imports only (the command, provenance and ``info`` use it); the
measuring itself runs in the INT8 child process (:mod:`ssdtool.accuracy_control`).

The metric is COCO AP (COCOeval ``stats[0]``, IoU 0.50:0.95, 100 detections per image), run by ssdtool's COCOeval
wrapper (:mod:`ssdtool.evaluation.metrics`) on held-out images that never calibrate:

* **true AP** with ``--annotations FILE --images DIR``: ``--held-out N`` annotated images spread over the file, whose
  image files are then never calibration images;
* **agreement AP** otherwise: the FP32 IR's own detections on the held-out images (the guard's: files left over from
  ``--calibration``, or generated images of another seed) are the ground truth. It measures fidelity to FP32, not
  accuracy; FP32 scores 1 by construction.

The budget is an absolute drop in AP (0.01 is one AP point). It is met when the IR NNCF returns drops at most that
much *and* keeps at least one layer in INT8: a model with every layer back in floating point is the FP32 model, not
an INT8 one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ssdtool.checked import is_finite_number, is_int
from ssdtool.errors import AccuracyError, UsageError

log = logging.getLogger("ssdtool.quantize")

ANNOTATIONS = "annotations"
AGREEMENT = "agreement"
METRICS = {ANNOTATIONS: "COCO AP", AGREEMENT: "agreement AP"}
#: A drop in AP lies in [-1, 1]: AP is a fraction. A negative budget asks INT8 to score higher than FP32.
MIN_DROP, MAX_DROP = -1.0, 1.0
#: Digits the figures are recorded with (COCOeval's own precision is far finer than any budget anyone sets).
DIGITS = 6


def check_max_ap_drop(value: Any, flag: str = "--max-ap-drop") -> float:
    """The budget as a float in [-1, 1], or :class:`UsageError` (a drop of AP, which is a fraction, lies there)."""
    if isinstance(value, bool) or not is_finite_number(value) or not MIN_DROP <= float(value) <= MAX_DROP:
        raise UsageError(f"{flag} must be a finite number between {MIN_DROP:g} and {MAX_DROP:g} (an absolute drop of "
                         f"COCO AP, which is a fraction: 0.01 is one AP point), got {value!r}",
                         hint=f"pass e.g. {flag} 0.01")
    return float(value)


@dataclass(frozen=True)
class ValidationSet:
    """The held-out images the budget is measured on, and their ground truth.

    ``kind``: ``annotations`` (``document`` is the COCO subset of the chosen images: their image records,
    annotations and the categories; ``files`` their paths in ``image_ids`` order) or ``agreement`` (``files`` the
    held-out image files, or none for generated images of ``generated_seed``). ``identity`` names the images and
    ground truth for provenance and the idempotency key.
    """

    kind: str
    count: int
    identity: str
    description: str
    files: tuple[Path, ...] = field(default=())
    image_ids: tuple[int, ...] = field(default=())
    annotations: str | None = None
    document: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    generated_seed: int | None = None

    @property
    def metric(self) -> str:
        return METRICS[self.kind]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "metric": self.metric, "images": self.count,
                                "identity": self.identity, "description": self.description}
        if self.annotations is not None:
            data["annotations"] = self.annotations
        return data


def annotated_validation(annotations: Path, images: Path, count: int,
                         calibration_folder: Path | None = None) -> ValidationSet:
    """``count`` annotated images of ``annotations`` present in ``images``, spread evenly over the file's order.

    Images listed in the file but missing from the folder are skipped (and counted in the log); none present is a
    :class:`UsageError`. ``calibration_folder`` only words the log line.
    """
    from ssdtool.calibration import spread
    from ssdtool.evaluation.dataset import image_path, load_annotations

    if count < 1:
        raise UsageError(f"--held-out must be at least 1, got {count}")
    if not images.is_dir():
        what = "is a file" if images.exists() else "does not exist"
        raise UsageError(f"--images {images} {what}; expected the folder of the annotated images",
                         hint="pass --images DIR, the folder the annotation file's file_name entries are under")
    dataset = load_annotations(annotations)
    present = [image for image in dataset.images if image_path(images, image).is_file()]
    if not present:
        raise UsageError(f"none of the {len(dataset.images)} images of {annotations} is in {images}",
                         hint="pass --images DIR, the folder the annotation file's file_name entries are under")
    if len(present) < len(dataset.images):
        log.info("%d of the %d images of %s are not in %s; the budget is measured on images that are",
                 len(dataset.images) - len(present), len(dataset.images), annotations, images)
    chosen = spread(present, count)
    ids = {image.id for image in chosen}
    files = tuple(image_path(images, image) for image in chosen)
    document = {"images": [item for item in dataset.data["images"] if item.get("id") in ids],
                "annotations": [item for item in dataset.data["annotations"] if item["image_id"] in ids],
                "categories": list(dataset.data["categories"])}
    digest = hashlib.sha256(f"annotations\t{dataset.sha256}\n".encode())
    for image, path in zip(chosen, files, strict=True):
        digest.update(f"{image.id}\t{_file_sha256(path)}\n".encode())
    return ValidationSet(kind=ANNOTATIONS, count=len(chosen), identity=f"sha256:{digest.hexdigest()}",
                         description=f"{len(chosen)} annotated images of {images} ({annotations})", files=files,
                         image_ids=tuple(image.id for image in chosen), annotations=os.fspath(annotations),
                         document=document)


def agreement_validation(calibration: Any) -> ValidationSet:
    """The held-out images of ``calibration`` (:class:`ssdtool.calibration.CalibrationSet`), scored against FP32."""
    from ssdtool.calibration import GENERATED, GUARD_SEED

    if calibration.kind == GENERATED:
        return ValidationSet(kind=AGREEMENT, count=calibration.guard_images,
                             identity=f"generated:seed={GUARD_SEED}:count={calibration.guard_images}",
                             description=f"{calibration.guard_images} generated images (seed {GUARD_SEED})",
                             generated_seed=GUARD_SEED)
    digest = hashlib.sha256()
    for path in calibration.held_out:
        digest.update(f"{path.relative_to(calibration.folder).as_posix()}\t{_file_sha256(path)}\n".encode())
    return ValidationSet(kind=AGREEMENT, count=len(calibration.held_out), identity=f"sha256:{digest.hexdigest()}",
                         description=calibration.held_out_description, files=tuple(calibration.held_out))


def check_disjoint(validation: ValidationSet, calibration_files: Sequence[Path]) -> None:
    """No calibration image may be a validation image, by path or by content (a copy under another name)."""
    if validation.kind != ANNOTATIONS or not calibration_files:
        return
    by_content = {_file_sha256(path): path for path in validation.files}
    for path in calibration_files:
        twin = by_content.get(_file_sha256(path))
        if twin is not None:
            raise UsageError(f"calibration image {path} has the same bytes as the validation image {twin}; the budget "
                             "must be measured on images that did not calibrate the model",
                             hint="remove the copy from the --calibration folder, or calibrate on another folder")


def excluded_paths(validation: ValidationSet | None) -> Collection[Path]:
    """What calibration must leave out: the validation images (annotated images may sit in the calibration folder)."""
    if validation is None or validation.kind != ANNOTATIONS:
        return ()
    return validation.files


def _need(data: dict[str, Any], name: str, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name}: expected {expected}, found {data.get(name)!r}")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Budget:
    """What ``--max-ap-drop`` asks: an absolute AP drop, measured on ``validation``."""

    max_drop: float
    validation: ValidationSet

    def parameters(self) -> dict[str, Any]:
        """The idempotency key's part: the budget, the metric and the images (another budget is another model)."""
        return {"max_ap_drop": self.max_drop, "metric": self.validation.metric,
                "validation": self.validation.identity, "images": self.validation.count}


# ------------------------------------------------------------------------------------------------ the outcome
@dataclass(frozen=True)
class Latency:
    """A short measurement of what the layers kept in floating point cost: median latency of the IR with every
    layer in INT8 and of the IR as installed, at the CPU's default inference precision, one request at a time."""

    all_int8_ms: float
    installed_ms: float
    runs: int
    inference_precision: str | None

    @property
    def ratio(self) -> float:
        return self.installed_ms / self.all_int8_ms if self.all_int8_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": round(self.ratio, 4)}


@dataclass(frozen=True)
class BudgetReport:
    """The figures of one accuracy-controlled quantization.

    ``fp32`` is the FP32 IR's metric; ``all_int8`` that of the IR with every quantizable layer in INT8 (NNCF's
    first quantization); ``installed`` that of the IR NNCF returned. ``best_drop`` is the smallest drop of any
    model NNCF measured that kept at least one layer in INT8 (None when it measured none). ``layers`` counts the
    weighted layers (convolutions, matrix multiplications), ``int8_layers`` those the returned IR runs in INT8,
    ``float_layers`` names the others.
    """

    max_drop: float
    metric: str
    validation: dict[str, Any]
    fp32: float
    all_int8: float
    installed: float
    best_drop: float | None
    layers: int
    all_int8_layers: int
    int8_layers: int
    float_layers: tuple[str, ...]
    validation_runs: int
    latency: Latency | None = None

    @property
    def drop(self) -> float:
        return round(self.fp32 - self.installed, DIGITS)

    @property
    def all_int8_drop(self) -> float:
        return round(self.fp32 - self.all_int8, DIGITS)

    @property
    def met(self) -> bool:
        return self.drop <= self.max_drop and self.int8_layers > 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["float_layers"] = list(self.float_layers)
        data["latency"] = self.latency.to_dict() if self.latency is not None else None
        return {**data, "drop": self.drop, "all_int8_drop": self.all_int8_drop, "met": self.met}

    @classmethod
    def from_dict(cls, data: Any) -> BudgetReport:
        """A report from :meth:`to_dict`'s form: the INT8 child's result, or an IR's provenance, which is read and
        never trusted (:class:`ValueError` names the first field that is missing or not what it should be)."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping, found {type(data).__name__}")
        for name in ("max_drop", "fp32", "all_int8", "installed"):
            _need(data, name, is_finite_number(data.get(name)), "a finite number")
        _need(data, "best_drop", data.get("best_drop") is None or is_finite_number(data.get("best_drop")),
              "a finite number or null")
        for name in ("layers", "all_int8_layers", "int8_layers", "validation_runs"):
            _need(data, name, is_int(data.get(name)) and data[name] >= 0, "a count")
        validation = data.get("validation")
        _need(data, "validation", isinstance(validation, dict) and isinstance(validation.get("description"), str),
              "a mapping with a description")
        _need(data, "metric", isinstance(data.get("metric"), str), "a string")
        names = data.get("float_layers")
        _need(data, "float_layers", isinstance(names, list) and all(isinstance(n, str) for n in names),
              "a list of layer names")
        latency = data.get("latency")
        if latency is not None:
            _need(data, "latency", isinstance(latency, dict) and all(
                is_finite_number(latency.get(k)) for k in ("all_int8_ms", "installed_ms"))
                and is_int(latency.get("runs")) and isinstance(latency.get("inference_precision"), (str, type(None))),
                "a latency measurement")
        return cls(max_drop=float(data["max_drop"]), metric=data["metric"], validation=dict(validation),
                   fp32=float(data["fp32"]), all_int8=float(data["all_int8"]), installed=float(data["installed"]),
                   best_drop=None if data["best_drop"] is None else float(data["best_drop"]),
                   layers=data["layers"], all_int8_layers=data["all_int8_layers"], int8_layers=data["int8_layers"],
                   float_layers=tuple(names), validation_runs=data["validation_runs"],
                   latency=None if latency is None else Latency(
                       all_int8_ms=float(latency["all_int8_ms"]), installed_ms=float(latency["installed_ms"]),
                       runs=latency["runs"], inference_precision=latency["inference_precision"]))

    def refusal(self, model: str) -> AccuracyError:
        """The exit-24 error for a budget that was not met: what was asked, the best reached, what to do."""
        metric = self.metric
        if self.int8_layers == 0 and self.drop <= self.max_drop:
            what = (f"the budget is met only with every one of the {self.layers} layers back in floating point, which "
                    "is the FP32 model, not an INT8 one")
        else:
            what = (f"the IR NNCF returned keeps {self.int8_layers} of {self.layers} layers in INT8 at {metric} "
                    f"{self.installed:.4f}, a drop of {self.drop:.4f}")
        best = ("no model NNCF measured kept a layer in INT8" if self.best_drop is None else
                f"the best drop reached with layers in INT8 was {self.best_drop:.4f}")
        if self.best_drop is not None and self.best_drop > self.max_drop:
            reachable = math.ceil(round(self.best_drop * 1e4, 6)) / 1e4
            hint = (f"the best model measured had a drop of {reachable:g}: allow it with '--max-ap-drop "
                    f"{reachable:g}', or ")
        else:
            hint = "allow a larger drop, "
        return AccuracyError(
            f"the INT8 IR of {model} cannot meet --max-ap-drop {self.max_drop:g}: FP32 scores {metric} "
            f"{self.fp32:.4f} on {self.validation['description']}; every layer in INT8 scores {self.all_int8:.4f} "
            f"(a drop of {self.all_int8_drop:.4f}); {what}; {best}. Nothing was installed.",
            hint=hint + "calibrate on more or more representative images, or keep FP32")

    def summary_line(self) -> str:
        """One line for people: the verdict, both figures and the drop, what stayed in floating point and its cost."""
        kept = (f"{len(self.float_layers)} of {self.layers} layers kept in floating point"
                if self.float_layers else f"all {self.layers} layers in INT8")
        cost = (f"; latency {self.latency.installed_ms:.4g} ms vs {self.latency.all_int8_ms:.4g} ms with every layer "
                f"in INT8 ({self.latency.ratio:.2f}x at {self.latency.inference_precision or 'the default precision'})"
                if self.latency is not None else "")
        verdict = "met" if self.met else "NOT met"
        return (f"{verdict}: {self.metric} {self.installed:.4f} vs FP32 {self.fp32:.4f} (drop {self.drop:.4f}, budget "
                f"{self.max_drop:g}; every layer in INT8: {self.all_int8:.4f}) on {self.validation['description']}; "
                f"{kept}{cost}")


def describe(recorded: Any) -> list[str] | None:
    """Lines for people about an IR's ``accuracy_control`` provenance record: the summary, then the layers kept in
    floating point; None when there is no record; a record that does not read as one is shown as it is."""
    if recorded is None:
        return None
    try:
        report = BudgetReport.from_dict(recorded)
    except ValueError as exc:
        return [f"unreadable record ({exc}): {recorded!r}"]
    return [report.summary_line(), *([f"kept in floating point: {', '.join(report.float_layers)}"]
                                     if report.float_layers else [])]
