"""Validating ``outputs: {form: heads, ...}``: the twelve-tensor (split) form of SSD, its default boxes and its
selection parameters, every problem located (``models.NAME.outputs.selection.iou_threshold``).

Only the description is checked here; what depends on the model file (head shapes against the default boxes) is
checked when the heads are decoded (:mod:`ssdtool.heads`) or converted, naming the output and the registry key.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from ssdtool.checked import is_finite_number, is_int
from ssdtool.registry.checker import Checker, describe
from ssdtool.registry.entries import DefaultBoxSpec, HeadsSpec, OutputSpec, SelectionSpec

#: Levels of the reference geometry (MLCommons ``dboxes_R34_coco``): the defaults cover exactly this many.
REFERENCE_LEVELS = 6
HEADS_KEYS = ("form", "conf", "loc", "default_boxes", "selection", "boxes", "labels", "scores")
DEFAULT_BOX_KEYS = ("feature_sizes", "steps", "scales", "aspect_ratios", "scale_xy", "scale_wh")
SELECTION_KEYS = ("score_threshold", "iou_threshold", "per_class", "max_detections")
#: ``scale_xy`` and ``scale_wh`` multiply the predicted offsets before the decode (``exp`` for sizes): the reference
#: has 0.1 and 0.2; TensorFlow's box-coder weights (10, 5) are their reciprocals, and above 1 ``exp`` soon overflows.
OFFSET_SCALE_RANGE = (0.0, 1.0)
#: Names of the outputs ssdtool makes from the heads, unless the registry names them.
DEFAULT_OUTPUT_NAMES = {"boxes": "bboxes", "labels": "labels", "scores": "scores"}


def check_heads_outputs(check: Checker, data: dict[str, Any], where: str) -> OutputSpec | None:
    """``data`` is the ``outputs`` mapping with ``form: heads`` (already checked to be a mapping)."""
    check.mapping(data, where, ("form", "conf", "loc"), HEADS_KEYS[3:])
    conf = _head_list(check, data.get("conf"), f"{where}.conf") if "conf" in data else None
    loc = _head_list(check, data.get("loc"), f"{where}.loc") if "loc" in data else None
    levels = None
    if conf is not None and loc is not None:
        levels = _check_pairing(check, conf, loc, where)
    boxes = _check_default_boxes(check, data.get("default_boxes", {}), f"{where}.default_boxes", levels)
    selection = _check_selection(check, data.get("selection", {}), f"{where}.selection")
    names = {key: check.string(data[key], f"{where}.{key}") if key in data else default
             for key, default in DEFAULT_OUTPUT_NAMES.items()}
    if len({n for n in names.values() if n}) < len(names):
        check.problem(where, f"boxes, labels and scores must be three different names, got {list(names.values())}")
        return None
    if conf is None or loc is None or levels is None or boxes is None or selection is None \
            or any(n is None for n in names.values()):
        return None
    return OutputSpec(boxes=names["boxes"], labels=names["labels"], scores=names["scores"],  # type: ignore[arg-type]
                      box_format="xyxy", box_units="normalized", label_offset=0, form="heads",
                      heads=HeadsSpec(conf=conf, loc=loc, default_boxes=boxes, selection=selection))


def _head_list(check: Checker, value: Any, where: str) -> tuple[str | int, ...] | None:
    """Output names (non-empty strings) or positions (integers >= 0), one kind per list, no repeats."""
    if not isinstance(value, list) or not value:
        check.problem(where, f"expected a non-empty list of output names or positions, got {describe(value)}")
        return None
    names = all(isinstance(v, str) and v.strip() for v in value)
    positions = all(is_int(v) and v >= 0 for v in value)
    if not (names or positions):
        check.problem(where, f"expected output names (strings) or positions (integers >= 0), one kind, "
                             f"got {value!r}")
        return None
    repeated = sorted({str(v) for v in value if value.count(v) > 1})
    if repeated:
        check.problem(where, f"each head is listed once; repeated: {', '.join(repeated)}")
        return None
    return tuple(value)


def _check_pairing(check: Checker, conf: tuple[str | int, ...], loc: tuple[str | int, ...], where: str
                   ) -> int | None:
    if len(conf) != len(loc):
        check.problem(where, f"expected as many conf heads as loc heads (one of each per level), got {len(conf)} "
                             f"conf and {len(loc)} loc")
        return None
    if isinstance(conf[0], str) != isinstance(loc[0], str):
        check.problem(where, "conf and loc must both be names or both be positions")
        return None
    shared = sorted(str(v) for v in set(conf) & set(loc))
    if shared:
        check.problem(where, f"an output cannot be both a conf and a loc head: {', '.join(shared)}")
        return None
    return len(conf)


def _check_default_boxes(check: Checker, raw: Any, where: str, levels: int | None) -> DefaultBoxSpec | None:
    data = check.mapping(raw, where, (), DEFAULT_BOX_KEYS)
    if data is None:
        return None
    ok = True
    fields: dict[str, Any] = {}
    for key in ("feature_sizes", "steps"):
        if key in data:
            fields[key] = check.int_list(data[key], f"{where}.{key}", length=levels)
            ok &= fields[key] is not None
    if "scales" in data:
        wanted = None if levels is None else levels + 1
        fields["scales"] = check.number_list(data["scales"], f"{where}.scales", length=wanted, positive=True)
        scales = fields["scales"]
        if scales is not None and any(b < a for a, b in pairwise(scales)):
            check.problem(f"{where}.scales", f"expected scales that never decrease, got {list(fields['scales'])}")
            fields["scales"] = None
        ok &= fields["scales"] is not None
    if "aspect_ratios" in data:
        fields["aspect_ratios"] = _aspect_ratios(check, data["aspect_ratios"], f"{where}.aspect_ratios", levels)
        ok &= fields["aspect_ratios"] is not None
    for key in ("scale_xy", "scale_wh"):
        if key in data:
            value = data[key]
            if is_finite_number(value) and value > OFFSET_SCALE_RANGE[1]:
                check.problem(f"{where}.{key}", f"expected a number in (0, 1], got {value!r}: it multiplies the "
                                                "predicted offsets (the reference has scale_xy 0.1, scale_wh 0.2); "
                                                "box-coder weights such as 10 and 5 divide, so give their reciprocals")
                fields[key] = None
            else:
                fields[key] = check.number(value, f"{where}.{key}", *OFFSET_SCALE_RANGE, low_open=True)
            ok &= fields[key] is not None
    if levels is not None and levels != REFERENCE_LEVELS:
        # The reference defaults describe six levels; another count must say everything the defaults would.
        for key in ("feature_sizes", "scales", "aspect_ratios"):
            if key not in data:
                check.problem(where, f"missing key {key!r}: the reference default covers {REFERENCE_LEVELS} levels "
                                     f"and this model has {levels} heads of each kind")
                ok = False
    return DefaultBoxSpec(**fields) if ok and levels is not None else None


def _aspect_ratios(check: Checker, value: Any, where: str, levels: int | None
                   ) -> tuple[tuple[float, ...], ...] | None:
    if not isinstance(value, list) or (levels is not None and len(value) != levels):
        wanted = f"{levels} lists" if levels is not None else "a list of lists"
        check.problem(where, f"expected {wanted} of aspect ratios (one list per level), got {describe(value)}"
                             + (f" with {len(value)}" if isinstance(value, list) else ""))
        return None
    ratios = []
    for index, level in enumerate(value):
        parsed = check.number_list(level, f"{where}[{index}]", positive=True)
        if parsed is None:
            return None
        ratios.append(parsed)
    return tuple(ratios)


def _check_selection(check: Checker, raw: Any, where: str) -> SelectionSpec | None:
    data = check.mapping(raw, where, (), SELECTION_KEYS)
    if data is None:
        return None
    fields: dict[str, Any] = {}
    if "score_threshold" in data:
        fields["score_threshold"] = check.number(data["score_threshold"], f"{where}.score_threshold", 0.0, 1.0,
                                                 high_open=True)
    if "iou_threshold" in data:
        fields["iou_threshold"] = check.number(data["iou_threshold"], f"{where}.iou_threshold", 0.0, 1.0)
    for key in ("per_class", "max_detections"):
        if key in data:
            fields[key] = check.integer(data[key], f"{where}.{key}", minimum=1)
    if any(v is None for v in fields.values()):
        return None
    return SelectionSpec(**fields)


def check_heads_against_model(check: Checker, outputs: OutputSpec, where: str, image_size: tuple[int, int],
                              output_count: int) -> None:
    """What a heads description must agree on with the rest of the entry: a square input (the default boxes have
    one size), steps within it, and no more detections than the converted IR has rows."""
    if outputs.heads is None:
        return
    width, height = image_size
    if width != height:
        check.problem(f"{where}.input.resize", f"a heads model needs a square input (its default boxes are laid out "
                                               f"on one size), got {width}x{height}")
    steps = outputs.heads.default_boxes.steps
    if steps is not None and any(step > width for step in steps):
        check.problem(f"{where}.outputs.default_boxes.steps",
                      f"expected steps of at most the input size {width}, got {list(steps)}")
    sizes = outputs.heads.default_boxes.feature_sizes
    if sizes is not None and any(size > width for size in sizes):
        check.problem(f"{where}.outputs.default_boxes.feature_sizes",
                      f"expected feature map sizes of at most the input size {width}, got {list(sizes)}")
    wanted = outputs.heads.selection.max_detections
    if wanted > output_count:
        check.problem(f"{where}.outputs.selection.max_detections",
                      f"expected at most convert.output_count ({output_count}), got {wanted}")
