"""INT8 post-training quantization of the converted IR with NNCF, and the accuracy guard that gates installing it.

Where quantization sits: NNCF quantizes the *finished* FP32 ``openvino.Model``, after the output rewrite and
after ``PrePostProcessor`` folded the channel reversal, mean and scale into the graph. So:

* the calibration dataset yields exactly what detection feeds the IR (raw 0-255 BGR pixels from
  :func:`ssdtool.imaging.raw_input`): one preprocessing path for calibration, the guard and detection;
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
quantized. NNCF's own progress bars and log lines are kept off stdout: progress is reported through a callback
(:class:`QuantizeEvent`) that the CLI renders on stderr, and NNCF's log records go to the ``ssdtool`` logger.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ssdtool.constants import Int8Recipe
from ssdtool.errors import DependencyError, InputError, UsageError
from ssdtool.imaging import generated_images, raw_input, resize_rgb
from ssdtool.matching import MatchReport, RawDetections, match_detections
from ssdtool.registry import ModelEntry

log = logging.getLogger("ssdtool.quantize")

GENERATED = "generated"
DEFAULT_CALIBRATION_SIZE = 300  # NNCF's own default subset size
CALIBRATION_SEED = 0
# Held-out generated images come from another seed, so no guard image was seen during calibration.
GUARD_SEED = 4242
GUARD_IMAGES = 8
GUARD_IOU = 0.5
# The floor: 90% of the FP32 IR's detections must reappear in the INT8 output (same label, IoU >= 0.5). The
# same floor as the FP16 parity gate. Trained weights quantize well above it; the synthetic twin's random weights
# sit closer to it (see docs/convert.md).
GUARD_MIN_RECALL = 0.90
GENERATED_SIZE = (640, 480)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
INSTALL_HINT = "pip install 'ssdtool[int8]'"
# What determines the INT8 graph besides the FP32 graph and the calibration images; part of the idempotency key.
# Bump "recipe" when these change. overflow_fix "enable" (the portable recipe) quantizes every layer's weights to 7
# bits instead of only the first layer's (NNCF's default, the vnni recipe): CPUs without VNNI (AVX2) multiply u8 x i8
# pairs with pmaddubsw, which saturates at int16, and 7-bit weights cannot saturate it. On the 1200 px twin this
# halved the worst score difference against FP32 on an AVX2 CPU (0.22 -> 0.10) and raised the share of FP32
# detections kept; on VNNI CPUs it is not needed and costs one bit of weight precision (docs/convert.md has the
# figures of both recipes). Activation ranges: NNCF's default (mean of per-image min/max) kept more detections
# there than histogram-based ranges.
QUANTIZATION = {"tool": "nncf.quantize", "preset": "performance", "target_device": "ANY",
                "fast_bias_correction": True, "overflow_fix": "enable", "recipe": 1}
_OVERFLOW_FIX = {Int8Recipe.PORTABLE: "enable", Int8Recipe.VNNI: "first_layer_only"}


def quantization_settings(recipe: str | Int8Recipe = Int8Recipe.PORTABLE) -> dict[str, Any]:
    """The NNCF settings of ``recipe``, as recorded in provenance and compared for idempotency.

    The portable recipe's settings are exactly those of IRs made before recipes had names, so those stay current.
    """
    chosen = Int8Recipe.parse(recipe, "INT8 recipe")
    return {**QUANTIZATION, "overflow_fix": _OVERFLOW_FIX[chosen]}  # type: ignore[index]


def recipe_of(settings: Any) -> str | None:
    """The recipe whose settings ``settings`` (from provenance) are; None for unknown settings."""
    return next((r.value for r in Int8Recipe if quantization_settings(r) == settings), None)


def default_recipe() -> tuple[Int8Recipe, str]:
    """The recipe for an INT8 build that names none, and why: chosen by the converting CPU's int8 arithmetic.

    Measured on the 1200 px twin (benchmarks/bench_int8_recipes.py, docs/convert.md#int8-recipes): where int8
    products accumulate in 32 bits (VNNI, AMX, ARM), NNCF's default keeps more FP32 detections than 7-bit weights
    (1000 vs 987 of 1037) with a third of the worst score difference (0.08 vs 0.21). Where they may saturate (AVX2)
    or the CPU is unknown, 7-bit weights are exact by construction.
    """
    from ssdtool import cpu

    if cpu.exact_int8_products():
        return Int8Recipe.VNNI, ("chosen for this CPU: its int8 products accumulate without saturation (VNNI, AMX "
                                 "or ARM dot products), so 8-bit weights keep more accuracy")
    return Int8Recipe.PORTABLE, ("chosen for this CPU: it has no VNNI/AMX (or reports no flags), so 8-bit weight "
                                 "products could saturate; 7-bit weights are exact on every CPU")


def recipe_warning(provenance: dict[str, Any] | None, model: str) -> str | None:
    """A warning when an INT8 IR of the vnni recipe runs on a CPU whose int8 products may saturate, else None."""
    from ssdtool import cpu

    settings = ((provenance or {}).get("parameters") or {}).get("quantization")
    if recipe_of(settings) != Int8Recipe.VNNI.value or cpu.exact_int8_products() is not False:
        return None
    return (f"{model}'s INT8 IR was quantized with the vnni recipe (8-bit weights, for CPUs with VNNI or AMX); this "
            "CPU has neither, so its int8 products may saturate and lose accuracy. Reconvert it here with 'ssdtool "
            f"convert {model} --precision INT8 --int8-recipe portable --force'")


@dataclass(frozen=True)
class QuantizeEvent:
    """Progress of one INT8 phase: ``calibrate`` (statistics collection) or ``guard`` (held-out comparison)."""

    phase: str
    done: int
    total: int


ProgressCallback = Callable[[QuantizeEvent], None]


@dataclass(frozen=True)
class CalibrationSet:
    """The images NNCF collects statistics on, and the held-out images for the accuracy guard.

    ``identity`` names the calibration images for provenance and the idempotency key: ``generated:seed=N`` or
    ``sha256:HEX`` over the sorted lines ``relative/path<TAB>sha256 of the file``, so renaming or editing an image
    changes it and moving the folder does not.
    """

    kind: str  # "generated" or "files"
    count: int
    identity: str
    folder: Path | None = None
    files: tuple[Path, ...] = field(default=())
    held_out: tuple[Path, ...] = field(default=())
    seed: int | None = None
    guard_images: int = GUARD_IMAGES

    @property
    def held_out_description(self) -> str:
        if self.kind == GENERATED:
            return f"generated:seed={GUARD_SEED}"
        return f"{len(self.held_out)} files of {self.folder} not used for calibration"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "count": self.count, "identity": self.identity}
        if self.kind == GENERATED:
            data["seed"] = self.seed
        else:
            data["sha256"] = self.identity.removeprefix("sha256:")
            data["folder"] = str(self.folder)
            data["held_out_files"] = len(self.held_out)
        return data


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


# ------------------------------------------------------------------------------------------------ calibration
def is_synthetic(entry: ModelEntry) -> bool:
    """True when the model is built by ssdtool's synthetic twin builder (every source is a ``synthetic:`` URL)."""
    return all(urlsplit(url).scheme.lower() == "synthetic" for url in entry.primary_file.sources)


def _spread(items: Sequence[Path], count: int) -> list[Path]:
    """``count`` items spread evenly over ``items`` (in order), so a sorted folder is sampled end to end."""
    if count >= len(items):
        return list(items)
    return [items[(index * len(items)) // count] for index in range(count)]


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, by suffix), sorted by relative path."""
    found = [path for path in folder.rglob("*")
             if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not path.name.startswith(".")]
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def _files_identity(folder: Path, files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(folder).as_posix()):
        content = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                content.update(chunk)
        digest.update(f"{path.relative_to(folder).as_posix()}\t{content.hexdigest()}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def resolve_calibration(entry: ModelEntry, calibration: Path | str | None, size: int = DEFAULT_CALIBRATION_SIZE,
                        guard_images: int = GUARD_IMAGES) -> CalibrationSet:
    """Decide which images calibrate the model and which check it.

    ``calibration``: a folder of images, ``"generated"`` (deterministic generated images), or None - generated
    images for a synthetic model, an error otherwise (a real model needs representative photos). From a folder,
    the held-out images are files left over beyond ``size``; when the folder has ``size`` images or fewer, a fifth
    of them (at most ``guard_images``) is held out and the rest calibrates.
    """
    if size < 1:
        raise UsageError(f"the calibration size must be at least 1, got {size}")
    if guard_images < 1:
        raise UsageError(f"the accuracy guard needs at least 1 held-out image, got {guard_images}")
    if calibration is None:
        if not is_synthetic(entry):
            raise UsageError(
                f"INT8 quantization of {entry.name} needs calibration images, and none were given",
                hint=f"pass --calibration DIR with about {DEFAULT_CALIBRATION_SIZE} representative photos "
                     f"(e.g. COCO val2017 images): 'ssdtool convert {entry.name} --precision INT8 --calibration DIR'")
        calibration = GENERATED
    if isinstance(calibration, str) and calibration == GENERATED:
        if not is_synthetic(entry):
            log.warning("calibrating %s on generated images: they do not look like photos, so the INT8 ranges may "
                        "not suit real images (the accuracy guard still compares INT8 with FP32)", entry.name)
        return CalibrationSet(kind=GENERATED, count=size, identity=f"generated:seed={CALIBRATION_SEED}",
                              seed=CALIBRATION_SEED, guard_images=guard_images)
    folder = Path(calibration)
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise UsageError(f"calibration folder {folder} {what}; expected a folder of images or 'generated'",
                         hint="pass --calibration DIR (a folder of .jpg/.png images, searched recursively)")
    images = find_images(folder)
    if len(images) < 2:
        raise UsageError(
            f"calibration folder {folder} holds {len(images)} image file(s); at least 2 are needed (one to "
            f"calibrate, one to check), about {DEFAULT_CALIBRATION_SIZE} is usual",
            hint=f"add images with suffixes {', '.join(IMAGE_SUFFIXES)}")
    if len(images) > size:
        held_count = min(guard_images, len(images) - size)
    else:
        held_count = min(guard_images, max(1, len(images) // 5))
    held_out = _spread(images, held_count)
    held = set(held_out)
    remaining = [path for path in images if path not in held]
    files = _spread(remaining, min(size, len(remaining)))
    if len(files) < size:
        log.info("calibrating on %d images of %s (%d requested; %d held out for the accuracy guard)", len(files),
                 folder, size, len(held_out))
    return CalibrationSet(kind="files", count=len(files), identity=_files_identity(folder, files), folder=folder,
                          files=tuple(files), held_out=tuple(held_out), guard_images=guard_images)


def load_rgb(path: Path) -> np.ndarray:
    """An image file as upright 8-bit RGB, as detection reads it (EXIF orientation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image) or image
            if upright.mode == "P" and "transparency" in upright.info:
                upright = upright.convert("RGBA")  # Pillow's documented route for palette transparency
            return np.asarray(upright.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"calibration image {path} cannot be read: {exc}",
                         hint="remove or re-export the file, or pass another --calibration folder") from None


def _network_input(rgb: np.ndarray, entry: ModelEntry, input_type: str, input_layout: str) -> np.ndarray:
    return raw_input(resize_rgb(rgb, entry.input), entry.convert.color_order, input_layout, input_type)


def _calibration_items(calibration: CalibrationSet) -> list[Any]:
    if calibration.kind == GENERATED:
        # Generated eagerly (0.9 MB each at 640x480): imaging.generated_images has no per-index form. Files are
        # read lazily, one at a time, in the dataset's transform.
        return list(generated_images(calibration.count, seed=CALIBRATION_SEED, size=GENERATED_SIZE))
    return list(calibration.files)


def held_out_images(calibration: CalibrationSet) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, rgb)`` of every held-out image, loaded lazily."""
    if calibration.kind == GENERATED:
        for index, rgb in enumerate(generated_images(calibration.guard_images, seed=GUARD_SEED,
                                                     size=GENERATED_SIZE)):
            yield f"generated:seed={GUARD_SEED}#{index}", rgb
        return
    for path in calibration.held_out:
        yield str(path), load_rgb(path)


# ------------------------------------------------------------------------------------------------ quantization
class _ForwardToLogger(logging.Handler):
    """Routes NNCF's log records (its handler writes to stdout) into ssdtool's logger, INFO demoted to DEBUG."""

    def emit(self, record: logging.LogRecord) -> None:
        level = logging.DEBUG if record.levelno <= logging.INFO else record.levelno
        log.log(level, "nncf: %s", record.getMessage())


@contextlib.contextmanager
def _quiet_nncf(nncf: ModuleType) -> Iterator[None]:
    """Keep NNCF off stdout for the duration: its rich progress bars and its stdout log handler.

    The bars are replaced by :class:`QuantizeEvent` callbacks; stdout stays clean for ``--json`` output. Rich's
    default console resolves ``sys.stdout`` when it writes, so redirecting stdout catches it.
    """
    logger = nncf.nncf_logger
    saved_handlers = list(logger.handlers)
    forward = _ForwardToLogger()
    for handler in saved_handlers:
        logger.removeHandler(handler)
    logger.addHandler(forward)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.removeHandler(forward)
        for handler in saved_handlers:
            logger.addHandler(handler)


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


def quantize_model(model: Any, entry: ModelEntry, calibration: CalibrationSet, *, input_type: str = "f32",
                   input_layout: str = "NCHW", progress: ProgressCallback | None = None,
                   recipe: str | Int8Recipe = Int8Recipe.PORTABLE) -> Any:
    """Post-training INT8 quantization of a converted FP32 ``openvino.Model`` (preprocessing inside).

    Returns the quantized ``openvino.Model``. ``model``'s friendly names may be made unique (see
    :func:`_unique_friendly_names`); its tensors and weights are not changed.
    """
    nncf = import_nncf()
    _unique_friendly_names(model)
    items = _calibration_items(calibration)
    total = len(items)
    done = 0

    def transform(item: Any) -> np.ndarray:
        nonlocal done
        rgb = item if isinstance(item, np.ndarray) else load_rgb(item)
        tensor = _network_input(rgb, entry, input_type, input_layout)
        done = min(done + 1, total)
        if progress is not None:
            progress(QuantizeEvent("calibrate", done, total))
        return tensor

    source = "generated images" if calibration.kind == GENERATED else f"images from {calibration.folder}"
    log.info("INT8: collecting activation statistics on %d %s (NNCF %s) ...", total, source, nncf_version())
    if progress is not None:
        progress(QuantizeEvent("calibrate", 0, total))
    dataset = nncf.Dataset(items, transform)
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(quantization_settings(recipe)["overflow_fix"]))
    with _quiet_nncf(nncf):
        quantized = nncf.quantize(model, dataset, subset_size=total, preset=nncf.QuantizationPreset.PERFORMANCE,
                                  target_device=nncf.TargetDevice.ANY, fast_bias_correction=True,
                                  advanced_parameters=advanced)
    return quantized


# ------------------------------------------------------------------------------------------------ guard
def _detections(outputs: dict[str, np.ndarray], entry: ModelEntry) -> RawDetections:
    spec = entry.outputs
    return RawDetections.from_outputs(outputs[spec.boxes], outputs[spec.labels], outputs[spec.scores])


def accuracy_guard(reference_xml: Path, int8_xml: Path, entry: ModelEntry, calibration: CalibrationSet, *,
                   input_type: str = "f32", input_layout: str = "NCHW", device: str = "CPU",
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
        progress(QuantizeEvent("guard", 0, total))
    for name, rgb in held_out_images(calibration):
        tensor = _network_input(rgb, entry, input_type, input_layout)
        reference = _detections(reference_engine.infer(tensor), entry)
        candidate = _detections(int8_engine.infer(tensor), entry)
        report = match_detections(reference, candidate, GUARD_IOU)
        reports.append(report)
        per_image.append({"image": name, **report.to_dict()})
        if progress is not None:
            progress(QuantizeEvent("guard", len(reports), total))
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

