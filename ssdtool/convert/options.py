"""How to convert, and what identifies an IR: the options, where the IR lives, and the idempotency key."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssdtool.constants import DEFAULT_DEVICE, InputLayout, InputType, Int8Recipe, IRPrecision
from ssdtool.convert.model_info import model_info, model_info_digest
from ssdtool.errors import UsageError
from ssdtool.int8_recipes import DEFAULT_CALIBRATION_SIZE, GUARD_IMAGES, quantization_settings

if TYPE_CHECKING:  # what identifies an IR is read on every warm start: no calibration or budget code for it
    from ssdtool.accuracy_budget import Budget
    from ssdtool.cache import Cache
    from ssdtool.calibration import CalibrationSet
    from ssdtool.registry import ModelEntry

# Bump when the graph rewrite changes, so existing IRs are rebuilt instead of reported as up to date.
RECIPE_VERSION = 1
PARITY_IMAGES = 3
# INT8 parameters a request may leave open: without a calibration choice any calibration will do, without a
# recipe any recipe, without an AP budget any budget or none (see same_parameters).
OPEN_INT8_KEYS = ("calibration", "calibration_count", "quantization", "accuracy_control")
#: The image-input IR: its folder suffix, its input element type and layout, and the resize inside it (OpenVINO's
#: PrePostProcessor algorithm; docs/convert.md measures it against Pillow's bilinear, which ssdtool's host uses).
IMAGE_VARIANT = "image"
IMAGE_INPUT = (InputType.U8.value, InputLayout.NHWC.value)
IMAGE_RESIZE = "RESIZE_LINEAR"
#: The parameter that records the Model API metadata (a digest); an IR that differs only there is amended.
MODEL_INFO_KEY = "model_info"


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert.

    INT8 only: ``calibration`` is a folder of images, ``"generated"``, or None (generated images for a synthetic
    model, an error for others). With None and the default ``calibration_size``, an installed INT8 IR is up to
    date whatever its calibration, so ``Detector(precision="INT8")`` uses what ``ssdtool convert`` made.
    ``calibration_size`` images calibrate; ``guard_images`` held-out images feed the accuracy guard;
    ``accept_accuracy_drop`` installs an INT8 IR that fails the guard. ``int8_recipe``: "portable" or "vnni"
    (:class:`ssdtool.constants.Int8Recipe`); None builds portable and accepts any installed recipe.
    ``verify=False`` skips the parity gate (FP32/FP16) or the guard (INT8). ``check_devices``: the OpenVINO
    devices the runtime check measures on (a virtual device: each device it may pick), recorded per device kind and
    model so ``--inference-precision auto`` may use each one's default; not part of what identifies the IR.

    ``max_ap_drop`` (INT8) replaces the guard with an AP budget: NNCF's accuracy control keeps the drop in COCO AP
    within it, measured on ``guard_images`` held-out images - annotated ones (``annotations`` and ``images``), or
    agreement with FP32 on the guard's held-out images (:mod:`ssdtool.accuracy_budget`).

    ``image_input``: the image-input IR, which takes whole images (u8 ``[1, ?, ?, 3]`` NHWC, BGR, any height and
    width) and resizes them inside (OpenVINO's linear resize, :data:`IMAGE_RESIZE`); ``input_type`` and
    ``input_layout`` are then ``u8`` and ``NHWC`` (left at their defaults, they are set so). It lives in its own
    folder (``<precision>-image``) beside the standard IR.
    """

    precision: str = IRPrecision.FP32.value
    input_type: str = InputType.F32.value
    input_layout: str = InputLayout.NCHW.value
    verify: bool = True
    force: bool = False
    output_dir: Path | None = None
    parity_images: int = PARITY_IMAGES
    calibration: Path | str | None = None
    calibration_size: int = DEFAULT_CALIBRATION_SIZE
    accept_accuracy_drop: bool = False
    guard_images: int = GUARD_IMAGES
    int8_recipe: str | None = None
    max_ap_drop: float | None = None
    annotations: Path | None = None
    images: Path | None = None
    image_input: bool = False
    check_devices: tuple[str, ...] = (DEFAULT_DEVICE,)

    def __post_init__(self) -> None:
        if self.image_input and (self.input_type, self.input_layout) == (InputType.F32, InputLayout.NCHW):  # defaults
            object.__setattr__(self, "input_type", IMAGE_INPUT[0])
            object.__setattr__(self, "input_layout", IMAGE_INPUT[1])

    @property
    def variant(self) -> str:
        """Folder suffix for non-default inputs, so an f32 NCHW IR, a u8 NHWC IR and the image-input IR can live
        side by side."""
        if self.image_input:
            return IMAGE_VARIANT
        if (self.input_type, self.input_layout) == (InputType.F32, InputLayout.NCHW):
            return ""
        return f"{self.input_type}-{self.input_layout.lower()}"

