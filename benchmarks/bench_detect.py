"""``ssdtool detect`` end to end against the engine alone, and the cold start of one image, on the full twin.

Measured in one run, so the ratios compare like with like on a shared machine:

* engine only: the same IR, device, inference precision and THROUGHPUT hint ``detect`` uses, fed pre-made input
  tensors through ``OpenVinoEngine.infer_stream`` (the optimal number of requests in flight): the best ``detect``
  could do;
* bench: ``ssdtool bench --hint throughput`` on the same model, a process of its own (what a user would quote);
* library: ``Detector.many(paths)`` on JPEG files (decode, EXIF, resize, BGR tensor, inference, postprocess), the
  detector created and its engine compiled beforehand;
* CLI: ``ssdtool detect FOLDER --format jsonl -o FILE``, process wall time from spawn to exit (interpreter,
  imports, compile from the compiled-model cache, every image, the output file);
* cold start: ``ssdtool detect one.jpg`` in a new process with the compiled-model cache warm, minus the time that
  process's engine was busy with the image (logged at ``-vv``), next to a minimal script doing the same job.

The three throughput measurements run in rounds whose order rotates (engine, library, CLI; then library, CLI,
engine; ...), and each round's ratios use that round's engine figure, so slow drifts in the machine's load hit
both sides of a ratio. CPU seconds per image are recorded as well: unlike wall time, they do not depend on what
else the machine is doing, and on a machine the engine saturates, throughput is inversely proportional to them.

Targets: library and CLI at least 0.95x the engine-only images/s (issue 6); ``ssdtool detect`` on 8 images at
least 0.95x ``bench --hint throughput`` images/s with a warm compiled-model cache (issue 10); cold start minus the
engine's own time under 1 s.

The model is converted as ``ssdtool convert`` does it (parity gate and runtime check), and ``detect`` runs its
default ``--inference-precision auto``: the CPU's bf16 where the IR passed its check there, else f32.

    python benchmarks/bench_detect.py [--images 8] [--rounds 3] [--cold-runs 5] [--quick] [--json] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    QUIET_CORES,
    ROOT,
    WORK,
    load_average,
    machine_description,
    median,
    ssdtool_command,
    wait_for_quiet,
    write_section,
)

sys.path.insert(0, str(ROOT))

MODEL = "ssd-resnet34-1200-synthetic"  # the packaged registry's full twin, built locally like a download
CACHE = WORK / "detect-cache"
IMAGES = WORK / "detect-images"
THROUGHPUT_TARGET = 0.95
COLD_OVERHEAD_TARGET = 1.0
CHILD_ENV = {"SSDTOOL_REGISTRY": "", "SSDTOOL_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
BUSY = re.compile(r"the engine was busy ([0-9.]+) s")
KINDS = ("engine", "bench", "library", "cli")


# Runs the measured command as its child and reports that child's own usage. Measuring from this (large) process
# directly would overstate peak RSS: Linux carries the parent's resident size at fork into the child's maximum.
WRAPPER = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.call(sys.argv[2:])
seconds = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as report:
    json.dump({"seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024,
               "code": code}, report)
"""


def run_child(command: Sequence[str]) -> dict[str, Any]:
    """Run ``command``: wall seconds, CPU seconds (user + system, every thread) and peak RSS of that process."""
    with tempfile.TemporaryDirectory() as folder:
        report, out, err = Path(folder) / "usage.json", Path(folder) / "out", Path(folder) / "err"
        with open(out, "w") as stdout, open(err, "w") as stderr:
            subprocess.run([sys.executable, "-c", WRAPPER, str(report), *command], stdout=stdout, stderr=stderr,
                           env={**os.environ, **CHILD_ENV}, check=True)
        data: dict[str, Any] = json.loads(report.read_text())
        data["stdout"], data["stderr"] = out.read_text(), err.read_text()
    return data


