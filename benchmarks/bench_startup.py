"""Cold start of a one-image ``ssdtool detect`` side by side with the minimal script doing the same job (issue 22).

The minimal script is the floor for any Python program: ``import openvino``, read and compile the IR (from the same
compiled-model cache, with the same hint and inference precision), decode and resize the image with Pillow, one
inference, print. ``ssdtool detect IMAGE --format json`` does that job plus the command line (click), the registry,
the checks, postprocessing and its output.

Both run as fresh processes with the compiled-model cache and the page cache warm, alternating (ssdtool first in
even rounds, the script first in odd ones), so the machine's drift hits both alike. Each process's *overhead* is its
wall time minus the time its engine spent on the one inference (ssdtool logs it at ``-vv``; the script prints it):
what is left is start-up, imports, compile-from-cache, decoding and output. Reported: medians, the difference and
the ratio of the overheads, CPU seconds, the machine's load before and after, and which modules ssdtool imports that
the script does not (``python -X importtime``). ssdtool's own modules are byte-compiled first, as ``pip install``
leaves them (the ``PYTHONDONTWRITEBYTECODE`` many CI images set would otherwise compile them on every run).

``--baseline-tree DIR`` adds a third process to each round: ``ssdtool detect`` from another source tree (for
example ``git archive REV ssdtool models.yml | tar -x -C DIR``), byte-compiled the same way, so a change is measured
against the code before it on the same machine at the same time.

Target: ssdtool's overhead within 0.05 s of the minimal script's.

    python benchmarks/bench_startup.py [--runs 11] [--model ssd-resnet34-1200-synthetic] [--baseline-tree DIR]
                                       [--json] [--no-write]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detect import BUSY, CHILD_ENV, run_child
from common import ROOT, WORK, busy_cores, load_average, machine_description, median, ssdtool_command, write_section

sys.path.insert(0, str(ROOT))

MODEL = "ssd-resnet34-1200-synthetic"  # the full twin: the real model's size, so compile-from-cache costs the same
CACHE = WORK / "detect-cache"  # shared with bench_detect.py
TARGET_S = 0.05
HEADING = "Start-up: cold detect"

MINIMAL_SCRIPT = """
import sys, time
import numpy as np
from PIL import Image
import openvino as ov
xml, cache_dir, image, precision, width, height = sys.argv[1:7]
config = {"PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": cache_dir}
if precision != "auto":
    config["INFERENCE_PRECISION_HINT"] = precision
