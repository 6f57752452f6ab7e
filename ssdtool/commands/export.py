"""``ssdtool export``: a thin wrapper over :func:`ssdtool.export.export_model`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ssdtool.commands.common import app_context, echo_json, printable, want_json
from ssdtool.commands.options import (
    FiniteFloatRange,
    device_option,
    engine_options,
    hint_option,
    image_input_option,
    inference_precision_option,
    ir_precision_option,
    json_option,
    model_argument,
    offline_option,
    progress_option,
)
from ssdtool.commands.progress import app_download_progress
from ssdtool.constants import EXPORT_LOCK_TIMEOUT, ExportFormat
from ssdtool.errors import LockTimeoutError

if TYPE_CHECKING:
    from ssdtool.backends.spec import EngineSpec

#: What to run next, per format (docs/serve.md has the full deployment steps).
NEXT_STEP = {
    "ovms": "docker run --rm -u $(id -u) -p 8000:8000 -v {root}:/models:ro openvino/model_server:latest "
            "--config_path /models/config.json --rest_port 8000",
    "triton": "docker run --rm -p 8000:8000 -v {root}:/models:ro nvcr.io/nvidia/tritonserver:<yy.mm>-py3 "
              "tritonserver --model-repository=/models",
    "kserve": "upload {root}/{name}/ to {storage_uri}, then: kubectl apply -f {root}/inferenceservice.yaml",
}


def format_result(data: dict[str, Any]) -> str:
    verb = "replaced" if data["replaced"] else "added"
    precision = data["inference_precision"] or "not pinned"
    digest = data["sha256"].get("model.bin", "")[:16]
    lines = [
        f"{data['model']}: {verb} version {data['version']} of {data['served_name']} in {data['output_dir']} "
        f"({data['format']}) in {data['seconds']:.1f} s",
        f"  version:   {data['version_dir']} (model.xml, model.bin sha256 {digest}...)",
        f"  server:    {data['device']}, {data['hint']} hint",
        f"  precision: IR {data['ir_precision']}, inference {precision} ({data['precision_reason']})",
        *[f"  wrote:     {path}" for path in data["files"]],
        "  next:      " + NEXT_STEP[data["format"]].format(root=data["output_dir"], name=data["served_name"],
                                                           storage_uri=data["storage_uri"]),
    ]
    return "\n".join(printable(line) for line in lines)  # paths a user named: no control characters reach the terminal


@click.command("export")
@model_argument
@click.option("--format", "export_format", type=click.Choice(ExportFormat.values(), case_sensitive=False),
              required=True, callback=lambda _ctx, _param, value: value.lower(),
              help="The model server: ovms (DIR/config.json), triton (DIR/<model>/config.pbtxt) or kserve (the "
                   "OVMS layout plus DIR/inferenceservice.yaml).")
@click.option("--output-dir", required=True, metavar="DIR",
              help="The model repository (created when missing; a link or file there is refused).")
@engine_options(
    ir_precision_option("Which IR to export (FP32, FP16 or INT8; converted on first use) [default: the registry's, "
                        "FP32]."),
    image_input_option("Export the image-input IR: u8 [1,?,?,3] NHWC BGR images of any size, resized inside, so "
                       "OVMS can feed it JPEG/PNG inputs and Model API's OVMS adapter can drive it."),
    inference_precision_option(help_text=(
        "The precision the server runs: f32, bf16 or f16 are pinned; auto is written as f32, because the server's "
        "device is not known here and f32 is what the IR was proven at. Triton pins only bf16: with triton, auto "
        "leaves the server's default and f32/f16 are refused.")),
    device_option("The OpenVINO device the server runs the model on (CPU, GPU, GPU.1, AUTO:GPU,CPU, ...), pinned in "
                  "the configuration (OVMS picks a GPU first when it is not named)."),
    hint_option("The server's performance hint: latency (one request at a time, fastest answer) or throughput "
                "(parallel requests, most images per second) [default: latency]."),
    backend="openvino")
@click.option("--version", "version", type=click.IntRange(min=1), metavar="N",
              help="The version to write [default: the one after the latest; with --force, the latest].")
@click.option("--force", is_flag=True, help="Replace an existing version instead of refusing.")
@click.option("--storage-uri", metavar="URI",
              help="kserve: where you will upload DIR/<model>/ (s3://, gs://, pvc://, https://, ...; no "
                   "credentials). Required for kserve.")
@click.option("--served-name", metavar="NAME",
              help="The model's name on the server (a DNS-1035 label) [default: the registry name].")
@click.option("--lock-timeout", type=FiniteFloatRange(0, 86_400), default=EXPORT_LOCK_TIMEOUT, show_default=True,
              metavar="SECONDS", help="How long to wait for another export into the same DIR (exit "
                                      f"{LockTimeoutError.exit_code} after that).")
@offline_option("Never touch the network: the model must already be downloaded (or converted).")
@progress_option
@json_option("Print a JSON summary on stdout.")
@click.pass_context
def export_command(ctx: click.Context, name: str | None, export_format: str, output_dir: str, engine: EngineSpec,
                   version: int | None, force: bool,
                   storage_uri: str | None, served_name: str | None, lock_timeout: float, offline: bool,
                   progress_mode: str, as_json: bool) -> None:
    """Export NAME (default model) as a versioned repository for OVMS, Triton or KServe.

    The IR is converted first when needed and copied byte for byte (its provenance travels with it) into
    DIR/<model>/<version>/, the next version unless --version/--force say otherwise; the server's configuration
    pins the device, performance hint and inference precision. A second export into DIR waits for the first.
    """
    from pathlib import Path

    from ssdtool.export import ExportOptions, export_model

    want_json(ctx, as_json)
    app = app_context(ctx)
    options = ExportOptions(format=export_format, output_dir=Path(output_dir), engine=engine, version=version,
                            force=force, storage_uri=storage_uri, served_name=served_name, lock_timeout=lock_timeout)
    result = export_model(app.registry().model(name), app.cache(), options, offline=offline,
                          progress=app_download_progress(app, progress_mode))
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(format_result(result.to_dict()))


COMMANDS = [export_command]
