"""The response record of a sample, as the MLCommons reference writes it for SSD-ResNet34, and its decoding.

Each kept detection is seven float32, ``[qsl_idx, ymin, xmin, ymax, xmax, score, label]``: the sample's index,
the box normalized to [0, 1] by the network input (so by the original image, since the resize does not keep the
aspect ratio), the score, and the model's label index (1..80 for COCO; ``tools/accuracy-coco.py --use-inv-map``
maps it to a COCO category id). A sample's response is its detections one after another, best first.

Which detections are kept: every row the model returns with a score above 0, so the padding rows of a converted
IR (score exactly 0) are dropped and nothing else is. The model's own selection (scores over 0.05, NMS, the best
200) has already run inside the network; no further threshold applies, as mAP wants every candidate.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ssdtool.detections import network_detections
from ssdtool.registry import ModelEntry

RECORD_FIELDS = ("qsl_idx", "ymin", "xmin", "ymax", "xmax", "score", "label")


def response_records(outputs: Mapping[str, np.ndarray], entry: ModelEntry, form: str, qsl_index: int) -> np.ndarray:
    """The model's outputs for one sample -> an ``[N, 7]`` float32 array of records (N may be 0)."""
    found = network_detections(outputs, entry, form)
    keep = np.flatnonzero(found.scores > 0)
    keep = keep[np.argsort(-found.scores[keep], kind="stable")]
    records = np.empty((len(keep), len(RECORD_FIELDS)), dtype=np.float32)
    records[:, 0] = qsl_index
    boxes = found.boxes[keep]  # xyxy
    records[:, 1], records[:, 2], records[:, 3], records[:, 4] = boxes[:, 1], boxes[:, 0], boxes[:, 3], boxes[:, 2]
    records[:, 5] = found.scores[keep]
    records[:, 6] = found.labels[keep]
    return records
