"""The IR's graph: the source ONNX read by OpenVINO, its outputs made static, padded and normalized, the BGR
raw-pixel input with normalization inside (``PrePostProcessor``; the image-input IR also resizes inside), and the
saved file checked after reloading it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ssdtool.backends import import_engine
from ssdtool.constants import ColorOrder, InputLayout, InputType
from ssdtool.convert.options import IMAGE_RESIZE, ConvertOptions
from ssdtool.errors import CacheError, ConversionError, ModelFormatError
from ssdtool.registry import ModelEntry


def _tensor_names(ports: Any) -> list[str]:
    return sorted(name for port in ports for name in port.get_names())

def _find_port(ports: Any, name: str) -> Any | None:
    return next((port for port in ports if name in port.get_names()), None)

def _rewrite_outputs(ov: Any, model: Any, entry: ModelEntry) -> Any:
    """Replace the dynamic N outputs with static, padded, clipped, normalized ones under the same names."""
    ops = import_engine("openvino.opset13")
    slice_op = import_engine("openvino.opset8").slice
    count = entry.convert.output_count
    spec = entry.outputs
    if spec.form == "heads":
        # The split model: its decode and selection are appended first (convert/heads_tail.py); from here on
        # its three outputs are rewritten like the full model's.
        from ssdtool.convert.heads_tail import append_tail

        ports = append_tail(model, entry)
    else:
        # model.outputs are the Result nodes' ports; the rewrite must start from what feeds each Result.
        produced = [(result.output(0), result.input_value(0)) for result in model.get_results()]
        ports = {key: next((source for named, source in produced if name in named.get_names()), None)
                 for key, name in (("boxes", spec.boxes), ("labels", spec.labels), ("scores", spec.scores))}
    missing = [getattr(spec, key) for key, port in ports.items() if port is None]
    if missing:
        raise ModelFormatError(
            f"the model has no output {', '.join(missing)}; it has {', '.join(_tensor_names(model.outputs))}",
            hint=f"the file does not match the registry entry {entry.name!r}: check models.yml 'outputs'")

    def static(port: Any, width: int | None, fill_type: Any, name: str) -> Any:
        rows = port
        zeros_shape = [1, count] + ([width] if width else [])
        zeros = ops.constant(np.zeros(zeros_shape, dtype=fill_type.to_dtype()))
        joined = ops.concat([rows, zeros], axis=1)
        head = slice_op(joined, np.array([0]), np.array([count]), np.array([1]), np.array([1]))
        shaped = ops.reshape(head, np.array(zeros_shape, dtype=np.int64), special_zero=False)
        port.get_tensor().set_names(set())
        shaped.output(0).get_tensor().set_names({name})
        shaped.set_friendly_name(name)
        return shaped

    boxes = ports["boxes"]
    if boxes.get_element_type() != ov.Type.f32:
        boxes = ops.convert(boxes, ov.Type.f32).output(0)
    if spec.box_units == "pixels":
        width, height = entry.input.resize
        boxes = ops.divide(boxes, ops.constant(np.array([width, height, width, height], dtype=np.float32))
                           ).output(0)
    boxes = ops.clamp(boxes, 0.0, 1.0).output(0)
    labels = ports["labels"]
    if spec.label_offset:
        labels = ops.add(labels, ops.constant(np.array(spec.label_offset, dtype=labels.get_element_type().to_dtype()))
                         ).output(0)
    scores = ports["scores"]
    # Free the names first: a tensor name may belong to one tensor only.
    for port in ports.values():
        port.get_tensor().set_names(set())
    new_outputs = [
        static(boxes, 4, ov.Type.f32, spec.boxes),
        static(labels, None, ports["labels"].get_element_type(), spec.labels),
        static(scores, None, ports["scores"].get_element_type(), spec.scores),
    ]
    results = [ops.result(node) for node in new_outputs]
    for result, name in zip(results, (spec.boxes, spec.labels, spec.scores), strict=True):
        result.set_friendly_name(name)
    return ov.Model(results, model.get_parameters(), entry.name)

def _apply_input_preprocessing(ov: Any, model: Any, entry: ModelEntry, options: ConvertOptions) -> Any:
    from openvino.preprocess import ColorFormat, PrePostProcessor

    spec = entry.input
    port = _find_port(model.inputs, spec.name)
    if port is None:
        raise ModelFormatError(
            f"the model has no input {spec.name!r}; it has {', '.join(_tensor_names(model.inputs))}",
            hint=f"the file does not match the registry entry {entry.name!r}: check models.yml 'input.name'")
    if list(port.get_partial_shape().to_shape() if port.get_partial_shape().is_static else []) != list(spec.shape):
        raise ModelFormatError(
            f"input {spec.name!r} has shape {port.get_partial_shape()}, the registry expects {list(spec.shape)}",
            hint="check models.yml 'input.shape'")
    colors = {ColorOrder.RGB: ColorFormat.RGB, ColorOrder.BGR: ColorFormat.BGR}
    ppp = PrePostProcessor(model)
    step = ppp.input(spec.name)
    tensor = step.tensor().set_element_type(ov.Type.u8 if options.input_type == InputType.U8 else ov.Type.f32) \
        .set_layout(ov.Layout(options.input_layout)).set_color_format(colors[entry.convert.color_order])
    step.model().set_layout(ov.Layout(spec.layout))
    pre = step.preprocess()
    if options.image_input:
        # Any height and width, resized to the network size on the 8-bit pixels (as Pillow's resize on the host
        # gives 8-bit pixels); the difference from Pillow's bilinear is measured in docs/convert.md.
        tensor.set_spatial_dynamic_shape()
        image_resize(pre)
    if options.input_type == InputType.U8:
        pre.convert_element_type(ov.Type.f32)
    if entry.convert.color_order != spec.color_order:
        pre.convert_color(colors[spec.color_order])
    # mean and scale are in the source model's channel order, so they apply after the channel reversal.
    pre.mean(list(spec.mean)).scale(list(spec.scale))
    return ppp.build()

def image_resize(pre: Any) -> None:
    """The image-input IR's resize, as a PrePostProcessor step (to the model's own height and width): one place,
    so what the resize measurement (``tests/test_image_input.py``, ``benchmarks/bench_image_input.py``) builds is
    what the IR runs."""
    from openvino.preprocess import ResizeAlgorithm

    pre.resize(getattr(ResizeAlgorithm, IMAGE_RESIZE))

def image_resize_model(width: int, height: int) -> Any:
    """The image-input IR's resize on its own: u8 ``[1, ?, ?, 3]`` NHWC in, u8 ``[1, height, width, 3]`` out, built
    with :func:`image_resize`, for measuring it against Pillow (``tests/test_image_input.py``,
    ``benchmarks/bench_image_input.py``)."""
    ov = import_engine("openvino")
    from openvino.preprocess import PrePostProcessor

    ops = import_engine("openvino.opset13")
    pixels = ops.parameter([1, height, width, 3], ov.Type.u8, name="image")
    model = ov.Model([ops.result(pixels)], [pixels], "image_resize")
    ppp = PrePostProcessor(model)
    step = ppp.input()
    step.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout(InputLayout.NHWC.value)).set_spatial_dynamic_shape()
    step.model().set_layout(ov.Layout(InputLayout.NHWC.value))
    image_resize(step.preprocess())
    return ppp.build()

def build_ir_model(source: Path, entry: ModelEntry, options: ConvertOptions) -> Any:
    """Read the source ONNX and return the rewritten ``openvino.Model`` (not saved)."""
    ov = import_engine("openvino")
    try:
        model = ov.convert_model(str(source))
    except Exception as exc:
        raise ModelFormatError(
            f"OpenVINO cannot read {source} as ONNX: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}",
            hint=f"the file is not a valid (or is a truncated) ONNX model; run 'ssdtool verify {entry.name} --repair'",
        ) from exc
    model = _rewrite_outputs(ov, model, entry)
    return _apply_input_preprocessing(ov, model, entry, options)

def check_saved(ov: Any, xml: Path, entry: ModelEntry, options: ConvertOptions) -> Any:
    """Reload the written IR and confirm names, shapes and element types survived serialization."""
    model = ov.Core().read_model(str(xml))
    count = entry.convert.output_count
    expected_input = list(input_shape(entry, options))
    problems = []
    port = _find_port(model.inputs, entry.input.name)
    if port is None:
        problems.append(f"input {entry.input.name!r} missing (found {_tensor_names(model.inputs)})")
    else:
        shape = [int(d.get_length()) if d.is_static else -1 for d in port.get_partial_shape()]
        if shape != expected_input:
            problems.append(f"input shape {shape}, expected {expected_input}")
        wanted_type = (InputType.U8 if options.input_type == InputType.U8 else InputType.F32).value  # OpenVINO's names
        if port.get_element_type().get_type_name() != wanted_type:
            problems.append(f"input type {port.get_element_type().get_type_name()}, expected {wanted_type}")
    for name, shape in ((entry.outputs.boxes, [1, count, 4]), (entry.outputs.labels, [1, count]),
                        (entry.outputs.scores, [1, count])):
        out = _find_port(model.outputs, name)
        if out is None:
            problems.append(f"output {name!r} missing (found {_tensor_names(model.outputs)})")
        elif not out.get_partial_shape().is_static or list(out.get_shape()) != shape:
            problems.append(f"output {name!r} shape {out.get_partial_shape()}, expected {shape}")
    if problems:
        raise ConversionError(f"the saved IR {xml} is not what was built: {'; '.join(problems)}",
                              hint="report this with 'ssdtool --version'")
    return model

def input_shape(entry: ModelEntry, options: ConvertOptions) -> tuple[int, ...]:
    """The IR's input shape for ``options`` (-1: any size, the image-input IR's height and width)."""
    width, height = entry.input.resize
    if options.image_input:
        return (1, -1, -1, 3)
    return (1, 3, height, width) if options.input_layout == InputLayout.NCHW else (1, height, width, 3)

def write_failure(folder: Path, exc: BaseException) -> CacheError:
    """A failure to write IR files (OpenVINO says ``basic_ios::clear`` for a full disk) as a CacheError."""
    try:
        free = f"; {shutil.disk_usage(folder).free} bytes free there"
    except OSError:
        free = ""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CacheError(f"cannot write the IR into {folder}: {text}{free}; nothing was installed",
                      hint="free some space there (or choose another cache with --cache-dir) and run the command "
                           "again")

def save_model(ov: Any, model: Any, xml: Path, compress_to_fp16: bool) -> None:
    try:
        ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    except Exception as exc:  # OpenVINO reports I/O failures as RuntimeError
        raise write_failure(xml.parent, exc) from exc
