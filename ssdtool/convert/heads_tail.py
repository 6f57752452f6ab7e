"""The tail a heads model lacks, appended as OpenVINO operations: decode, softmax and selection.

A split model (``outputs: {form: heads}``) ends at its twelve head tensors. :func:`append_tail` rebuilds what the
full model's export computes after them, operation for operation (the graph OpenVINO makes of the full model's
ONNX tail), so the IR gets the same three outputs and the rest of the conversion (static padded outputs, BGR
raw-pixel input, the parity gate) is the full model's:

* flatten: each conf head ``[1, A*81, F, F]`` reshaped to ``[1, 81, A*F*F]``, each loc head to ``[1, 4, A*F*F]``,
  concatenated over the levels (box index ``level offset + anchor*F*F + y*F + x``, as :mod:`ssdtool.ssd`);
* decode (``scale_back_batch``): ``xy = (scale_xy*d_xy)*wh_a + xy_a``, ``wh = exp(scale_wh*d_wh)*wh_a``, corners
  ``xy -/+ wh/2``, with the registry's default boxes as one constant;
* ``Softmax`` over the 81 classes, background (class 0) dropped;
* ``NonMaxSuppression`` (opset 9, ``corner`` boxes, no sorting across classes, ONNX's IoU rule: see
  :func:`selection_nms`), ``Gather`` of the selected
  scores, ``TopK`` (opset 11, ``stable``) of the best ``min(max_detections, selected)``, ``Gather`` of their
  boxes and classes, labels ``class + 1``.

See docs/convert.md for the semantics of these operations against ONNX ``NonMaxSuppression``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ssdtool import ssd
from ssdtool.backends import import_engine
from ssdtool.errors import ModelFormatError
from ssdtool.heads import entry_geometry, heads_spec
from ssdtool.registry import ModelEntry, SelectionSpec


def head_ports(model: Any, entry: ModelEntry) -> tuple[list[Any], list[Any]]:
    """The ports feeding the conf and loc heads' Results (by the registry's names, or positions in the model's
    output list), with their shapes checked against the default boxes."""
    spec = heads_spec(entry)
    results = list(model.get_results())
    names = [sorted(r.output(0).get_names()) for r in results]
    labels = [n[0] if n else f"output {i}" for i, n in enumerate(names)]
    shown = ", ".join(labels)
    loc_shapes, conf_shapes = entry_geometry(entry).head_shapes()
    ports: dict[str, list[Any]] = {}
    for kind, wanted, shapes in (("conf", spec.conf, conf_shapes), ("loc", spec.loc, loc_shapes)):
        found = []
        for level, (key, shape) in enumerate(zip(wanted, shapes, strict=True)):
            index = key if isinstance(key, int) else next((i for i, n in enumerate(names) if key in n), None)
            if index is None or index >= len(results):
                what = f"position {key}" if isinstance(key, int) else f"output {key!r}"
                raise ModelFormatError(f"the model has no {what} for a {kind} head; it has {len(results)} outputs: "
                                       f"{shown}",
                                       hint=f"check the registry entry {entry.name!r} ('outputs.{kind}') against "
                                            "the model file")
            port = results[index].input_value(0)
            got = port.get_partial_shape()
            if not got.is_static or tuple(got.to_shape()) != shape:
                raise ModelFormatError(
                    f"{kind} head {level} ({labels[index]}) has shape {got}; the default boxes expect "
                    f"{list(shape)}",
                    hint=f"check 'outputs.conf', 'outputs.loc' (level by level) and 'outputs.default_boxes' of the "
                         f"registry entry {entry.name!r}")
            found.append(port)
        ports[kind] = found
    return ports["conf"], ports["loc"]


def selection_nms(boxes: Any, scores: Any, selection: SelectionSpec) -> Any:
    """``NonMaxSuppression`` (opset 9) with ONNX's rules: boxes ``[1, N, 4]`` corners, scores ``[1, C, N]`` ->
    the selected ``[K, 3]`` (batch, class, box), class by class, each by descending score.

    OpenVINO's CPU plugin suppresses a box whose IoU *equals* the threshold, ONNX only above it; the operation gets
    the next float32 above the registry's IoU threshold, so it suppresses exactly when ONNX does. (Scores equal
    to the score threshold are dropped by both.) Rows past ``valid_outputs``, where a device pads the selection to
    its upper bound, are sliced off.
    """
    ops = import_engine("openvino.opset13")
    nms_ops = import_engine("openvino.opset9")
    slice_op = import_engine("openvino.opset8").slice
    iou = np.nextafter(np.float32(selection.iou_threshold), np.float32(np.inf))
    nms = nms_ops.non_max_suppression(
        boxes, scores, ops.constant(np.array([selection.per_class], np.int64)),
        ops.constant(np.array([iou], np.float32)),
        ops.constant(np.array([selection.score_threshold], np.float32)),
        box_encoding="corner", sort_result_descending=False, output_type="i64")
    return slice_op(nms.output(0), np.array([0]), nms.output(2), np.array([1]), np.array([0]))


def append_tail(model: Any, entry: ModelEntry) -> dict[str, Any]:
    """The full model's three outputs computed from ``model``'s head tensors: ``{"boxes": [1, K, 4] ltrb
    normalized f32, "labels": [1, K] i64 (1..80), "scores": [1, K] f32}``, best first, K <= max_detections."""
    ops = import_engine("openvino.opset13")
    topk_ops = import_engine("openvino.opset11")
    slice_op = import_engine("openvino.opset8").slice
    softmax = import_engine("openvino.opset8").softmax
    spec = heads_spec(entry)
    geometry = entry_geometry(entry)
    selection = spec.selection
    n, classes = geometry.num_boxes, ssd.NUM_CLASSES
    conf_ports, loc_ports = head_ports(model, entry)

    def flat(ports: list[Any], rows: int) -> Any:
        shape = np.array([1, rows, -1], np.int64)
        return ops.concat([ops.reshape(p, shape, special_zero=False) for p in ports], axis=2)

    def part(tensor: Any, start: int, stop: int, axis: int) -> Any:
        return slice_op(tensor, np.array([start]), np.array([stop]), np.array([1]), np.array([axis]))

    def f32(value: float) -> Any:
        return ops.constant(np.array(value, np.float32))

    loc = ops.transpose(flat(loc_ports, 4), np.array([0, 2, 1]))  # [1, N, 4]
    anchors = ssd.default_boxes(geometry, "xywh")[None]  # [1, N, 4] xywh
    anchor_xy = ops.constant(np.ascontiguousarray(anchors[:, :, :2]))
    anchor_wh = ops.constant(np.ascontiguousarray(anchors[:, :, 2:]))
    xy = ops.add(ops.multiply(ops.multiply(part(loc, 0, 2, 2), f32(geometry.scale_xy)), anchor_wh), anchor_xy)
    wh = ops.multiply(ops.exp(ops.multiply(part(loc, 2, 4, 2), f32(geometry.scale_wh))), anchor_wh)
    half = ops.multiply(wh, f32(0.5))
    boxes = ops.concat([ops.subtract(xy, half), ops.add(xy, half)], axis=2)  # [1, N, 4] ltrb

    probs = softmax(ops.transpose(flat(conf_ports, classes), np.array([0, 2, 1])), 2)  # [1, N, 81]
    foreground = part(ops.transpose(probs, np.array([0, 2, 1])), 1, classes, 1)  # [1, 80, N]
    selected = selection_nms(boxes, foreground, selection)  # [K, 3]: batch, class, box
    box_index = ops.gather(selected, ops.constant(np.array(2, np.int64)), 1)  # [K]
    class_index = ops.gather(selected, ops.constant(np.array(1, np.int64)), 1)  # [K], 0..79
    flat_index = ops.add(ops.multiply(class_index, ops.constant(np.array(n, np.int64))), box_index)
    scores = ops.gather(ops.reshape(foreground, np.array([-1], np.int64), special_zero=False), flat_index, 0)
    count = ops.concat([ops.constant(np.array([selection.max_detections], np.int64)),
                        ops.shape_of(scores, "i64")], axis=0)
    k = ops.reduce_min(count, np.array([0], np.int64), keep_dims=False)
    top = topk_ops.topk(scores, k, axis=0, mode="max", sort="value", index_element_type="i64", stable=True)
    picked = ops.gather(ops.reshape(boxes, np.array([n, 4], np.int64), special_zero=False),
                        ops.gather(box_index, top.output(1), 0), 0)  # [K, 4]
    labels = ops.add(ops.gather(class_index, top.output(1), 0), ops.constant(np.array(1, np.int64)))
    axis0 = np.array([0], np.int64)
    return {"boxes": ops.unsqueeze(picked, axis0).output(0), "labels": ops.unsqueeze(labels, axis0).output(0),
            "scores": ops.unsqueeze(top.output(0), axis0).output(0)}
