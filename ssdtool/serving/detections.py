"""The detections model of ``ssdtool serve`` (``NAME-detections``): an encoded image in, detections in pixels out.

It runs on the IR model's engine (:class:`~ssdtool.serving.model.ServedEngine`) but is a model of its own, so the
IR model's metadata lists only the IR's tensors, as a model server serving the same IR lists them, and this one's
lists exactly what it takes and answers: one ``BYTES`` input :data:`~ssdtool.serving.protocol.IMAGE_INPUT` (an
image file: JPEG, PNG, any format Pillow reads), decoded as ``detect`` decodes images, and the outputs
:data:`~ssdtool.serving.protocol.DETECTION_OUTPUTS`. The request parameter ``threshold`` (0-1) sets the score
threshold.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from kserve import InferRequest, InferResponse
from kserve.errors import InvalidInput

from ssdtool import checked
from ssdtool.detections import DEFAULT_THRESHOLD, postprocess
from ssdtool.pipeline import Prepared
from ssdtool.serving.model import ServedModel, encoded_image, respond, single_input
from ssdtool.serving.protocol import DETECTION_OUTPUTS, IMAGE_INPUT

#: Where messages about the input say it is.
WHERE = f"input {IMAGE_INPUT!r}"


class DetectionModel(ServedModel):
    """Detections of encoded images, served under ``name`` on ``served``'s engine."""

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": DETECTION_OUTPUTS[0], "datatype": "FP32", "shape": [-1, 4]},
                {"name": DETECTION_OUTPUTS[1], "datatype": "INT64", "shape": [-1]},
                {"name": DETECTION_OUTPUTS[2], "datatype": "FP32", "shape": [-1]}]

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        engine = self.served.loaded(self.name)
        given = single_input(payload, f"{IMAGE_INPUT!r}, BYTES: one encoded image")
        if given.name != IMAGE_INPUT:
            raise InvalidInput(f"unknown input {given.name!r:.60}; expected {IMAGE_INPUT!r} (BYTES: one encoded "
                               f"image)")
        data, threshold = encoded_image(given, WHERE), _threshold(payload.parameters or {})
        outputs = await self.served.decode_and_run(data, WHERE, functools.partial(self._detect, threshold=threshold))
        return respond(self.name, payload, outputs, engine.inference_precision)

    def _detect(self, prepared: Prepared, threshold: float) -> dict[str, np.ndarray]:
        """Run a decoded image and postprocess: detections in pixels of the image, best first."""
        engine = self.served.engine
        assert engine is not None and prepared.tensor is not None
        outputs = engine.infer(prepared.tensor)
        found = postprocess(outputs, self.served.entry, (prepared.width, prepared.height), form="ir",
                            threshold=threshold)
        return {
            DETECTION_OUTPUTS[0]: np.asarray([d.box for d in found], dtype=np.float32).reshape(-1, 4),
            DETECTION_OUTPUTS[1]: np.asarray([d.label_id for d in found], dtype=np.int64),
            DETECTION_OUTPUTS[2]: np.asarray([d.score for d in found], dtype=np.float32),
        }


def _threshold(parameters: Any) -> float:
    """The ``threshold`` parameter: a number, or a number in a string (the protocol's gRPC parameters carry
    booleans, whole numbers and strings only)."""
    given = parameters.get("threshold", DEFAULT_THRESHOLD)
    value = _number(given) if isinstance(given, str) else given
    if not checked.is_finite_number(value) or not 0.0 <= value <= 1.0:
        raise InvalidInput(f"parameter 'threshold' must be a number from 0 to 1, got {given!r:.60}")
    return float(value)


def _number(text: str) -> float | None:
    try:
        return float(text) if len(text) <= 40 else None
    except ValueError:
        return None
