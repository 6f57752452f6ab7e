"""INT8 conversion of the full twin, phase by phase: where the time goes, side by side, and what bounds it.

One real ``ssdtool convert NAME --precision INT8 --calibration generated --calibration-size N --force`` per size,
timed by when its JSON progress events (``--progress json``) arrive on stderr, so nothing inside NNCF is touched:

* start-up and FP32 graph: process start to the first ``calibrate`` event (imports, reading and rewriting the ONNX,
  saving the FP32 reference, starting the INT8 child, which imports NNCF and OpenVINO);
* statistics collection: first to last ``calibrate`` event (one float inference per calibration image);
* NNCF after statistics: ``quantize`` 0 to 1 (the last statistics inference, fast bias correction, the quantized
  graph);
* save and reload: ``quantize`` 1 to ``guard`` 0 (the INT8 IR saved by the child, checked by the parent);
* accuracy guard: ``guard`` 0 to its last event (held-out images through the FP32 and the INT8 IR, both at f32);
* runtime check: ``check`` 0 to 1 (the INT8 IR at the CPU's default precision against f32);
* the rest, to exit (provenance, install).

The floor beside them: one inference of the FP32 IR at f32 and at bf16, and of NNCF's statistics model (the FP32
graph with its in-graph reductions, captured in a child by wrapping NNCF's engine factory: a measurement only) at
f32, as NNCF compiles it. Statistics collection cannot beat N of those.

``--budget X`` adds one run with ``--max-ap-drop X`` (agreement AP on the 8 held-out images): the cost of
accuracy control (``reference``, ``validate`` runs, ``latency``) on the same twin; ``--tiny`` runs everything on
the 300 px twin instead.

    python benchmarks/bench_int8_convert.py [--sizes 300,64] [--budget 0.01] [--tiny] [--json] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, WORK, busy_cores, load_average, machine_description, write_section

sys.path.insert(0, str(ROOT))
from ssdtool.int8_recipes import DEFAULT_CALIBRATION_SIZE as DEFAULT_SIZE

FULL = "ssd-resnet34-1200-synthetic"
TINY = "ssd-resnet34-300-synthetic-tiny"
CACHE = WORK / "int8-convert-cache"
TARGET_SECONDS = 180.0
#: The run.py section's budget run: one AP point of agreement with FP32 on the 8 held-out images.
BUDGET = 0.01
ENV = {**os.environ, "SSDTOOL_REGISTRY": "", "PYTHONPATH": str(ROOT)}
PHASES = ("start-up and FP32 graph", "statistics collection", "NNCF after statistics", "save and reload",
          "accuracy control", "accuracy guard", "runtime check", "the rest")

FLOOR_CHILD = r"""
import json, sys, time
import numpy as np, openvino as ov, nncf
import nncf.common.factory as factory
from ssdtool.calibration import network_input
from ssdtool.convert.graph import build_ir_model
from ssdtool.convert.options import ConvertOptions
from ssdtool.imaging import generated_images
from ssdtool.quantize import _unique_friendly_names
from ssdtool.registry import load_registry

entry = load_registry().model(sys.argv[2])
model = build_ir_model(sys.argv[1], entry, ConvertOptions(precision="INT8"))
_unique_friendly_names(model)
tensor = network_input(generated_images(1, seed=0)[0], entry, "f32", "NCHW")
captured = []
create = factory.EngineFactory.create
factory.EngineFactory.create = staticmethod(lambda m, *a, **k: (captured.append(m), create(m, *a, **k))[1])
nncf.quantize(model.clone(), nncf.Dataset([tensor]), subset_size=1)
core = ov.Core()
compiled = {"fp32_f32": core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}),
            "fp32_bf16": core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"}),
            "statistics_f32": core.compile_model(captured[0], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})}
times = {key: [] for key in compiled}
for cm in compiled.values():
    cm(tensor)
for _ in range(int(sys.argv[3])):
    for key, cm in compiled.items():
        started = time.perf_counter(); cm(tensor); times[key].append(time.perf_counter() - started)
