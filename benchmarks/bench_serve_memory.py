"""Serving memory: ``ssdtool serve``'s resident memory while 8 clients each send an 88-megapixel PNG at once.

The reproduction from issue 20 (8 one-bit PNGs of 9381 x 9381 pixels, about 11 KB each: 2.4 GB peak, 1.3 GB kept
afterwards), and the same with 8-bit grey and RGB pixels. For each: the server's RSS before, its peak (psutil
sampled every 5 ms, and the kernel's high-water mark VmHWM after resetting it through /proc/PID/clear_refs), and
its RSS 2 s after the last answer, against the decode budget (``--decode-memory``, 1 GiB by default). The tiny
twin serves (the model's size does not matter here; decoding does).

    python benchmarks/bench_serve_memory.py [--clients 8] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, load_average, ssdtool_command

TINY = "ssd-resnet34-300-synthetic-tiny"
CACHE = WORK / "serve-cache"
SIDE = 9381  # 88.0 million pixels, under the default --max-pixels (89.5 million)
MODES = {"1": "one-bit (issue 20)", "L": "8-bit grey", "RGB": "RGB"}
ENV = {**os.environ, "SSDTOOL_REGISTRY": "", "PYTHONWARNINGS": "ignore"}
MIB = 2**20


def _png(mode: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (SIDE, SIDE)).save(buffer, format="PNG")
    return buffer.getvalue()


def _request(png: bytes) -> tuple[bytes, dict[str, str]]:
    raw = len(png).to_bytes(4, "little") + png
    header = json.dumps({"inputs": [{"name": "encoded_image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def _kernel_peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _measure(url: str, pid: int, png: bytes, clients: int) -> dict[str, Any]:
    import psutil
    import requests

    process = psutil.Process(pid)
    body, headers = _request(png)
    before = process.memory_info().rss
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := the current RSS
    peak, stop, statuses = before, threading.Event(), []

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.005):
            peak = max(peak, process.memory_info().rss)

    def send() -> None:
        answer = requests.post(f"{url}/v2/models/{TINY}/infer", data=body, headers=headers, timeout=600)
        statuses.append(answer.status_code)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=send) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    peak = max(peak, _kernel_peak(pid))
    time.sleep(2)
    after = process.memory_info().rss
    return {"png_bytes": len(png), "statuses": sorted(set(statuses)), "seconds": round(seconds, 2),
            "rss_before_mib": round(before / MIB), "peak_mib": round(peak / MIB),
            "peak_over_before_mib": round((peak - before) / MIB), "after_mib": round(after / MIB),
            "after_over_before_mib": round((after - before) / MIB)}


def run(clients: int, modes: list[str]) -> dict[str, Any]:
    command = ssdtool_command("--cache-dir", str(CACHE), "serve", TINY, "--port", "0", "--json",
                              "--inference-precision", "f32", "--progress", "none")
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line:
        raise RuntimeError(f"ssdtool serve did not start (exit {server.wait()})")
    info = json.loads(line)
    try:
        cases = {mode: _measure(info["url"], server.pid, _png(mode), clients) for mode in modes}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    budget = info.get("limits", {}).get("decode_memory")  # older versions had no budget
    return {"clients": clients, "pixels": SIDE * SIDE, "decode_memory_mib": budget // MIB if budget else None,
            "load_average": load_average(), "cases": cases}


def markdown(figures: dict[str, Any]) -> str:
    rows = "".join(
        f"| {MODES[mode]} | {case['png_bytes']:,} | {case['statuses']} | {case['rss_before_mib']} | "
        f"{case['peak_mib']} ({case['peak_over_before_mib']:+d}) | {case['after_mib']} "
        f"({case['after_over_before_mib']:+d}) | {case['seconds']} |\n" for mode, case in figures["cases"].items())
    return (f"{figures['clients']} clients at once, each an encoded PNG of {figures['pixels']:,} pixels, against "
            f"`ssdtool serve {TINY}` with its default decode budget of {figures['decode_memory_mib']} MiB "
            f"(load average {figures['load_average']}); `python benchmarks/bench_serve_memory.py`.\n\n"
            "| PNG pixels | bytes | statuses | RSS before, MiB | peak, MiB | 2 s after, MiB | seconds |\n"
            "| --- | --- | --- | --- | --- | --- | --- |\n" + rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--mode", action="append", choices=list(MODES), help="pixel modes to send [default: all]")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = run(args.clients, args.mode or list(MODES))
    print(json.dumps(figures, indent=2) if args.json else markdown(figures))


if __name__ == "__main__":
    main()
