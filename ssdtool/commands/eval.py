"""``ssdtool eval``: a thin command over :func:`ssdtool.evaluation.evaluate` (docs/eval.md).

stdout carries the metrics table (or ``--json``); stderr the progress, the images skipped and the warnings.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click

from ssdtool.commands.common import app_context, echo_json, format_table, printable, want_json
from ssdtool.commands.detect import DEFAULT_MAX_PIXELS, allow_pixels
from ssdtool.commands.options import (
    engine_options,
    json_option,
    model_argument,
    offline_option,
    progress_option,
    server_options,
    server_target,
)
from ssdtool.commands.progress import app_download_progress, phase_progress
from ssdtool.constants import DEFAULT_CHECKPOINT_EVERY, DEFAULT_REFERENCE_SCORE, CocoScorer
from ssdtool.errors import InputError

if TYPE_CHECKING:
    from ssdtool.backends.spec import EngineSpec

LISTED = 10


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _threshold(best: dict[str, float]) -> str:
    low, high = best["threshold"], best["threshold_max"]
    return f"{low:.2f}" if low == high else f"{low:.2f} (to {high:.2f})"


def format_report(data: dict[str, Any], stat_meanings: dict[str, str]) -> str:
    """The tables for people: configuration line, the twelve stats (or the comparison), references, per class."""
    lines = []
    agreement = data.get("agreement")
    if agreement:
        lines.append(f"{data['model']}: {data['images_evaluated']} images evaluated, {data['images_skipped']} "
                     f"skipped, agreement with {agreement['reference']} (its {agreement['ground_truth_boxes']} "
                     f"detections scored at least {agreement['min_score']} are the ground truth: fidelity to it, not "
                     "accuracy)")
    elif data["source"] == "model":
        lines.append(f"{data['model']}: {data['images_evaluated']} images evaluated, {data['images_skipped']} "
                     f"skipped, annotations {data['annotations']}")
    else:
        lines.append(f"{data['source']}: {data['images_evaluated']} images evaluated, annotations "
                     f"{data['annotations']}")
    runs = data.get("compare") or [data]
    if len(runs) > 1:
        rows = [[r["configuration"], r["inference_precision"] or "-", _fraction(r["metrics"]["AP"]),
                 _fraction(r["metrics"]["AP50"]),
                 "-" if r["delta_ap"] is None else f"{r['delta_ap']:+.4f}", _rate(r["images_per_second"])]
                for r in runs]
        lines += ["", format_table(["configuration", "ran in", "AP", "AP50", "ΔAP", "images/s"], rows)]
    else:
        if data["source"] == "model":
            weights = f" {data['precision']} IR" if data["precision"] else ""
            lines.append(f"{data['backend']} {data['device']}{weights}, inference precision "
                         f"{data['inference_precision'] or 'unreported'}, {_rate(data['images_per_second'])} "
                         "images/s")
        rows = [[name, _fraction(value), stat_meanings[name]] for name, value in data["metrics"].items()]
        lines += ["", format_table(["metric", "value", "meaning"], rows)]
    references = data.get("references")
    if references:
        verdict = references["mlperf"]
        status = "-" if verdict["passed"] is None else ("pass" if verdict["passed"] else "fail")
        rows = [[r["name"], f"{r['value']:.4f}", r["comparable_to"] or "not comparable", r["meaning"]]
                for r in references["published"]]
        lines += ["", format_table(["reference", "value", "compare with", "meaning"], rows),
                  f"MLPerf: AP {_fraction(data['metrics']['AP'])} against {verdict['threshold']} (99% of "
                  f"{verdict['target']}): {status}"]
    if any(r.get("threshold") for r in runs):
        lines += ["", "score threshold of the best F1 (IoU 0.50, all classes pooled): the --threshold for detect",
                  format_table(["configuration", "--threshold", "F1", "precision", "recall"],
                               [[r["configuration"], _threshold(r["threshold"]), *[_fraction(r["threshold"][k])
                                                                                   for k in ("f1", "precision",
                                                                                             "recall")]]
                                if r.get("threshold") else [r["configuration"], "-", "-", "-", "-"]
                                for r in runs])]
    for run in runs:
        if "per_class" in run:
            rows = [[c["category_id"], c["name"], _fraction(c["AP"])] for c in run["per_class"]]
            lines += ["", f"per class ({run['configuration']}):", format_table(["id", "category", "AP"], rows)]
    return "\n".join(lines)


@click.command("eval")
@model_argument
@click.option("--annotations", type=click.Path(dir_okay=False), metavar="FILE",
              help="COCO annotation file (instances_val2017.json or any COCO instances file); not with --reference.")
@click.option("--images", "images_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Folder holding the images the annotation file lists (file_name below DIR).")
@engine_options()
@click.option("--compare", metavar="CONFIGS",
              help="Several configurations side by side, images decoded once: comma-separated, each onnxruntime, "
                   "openvino[:ARITH] or [openvino:]FP32|FP16|INT8[:auto|f32|bf16|f16], e.g. "
                   "FP32:f32,FP32:bf16,INT8,onnxruntime (replaces --backend/--precision).")
@click.option("--detections", type=click.Path(dir_okay=False), metavar="FILE",
              help="Evaluate an existing COCO results file (e.g. 'detect --format coco' output) without a model.")
@click.option("--mlperf-log", type=click.Path(dir_okay=False), metavar="FILE",
              help="Evaluate an MLPerf LoadGen mlperf_log_accuracy.json as accuracy-coco.py --use-inv-map does.")
@click.option("--reference", metavar="CONFIG",
              help="Agreement AP without annotations: score every --compare configuration against this one's "
                   "detections (those at or above --reference-score) over the images of --images DIR.")
@click.option("--reference-score", type=click.FloatRange(0.0, 1.0, min_open=True), default=DEFAULT_REFERENCE_SCORE,
              show_default=True, metavar="S",
              help="With --reference: the reference's detections scored at least S are the ground truth.")
@click.option("--plots", "plots_dir", type=click.Path(dir_okay=True, file_okay=False), metavar="DIR",
              help="Write the plots (PR curves, per-class AP and ΔAP, precision/recall/F1 against the score "
                   "threshold) as PNG, each with its data as CSV (pip install 'ssdtool[plots]').")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write one self-contained HTML report: the run, its tables and plots (opens offline).")
@click.option("--coco-eval", type=click.Choice(CocoScorer.values(), case_sensitive=False),
              default=CocoScorer.AUTO.value, show_default=True,
              help=f"The COCOeval implementation: {CocoScorer.FASTER} when installed ({CocoScorer.AUTO}), or "
                   f"{CocoScorer.PYCOCOTOOLS} (always with --plots/--report).")
@click.option("--per-class", is_flag=True, help="Also print AP per category.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Only the first N images of the file.")
@click.option("--sample", type=click.IntRange(min=1), metavar="N",
              help="N images drawn at random (deterministic for --seed), evaluated in file order.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@click.option("--save-detections", metavar="FILE",
              help="Write the COCO results JSON (with --compare: FILE's stem plus each configuration).")
@click.option("--results", "results_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="The per-image results file that --resume continues [default: one per run in the cache's "
                   "eval/ folder].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=DEFAULT_CHECKPOINT_EVERY, show_default=True,
              metavar="N", help="Checkpoint the results file every N images.")
@click.option("--strict", is_flag=True,
              help=f"Exit {InputError.exit_code} when images listed in the annotation file are missing [default: "
                   "skip them, warn].")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Reject images larger than this (width x height) before decoding them.")
@click.option("--workers", type=click.IntRange(1, 64), metavar="N",
              help="Threads decoding images ahead of inference [default: cores, at most 4].")
@offline_option("Never use the network: the model must already be downloaded.")
@server_options
@progress_option
@json_option("Print the report as JSON on stdout.")
@click.pass_context
def eval_command(ctx: click.Context, name: str | None, annotations: str | None, images_dir: str | None,
                 engine: EngineSpec, compare: str | None, detections: str | None, mlperf_log: str | None,
                 reference: str | None, reference_score: float, plots_dir: str | None, report_path: str | None,
                 coco_eval: str, per_class: bool, limit: int | None,
                 sample: int | None, seed: int, save_detections: str | None, results_path: str | None, resume: bool,
                 checkpoint_every: int, strict: bool, max_pixels: int, workers: int | None, offline: bool,
                 server_url: str | None, server_model: str | None, concurrency: int | None, wire_protocol: str,
                 server_timeout: float, server_retries: int, progress_mode: str, as_json: bool) -> None:
    """COCO accuracy (COCOeval bbox) of NAME (default model) on the images of a COCO annotation file.

    Every detection the model outputs is kept (no score threshold; padded rows dropped). Prints the twelve
    COCOeval stats, or one row per configuration with --compare. Missing images are skipped and listed.
    Without annotations, --reference scores agreement with one configuration (fidelity, not accuracy).

    \b
    Examples:
      ssdtool eval --annotations annotations/instances_val2017.json --images val2017/
      ssdtool eval --annotations ann.json --images val2017/ --compare FP32:f32,FP32:bf16,INT8,onnxruntime
      ssdtool eval --annotations ann.json --detections detections.json
      ssdtool eval --annotations ann.json --images val2017/ --resume
      ssdtool eval --annotations ann.json --images val2017/ --server http://fleet:8080 --concurrency 16
      ssdtool eval --annotations ann.json --images val2017/ --compare FP32:f32,INT8 --plots out/ --report out/r.html
      ssdtool eval --images photos/ --compare FP32:f32,INT8 --reference FP32:f32
    """
    from ssdtool.evaluation import evaluate
    from ssdtool.evaluation.metrics import STAT_MEANINGS

    want_json(ctx, as_json)
    app = app_context(ctx)
    allow_pixels(max_pixels)
    if plots_dir is not None or report_path is not None:
        _keep_matplotlib_in_cache(app)
    progress = phase_progress({"evaluate": "evaluating", "score": "COCOeval"},
                              unit={"evaluate": "img", "score": "configuration"}, mode=progress_mode, quiet=app.quiet)
    server = server_target(server_url, server_model, concurrency, wire_protocol, server_timeout, server_retries)
    report = evaluate(annotations, images_dir, name, engine=engine.replace(server=server), compare=compare,
                      detections=detections, mlperf_log=mlperf_log, limit=limit, sample=sample, seed=seed,
                      resume=resume, results=results_path, checkpoint_every=checkpoint_every, workers=workers,
                      max_pixels=max_pixels, cache_dir=app.cache(), registry=app.registry(), offline=offline,
                      progress=progress, download_progress=app_download_progress(app, progress_mode),
                      save_detections=save_detections, reference=reference, reference_score=reference_score,
                      plots=plots_dir, report=report_path, coco_eval=coco_eval)
    for path, count in report.saved_detections:
        click.echo(f"wrote {count} detections to {printable(path)}", err=True)
    if report.plots:
        click.echo(f"wrote {len(report.plots)} plot files (PNG and CSV) to {printable(plots_dir or '')}", err=True)
    if report.report_file:
        click.echo(f"wrote the report to {printable(report.report_file)}", err=True)
    data = report.to_dict(per_class=per_class)
    _warn(report)
    if as_json:
        echo_json(data)
    else:
        click.echo(format_report(data, dict(STAT_MEANINGS)))
    problems = []
    if report.failed:
        problems.append(f"{len(report.failed)} images could not be read")
    if strict and report.missing:
        problems.append(f"{len(report.missing)} images are missing (--strict)")
    if problems:
        app.json_errors = False  # the report already went out; a trailing JSON error would break it
        raise InputError("; ".join(problems) + "; the metrics above leave them out",
                         hint="see the messages above for each file")


def _keep_matplotlib_in_cache(app: Any) -> None:
    """matplotlib keeps a font cache in ``MPLCONFIGDIR`` (else ``~/.cache/matplotlib`` or ``~/.config/matplotlib``);
    this process is ssdtool's, so it goes into ssdtool's cache unless the user chose a folder (README, "Where files
    go"). The library never sets it: a process-wide setting is the command's to make."""
    if "MPLCONFIGDIR" not in os.environ:
        cache = app.cache()
        os.environ["MPLCONFIGDIR"] = str(cache.make_folder(cache.root / "matplotlib"))


def _listed(names: list[str]) -> str:
    shown = ", ".join(map(printable, names[:LISTED]))
    return shown + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")


def _warn(report: Any) -> None:
    if report.missing:
        click.echo(f"warning: {len(report.missing)} images listed in the annotation file are not in the images "
                   f"folder and were skipped: {_listed(report.missing)}", err=True)
    for file_name, error in report.failed:
        click.echo(f"error: {printable(file_name)}: {printable(error)}", err=True)
    if report.size_mismatches:
        click.echo(f"warning: {len(report.size_mismatches)} images decode (after EXIF rotation) to another size "
                   f"than the annotation file states: {_listed(report.size_mismatches)}", err=True)
    if report.unknown_categories:
        click.echo(f"warning: the annotation file has categories that are not COCO's 80 (ids "
                   f"{', '.join(map(str, report.unknown_categories))}); the model never predicts them", err=True)
    if report.dropped_detections:
        click.echo(f"warning: {report.dropped_detections} detections name categories the annotation file does not "
                   "have and were not scored", err=True)


COMMANDS = [eval_command]
