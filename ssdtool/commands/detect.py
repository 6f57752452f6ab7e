"""``ssdtool detect`` (alias ``ssdtool run``): a thin wrapper over :class:`ssdtool.detect.Detector`.

stdout carries the results (a table for people, or JSON / JSON lines / COCO results); stderr carries per-image
errors, the progress bar and the summary. Every image is attempted; when some could not be processed, the command
exits with InputError (30) after all output has been written.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ssdtool.cli import AppContext, _complete_model_names, printable, want_json
from ssdtool.commands.options import inference_precision_option, ir_precision_option
from ssdtool.errors import InputError, UsageError

FORMATS = ("table", "json", "jsonl", "coco")
BACKEND_NAMES = ("auto", "openvino", "onnxruntime")
DEFAULT_MAX_PIXELS = 89_478_485  # = ssdtool.detect.DEFAULT_MAX_PIXELS (not imported: keeps --help light)


def _complete_backends(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    return [name for name in BACKEND_NAMES if name.startswith(incomplete)]


class _Output:
    """stdout, or ``--output FILE`` (:class:`ssdtool.fsutil.OutputFile`: written whole or not at all, never over an
    input; a device or FIFO such as ``/dev/stdout`` is written to, never replaced)."""

    def __init__(self, path: str | None, inputs: list[str]) -> None:
        from ssdtool.fsutil import OutputFile

        self.path = Path(path) if path else None
        self._file = OutputFile(path, inputs) if path else None

    def write(self, text: str) -> None:
        if self._file is None:
            click.echo(text, nl=False)
        else:
            self._file.write(text)

    def commit(self) -> None:
        if self._file is None:
            sys.stdout.flush()
        else:
            self._file.commit()

    def abort(self) -> None:
        if self._file is not None:
            self._file.abort()


def _stderr_is_terminal() -> bool:
    """Progress bars are for people watching a terminal, never for logs or pipes."""
    return sys.stderr.isatty()


def format_table_block(result: Any) -> str:
    """One image for people: a header line, then one line per detection (class, score, box in pixels)."""
    header = f"{printable(result.path)} ({result.width}x{result.height}): "
    if not result.detections:
        return header + "no detections\n"
    count = len(result.detections)
    lines = [header + (f"{count} detection" if count == 1 else f"{count} detections")]
    labels = [printable(d.label) for d in result.detections]
    width = max(len(label) for label in labels)
    for d, label in zip(result.detections, labels, strict=True):
        box = ", ".join(f"{v:.1f}" for v in d.box)
        lines.append(f"  {label.ljust(width)}  {d.score:.3f}  [{box}]")
    return "\n".join(lines) + "\n"


def json_document(run: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """The ``--format json`` document: ``{"run": {...}, "images": [...]}``, the run on one line, each image
    indented with one line per detection (readable, and still plain JSON)."""
    blocks = []
    for record in records:
        fields = []
        for key, value in record.items():
            if key == "detections" and value:
                rows = ",\n".join(f"        {json.dumps(d)}" for d in value)
                fields.append(f'      "detections": [\n{rows}\n      ]')
            else:
                fields.append(f"      {json.dumps(key)}: {json.dumps(value)}")
        blocks.append("    {\n" + ",\n".join(fields) + "\n    }")
    images = "[\n" + ",\n".join(blocks) + "\n  ]" if blocks else "[]"
    return f'{{\n  "run": {json.dumps(run)},\n  "images": {images}\n}}\n'


def jsonl_header(run: dict[str, Any]) -> str:
    """The first ``--format jsonl`` line: what ran (the image lines follow, one per input)."""
    return json.dumps({"run": run}) + "\n"


def _annotated_path(save_dir: Path, relative: str, source: str, used: set[str]) -> Path:
    from ssdtool.annotate import output_name

    name = Path(output_name(relative))
    candidate = save_dir / name
    if candidate.resolve() == Path(source).resolve():  # never overwrite the input itself
        name = name.with_name(f"{name.stem}-annotated{name.suffix}")
        candidate = save_dir / name
    counter = 1
    while str(candidate) in used:
        candidate = save_dir / name.with_name(f"{name.stem}-{counter}{name.suffix}")
        counter += 1
    used.add(str(candidate))
    return candidate


def _download_progress(app: AppContext) -> Callable[[Any], None] | None:
    try:
        from ssdtool.commands.download import progress_renderer
    except ImportError:
        return None
    return progress_renderer("auto", quiet=app.verbosity < 0)


@click.command("detect")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCES...")
@click.option("-m", "--model", "model_name", shell_complete=_complete_model_names,
              help="Registry model to run [default: the registry's default model].")
@click.option("-b", "--backend", default="auto", show_default=True, shell_complete=_complete_backends,
              help="openvino (the converted IR, converted on first use), onnxruntime (the source ONNX), or auto "
                   "(openvino when it can be imported, else onnxruntime).")
@ir_precision_option()
@inference_precision_option()
@click.option("--device", default="CPU", show_default=True, help="OpenVINO device (CPU, GPU, AUTO, ...).")
@click.option("-t", "--threshold", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Minimum score of a detection.")
@click.option("-c", "--classes", metavar="NAMES",
              help="Only these classes: comma-separated names or label ids, e.g. person,car or 1,3.")
@click.option("-n", "--max-detections", type=click.IntRange(min=1), metavar="N",
              help="At most N detections per image (the highest scores).")
@click.option("-f", "--format", "output_format", type=click.Choice(FORMATS), default=None,
              help="table (for people; the default), json (one array), jsonl (one object per image and line) or "
                   "coco (COCO results: image_id, category_id, bbox [x, y, w, h], score).")
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
@click.option("--offline", is_flag=True, envvar="SSDTOOL_OFFLINE", show_envvar=True,
              help="Never use the network: the model must already be downloaded.")
@click.pass_context
def detect_command(ctx: click.Context, sources: tuple[str, ...], model_name: str | None, backend: str,
                   precision: str | None, inference_precision: str, device: str, threshold: float,
                   classes: str | None,
                   max_detections: int | None, output_format: str | None, as_json: bool, output: str | None,
                   save_dir: str | None, recursive: bool, max_pixels: int, workers: int | None,
                   offline: bool) -> None:
    """Detect objects in images: files, folders or glob patterns (quote them to let ssdtool expand them).

    Prints one line per detection (class, score, box [x_min, y_min, x_max, y_max] in pixels of the original
    image), or JSON with --format. The first run downloads and converts the model (unless --offline).
    An image that cannot be read is reported on stderr (and as an "error" record in JSON formats) and the
    others are still processed; the exit code is then 30.

    \b
    Examples:
      ssdtool detect photo.jpg
      ssdtool detect photos/ --recursive --format jsonl -o results.jsonl
      ssdtool detect 'val2017/*.jpg' --format coco --threshold 0.05 -o detections.json
      ssdtool detect street.jpg --classes person,car --save-dir annotated/
    """
    if as_json and output_format not in (None, "json"):
        raise UsageError(f"--json and --format {output_format} disagree", hint="pass one of them")
    fmt = "json" if as_json else (output_format or "table")
    app: AppContext = ctx.obj
    if fmt != "table" and output is None:
        want_json(ctx, True)  # setup errors (model missing offline, ...) also reach scripts as JSON
    from ssdtool.detect import find_images

    files, notes = find_images(sources, recursive=recursive, exclude=[save_dir] if save_dir else [])
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    if not files:
        raise UsageError(f"no images found in {', '.join(sources)}",
                         hint="pass image files, folders (with --recursive for subfolders) or patterns like "
                              "'photos/*.jpg'")
    _run(app, files, fmt, output, Path(save_dir) if save_dir else None, model_name=model_name, backend=backend,
         precision=precision, inference_precision=inference_precision, device=device, threshold=threshold,
         classes=classes, max_detections=max_detections, max_pixels=max_pixels, workers=workers, offline=offline)


def _run(app: AppContext, files: list[Any], fmt: str, output: str | None, save_dir: Path | None, **options: Any
         ) -> None:
    from PIL import Image

    from ssdtool.detect import Detector
    from ssdtool.labels import is_coco_labels, label_names

    registry = app.registry()
    entry = registry.model(options["model_name"])
    if fmt == "coco" and not is_coco_labels(label_names(entry)):
        raise UsageError(f"{entry.name} does not predict the 80 COCO classes, so it has no COCO category ids",
                         hint="use --format json")
    # The CLI owns the process, so it may hand the size limit to our own header check alone: Pillow's global
    # limit would otherwise warn (or fail) by its own rules first. Restored afterwards (tests share a process).
    sink = _Output(output, [f.path for f in files])  # a bad --output fails now, before the model is loaded
    pillow_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        detector = Detector(entry, options["backend"], precision=options["precision"],
                            inference_precision=options["inference_precision"], device=options["device"],
                            threshold=options["threshold"], classes=options["classes"],
                            max_detections=options["max_detections"], cache_dir=app.cache(), registry=registry,
                            offline=options["offline"], performance="latency" if len(files) == 1 else "throughput",
                            workers=options["workers"], max_pixels=options["max_pixels"],
                            progress=_download_progress(app))
        with detector:
            failed = _write_results(app, detector, files, fmt, sink, save_dir)
    except BaseException:
        sink.abort()  # no partial output file; an earlier complete one stays as it was
        raise
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    if failed:
        app.json_errors = False  # the records already carry the errors; a trailing JSON object would break them
        names = ", ".join(map(printable, failed[:5])) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        raise InputError(f"{len(failed)} of {len(files)} images could not be processed: {names}",
                         hint="the other results were written; see the messages above for each file")


def _write_results(app: AppContext, detector: Any, files: list[Any], fmt: str, sink: _Output,
                   save_dir: Path | None) -> list[str]:
    """Stream every result to ``sink`` (and annotated copies to ``save_dir``); return the inputs that failed."""
    from tqdm import tqdm

    from ssdtool.detect import coco_image_ids, coco_results

    quiet = app.verbosity < 0
    show_bar = not quiet and len(files) > 1 and _stderr_is_terminal()
    bar = tqdm(total=len(files), unit="img", file=sys.stderr, disable=not show_bar, dynamic_ncols=True,
               leave=False)

    def tell(message: str) -> None:
        if show_bar:
            bar.write(message, file=sys.stderr)
        else:
            click.echo(message, err=True)

    image_ids = coco_image_ids([f.path for f in files]) if fmt == "coco" else []
    records: list[dict[str, Any]] = []
    coco: list[dict[str, Any]] = []
    failed: list[str] = []
    used_names: set[str] = set()
    detections = 0
    started = time.perf_counter()
    run: dict[str, Any] | None = None
    try:
        for result in detector.many([f.path for f in files], keep_images=save_dir is not None):
            if run is None:  # the engine is ready once the first result is: what ran is known
                run = detector.run_info().to_dict()
                if fmt == "jsonl":
                    sink.write(jsonl_header(run))
            bar.update(1)
            if not result.ok:
                failed.append(result.path or str(result.index))
                tell(f"error: {printable(result.error)}")
            else:
                detections += len(result.detections)
                if save_dir is not None:
                    _save_annotated(result, files[result.index], save_dir, used_names, tell)
            if fmt == "table" and result.ok:
                sink.write(format_table_block(result))
            elif fmt == "jsonl":
                sink.write(json.dumps(result.to_dict()) + "\n")
            elif fmt == "json":
                records.append(result.to_dict())
            elif fmt == "coco" and result.ok:
                coco.extend(coco_results(result, image_ids[result.index]))
        if fmt == "json":
            sink.write(json_document(run or detector.run_info().to_dict(), records))
        elif fmt == "coco":
            sink.write("[\n" + ",\n".join("  " + json.dumps(r) for r in coco) + ("\n" if coco else "") + "]\n")
        sink.commit()
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    if not quiet:
        done = len(files) - len(failed)
        rate = f", {done / seconds:.2f} images/s" if seconds > 0 and done else ""
        failures = f", {len(failed)} failed" if failed else ""
        where = f"; results in {printable(sink.path)}" if sink.path else ""
        engine = detector.run_info().describe()
        click.echo(f"{len(files)} image{'s' if len(files) != 1 else ''}, {detections} detection"
                   f"{'s' if detections != 1 else ''}{failures} in {seconds:.2f} s{rate} ({detector.entry.name}, "
                   f"{engine}){where}", err=True)
    return failed


def _save_annotated(result: Any, file: Any, save_dir: Path, used: set[str], tell: Callable[[str], None]) -> None:
    from ssdtool.annotate import annotate, save_image

    target = _annotated_path(save_dir, file.relative, file.path, used)
    try:
        save_image(annotate(result.image, result.detections), target)
    except OSError as exc:
        # The detections are still reported; a full disk or a read-only folder is the user's to fix.
        tell(f"warning: cannot write {target}: {exc}")


run_command = click.Command(
    "run", callback=detect_command.callback, params=detect_command.params,
    help=(detect_command.help or "") + "\n\n'ssdtool run' is another name for 'ssdtool detect'.",
    short_help="Same as 'detect': detect objects in images.", context_settings=detect_command.context_settings)

COMMANDS = [detect_command, run_command]
