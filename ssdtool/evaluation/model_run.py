"""A model run for :func:`ssdtool.evaluation.evaluate`: engines for the configurations, the results file and
resume, then the scores, read back from that file."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssdtool.artifacts import model_inputs
from ssdtool.backends.spec import EngineSpec
from ssdtool.cache import Cache
from ssdtool.errors import UsageError
from ssdtool.evaluation.agreement import DEFAULT_REFERENCE_SCORE, AgreementImage, pseudo_ground_truth
from ssdtool.evaluation.configurations import Configuration
from ssdtool.evaluation.dataset import CocoDataset, EvalImage, image_path
from ssdtool.evaluation.metrics import Scorer, evaluate_detections, ground_truth
from ssdtool.evaluation.outputs import EvalOutputs
from ssdtool.evaluation.references import references_for
from ssdtool.evaluation.report import EvalReport, RunResult
from ssdtool.evaluation.results import ResultsFile
from ssdtool.evaluation.runner import THROUGHPUT, ConfigurationRun, EvalProgress, Runner
from ssdtool.registry import ModelEntry, Registry

log = logging.getLogger("ssdtool.evaluation")


@dataclass(frozen=True)
class ModelRun:
    """Everything a model run needs besides the dataset: one record instead of a long signature."""

    entry: ModelEntry
    registry: Registry
    cache: Cache
    configurations: Sequence[Configuration]
    #: The engine every configuration runs on (its device, or its server); each configuration sets its backend and
    #: precisions on it.
    engine: EngineSpec
    offline: bool | None
    resume: bool
    results: Path | None
    checkpoint_every: int
    workers: int | None
    max_pixels: int | None
    progress: Callable[[EvalProgress], None] | None
    download_progress: Callable[[Any], None] | None
    #: The outputs, checked before the model loads; checked again here with the model files, before any image.
    outputs: EvalOutputs | None = None
    #: Agreement AP: the position of the reference configuration, whose detections at or above
    #: ``reference_score`` are the ground truth (the dataset then lists the images folder, without annotations).
    reference: int | None = None
    reference_score: float = DEFAULT_REFERENCE_SCORE
    #: The COCOeval implementation, and whether to compute the plots' data.
    scorer: Scorer | None = None
    curves: bool = False


def run_model(dataset: CocoDataset, gt: Any, selected: list[EvalImage], images_dir: Path, options: ModelRun,
              common: Mapping[str, Any]) -> EvalReport:
    """Run ``options.configurations`` over the ``selected`` images found in ``images_dir`` and score them."""
    from ssdtool.detect import Detector

    if not images_dir.is_dir():
        raise UsageError(f"images folder {images_dir} does not exist or is not a folder",
                         hint="pass --images DIR, the folder the annotation file's file_name entries are in")
    present, missing = [], []
    for image in selected:
        (present if os.path.exists(image_path(images_dir, image)) else missing).append(image)
    if missing:
        log.warning("%d of %d images listed in %s are not in %s; they are skipped", len(missing), len(selected),
                    dataset.path, images_dir)
    runs: list[ConfigurationRun] = []
    try:
        for configuration in options.configurations:
            detector = Detector(options.entry, configuration.engine(options.engine), threshold=0.0,
                                cache_dir=options.cache, registry=options.registry, offline=options.offline,
                                performance=THROUGHPUT, workers=options.workers, max_pixels=options.max_pixels,
                                progress=options.download_progress)
            runs.append(ConfigurationRun(configuration, detector, detector.run_info(THROUGHPUT)))
        key = _run_key(dataset, images_dir, present, runs)
        results_path = options.results or _default_results(options.cache, key)
        if options.outputs is not None:
            options.outputs.open(results_path, model_inputs(run.detector.model_file for run in runs))
        store = ResultsFile(results_path, key)
        earlier = store.resume([image.id for image in present]) if options.resume else None
        done = 0
        if earlier is None:
            if options.resume:
                log.warning("nothing to resume at %s; starting from the first image", results_path)
            store.start()
        else:
            done = earlier.images
            for run, seconds in zip(runs, earlier.seconds, strict=True):
                run.seconds = seconds
            log.info("resuming after %d of %d images", done, len(present))
        runner = Runner(runs, images_dir, store, workers=runs[0].detector.workers, max_pixels=options.max_pixels,
                        checkpoint_every=options.checkpoint_every, progress=options.progress)
        try:
            runner.run(present[done:], done, len(present))
            for run in runs:  # read back again: a server reports its precision with its answers
                run.run_info = run.detector.run_info(THROUGHPUT)
        except BaseException:
            log.warning("stopped before the last image; what ran is checkpointed in %s, and a rerun with "
                        "resume (--resume) continues from there", results_path)
            raise
        finally:
            store.close()
    finally:
        for run in runs:
            run.detector.close()
    return _report(dataset, gt, present, missing, store, runs, common, images_dir=str(images_dir), options=options)


def _coco_records(store: ResultsFile, k: int) -> list[dict[str, Any]]:
    """Configuration ``k``'s detections as COCO results records, read back from the results file."""
    return [{"image_id": r.image_id, "category_id": int(d[0]), "bbox": d[2:6], "score": d[1]}
            for r in store.records() if r.error is None for d in r.detections[k]]


