"""Inference engines side by side on the full synthetic twin: compute floor, peers, and ssdtool's IRs at every
inference precision the CPU offers, in one run.

Measured, each configuration in its own process, interleaved over --runs rounds (medians reported):

* compute floor: 433.411 GFLOP (the model's published cost) / this machine's fp32 matmul rate (numpy, float32
  2048x2048, best of several, BLAS on every core). ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` are removed from
  that child's environment only (some machines set them, forcing an old OpenBLAS kernel); the kernel that ran is
  reported from threadpoolctl, and when the variables are set the rate with them is reported too;
* onnxruntime on the source-form ONNX: engine only (``ssdtool bench --backend onnxruntime``), and the MLCommons
  reference path (decoded image -> host resize + normalization with Pillow/numpy -> ``session.run``) per image;
* plain OpenVINO on the *same IR files* ssdtool made (``core.compile_model`` + ``infer_request.infer()`` in a loop,
  nothing else): the peer for "ssdtool's engine path costs nothing", per IR and inference precision;
* the peers a user without ssdtool gets from OpenVINO's converter: ``ovc model.onnx`` (FP16-compressed weights,
  normalized input) at f32;
* ssdtool (``ssdtool.bench.benchmark_file``, the loop ``ssdtool bench`` runs): the FP32 IR at f32 and at the CPU's
  bf16 (where it has bf16), the FP16 IR, and the INT8 IR of both recipes (portable: 7-bit weights; vnni: NNCF's
  default), latency and throughput.

    python benchmarks/bench_engines.py [--quick] [--runs N] [--json] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUIET_CORES, ROOT, WORK, measure, median, ssdtool_command, wait_for_quiet, write_section

sys.path.insert(0, str(ROOT))
from ssdtool.int8_recipes import DEFAULT_CALIBRATION_SIZE

MODEL = "ssd-resnet34-1200-synthetic"  # the packaged registry's full twin (built locally, like a download)
GFLOP = 433.411  # Open Model Zoo's figure for ssd-resnet34-1200-onnx; the twin has the same graph
CACHE = WORK / "engines-cache"
PEERS = WORK / "peers"
MATMUL_N = 2048
FLOOR_TARGET = 1.05
PEER_TARGET = 1.02  # ssdtool's engine path against plain OpenVINO on the same IR and precision
BF16_TARGET = 1.9
INT8_TARGET = 3.5
INT8_RECALL_TARGET = 0.90
RECIPES = ("portable", "vnni")
# ssdtool's default calibration size. The INT8 IRs are built once (a few minutes each on 2 cores) and reused;
# --quick keeps them, so a quick run measures the same IRs.
CALIBRATION_SIZE = DEFAULT_CALIBRATION_SIZE
CHILD_ENV = {"SSDTOOL_REGISTRY": "", "SSDTOOL_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

MATMUL_CHILD = """
import json, sys, time
import numpy as np
n, repeats = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
a @ b  # warm-up: BLAS threads start, pages fault in
best = float("inf")
for _ in range(repeats):
    t = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - t)
try:
    from threadpoolctl import threadpool_info
    blas = [{k: i.get(k) for k in ("internal_api", "architecture", "num_threads", "version")}
            for i in threadpool_info() if i.get("user_api") == "blas"]
except ImportError:
    blas = []
print(json.dumps({"seconds": best, "gflops": 2 * n ** 3 / best / 1e9, "n": n, "blas": blas}))
"""

# ssdtool's engine path: exactly what 'ssdtool bench' runs once it has the file (benchmark_file).
FILE_CHILD = """
import json, sys
from pathlib import Path
from ssdtool.bench import BenchOptions, benchmark_file, input_tensors
from ssdtool.registry import load_registry
path, backend, form, hint, iterations, precision, inference_precision = sys.argv[1:8]
entry = load_registry().model(sys.argv[8])
tensors = input_tensors(entry, "onnxruntime" if form == "normalized" else "openvino")
options = BenchOptions(backend=backend, hint=hint, iterations=int(iterations), precision=precision,
                       inference_precision=inference_precision)
