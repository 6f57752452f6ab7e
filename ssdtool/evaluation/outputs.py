"""Every file an evaluation reads and writes, put through the one output-path guard
(:func:`ssdtool.fsutil.check_outputs`) before the first image runs.

Inputs: the annotation file, every image it lists (in the images folder), the detections file or MLPerf log, the
registry file and the model files. Outputs: ``--results`` and its checkpoint (only ever replacing an earlier
results file: :func:`ssdtool.evaluation.results.refuse_replacing`), the ``--save-detections`` files (one per
configuration with several), the ``--plots DIR`` files (a PNG and a CSV per plot: :mod:`ssdtool.evaluation.plots`)
and the ``--report`` file. None may be an input or another output. The check runs twice: once before the model
is loaded (everything but the model files is known then), and again with the model files and the results file the
run uses, just before the first image; nothing is written before the second. The plots and the report are checked
a third time when they are written, each through :func:`ssdtool.fsutil.atomic_write`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ssdtool import fsutil
from ssdtool.errors import UsageError
from ssdtool.evaluation.dataset import CocoDataset, image_path
from ssdtool.evaluation.plots import plot_names
from ssdtool.evaluation.results import checkpoint_path, refuse_replacing, refuse_replacing_checkpoint
from ssdtool.fsutil import InputPath, OutputFile, OutputPath


def eval_inputs(dataset: CocoDataset, images_dir: Path | None, detections: str | os.PathLike[str] | None,
                mlperf_log: str | os.PathLike[str] | None, annotations: bool = True) -> list[InputPath]:
    """What an evaluation reads, named as the user knows it, for the guard (the registry and model files
    besides: :func:`ssdtool.artifacts.registry_inputs`, :func:`ssdtool.artifacts.model_inputs`); ``annotations``
    False: ``dataset`` lists the images folder, there is no annotation file."""
    inputs = [InputPath(Path(dataset.path), "the annotation file (--annotations)")] if annotations else []
    if detections is not None:
        inputs.append(InputPath(Path(detections), "the detections file (--detections)"))
    if mlperf_log is not None:
        inputs.append(InputPath(Path(mlperf_log), "the MLPerf accuracy log (--mlperf-log)"))
    if images_dir is not None:
        inputs.append(InputPath(images_dir, "the images folder (--images)"))
        what = "an image the annotation file lists" if annotations else "an image of the images folder"
        inputs += [InputPath(image_path(images_dir, image), what) for image in dataset.images]
    return inputs


def saved_detections_paths(path: str | os.PathLike[str] | None, labels: Sequence[str]) -> list[Path]:
    """The ``--save-detections`` files: FILE itself, or with several configurations FILE's stem plus each one."""
    if path is None:
        return []
    target = Path(path)
    if len(labels) == 1:
        return [target]
    return [target.with_name(f"{target.stem}.{label.replace(':', '-')}{target.suffix}") for label in labels]