compiled = ov.Core().compile_model(xml, "CPU", config)
rgb = np.asarray(Image.open(image).convert("RGB").resize((int(width), int(height)), Image.BILINEAR))
x = np.ascontiguousarray(rgb[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32)
request = compiled.create_infer_request()
started = time.perf_counter()
request.infer({0: x})
print(time.perf_counter() - started)
"""


def prepare(model: str) -> dict[str, Any]:
    """The model's FP32 IR as ``ssdtool convert`` makes it (so ``auto`` precision is what a user gets), one 640x480
    JPEG, and ssdtool's modules byte-compiled."""
    from PIL import Image

    from ssdtool.cache import Cache
    from ssdtool.convert import ConvertOptions, convert
    from ssdtool.download import ensure_downloaded
    from ssdtool.imaging import generated_images
    from ssdtool.registry import load_registry

    entry = load_registry(ROOT / "models.yml").model(model)
    cache = Cache.at(CACHE)
    ensure_downloaded(entry, cache)
    xml = convert(entry, cache, ConvertOptions()).xml
    image = WORK / "startup-image.jpg"
    if not image.exists():
        Image.fromarray(generated_images(1, seed=7, size=(640, 480))[0]).save(image, quality=90)
    compiled = compileall.compile_dir(str(ROOT / "ssdtool"), quiet=1)
    width, height = entry.input.resize
    return {"entry": entry, "xml": xml, "image": image, "bytecode": bool(compiled), "size": (width, height),
            "compiled_cache": cache.compiled_model_dir(entry)}


def detect_arguments(model: str, setup: dict[str, Any]) -> list[str]:
    return ["--cache-dir", str(CACHE), "-vv", "detect", str(setup["image"]), "--model", model, "--backend", "openvino",
            "--format", "json"]


def from_tree(tree: Path, arguments: list[str]) -> list[str]:
    """``python -m ssdtool ARGUMENTS`` with ``tree`` first on the path (its registry: the tree's models.yml)."""
    code = (f"import sys; sys.path.insert(0, {str(tree)!r}); sys.argv[0] = 'ssdtool'; "
            "from ssdtool.cli import main; main()")
    return [sys.executable, "-c", code, *arguments]


def commands(model: str, setup: dict[str, Any]) -> tuple[list[str], list[str], str]:
    """The ssdtool command, the minimal script's command (same precision as ssdtool runs), and that precision."""
    ssdtool = ssdtool_command(*detect_arguments(model, setup))
    first = run_child(ssdtool)  # fills the LATENCY blob of the compiled-model cache and the page cache
    if first["code"] != 0:
        raise SystemExit(f"ssdtool detect failed ({first['code']}): {first['stderr']}")
    precision = json.loads(first["stdout"])["run"]["inference_precision"] or "auto"
    width, height = setup["size"]
    minimal = [sys.executable, "-c", MINIMAL_SCRIPT, str(setup["xml"]), str(setup["compiled_cache"]),
               str(setup["image"]), precision, str(width), str(height)]
    return ssdtool, minimal, precision


def _one(kind: str, command: list[str]) -> dict[str, float]:
    child = run_child(command)
    if child["code"] != 0:
        raise SystemExit(f"{kind} failed ({child['code']}): {child['stderr']}")
    if kind != "minimal":
        found = BUSY.search(child["stderr"])
        if not found:
            raise SystemExit(f"{kind} logged no engine time: {child['stderr']}")
        engine = float(found.group(1))
    else:
        engine = float(child["stdout"].split()[-1])
    return {"wall": child["seconds"], "engine": engine, "overhead": child["seconds"] - engine, "cpu": child["cpu"]}


def imported(command: list[str]) -> dict[str, float]:
    """Each module a process imports, with its own import time in seconds (``-X importtime``)."""
    with tempfile.TemporaryDirectory() as folder:
        err = Path(folder) / "err"
        with open(err, "w") as stderr:
            subprocess.run([command[0], "-X", "importtime", *command[1:]], stdout=subprocess.DEVNULL, stderr=stderr,
                           env={**os.environ, **CHILD_ENV}, check=True)
        found: dict[str, float] = {}
        for line in err.read_text().splitlines():
            match = re.match(r"import time:\s+(\d+) \|\s+\d+ \| (\s*)(\S+)", line)
            if match:
                found[match.group(3)] = int(match.group(1)) / 1e6
    return found


def run(model: str = MODEL, runs: int = 11, baseline_tree: Path | None = None) -> dict[str, Any]:
    setup = prepare(model)
    ssdtool, minimal, precision = commands(model, setup)
    kinds = {"ssdtool": ssdtool, "minimal": minimal}
    if baseline_tree is not None:
        compileall.compile_dir(str(baseline_tree / "ssdtool"), quiet=1)
        kinds["baseline"] = from_tree(baseline_tree, detect_arguments(model, setup))
    for kind, command in kinds.items():  # each warms what is its own (bytecode, Pillow's plugins, the page cache)
        _one(kind, command)
    load_before, busy_before = load_average(), busy_cores(2.0)
    data: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    names = list(kinds)
    for number in range(runs):
        order = names[number % len(names):] + names[:number % len(names)]  # rotate: none always first or last
        for kind in order:
            data[kind].append(_one(kind, kinds[kind]))
        print(f"run {number + 1}/{runs}: " + ", ".join(f"{kind} overhead {data[kind][-1]['overhead']:.3f} s"
                                                      for kind in names), file=sys.stderr)
    load_after = load_average()
    ours, floor = imported(ssdtool), imported(minimal)
    extra = {name: seconds for name, seconds in ours.items() if name not in floor}
    figures: dict[str, Any] = {
        "model": model, "runs": runs, "inference_precision": precision, "bytecode_compiled": setup["bytecode"],
        "load_before": load_before, "load_after": load_after, "other_work_cores_before": busy_before,
        "machine": machine_description(),
        "runs_data": data,
        "imports": {"ssdtool": len(ours), "minimal": len(floor), "extra": len(extra),
                    "extra_self_s": round(sum(extra.values()), 4),
                    "extra_ssdtool_modules": sum(1 for name in extra if name.split(".")[0] == "ssdtool"),
                    "largest_extra": sorted(extra.items(), key=lambda item: -item[1])[:12]},
    }
    for kind in data:
        for key in ("wall", "engine", "overhead", "cpu"):
            figures[f"{kind}_{key}_s"] = median([run[key] for run in data[kind]])
    differences = [a["overhead"] - b["overhead"] for a, b in zip(data["ssdtool"], data["minimal"], strict=True)]
    figures["difference_s"] = median(differences)  # pairwise: each pair ran back to back
    figures["ratio"] = figures["ssdtool_overhead_s"] / figures["minimal_overhead_s"]
    figures["met"] = figures["difference_s"] <= TARGET_S
    if "baseline" in data:
        figures["baseline_tree"] = str(baseline_tree)
        figures["baseline_difference_s"] = median([a["overhead"] - b["overhead"] for a, b
                                                   in zip(data["baseline"], data["minimal"], strict=True)])
    return figures


def table(f: dict[str, Any]) -> str:
    lines = [f"{'':<34} {'wall (s)':>9} {'engine (s)':>10} {'overhead (s)':>12} {'CPU (s)':>8}"]
    for kind, label in (("ssdtool", "ssdtool detect IMAGE --format json"), ("minimal", "minimal script"),
                        ("baseline", "the same, baseline tree")):
        if f"{kind}_wall_s" not in f:
            continue
        lines.append(f"{label:<34} {f[f'{kind}_wall_s']:>9.3f} {f[f'{kind}_engine_s']:>10.3f} "
                     f"{f[f'{kind}_overhead_s']:>12.3f} {f[f'{kind}_cpu_s']:>8.3f}")
    lines.append(f"difference of the overheads (median of pairs): {f['difference_s'] * 1000:.0f} ms; ratio "
                 f"{f['ratio']:.3f}x; target <= {TARGET_S * 1000:.0f} ms: {'met' if f['met'] else 'NOT met'}")
    if "baseline_difference_s" in f:
        lines.append(f"baseline tree's difference from the minimal script: {f['baseline_difference_s'] * 1000:.0f} ms")
    imports = f["imports"]
    lines.append(f"modules imported: ssdtool {imports['ssdtool']}, minimal script {imports['minimal']}; "
                 f"{imports['extra']} more ({imports['extra_ssdtool_modules']} of them ssdtool's), "
                 f"{imports['extra_self_s'] * 1000:.0f} ms of their own import time")
    lines.append("largest: " + ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds
                                         in imports["largest_extra"]))
    return "\n".join(lines)