def prepare(count: int) -> tuple[Any, Any, Path, list[Path]]:
    """The twin in the benchmark cache, its FP32 IR as 'ssdtool convert' makes it (gate and runtime check, so
    detect's auto precision is what a user gets), and the images."""
    from PIL import Image

    from ssdtool.cache import Cache
    from ssdtool.convert import ConvertOptions, convert
    from ssdtool.download import ensure_downloaded
    from ssdtool.imaging import generated_images
    from ssdtool.registry import load_registry

    entry = load_registry(ROOT / "models.yml").model(MODEL)
    cache = Cache.at(CACHE)
    ensure_downloaded(entry, cache)
    xml = convert(entry, cache, ConvertOptions()).xml
    IMAGES.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, rgb in enumerate(generated_images(count, seed=42, size=(640, 480))):
        path = IMAGES / f"{index:04d}.jpg"
        if not path.exists():
            Image.fromarray(rgb).save(path, quality=90)
        paths.append(path)
    for stale in IMAGES.glob("*.jpg"):
        if stale not in paths:
            stale.unlink()
    return entry, cache, xml, paths


class Measurements:
    """The three throughput measurements; each returns (images/s, CPU seconds per image)."""

    def __init__(self, entry: Any, xml: Path, detector: Any, paths: list[Path]) -> None:
        from ssdtool.backends.openvino import OpenVinoEngine
        from ssdtool.imaging import load_image, preprocess

        self.paths = paths
        self.detector = detector
        self.precision = detector.run_info("throughput").inference_precision  # what detect runs here
        self.engine = OpenVinoEngine(xml, cache_dir=str(detector.compiled_cache_dir), hint="THROUGHPUT",
                                     inference_precision=self.precision)
        self.tensors = [preprocess(load_image(p), entry, form="ir") for p in paths]
        self.engine.infer(self.tensors[0])  # warm-up: first-inference allocations
        detector(paths[0])  # the same for the detector's engine
        self.cli_rss_mb = 0.0

    def engine_only(self) -> tuple[float, float]:
        cpu, started = time.process_time(), time.perf_counter()  # process_time: every thread of this process
        done = sum(1 for _ in self.engine.infer_stream(enumerate(self.tensors)))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert done == len(self.paths)
        return len(self.paths) / seconds, cpu / len(self.paths)

    def bench(self) -> tuple[float, float]:
        child = run_child(ssdtool_command("--cache-dir", str(CACHE), "-q", "bench", MODEL, "--hint", "throughput",
                                          "-n", str(len(self.paths)), "--offline", "--json"))
        if child["code"] != 0:
            raise SystemExit(f"ssdtool bench failed ({child['code']}): {child['stderr']}")
        report = json.loads(child["stdout"])
        assert report["inference_precision"] == self.precision, (report["inference_precision"], self.precision)
        return report["throughput_fps"], child["cpu"] / len(self.paths)

    def library(self) -> tuple[float, float]:
        cpu, started = time.process_time(), time.perf_counter()
        results = list(self.detector.many(self.paths))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        return len(self.paths) / seconds, cpu / len(self.paths)

    def cli(self) -> tuple[float, float]:
        out = WORK / "detect-out.jsonl"
        child = run_child(ssdtool_command("--cache-dir", str(CACHE), "-q", "detect", str(IMAGES), "--model", MODEL,
                                          "--backend", "openvino", "--format", "jsonl", "-o", str(out)))
        if child["code"] != 0:
            raise SystemExit(f"ssdtool detect failed ({child['code']}): {child['stderr']}")
        lines = out.read_text().splitlines()[1:]  # after the run header
        assert len(lines) == len(self.paths), f"{len(lines)} results for {len(self.paths)} images"
        self.cli_rss_mb = max(self.cli_rss_mb, child["rss_mb"])
        return len(self.paths) / child["seconds"], child["cpu"] / len(self.paths)


def warm_latency(xml: Path, compiled_cache: Path, tensor: Any, runs: int, precision: str | None) -> float:
    from ssdtool.backends.openvino import OpenVinoEngine

    engine = OpenVinoEngine(xml, cache_dir=str(compiled_cache), hint="LATENCY", inference_precision=precision)
    engine.infer(tensor)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        engine.infer(tensor)
        times.append(time.perf_counter() - started)
    return median(times)


