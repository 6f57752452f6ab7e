"""``ssdtool.evaluate``: COCO accuracy of one or several configurations, or of an existing results file."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssdtool.cache import Cache
from ssdtool.constants import InferencePrecision
from ssdtool.errors import UsageError
from ssdtool.evaluation.configurations import Configuration, parse_configurations
from ssdtool.evaluation.dataset import CocoDataset, EvalImage, image_path, load_annotations
from ssdtool.evaluation.detections_file import read_detections_file
from ssdtool.evaluation.metrics import CocoMetrics, evaluate_detections, ground_truth
from ssdtool.evaluation.references import references_for
from ssdtool.evaluation.results import ResultsFile
from ssdtool.evaluation.runner import ConfigurationRun, EvalProgress, Runner
from ssdtool.imaging import DEFAULT_MAX_PIXELS
from ssdtool.registry import ModelEntry, Registry, load_registry

log = logging.getLogger("ssdtool.evaluation")

DEFAULT_CHECKPOINT_EVERY = 64


@dataclass(frozen=True)
class RunResult:
    """One configuration's outcome. :attr:`detections` are its COCO results records (not in :meth:`to_dict`;
    read on use, from the results file for a model run)."""

    configuration: str
    model: str | None
    backend: str | None
    precision: str | None
    inference_precision: str | None
    inference_precision_requested: str | None
    device: str | None
    metrics: CocoMetrics
    images_per_second: float | None
    seconds: float
    delta_ap: float | None
    load_detections: Callable[[], list[dict[str, Any]]] = field(repr=False, compare=False, default=list)

    @property
    def detections(self) -> list[dict[str, Any]]:
        return self.load_detections()

    def to_dict(self, per_class: bool = False, names: Mapping[int, str] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"configuration": self.configuration, "model": self.model, "backend": self.backend,
                "precision": self.precision, "inference_precision": self.inference_precision,
                "inference_precision_requested": self.inference_precision_requested, "device": self.device,
                "metrics": self.metrics.to_dict(), "images_per_second": self.images_per_second,
                "engine_seconds": self.seconds, "coco_eval_seconds": self.metrics.seconds,
                "delta_ap": self.delta_ap}
        if per_class:
            data["per_class"] = [{"category_id": k, "name": (names or {}).get(k, ""), "AP": v}
                                 for k, v in self.metrics.per_class.items()]
        return data


@dataclass(frozen=True)
class EvalReport:
    """What ``ssdtool eval --json`` prints: the first configuration's fields at the top, every configuration
    under ``compare`` when there were several, and what happened to the images."""

    annotations: str
    images_dir: str | None
    source: str
    runs: list[RunResult]
    images_listed: int
    images_selected: int
    images_evaluated: int
    missing: list[str]
    failed: list[tuple[str, str]]
    size_mismatches: list[str]
    unknown_categories: list[int]
    dropped_detections: int
    references: dict[str, Any] | None
    results_file: str | None
    categories: Mapping[int, str] = field(default_factory=dict)

    @property
    def images_skipped(self) -> int:
        return len(self.missing) + len(self.failed)

    def to_dict(self, per_class: bool = False) -> dict[str, Any]:
        first = self.runs[0].to_dict(per_class, self.categories)
        data: dict[str, Any] = {**first, "source": self.source, "annotations": self.annotations,
                                "images_dir": self.images_dir, "images_listed": self.images_listed,
                                "images_selected": self.images_selected, "images_evaluated": self.images_evaluated,
                                "images_skipped": self.images_skipped, "missing_images": self.missing,
                                "failed_images": [{"file": f, "error": e} for f, e in self.failed],
                                "size_mismatches": self.size_mismatches,
                                "unknown_categories": self.unknown_categories,
                                "dropped_detections": self.dropped_detections, "references": self.references,
                                "results_file": self.results_file}
        if len(self.runs) > 1:
            data["compare"] = [run.to_dict(per_class, self.categories) for run in self.runs]
        return data


def select_images(dataset: CocoDataset, limit: int | None, sample: int | None, seed: int) -> list[EvalImage]:
    """The images to evaluate, in file order: all, the first ``limit``, or ``sample`` drawn with ``seed``."""
    images = list(dataset.images)
    if limit is not None and sample is not None:
        raise UsageError("--limit and --sample both pick a subset", hint="pass one of them")
    for name, value in (("limit", limit), ("sample", sample)):
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be at least 1, got {value}")
    if limit is not None:
        return images[:limit]
    if sample is not None:
        if sample >= len(images):
            return images
        chosen = sorted(random.Random(seed).sample(range(len(images)), sample))
        return [images[i] for i in chosen]
    return images


def evaluate(annotations: str | os.PathLike[str], images: str | os.PathLike[str] | None = None,
             model: str | ModelEntry | None = None, *, compare: str | Sequence[Configuration] | None = None,
             backend: str = "auto", precision: str | None = None, inference_precision: str = "auto",
             device: str = "CPU", detections: str | os.PathLike[str] | None = None,
             mlperf_log: str | os.PathLike[str] | None = None, limit: int | None = None,
             sample: int | None = None, seed: int = 0, resume: bool = False,
             results: str | os.PathLike[str] | None = None, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
             workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
             cache_dir: str | os.PathLike[str] | Cache | None = None,
             registry: str | os.PathLike[str] | Registry | None = None, offline: bool | None = None,
             progress: Callable[[EvalProgress], None] | None = None,
             download_progress: Callable[[Any], None] | None = None) -> EvalReport:
    """Evaluate on the COCO annotation file ``annotations``; see docs/eval.md and docs/python-api.md.

    Three sources of detections: a model run over the images folder ``images`` (one configuration from
    ``backend``/``precision``/``inference_precision``, or several from ``compare``), an existing COCO results file
    ``detections``, or an MLPerf accuracy log ``mlperf_log``. ``progress`` receives :class:`EvalProgress` events.
    Missing images are skipped and listed in the report; the caller decides whether that is an error.
    """
    sources = [s for s in (images if detections is None and mlperf_log is None else None, detections, mlperf_log)
               if s is not None]
    if detections is not None and mlperf_log is not None:
        raise UsageError("--detections and --mlperf-log are two sources of detections", hint="pass one of them")
    if not sources:
        raise UsageError("nothing to evaluate: no images folder, detections file or MLPerf log",
                         hint="pass --images DIR (or --detections FILE, or --mlperf-log FILE)")
    if checkpoint_every < 1:
        raise UsageError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
    dataset = load_annotations(annotations)
    selected = select_images(dataset, limit, sample, seed)
    gt = ground_truth(dataset)
    common = {"annotations": dataset.path, "unknown_categories": list(dataset.unknown_categories),
              "images_listed": len(dataset.images), "images_selected": len(selected),
              "categories": dict(dataset.categories)}
    if mlperf_log is not None:
        from ssdtool.evaluation.mlperf_log import read_accuracy_log

        log_data = read_accuracy_log(mlperf_log, dataset)
        metrics = evaluate_detections(dataset, log_data.detections, log_data.image_ids, gt)
        run = RunResult("mlperf-log", None, None, None, None, None, None, metrics, None, 0.0, None,
                        lambda: log_data.detections)
        return EvalReport(images_dir=None, source="mlperf-log", runs=[run],
                          images_evaluated=len(log_data.image_ids), missing=[], failed=[], size_mismatches=[],
                          dropped_detections=0, references=None, results_file=None,
                          **{**common, "images_selected": len(log_data.image_ids)})
    if detections is not None:
        records, dropped = read_detections_file(detections, dataset)
        wanted = {image.id for image in selected}
        records = [r for r in records if r["image_id"] in wanted]
        metrics = evaluate_detections(dataset, records, sorted(wanted), gt)
        run = RunResult("detections", None, None, None, None, None, None, metrics, None, 0.0, None,
                        lambda: records)
        return EvalReport(images_dir=None, source="detections", runs=[run], images_evaluated=len(wanted),
                          missing=[], failed=[], size_mismatches=[], dropped_detections=dropped, references=None,
                          results_file=None, **common)
    assert images is not None
    return _run_model(dataset, gt, selected, Path(images), model, compare, backend, precision, inference_precision,
                      device, resume, results, checkpoint_every, workers, max_pixels, cache_dir, registry, offline,
                      progress, download_progress, common)


def _configurations(compare: str | Sequence[Configuration] | None, backend: str, precision: str | None,
                    inference_precision: str) -> list[Configuration]:
    if compare is None:
        return [Configuration(backend, precision, inference_precision)]
    if isinstance(compare, str):
        default = inference_precision if inference_precision != InferencePrecision.AUTO else "auto"
        return parse_configurations(compare, default)
    return list(compare)


def _run_model(dataset: CocoDataset, gt: Any, selected: list[EvalImage], images_dir: Path,
               model: str | ModelEntry | None, compare: str | Sequence[Configuration] | None, backend: str,
               precision: str | None, inference_precision: str, device: str, resume: bool,
               results: str | os.PathLike[str] | None, checkpoint_every: int, workers: int | None,
               max_pixels: int | None, cache_dir: str | os.PathLike[str] | Cache | None,
               registry: str | os.PathLike[str] | Registry | None, offline: bool | None,
               progress: Callable[[EvalProgress], None] | None, download_progress: Callable[[Any], None] | None,
               common: Mapping[str, Any]) -> EvalReport:
    from ssdtool.detect import Detector

    if not images_dir.is_dir():
        raise UsageError(f"images folder {images_dir} does not exist or is not a folder",
                         hint="pass --images DIR, the folder the annotation file's file_name entries are in")
    configurations = _configurations(compare, backend, precision, inference_precision)
    loaded = registry if isinstance(registry, Registry) else load_registry(registry)
    entry = model if isinstance(model, ModelEntry) else loaded.model(model)
    cache = cache_dir if isinstance(cache_dir, Cache) else Cache.at(cache_dir)
    missing = [image for image in selected if not os.path.exists(image_path(images_dir, image))]
    if missing:
        log.warning("%d of %d images listed in %s are not in %s; they are skipped", len(missing), len(selected),
                    dataset.path, images_dir)
    present = [image for image in selected if image not in set(missing)]
    runs: list[ConfigurationRun] = []
    try:
        for configuration in configurations:
            detector = Detector(entry, configuration.backend, precision=configuration.precision,
                                inference_precision=configuration.inference_precision, device=device, threshold=0.0,
                                cache_dir=cache, registry=loaded, offline=offline, performance="throughput",
                                workers=workers, max_pixels=max_pixels, progress=download_progress)
            runs.append(ConfigurationRun(configuration, detector, detector.run_info("throughput")))
        key = _run_key(dataset, images_dir, present, runs)
        results_path = Path(results) if results is not None else _default_results(cache, key)
        store = ResultsFile(results_path, key)
        earlier = store.resume() if resume else None
        done = 0
        if earlier is None:
            if resume:
                log.warning("nothing to resume at %s; starting from the first image", results_path)
            store.start()
        else:
            done = earlier.images
            for run, seconds in zip(runs, earlier.seconds, strict=False):
                run.seconds = seconds
            log.info("resuming after %d of %d images", done, len(present))
        runner = Runner(runs, images_dir, store, workers=runs[0].detector.workers, max_pixels=max_pixels,
                        checkpoint_every=checkpoint_every, progress=progress)
        try:
            runner.run(present[done:], done, len(present))
        except BaseException:
            log.warning("stopped before the last image; what ran is checkpointed in %s, and a rerun with "
                        "resume (--resume) continues from there", results_path)
            raise
        finally:
            store.close()
    finally:
        for run in runs:
            run.detector.close()
    return _report(dataset, gt, present, missing, store, runs, common, images_dir=str(images_dir))


def _coco_records(store: ResultsFile, k: int) -> list[dict[str, Any]]:
    """Configuration ``k``'s detections as COCO results records, read back from the results file."""
    return [{"image_id": r.image_id, "category_id": int(d[0]), "bbox": d[2:6], "score": d[1]}
            for r in store.records() if r.error is None for d in r.detections[k]]