def check_options(options: ConvertOptions) -> None:
    if options.precision not in IRPrecision.values():
        raise UsageError(f"precision {options.precision!r} is not supported; expected one of "
                         f"{', '.join(IRPrecision.values())}")
    if options.input_type not in InputType.values():
        raise UsageError(f"input type {options.input_type!r}: expected one of {', '.join(InputType.values())}")
    if options.input_layout not in InputLayout.values():
        raise UsageError(f"input layout {options.input_layout!r}: expected one of {', '.join(InputLayout.values())}")
    if options.image_input and (options.input_type, options.input_layout) != IMAGE_INPUT:
        raise UsageError(f"the image-input IR takes u8 NHWC images; input type {options.input_type} and layout "
                         f"{options.input_layout} do not apply to it",
                         hint="drop --input-type and --input-layout with --image-input")
    if options.precision != IRPrecision.INT8 and (options.calibration is not None or options.accept_accuracy_drop
                                                  or options.int8_recipe is not None
                                                  or options.max_ap_drop is not None):
        raise UsageError(f"calibration, the INT8 recipe and the accuracy guard apply to INT8 only, got precision "
                         f"{options.precision}",
                         hint="add --precision INT8, or drop --calibration / --int8-recipe / --accept-accuracy-drop / "
                              "--max-ap-drop")
    check_budget_options(options)
    if options.int8_recipe is not None:
        try:
            Int8Recipe.parse(options.int8_recipe, "INT8 recipe")
        except ValueError as exc:
            raise UsageError(str(exc), hint="pass --int8-recipe portable or vnni") from None
    if options.calibration_size < 1 or options.guard_images < 1:
        raise UsageError(f"calibration size and guard images must be at least 1, got {options.calibration_size} "
                         f"and {options.guard_images}")

def check_budget_options(options: ConvertOptions) -> None:
    """``--max-ap-drop`` and what goes with it: a budget in range, annotations with their images, and neither the
    guard's escape (``--accept-accuracy-drop``) nor ``--no-verify``, which the budget replaces."""
    if (options.annotations is None) != (options.images is None):
        raise UsageError("--annotations and --images go together: the annotation file and the folder of its images",
                         hint="pass both, or neither (then the budget is agreement with FP32 on held-out images)")
    if options.max_ap_drop is None:
        if options.annotations is not None:
            raise UsageError("--annotations and --images measure an AP budget, and no --max-ap-drop was given",
                             hint="add --max-ap-drop X (e.g. 0.01, one AP point)")
        return
    from ssdtool.accuracy_budget import check_max_ap_drop

    drop = check_max_ap_drop(options.max_ap_drop)
    if options.accept_accuracy_drop or not options.verify:
        raise UsageError("--max-ap-drop replaces the accuracy guard, so --accept-accuracy-drop and --no-verify do not "
                         "apply to it", hint="raise the budget instead, or drop --max-ap-drop to use the guard")
    if drop < 0 and options.annotations is None:
        raise UsageError(f"--max-ap-drop {drop:g} asks INT8 to agree with FP32 better than FP32 itself; agreement AP "
                         "cannot exceed FP32's 1.0", hint="pass a budget of 0 or more, or measure true AP with "
                                                          "--annotations FILE --images DIR")