class EvalOutputs:
    """The outputs of one evaluation: checked on creation (before the model loads), checked again and opened by
    :meth:`open` (before the first image), written by :meth:`save`."""

    def __init__(self, inputs: Sequence[InputPath], results: Path | None,
                 save_detections: str | os.PathLike[str] | None, labels: Sequence[str],
                 plots: str | os.PathLike[str] | None = None, report: str | os.PathLike[str] | None = None,
                 images_dir: Path | None = None) -> None:
        self.inputs = list(inputs)
        self.saved_paths = saved_detections_paths(save_detections, labels)
        self.plots_dir = Path(plots) if plots is not None else None
        self.plot_paths = plot_paths(self.plots_dir, len(labels))
        self.report = Path(report) if report is not None else None
        self.files: list[OutputFile] = []
        made = self.plots_dir is not None and not self.plots_dir.is_dir()
        if self.plots_dir is not None:
            check_plots_dir(self.plots_dir, images_dir)
            # Made now, so that the other outputs may go in it (--plots out --report out/report.html) and are
            # checked there like anywhere else; removed again when one of them is refused.
            self._write(self.plots_dir, None, "--plots")
        try:
            fsutil.check_outputs(self._planned(results), self.inputs)
        except BaseException:
            if made:
                with contextlib.suppress(OSError):
                    os.rmdir(self.plots_dir)  # type: ignore[arg-type]
            raise

    @property
    def wants_curves(self) -> bool:
        """Whether anything this run writes needs the plots' data."""
        return self.plots_dir is not None or self.report is not None

    def _planned(self, results: Path | None) -> list[OutputPath]:
        planned = []
        if results is not None:
            checkpoint = checkpoint_path(results)
            planned += [OutputPath(results, "--results", stream=False, refuse_existing=refuse_replacing),
                        OutputPath(checkpoint, "--results", stream=False,
                                   what=f"the checkpoint {os.fspath(checkpoint)} of --results {os.fspath(results)}",
                                   refuse_existing=refuse_replacing_checkpoint)]
        planned += [OutputPath(path, "--save-detections") for path in self.saved_paths]
        if self.plots_dir is not None:
            planned += [OutputPath(path, "--plots", what=f"{os.fspath(path)} (a file --plots writes)",
                                   stream=False, metavar="DIR") for path in self.plot_paths]
        if self.report is not None:
            planned.append(OutputPath(self.report, "--report", stream=False))
        return planned

    def check_again(self, model_files: Iterable[InputPath] = ()) -> None:
        """The guard once more, just before the plots and the report are written (a long run gives time for
        files to appear); the results file is written by then and no longer checked."""
        if self.plots_dir is not None:
            check_plots_dir(self.plots_dir, None)
        fsutil.check_outputs(self._planned(None), [*self.inputs, *model_files])

    def open(self, results: Path | None = None, model_files: Iterable[InputPath] = ()) -> None:
        """The guard again, with the results file the run uses and the model files; then the ``--save-detections``
        files are opened (a temporary file each, renamed into place by :meth:`save`)."""
        fsutil.check_outputs(self._planned(results), [*self.inputs, *model_files])
        try:
            for path in self.saved_paths:
                self.files.append(OutputFile(path, option="--save-detections"))
        except BaseException:
            self.abort()
            raise

    def save(self, runs: Sequence[Any]) -> list[tuple[str, int]]:
        """Write each run's COCO results records to its ``--save-detections`` file; (path, records) per file."""
        saved: list[tuple[str, int]] = []
        if not self.files:
            return saved
        for out, run in zip(self.files, runs, strict=True):
            records = run.detections
            out.write(json.dumps(records))
            out.commit()
            saved.append((os.fspath(out.path), len(records)))
        return saved

    def save_plots(self, report: Any) -> tuple[list[str], str | None]:
        """Draw the plots of ``report`` (an :class:`~ssdtool.evaluation.report.EvalReport` scored with curves),
        write each PNG and CSV into ``--plots DIR`` and the HTML into ``--report``, each atomically; returns the
        plot files and the report file written."""
        if not self.wants_curves:
            return [], None
        from ssdtool import __version__
        from ssdtool.evaluation.html_report import render_report
        from ssdtool.evaluation.plots import plot_tables, render_png

        self.check_again()
        best = {run.configuration: run.metrics.curves.thresholds.best for run in report.runs}
        drawn = [(table, render_png(table, best)) for table in plot_tables(report.runs, dict(report.categories),
                                                                          report.baseline)]
        written: list[str] = []
        if self.plots_dir is not None:
            self._write(self.plots_dir, None, "--plots")
            for table, png in drawn:
                for suffix, data in ((".png", png), (".csv", table.to_csv())):
                    path = self.plots_dir / f"{table.name}{suffix}"
                    self._write(path, data, "--plots")
                    written.append(os.fspath(path))
        if self.report is None:
            return written, None
        data = dataclasses.replace(report, plots=written).to_dict(per_class=True)
        self._write(self.report, render_report(data, drawn, __version__), "--report")
        return written, os.fspath(self.report)

    @staticmethod
    def _write(path: Path, data: bytes | None, option: str) -> None:
        """``data`` to ``path`` through the one atomic writer; ``None``: make the folder ``path``."""
        try:
            if data is None:
                if not path.is_dir():
                    os.mkdir(path)
            else:
                fsutil.atomic_write(path, data)
        except OSError as exc:
            raise UsageError(f"cannot write {option} {os.fspath(path)}: {exc.strerror or exc}",
                             hint=f"free some space, or choose another {option} "
                                  f"{'DIR' if option == '--plots' else 'FILE'}") from None

    def abort(self) -> None:
        """Drop what was not committed (a committed file is already in place); idempotent."""
        for out in self.files:
            out.abort()


def plot_paths(folder: Path | None, configurations: int) -> list[Path]:
    """The files ``--plots DIR`` writes for a run of ``configurations`` configurations: a PNG and a CSV per
    plot."""
    if folder is None:
        return []
    return [folder / f"{name}{suffix}" for name in plot_names(configurations) for suffix in (".png", ".csv")]


def check_plots_dir(folder: Path, images_dir: Path | None) -> None:
    """``--plots DIR`` is a folder, or can be made (its parent is one), and is not the images folder (whose
    image files eval reads)."""
    if folder.is_dir():
        if images_dir is not None and fsutil.file_identity(folder) == fsutil.file_identity(images_dir):
            raise UsageError(f"refusing --plots {os.fspath(folder)}: it is the images folder (--images), and eval "
                             "writes no files among the images it reads", hint="choose another --plots DIR")
        return
    if os.path.lexists(folder):
        raise UsageError(f"cannot write --plots {os.fspath(folder)}: it exists and is not a folder",
                         hint="choose another --plots DIR")
    if not folder.parent.is_dir():
        raise UsageError(f"cannot write --plots {os.fspath(folder)}: folder {os.fspath(folder.parent)} does not "
                         "exist", hint="create the folder first, or choose another --plots DIR")
