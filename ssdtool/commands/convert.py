"""``ssdtool convert`` and ``ssdtool check``: thin wrappers over :mod:`ssdtool.convert`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ssdtool.commands.common import app_context, echo_json, exit_codes, human_size, want_json
from ssdtool.commands.options import (
    device_option,
    image_input_option,
    inference_precision_option,
    ir_precision_option,
    json_option,
    model_argument,
    offline_option,
    progress_option,
)
from ssdtool.commands.progress import app_download_progress, quantize_progress
from ssdtool.constants import InferencePrecision, InputLayout, InputType, Int8Recipe, IRPrecision
from ssdtool.errors import AccuracyError
from ssdtool.int8_recipes import DEFAULT_CALIBRATION_SIZE, GUARD_IMAGES


def _input_options(type_help: str | None = None, layout_help: str | None = None) -> Any:
    """``--input-type`` and ``--input-layout``: the IR's input (convert), or which IR it is (check). Left unset
    (None) they are f32 and NCHW, except for the image-input IR, which takes neither."""
    def apply(func: Any) -> Any:
        func = click.option("--input-layout", type=click.Choice(InputLayout.values(), case_sensitive=False),
                            default=None, help=f"{layout_help} [default: {InputLayout.NCHW}].")(func)
        return click.option("--input-type", type=click.Choice(InputType.values()), default=None,
                            help=f"{type_help} [default: {InputType.F32}].")(func)
    return apply


def _options(precision: str | None, input_type: str | None, input_layout: str | None, force: bool, verify: bool,
             output_dir: str | None, default_precision: str, calibration: str | None = None,
             calibration_size: int | None = None, accept_accuracy_drop: bool = False,
             int8_recipe: str | None = None, image_input: bool = False, devices: tuple[str, ...] = (),
             budget: dict[str, Any] | None = None) -> Any:
    from ssdtool.convert import ConvertOptions
    from ssdtool.errors import UsageError

    precision = (precision or default_precision).upper()
    if (calibration_size is not None or (budget or {}).get("guard_images") is not None) \
            and precision != IRPrecision.INT8:
        raise UsageError(f"--calibration-size and --held-out apply to --precision INT8 only, got {precision}",
                         hint="add --precision INT8 or drop --calibration-size / --held-out")
    if image_input and (input_type is not None or input_layout is not None):
        raise UsageError("--image-input takes u8 NHWC images of any size; --input-type and --input-layout do not "
                         "apply to it", hint="drop --input-type and --input-layout")
    extra: dict[str, Any] = {key: value for key, value in (budget or {}).items() if value is not None}
    if calibration_size is not None:
        extra["calibration_size"] = calibration_size
    if devices:
        extra["check_devices"] = tuple(devices)
    return ConvertOptions(precision=precision, input_type=input_type or InputType.F32.value,
                          input_layout=(input_layout or InputLayout.NCHW.value).upper(), force=force,
                          verify=verify, output_dir=Path(output_dir) if output_dir else None,
                          calibration=_calibration_value(calibration), accept_accuracy_drop=accept_accuracy_drop,
                          int8_recipe=int8_recipe, image_input=image_input, **extra)


def _calibration_value(calibration: str | None) -> Path | str | None:
    from ssdtool.quantize import GENERATED

    if calibration is None or calibration == GENERATED:
        return calibration
    return Path(calibration)


def format_accuracy(accuracy: dict[str, Any]) -> str:
    verdict = "passed" if accuracy["passed"] else "FAILED, installed anyway" if accuracy["accepted"] else "FAILED"
    return (f"{verdict}: {accuracy['matched']}/{accuracy['reference_detections']} FP32 detections found in the "
            f"INT8 output (recall {accuracy['recall']:.3f}, floor {accuracy['min_recall']:.2f}) on "
            f"{accuracy['images']} held-out images ({accuracy['held_out']}), max score diff "
            f"{accuracy['max_score_diff']:.2g}")


def format_calibration(calibration: dict[str, Any] | None) -> str:
    if not calibration:
        return "unknown"
    if calibration.get("kind") == "generated":
        return f"{calibration['count']} generated images ({calibration['identity']})"
    return (f"{calibration['count']} images from {calibration.get('folder')} "
            f"(sha256 {str(calibration.get('sha256', ''))[:16]}...)")


def format_parity(parity: dict[str, Any]) -> str:
    verdict = "passed" if parity["passed"] else "FAILED"
    ran = parity.get("inference_precision") or "an unreported precision"
    text = (f"{verdict}: {parity['matched']}/{parity['reference_detections']} onnxruntime detections matched "
            f"on {parity['images']} images (IR gave {parity['ir_detections']}, run at {ran}), max box diff "
            f"{parity['max_box_diff']:.2g}, max score diff {parity['max_score_diff']:.2g}")
    resize = parity.get("resize")
    if isinstance(resize, dict):  # the image-input IR: the same images at their own size, resized inside the IR
        text += (f"; at their own size, resized inside: {resize['matched']}/{resize['reference_detections']} "
                 f"(recall {resize['recall']:.3f}, floor 0.90), max box diff {resize['max_box_diff']:.2g}, max score "
                 f"diff {resize['max_score_diff']:.2g}")
    return text


def format_input(result: Any, color_order: str) -> str:
    """The IR's input for people: shape, type, layout and what the pixels are."""
    shape = [("?" if d < 0 else d) for d in result.input_shape]
    if result.image_input:
        return (f"[{', '.join(map(str, shape))}] {result.input_type} {result.input_layout}, {color_order} images of "
                "any size, raw pixels 0-255 (resize and normalization inside)")
    return (f"{shape} {result.input_type} {result.input_layout}, {color_order} raw pixels 0-255 (normalization "
            "inside)")


