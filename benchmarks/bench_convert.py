"""Convert the full synthetic twin: wall time and peak memory, parity gate excluded and included.

Targets (issue 5): under 3 s of wall time and under 1.5 GB peak memory without the gate. The peer is a plain
``openvino.convert_model`` + ``save_model`` of the same file (what a user without ssdtool would run).

    python benchmarks/bench_convert.py [--runs 3] [--json] [--no-write]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, WORK, ensure_full_twin, measure, median, ssdtool_command, write_section

MODEL = "ssd-resnet34-1200-synthetic"
PEER = """
import sys, openvino as ov
model = ov.convert_model(sys.argv[1])
ov.save_model(model, sys.argv[2], compress_to_fp16=False)
"""


def prepare(twin: Path) -> tuple[Path, Path]:
    """A registry naming the twin file, and a cache that already holds it (no download in the timing)."""
    data = yaml.safe_load((ROOT / "models.yml").read_text())
    entry = data["models"]["ssd-resnet34-1200-onnx"]
    payload_sha = hashlib.sha256(twin.read_bytes()).hexdigest()
    entry["files"] = [{"name": twin.name, "size": twin.stat().st_size, "sha256": payload_sha,
                       "sources": [f"file://{twin}"]}]
    registry = WORK / "convert-registry.yml"
    registry.write_text(yaml.safe_dump({"version": 1, "models": {MODEL: entry}}, sort_keys=False))
    cache = WORK / "convert-cache"
    target = cache / MODEL / twin.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(twin)
    return registry, cache


def run(runs: int) -> dict[str, object]:
    twin = ensure_full_twin()
    registry, cache = prepare(twin)
    base = ["--registry", str(registry), "--cache-dir", str(cache)]
    no_gate = [measure(ssdtool_command(*base, "convert", MODEL, "--offline", "--force", "--no-verify", "--json"))
               for _ in range(runs)]
    for result in no_gate:
        if result.returncode != 0:
            raise SystemExit(f"ssdtool convert failed: {result.stderr}")
    gate = measure(ssdtool_command(*base, "convert", MODEL, "--offline", "--force", "--json"))
    if gate.returncode != 0:
        raise SystemExit(f"ssdtool convert (with gate) failed: {gate.stderr}")
    peer = [measure([sys.executable, "-c", PEER, str(twin), str(WORK / "peer" / "plain.xml")]) for _ in range(runs)]
    gate_report = json.loads(gate.stdout)["parity"]
    return {
        "convert_no_gate_seconds": median([r.seconds for r in no_gate]),
        "convert_no_gate_library_seconds": median([json.loads(r.stdout)["seconds"] for r in no_gate]),
        "convert_no_gate_peak_rss_mb": max(r.peak_rss_bytes for r in no_gate) / 2**20,
        "convert_with_gate_seconds": gate.seconds,
        "convert_with_gate_peak_rss_mb": gate.peak_rss_bytes / 2**20,
        "gate_images": gate_report["images"],
        "gate_matched": f"{gate_report['matched']}/{gate_report['reference_detections']}",
        "peer_plain_convert_seconds": median([r.seconds for r in peer]),
        "peer_plain_convert_peak_rss_mb": max(r.peak_rss_bytes for r in peer) / 2**20,
        "runs": runs,
    }


def report(figures: dict[str, object]) -> str:
    rows = [
        ("`ssdtool convert --no-verify` (process wall, median)", f"{figures['convert_no_gate_seconds']:.2f} s",
         "< 3 s", f"{figures['convert_no_gate_seconds'] / 3.0:.2f}x of target"),
        ("  of which inside the library", f"{figures['convert_no_gate_library_seconds']:.2f} s", "", ""),
        ("`ssdtool convert --no-verify` peak RSS", f"{figures['convert_no_gate_peak_rss_mb']:.0f} MB", "< 1536 MB",
         f"{figures['convert_no_gate_peak_rss_mb'] / 1536:.2f}x of target"),
        ("`ssdtool convert` with parity gate (wall)", f"{figures['convert_with_gate_seconds']:.1f} s", "",
         f"{figures['gate_images']} images, {figures['gate_matched']} matched"),
        ("`ssdtool convert` with parity gate peak RSS", f"{figures['convert_with_gate_peak_rss_mb']:.0f} MB", "", ""),
        ("peer: plain `convert_model` + `save_model` (wall, median)",
         f"{figures['peer_plain_convert_seconds']:.2f} s", "",
         f"ssdtool/peer {figures['convert_no_gate_seconds'] / figures['peer_plain_convert_seconds']:.2f}x"),
        ("peer peak RSS", f"{figures['peer_plain_convert_peak_rss_mb']:.0f} MB", "", ""),
    ]
    lines = ["| measurement | value | target | ratio |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = parser.parse_args()
    figures = run(args.runs)
    table = report(figures)
    print(json.dumps(figures, indent=2) if args.json else table)
    if not args.no_write:
        write_section("Convert", "Full synthetic twin (80 MB ONNX), FP32, f32 NCHW input; "
                      f"medians of {figures['runs']} runs; `python benchmarks/bench_convert.py`.\n\n" + table)


if __name__ == "__main__":
    main()