def _report(dataset: CocoDataset, gt: Any, present: list[EvalImage], missing: list[EvalImage], store: ResultsFile,
            runs: list[ConfigurationRun], common: Mapping[str, Any], images_dir: str, options: ModelRun
            ) -> EvalReport:
    """Metrics from the results file, so a resumed run and an uninterrupted one score the very same records; the
    run itself keeps no detections in memory, and each configuration's are read only while it is scored."""
    failed, evaluated, mismatches, sizes = [], [], [], []
    for image, record in zip(present, store.records(), strict=True):
        if record.error is not None:
            failed.append((image.file_name, record.error))
            continue
        evaluated.append(record.image_id)
        assert record.width is not None and record.height is not None
        sizes.append(AgreementImage(record.image_id, record.width, record.height, image.file_name))
        if image.width is not None and (record.width, record.height) != (image.width, image.height):
            mismatches.append(image.file_name)
    agreement, baseline = None, 0
    if options.reference is not None:  # the reference's confident detections are the ground truth
        baseline = options.reference
        dataset = pseudo_ground_truth(sizes, _coco_records(store, baseline), options.reference_score,
                                      runs[baseline].configuration.label)
        gt = ground_truth(dataset, options.scorer)
        agreement = {"reference": runs[baseline].configuration.label, "min_score": options.reference_score,
                     "ground_truth_boxes": dataset.annotation_count}
    progress = options.progress
    metrics = []
    for k in range(len(runs)):
        if progress is not None:  # COCOeval takes a minute or more on val2017: say so
            progress(EvalProgress("score", k, len(runs)))
        metrics.append(evaluate_detections(dataset, _coco_records(store, k), evaluated, gt, scorer=options.scorer,
                                           curves=options.curves))
    if progress is not None:
        progress(EvalProgress("score", len(runs), len(runs)))
    base = metrics[baseline].stats["AP"]
    outcomes = []
    for k, (run, scored) in enumerate(zip(runs, metrics, strict=True)):
        ap, info = scored.stats["AP"], run.run_info
        outcomes.append(RunResult(
            run.configuration.label, info.model, info.backend, info.precision, info.inference_precision,
            info.inference_precision_requested, info.device, scored,
            len(evaluated) / run.seconds if run.seconds > 0 else None, run.seconds,
            None if ap is None or base is None else ap - base, functools.partial(_coco_records, store, k)))
    sha = runs[0].detector.entry.primary_file.sha256
    references = None if agreement else references_for(sha, outcomes[0].metrics.stats["AP"])
    return EvalReport(images_dir=images_dir, source="model", runs=outcomes, images_evaluated=len(evaluated),
                      missing=[image.file_name for image in missing], failed=failed, size_mismatches=mismatches,
                      dropped_detections=0, references=references, results_file=str(store.path),
                      agreement=agreement, baseline=baseline, **common)


def _run_key(dataset: CocoDataset, images_dir: Path, present: list[EvalImage], runs: list[ConfigurationRun]
             ) -> dict[str, Any]:
    positions = hashlib.sha256(json.dumps([image.position for image in present]).encode()).hexdigest()
    return {"annotations_sha256": dataset.sha256, "images_dir": str(images_dir.absolute()),
            "images": positions, "count": len(present),
            "configurations": [{"label": r.configuration.label, "model": r.run_info.model,
                                "model_path": r.run_info.model_path, "backend": r.run_info.backend,
                                "device": r.run_info.device,  # a server's URL: its results are its own
                                "inference_precision": r.run_info.inference_precision} for r in runs]}


def _default_results(cache: Cache, key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache.make_folder(cache.root / "eval")
    return folder / f"{digest}.jsonl"