def format_runtime_checks(result: Any) -> list[str]:
    """The IR's runtime checks (this run's first), one line each: how it fares at a device's default precision."""
    from ssdtool.precision import recorded_checks

    ran = list(result.runtime_checks)
    checks = [*ran, *[c for c in recorded_checks(result.provenance) if c not in ran]]
    return [f"  runtime: {check.summary()}" + ("" if check in ran or not result.up_to_date else " (recorded)")
            for check in checks]


@exit_codes
@click.command("convert")
@model_argument
@ir_precision_option(f"Weights precision of the IR [default: the registry's, {IRPrecision.FP32}].")
@click.option("--output-dir", type=click.Path(file_okay=False),
              help="Write the IR here instead of <cache>/<model>/openvino/<precision>/.")
@_input_options(f"Element type of the IR input; {InputType.U8} takes decoded pixels without a float copy",
                "Layout of the IR input")
@image_input_option("The image-input IR: u8 NHWC images of any height and width, resized inside (what OVMS "
                    "feeds JPEG/PNG inputs to, and Model API sends); installed beside the standard IR "
                    "(<precision>-image/).")
@click.option("--calibration", metavar="DIR|generated",
              help="INT8: folder of representative images (searched recursively), or 'generated' for "
                   "deterministic generated images [default for synthetic models: generated].")
@click.option("--calibration-size", type=click.IntRange(min=1), metavar="N",
              help="INT8: how many calibration images NNCF collects statistics on; each costs one float inference "
                   f"[default: {DEFAULT_CALIBRATION_SIZE}].")
@click.option("--int8-recipe", type=click.Choice(Int8Recipe.values()), default=None,
              help="INT8: portable (7-bit weights, exact on CPUs without VNNI) or vnni (8-bit weights but the first "
                   "layer's, for CPUs with VNNI/AMX) [default: portable; an installed IR of either is kept].")
@click.option("--accept-accuracy-drop", is_flag=True,
              help=f"INT8: install the IR even when it fails the accuracy guard (exit {AccuracyError.exit_code} "
                   "otherwise).")
@click.option("--max-ap-drop", type=float, metavar="X",
              help="INT8: quantize within this drop of COCO AP (0.01 = one AP point), NNCF reverting the layers that "
                   f"cost most to floating point; replaces the guard; exit {AccuracyError.exit_code} when it cannot "
                   "be met.")
