"""Serving: ``ssdtool serve`` + ``--server`` against local inference of the same IR, same machine, same run.

* throughput: ``ssdtool detect IMAGES --server URL --concurrency N`` (binary tensor extension; images/s from its
  summary) and ``ssdtool bench --server URL --concurrency N`` against local ``ssdtool bench --hint throughput``,
  on the full twin (target: served >= 0.85x local);
* per-request overhead on the tiny twin: median ``bench --server --concurrency 1`` round trip minus median local
  ``bench --hint latency``, in ms.

Everything at ``--inference-precision f32`` (both sides the same arithmetic on every CPU). ``--quick`` uses the
tiny twin for both and few iterations: it proves the script, not the figures.

    python benchmarks/bench_serve.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, ssdtool_command

FULL, TINY = "ssd-resnet34-1200-synthetic", "ssd-resnet34-300-synthetic-tiny"
CACHE = WORK / "serve-cache"
IMAGES = WORK / "serve-images"
THROUGHPUT_TARGET = 0.85
ENV = {**os.environ, "SSDTOOL_REGISTRY": "", "PYTHONWARNINGS": "ignore"}


def _ssdtool(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(ssdtool_command("--cache-dir", str(CACHE), *args), capture_output=True, text=True,
                            env=ENV, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"ssdtool {' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def _bench(model: str, *args: str) -> dict[str, Any]:
    """``ssdtool bench`` at f32: pinned here for a local engine; a served one runs as the server was started (f32)."""
    precision = () if "--server" in args else ("--inference-precision", "f32")
    return json.loads(_ssdtool("bench", model, *precision, "--json", *args).stdout)


class _Server:
    def __init__(self, model: str) -> None:
        command = ssdtool_command("--cache-dir", str(CACHE), "serve", model, "--port", "0", "--json",
                                  "--inference-precision", "f32", "--progress", "none")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                        env=ENV)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"ssdtool serve {model} did not start (exit {self.process.wait()})")
        self.url = json.loads(line)["url"]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def _images(count: int) -> list[str]:
    from PIL import Image

    from ssdtool.imaging import generated_images

    IMAGES.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, rgb in enumerate(generated_images(count, seed=5, size=(640, 480))):
        path = IMAGES / f"{index:03d}.jpg"
        if not path.exists():
            Image.fromarray(rgb).save(path, quality=90)
        paths.append(str(path))
    return paths


def _detect_rate(url: str, model: str, images: list[str], concurrency: int) -> float:
    result = _ssdtool("detect", *images, "-m", model, "--server", url, "--concurrency", str(concurrency),
                      "--format", "jsonl", "--progress", "none")
    found = re.findall(r"([\d.]+) images/s", result.stderr)
    if not found:
        raise RuntimeError(f"no images/s in detect's summary: {result.stderr[-500:]}")
    return float(found[-1])


def run(quick: bool) -> dict[str, Any]:
    throughput_model = TINY if quick else FULL
    iterations = "8" if quick else "60"
    concurrency = 4
    local = _bench(throughput_model, "--hint", "throughput", "-n", iterations)
    server = _Server(throughput_model)
    try:
        served = _bench(throughput_model, "--server", server.url, "--concurrency", str(concurrency), "-n", iterations)
        detect_fps = _detect_rate(server.url, throughput_model, _images(8 if quick else 40), concurrency)
    finally:
        server.stop()
    local_latency = _bench(TINY, "--hint", "latency", "-n", "20" if quick else "200")
    server = _Server(TINY)
    try:
        served_latency = _bench(TINY, "--server", server.url, "--concurrency", "1", "-n", "20" if quick else "200")
    finally:
        server.stop()
    ratio = detect_fps / local["throughput_fps"]
    return {
        "quick": quick, "throughput_model": throughput_model, "concurrency": concurrency,
        "local_throughput_fps": round(local["throughput_fps"], 3), "local_requests": local["requests"],
        "served_bench_fps": round(served["throughput_fps"], 3), "served_detect_fps": round(detect_fps, 3),
        "served_over_local": round(ratio, 3),
        "served_bench_over_local": round(served["throughput_fps"] / local["throughput_fps"], 3),
        "tiny_local_latency_ms": round(local_latency["latency_median_ms"], 2),
        "tiny_served_latency_ms": round(served_latency["latency_median_ms"], 2),
        "tiny_overhead_ms": round(served_latency["latency_median_ms"] - local_latency["latency_median_ms"], 2),
        "inference_precision": [local["inference_precision"], served["inference_precision"]],
        "targets": [[f"served throughput (detect --server --concurrency {concurrency}, binary) >= "
                     f"{THROUGHPUT_TARGET}x local bench --hint throughput",
                     f"{detect_fps:.2f} vs {local['throughput_fps']:.2f} images/s", f"{ratio:.2f}x",
                     ratio >= THROUGHPUT_TARGET]],
    }


def markdown(figures: dict[str, Any]) -> str:
    quick = " (--quick: tiny twin, few iterations; not the real figures)" if figures["quick"] else ""
    return (f"`{figures['throughput_model']}` at f32, {figures['concurrency']} requests in flight, binary tensor "
            f"extension, server and client on the same machine{quick}; `python benchmarks/bench_serve.py`.\n\n"
            "| measure | images/s or ms |\n| --- | --- |\n"
            f"| local `bench --hint throughput` ({figures['local_requests']} requests) | "
            f"{figures['local_throughput_fps']} images/s |\n"
            f"| served, `detect --server` (decode + resize here, inference there) | "
            f"{figures['served_detect_fps']} images/s ({figures['served_over_local']}x) |\n"
            f"| served, `bench --server` (tensors only) | {figures['served_bench_fps']} images/s "
            f"({figures['served_bench_over_local']}x) |\n"
            f"| tiny twin latency, local / served | {figures['tiny_local_latency_ms']} / "
            f"{figures['tiny_served_latency_ms']} ms |\n"
            f"| per-request overhead (served minus local, tiny twin) | {figures['tiny_overhead_ms']} ms |\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = run(args.quick)
    print(json.dumps(figures, indent=2) if args.json else markdown(figures))


if __name__ == "__main__":
    main()