print(json.dumps(benchmark_file(Path(path), tensors, options, model=Path(path).stem).to_dict()))
"""

# Plain OpenVINO, the peer: compile the file, run one request in a loop. No ssdtool code past the input tensors.
PLAIN_CHILD = """
import json, sys, time
import numpy as np
import openvino as ov
from ssdtool.bench import input_tensors
from ssdtool.registry import load_registry
path, form, inference_precision, iterations = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
entry = load_registry().model(sys.argv[5])
tensors = input_tensors(entry, "onnxruntime" if form == "normalized" else "openvino")
config = {"PERFORMANCE_HINT": "LATENCY"}
if inference_precision != "auto":
    config["INFERENCE_PRECISION_HINT"] = inference_precision
t = time.perf_counter()
compiled = ov.Core().compile_model(path, "CPU", config)
load = time.perf_counter() - t
request = compiled.create_infer_request()
request.infer({0: tensors[0]})  # warm-up
latencies = []
for index in range(iterations):
    t = time.perf_counter()
    request.infer({0: tensors[index % len(tensors)]})
    latencies.append((time.perf_counter() - t) * 1000)
ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
print(json.dumps({"latency_median_ms": float(np.median(latencies)), "latency_min_ms": float(min(latencies)),
                  "throughput_fps": 1000 / float(np.mean(latencies)), "load_seconds": load,
                  "iterations": iterations, "inference_precision": ran}))
"""

# The MLCommons reference path: decoded image in, host preprocessing, session.run. Pillow's bilinear resize is
# what the Open Model Zoo accuracy reference uses (MLCommons uses OpenCV; OpenCV is not a dependency here).
REFERENCE_CHILD = """
import json, sys, time
import numpy as np
from ssdtool.backends.onnxruntime import OnnxRuntimeEngine
from ssdtool.imaging import generated_images, normalized_input, resize_rgb
from ssdtool.registry import load_registry
entry = load_registry().model(sys.argv[2])
engine = OnnxRuntimeEngine(sys.argv[1])
images = generated_images(4, seed=21, size=(640, 480))
engine.infer(normalized_input(resize_rgb(images[0], entry.input), entry.input))  # warm-up
total, pre = [], []
for index in range(int(sys.argv[3])):
    t0 = time.perf_counter()
    tensor = normalized_input(resize_rgb(images[index % len(images)], entry.input), entry.input)
    t1 = time.perf_counter()
    engine.infer(tensor)
    t2 = time.perf_counter()
    total.append((t2 - t0) * 1000)
    pre.append((t1 - t0) * 1000)
print(json.dumps({"latency_median_ms": float(np.median(total)), "latency_min_ms": float(min(total)),
                  "preprocess_median_ms": float(np.median(pre)), "throughput_fps": 1000 / float(np.mean(total)),
                  "iterations": len(total), "inference_precision": "f32"}))
"""


def _ssdtool(*args: str) -> list[str]:
    return ssdtool_command("--cache-dir", str(CACHE), *args)


def _run_json(command: list[str], what: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], Any]:
    result = measure(command, env={**CHILD_ENV, **(env or {})})
    if result.returncode != 0:
        raise SystemExit(f"{what} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout), result


def cpu_default_precision() -> str:
    import openvino as ov

    return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()


def cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def int8_dir(recipe: str) -> Path:
    return WORK / f"int8-{recipe}"


def prepare(calibration_size: int) -> dict[str, Any]:
    """The twin in the cache, ssdtool's FP32/FP16 IRs, INT8 IRs of both recipes and the ovc peer (made once)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    env = {"SSDTOOL_OFFLINE": "0"}
    info = measure(_ssdtool("download", MODEL, "--progress", "none"), env={**CHILD_ENV, **env})
    if info.returncode != 0:
        raise SystemExit(f"building the twin failed:\n{info.stderr}")
    onnx_path = next(CACHE.joinpath(MODEL).glob("*.onnx"))
    converted = {}
    for precision in ("FP32", "FP16"):
        converted[precision], _ = _run_json(_ssdtool("convert", MODEL, "--precision", precision, "--offline",
                                                     "--json"), f"convert {precision}")
    int8: dict[str, Any] = {}
    for recipe in RECIPES:
        started = time.perf_counter()
        # --accept-accuracy-drop: the suite reports the guard's figure either way (random weights quantize worse
        # than trained ones) instead of stopping; the figure is checked against its target in the summary.
        data, _ = _run_json(_ssdtool("convert", MODEL, "--precision", "INT8", "--calibration", "generated",
                                     "--calibration-size", str(calibration_size), "--int8-recipe", recipe,
                                     "--accept-accuracy-drop", "--offline", "--json", "--output-dir",
                                     str(int8_dir(recipe))), f"convert INT8 {recipe}")
        int8[recipe] = {"xml": data["xml"], "seconds": time.perf_counter() - started, "up_to_date": data["up_to_date"],
                        "accuracy": data.get("accuracy") or data["provenance"].get("accuracy_guard"),
                        "runtime_checks": data["provenance"].get("runtime_checks", [])}
    PEERS.mkdir(parents=True, exist_ok=True)
    ovc_xml = PEERS / "ovc" / "model.xml"
    if not ovc_xml.exists() or ovc_xml.stat().st_mtime < onnx_path.stat().st_mtime:
        ovc = shutil.which("ovc") or str(Path(sys.executable).with_name("ovc"))
        subprocess.run([ovc, str(onnx_path), "--output_model", str(ovc_xml)], check=True, capture_output=True)
    return {"onnx": onnx_path, "ovc": ovc_xml, "fp32": Path(converted["FP32"]["xml"]),
            "fp32_runtime_checks": converted["FP32"]["provenance"].get("runtime_checks", []),
            "fp16": Path(converted["FP16"]["xml"]), "int8": int8, "calibration_size": calibration_size}


