"""``ssdtool bench``: a thin wrapper over :func:`ssdtool.bench.benchmark`, or with ``--scenario`` over
:func:`ssdtool.loadgen.run_loadgen` (MLPerf LoadGen; the report is formatted by
:mod:`ssdtool.commands.bench_loadgen`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ssdtool.commands.bench_loadgen import loadgen_options, run_scenario
from ssdtool.commands.common import app_context, echo_json, human_size, want_json
from ssdtool.commands.options import (
    FiniteFloatRange,
    backend_option,
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
    requests_option,
    server_options,
    server_target,
)
from ssdtool.commands.progress import app_download_progress
from ssdtool.constants import IRPrecision, LoadGenScenario

if TYPE_CHECKING:
    from ssdtool.backends.spec import EngineSpec


def format_report(data: dict[str, Any]) -> str:
    """The human summary, laid out like benchmark_app's."""
    from ssdtool.backends import backend_rules

    requests = f"{data['requests']} request{'s' if data['requests'] != 1 else ''}"
    engine = f"{data['streams']} stream{'s' if data['streams'] != 1 else ''}" if data.get("streams") else ""
    threads = f"{data['threads']} thread{'s' if data['threads'] != 1 else ''}" if data.get("threads") else ""
    detail = ", ".join(part for part in (requests, engine, threads) if part)
    rules = backend_rules(data["backend"])
    peak = human_size(int(data["peak_rss_mb"] * 2**20)) if data.get("peak_rss_mb") is not None else "unknown"
    weights = rules.weights(data["precision"], bool(data.get("image_input")))
    lines = [
        f"{data['model']}: {data['backend']} {weights} on {data['device']}, {data['hint']} hint ({detail})",
        f"  model:           {data['model_path']}",
        f"  precision:       {data['inference_precision'] or 'not reported by the device'} (inference precision "
        f"read back; asked: {data['inference_precision_requested']}; {data['inference_precision_reason']})",
        f"  input:           {data['input_shape']}",
        f"  load:            {data['load_seconds']:.2f} s ({rules.load_step})",
        f"  first inference: {data['first_inference_ms']:.1f} ms (warm-up, excluded)",
        f"  iterations:      {data['iterations']} in {data['duration_seconds']:.2f} s",
        f"  latency:         median {data['latency_median_ms']:.1f} ms, p90 {data['latency_p90_ms']:.1f} ms, "
        f"min {data['latency_min_ms']:.1f} ms, max {data['latency_max_ms']:.1f} ms",
        f"  throughput:      {data['throughput_fps']:.3f} images/s",
        f"  peak memory:     {peak}",
    ]
    return "\n".join(lines)


@click.command("bench")
@model_argument
@engine_options(
    backend_option(allow_auto=False, default="openvino"),
    ir_precision_option(f"Which IR (OpenVINO only; converted on first use) [default: the registry's, "
                        f"{IRPrecision.FP32}]."),
    image_input_option("Measure the image-input IR (OpenVINO), fed the generated 640x480 images whole: its inner "
                       "resize is timed with every inference."),
    inference_precision_option(), hint_option(),
    requests_option("Parallel requests in throughput mode [default: OpenVINO's optimal number; onnxruntime: one "
                    "per core; a server: --concurrency]."),
    device_option(), compiled_cache=False)
@click.option("--iterations", "-n", type=click.IntRange(min=1), metavar="N",
              help="Measured inferences (the warm-up is extra).")
@click.option("--time", "-t", "seconds", type=FiniteFloatRange(0, 86_400, min_open=True), metavar="SECONDS",
              help="Measure for this long instead [default: 20 s when --iterations is not given].")
@offline_option()
@loadgen_options
@progress_option
@server_options
@json_option("Print the report as JSON on stdout.")
@click.pass_context
def bench_command(ctx: click.Context, name: str | None, engine: EngineSpec, iterations: int | None,
                  seconds: float | None, offline: bool, progress_mode: str, server_url: str | None,
                  server_model: str | None,
                  concurrency: int | None, wire_protocol: str, server_timeout: float, server_retries: int,
                  as_json: bool, **loadgen: Any) -> None:
    """Measure inference speed of NAME (default model): latency percentiles, throughput, load time, memory.

    Inputs are generated images, preprocessed before timing; the first inference is reported apart and
    excluded. The model is downloaded or converted first when missing (unless --offline).

    With --scenario, MLCommons LoadGen drives the engine through an MLPerf scenario instead (SingleStream,
    MultiStream, Server, Offline) and writes its logs to --output-dir; see docs/bench.md.
    """
    from ssdtool.bench import BenchOptions, benchmark
    from ssdtool.errors import UsageError

    want_json(ctx, as_json)
    if loadgen["scenario"] is not None:
        if engine.image_input:
            raise UsageError("--image-input and --scenario do not go together: LoadGen runs feed the standard IR its "
                             "network-size tensors", hint="drop --image-input, or drop --scenario")
        if server_url is not None:
            raise UsageError("--server and --scenario do not go together: LoadGen runs drive a local engine",
                             hint="drop --server to run the scenario here, or drop --scenario to measure the server")
        run_scenario(ctx, name=name, engine=engine.replace(compiled_cache=True), offline=offline,
                     progress_mode=progress_mode, as_json=as_json, **loadgen)
        return
    given = [f"--{key.replace('_', '-')}" for key, value in loadgen.items() if value is not None]
    if given:
        raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to LoadGen runs only",
                         hint=f"add --scenario {LoadGenScenario.spoken()}")
    if iterations is not None and seconds is not None:
        raise UsageError("--iterations and --time are exclusive", hint="give one of them")
    app = app_context(ctx)
    server = server_target(server_url, server_model, concurrency, wire_protocol, server_timeout, server_retries, 1)
    options = BenchOptions(engine.replace(server=server), iterations=iterations, seconds=seconds, offline=offline)
    downloads = app_download_progress(app, progress_mode)
    report = benchmark(app.registry().model(name), app.cache(), options, progress=downloads)
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(format_report(report.to_dict()))


COMMANDS = [bench_command]