def markdown(f: dict[str, Any]) -> str:
    machine = f["machine"]
    return (
        f"`python benchmarks/bench_startup.py` ({f['model']}, {f['runs']} alternating pairs, {machine['cpu']}, "
        f"{machine['cores']} cores, {machine['flags']}; load average {f['load_before']} -> {f['load_after']}, other "
        f"work {f['other_work_cores_before']} cores before the runs; inference at {f['inference_precision']}; "
        f"ssdtool byte-compiled: {f['bytecode_compiled']}). Overhead = process wall time minus its engine's time on "
        "the one inference." + (f" The baseline tree is {f.get('baseline_label') or f['baseline_tree']}."
                                 if "baseline_tree" in f else "") + "\n\n```\n" + table(f) + "\n```\n\n"
        f"| target | measured | met |\n| --- | --- | --- |\n"
        f"| cold `ssdtool detect` overhead within {TARGET_S * 1000:.0f} ms of the minimal script's | "
        f"{f['difference_s'] * 1000:.0f} ms ({f['ssdtool_overhead_s']:.3f} vs {f['minimal_overhead_s']:.3f} s, "
        f"{f['ratio']:.3f}x) | {'yes' if f['met'] else '**no**'} |\n\n"
        "On a shared machine the absolute figures move with the load; the pairs run back to back, so the "
        "difference is the figure to compare.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="alternating pairs of cold processes (median)")
    parser.add_argument("--model", default=MODEL, help=f"registry model (default {MODEL}; the tiny twin for a "
                                                        "quick look)")
    parser.add_argument("--baseline-tree", type=Path, metavar="DIR",
                        help="also run ssdtool from this source tree (ssdtool/ and models.yml), interleaved")
    parser.add_argument("--baseline-label", metavar="TEXT", help="what the baseline tree is, for the report "
                                                                  "(e.g. 'main at 7acda6c')")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = parser.parse_args()
    figures = run(args.model, args.runs, args.baseline_tree)
    if args.baseline_label:
        figures["baseline_label"] = args.baseline_label
    print(table(figures), file=sys.stderr if args.json else sys.stdout)
    if not args.no_write and args.model == MODEL:
        print(f"wrote {write_section(HEADING, markdown(figures))}", file=sys.stderr)
    if args.json:
        print(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
