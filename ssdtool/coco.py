"""COCO's conventions: image ids from file names, and the results format that pycocotools and MLPerf read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssdtool.detections import ImageResult, round_to
from ssdtool.errors import UsageError


def coco_image_ids(paths: Sequence[str | None]) -> list[int]:
    """COCO ``image_id`` per input: the numeric file stems when every input has a distinct one (COCO val2017
    names such as ``000000000139.jpg`` -> 139), else every input's index (0-based, in input order). One rule for
    the whole run, so ids never collide."""
    stems = [Path(p).stem if p else "" for p in paths]
    if stems and all(s.isdigit() for s in stems):
        ids = [int(s) for s in stems]
        if len(set(ids)) == len(ids):
            return ids
    return list(range(len(paths)))


def coco_results(result: ImageResult, image_id: int, score_digits: int | None = 5, box_digits: int | None = 2
                 ) -> list[dict[str, Any]]:
    """COCO results-format records (``image_id``, ``category_id``, ``bbox`` as ``[x, y, w, h]``, ``score``)."""
    records = []
    for d in result.detections:
        if d.coco_category_id is None:
            raise UsageError(f"label {d.label_id} ({d.label}) has no COCO category id; the model's labels are not "
                             "the 80 COCO classes", hint="use --format json")
        records.append({"image_id": image_id, "category_id": d.coco_category_id,
                        "bbox": [round_to(v, box_digits) for v in d.coco_bbox],
                        "score": round_to(d.score, score_digits)})
    return records
