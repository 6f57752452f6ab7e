"""Agreement AP: how faithfully one configuration reproduces another's detections, on images without annotations.

The reference configuration's detections at or above a stated score (:data:`DEFAULT_REFERENCE_SCORE`) become the
ground truth of a COCO annotation document; another configuration's detections (all of them, as eval keeps them)
are scored against it with COCOeval, exactly as against real annotations. The twelve stats then measure fidelity
to the reference - AP 1.0 means every confident reference box is found, in the same class and place, ranked above
anything else - never accuracy: a reference's mistakes are the truth here, and a candidate that corrects them loses
points.

Three calls, smallest first:

* :func:`pseudo_ground_truth` - the reference's COCO results records + the images' sizes -> a checked
  :class:`~ssdtool.evaluation.dataset.CocoDataset`;
* :func:`score_against` - a candidate's COCO results records scored against that dataset -> :class:`CocoMetrics`;
* :func:`folder_dataset` - the images of a folder as a COCO document without annotations (what ``ssdtool eval
  --reference`` runs over, in place of an annotation file);
* :func:`detections_agreement` - both steps from per-image :class:`~ssdtool.detections.Detection` lists (what
  :meth:`ssdtool.detect.Detector.detections_from_outputs` returns), e.g. as NNCF's validation function without
  annotations: ``detections_agreement(fp32, int8, sizes).stats["AP"]``.

A COCO results record is ``{"image_id", "category_id", "bbox": [x, y, w, h] in pixels, "score"}``
(:func:`ssdtool.coco.coco_results`, ``RunResult.detections``). numpy-free; pycocotools is imported by the scoring.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ssdtool import checked
from ssdtool.constants import DEFAULT_REFERENCE_SCORE
from ssdtool.errors import UsageError
from ssdtool.evaluation.dataset import CocoDataset, check_annotations
from ssdtool.evaluation.metrics import CocoMetrics, evaluate_detections
from ssdtool.labels import coco_categories

__all__ = ["DEFAULT_REFERENCE_SCORE", "AgreementImage", "check_reference_score", "detections_agreement",
           "folder_dataset", "pseudo_ground_truth", "score_against"]


class AgreementImage(NamedTuple):
    """An image of the pseudo ground truth: its COCO id and size in pixels (after EXIF rotation); ``file_name``
    only names it in messages."""

    id: int
    width: int
    height: int
    file_name: str = ""


def check_reference_score(min_score: float) -> float:
    """``min_score`` when it is a finite number in (0, 1]; :class:`UsageError` otherwise (at 0 every padded or
    faint box would become ground truth)."""
    if not (checked.is_finite_number(min_score) and 0.0 < min_score <= 1.0):
        raise UsageError(f"the reference score must be a number above 0 and at most 1, got {min_score!r}",
                         hint=f"pass --reference-score S with 0 < S <= 1 (default {DEFAULT_REFERENCE_SCORE})")
    return float(min_score)


def pseudo_ground_truth(images: Sequence[AgreementImage], reference: Iterable[Mapping[str, Any]],
                        min_score: float = DEFAULT_REFERENCE_SCORE, name: str = "reference") -> CocoDataset:
    """A COCO annotation document whose boxes are the ``reference`` records scored at least ``min_score``.

    ``images`` are the images scored (every one, with or without reference boxes: an image where the reference
    found nothing confident makes any candidate box there a false positive). Records of images not listed are
    a :class:`UsageError`. The document goes through the annotation checks (:func:`check_annotations`, finite
    boxes within 2^24 pixels), named ``<name>`` in any message; categories are COCO's 80.
    """
    min_score = check_reference_score(min_score)
    entries = [{"id": image.id, "file_name": image.file_name or str(image.id), "width": image.width,
                "height": image.height} for image in images]
    listed = {image.id for image in images}
    annotations = []
    for record in reference:
        if record["image_id"] not in listed:
            raise UsageError(f"a {name} detection is of image {record['image_id']!r}, which is not among the "
                             "images scored", hint="pass every image the reference ran on")
        if not (checked.is_finite_number(record["score"]) and record["score"] >= min_score):
            continue
        x, y, w, h = record["bbox"]
        annotations.append({"id": len(annotations) + 1, "image_id": record["image_id"],
                            "category_id": record["category_id"], "bbox": [x, y, w, h], "area": w * h,
                            "iscrowd": 0})
    document = {"info": {"description": f"ssdtool agreement: the detections of {name} scored at least "
                                        f"{min_score} as ground truth"},
                "images": entries, "annotations": annotations, "categories": coco_categories()}
    return check_annotations(document, f"<{name}>")


def score_against(reference: CocoDataset, detections: Iterable[Mapping[str, Any]],
                  image_ids: Sequence[int] | None = None, gt: Any | None = None) -> CocoMetrics:
    """COCOeval of ``detections`` (COCO results records) against the pseudo ground truth ``reference``, over
    ``image_ids`` (default: every image it lists). ``gt`` is a ``COCO`` object of ``reference`` to reuse
    (:func:`ssdtool.evaluation.metrics.ground_truth`), when several candidates are scored against one reference."""
    ids = [image.id for image in reference.images] if image_ids is None else list(image_ids)
    return evaluate_detections(reference, detections, ids, gt)


def detections_agreement(reference: Sequence[Sequence[Any]], candidate: Sequence[Sequence[Any]],
                         sizes: Sequence[tuple[int, int]], min_score: float = DEFAULT_REFERENCE_SCORE
                         ) -> CocoMetrics:
    """Agreement of ``candidate`` with ``reference``, both per image lists of
    :class:`~ssdtool.detections.Detection` (COCO labels) for images of ``sizes`` ``(width, height)``, in the same
    order. Detections without a COCO category are left out on both sides."""
    if not len(reference) == len(candidate) == len(sizes):
        raise UsageError(f"agreement needs one detection list per image on both sides: {len(reference)} reference, "
                         f"{len(candidate)} candidate lists for {len(sizes)} images")
    images = [AgreementImage(index, width, height) for index, (width, height) in enumerate(sizes)]
    truth = pseudo_ground_truth(images, _records(reference), min_score)
    return score_against(truth, _records(candidate))


def _records(per_image: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [{"image_id": index, "category_id": d.coco_category_id, "bbox": list(d.coco_bbox), "score": d.score}
            for index, detections in enumerate(per_image) for d in detections if d.coco_category_id is not None]


def folder_dataset(images_dir: str | os.PathLike[str]) -> CocoDataset:
    """The image files of ``images_dir`` (by extension, sorted, hidden ones skipped; not its subfolders) as a COCO
    document without annotations or sizes: ids from numeric file names when they are distinct (as COCO names
    them), else positions (:func:`ssdtool.coco.coco_image_ids`). Its ``sha256`` is that of the file list, so a
    results file resumes only over the same files. :class:`UsageError` when there is no image file."""
    from ssdtool.coco import coco_image_ids
    from ssdtool.inputs import walk_images

    folder = Path(images_dir)
    if not folder.is_dir():
        raise UsageError(f"images folder {os.fspath(folder)} does not exist or is not a folder",
                         hint="pass --images DIR, the folder of images to compare the configurations on")
    names = [path.relative_to(folder).as_posix() for path in walk_images(folder, recursive=False)]
    if not names:
        raise UsageError(f"no image files in folder {os.fspath(folder)}",
                         hint="pass --images DIR, a folder holding the images (.jpg, .png, ...) themselves")
    entries = [{"id": image_id, "file_name": name} for image_id, name in zip(coco_image_ids(names), names,
                                                                               strict=True)]
    document = {"images": entries, "annotations": [], "categories": coco_categories()}
    digest = hashlib.sha256(json.dumps(names).encode()).hexdigest()
    return check_annotations(document, os.fspath(folder), digest)
