"""COCO box metrics with COCOeval: the twelve summary stats, per-class AP, and the data behind eval's plots.

pycocotools is the reference every anchor uses (MLCommons' accuracy-coco.py, OMZ's ``coco_orig_precision``,
ultralytics' ``val`` for its official numbers), so ssdtool runs COCOeval itself rather than a re-implementation.
Two implementations of it can score (:class:`~ssdtool.constants.CocoScorer`):

* ``pycocotools``: the reference, in Python (about 15 s for 100,000 detections on one core);
* ``faster-coco-eval``: pycocotools' ``COCOeval`` with ``evaluate`` and ``accumulate`` in C++ (3 to 5 times
  faster); its twelve stats and precision array equal pycocotools' to 1e-12 (the last bit of a double, from the
  order of a sum) on every test dataset (tests/test_eval_scorers.py runs both). It keeps no per-image matches
  (``evalImgs``), so the threshold curve of the plots needs pycocotools.

``auto`` picks faster-coco-eval when it is installed and no curves are wanted, else pycocotools. Both are imported
on first use (the ``eval`` extra installs both).

pycocotools reports through ``print()``. Library code never prints and never swaps ``sys.stdout``, so a module-level
``print`` is put into pycocotools' two modules that forwards their lines to ssdtool's debug log; this touches
pycocotools' namespace only, nothing process-wide. faster-coco-eval takes a print function per object.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ssdtool.constants import CocoScorer
from ssdtool.errors import DependencyError, UsageError
from ssdtool.evaluation.dataset import CocoDataset

if TYPE_CHECKING:
    from ssdtool.evaluation.curves import Curves

log = logging.getLogger("ssdtool.evaluation.metrics")

#: The names of COCOeval's twelve ``stats``, in its order (fractions in [0, 1]).
STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

#: What each stat is, as COCOeval's summary line says it.
STAT_MEANINGS: Mapping[str, str] = {
    "AP": "AP @ IoU 0.50:0.95, all areas, 100 detections per image (the COCO mAP; MLPerf's metric)",
    "AP50": "AP @ IoU 0.50, all areas, 100 detections",
    "AP75": "AP @ IoU 0.75, all areas, 100 detections",
    "APs": "AP @ IoU 0.50:0.95, small objects (area < 32^2)",
    "APm": "AP @ IoU 0.50:0.95, medium objects (32^2 .. 96^2)",
    "APl": "AP @ IoU 0.50:0.95, large objects (area > 96^2)",
    "AR1": "AR @ IoU 0.50:0.95, all areas, 1 detection per image",
    "AR10": "AR @ IoU 0.50:0.95, all areas, 10 detections per image",
    "AR100": "AR @ IoU 0.50:0.95, all areas, 100 detections per image",
    "ARs": "AR @ IoU 0.50:0.95, small objects, 100 detections",
    "ARm": "AR @ IoU 0.50:0.95, medium objects, 100 detections",
    "ARl": "AR @ IoU 0.50:0.95, large objects, 100 detections",
}


@dataclass(frozen=True)
class CocoMetrics:
    """The twelve stats by name (None where COCOeval has nothing to average: its -1, e.g. no small objects),
    per-class AP by COCO category id (None for a category without ground truth in the evaluated images), the
    seconds COCOeval took, which implementation scored (``scorer``: name and version), and the plots' data
    (``curves``) when asked for."""

    stats: Mapping[str, float | None]
    per_class: Mapping[int, float | None]
    seconds: float
    scorer: str = ""
    curves: Curves | None = None

    def to_dict(self) -> dict[str, float | None]:
        return dict(self.stats)


def _quiet(module: ModuleType) -> None:
    def forward(*args: object, **_kwargs: object) -> None:
        log.debug("pycocotools: %s", " ".join(str(a) for a in args))

    module.print = forward  # type: ignore[attr-defined]


def _forward(*args: object, **_kwargs: object) -> None:
    log.debug("faster-coco-eval: %s", " ".join(str(a) for a in args))


_HINT = "install it with: pip install 'ssdtool[eval]'"


@dataclass(frozen=True)
class Scorer:
    """One COCOeval implementation: its ``COCO`` and ``COCOeval`` classes, and its name and version."""

    name: str
    version: str
    coco_class: Any
    eval_class: Any

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def is_reference(self) -> bool:
        return self.name == CocoScorer.PYCOCOTOOLS

    def coco(self) -> Any:
        return self.coco_class() if self.is_reference else self.coco_class(print_function=_forward)

    def evaluator(self, gt: Any, results: Any) -> Any:
        if self.is_reference:
            return self.eval_class(gt, results, "bbox")
        return self.eval_class(gt, results, "bbox", print_function=_forward)


def pycocotools() -> tuple[Any, Any]:
    """``(COCO, COCOeval)``, imported on first use; :class:`DependencyError` names the extra when missing."""
    try:
        from pycocotools import coco, cocoeval
    except ImportError as exc:
        raise DependencyError(f"cannot import pycocotools: {exc}", hint=_HINT) from exc
    _quiet(coco)
    _quiet(cocoeval)
    return coco.COCO, cocoeval.COCOeval


def _reference_scorer() -> Scorer:
    coco_class, eval_class = pycocotools()
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version(CocoScorer.PYCOCOTOOLS.value)  # the scorer is named after its distribution
    except PackageNotFoundError:  # a source build without metadata
        found = "unknown"
    return Scorer(CocoScorer.PYCOCOTOOLS.value, found, coco_class, eval_class)


def _faster_scorer() -> Scorer:
    try:
        import faster_coco_eval
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as exc:
        raise DependencyError(f"cannot import faster-coco-eval: {exc}", hint=_HINT) from exc
    return Scorer(CocoScorer.FASTER.value, str(faster_coco_eval.__version__), COCO, COCOeval_faster)


def select_scorer(choice: str | CocoScorer = CocoScorer.AUTO, curves: bool = False) -> Scorer:
    """The implementation for ``choice``: ``auto`` is faster-coco-eval when it imports and no ``curves`` are
    wanted, else pycocotools. faster-coco-eval with ``curves`` is a :class:`UsageError` (it keeps no per-image
    matches); a missing library is a :class:`DependencyError` naming the extra."""
    chosen = CocoScorer.parse(choice, "COCOeval implementation")
    if chosen == CocoScorer.FASTER:
        if curves:
            raise UsageError("the plots and the report need pycocotools' per-detection matches, which "
                             "faster-coco-eval does not keep", hint="drop --coco-eval faster-coco-eval (auto "
                             "scores with pycocotools when plots are asked for)")
        return _faster_scorer()
    if chosen == CocoScorer.AUTO and not curves:
        try:
            return _faster_scorer()
        except DependencyError as exc:
            log.debug("%s; scoring with pycocotools", exc.message)
    return _reference_scorer()


def ground_truth(dataset: CocoDataset, scorer: Scorer | None = None) -> Any:
    """A ``COCO`` object of ``scorer`` (default: :func:`select_scorer`'s ``auto``) over the checked document."""
    gt = (scorer or select_scorer()).coco()
    gt.dataset = dataset.data
    gt.createIndex()
    return gt


def _as_fraction(value: float) -> float | None:
    return None if value < 0 else float(value)


def evaluate_detections(dataset: CocoDataset, detections: Iterable[Mapping[str, Any]], image_ids: Sequence[int],
                        gt: Any | None = None, *, scorer: Scorer | None = None, curves: bool = False
                        ) -> CocoMetrics:
    """COCOeval (``bbox``) of COCO results records over ``image_ids`` (only those images count: a subset, or a run
    that skipped missing images, is scored on what ran). Records are copied; the caller's stay as they were.

    ``gt``: the ground truth as ``ground_truth(dataset, scorer)`` made it, to reuse across configurations.
    ``scorer``: default :func:`select_scorer` for ``curves``. ``curves``: also the plots' data
    (:mod:`ssdtool.evaluation.curves`; pycocotools only)."""
    scorer = scorer or select_scorer(curves=curves)
    if curves and not scorer.is_reference:
        raise UsageError("curves need pycocotools' per-detection matches; pass scorer=select_scorer(curves=True)")
    started = time.perf_counter()
    gt = gt if gt is not None else ground_truth(dataset, scorer)
    # An empty segmentation: loadRes would otherwise add a polygon per detection, which box IoU never reads (about
    # 400 bytes each, 400 MB for val2017 at 200 detections an image)
    records = [{"image_id": r["image_id"], "category_id": r["category_id"], "bbox": list(r["bbox"]),
                "score": r["score"], "segmentation": []} for r in detections]
    if records:
        results = gt.loadRes(records)
    else:  # loadRes cannot take an empty list (it reads records[0]); the same object, built by hand
        results = scorer.coco()
        results.dataset = {"images": list(gt.dataset["images"]), "annotations": [],
                           "categories": list(gt.dataset.get("categories", []))}
        results.createIndex()
    evaluator = scorer.evaluator(gt, results)
    evaluator.params.imgIds = sorted(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = {name: _as_fraction(value) for name, value in zip(STAT_NAMES, evaluator.stats[:12], strict=True)}
    precision = evaluator.eval["precision"]  # [IoU thresholds, recall points, categories, areas, max dets]
    per_class: dict[int, float | None] = {}
    for k, category in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        valid = values[values > -1]
        per_class[int(category)] = float(valid.mean()) if valid.size else None
    made = None
    if curves:
        from ssdtool.evaluation.curves import curves_from

        made = curves_from(evaluator)
    return CocoMetrics(stats=stats, per_class=per_class, seconds=time.perf_counter() - started,
                       scorer=scorer.label, curves=made)
