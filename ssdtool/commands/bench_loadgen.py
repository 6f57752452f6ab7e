"""``ssdtool bench --scenario``: the LoadGen options, the call to :func:`ssdtool.loadgen.run_loadgen`, the report.

Kept apart from :mod:`ssdtool.commands.bench` so that module stays the benchmark_app-shaped command it was.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ssdtool.commands.common import app_context, echo_json, printable
from ssdtool.commands.options import FiniteFloatRange
from ssdtool.commands.progress import app_download_progress, loadgen_progress
from ssdtool.constants import LoadGenMode, LoadGenScenario
from ssdtool.loadgen.limits import BOUNDS, FLAGS

if TYPE_CHECKING:
    from ssdtool.backends.spec import EngineSpec

F = TypeVar("F", bound=Callable[..., Any])

#: Options of plain ``bench`` that LoadGen runs do not take (LoadGen decides what runs and for how long).
_BENCH_ONLY = {"hint": "--hint", "iterations": "--iterations", "seconds": "--time"}


def _choice(kind: type[LoadGenScenario] | type[LoadGenMode]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def complete(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
        return [value for value in kind.values() if value.lower().startswith(incomplete.lower())]

    return complete


def _flag_type(key: str) -> click.ParamType:
    """The option type of a setting's flag, from the bounds table the user.conf reader and the settings check
    use (in the flag's unit)."""
    bound = BOUNDS[key]
    scale = FLAGS[key][1]
    if bound.integer and scale == 1:
        return click.IntRange(int(bound.low), int(bound.high))
    return FiniteFloatRange(bound.low * scale, bound.high * scale, min_open=bound.low_open, max_open=bound.high_open)


def loadgen_options(func: F) -> F:
    """The options of a LoadGen run (all default None: none of them is allowed without ``--scenario``)."""
    decorators = [
        click.option("--scenario", metavar="SCENARIO", shell_complete=_choice(LoadGenScenario),
                     help="Run MLPerf LoadGen's scenario instead of the plain benchmark: SingleStream, MultiStream, "
                          "Server or Offline (case-insensitive)."),
        click.option("--mode", metavar="MODE", shell_complete=_choice(LoadGenMode),
                     help="LoadGen's mode: performance (timing) or accuracy (every sample once; writes "
                          "mlperf_log_accuracy.json) [default: performance]."),
        click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Folder for LoadGen's mlperf_log_* files, created when missing [default: "
                          "./mlperf-SCENARIO-MODE]."),
        click.option("--images", type=click.Path(path_type=Path),
                     help="Folder of images for the query sample library [default: generated images]."),
        click.option("--annotations", type=click.Path(path_type=Path),
                     help="COCO-format annotations; their image order is the sample order (qsl_idx) [default: the "
                          "image files sorted by name]."),
        click.option("--target-qps", type=_flag_type("target_qps"), metavar="QPS",
                     help="Server: queries per second to issue; Offline: the expected rate, which sizes the query."),
        click.option("--target-latency-ms", type=_flag_type("target_latency"), metavar="MS",
                     help="Server: the latency bound [100]; SingleStream/MultiStream: the expected latency."),
        click.option("--min-duration", type=_flag_type("min_duration"), metavar="SECONDS",
                     help="Shortest test [MLPerf: 600 s]; shorter runs come out INVALID."),
        click.option("--min-queries", type=_flag_type("min_query_count"), metavar="N",
                     help="Fewest queries [MLPerf: SingleStream 1024, MultiStream 662, Server 270336, Offline "
                          "24576 samples]."),
        click.option("--user-conf", type=click.Path(path_type=Path),
                     help="LoadGen user.conf (model ssd-resnet34 or *); applied before the flags above."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def run_scenario(ctx: click.Context, *, name: str | None, engine: EngineSpec, offline: bool, progress_mode: str,
                 as_json: bool,
                 scenario: str, mode: str | None, output_dir: Path | None, images: Path | None,
                 annotations: Path | None, target_qps: float | None, target_latency_ms: float | None,
                 min_duration: float | None, min_queries: int | None, user_conf: Path | None) -> None:
    from ssdtool.errors import EXIT_INTERRUPTED, SsdtoolError, UsageError
    from ssdtool.loadgen import LoadGenOptions, SettingsOverrides, run_loadgen
    from ssdtool.loadgen.run import loadgen_still_running, parse_mode, parse_scenario

    given = [flag for key, flag in _BENCH_ONLY.items()
             if ctx.get_parameter_source(key) not in (None, click.core.ParameterSource.DEFAULT)]
    if given:
        raise UsageError(f"{', '.join(given)} cannot be used with --scenario: LoadGen decides how queries run "
                         "and for how long", hint="use --min-duration, --min-queries and --target-qps instead")
    parsed_scenario = parse_scenario(scenario)
    parsed_mode = parse_mode(mode or LoadGenMode.PERFORMANCE.value)
    app = app_context(ctx)
    options = LoadGenOptions(
        scenario=parsed_scenario.value, mode=parsed_mode.value,
        output_dir=output_dir or Path(f"mlperf-{parsed_scenario.value}-{parsed_mode.value}"),
        engine=engine, offline=offline, images=images, annotations=annotations,
        settings=SettingsOverrides(target_qps=target_qps, target_latency_ms=target_latency_ms,
                                   min_duration=min_duration, min_queries=min_queries, user_conf=user_conf))
    downloads = app_download_progress(app, progress_mode)
    progress = loadgen_progress(app, progress_mode, label=f"LoadGen {parsed_scenario.value}")
    try:
        report = run_loadgen(app.registry().model(name), app.cache(), options, progress=progress,
                             download_progress=downloads)
    except (SsdtoolError, KeyboardInterrupt) as exc:
        if loadgen_still_running():
            _exit_hard_at_exit(exc.exit_code if isinstance(exc, SsdtoolError) else EXIT_INTERRUPTED)
        raise
    finally:
        if progress is not None:
            progress.close()
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(format_loadgen_report(report.to_dict()))


def _exit_hard_at_exit(code: int) -> None:
    """End the process with ``os._exit(code)`` once the error is reported: an interrupted LoadGen Server test
    keeps its threads until its schedule ends, and a normal exit under them aborts (SIGABRT) in the C++ runtime.
    Nothing is left to flush but stdout and stderr (the logs were already removed)."""
    import atexit
    import os
    import sys

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    atexit.register(leave)


def _plural(count: int | None, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}" if count else ""


_SETTING_LABELS = {"min_duration_s": ("min duration", " s"), "min_query_count": ("min queries", ""),
                   "performance_sample_count": ("performance samples", ""), "target_qps": ("target QPS", ""),
                   "expected_qps": ("expected QPS", ""), "target_latency_ms": ("target latency", " ms"),
                   "expected_latency_ms": ("expected latency", " ms"),
                   "target_latency_percentile": ("at percentile", ""), "samples_per_query": ("samples per query", "")}


def _setting(key: str, value: Any) -> str:
    label, unit = _SETTING_LABELS.get(key, (key.replace("_", " "), ""))
    return f"{label} {value:g}{unit}" if isinstance(value, float) else f"{label} {value}{unit}"


def format_loadgen_report(data: dict[str, Any]) -> str:
    """The human summary of a LoadGen run: the verdict and why, the metric, latencies, what ran, the files."""
    from ssdtool.backends import backend_rules

    summary, config = data["summary"], data["config"]
    accuracy = summary["mode"] == "AccuracyOnly"
    verdict = {True: "VALID", False: "INVALID"}.get(summary["valid"], "no verdict")
    if accuracy:
        verdict = "every sample's detections logged (score them with accuracy-coco.py or ssdtool eval --mlperf-log)"
    why = f" ({'; '.join(summary['reasons'])})" if summary["reasons"] else ""
    metric = (f"{summary['metric_name']}: {summary['metric_value']:.3f} {summary['metric_unit']}"
              if summary["metric_value"] is not None else
              "none (accuracy runs are not timed)" if accuracy else "not in the summary")
    latency = ", ".join(f"{key} {value:.1f}" for key, value in summary["latency_ms"].items())
    engine = ", ".join(part for part in (_plural(config["requests"], "request"), _plural(config["streams"], "stream"),
                                         _plural(config["threads"], "thread")) if part)
    weights = backend_rules(config["backend"]).weights(config["precision"])
    settings = ", ".join(_setting(key, value) for key, value in config["settings"].items())
    lines = [
        f"{config['model']}: LoadGen {summary['scenario']}, {summary['mode']}: {verdict}{why}",
        f"  metric:          {metric}",
        f"  latency (ms):    {latency or 'none'}",
        f"  engine:          {config['backend']} {weights} on {config['device']} ({engine})",
        f"  model:           {printable(config['model_path'])}",
        f"  precision:       {config['inference_precision'] or 'not reported by the device'} (inference precision "
        f"read back; asked: {config['inference_precision_requested']}; {config['inference_precision_reason']})",
        f"  samples:         {config['samples']} from {printable(config['sample_source'])}",
        f"  settings:        {settings}",
        f"  duration:        {data['duration_seconds']:.1f} s",
    ]
    for label, items in (("recommendation", summary["recommendations"]), ("early stopping", summary["early_stopping"]),
                         ("LoadGen error", data["errors"]), ("LoadGen warning", data["warnings"])):
        lines.extend(f"  {label + ':':<17}{printable(item)}" for item in items)
    lines.append(f"  logs:            {printable(data['output_dir'])} "
                 f"({', '.join(Path(path).name for path in data['files'])})")
    if summary["valid"] is not True and not accuracy:
        lines.append("  note:            an INVALID run is a smoke check, not an MLPerf result (LoadGen says why "
                     "above; the MLPerf settings are the defaults of --min-duration and --min-queries)")
    return "\n".join(lines)