def matmul_rate(repeats: int, machine_settings: bool = False) -> dict[str, Any]:
    """fp32 matmul GFLOP/s with the OpenBLAS overrides removed (or, ``machine_settings``, as the machine sets them)."""
    env = dict(os.environ)
    if not machine_settings:
        for name in BLAS_VARIABLES:
            env.pop(name, None)
    result = subprocess.run([sys.executable, "-c", MATMUL_CHILD, str(MATMUL_N), str(repeats)], env=env,
                            capture_output=True, text=True, check=True)
    data = json.loads(result.stdout)
    data["floor_ms"] = GFLOP / data["gflops"] * 1000
    return data


def configurations(prepared: dict[str, Any], iterations: int, bf16: bool) -> dict[str, list[str]]:
    """label -> command printing a JSON report; every one runs the same generated images."""
    n = str(iterations)

    def ssdtool(path: Path, precision: str, inference: str, hint: str = "latency") -> list[str]:
        return [sys.executable, "-c", FILE_CHILD, str(path), "openvino", "raw", hint, n, precision, inference, MODEL]

    def plain(path: Path, inference: str, form: str = "raw") -> list[str]:
        return [sys.executable, "-c", PLAIN_CHILD, str(path), form, inference, n, MODEL]

    bench = lambda *a: _ssdtool("bench", MODEL, "--offline", "--json", "-n", n, *a)  # noqa: E731
    precisions = ["f32", "bf16"] if bf16 else ["f32"]
    int8_precision = "bf16" if bf16 else "f32"  # INT8 IRs: their non-quantized ops at the CPU's faster float
    configs = {
        "ort_latency": bench("--backend", "onnxruntime"),
        "ort_throughput": bench("--backend", "onnxruntime", "--hint", "throughput"),
        "ort_reference_path": [sys.executable, "-c", REFERENCE_CHILD, str(prepared["onnx"]), MODEL, n],
        "ovc_latency": plain(prepared["ovc"], "f32", "normalized"),
        "fp16_latency": ssdtool(prepared["fp16"], "FP16", "f32"),
    }
    for p in precisions:
        configs[f"plain_fp32_{p}_latency"] = plain(prepared["fp32"], p)
        configs[f"fp32_{p}_latency"] = ssdtool(prepared["fp32"], "FP32", p)
        configs[f"fp32_{p}_throughput"] = ssdtool(prepared["fp32"], "FP32", p, "throughput")
    for recipe in RECIPES:
        xml = Path(prepared["int8"][recipe]["xml"])
        configs[f"plain_int8_{recipe}_latency"] = plain(xml, int8_precision)
        configs[f"int8_{recipe}_latency"] = ssdtool(xml, "INT8", int8_precision)
        configs[f"int8_{recipe}_throughput"] = ssdtool(xml, "INT8", int8_precision, "throughput")
    return configs