FLOOR_SCRIPT = """
import sys, time
import numpy as np
from PIL import Image
import openvino as ov
config = {"PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": sys.argv[2]}
if sys.argv[4] != "auto":
    config["INFERENCE_PRECISION_HINT"] = sys.argv[4]
compiled = ov.Core().compile_model(sys.argv[1], "CPU", config)
rgb = np.asarray(Image.open(sys.argv[3]).convert("RGB").resize((1200, 1200), Image.BILINEAR))
x = np.ascontiguousarray(rgb[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32)
request = compiled.create_infer_request()
started = time.perf_counter()
request.infer({0: x})
print(time.perf_counter() - started)
"""


def cold(image: Path, xml: Path, compiled_cache: Path, runs: int, precision: str | None) -> dict[str, list[float]]:
    """Cold single-image processes, ``ssdtool detect`` and the minimal script alternating: wall time minus the
    time each process's engine spent on its one inference (ssdtool logs it at -vv; the script prints it)."""
    command = ssdtool_command("--cache-dir", str(CACHE), "-vv", "detect", str(image), "--model", MODEL, "--backend",
                              "openvino", "--format", "json")
    floor_command = [sys.executable, "-c", FLOOR_SCRIPT, str(xml), str(compiled_cache), str(image),
                     precision or "auto"]
    run_child(command)  # fills the LATENCY blob of the compiled-model cache and the page cache
    run_child(floor_command)
    data: dict[str, list[float]] = {"walls": [], "busy": [], "overheads": [], "floor_overheads": []}
    for _ in range(runs):
        child = run_child(command)
        found = BUSY.search(child["stderr"])
        if child["code"] != 0 or not found:
            raise SystemExit(f"ssdtool detect failed or logged no engine time ({child['code']}): {child['stderr']}")
        data["walls"].append(child["seconds"])
        data["busy"].append(float(found.group(1)))
        data["overheads"].append(child["seconds"] - float(found.group(1)))
        floor = run_child(floor_command)
        if floor["code"] != 0:
            raise SystemExit(f"the minimal script failed: {floor['stderr']}")
        data["floor_overheads"].append(floor["seconds"] - float(floor["stdout"].split()[-1]))
    return data


def run(images: int = 8, rounds: int = 3, cold_runs: int = 5, max_busy: float = QUIET_CORES, wait: float = 600.0
        ) -> dict[str, Any]:
    from ssdtool.detect import Detector
    from ssdtool.imaging import load_image, preprocess

    entry, cache, xml, paths = prepare(images)
    wait_for_quiet(max_busy, wait)
    load_before = load_average()
    detector = Detector(MODEL, "openvino", cache_dir=cache, registry=ROOT / "models.yml", offline=True,
                        performance="throughput")
    measurements = Measurements(entry, xml, detector, paths)
    per_round: list[dict[str, tuple[float, float]]] = []
    for number in range(rounds):
        order = KINDS[number % len(KINDS):] + KINDS[:number % len(KINDS)]  # rotate: none always first or last
        figures: dict[str, tuple[float, float]] = {}
        for kind in order:
            wait_for_quiet(max_busy, wait)  # each measurement starts while nothing else runs
            figures[kind] = getattr(measurements, "engine_only" if kind == "engine" else kind)()
        per_round.append(figures)
        print(f"round {number + 1}: " + ", ".join(f"{k} {v[0]:.3f} img/s {v[1]:.2f} cpu-s/img"
                                                 for k, v in figures.items()), file=sys.stderr)
    cli_rss_mb = measurements.cli_rss_mb
    precision = measurements.precision
    del measurements
    detector.close()
    cold_data = cold(paths[0], xml, detector.compiled_cache_dir, cold_runs, precision)
    latency = warm_latency(xml, detector.compiled_cache_dir, preprocess(load_image(paths[0]), entry, form="ir"), 3,
                           precision)
    f: dict[str, Any] = {
        "model": MODEL, "images": images, "image_size": "640x480 JPEG", "rounds": rounds, "backend": "openvino",
        "device": "CPU", "inference_precision": precision,
        "per_round": [{k: {"ips": v[0], "cpu_per_image": v[1]} for k, v in r.items()} for r in per_round],
        "cli_peak_rss_mb": round(cli_rss_mb, 1),
        "cold": cold_data, "latency_s": latency, "load_before": load_before, "load_after": load_average(),
        "machine": machine_description(),
    }
    for kind in KINDS:
        f[f"{kind}_ips"] = median([r[kind][0] for r in per_round])
        f[f"{kind}_cpu_per_image"] = median([r[kind][1] for r in per_round])
    for kind in ("bench", "library", "cli"):
        f[f"{kind}_ratio"] = median([r[kind][0] / r["engine"][0] for r in per_round])
        f[f"{kind}_cpu_ratio"] = f["engine_cpu_per_image"] / f[f"{kind}_cpu_per_image"]
    f["cli_vs_bench_ratio"] = median([r["cli"][0] / r["bench"][0] for r in per_round])
    f["cold_wall_s"] = median(cold_data["walls"])
    f["cold_engine_s"] = median(cold_data["busy"])
    f["cold_overhead_s"] = median(cold_data["overheads"])
    f["floor_overhead_s"] = median(cold_data["floor_overheads"])
    f["targets"] = targets(f)
    return f