@click.option("--annotations", "annotations", type=click.Path(dir_okay=False), metavar="FILE",
              help="INT8 with --max-ap-drop: a COCO annotation file, so the budget is true AP on its images "
                   "(with --images) [default: agreement AP with FP32 on held-out images].")
@click.option("--images", "images", type=click.Path(file_okay=False), metavar="DIR",
              help="INT8 with --annotations: the folder of the annotated images (never used to calibrate).")
@click.option("--held-out", "held_out", type=click.IntRange(min=1), metavar="N",
              help="INT8: how many held-out images check the IR (the guard, or the --max-ap-drop budget) "
                   f"[default: {GUARD_IMAGES}].")
@click.option("--force", is_flag=True, help="Rebuild even when an up-to-date IR exists.")
@click.option("--no-verify", "no_verify", is_flag=True,
              help="Skip the parity gate against onnxruntime (INT8: the accuracy guard).")
@click.option("--device", "devices", multiple=True, metavar="DEVICE",
              help="OpenVINO device to run the runtime check on, so --inference-precision auto may use its default "
                   "precision there (repeat for several; a virtual device such as AUTO: every device it may pick) "
                   "[default: CPU]. An up-to-date IR gets the checks it lacks.")
@offline_option("Never touch the network: the source ONNX must already be in the cache.")
@progress_option
@json_option("Print a JSON summary on stdout.")
@click.pass_context
def convert_command(ctx: click.Context, name: str | None, precision: str | None, output_dir: str | None,
                    input_type: str | None, input_layout: str | None, image_input: bool, calibration: str | None,
                    calibration_size: int | None, int8_recipe: str | None, accept_accuracy_drop: bool,
                    max_ap_drop: float | None, annotations: str | None, images: str | None, held_out: int | None,
                    force: bool, no_verify: bool, devices: tuple[str, ...], offline: bool, progress_mode: str,
                    as_json: bool) -> None:
    """Convert NAME (default model) to an OpenVINO IR with BGR raw-pixel input and fixed-size outputs.

    The source ONNX is downloaded first if missing (unless --offline). Normalization is folded into the IR;
    outputs are padded to a static count with score 0. The new IR must match onnxruntime (the parity gate)
    before it is installed; an up-to-date IR (same source checksum and parameters) is left alone, and one that lacks
    only the current Model API metadata (rt_info/model_info) is amended in place.

    INT8 quantizes the FP32 IR with NNCF (pip install 'ssdtool[int8]') on --calibration images, then compares
    it with FP32 on held-out images: below 90% of FP32 detections found it installs nothing and exits
    {exit:AccuracyError}. With --max-ap-drop X, NNCF keeps the drop in COCO AP within X instead (true AP with
    --annotations/--images, else agreement with FP32), reverting the costliest layers to floating point; exit
    {exit:AccuracyError} when it cannot.
    """
    from ssdtool.convert import convert

    want_json(ctx, as_json)
    app = app_context(ctx)
    entry = app.registry().model(name)
    options = _options(precision, input_type, input_layout, force, not no_verify, output_dir,
                       entry.convert.precision, calibration, calibration_size, accept_accuracy_drop, int8_recipe,
                       image_input, devices,
                       {"max_ap_drop": max_ap_drop, "annotations": Path(annotations) if annotations else None,
                        "images": Path(images) if images else None, "guard_images": held_out})
    result = convert(entry, app.cache(), options, offline=offline, progress=app_download_progress(app, progress_mode),
                     quantize_progress=quantize_progress(app, progress_mode))
    data = result.to_dict()
    if as_json:
        echo_json(data)
        return
    verb = "up to date" if result.up_to_date else (
        "amended: Model API metadata (rt_info/model_info) written into the IR; graph and weights unchanged"
        if result.amended else f"converted in {result.seconds:.1f} s")
    lines = [
        f"{result.model} ({result.precision}{', image input' if result.image_input else ''}): {verb}",
        f"  xml:     {result.xml}",
        f"  bin:     {result.bin} ({human_size(result.bin.stat().st_size)})",
        f"  input:   {format_input(result, entry.convert.color_order)}",
        "  outputs: " + ", ".join(f"{k} {list(v)}" for k, v in result.outputs.items()),
    ]
    if result.precision == IRPrecision.INT8:
        from ssdtool.accuracy_budget import describe as describe_budget
        from ssdtool.int8_recipes import recipe_of

        settings = (result.provenance.get("parameters") or {}).get("quantization")
        reason = (result.provenance.get("int8_recipe") or {}).get("reason")
        overflow_fix = (settings or {}).get("overflow_fix")
        lines.append(f"  recipe:  {recipe_of(settings) or 'unknown'} (overflow fix {overflow_fix}"
                     + (f"; {reason})" if reason else ")"))
        lines.append(f"  calibration: {format_calibration(result.calibration)}")
        recorded = result.provenance.get("accuracy_guard")
        budget = describe_budget(result.provenance.get("accuracy_control"))
        if budget is not None:
            lines += [f"  budget:  {budget[0]}" + (" (at conversion)" if result.up_to_date else ""),
                      *(f"  {line}" for line in budget[1:])]
        elif result.accuracy is not None:
            lines.append(f"  accuracy: {format_accuracy(result.accuracy.to_dict())}")
        elif (result.up_to_date or result.amended) and isinstance(recorded, dict):
            lines.append(f"  accuracy: {format_accuracy(recorded)} (at conversion)")
        elif not result.up_to_date or recorded:
            lines.append("  accuracy: skipped (--no-verify)")
    elif result.parity is not None:
        lines.append(f"  parity:  {format_parity(result.parity.to_dict())}")
    elif not result.up_to_date and not result.amended:
        lines.append("  parity:  skipped (--no-verify)")
    lines += format_runtime_checks(result)
    click.echo("\n".join(lines))


