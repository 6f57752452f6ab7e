"""``ssdtool detect`` (alias ``ssdtool run``): a thin command over :class:`ssdtool.detect.Detector`.

stdout carries the results (a table for people, or JSON / JSON lines / COCO results; the writers are the
library's, :mod:`ssdtool.outputs`); stderr carries per-image errors, the progress bar and the summary. Every
image is attempted; when some could not be processed, the command exits with InputError after all output has been
written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ssdtool.commands.common import app_context, exit_codes, printable, want_json
from ssdtool.commands.options import (
    FiniteFloatRange,
    backend_option,
    device_option,
    engine_options,
    image_input_option,
    inference_precision_option,
    ir_precision_option,
    model_option,
    offline_option,
    progress_option,
    server_options,
    server_target,
)
from ssdtool.commands.progress import app_download_progress
from ssdtool.constants import DEFAULT_MAX_PIXELS, OutputFormat, PerformanceHint
from ssdtool.errors import InputError, UsageError

if TYPE_CHECKING:
    from ssdtool.backends.spec import EngineSpec


@exit_codes
@click.command("detect")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCES...")
@model_option
@engine_options(backend_option(), ir_precision_option(), inference_precision_option(), device_option(),
                image_input_option())
@click.option("-t", "--threshold", type=FiniteFloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Minimum score of a detection.")
@click.option("-c", "--classes", metavar="NAMES",
              help="Only these classes: comma-separated names or label ids, e.g. person,car or 1,3.")
@click.option("-n", "--max-detections", type=click.IntRange(min=1), metavar="N",
              help="At most N detections per image (the highest scores).")
@click.option("-f", "--format", "output_format", type=click.Choice(OutputFormat.values()), default=None,
              help="table (for people; the default), json (one document), jsonl (a run line, then one object per "
                   "image and line) or coco (COCO results: image_id, category_id, bbox [x, y, w, h], score).")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the results to FILE instead of stdout (atomically: complete or not at all).")
@click.option("--save-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Write a copy of every image with its detections drawn into DIR (same names).")
@click.option("-r", "--recursive", is_flag=True, help="Search folders (and ** in patterns) recursively.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Reject images larger than this (width x height) before decoding them.")
@click.option("--workers", type=click.IntRange(1, 64), metavar="N",
              help="Threads decoding and resizing images ahead of inference [default: cores, at most 4].")
@offline_option("Never use the network: the model must already be downloaded.")
@server_options
@progress_option
@click.pass_context
def detect_command(ctx: click.Context, sources: tuple[str, ...], model_name: str | None, engine: EngineSpec,
                   threshold: float,
                   classes: str | None, max_detections: int | None, output_format: str | None, as_json: bool,
                   output: str | None, save_dir: str | None, recursive: bool, max_pixels: int, workers: int | None,
                   offline: bool, server_url: str | None, server_model: str | None, concurrency: int | None,
                   wire_protocol: str, server_timeout: float, server_retries: int, progress_mode: str) -> None:
    """Detect objects in images: files, folders or glob patterns (quote them to let ssdtool expand them).

    Prints one line per detection (class, score, box [x_min, y_min, x_max, y_max] in pixels of the original
    image), or JSON with --format. The first run downloads and converts the model (unless --offline).
    An image that cannot be read is reported on stderr (and as an "error" record in JSON formats) and the
    others are still processed; the exit code is then {exit:InputError}.

    \b
    Examples:
      ssdtool detect photo.jpg
      ssdtool detect photos/ --recursive --format jsonl -o results.jsonl
      ssdtool detect 'val2017/*.jpg' --format coco --threshold 0.05 -o detections.json
      ssdtool detect street.jpg --classes person,car --save-dir annotated/
      ssdtool detect photos/ --server http://127.0.0.1:8080 --concurrency 8
    """
    from ssdtool.artifacts import model_inputs, registry_inputs
    from ssdtool.commands.detect_output import Output, write_results
    from ssdtool.detect import Detector
    from ssdtool.fsutil import InputPath
    from ssdtool.inputs import find_images
    from ssdtool.outputs import check_format, plan_copies

    if as_json and output_format not in (None, "json"):
        raise UsageError(f"--json and --format {output_format} disagree", hint="pass one of them")
    fmt = "json" if as_json else (output_format or "table")
    want_json(ctx, fmt != "table" and output is None)  # setup errors (model missing offline, ...) reach scripts too
    app = app_context(ctx)
    files, notes = find_images(sources, recursive=recursive, exclude=[save_dir] if save_dir else [])
    if not files and save_dir:
        _refuse_images_only_in_save_dir(sources, recursive, save_dir)
    for note in notes:
        click.echo(f"warning: {printable(note)}", err=True)
    if not files:
        raise UsageError(f"no images found in {', '.join(map(printable, sources))}",
                         hint="pass image files, folders (with --recursive for subfolders) or patterns like "
                              "'photos/*.jpg'")
    entry = app.registry().model(model_name)
    check_format(fmt, entry)  # before the model is made ready
    allow_pixels(max_pixels)
    inputs = [InputPath(Path(f.path), "an input image") for f in files] + registry_inputs(app.registry().source)
    out = Output(output, inputs)  # a bad --output fails now, before the model is loaded
    try:
        server = server_target(server_url, server_model, concurrency, wire_protocol, server_timeout, server_retries,
                               1 if len(files) == 1 else 4)
        with Detector(entry, engine.replace(server=server), threshold=threshold, classes=classes,
                      max_detections=max_detections, cache_dir=app.cache(), registry=app.registry(), offline=offline,
                      performance=(PerformanceHint.LATENCY if len(files) == 1 else PerformanceHint.THROUGHPUT).value,
                      workers=workers, max_pixels=max_pixels,
                      progress=app_download_progress(app, progress_mode)) as detector:
            model = model_inputs([detector.model_file])
            out.open(model)  # checked again with the model files, before the first image runs
            copies = plan_copies(Path(save_dir), files, [i.path for i in (*inputs, *model)] + (
                [out.path] if out.path else [])) if save_dir else None
            failed = write_results(detector, files, fmt, out, copies, app.quiet, progress_mode)
    except BaseException:
        out.abort()  # no partial output file; an earlier complete one stays as it was
        raise
    if failed:
        app.json_errors = False  # the records already carry the errors; a trailing JSON object would break them
        names = ", ".join(map(printable, failed[:5])) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        raise InputError(f"{len(failed)} of {len(files)} images could not be processed: {names}",
                         hint="the other results were written; see the messages above for each file")


def _refuse_images_only_in_save_dir(sources: tuple[str, ...], recursive: bool, save_dir: str) -> None:
    """Say so when the only images found are inside ``--save-dir`` (``detect DIR --save-dir DIR``): detect never
    reads its own output folder back, since the drawn copies of an earlier run would be detected again."""
    from ssdtool.inputs import find_images

    found, _notes = find_images(sources, recursive=recursive)
    if found:
        count = f"{len(found)} image file" + ("s" if len(found) != 1 else "")
        raise UsageError(f"nothing to detect: the {count} found in {', '.join(map(printable, sources))} "
                         f"{'are' if len(found) != 1 else 'is'} inside --save-dir {printable(save_dir)}, and detect "
                         "never reads the folder it draws its copies into",
                         hint="choose a --save-dir outside the folders you detect in, e.g. --save-dir annotated/")


def allow_pixels(max_pixels: int) -> None:
    """Raise Pillow's process-wide decompression-bomb limit to ``--max-pixels`` when the user allows more than it:
    detect checks each image's size from its header itself, before decoding. The command owns this process, and
    it only ever raises the limit (never lowers it, never puts it back); the library leaves Pillow alone."""
    if max_pixels > DEFAULT_MAX_PIXELS:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_pixels)


run_command = click.Command(
    "run", callback=detect_command.callback, params=detect_command.params,
    help=(detect_command.help or "") + "\n\n'ssdtool run' is another name for 'ssdtool detect'.",
    short_help="Same as 'detect': detect objects in images.", context_settings=detect_command.context_settings)

COMMANDS = [detect_command, run_command]