def run(runs: int = 3, iterations: int = 10, calibration_size: int = CALIBRATION_SIZE, matmul_repeats: int = 7
        ) -> dict[str, Any]:
    prepared = prepare(calibration_size)
    bf16 = cpu_has_bf16()
    matmul = [matmul_rate(matmul_repeats)]
    configs = configurations(prepared, iterations, bf16)
    raw: dict[str, list[dict[str, Any]]] = {key: [] for key in configs}
    for round_index in range(runs):
        # Interleaved rounds, the order rotated each round: drift in machine load spreads over every
        # configuration instead of hitting one, and no configuration always runs first.
        keys = list(configs)
        keys = keys[round_index % len(keys):] + keys[:round_index % len(keys)]
        for key in keys:
            # Each configuration starts on a quiet machine (other work under QUIET_CORES, sampled while idle), so
            # a burst of other work between configurations does not land in one of them.
            busy = wait_for_quiet(QUIET_CORES, 900)
            data, result = _run_json(configs[key], key)
            data["busy_before"] = busy
            data["process_peak_rss_mb"] = result.peak_rss_bytes / 2**20
            raw[key].append(data)
            print(f"  round {round_index + 1}/{runs} {key}: {data['latency_median_ms']:.0f} ms, "
                  f"{data['throughput_fps']:.3f} fps ({data.get('inference_precision')})", file=sys.stderr)
        matmul.append(matmul_rate(matmul_repeats))  # between rounds too: the floor is measured under the same load
    best = max(matmul, key=lambda m: m["gflops"])
    figures: dict[str, Any] = {
        "matmul_gflops": best["gflops"], "matmul_blas": best["blas"], "floor_ms": best["floor_ms"],
        "matmul_gflops_all": [round(m["gflops"], 1) for m in matmul],
        "blas_variables": {name: os.environ[name] for name in BLAS_VARIABLES if name in os.environ},
        "runs": runs, "iterations": iterations, "calibration_size": calibration_size, "bf16": bf16,
        "cpu_default_precision": cpu_default_precision(),
        "int8": {recipe: {k: v for k, v in data.items() if k != "xml"} for recipe, data in prepared["int8"].items()},
        "fp32_runtime_checks": prepared["fp32_runtime_checks"],
        "load_average": os.getloadavg(),
    }
    if figures["blas_variables"]:
        machine = matmul_rate(matmul_repeats, machine_settings=True)
        figures["matmul_machine_settings"] = {"gflops": machine["gflops"], "blas": machine["blas"]}
    for key, values in raw.items():
        figures[key] = {
            "latency_median_ms": median([v["latency_median_ms"] for v in values]),
            # The fastest iteration of any round: other work only ever slows a run down, so this shows what the
            # configuration does undisturbed.
            "latency_min_ms": min(v.get("latency_min_ms", v["latency_median_ms"]) for v in values),
            "throughput_fps": median([v["throughput_fps"] for v in values]),
            "load_seconds": median([v.get("load_seconds", 0.0) for v in values]),
            "peak_rss_mb": max(v.get("peak_rss_mb") or v["process_peak_rss_mb"] for v in values),
            "requests": values[0].get("requests", 1),
            "streams": values[0].get("streams"),
            "inference_precision": values[0].get("inference_precision"),
            "raw_latency_ms": [round(v["latency_median_ms"], 1) for v in values],
            "busy_before": [v["busy_before"] for v in values],
        }
        if key == "ort_reference_path":
            figures[key]["preprocess_median_ms"] = median([v["preprocess_median_ms"] for v in values])
    return figures


def best_throughput(f: dict[str, Any], key: str) -> tuple[float, str]:
    """The higher images/s of the two hints for ``key`` (e.g. "fp32_f32"), and which hint gave it.

    The fair throughput comparison: a user after images/s picks the better hint. On 2 cores FP32 is compute-bound
    and both hints tie, while INT8 runs faster as one 2-thread stream than as two 1-thread streams.
    """
    return max((f[f"{key}_{hint}"]["throughput_fps"], hint) for hint in ("latency", "throughput"))


def _lat(f: dict[str, Any], key: str) -> float:
    return float(f[key]["latency_median_ms"])


def best_recipe(f: dict[str, Any]) -> str:
    """The INT8 recipe ssdtool would recommend here: the faster of those whose guard passed (portable on a tie)."""
    passed = [r for r in RECIPES if (f["int8"][r].get("accuracy") or {}).get("recall", 0) >= INT8_RECALL_TARGET]
    return min(passed or list(RECIPES), key=lambda r: (_lat(f, f"int8_{r}_latency"), r != "portable"))


