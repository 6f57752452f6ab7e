"""Every file an evaluation reads and writes, put through the one output-path guard
(:func:`ssdtool.fsutil.check_outputs`) before the first image runs.

Inputs: the annotation file, every image it lists (in the images folder), the detections file or MLPerf log, the
registry file and the model files. Outputs: ``--results`` and its checkpoint (only ever replacing an earlier
results file: :func:`ssdtool.evaluation.results.refuse_replacing`), and the ``--save-detections`` files (one per
configuration with several). None may be an input or another output. The check runs twice: once before the model
is loaded (everything but the model files is known then), and again with the model files and the results file the
run uses, just before the first image; nothing is written before the second.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ssdtool import fsutil
from ssdtool.evaluation.dataset import CocoDataset, image_path
from ssdtool.evaluation.results import checkpoint_path, refuse_replacing, refuse_replacing_checkpoint
from ssdtool.fsutil import InputPath, OutputFile, OutputPath


def eval_inputs(dataset: CocoDataset, images_dir: Path | None, detections: str | os.PathLike[str] | None,
                mlperf_log: str | os.PathLike[str] | None) -> list[InputPath]:
    """What an evaluation reads, named as the user knows it, for the guard (the registry and model files
    besides: :func:`ssdtool.artifacts.registry_inputs`, :func:`ssdtool.artifacts.model_inputs`)."""
    inputs = [InputPath(Path(dataset.path), "the annotation file (--annotations)")]
    if detections is not None:
        inputs.append(InputPath(Path(detections), "the detections file (--detections)"))
    if mlperf_log is not None:
        inputs.append(InputPath(Path(mlperf_log), "the MLPerf accuracy log (--mlperf-log)"))
    if images_dir is not None:
        inputs.append(InputPath(images_dir, "the images folder (--images)"))
        inputs += [InputPath(image_path(images_dir, image), "an image the annotation file lists")
                   for image in dataset.images]
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
                 save_detections: str | os.PathLike[str] | None, labels: Sequence[str]) -> None:
        self.inputs = list(inputs)
        self.saved_paths = saved_detections_paths(save_detections, labels)
        self.files: list[OutputFile] = []
        fsutil.check_outputs(self._planned(results), self.inputs)

    def _planned(self, results: Path | None) -> list[OutputPath]:
        planned = []
        if results is not None:
            checkpoint = checkpoint_path(results)
            planned += [OutputPath(results, "--results", stream=False, refuse_existing=refuse_replacing),
                        OutputPath(checkpoint, "--results", stream=False,
                                   what=f"the checkpoint {os.fspath(checkpoint)} of --results {os.fspath(results)}",
                                   refuse_existing=refuse_replacing_checkpoint)]
        return planned + [OutputPath(path, "--save-detections") for path in self.saved_paths]

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

    def abort(self) -> None:
        """Drop what was not committed (a committed file is already in place); idempotent."""
        for out in self.files:
            out.abort()
