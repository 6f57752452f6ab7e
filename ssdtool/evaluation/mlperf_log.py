"""MLPerf LoadGen accuracy logs (``mlperf_log_accuracy.json``) -> COCO results, as MLCommons' accuracy-coco.py
reads them with ``--use-inv-map``.

The log is a JSON list of ``{"qsl_idx": int, "seq_id": int, "data": "<hex>"}``. ``data`` is float32 groups of
seven, ``[qsl_idx, ymin, xmin, ymax, xmax, score, label]``, the box normalized to the original image; ``qsl_idx``
indexes the annotation file's ``images`` list in file order. Like accuracy-coco.py: the first record of a
``qsl_idx`` counts and later ones are ignored (LoadGen may send an image more than once); a record with fewer
than seven floats is an image without detections, still evaluated; pixel coordinates are computed in float32 from
the ``width``/``height`` the annotation file states; the evaluated images are exactly those in the log. Labels
1..80 map to COCO category ids through ssdtool's label map (the same ids as ``[0] + cocoGt.getCatIds()`` for
instances_val2017.json).
"""

from __future__ import annotations

import json
import os
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssdtool import checked, fsutil
from ssdtool.errors import AnnotationError
from ssdtool.evaluation.dataset import CocoDataset, EvalImage, read_json_file
from ssdtool.labels import COCO_CATEGORY_IDS

#: Largest accuracy log read (5,000 images at 200 detections: about 60 MB of hex).
MAX_LOG_BYTES = 4 << 30
_HINT = "pass the mlperf_log_accuracy.json of an accuracy-mode LoadGen run over the same annotation file"
#: The seven float32 values of a detection, in order.
_FIELDS = ("qsl_idx", "ymin", "xmin", "ymax", "xmax", "score", "label")


@dataclass(frozen=True)
class AccuracyLog:
    """What a log held: COCO results records, the image ids it covers (images without detections included),
    records ignored as repeats of a ``qsl_idx``, images without detections, and payloads whose own index
    disagreed with their record's (accuracy-coco.py prints an ERROR for those and goes on; so does ssdtool,
    counting them)."""

    detections: list[dict[str, Any]]
    image_ids: list[int]
    duplicates: int
    empty_images: int
    index_mismatches: int


def read_accuracy_log(path: str | os.PathLike[str], dataset: CocoDataset) -> AccuracyLog:
    """Read the LoadGen accuracy log at ``path`` against ``dataset``; :class:`AnnotationError` lists every
    malformed record."""
    shown = os.fspath(path)
    records, _ = read_json_file(path, MAX_LOG_BYTES, "MLPerf accuracy log", "--mlperf-log", _HINT)
    return accuracy_detections(records, dataset, shown)


def accuracy_detections(records: Any, dataset: CocoDataset, where: str = "<log>") -> AccuracyLog:
    """The parsed log ``records`` as COCO results over ``dataset`` (see the module docstring)."""
    if not isinstance(records, list):
        raise AnnotationError(where, [f"top level: expected a JSON list of records, found {type(records).__name__}"],
                              hint=_HINT)
    problems: list[str] = []
    images = dataset.images
    detections: list[dict[str, Any]] = []
    image_ids: list[int] = []
    seen: set[int] = set()
    duplicates = empty = mismatches = 0
    for number, record in enumerate(records):
        at = f"[{number}]"
        index = record.get("qsl_idx") if isinstance(record, dict) else None
        if not checked.is_int(index) or not 0 <= index < len(images):
            problems.append(f"{at}.qsl_idx: expected an index into the {len(images)} images of the annotation "
                            f"file, found {reprlib.repr(index)}")
            continue
        if index in seen:
            duplicates += 1
            continue
        seen.add(index)
        try:
            data = np.frombuffer(bytes.fromhex(record.get("data", "")), np.float32)
        except (TypeError, ValueError):
            problems.append(f"{at}.data: expected a hex string of float32 values")
            continue
        image = images[index]
        image_ids.append(image.id)
        if len(data) < 7:
            empty += 1
            continue
        if len(data) % 7:
            problems.append(f"{at}.data: {len(data)} floats, expected groups of 7")
            continue
        if image.width is None or image.height is None:
            problems.append(f"{at}: images[{index}] (id {image.id}) has no width and height in the annotation file")
            continue
        rows = data.reshape(-1, 7)
        if problem := _rows_problem(rows, image):
            problems.append(f"{at}.data: {problem}")
            continue
        mismatches += int(np.count_nonzero(np.trunc(rows[:, 0]) != index))  # int(), as accuracy-coco.py
        detections.extend(_coco_records(rows, image))
    if problems:
        raise AnnotationError(where, problems, hint=_HINT)
    return AccuracyLog(detections=detections, image_ids=image_ids, duplicates=duplicates, empty_images=empty,
                       index_mismatches=mismatches)


def _rows_problem(rows: np.ndarray, image: EvalImage) -> str | None:
    """The first value of a record's ``[N, 7]`` rows that cannot be scored, located (``row 3 score: nan``), or None.

    Every value must be finite (NaN scores would sort anywhere and give AP 1.0); labels whole numbers 1..80; the
    box, scaled to the image in float32 as accuracy-coco.py does, finite (a normalized 1e38 overflows there).
    """
    bad = ~np.isfinite(rows)
    if bad.any():
        row, column = (int(v) for v in np.argwhere(bad)[0])
        return f"row {row} {_FIELDS[column]}: {rows[row, column]}, expected a finite number"
    labels = rows[:, 6]
    wrong = (labels != np.floor(labels)) | (labels < 1) | (labels > len(COCO_CATEGORY_IDS))
    if wrong.any():
        row = int(np.argmax(wrong))
        return f"row {row} label: {labels[row]:g} is not a model label 1..{len(COCO_CATEGORY_IDS)}"
    with np.errstate(over="ignore"):
        pixels = _pixel_boxes(rows, image)
    bad = ~np.isfinite(pixels)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        return (f"row {row} box: {rows[row, 1:5].tolist()} overflows float32 at the image's {image.width}x"
                f"{image.height} pixels")
    return None


def _pixel_boxes(rows: np.ndarray, image: EvalImage) -> np.ndarray:
    """COCO ``[x, y, width, height]`` per row, computed in float32 as accuracy-coco.py does."""
    height, width = np.float32(image.height), np.float32(image.width)
    ymin, xmin, ymax, xmax = rows[:, 1] * height, rows[:, 2] * width, rows[:, 3] * height, rows[:, 4] * width
    return np.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=1)


def _coco_records(rows: np.ndarray, image: EvalImage) -> list[dict[str, Any]]:
    boxes = _pixel_boxes(rows, image)
    return [{"image_id": image.id, "category_id": COCO_CATEGORY_IDS[int(row[6]) - 1],
             "bbox": [float(v) for v in box], "score": float(row[5])} for row, box in zip(rows, boxes, strict=True)]


def write_accuracy_log(path: str | os.PathLike[str], rows_by_index: dict[int, np.ndarray]) -> None:
    """Write a log in LoadGen's format from float32 rows ``[N, 7]`` per ``qsl_idx`` (tests and tools that need
    a log without LoadGen; LoadGen itself writes the real ones)."""
    records = [{"qsl_idx": index, "seq_id": seq, "data": np.asarray(rows, np.float32).tobytes().hex()}
               for seq, (index, rows) in enumerate(rows_by_index.items())]
    fsutil.atomic_write(Path(path), json.dumps(records).encode())