def _report(dataset: CocoDataset, gt: Any, present: list[EvalImage], missing: list[EvalImage], store: ResultsFile,
            runs: list[ConfigurationRun], common: Mapping[str, Any], images_dir: str) -> EvalReport:
    """Metrics from the results file, so a resumed run and an uninterrupted one score the very same records; the
    run itself keeps no detections in memory, and each configuration's are read only while it is scored."""
    failed, evaluated, mismatches = [], [], []
    for image, record in zip(present, store.records(), strict=True):
        if record.error is not None:
            failed.append((image.file_name, record.error))
            continue
        evaluated.append(record.image_id)
        if image.width is not None and (record.width, record.height) != (image.width, image.height):
            mismatches.append(image.file_name)
    outcomes: list[RunResult] = []
    for k, run in enumerate(runs):
        metrics = evaluate_detections(dataset, _coco_records(store, k), evaluated, gt)
        ap = metrics.stats["AP"]
        base = outcomes[0].metrics.stats["AP"] if outcomes else ap
        info = run.run_info
        outcomes.append(RunResult(
            run.configuration.label, info.model, info.backend, info.precision, info.inference_precision,
            info.inference_precision_requested, info.device, metrics,
            len(evaluated) / run.seconds if run.seconds > 0 else None, run.seconds,
            None if ap is None or base is None else ap - base, functools.partial(_coco_records, store, k)))
    sha = runs[0].detector.entry.primary_file.sha256
    return EvalReport(images_dir=images_dir, source="model", runs=outcomes, images_evaluated=len(evaluated),
                      missing=[image.file_name for image in missing], failed=failed, size_mismatches=mismatches,
                      dropped_detections=0, references=references_for(sha, outcomes[0].metrics.stats["AP"]),
                      results_file=str(store.path), **common)


def _run_key(dataset: CocoDataset, images_dir: Path, present: list[EvalImage], runs: list[ConfigurationRun]
             ) -> dict[str, Any]:
    positions = hashlib.sha256(json.dumps([image.position for image in present]).encode()).hexdigest()
    return {"annotations_sha256": dataset.sha256, "images_dir": str(images_dir.absolute()),
            "images": positions, "count": len(present),
            "configurations": [{"label": r.configuration.label, "model": r.run_info.model,
                                "model_path": r.run_info.model_path,
                                "inference_precision": r.run_info.inference_precision} for r in runs]}


def _default_results(cache: Cache, key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache.make_folder(cache.root / "eval")
    return folder / f"{digest}.jsonl"
