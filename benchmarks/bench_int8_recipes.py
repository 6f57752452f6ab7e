"""The two INT8 recipes on both CPU classes: accuracy guard recall and latency, to choose the default by measurement.

An INT8 IR moves between machines, so a recipe must suit every CPU class it may meet:

* ``portable`` (ssdtool's default): 7-bit weights in every layer (NNCF ``overflow_fix=enable``), so CPUs without
  VNNI, which multiply u8 x i8 pairs with ``vpmaddubsw`` and saturate at int16, compute them exactly;
* ``vnni``: NNCF's default (``first_layer_only``), 8-bit weights but the first layer's, for CPUs with VNNI/AMX.

Both IRs are built by ``benchmarks/bench_engines.py`` (300 generated calibration images) and compared here with the
FP32 IR on the accuracy guard's 8 held-out images, both at f32 (pinned), on this CPU natively and - when it has
VNNI - with oneDNN capped at AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2`` in a child process), which makes OpenVINO's int8
kernels take the non-VNNI path an AVX2-only CPU takes. The capped run is an emulation: it reproduces the AVX2
arithmetic (and its saturation), not the AVX2 machine's speed.

    python benchmarks/bench_int8_recipes.py [--json] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engines import CACHE, MODEL, RECIPES, int8_dir
from common import ROOT, write_section

GUARD_CHILD = """
import json, sys, time
from pathlib import Path
from ssdtool.quantize import accuracy_guard, resolve_calibration
from ssdtool.registry import load_registry
from ssdtool.backends.openvino import OpenVinoEngine
from ssdtool.imaging import generated_images, raw_input, resize_rgb
fp32, int8 = Path(sys.argv[1]), Path(sys.argv[2])
entry = load_registry().model(sys.argv[3])
calibration = resolve_calibration(entry, "generated", 300, 8)
report = accuracy_guard(fp32, int8, entry, calibration)
engine = OpenVinoEngine(int8, inference_precision="f32")
tensor = raw_input(resize_rgb(generated_images(1, seed=1)[0], entry.input))
engine.infer(tensor)
times = []
for _ in range(5):
    t = time.perf_counter()
    engine.infer(tensor)
    times.append(time.perf_counter() - t)
print(json.dumps({**report.summary(), "latency_median_ms": sorted(times)[2] * 1000}))
"""


def has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags or " amx_int8" in flags


def measure(fp32: Path, int8: Path, isa: str | None) -> dict[str, Any]:
    env = {**os.environ, "SSDTOOL_REGISTRY": "", "PYTHONWARNINGS": "ignore"}
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    result = subprocess.run([sys.executable, "-c", GUARD_CHILD, str(fp32), str(int8), MODEL], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"guard child failed ({int8}, {isa}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


def run() -> dict[str, Any]:
    fp32 = CACHE / MODEL / "openvino" / "FP32" / f"{MODEL}.xml"
    missing = [p for p in [fp32, *(int8_dir(r) / f"{MODEL}.xml" for r in RECIPES)] if not p.is_file()]
    if missing:
        raise SystemExit(f"run benchmarks/bench_engines.py first: missing {', '.join(map(str, missing))}")
    classes = {"native": None, **({"avx2 (oneDNN capped)": "AVX2"} if has_vnni() else {})}
    figures: dict[str, Any] = {"classes": list(classes), "rows": []}
    for label, isa in classes.items():
        for recipe in RECIPES:
            data = measure(fp32, int8_dir(recipe) / f"{MODEL}.xml", isa)
            figures["rows"].append({"class": label, "recipe": recipe, **data})
            print(f"{label:>22} {recipe:>8}: recall {data['recall']:.3f} ({data['matched']}/"
                  f"{data['reference_detections']}), max score diff {data['max_score_diff']:.3f}, "
                  f"{data['latency_median_ms']:.0f} ms", file=sys.stderr)
    return figures


def markdown(f: dict[str, Any]) -> str:
    lines = ["| CPU class | recipe | FP32 detections found (8 held-out images) | recall | max score diff | "
             "INT8 latency (ms, f32 elsewhere) |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for row in f["rows"]:
        lines.append(f"| {row['class']} | {row['recipe']} | {row['matched']}/{row['reference_detections']} | "
                     f"{row['recall']:.3f} | {row['max_score_diff']:.3f} | {row['latency_median_ms']:.0f} |")
    return ("Both INT8 recipes against the FP32 IR, on this CPU and with oneDNN capped at AVX2 (the int8 path of "
            "a CPU without VNNI; an emulation of its arithmetic, not of its speed). `python "
            "benchmarks/bench_int8_recipes.py`, after `bench_engines.py` built the IRs (300 generated calibration "
            "images each).\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = parser.parse_args()
    figures = run()
    print(json.dumps(figures, indent=2) if args.json else markdown(figures))
    if not args.no_write:
        write_section("INT8 recipes", markdown(figures))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
