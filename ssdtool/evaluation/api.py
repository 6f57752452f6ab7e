"""``ssdtool.evaluate``: COCO accuracy of one or several configurations, or of an existing results file."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ssdtool.artifacts import registry_inputs
from ssdtool.backends import prepare
from ssdtool.backends.spec import AUTO_BACKEND, EngineSpec, engine_spec
from ssdtool.cache import Cache
from ssdtool.constants import DEFAULT_CHECKPOINT_EVERY, CocoScorer
from ssdtool.errors import UsageError
from ssdtool.evaluation.agreement import DEFAULT_REFERENCE_SCORE, check_reference_score, folder_dataset
from ssdtool.evaluation.configurations import Configuration, find_configuration, parse_configurations
from ssdtool.evaluation.dataset import CocoDataset, EvalImage, load_annotations
from ssdtool.evaluation.detections_file import read_detections_file
from ssdtool.evaluation.metrics import Scorer, evaluate_detections, ground_truth, select_scorer
from ssdtool.evaluation.model_run import ModelRun, run_model
from ssdtool.evaluation.outputs import EvalOutputs, eval_inputs
from ssdtool.evaluation.report import EvalReport, RunResult
from ssdtool.evaluation.runner import EvalProgress
from ssdtool.imaging import DEFAULT_MAX_PIXELS
from ssdtool.registry import ModelEntry, Registry, load_registry

log = logging.getLogger("ssdtool.evaluation")


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


def evaluate(annotations: str | os.PathLike[str] | None, images: str | os.PathLike[str] | None = None,
             model: str | ModelEntry | None = None, *, engine: EngineSpec | str = AUTO_BACKEND,
             compare: str | Sequence[Configuration] | None = None, detections: str | os.PathLike[str] | None = None,
             mlperf_log: str | os.PathLike[str] | None = None, limit: int | None = None,
             sample: int | None = None, seed: int = 0, resume: bool = False,
             results: str | os.PathLike[str] | None = None, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
             workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
             cache_dir: str | os.PathLike[str] | Cache | None = None,
             registry: str | os.PathLike[str] | Registry | None = None, offline: bool | None = None,
             progress: Callable[[EvalProgress], None] | None = None,
             download_progress: Callable[[Any], None] | None = None,
             save_detections: str | os.PathLike[str] | None = None,
             reference: str | None = None, reference_score: float = DEFAULT_REFERENCE_SCORE,
             plots: str | os.PathLike[str] | None = None, report: str | os.PathLike[str] | None = None,
             coco_eval: str = CocoScorer.AUTO.value, **settings: Any) -> EvalReport:
    """Evaluate on the COCO annotation file ``annotations``; see docs/eval.md and docs/python-api.md.

    Three sources of detections: a model run over the images folder ``images`` (one configuration: ``engine``, an
    :class:`~ssdtool.backends.spec.EngineSpec` or a backend name, with ``settings`` changing its fields by name -
    ``backend``, ``precision``, ``inference_precision``, ``device``, ``server``; or several from ``compare``, each
    over ``engine``'s device), an existing COCO results file ``detections``, or an MLPerf accuracy log
    ``mlperf_log``. ``server``: the model runs on that Open Inference Protocol server (precision and device are the
    server's; images are decoded and scored here).
    ``progress`` receives :class:`EvalProgress` events.
    Missing images are skipped and listed in the report; the caller decides whether that is an error.
    ``save_detections``: write the COCO results records there too (with several configurations, one file each:
    the name's stem plus the configuration); ``results``: the per-image results file of a model run (``resume``
    continues it). Every output is checked before the model loads and again before the first image: none may be
    an input (the annotation file, an image it lists, the detections file or log, the registry or model files)
    or another output, and ``results`` never replaces a file that is not a results file (:class:`UsageError`).
    The report's ``saved_detections`` lists the files written.

    Agreement AP without annotations (``annotations`` None): ``reference`` names one of the ``compare``
    configurations; its detections scored at least ``reference_score`` over the images of the folder ``images``
    are the ground truth every configuration is scored against (:mod:`ssdtool.evaluation.agreement`).

    ``plots``: a folder for the plots and their data (:mod:`ssdtool.evaluation.plots`); ``report``: one
    self-contained HTML file; both need matplotlib (``DependencyError`` before anything runs) and score with
    pycocotools. ``coco_eval``: ``auto``, ``pycocotools`` or ``faster-coco-eval`` (:func:`select_scorer`).
    """
    given = [name for name, value in (("--images", images), ("--detections", detections),
                                      ("--mlperf-log", mlperf_log)) if value is not None]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} are different sources of detections: --images runs the model, "
                         "--detections and --mlperf-log evaluate detections made before", hint="pass one of them")
    if not given:
        raise UsageError("nothing to evaluate: no images folder, detections file or MLPerf log",
                         hint="pass --images DIR (or --detections FILE, or --mlperf-log FILE)")
    spec = engine_spec(engine, **settings)
    if images is not None and compare is None:
        spec = prepare(spec)  # a backend or device that cannot run fails before the annotation file is read
    if spec.server is not None and compare is not None:
        raise UsageError("--compare runs several local configurations; with --server the server has chosen its one",
                         hint="drop --compare, or drop --server to compare configurations here")
    if checkpoint_every < 1:
        raise UsageError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
    _check_sources(annotations, images, reference, compare)
    configurations = [] if images is None else _configurations(compare, spec)
    reference_at = None
    if reference is not None:  # the reference is one of the configurations: it runs on its engine spec
        reference_at = find_configuration(reference, configurations, spec.inference_precision)
    wants_curves = plots is not None or report is not None
    if wants_curves:
        from ssdtool.evaluation.plots import require_matplotlib

        require_matplotlib()
    scorer = select_scorer(coco_eval, curves=wants_curves)
    if reference is not None:
        check_reference_score(reference_score)
        assert images is not None
        dataset = folder_dataset(images)
    else:
        assert annotations is not None
        dataset = load_annotations(annotations)
    selected = select_images(dataset, limit, sample, seed)
    options: ModelRun | None = None
    outputs_inputs = eval_inputs(dataset, Path(images) if images is not None else None, detections, mlperf_log,
                                 annotations=reference is None)
    labels = ["detections"]
    if images is not None:
        loaded = registry if isinstance(registry, Registry) else load_registry(registry)
        labels = [c.label for c in configurations]
        outputs_inputs += registry_inputs(loaded.source)
        options = ModelRun(
            entry=model if isinstance(model, ModelEntry) else loaded.model(model), registry=loaded,
            cache=cache_dir if isinstance(cache_dir, Cache) else Cache.at(cache_dir), configurations=configurations,
            engine=spec, offline=offline, resume=resume, results=Path(results) if results is not None else None,
            checkpoint_every=checkpoint_every, workers=workers, max_pixels=max_pixels, progress=progress,
            download_progress=download_progress, scorer=scorer, curves=wants_curves, reference=reference_at,
            reference_score=reference_score)
    outputs = EvalOutputs(outputs_inputs, options.results if options is not None else None, save_detections,
                          labels, plots=plots, report=report, images_dir=Path(images) if images is not None else None)
    try:
        if options is None:
            outputs.open()  # nothing else to wait for: no model files
        result = _evaluate(dataset, selected, images, mlperf_log, detections, limit, sample, scorer, wants_curves,
                           None if options is None else dataclasses.replace(options, outputs=outputs))
        saved = outputs.save(result.runs)
        result = dataclasses.replace(result, saved_detections=saved)
        written, report_file = outputs.save_plots(result)
    finally:
        outputs.abort()  # nothing half-written stays; a committed file is already in place
    return dataclasses.replace(result, plots=written, report_file=report_file)


def _check_sources(annotations: str | os.PathLike[str] | None, images: str | os.PathLike[str] | None,
                   reference: str | None, compare: str | Sequence[Configuration] | None) -> None:
    """Accuracy needs an annotation file; agreement (``reference``) needs none, an images folder and several
    configurations."""
    if reference is None:
        if annotations is None:
            raise UsageError("no annotation file: accuracy is scored against annotations",
                             hint="pass --annotations FILE, or score agreement with one configuration without "
                                  "annotations: --images DIR --compare A,B --reference A")
        return
    if annotations is not None:
        raise UsageError("--reference scores agreement with a configuration's detections, --annotations accuracy "
                         "against the file's boxes: one run does one of them",
                         hint="drop --reference for accuracy, or --annotations for agreement")
    if images is None:
        raise UsageError("--reference runs the configurations over images", hint="pass --images DIR")
    count = len(compare.split(",")) if isinstance(compare, str) else len(compare or ())
    if count < 2:
        raise UsageError("--reference needs the reference and at least one other configuration in --compare",
                         hint="e.g. --compare FP32:f32,INT8 --reference FP32:f32")


def _evaluate(dataset: CocoDataset, selected: list[EvalImage], images: str | os.PathLike[str] | None,
              mlperf_log: str | os.PathLike[str] | None, detections: str | os.PathLike[str] | None,
              limit: int | None, sample: int | None, scorer: Scorer, curves: bool, options: ModelRun | None
              ) -> EvalReport:
    """The report from the one source of detections given (outputs already checked)."""
    agreement = options is not None and options.reference is not None
    gt = None if agreement else ground_truth(dataset, scorer)
    common = {"annotations": None if agreement else dataset.path,
              "unknown_categories": list(dataset.unknown_categories),
              "images_listed": len(dataset.images), "images_selected": len(selected),
              "categories": dict(dataset.categories)}
    if mlperf_log is not None:
        from ssdtool.evaluation.mlperf_log import read_accuracy_log

        if limit is not None or sample is not None:
            raise UsageError("an MLPerf accuracy log is scored on the images it holds, as accuracy-coco.py does",
                             hint="drop --limit/--sample with --mlperf-log")

        log_data = read_accuracy_log(mlperf_log, dataset)
        metrics = evaluate_detections(dataset, log_data.detections, log_data.image_ids, gt, scorer=scorer,
                                      curves=curves)
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
        metrics = evaluate_detections(dataset, records, sorted(wanted), gt, scorer=scorer, curves=curves)
        run = RunResult("detections", None, None, None, None, None, None, metrics, None, 0.0, None,
                        lambda: records)
        return EvalReport(images_dir=None, source="detections", runs=[run], images_evaluated=len(wanted),
                          missing=[], failed=[], size_mismatches=[], dropped_detections=dropped, references=None,
                          results_file=None, **common)
    assert images is not None and options is not None
    return run_model(dataset, gt, selected, Path(images), options, common)


def _configurations(compare: str | Sequence[Configuration] | None, spec: EngineSpec) -> list[Configuration]:
    """The configurations to run: ``spec``'s own (prepared), or those of ``compare`` on ``spec``'s device, each
    engine spec checked (backend, device, precisions) before any file is read."""
    if compare is None:
        return [Configuration(spec.backend, spec.precision, spec.inference_precision)]
    if spec.backend != AUTO_BACKEND or spec.precision is not None:
        raise UsageError("--compare names each configuration's backend and precision itself",
                         hint="drop --backend/--precision, or drop --compare")
    configurations = parse_configurations(compare, spec.inference_precision) if isinstance(compare, str) else list(
        compare)
    for configuration in configurations:
        prepare(configuration.engine(spec))
    return configurations