def targets(f: dict[str, Any]) -> list[list[Any]]:
    return [
        [f"`Detector.many` images/s >= {THROUGHPUT_TARGET}x engine only", f"{f['library_ips']:.3f} img/s",
         f"{f['library_ratio']:.3f}x (CPU {f['library_cpu_ratio']:.3f}x)", f["library_ratio"] >= THROUGHPUT_TARGET],
        [f"`ssdtool detect` (process) images/s >= {THROUGHPUT_TARGET}x engine only", f"{f['cli_ips']:.3f} img/s",
         f"{f['cli_ratio']:.3f}x (CPU {f['cli_cpu_ratio']:.3f}x)", f["cli_ratio"] >= THROUGHPUT_TARGET],
        [f"`ssdtool detect` on {f['images']} images >= {THROUGHPUT_TARGET}x `ssdtool bench --hint throughput` "
         f"(warm compiled-model cache, {f['inference_precision']})",
         f"{f['cli_ips']:.3f} vs {f['bench_ips']:.3f} img/s", f"{f['cli_vs_bench_ratio']:.3f}x",
         f["cli_vs_bench_ratio"] >= THROUGHPUT_TARGET],
        [f"cold `ssdtool detect` (1 image) minus the engine's time < {COLD_OVERHEAD_TARGET} s",
         f"{f['cold_overhead_s']:.3f} s", f"{f['cold_overhead_s'] / COLD_OVERHEAD_TARGET:.2f}x of target",
         f["cold_overhead_s"] < COLD_OVERHEAD_TARGET],
    ]


def table(f: dict[str, Any]) -> str:
    names = {"engine": "engine only (pre-made tensors)", "bench": "ssdtool bench --hint throughput",
             "library": "library: Detector.many(paths)", "cli": "CLI: ssdtool detect FOLDER (process)"}
    lines = [f"{'round':<6} {'measurement':<38} {'images/s':>9} {'vs engine':>10} {'CPU s/img':>10}"]
    for number, figures in enumerate(f["per_round"], start=1):
        engine = figures["engine"]["ips"]
        for kind in KINDS:
            ips, cpu = figures[kind]["ips"], figures[kind]["cpu_per_image"]
            lines.append(f"{number:<6} {names[kind]:<38} {ips:>9.3f} {ips / engine:>9.3f}x {cpu:>10.2f}")
    lines += ["",
              f"median ratio, library / engine: {f['library_ratio']:.3f}x images/s, {f['library_cpu_ratio']:.3f}x "
              "by CPU time per image",
              f"median ratio, CLI / engine:     {f['cli_ratio']:.3f}x images/s, {f['cli_cpu_ratio']:.3f}x by CPU "
              "time per image",
              f"median ratio, CLI / bench:      {f['cli_vs_bench_ratio']:.3f}x images/s",
              "",
              f"{'cold ssdtool detect, 1 image (process wall)':<46} {f['cold_wall_s']:>8.3f} s",
              f"{'  of which its engine (first inference)':<46} {f['cold_engine_s']:>8.3f} s",
              f"{'  the rest: cold-start overhead':<46} {f['cold_overhead_s']:>8.3f} s",
              f"{'minimal script, same job: overhead':<46} {f['floor_overhead_s']:>8.3f} s",
              f"{'engine latency, warm (LATENCY hint)':<46} {f['latency_s']:>8.3f} s",
              f"{'CLI peak RSS (whole folder)':<46} {f['cli_peak_rss_mb']:>7.0f} MB"]
    return "\n".join(lines)


