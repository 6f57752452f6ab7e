"""``ssdtool convert`` and ``ssdtool check``: thin wrappers over :mod:`ssdtool.convert`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ssdtool.cli import AppContext, _complete_model_names, echo_json, human_size, want_json

PRECISION_CHOICES = ("FP32", "FP16")


def _options(precision: str | None, input_type: str, input_layout: str, force: bool, verify: bool,
             output_dir: str | None, default_precision: str) -> Any:
    from ssdtool.convert import ConvertOptions

    return ConvertOptions(precision=(precision or default_precision).upper(), input_type=input_type,
                          input_layout=input_layout.upper(), force=force, verify=verify,
                          output_dir=Path(output_dir) if output_dir else None)


def format_parity(parity: dict[str, Any]) -> str:
    verdict = "passed" if parity["passed"] else "FAILED"
    return (f"{verdict}: {parity['matched']}/{parity['reference_detections']} onnxruntime detections matched "
            f"on {parity['images']} images (IR gave {parity['ir_detections']}), max box diff "
            f"{parity['max_box_diff']:.2g}, max score diff {parity['max_score_diff']:.2g}")


@click.command("convert")
@click.argument("name", required=False, shell_complete=_complete_model_names)
@click.option("--precision", type=click.Choice(PRECISION_CHOICES, case_sensitive=False),
              help="Weights precision of the IR [default: the registry's, FP32].")
@click.option("--output-dir", type=click.Path(file_okay=False),
              help="Write the IR here instead of <cache>/<model>/openvino/<precision>/.")
@click.option("--input-type", type=click.Choice(["f32", "u8"]), default="f32", show_default=True,
              help="Element type of the IR input; u8 takes decoded pixels without a float copy.")
@click.option("--input-layout", type=click.Choice(["NCHW", "NHWC"], case_sensitive=False), default="NCHW",
              show_default=True, help="Layout of the IR input.")
@click.option("--force", is_flag=True, help="Rebuild even when an up-to-date IR exists.")
@click.option("--no-verify", "no_verify", is_flag=True, help="Skip the parity gate against onnxruntime.")
@click.option("--offline", is_flag=True, envvar="SSDTOOL_OFFLINE", show_envvar=True,
              help="Never touch the network: the source ONNX must already be in the cache.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.pass_context
def convert_command(ctx: click.Context, name: str | None, precision: str | None, output_dir: str | None,
                    input_type: str, input_layout: str, force: bool, no_verify: bool, offline: bool,
                    as_json: bool) -> None:
    """Convert NAME (default model) to an OpenVINO IR with BGR raw-pixel input and fixed-size outputs.

    The source ONNX is downloaded first if missing (unless --offline). Normalization is folded into the IR;
    outputs are padded to a static count with score 0. The new IR must match onnxruntime (the parity gate)
    before it is installed; an up-to-date IR (same source checksum and parameters) is left alone.
    """
    from ssdtool.convert import convert

    want_json(ctx, as_json)
    app: AppContext = ctx.obj
    entry = app.registry().model(name)
    options = _options(precision, input_type, input_layout, force, not no_verify, output_dir,
                       entry.convert.precision)
    result = convert(entry, app.cache(), options, offline=offline, progress=_download_progress(app))
    data = result.to_dict()
    if as_json:
        echo_json(data)
        return
    verb = "up to date" if result.up_to_date else f"converted in {result.seconds:.1f} s"
    lines = [
        f"{result.model} ({result.precision}): {verb}",
        f"  xml:     {result.xml}",
        f"  bin:     {result.bin} ({human_size(result.bin.stat().st_size)})",
        f"  input:   {list(result.input_shape)} {result.input_type} {result.input_layout}, "
        f"{entry.convert.color_order} raw pixels 0-255 (normalization inside)",
        "  outputs: " + ", ".join(f"{k} {list(v)}" for k, v in result.outputs.items()),
    ]
    if result.parity is not None:
        lines.append(f"  parity:  {format_parity(result.parity.to_dict())}")
    elif not result.up_to_date:
        lines.append("  parity:  skipped (--no-verify)")
    click.echo("\n".join(lines))


def _download_progress(app: AppContext) -> Any:
    """The download command's progress renderer, when that command is available (auto mode)."""
    try:
        from ssdtool.commands.download import progress_renderer
    except ImportError:
        return None
    return progress_renderer("auto", quiet=app.verbosity < 0)


@click.command("check")
@click.argument("name", required=False, shell_complete=_complete_model_names)
@click.option("--precision", type=click.Choice(PRECISION_CHOICES, case_sensitive=False),
              help="Which installed IR to check [default: the registry's, FP32].")
@click.option("--xml", "xml_path", type=click.Path(dir_okay=False, exists=True),
              help="Check this IR file instead of the installed one.")
@click.option("--source", "source_path", type=click.Path(dir_okay=False, exists=True),
              help="Compare against this ONNX file instead of the cached download.")
@click.option("--input-type", type=click.Choice(["f32", "u8"]), default="f32", show_default=True)
@click.option("--input-layout", type=click.Choice(["NCHW", "NHWC"], case_sensitive=False), default="NCHW",
              show_default=True)
@click.option("--device", default="CPU", show_default=True, help="OpenVINO device to run the IR on.")
@click.option("--offline", is_flag=True, envvar="SSDTOOL_OFFLINE", show_envvar=True,
              help="Never touch the network.")
@click.option("--json", "as_json", is_flag=True, help="Print the parity report as JSON on stdout.")
@click.pass_context
def check_command(ctx: click.Context, name: str | None, precision: str | None, xml_path: str | None,
                  source_path: str | None, input_type: str, input_layout: str, device: str, offline: bool,
                  as_json: bool) -> None:
    """Prove an IR against onnxruntime on its source ONNX (the parity gate on its own).

    Exits 0 when the IR passes, 21 when it disagrees. Anyone holding the real model file can run this to check
    ssdtool's conversion on it.
    """
    from ssdtool.convert import check

    want_json(ctx, as_json)
    app: AppContext = ctx.obj
    entry = app.registry().model(name)
    options = _options(precision, input_type, input_layout, False, True, None, entry.convert.precision)
    report = check(entry, app.cache(), options, source=Path(source_path) if source_path else None,
                   xml=Path(xml_path) if xml_path else None, offline=offline, device=device)
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(f"{entry.name} ({report.precision}): {format_parity(report.to_dict())}")
    click.echo(f"  criteria: {report.criteria}")


COMMANDS = [convert_command, check_command]