@exit_codes
@click.command("check")
@model_argument
@ir_precision_option(f"Which installed IR to check [default: the registry's, {IRPrecision.FP32}].")
@click.option("--xml", "xml_path", type=click.Path(dir_okay=False, exists=True),
              help="Check this IR file instead of the installed one.")
@click.option("--source", "source_path", type=click.Path(dir_okay=False, exists=True),
              help="Compare against this ONNX file instead of the cached download.")
@_input_options("Which installed IR variant: its input type", "Which installed IR variant: its input layout")
@image_input_option("Check the installed image-input IR (<precision>-image/).")
@device_option("OpenVINO device to run the IR on.")
@inference_precision_option(default=InferencePrecision.F32.value, help_text=(
    "The arithmetic the IR runs in. f32 (the default) proves the IR with the gate's strict criteria; auto, bf16 "
    "or f16 check how it fares at that precision (the recall floor applies)."))
@offline_option("Never touch the network.")
@json_option("Print the parity report as JSON on stdout.")
@click.pass_context
def check_command(ctx: click.Context, name: str | None, precision: str | None, xml_path: str | None,
                  source_path: str | None, input_type: str | None, input_layout: str | None, image_input: bool,
                  device: str, inference_precision: str, offline: bool, as_json: bool) -> None:
    """Prove an IR against onnxruntime on its source ONNX (the parity gate on its own).

    Exits 0 when the IR passes, {exit:ParityError} when it disagrees. Anyone holding the real model file can run
    this to check ssdtool's conversion on it.
    """
    from ssdtool.convert import check

    want_json(ctx, as_json)
    app = app_context(ctx)
    entry = app.registry().model(name)
    options = _options(precision, input_type, input_layout, False, True, None, entry.convert.precision,
                       image_input=image_input)
    report = check(entry, app.cache(), options, source=Path(source_path) if source_path else None,
                   xml=Path(xml_path) if xml_path else None, offline=offline, device=device,
                   inference_precision=inference_precision)
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(f"{entry.name} ({report.precision}): {format_parity(report.to_dict())}")
    click.echo(f"  criteria: {report.criteria}")


COMMANDS = [convert_command, check_command]
