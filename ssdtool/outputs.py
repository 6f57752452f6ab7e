"""What ``ssdtool detect`` writes, as a library: results in every output format (:data:`WRITERS`, keyed by
:class:`~ssdtool.constants.OutputFormat`), drawn copies of the images, and the run's summary.

``ssdtool detect`` is a thin command over :func:`write_detections`; a Python caller gets the same bytes::

    with Detector("ssd-resnet34-1200") as detector, open("detections.json", "w", encoding="utf-8") as out:
        summary = write_detections(detector, ["000000000139.jpg"], "coco", out)

Writers write text to a sink (anything with ``write(str)``: an open file, ``io.StringIO``,
:class:`ssdtool.fsutil.OutputFile` for a file written whole or not at all). Nothing here prints: per-image results
and warnings go to callbacks.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ssdtool.constants import OutputFormat
from ssdtool.errors import UsageError
from ssdtool.redact import printable

if TYPE_CHECKING:
    from ssdtool.detect import Detector
    from ssdtool.detections import ImageResult
    from ssdtool.inputs import InputFile
    from ssdtool.registry import ModelEntry


class TextSink(Protocol):
    def write(self, text: str, /) -> object: ...


# ------------------------------------------------------------------------------------------------ formats
def format_table_block(result: ImageResult) -> str:
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
    """The ``json`` document: ``{"run": {...}, "images": [...]}``, the run on one line, each image indented with
    one line per detection (readable, and still plain JSON)."""
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
    """The first ``jsonl`` line: what ran (the image lines follow, one per input)."""
    return json.dumps({"run": run}) + "\n"


class Writer(Protocol):
    """One output format: told what ran once the engine is ready, then every result in input order."""

    def begin(self, run: dict[str, Any]) -> None: ...

    def add(self, result: ImageResult) -> None: ...

    def finish(self, run: dict[str, Any]) -> None: ...


class TableWriter:
    """``table``: one block per image that was read (errors are the caller's to report)."""

    def __init__(self, out: TextSink, paths: Sequence[str | None] = ()) -> None:
        self.out = out

    def begin(self, run: dict[str, Any]) -> None:
        pass

    def add(self, result: ImageResult) -> None:
        if result.ok:
            self.out.write(format_table_block(result))

    def finish(self, run: dict[str, Any]) -> None:
        pass


class JsonWriter(TableWriter):
    """``json``: one document, written at the end (error records included)."""

    def __init__(self, out: TextSink, paths: Sequence[str | None] = ()) -> None:
        super().__init__(out)
        self.records: list[dict[str, Any]] = []

    def add(self, result: ImageResult) -> None:
        self.records.append(result.to_dict())

    def finish(self, run: dict[str, Any]) -> None:
        self.out.write(json_document(run, self.records))


class JsonLinesWriter(TableWriter):
    """``jsonl``: the run line, then one line per image as it comes (error records included)."""

    def begin(self, run: dict[str, Any]) -> None:
        self.out.write(jsonl_header(run))

    def add(self, result: ImageResult) -> None:
        self.out.write(json.dumps(result.to_dict()) + "\n")


class CocoWriter(TableWriter):
    """``coco``: COCO results; ``image_id`` from the file names (see :func:`ssdtool.coco.coco_image_ids`)."""

    def __init__(self, out: TextSink, paths: Sequence[str | None] = ()) -> None:
        from ssdtool.coco import coco_image_ids

        super().__init__(out)
        self.image_ids = coco_image_ids(list(paths))
        self.records: list[dict[str, Any]] = []

    def add(self, result: ImageResult) -> None:
        from ssdtool.coco import coco_results

        if result.ok:
            self.records.extend(coco_results(result, self.image_ids[result.index]))

    def finish(self, run: dict[str, Any]) -> None:
        rows = ",\n".join("  " + json.dumps(r) for r in self.records)
        self.out.write("[\n" + rows + ("\n" if self.records else "") + "]\n")


#: The writer of each output format: ``WRITERS[format](sink, paths)``; ``paths`` in input order (COCO ids).
WRITERS: dict[OutputFormat, Callable[[TextSink, Sequence[str | None]], Writer]] = {
    OutputFormat.TABLE: TableWriter, OutputFormat.JSON: JsonWriter, OutputFormat.JSONL: JsonLinesWriter,
    OutputFormat.COCO: CocoWriter,
}


def output_format(fmt: str | OutputFormat) -> OutputFormat:
    """``fmt`` as an :class:`OutputFormat`; :class:`UsageError` naming the formats otherwise."""
    try:
        return OutputFormat.parse(fmt, "output format")  # type: ignore[return-value]
    except ValueError as exc:
        raise UsageError(str(exc), hint=f"pass --format {', '.join(OutputFormat.values())}") from None


def check_format(fmt: str | OutputFormat, entry: ModelEntry) -> OutputFormat:
    """``fmt``, refused for a model it cannot describe: COCO results need the 80 COCO classes' category ids."""
    from ssdtool.labels import is_coco_labels, label_names

    chosen = output_format(fmt)
    if chosen == OutputFormat.COCO and not is_coco_labels(label_names(entry)):
        raise UsageError(f"{entry.name} does not predict the 80 COCO classes, so it has no COCO category ids",
                         hint="use --format json")
    return chosen


def make_writer(fmt: str | OutputFormat, out: TextSink, paths: Sequence[str | None] = ()) -> Writer:
    return WRITERS[output_format(fmt)](out, paths)


# ------------------------------------------------------------------------------------------------ drawn copies
def plan_copies(folder: Path, files: Sequence[InputFile], avoid: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The drawn copy's file for every input (``detect --save-dir``), chosen before the first image runs: the
    input's path below its source folder (PNG unless the format is kept); with "-annotated" when that is a file
    the run reads (an input, a model file), one ``avoid`` names, or a folder, FIFO or device; with "-1", "-2", ...
    when another copy has that name. So a copy never replaces an input, a model file, the results file, another
    copy or a special file (the identities of :func:`ssdtool.fsutil.file_identity`: spellings, links and hard links
    compare equal)."""
    from ssdtool.annotate import output_name
    from ssdtool.fsutil import file_identity

    read = {file_identity(path) for path in avoid}
    written: set[tuple[object, ...]] = set()
    targets: list[Path] = []
    for file in files:
        name = Path(output_name(file.relative))
        if file_identity(folder / name) in read or _special(folder / name):
            name = name.with_name(f"{name.stem}-annotated{name.suffix}")
        candidate, counter = folder / name, 1
        while file_identity(candidate) in read or file_identity(candidate) in written or _special(candidate):
            candidate = folder / name.with_name(f"{name.stem}-{counter}{name.suffix}")
            counter += 1
        written.add(file_identity(candidate))
        targets.append(candidate)
    return targets


def _special(path: Path) -> bool:
    """Whether something other than a regular file or a link is at ``path`` (a folder, FIFO, device, socket): a
    copy is renamed into place, which would replace it."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISLNK(mode))


def save_copy(result: ImageResult, target: Path) -> str | None:
    """Draw ``result``'s detections on its image (kept by ``Detector.many(keep_images=True)``) into ``target``;
    the warning to show when it cannot be written (the detections still count: a full disk or a read-only folder
    is the user's to fix), else None."""
    from ssdtool.annotate import annotate, save_image

    try:
        save_image(annotate(result.image, result.detections), target)
    except OSError as exc:
        return f"warning: cannot write {printable(target)}: {exc}"
    return None


# ------------------------------------------------------------------------------------------------ a run
@dataclass(frozen=True)
class RunSummary:
    """What a run did: images tried, detections written, the inputs that failed, wall seconds, what ran."""

    images: int
    detections: int
    failed: tuple[str, ...]
    seconds: float
    model: str
    engine: str

    def describe(self, output: str | os.PathLike[str] | None = None) -> str:
        """The summary line for people (``detect`` prints it on stderr); ``output`` names the results file."""
        done = self.images - len(self.failed)
        rate = f", {done / self.seconds:.2f} images/s" if self.seconds > 0 and done else ""
        failures = f", {len(self.failed)} failed" if self.failed else ""
        where = f"; results in {printable(os.fspath(output))}" if output else ""
        return (f"{self.images} image{'s' if self.images != 1 else ''}, {self.detections} detection"
                f"{'s' if self.detections != 1 else ''}{failures} in {self.seconds:.2f} s{rate} ({self.model}, "
                f"{self.engine}){where}")


def write_detections(detector: Detector, images: Sequence[str | os.PathLike[str]], fmt: str | OutputFormat,
                     out: TextSink, *, copies: Sequence[Path] | None = None,
                     on_result: Callable[[ImageResult], None] | None = None,
                     on_warning: Callable[[str], None] | None = None) -> RunSummary:
    """Run ``detector`` on every image, in input order, and write the results to ``out`` in format ``fmt``.

    ``copies``: one file per image (:func:`plan_copies`) for a drawn copy. ``on_result(result)`` is called after
    each image was written (its ``error`` set when it could not be read: every image is tried), ``on_warning``
    with what could not be written besides (a drawn copy). Committing ``out`` is the caller's.
    """
    writer = make_writer(check_format(fmt, detector.entry), out, [os.fspath(p) for p in images])
    if copies is not None and len(copies) != len(images):
        raise UsageError(f"{len(copies)} copy files for {len(images)} images: plan them with plan_copies")
    failed: list[str] = []
    detections = 0
    started = time.perf_counter()
    run: dict[str, Any] | None = None
    for result in detector.many([os.fspath(p) for p in images], keep_images=copies is not None):
        if run is None:  # the engine is ready once the first result is: what ran is known
            run = detector.run_info().to_dict()
            writer.begin(run)
        if not result.ok:
            failed.append(result.path or str(result.index))
        else:
            detections += len(result.detections)
            if copies is not None and (warning := save_copy(result, copies[result.index])) and on_warning:
                on_warning(warning)
        writer.add(result)
        if on_result is not None:
            on_result(result)
    writer.finish(run or detector.run_info().to_dict())
    return RunSummary(len(images), detections, tuple(failed), time.perf_counter() - started, detector.entry.name,
                      detector.run_info().describe())