def targets(f: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(target, measured, ratio, met) rows for the summary."""
    rows: list[tuple[str, str, str, bool]] = []
    floor = f["floor_ms"]
    f32 = _lat(f, "fp32_f32_latency")
    rows.append((f"FP32 IR at f32: latency <= {FLOOR_TARGET}x compute floor", f"{f32:.0f} ms vs floor {floor:.0f} ms",
                 f"{f32 / floor:.3f}x", f32 / floor <= FLOOR_TARGET))
    pairs = [("f32", "fp32_f32_latency", "plain_fp32_f32_latency")]
    if f["bf16"]:
        pairs.append(("bf16", "fp32_bf16_latency", "plain_fp32_bf16_latency"))
    pairs += [(f"INT8 ({r})", f"int8_{r}_latency", f"plain_int8_{r}_latency") for r in RECIPES]
    for label, mine, peer in pairs:
        ratio = _lat(f, mine) / _lat(f, peer)
        rows.append((f"ssdtool engine path within {PEER_TARGET - 1:.0%} of plain OpenVINO, same IR, {label}",
                     f"{_lat(f, mine):.0f} ms vs {_lat(f, peer):.0f} ms", f"{ratio:.3f}x", ratio <= PEER_TARGET))
    if f["bf16"]:
        speedup = f32 / _lat(f, "fp32_bf16_latency")
        rows.append((f"bf16 >= {BF16_TARGET}x faster than f32 (FP32 IR, latency)",
                     f"{_lat(f, 'fp32_bf16_latency'):.0f} ms vs {f32:.0f} ms", f"{speedup:.2f}x",
                     speedup >= BF16_TARGET))
    for recipe in RECIPES:
        accuracy = f["int8"][recipe].get("accuracy") or {}
        recall = accuracy.get("recall")
        speedup = f32 / _lat(f, f"int8_{recipe}_latency")
        guard = recall is not None and recall >= INT8_RECALL_TARGET
        rows.append((f"INT8 ({recipe}) >= {INT8_TARGET}x faster than f32 with its guard passed",
                     f"{_lat(f, f'int8_{recipe}_latency'):.0f} ms vs {f32:.0f} ms; guard recall "
                     f"{recall if recall is None else round(recall, 3)} ({accuracy.get('matched')}/"
                     f"{accuracy.get('reference_detections')})", f"{speedup:.2f}x", speedup >= INT8_TARGET and guard))
    return rows


def table(f: dict[str, Any]) -> str:
    floor = f["floor_ms"]
    f32 = _lat(f, "fp32_f32_latency")

    def row(label: str, key: str, peer: str | None = None) -> str:
        data = f[key]
        lat = data["latency_median_ms"]
        load = f"{data['load_seconds']:.2f} s" if data.get("load_seconds") else "-"
        versus = f"{lat / _lat(f, peer):.3f}x" if peer else ""
        return (f"| {label} | {data.get('inference_precision') or '-'} | {lat:.0f} | {data['latency_min_ms']:.0f} | "
                f"{lat / floor:.3f}x | {f32 / lat:.2f}x | {versus} | {data['throughput_fps']:.3f} | {load} | "
                f"{data['peak_rss_mb']:.0f} |")

    blas = ", ".join(f"{b.get('internal_api')} {b.get('version')} kernel {b.get('architecture')}, "
                     f"{b.get('num_threads')} threads" for b in f["matmul_blas"]) or "unknown BLAS"
    lines = [
        "| configuration | ran at | latency median (ms) | min (ms) | vs floor | speed-up vs ssdtool FP32 f32 | vs "
        "plain OpenVINO, same IR | throughput (images/s) | load | peak RSS (MB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| compute floor: {GFLOP} GFLOP / {f['matmul_gflops']:.1f} GFLOP/s (numpy fp32 matmul; {blas}) | f32 | "
        f"{floor:.0f} | | 1.000x | {f32 / floor:.2f}x | | {1000 / floor:.3f} | | |",
        row("onnxruntime, source ONNX, engine only, latency", "ort_latency"),
        row("onnxruntime, source ONNX, throughput (threads x 1 intra-op thread)", "ort_throughput"),
        row("onnxruntime, MLCommons reference path (host resize + normalize + run)", "ort_reference_path"),
        row("OpenVINO, plain `ovc model.onnx` (FP16-compressed weights), f32 pinned", "ovc_latency"),
    ]
    for p in (["f32", "bf16"] if f["bf16"] else ["f32"]):
        lines += [row(f"plain OpenVINO on ssdtool's FP32 IR, {p}", f"plain_fp32_{p}_latency"),
                  row(f"**ssdtool FP32 IR, {p}, latency**", f"fp32_{p}_latency", f"plain_fp32_{p}_latency"),
                  row(f"ssdtool FP32 IR, {p}, throughput", f"fp32_{p}_throughput")]
    lines.append(row("ssdtool FP16 IR, f32, latency", "fp16_latency"))
    for recipe in RECIPES:
        lines += [row(f"plain OpenVINO on ssdtool's INT8 IR ({recipe})", f"plain_int8_{recipe}_latency"),
                  row(f"**ssdtool INT8 IR ({recipe}), latency**", f"int8_{recipe}_latency",
                      f"plain_int8_{recipe}_latency"),
                  row(f"ssdtool INT8 IR ({recipe}), throughput", f"int8_{recipe}_throughput")]
    notes = [""]
    if f.get("matmul_machine_settings"):
        machine = f["matmul_machine_settings"]
        kernel = ", ".join(str(b.get("architecture")) for b in machine["blas"])
        notes.append(f"With the machine's {', '.join(f'{k}={v}' for k, v in f['blas_variables'].items())} the same "
                     f"matmul runs at {machine['gflops']:.1f} GFLOP/s (kernel {kernel}); the floor uses the rate "
                     "without them.")
    for recipe in RECIPES:
        accuracy = f["int8"][recipe].get("accuracy") or {}
        if accuracy:
            notes.append(
                f"INT8 {recipe} accuracy guard (NNCF, {f['calibration_size']} generated calibration images, both IRs "
                f"at f32): {accuracy['matched']}/{accuracy['reference_detections']} FP32 detections found (recall "
                f"{accuracy['recall']:.3f}, floor {accuracy.get('min_recall', 0.9)}) on {accuracy['images']} held-out "
                f"images, max score difference {accuracy['max_score_diff']:.3f}.")
        for check in f["int8"][recipe].get("runtime_checks") or []:
            notes.append(f"INT8 {recipe} runtime check: {check['precision']} vs f32, recall {check['recall']:.3f}, "
                         f"max score difference {check['max_score_diff']:.3f}.")
    for check in f.get("fp32_runtime_checks") or []:
        notes.append(f"FP32 IR runtime check (convert's figure, 3 images): {check['precision']} vs f32, "
                     f"{check['matched']}/{check['reference_detections']} found (recall {check['recall']:.3f}), max "
                     f"box difference {check['max_box_diff']:.3g}, max score difference "
                     f"{check['max_score_diff']:.3g}.")
    ref = f["ort_reference_path"]
    notes.append(f"MLCommons reference path: host preprocessing {ref['preprocess_median_ms']:.0f} ms per image "
                 "(Pillow resize to 1200x1200 + numpy normalization) on top of the session run.")
    notes.append(f"INT8 recipe this run recommends: {best_recipe(f)} (the faster of those whose guard passed).")
    return "\n".join(lines + notes)


def markdown(f: dict[str, Any]) -> str:
    load = ", ".join(f"{v:.2f}" for v in f["load_average"])
    return (
        f"The full synthetic twin (`{MODEL}`, 433 GFLOP per image), CPU, batch 1, generated 640x480 images "
        f"resized to 1200x1200 and preprocessed before timing. The CPU's default inference precision: "
        f"{f['cpu_default_precision']}. Each configuration runs in its own process; medians of {f['runs']} "
        f"interleaved rounds of {f['iterations']} timed inferences after one warm-up. Load average after the run: "
        f"{load}. `python benchmarks/bench_engines.py` (or `benchmarks/run.py --only engines`).\n\n" + table(f) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 3 iterations")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--calibration-size", type=int, default=CALIBRATION_SIZE)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.iterations = 1, 3
    figures = run(args.runs, args.iterations, args.calibration_size)
    print(json.dumps(figures, indent=2, default=str) if args.json else table(figures))
    if not args.no_write:
        write_section("Engines", markdown(figures))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