def markdown(f: dict[str, Any]) -> str:
    machine = f["machine"]
    target_lines = ["| target | measured | ratio | met |", "| --- | --- | --- | --- |"]
    target_lines += [f"| {t} | {m} | {r} | {'yes' if ok else '**no**'} |" for t, m, r, ok in f["targets"]]
    return (
        f"Measured by `python benchmarks/bench_detect.py` on {machine['cpu']}, {machine['cores']} cores, Python "
        f"{machine['python']}; 1-minute load average {f['load_before']} at the start, {f['load_after']} at the end "
        f"(other work on the machine shows up as noise). Full synthetic twin ({MODEL}), FP32 IR, OpenVINO on the "
        f"CPU at inference precision {f['inference_precision']} (detect's auto), {f['images']} generated "
        f"{f['image_size']} images; {f['rounds']} rounds in rotating order; the "
        "targets use the median of the per-round ratios (each round's engine figure is its own reference).\n\n"
        "- *engine only*: the IR with the THROUGHPUT hint and its optimal number of requests in flight, fed "
        "tensors prepared before the clock starts - what `detect` would reach if reading images were free;\n"
        "- *bench*: `ssdtool bench --hint throughput -n IMAGES` in its own process (warm-up excluded);\n"
        "- *library*: `Detector.many(paths)` - JPEG decode, EXIF, resize to 1200x1200, BGR tensor, inference, "
        "postprocessing - with the detector made beforehand;\n"
        "- *CLI*: the `ssdtool detect FOLDER --format jsonl -o FILE` process from spawn to exit (interpreter, "
        "imports, loading the compiled blob, every image, the output file);\n"
        "- *CPU s/img*: CPU seconds (all threads, user + system) per image; independent of the machine's other "
        "load, and on a machine the engine saturates, throughput goes as its inverse;\n"
        "- *cold start*: `ssdtool detect one.jpg` in a new process, compiled-model cache warm, minus the time its "
        "engine spent on the image (the process logs it at `-vv`; its first inference). Measured inside the same "
        "process, so the inference's own run-to-run noise stays out of the difference. The *minimal script* does "
        "the same job with nothing but `import openvino`, compiling from the same cache, a Pillow resize and one "
        "inference: the floor for any Python program.\n\n"
        "```\n" + table(f) + "\n```\n\n" + "\n".join(target_lines) + "\n\n"
        "Decoding and resizing run in worker threads ahead of the engine (Pillow releases the GIL) and cost about "
        f"{(f['library_cpu_per_image'] - f['engine_cpu_per_image']):.2f} CPU seconds per image next to the engine's "
        f"{f['engine_cpu_per_image']:.2f}. The process figure also pays start-up once per run, spread over the "
        "images. A warm start reads the IR's provenance record (no lock, no download check), loads the compiled "
        "blob from `<cache>/<model>/.ssdtool/ov-cache` in a helper thread while the image decodes, and differs from "
        "the minimal script by the CLI itself (click, the registry, the checks).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images in the folder (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three throughput measurements")
    parser.add_argument("--cold-runs", type=int, default=5, help="cold single-image processes (median)")
    parser.add_argument("--max-busy", type=float, default=QUIET_CORES,
                        help="wait until other work uses fewer cores than this before each measurement")
    parser.add_argument("--wait", type=float, default=600.0, help="longest wait for a quiet machine, in seconds")
    parser.add_argument("--quick", action="store_true", help="6 images, 1 round, 2 cold runs (not for the record)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = parser.parse_args()
    images, rounds, cold_runs = (6, 1, 2) if args.quick else (args.images, args.rounds, args.cold_runs)
    figures = run(images, rounds, cold_runs, args.max_busy, 0.0 if args.quick else args.wait)
    report = sys.stderr if args.json else sys.stdout  # with --json, stdout carries only the JSON
    print(table(figures), file=report)
    for name, measured, ratio, met in figures["targets"]:
        print(f"{'PASS' if met else 'FAIL'}  {name}: {measured} ({ratio})", file=report)
    if not args.no_write and not args.quick:
        print(f"wrote {write_section('Detect', markdown(figures))}", file=sys.stderr)
    if args.json:
        print(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
