"""An existing COCO results file (``detect --format coco`` output, or another tool's), checked record by record."""

from __future__ import annotations

import logging
import os
import reprlib
from typing import Any

from ssdtool import checked
from ssdtool.errors import AnnotationError
from ssdtool.evaluation.dataset import CocoDataset, bbox_problems, read_json_file

log = logging.getLogger("ssdtool.evaluation")

MAX_RESULTS_BYTES = 4 << 30
_HINT = ("pass a COCO results file: a JSON list of {image_id, category_id, bbox: [x, y, w, h], score}, such as "
         "'ssdtool detect --format coco' writes")


def read_detections_file(path: str | os.PathLike[str], dataset: CocoDataset) -> tuple[list[dict[str, Any]], int]:
    """The records of the COCO results file at ``path`` and how many were dropped because their category is not
    one of the annotation file's (reported; COCOeval would ignore them too). Records naming an image that is not in
    the annotation file, or malformed ones, are :class:`AnnotationError` problems with their index."""
    shown = os.fspath(path)
    records, _ = read_json_file(path, MAX_RESULTS_BYTES, "detections file", "--detections", _HINT)
    if not isinstance(records, list):
        raise AnnotationError(shown, [f"top level: expected a JSON list of results, found {type(records).__name__}"],
                              hint=_HINT)
    problems: list[str] = []
    kept: list[dict[str, Any]] = []
    unknown: dict[Any, int] = {}
    for index, record in enumerate(records):
        where = f"[{index}]"
        if not isinstance(record, dict):
            problems.append(f"{where}: expected an object, found {type(record).__name__}")
            continue
        image_id, category_id = record.get("image_id"), record.get("category_id")
        bbox, score = record.get("bbox"), record.get("score")
        before = len(problems)
        if not checked.is_int(image_id) or not dataset.has_image(image_id):
            problems.append(f"{where}.image_id: {reprlib.repr(image_id)} is not the id of an image in {dataset.path}")
        if not checked.is_int(category_id):
            problems.append(f"{where}.category_id: expected an integer, found {reprlib.repr(category_id)}")
        problems.extend(bbox_problems(bbox, f"{where}.bbox"))
        if not checked.is_finite_number(score):
            problems.append(f"{where}.score: expected a finite number, found {reprlib.repr(score)}")
        if len(problems) > before:
            continue
        if category_id not in dataset.categories:
            unknown[category_id] = unknown.get(category_id, 0) + 1
            continue
        kept.append({"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score})
    if problems:
        raise AnnotationError(shown, problems, hint=_HINT)
    if unknown:
        log.warning("%s: %d detections name categories that are not in %s (%s); they are not scored", shown,
                    sum(unknown.values()), dataset.path, ", ".join(f"{c} ({n})" for c, n in sorted(unknown.items())))
    return kept, sum(unknown.values())