print(json.dumps({key: sorted(v)[len(v) // 2] * 1000 for key, v in times.items()}
                 | {"statistics_outputs": len(captured[0].outputs)}))
"""


def ssdtool(*args: str) -> list[str]:
    return [sys.executable, "-m", "ssdtool", "--cache-dir", str(CACHE), *args]


def prepare(model: str) -> Path:
    """The twin in the benchmark's cache (built by its synthetic: source once), and its path."""
    from ssdtool.registry import load_registry

    subprocess.run(ssdtool("download", model, "--progress", "none"), check=True, env=ENV, cwd=ROOT)
    return CACHE / model / load_registry().model(model).primary_file.name


def run_convert(model: str, size: int, budget: float | None, held_out: int | None = None) -> dict[str, Any]:
    """One INT8 conversion; its phases from the arrival times of its progress events."""
    command = ssdtool("convert", model, "--precision", "INT8", "--calibration", "generated", "--calibration-size",
                      str(size), "--force", "--offline", "--progress", "json", "--json")
    if held_out is not None:
        command += ["--held-out", str(held_out)]
    if budget is not None:
        command += ["--max-ap-drop", str(budget)]
    marks: dict[str, float] = {}
    runs = 0
    with tempfile.TemporaryFile("w+") as out:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
        assert process.stderr is not None
        tail: list[str] = []
        for line in process.stderr:
            now = time.monotonic() - started
            if not line.startswith('{"event": "progress"'):
                tail = [*tail, line][-20:]
                continue
            event = json.loads(line)
            phase, done = event["phase"], event["done"]
            marks.setdefault(f"{phase}:first", now)
            marks[f"{phase}:last"] = now
            if phase == "quantize":
                marks[f"quantize:{done}"] = now
            if phase == "check":
                marks[f"check:{done}"] = now
            if phase == "validate" and "value" in event:
                runs = max(runs, event["run"])
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        out.seek(0)
        result = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"convert failed ({size} images):\n{''.join(tail)}")
    data = json.loads(result)
    phases = _phases(marks, wall)
    figures: dict[str, Any] = {"calibration_size": size, "wall_s": round(wall, 1), "held_out": held_out,
                               "seconds": data["seconds"],
                               "peak_rss_mb": round(usage.ru_maxrss / 1024), "budget": budget,
                               "phases_s": {k: round(v, 1) for k, v in phases.items()},
                               "statistics_s_per_image": round(phases["statistics collection"] / max(size - 1, 1), 3)}
    if data.get("accuracy"):
        figures["guard"] = {k: data["accuracy"][k] for k in ("passed", "recall", "matched", "reference_detections")}
    if data.get("accuracy_control"):
        control = data["accuracy_control"]
        figures["accuracy_control"] = {k: control[k] for k in ("met", "fp32", "all_int8", "installed", "drop",
                                                                "int8_layers", "layers", "validation_runs", "latency")}
        figures["accuracy_control"]["validation_runs_seen"] = runs
    return figures


def _phases(marks: dict[str, float], wall: float) -> dict[str, float]:
    """Seconds per phase, from the events' arrival times, in the order a conversion runs them: start-up; with a
    budget the FP32 reference on the held-out images; statistics; NNCF's work after them (with a budget, up to its
    first validation); the validations; saving (with a budget, less the latency measurement); the guard; the
    runtime check; the rest."""
    def span(first: str, last: str) -> float:
        return marks[last] - marks[first] if first in marks and last in marks else 0.0

    begin = min(marks.get("reference:first", wall), marks["calibrate:first"])
    control_start = marks.get("validate:first", marks.get("quantize:1", marks["calibrate:last"]))
    quantized = marks.get("quantize:1", control_start)
    latency = span("latency:first", "latency:last")
    phases = {
        "start-up and FP32 graph": begin,
        "statistics collection": span("calibrate:first", "calibrate:last"),
        "NNCF after statistics": control_start - marks["calibrate:last"],
        "accuracy control": span("reference:first", "reference:last") + quantized - control_start + latency,
        "save and reload": marks.get("guard:first", marks.get("check:0", wall)) - quantized - latency,
        "accuracy guard": marks.get("check:0", marks.get("guard:last", 0.0)) - marks["guard:first"]
        if "guard:first" in marks else 0.0,
        "runtime check": marks.get("check:1", wall) - marks.get("check:0", wall),
    }
    phases = {name: value for name, value in phases.items() if value or name not in ("accuracy control",
                                                                                        "accuracy guard")}
    phases["the rest"] = wall - sum(phases.values())
    return phases


def floor(twin: Path, model: str, repeats: int) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", FLOOR_CHILD, str(twin), model, str(repeats)], capture_output=True,
                            text=True, cwd=ROOT, env=ENV)
    if result.returncode != 0:
        raise SystemExit(f"floor child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def sample_load() -> dict[str, float]:
    return {"other_work_cores": busy_cores(), "load_average": load_average()}


def run(sizes: list[int], budget: float | None, tiny: bool, repeats: int = 3, held_out: int | None = None,
        budget_only: bool = False) -> dict[str, Any]:
    model = TINY if tiny else FULL
    twin = prepare(model)
    figures: dict[str, Any] = {"model": model, "machine": machine_description(), "before": sample_load(),
                               "floor_ms": floor(twin, model, repeats), "runs": []}
    for size in [] if budget_only else sizes:
        figures["runs"].append(run_convert(model, size, None))
        print(f"{size} images: {figures['runs'][-1]['wall_s']} s", file=sys.stderr)
    if budget is not None:
        figures["runs"].append(run_convert(model, sizes[0], budget, held_out))
        print(f"budget {budget}: {figures['runs'][-1]['wall_s']} s", file=sys.stderr)
    figures["after"] = {"load_average": load_average()}
    return figures


def targets(f: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """Summary rows: each plain run's wall time against the target (the budget run's cost is reported, no target)."""
    rows: list[tuple[str, str, str, bool | None]] = []
    for r in f["runs"]:
        if r["budget"] is None:
            rows.append((f"`convert --precision INT8`, {_twin(f)}, {r['calibration_size']} calibration images, within "
                         f"{TARGET_SECONDS:.0f} s on 2 cores", f"{r['wall_s']:.0f} s ({_accuracy(r)})",
                         f"{r['wall_s'] / TARGET_SECONDS:.2f}x of target", r["wall_s"] <= TARGET_SECONDS))
        else:
            rows.append((f"`convert --precision INT8 --max-ap-drop {r['budget']}` cost, {_twin(f)}, "
                         f"{r['calibration_size']} calibration images", f"{r['wall_s']:.0f} s ({_accuracy(r)})", "",
                         None))
    return rows


def _twin(f: dict[str, Any]) -> str:
    return "tiny twin" if f["model"] == TINY else "full twin"


def markdown(f: dict[str, Any]) -> str:
    runs = f["runs"]
    heads = [f"{r['calibration_size']} images" + (f", --max-ap-drop {r['budget']}" if r["budget"] is not None else "")
             + (f", --held-out {r['held_out']}" if r.get("held_out") else "") for r in runs]
    lines = ["| phase | " + " | ".join(heads) + " |", "| --- |" + " ---: |" * len(runs)]
    for phase in PHASES:
        if any(phase in r["phases_s"] for r in runs):
            lines.append(f"| {phase} | " + " | ".join(f"{r['phases_s'][phase]:.1f} s" if phase in r["phases_s"]
                                                       else "" for r in runs) + " |")
    lines.append("| **wall (process)** | " + " | ".join(f"**{r['wall_s']:.1f} s**" for r in runs) + " |")
    lines.append("| statistics per image | " + " | ".join(f"{r['statistics_s_per_image']:.2f} s" for r in runs)
                 + " |")
    lines.append("| peak RSS | " + " | ".join(f"{r['peak_rss_mb']} MB" for r in runs) + " |")
    lines.append("| accuracy | " + " | ".join(_accuracy(r) for r in runs) + " |")
    fl = f["floor_ms"]
    floor_text = (f"One inference of the FP32 IR: {fl['fp32_f32']:.0f} ms at f32, {fl['fp32_bf16']:.0f} ms at bf16; "
                  f"NNCF's statistics model (the FP32 graph plus {fl['statistics_outputs']} in-graph reductions) at "
                  f"f32, as NNCF runs it: {fl['statistics_f32']:.0f} ms. So N calibration images cost at least N x "
                  f"{fl['statistics_f32'] / 1000:.2f} s of statistics collection here.")
    machine, before = f["machine"], f["before"]
    return (f"`ssdtool convert {f['model']} --precision INT8 --calibration generated --calibration-size N --force`, "
            "phases timed by the arrival of its JSON progress events (`python benchmarks/bench_int8_convert.py`). "
            f"{machine['cpu']}, {machine['cores']} cores; other work {before['other_work_cores']} cores, load "
            f"average {before['load_average']} -> {f['after']['load_average']}. Target: {TARGET_SECONDS:.0f} s "
            "on 2 cores.\n\n" + "\n".join(lines) + "\n\n" + floor_text + "\n")


def _accuracy(run: dict[str, Any]) -> str:
    if "accuracy_control" in run:
        c = run["accuracy_control"]
        return (f"{'met' if c['met'] else 'not met'}: agreement AP {c['installed']:.3f} (all INT8 {c['all_int8']:.3f})"
                f", {c['int8_layers']}/{c['layers']} layers INT8, {c['validation_runs']} validations")
    g = run.get("guard") or {}
    return f"guard recall {g.get('recall', 0):.3f} ({g.get('matched')}/{g.get('reference_detections')})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=f"{DEFAULT_SIZE},300" if DEFAULT_SIZE != 300 else "300",
                        help="calibration sizes, comma-separated [default: ssdtool's default, and 300]")
    parser.add_argument("--budget", type=float, default=None, help="also one run with --max-ap-drop X")
    parser.add_argument("--tiny", action="store_true", help="the 300 px twin instead of the full one")
    parser.add_argument("--held-out", type=int, default=None, help="the budget run's held-out images [default: 8]")
    parser.add_argument("--budget-only", action="store_true", help="only the --budget run (at the first size)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = parser.parse_args()
    figures = run([int(size) for size in args.sizes.split(",")], args.budget, args.tiny, held_out=args.held_out,
                  budget_only=args.budget_only)
    print(json.dumps(figures, indent=2) if args.json else markdown(figures))
    if not args.no_write:
        write_section("INT8 convert" + (" (tiny twin)" if args.tiny else ""), markdown(figures))


if __name__ == "__main__":
    main()
