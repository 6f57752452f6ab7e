"""Build the synthetic twins: wall time and peak memory (and, optionally, inference time and candidate load).

Targets (issue 3): full twin built in under 30 s with under 1.5 GB peak memory; tiny twin in under 1 s.
Each build runs in a fresh child process (``python -c``), so wall time includes the interpreter and the numpy/onnx
imports, and peak RSS is that child's own (``os.wait4``). The child also reports its phases (import, build_model,
serialize, write) so a regression can be located without a profiler.

    python benchmarks/bench_synthetic.py [--runs 5] [--json] [--inference] [--load] [--no-write]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine_description, measure, median, write_section

VARIANTS = {
    "full": ("synthetic:ssd-resnet34?seed=0", "ssd-resnet34-1200-synthetic", 30.0, 1.5e9),
    "tiny": ("synthetic:ssd-resnet34?seed=0&variant=tiny", "ssd-resnet34-300-synthetic-tiny", 1.0, None),
}

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from ssdtool import synthetic
t1 = time.perf_counter()
model = synthetic.build_model(sys.argv[1])
t2 = time.perf_counter()
data = model.SerializeToString()
t3 = time.perf_counter()
with open(sys.argv[2], "wb") as fh:
    fh.write(data)
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "build_model": t2 - t1, "serialize": t3 - t2, "write": t4 - t3}))
"""


def bench_build(variant: str, runs: int, workdir: Path) -> dict[str, object]:
    url, registry_name, _, _ = VARIANTS[variant]
    target = workdir / f"{variant}.onnx"
    results = []
    for _ in range(runs):
        run = measure([sys.executable, "-c", CHILD, url, str(target)], cwd=ROOT)
        if run.returncode != 0:
            raise SystemExit(f"building {url} failed:\n{run.stderr}")
        results.append((run, json.loads(run.stdout)))
    data = target.read_bytes()
    return {
        "url": url,
        "registry_entry": registry_name,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "runs": runs,
        "wall_s": median([r.seconds for r, _ in results]),
        "wall_s_all": [round(r.seconds, 3) for r, _ in results],
        "peak_rss_bytes": int(median([r.peak_rss_bytes for r, _ in results])),
        "phases_s": {k: median([p[k] for _, p in results]) for k in results[0][1]},
    }


def bench_inference(variant: str, path: Path, runs: int) -> dict[str, float]:
    import time

    import onnxruntime as ort

    from ssdtool import synthetic

    size = 1200 if variant == "full" else 300
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = synthetic.normalize_image(synthetic.sample_images(size)[2][1])
    session.run(None, {"image": image})  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"image": image})
        times.append(time.perf_counter() - start)
    return {"median_s": median(times), "runs": runs}


def candidate_load(variant: str, path: Path) -> dict[str, dict[str, int]]:
    """Per sample image: (box, class) pairs above 0.05, pairs left after NMS, final detections."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from ssdtool import ssd, synthetic

    size = 1200 if variant == "full" else 300
    model = onnx.load(str(path))
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in ("decode.boxes", "probs"))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    load = {}
    for name, image in synthetic.sample_images(size):
        _, _, scores, boxes, probs = session.run(None, {"image": synthetic.normalize_image(image)})
        after_nms = ssd.select(boxes[0], probs[0], per_class=200, max_total=10**6)[2]
        load[name] = {"candidates": int((probs[0][:, 1:] > 0.05).sum()), "after_nms": len(after_nms),
                      "detections": int(scores.shape[1])}
    return load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--inference", action="store_true", help="also time one onnxruntime inference")
    parser.add_argument("--load", action="store_true", help="also report candidate counts on the sample images")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    args = parser.parse_args()

    report: dict[str, object] = {"machine": machine_description(), "variants": {}}
    with tempfile.TemporaryDirectory(prefix="bench-synthetic-") as tmp:
        results = {variant: bench_build(variant, args.runs, Path(tmp)) for variant in VARIANTS}
        # Only after every build: on Linux a child's peak RSS includes the parent it was forked from, so the
        # parent must stay small (no onnxruntime session, no arrays) while builds are measured.
        for variant, result in results.items():
            if args.inference:
                result["inference"] = bench_inference(variant, Path(tmp) / f"{variant}.onnx",
                                                      5 if variant == "full" else 50)
            if args.load:
                result["load"] = candidate_load(variant, Path(tmp) / f"{variant}.onnx")
        report["variants"] = results

    if args.json:
        print(json.dumps(report, indent=2))
        return
    table = render(report)
    print(table)
    if not args.no_write:
        machine = report["machine"]
        body = (f"Measured by `python benchmarks/bench_synthetic.py --runs {args.runs}"
                f"{' --inference' if args.inference else ''}{' --load' if args.load else ''}` on\n"
                f"{machine['cpu']}, {machine['cores']} cores, Python {machine['python']}; 1-minute load average at "
                f"the end: {os.getloadavg()[0]:.2f}\n(other work on the machine shows up as noise). Each build is a "
                "fresh process (`python -c`: interpreter,\nnumpy/onnx imports, build, serialize, write); wall time "
                "and peak RSS of that process, median of the runs.\n\n```\n" + table + "\n```\n")
        write_section("Synthetic twin build", body)


def render(report: dict[str, object]) -> str:
    lines = [f"{'twin':6} {'size (bytes)':>13} {'wall s':>7} {'peak RSS':>10} {'import':>7} {'build':>7} "
             f"{'serialize':>9} {'write':>6} {'target':>18}"]
    for variant, r in report["variants"].items():  # type: ignore[attr-defined]
        _, _, wall_target, mem_target = VARIANTS[variant]
        p = r["phases_s"]
        target = f"< {wall_target:g} s" + (f", < {mem_target / 1e9:g} GB" if mem_target else "")
        lines.append(f"{variant:6} {r['size']:>13,} {r['wall_s']:>7.2f} {r['peak_rss_bytes'] / 1e6:>7.0f} MB "
                     f"{p['import']:>7.2f} {p['build_model']:>7.2f} {p['serialize']:>9.2f} {p['write']:>6.2f} "
                     f"{target:>18}")
    for variant, r in report["variants"].items():  # type: ignore[attr-defined]
        if "inference" in r:
            lines.append(f"{variant} inference (onnxruntime, CPU): {r['inference']['median_s'] * 1000:.1f} ms median")
    for variant, r in report["variants"].items():  # type: ignore[attr-defined]
        if "load" in r:
            cells = ", ".join(f"{name} {v['candidates']}/{v['after_nms']}/{v['detections']}"
                              for name, v in r["load"].items())
            lines.append(f"{variant} candidates/after NMS/detections: {cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
