"""The split (heads) form of the model on the host: which outputs are the heads, the default boxes the registry
describes, and the decode and selection of :mod:`ssdtool.ssd`.

A registry entry with ``outputs: {form: heads, ...}`` names its six conf and six loc heads (by output name or by
position in the model's output list). :func:`decode_outputs` turns such a model's outputs into the same three
arrays the full model returns (ltrb boxes normalized to the input, labels 1..80, scores, best first).

Where it runs: inside the onnxruntime engine (:func:`host_decoder`, chosen by :func:`ssdtool.backends.make_engine`
from the registry's output form), so whatever reads an engine's outputs - detection, bench (whose timings then
include the decode, as the full model's include its in-graph tail), the parity gate, evaluation, LoadGen,
serving - sees the full model's three outputs and needs no second code path. The converted IR does the same in
the graph (:mod:`ssdtool.convert.heads_tail`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ssdtool import ssd
from ssdtool.errors import ModelFormatError, RegistryError
from ssdtool.registry import DefaultBoxSpec, HeadsSpec, ModelEntry

__all__ = ["decode_heads", "decode_outputs", "entry_geometry", "head_tensors", "heads_spec", "host_decoder",
           "is_heads"]


def is_heads(entry: ModelEntry) -> bool:
    """Whether ``entry`` describes the split form (its outputs are the head tensors)."""
    return entry.outputs.form == "heads" and entry.outputs.heads is not None


def heads_spec(entry: ModelEntry) -> HeadsSpec:
    if entry.outputs.heads is None:
        raise RegistryError([f"models.{entry.name}.outputs: not a heads model (form {entry.outputs.form})"])
    return entry.outputs.heads


def entry_geometry(entry: ModelEntry) -> ssd.SsdGeometry:
    """The default boxes of a heads entry: the registry's values, the reference's where it gives none."""
    return _geometry(entry.name, entry.input.resize[0], heads_spec(entry).default_boxes)


@functools.lru_cache(maxsize=16)
def _geometry(name: str, size: int, spec: DefaultBoxSpec) -> ssd.SsdGeometry:
    where = f"models.{name}.outputs.default_boxes"
    try:
        feature_sizes = spec.feature_sizes or ssd.feature_sizes_for_input(size)
    except ValueError as exc:
        raise RegistryError([f"{where}.feature_sizes: the reference layout has none for a {size} px input: {exc}"],
                            hint="give outputs.default_boxes.feature_sizes in the registry") from None
    reference = ssd.SsdGeometry.from_feature_sizes(size, feature_sizes)
    try:
        return ssd.SsdGeometry(
            image_size=size, feature_sizes=reference.feature_sizes, steps=spec.steps or reference.steps,
            scales=spec.scales or reference.scales,  # type: ignore[arg-type]
            aspect_ratios=spec.aspect_ratios or reference.aspect_ratios,  # type: ignore[arg-type]
            scale_xy=spec.scale_xy, scale_wh=spec.scale_wh)
    except ValueError as exc:
        raise RegistryError([f"{where}: {exc}"], hint="make the default-box lists agree in length") from None


def head_tensors(outputs: Mapping[str, np.ndarray], entry: ModelEntry
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The conf and loc heads (level order) out of a model's outputs, found by the registry's names or positions
    (positions count in the model's output order, which is the order of ``outputs``), with their shapes checked
    against the default boxes: conf ``[1, A*81, F, F]``, loc ``[1, A*4, F, F]`` for level feature size F."""
    spec = heads_spec(entry)
    geometry = entry_geometry(entry)
    names = list(outputs)
    picked: dict[str, list[tuple[str, np.ndarray]]] = {}
    for kind, wanted in (("conf", spec.conf), ("loc", spec.loc)):
        found = []
        for key in wanted:
            name = names[key] if isinstance(key, int) and key < len(names) else key
            if not isinstance(name, str) or name not in outputs:
                what = f"position {key}" if isinstance(key, int) else f"output {key!r}"
                raise ModelFormatError(
                    f"the model has no {what} for a {kind} head; it has {len(names)} outputs: {', '.join(names)}",
                    hint=f"check the registry entry {entry.name!r} ('outputs.{kind}') against the model file")
            found.append((name, np.asarray(outputs[name])))
        picked[kind] = found
    loc_shapes, conf_shapes = geometry.head_shapes()
    for kind, expected in (("conf", conf_shapes), ("loc", loc_shapes)):
        for level, ((name, tensor), shape) in enumerate(zip(picked[kind], expected, strict=True)):
            if tuple(tensor.shape) != shape:
                raise ModelFormatError(
                    f"{kind} head {level} ({name}) has shape {list(tensor.shape)}; the default boxes expect "
                    f"{list(shape)} ({geometry.anchors_per_cell[level]} anchors on a {geometry.feature_sizes[level]}"
                    f"x{geometry.feature_sizes[level]} grid)",
                    hint=f"check 'outputs.conf', 'outputs.loc' (order: level by level) and 'outputs.default_boxes' "
                         f"of the registry entry {entry.name!r}")
    return [t for _, t in picked["conf"]], [t for _, t in picked["loc"]]


def decode_outputs(outputs: Mapping[str, np.ndarray], entry: ModelEntry
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A heads model's outputs -> (ltrb boxes ``[k, 4]`` normalized, labels ``[k]`` 1..80, scores ``[k]``), best
    first: the full model's three outputs, by the registry's default boxes and selection parameters."""
    confs, locs = head_tensors(outputs, entry)
    return decode_heads(confs, locs, entry)


def decode_heads(confs: Sequence[np.ndarray], locs: Sequence[np.ndarray], entry: ModelEntry
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decode and selection of already ordered heads (see :func:`decode_outputs`)."""
    selection = heads_spec(entry).selection
    boxes, probs = ssd.decode(locs, confs, entry_geometry(entry))
    return ssd.select(boxes, probs, selection.iou_threshold, selection.score_threshold, selection.per_class,
                      selection.max_detections)


def host_decoder(entry: ModelEntry) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """``outputs -> outputs`` for an engine running a heads model: the head tensors replaced by the full model's
    three batch-1 outputs under the registry's names (``bboxes [1, K, 4]``, ``labels [1, K]`` int64,
    ``scores [1, K]``), unpadded as the full source model returns them. Geometry and default boxes are made once."""
    entry_geometry(entry)  # a bad description fails when the engine is made, not at the first image
    spec = entry.outputs

    def decode(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        boxes, labels, scores = decode_outputs(outputs, entry)
        return {spec.boxes: boxes[None], spec.labels: labels[None], spec.scores: scores[None]}

    return decode
