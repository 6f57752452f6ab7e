"""What ``ssdtool detect`` writes: one writer per output format, the output file, annotated copies, the summary.

stdout (or ``--output FILE``) carries the results; stderr carries per-image errors, the progress bar and the
summary line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import click

from ssdtool.commands import progress
from ssdtool.commands.common import printable

if TYPE_CHECKING:
    from ssdtool.detect import Detector
    from ssdtool.detections import ImageResult
    from ssdtool.fsutil import InputPath, OutputFile
    from ssdtool.inputs import InputFile


class Output:
    """stdout, or ``--output FILE`` (:class:`ssdtool.fsutil.OutputFile`: written whole or not at all, never over an
    input; a device or FIFO such as ``/dev/stdout`` is written to, never replaced). The path is checked on
    creation, before the model loads; :meth:`open` checks it again with the model files and opens it."""

    def __init__(self, path: str | None, inputs: Sequence[InputPath]) -> None:
        from ssdtool.fsutil import OutputPath, check_outputs

        self.path = Path(path) if path else None
        self.inputs = list(inputs)
        self._file: OutputFile | None = None
        if self.path is not None:
            check_outputs([OutputPath(self.path, "--output")], self.inputs)

    def open(self, more_inputs: Sequence[InputPath]) -> None:
        """Check again with the inputs known only once the model is ready (its files), then open the file."""
        from ssdtool.fsutil import OutputFile

        if self.path is not None:
            self._file = OutputFile(self.path, [*self.inputs, *more_inputs], option="--output")

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


class Writer(Protocol):
    """One output format: told what ran once the engine is ready, then every result in input order."""

    def begin(self, run: dict[str, Any]) -> None: ...

    def add(self, result: ImageResult) -> None: ...

    def finish(self, run: dict[str, Any]) -> None: ...


class TableWriter:
    def __init__(self, out: Output) -> None:
        self.out = out

    def begin(self, run: dict[str, Any]) -> None:
        pass

    def add(self, result: ImageResult) -> None:
        if result.ok:
            self.out.write(format_table_block(result))

    def finish(self, run: dict[str, Any]) -> None:
        pass


class JsonWriter(TableWriter):
    def __init__(self, out: Output) -> None:
        super().__init__(out)
        self.records: list[dict[str, Any]] = []

    def add(self, result: ImageResult) -> None:
        self.records.append(result.to_dict())

    def finish(self, run: dict[str, Any]) -> None:
        self.out.write(json_document(run, self.records))


class JsonLinesWriter(TableWriter):
    def begin(self, run: dict[str, Any]) -> None:
        self.out.write(jsonl_header(run))

    def add(self, result: ImageResult) -> None:
        self.out.write(json.dumps(result.to_dict()) + "\n")


class CocoWriter(TableWriter):
    """COCO results: ``image_id`` from the file names (see :func:`ssdtool.coco.coco_image_ids`)."""

    def __init__(self, out: Output, paths: Sequence[str]) -> None:
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


def make_writer(fmt: str, out: Output, paths: Sequence[str]) -> Writer:
    if fmt == "coco":
        return CocoWriter(out, paths)
    return {"table": TableWriter, "json": JsonWriter, "jsonl": JsonLinesWriter}[fmt](out)


def plan_copies(folder: Path, files: Sequence[InputFile], avoid: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """``--save-dir``'s file for every input, chosen before the first image runs: the input's path below its
    source folder (PNG unless the format is kept); with "-annotated" when that is a file the run reads (an input,
    a model file), one ``avoid`` names, or a folder, FIFO or device; with "-1", "-2", ... when another copy has
    that name. So a copy never replaces an input, a model file, the ``--output`` file, another copy or a special
    file (the identities of :func:`ssdtool.fsutil.file_identity`: spellings, links and hard links compare
    equal)."""
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
    import stat

    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISLNK(mode))


class Annotator:
    """``--save-dir``: a drawn copy of every image, to the files :func:`plan_copies` chose."""

    def __init__(self, targets: Sequence[Path], tell: Callable[[str], None]) -> None:
        self.targets, self.tell = targets, tell

    def save(self, result: ImageResult) -> None:
        from ssdtool.annotate import annotate, save_image

        target = self.targets[result.index]
        try:
            save_image(annotate(result.image, result.detections), target)
        except OSError as exc:
            # The detections are still reported; a full disk or a read-only folder is the user's to fix.
            self.tell(f"warning: cannot write {printable(target)}: {exc}")


def write_results(detector: Detector, files: Sequence[InputFile], writer: Writer, out: Output,
                  copies: Sequence[Path] | None, quiet: bool, progress_mode: str = "auto") -> list[str]:
    """Stream every result to ``writer`` (and drawn copies to ``copies``, one per file), with progress as
    ``--progress`` says (a bar on a terminal, JSON lines off one, for more than one image) and a summary line;
    returns the inputs that failed. The output is committed only when every image was tried."""
    from tqdm import tqdm

    kind = progress.resolve_mode(progress_mode, quiet) if len(files) > 1 else "none"
    show_bar = kind == "bar"
    bar = tqdm(total=len(files), unit="img", file=sys.stderr, disable=not show_bar, dynamic_ncols=True, leave=False)
    events = progress.phase_progress({"detect": "detect"}, mode=kind) if kind in ("json", "log") else None

    def tell(message: str) -> None:
        if show_bar:
            bar.write(message, file=sys.stderr)
        else:
            click.echo(message, err=True)

    annotator = Annotator(copies, tell) if copies is not None else None
    failed: list[str] = []
    detections = 0
    started = time.perf_counter()
    run: dict[str, Any] | None = None
    try:
        for result in detector.many([f.path for f in files], keep_images=annotator is not None):
            if run is None:  # the engine is ready once the first result is: what ran is known
                run = detector.run_info().to_dict()
                writer.begin(run)
            bar.update(1)
            if not result.ok:
                failed.append(result.path or str(result.index))
                tell(f"error: {printable(result.error)}")
            else:
                detections += len(result.detections)
                if annotator is not None:
                    annotator.save(result)
            writer.add(result)
            if events is not None:  # after the image's own messages; results come in input order
                events(progress.PhaseEvent("detect", result.index + 1, len(files)))
        writer.finish(run or detector.run_info().to_dict())
        out.commit()
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    if not quiet:
        done = len(files) - len(failed)
        rate = f", {done / seconds:.2f} images/s" if seconds > 0 and done else ""
        failures = f", {len(failed)} failed" if failed else ""
        where = f"; results in {printable(out.path)}" if out.path else ""
        click.echo(f"{len(files)} image{'s' if len(files) != 1 else ''}, {detections} detection"
                   f"{'s' if detections != 1 else ''}{failures} in {seconds:.2f} s{rate} ({detector.entry.name}, "
                   f"{detector.run_info().describe()}){where}", err=True)
    return failed
