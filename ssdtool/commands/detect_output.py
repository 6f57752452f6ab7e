"""Where ``ssdtool detect`` writes: stdout or the ``--output`` file, progress, per-image errors and the summary on
stderr. The formats, drawn copies and the run itself are the library's (:mod:`ssdtool.outputs`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ssdtool.commands import progress
from ssdtool.commands.common import printable
from ssdtool.constants import ProgressMode

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


def write_results(detector: Detector, files: Sequence[InputFile], fmt: str, out: Output,
                  copies: Sequence[Path] | None, quiet: bool, progress_mode: str = "auto") -> list[str]:
    """:func:`ssdtool.outputs.write_detections` with progress as ``--progress`` says (a bar on a terminal, JSON
    lines off one, for more than one image), each failed image's error and the summary line on stderr; returns the
    inputs that failed. The output is committed only when every image was tried."""
    from ssdtool.outputs import write_detections

    kind = progress.resolve_mode(progress_mode, quiet) if len(files) > 1 else ProgressMode.NONE
    bar = None
    if kind == ProgressMode.BAR:  # tqdm (and the multiprocessing locks it sets up) only for a bar that shows
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="img", file=sys.stderr, dynamic_ncols=True, leave=False)
    events = progress.phase_progress({"detect": "detect"}, mode=kind) \
        if kind in (ProgressMode.JSON, ProgressMode.LOG) else None

    def tell(message: str) -> None:
        if bar is not None:
            bar.write(message, file=sys.stderr)
        else:
            click.echo(message, err=True)

    def on_result(result: ImageResult) -> None:
        if bar is not None:
            bar.update(1)
        if not result.ok:
            tell(f"error: {printable(result.error)}")
        if events is not None:  # after the image's own messages; results come in input order
            events(progress.PhaseEvent("detect", result.index + 1, len(files)))

    try:
        summary = write_detections(detector, [f.path for f in files], fmt, out, copies=copies, on_result=on_result,
                                   on_warning=tell)
        out.commit()
    finally:
        if bar is not None:
            bar.close()
    if not quiet:
        click.echo(summary.describe(out.path), err=True)
    return list(summary.failed)
