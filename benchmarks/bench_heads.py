"""The split (heads) form's postprocessing: host decode per image against the in-graph tail, on the full twin.

Both sides start from the same twelve head tensors of the full heads twin (``ssd-resnet34-1200-synthetic-heads``,
15,130 default boxes; the seeded heads keep the selection busy), captured once from onnxruntime on generated
images, so the network itself is not in either figure:

* host: ``ssdtool.heads.decode_outputs`` (what the onnxruntime engine runs after every inference: flatten, decode,
  softmax in numpy, then per-class NMS and the best 200), split into decode and selection;
* in-graph: the OpenVINO tail that ``ssdtool convert`` appends (``ssdtool.convert.heads_tail.append_tail``),
  compiled on its own with the heads as inputs, at f32 and at the CPU's default inference precision.

The network's own time (onnxruntime, the heads model) is reported for scale.

    python benchmarks/bench_heads.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, ensure_twin, median

sys.path.insert(0, str(ROOT))

MODEL = "ssd-resnet34-1200-synthetic-heads"
HEADS_URL = "synthetic:ssd-resnet34?seed=0&outputs=heads"


def ensure_heads_twin() -> Path:
    """The full heads twin under benchmarks/_work/ (built once; ~4 s)."""
    return ensure_twin(HEADS_URL, "resnet34-ssd1200-synthetic-heads.onnx")


def _timed(function: Callable[[], Any], repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls (after one untimed call)."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


def _tail_model(entry: Any, heads: dict[str, Any]) -> Any:
    """The appended tail alone: twelve parameters shaped like the heads -> the IR's three outputs."""
    import openvino as ov
    import openvino.opset13 as ops

    from ssdtool.convert.heads_tail import append_tail

    parameters, results = [], []
    for name, value in heads.items():
        parameter = ops.parameter(list(value.shape), ov.Type.f32, name=name)
        parameter.output(0).get_tensor().set_names({name})
        parameters.append(parameter)
        results.append(ops.result(parameter))
    outputs = append_tail(ov.Model(results, parameters, "heads"), entry)
    return ov.Model([ops.result(port) for port in outputs.values()], parameters, "tail")


def run(quick: bool) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    import openvino as ov

    from ssdtool import heads as host
    from ssdtool import ssd
    from ssdtool.imaging import generated_images, preprocess
    from ssdtool.registry import load_registry

    images, repeats = (2, 3) if quick else (4, 15)
    entry = load_registry().model(MODEL)
    session = ort.InferenceSession(str(ensure_heads_twin()), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    captured, network_ms = [], []
    for rgb in generated_images(images, seed=31, size=(640, 480)):
        tensor = preprocess(rgb, entry)
        started = time.perf_counter()
        values = session.run(None, {"image": tensor})
        network_ms.append((time.perf_counter() - started) * 1000)
        captured.append(dict(zip(names, values, strict=True)))
    geometry = host.entry_geometry(entry)
    selection = entry.outputs.heads.selection
    decode_ms, select_ms, host_ms, kept = [], [], [], []
    for outputs in captured:
        confs, locs = host.head_tensors(outputs, entry)
        boxes, probs = ssd.decode(locs, confs, geometry)
        decode_ms.append(_timed(lambda c=confs, lo=locs: ssd.decode(lo, c, geometry), repeats))
        select_ms.append(_timed(lambda b=boxes, p=probs: ssd.select(b, p, selection.iou_threshold,
                                                                    selection.score_threshold, selection.per_class,
                                                                    selection.max_detections), repeats))
        host_ms.append(_timed(lambda o=outputs: host.decode_outputs(o, entry), repeats))
        kept.append(int(host.decode_outputs(outputs, entry)[2].shape[0]))
    core = ov.Core()
    tail = _tail_model(entry, captured[0])
    graph: dict[str, float] = {}
    agreement = 0.0
    for precision in ("f32", None):
        config = {"PERFORMANCE_HINT": "LATENCY", **({"INFERENCE_PRECISION_HINT": precision} if precision else {})}
        compiled = core.compile_model(tail, "CPU", config)
        ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        request = compiled.create_infer_request()
        key = ran if precision else f"default ({ran})"
        graph[key] = median([_timed(lambda o=outputs, r=request: r.infer(list(o.values())), repeats)
                             for outputs in captured])
        if precision == "f32":  # at f32 the tail reproduces the host decode: scores row for row
            for outputs in captured:
                in_graph = np.asarray(request.infer(list(outputs.values()))[compiled.outputs[2]]).reshape(-1)
                on_host = host.decode_outputs(outputs, entry)[2]
                agreement = max(agreement, float(np.abs(in_graph - on_host).max())
                                if in_graph.shape == on_host.shape else float("inf"))
    figures: dict[str, Any] = {
        "model": MODEL, "images": images, "repeats": repeats, "quick": quick,
        "network_onnxruntime_ms": round(median(network_ms), 2),
        "host_decode_ms": round(median(decode_ms), 2), "host_select_ms": round(median(select_ms), 2),
        "host_total_ms": round(median(host_ms), 2), "detections_kept": kept,
        "in_graph_tail_ms": {name: round(value, 2) for name, value in graph.items()},
        "tail_vs_host_max_score_diff_f32": agreement,
    }
    figures["host_over_in_graph_f32"] = round(figures["host_total_ms"] / max(graph.get("f32", 0.0), 1e-9), 2)
    return figures


def markdown(figures: dict[str, Any]) -> str:
    tail = ", ".join(f"{value} ms at {name}" for name, value in figures["in_graph_tail_ms"].items())
    return (f"Full heads twin (`{figures['model']}`), {figures['images']} generated images, medians of "
            f"{figures['repeats']} runs each; the same head tensors feed both sides; `python "
            "benchmarks/bench_heads.py`.\n\n"
            "| per image | ms |\n| --- | --- |\n"
            f"| network (onnxruntime, heads model), for scale | {figures['network_onnxruntime_ms']} |\n"
            f"| host decode (numpy: flatten, decode, softmax) | {figures['host_decode_ms']} |\n"
            f"| host selection (numpy: per-class NMS, best 200) | {figures['host_select_ms']} |\n"
            f"| host total (`ssdtool.heads.decode_outputs`) | {figures['host_total_ms']} |\n"
            f"| in-graph tail (OpenVINO, the ops `convert` appends) | {tail} |\n\n"
            f"Host / in-graph (f32): {figures['host_over_in_graph_f32']}x. Detections kept per image: "
            f"{figures['detections_kept']}.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two images, three repeats (not for the record)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = run(args.quick)
    print(json.dumps(figures, indent=2) if args.json else markdown(figures))


if __name__ == "__main__":
    main()