def ir_path(entry: ModelEntry, cache: Cache, options: ConvertOptions) -> Path:
    """Where the IR ``.xml`` for these options lives."""
    if options.output_dir is not None:
        return Path(options.output_dir) / f"{entry.name}.xml"
    return cache.ir_xml(entry, options.precision, options.variant)

def conversion_parameters(entry: ModelEntry, options: ConvertOptions,
                          calibration: CalibrationSet | None = None, budget: Budget | None = None) -> dict[str, Any]:
    """Everything that determines the IR's bytes besides the source file: the idempotency key.

    INT8 adds the calibration identity and count and the quantization settings (``calibration`` is needed then),
    and an AP budget its figure, metric and images.
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
    if options.image_input:  # only for the image-input IR, so the standard IRs' key stays as it was
        parameters["image_input"] = {"resize": IMAGE_RESIZE, "to": list(entry.input.resize)}
    if entry.outputs.heads is not None:  # only for heads models, so the full form's key (and its IRs) stay valid
        # as JSON gives it back from the provenance: lists, not tuples
        parameters["heads"] = json.loads(json.dumps(asdict(entry.outputs.heads)))
    if options.precision == IRPrecision.INT8:
        if options.int8_recipe is not None:  # None: only to compare with an installed IR (see same_parameters)
            parameters["quantization"] = quantization_settings(options.int8_recipe)
        if calibration is not None:  # None: only to compare with an installed IR (see same_parameters)
            parameters.update({"calibration": calibration.identity, "calibration_count": calibration.count})
        if budget is not None:
            parameters["accuracy_control"] = budget.parameters()
    parameters[MODEL_INFO_KEY] = model_info_digest(model_info(entry, options))
    return parameters

def same_parameters(existing: Any, wanted: dict[str, Any]) -> bool:
    """Whether an installed IR's ``parameters`` (from its provenance) match ``wanted`` (:func:`conversion_parameters`).

    INT8 ``wanted`` without calibration keys (no calibration chosen) accepts any calibration, and without a
    ``quantization`` key (no recipe chosen) any recipe: callers that only ask for "the INT8 IR"
    (``Detector(precision="INT8")``) should compare with this, not with ``==``.
    """
    if not isinstance(existing, dict):
        return False
    if wanted.get("precision") == IRPrecision.INT8:
        open_keys = [key for key in OPEN_INT8_KEYS if key not in wanted]
        return {k: v for k, v in existing.items() if k not in open_keys} == wanted
    return existing == wanted


def same_but_model_info(existing: Any, wanted: dict[str, Any]) -> bool:
    """Whether an installed IR's ``parameters`` match ``wanted`` apart from the Model API metadata (missing, as in
    IRs of ssdtool before it wrote them, or other values): such an IR needs at most an amendment, because the
    metadata is not part of the graph or the weights."""
    return isinstance(existing, dict) and same_parameters(
        {k: v for k, v in existing.items() if k != MODEL_INFO_KEY},
        {k: v for k, v in wanted.items() if k != MODEL_INFO_KEY})


def model_info_intact(xml: Path, wanted: dict[str, Any]) -> bool:
    """Whether the IR at ``xml`` carries the Model API metadata ``wanted`` records (its section as written, not
    only the parameter that records it: a section removed or edited by hand is found and amended)."""
    from ssdtool.convert.model_info import MODEL_INFO_SECTION
    from ssdtool.provenance import read_section

    section = read_section(xml, MODEL_INFO_SECTION)
    return section is not None and model_info_digest(section) == wanted.get(MODEL_INFO_KEY)
