"""Running configurations over a dataset's images: decode once, feed every engine, stream results, resume.

* One configuration: images go through detect's own path (:class:`~ssdtool.pipeline.ImagePreparer` for the
  engine's form, :class:`~ssdtool.pipeline.Prefetch`, :func:`~ssdtool.pipeline.ordered_outputs`), so eval runs at
  detect's throughput.
* Several: each image is decoded and resized once (network-sized RGB), a chunk of images at a time; every
  configuration builds its own tensors from those pixels and streams the chunk through its engine. Memory holds one
  chunk of network-sized images, whatever the number of images.
* Every engine comes from :class:`~ssdtool.detect.Detector` (``backends.prepare`` -> ``artifacts.model_file`` ->
  ``backends.open_engine``), and outputs become detections through ``Detector.detections_from_outputs``
  (:mod:`ssdtool.detections`) at threshold 0: every row the model outputs except padding (score 0).
* Results stream to a JSON-lines file (:mod:`ssdtool.evaluation.results`); a checkpoint written atomically every
  ``checkpoint_every`` images (and when the run stops on an exception) records how much of it is complete, so a
  resumed run continues from there and scores exactly the same records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssdtool.backends.spec import RunInfo
from ssdtool.constants import PerformanceHint
from ssdtool.detect import Detector
from ssdtool.errors import ImageError
from ssdtool.evaluation.configurations import Configuration
from ssdtool.evaluation.dataset import EvalImage, image_path
from ssdtool.evaluation.results import ImageRecord, ResultsFile
from ssdtool.imaging import preprocess
from ssdtool.pipeline import ImagePreparer, Prefetch, ordered_outputs

log = logging.getLogger("ssdtool.evaluation")

#: The hint every configuration's engine runs with: eval streams images, as detect does for many.
THROUGHPUT = PerformanceHint.THROUGHPUT.value
#: Images decoded at a time when several configurations share them (1200 px RGB: 4.3 MB each).
CHUNK_IMAGES = 16


@dataclass(frozen=True)
class EvalProgress:
    """A progress event, shaped like detect's phase events: phase ``evaluate``, ``done`` of ``total`` images (every
    configuration); then phase ``score``, ``done`` of ``total`` configurations scored by COCOeval."""

    phase: str
    done: int
    total: int


@dataclass
class ConfigurationRun:
    """One configuration's detector, what ran (read back from its engine) and its seconds so far, for images/s:
    alone, the whole image loop (decoding included) except writing the results file; with others, its own
    tensors, inference and post-processing (decoding is shared)."""

    configuration: Configuration
    detector: Detector
    run_info: RunInfo
    seconds: float = 0.0


def _detections(run: ConfigurationRun, outputs: dict[str, Any], width: int, height: int) -> list[list[float]]:
    rows = []
    for d in run.detector.detections_from_outputs(outputs, width, height):
        if d.coco_category_id is None:
            continue  # not a COCO label: cannot be scored against COCO categories (reported by the caller)
        x, y, w, h = d.coco_bbox
        rows.append([d.coco_category_id, d.score, x, y, w, h])
    return rows


class Runner:
    """Runs ``runs`` over ``images`` (already checked to exist) from ``images_dir``, appending to ``results``."""

    def __init__(self, runs: Sequence[ConfigurationRun], images_dir: Path, results: ResultsFile, *,
                 workers: int, max_pixels: int | None, checkpoint_every: int,
                 progress: Callable[[EvalProgress], None] | None) -> None:
        self.runs, self.images_dir, self.results = list(runs), images_dir, results
        self.workers, self.max_pixels, self.checkpoint_every = workers, max_pixels, checkpoint_every
        self.progress = progress

    def run(self, images: Sequence[EvalImage], done: int, total: int) -> None:
        """Evaluate ``images`` (the ones left after ``done`` of ``total``) into the results file, checkpointing as
        it goes; on any exception (Ctrl-C included) the complete part is checkpointed before it goes on."""
        position = done
        if self.progress is not None:
            self.progress(EvalProgress("evaluate", done, total))
        try:
            outcomes = self._single(images) if len(self.runs) == 1 else self._several(images)
            for record in outcomes:
                self.results.append(record)
                position += 1
                if (position - done) % self.checkpoint_every == 0:
                    self.results.checkpoint(position, [r.seconds for r in self.runs])
                if self.progress is not None:
                    self.progress(EvalProgress("evaluate", position, total))
        finally:
            self.results.checkpoint(position, [r.seconds for r in self.runs])

    def _paths(self, images: Sequence[EvalImage]) -> list[Path]:
        return [image_path(self.images_dir, image) for image in images]

    def _single(self, images: Sequence[EvalImage]) -> Iterator[ImageRecord]:
        run = self.runs[0]
        engine = run.detector.engine(THROUGHPUT)
        prepare = ImagePreparer(run.detector.entry, run.detector.form, max_pixels=self.max_pixels)
        prefetch = Prefetch(prepare, self._paths(images), workers=self.workers)
        try:
            started = time.perf_counter()
            for index, _source, prepared, outputs in ordered_outputs(engine, prefetch):
                image = images[index]
                if isinstance(prepared, ImageError) or outputs is None:
                    message = prepared.message if isinstance(prepared, ImageError) else "no outputs"
                    run.seconds += time.perf_counter() - started
                    yield ImageRecord(image.id, None, None, message, [])
                    started = time.perf_counter()
                    continue
                detections = _detections(run, outputs, prepared.width, prepared.height)
                run.seconds += time.perf_counter() - started
                yield ImageRecord(image.id, prepared.width, prepared.height, None, [detections])
                started = time.perf_counter()  # time spent by the caller (writing, checkpoints) is not the engine's
        finally:
            prefetch.close()
            prepare.close()

    def _several(self, images: Sequence[EvalImage]) -> Iterator[ImageRecord]:
        entry = self.runs[0].detector.entry
        prepare = ImagePreparer(entry, None, max_pixels=self.max_pixels)
        prefetch = Prefetch(prepare, self._paths(images), workers=self.workers)
        engines = [run.detector.engine(THROUGHPUT) for run in self.runs]
        try:
            chunk: list[tuple[int, Any]] = []
            for index, _source, prepared in prefetch:
                chunk.append((index, prepared))
                if len(chunk) == CHUNK_IMAGES:
                    yield from self._chunk(images, chunk, engines)
                    chunk = []
            if chunk:
                yield from self._chunk(images, chunk, engines)
        finally:
            prefetch.close()
            prepare.close()

    def _chunk(self, images: Sequence[EvalImage], chunk: list[tuple[int, Any]], engines: list[Any]
               ) -> Iterator[ImageRecord]:
        good = {index: prepared for index, prepared in chunk if not isinstance(prepared, ImageError)}
        found: dict[int, list[list[list[float]]]] = {index: [] for index in good}
        for run, engine in zip(self.runs, engines, strict=True):
            entry, form = run.detector.entry, run.detector.form
            started = time.perf_counter()
            tensors = ((index, preprocess(p.tensor, entry, form=form)) for index, p in good.items())
            for index, outputs in engine.infer_stream(tensors, engine.optimal_requests):
                found[index].append(_detections(run, outputs, good[index].width, good[index].height))
            run.seconds += time.perf_counter() - started
        for index, prepared in chunk:
            image = images[index]
            if isinstance(prepared, ImageError):
                yield ImageRecord(image.id, None, None, prepared.message, [])
            else:
                yield ImageRecord(image.id, prepared.width, prepared.height, None, found[index])
