"""``ssdtool eval`` against the engine alone, COCOeval's share of the wall time, and peak memory against images.

On the full synthetic twin (FP32 IR, OpenVINO, the inference precision ``eval`` picks by default) and a COCO-format
dataset of generated images (``python -m ssdtool.synthetic.dataset``, the same command docs/eval.md gives):

* engine only: the same IR, precision and THROUGHPUT hint, pre-made tensors through ``infer_stream``;
* eval: ``ssdtool.evaluate`` (what ``ssdtool eval`` calls) in a process of its own over ``--images`` images (500
  by default): its ``images_per_second`` (decode, inference, detections; not writing the results file, COCOeval
  or engine compilation), its ``coco_eval_seconds`` against its wall time, and the process's peak RSS when the
  image loop ends and at the end;
* the same over a tenth of the images: the image loop's peak RSS must not grow with the number of images
  (COCOeval's does, with the detections: pycocotools holds them all).

Targets (issue 13): eval images/s >= 0.95x engine only; COCOeval < 5% of wall time on 500 images; the image
loop's peak RSS in the large run <= 1.10x the small run's.

    python benchmarks/bench_eval.py [--images 500] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detect import CACHE, MODEL
from common import ROOT, WORK, machine_description

sys.path.insert(0, str(ROOT))

DATASET = WORK / "eval-dataset"
THROUGHPUT_TARGET = 0.95
COCO_SHARE_TARGET = 0.05
MEMORY_TARGET = 1.10


def prepare(count: int) -> tuple[Any, Path, Path, Path]:
    """The twin and its FP32 IR in the benchmark cache; the generated dataset of ``count`` images."""
    from ssdtool.cache import Cache
    from ssdtool.convert import ConvertOptions, convert
    from ssdtool.download import ensure_downloaded
    from ssdtool.registry import load_registry
    from ssdtool.synthetic.dataset import write_dataset

    entry = load_registry(ROOT / "models.yml").model(MODEL)
    cache = Cache.at(CACHE)
    ensure_downloaded(entry, cache)
    xml = convert(entry, cache, ConvertOptions()).xml
    folder = DATASET / str(count)
    annotations = folder / "annotations.json"
    if not annotations.exists():
        annotations, _ = write_dataset(folder, count)
    return entry, xml, annotations, folder / "images"


def engine_only(entry: Any, xml: Path, images: Path, precision: str | None, count: int) -> float:
    from ssdtool.backends.openvino import OpenVinoEngine
    from ssdtool.imaging import load_image, preprocess

    engine = OpenVinoEngine(xml, hint="THROUGHPUT", inference_precision=precision)
    tensors = [preprocess(load_image(p), entry, form="ir") for p in sorted(images.glob("*.jpg"))[:count]]
    engine.infer(tensors[0])
    started = time.perf_counter()
    done = sum(1 for _ in engine.infer_stream(enumerate(tensors)))
    return done / (time.perf_counter() - started)


# The eval, in a process of its own through the public API: its peak RSS when the image loop ends (before COCOeval,
# whose memory grows with the detections by pycocotools' design) and at the end.
CHILD = """
import json, resource, sys, time
import ssdtool
loop = {}

def progress(event):
    if event.phase == "score" and "rss_mb" not in loop:
        loop["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

started = time.perf_counter()
report = ssdtool.evaluate(sys.argv[1], sys.argv[2], sys.argv[3], backend="openvino", precision="FP32",
                          limit=int(sys.argv[4]), results=sys.argv[5], cache_dir=sys.argv[6], offline=True,
                          progress=progress)
data = report.to_dict()
data["wall_seconds"] = time.perf_counter() - started
data["loop_rss_mb"] = loop["rss_mb"]
data["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(data))
"""


def eval_process(annotations: Path, images: Path, limit: int) -> dict[str, Any]:
    results = WORK / f"eval-results-{limit}.jsonl"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("SSDTOOL_REGISTRY", None)
    done = subprocess.run([sys.executable, "-c", CHILD, str(annotations), str(images), MODEL, str(limit),
                           str(results), str(CACHE)], capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"eval failed ({done.returncode}): {done.stderr}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {"images": report["images_evaluated"], "images_per_second": report["images_per_second"],
            "coco_eval_seconds": report["coco_eval_seconds"], "wall_seconds": report["wall_seconds"],
            "loop_rss_mb": report["loop_rss_mb"], "rss_mb": report["rss_mb"],
            "inference_precision": report["inference_precision"], "AP": report["metrics"]["AP"]}


def run(quick: bool = False, images: int = 500) -> dict[str, Any]:
    count = 10 if quick else images
    small_count = 5 if quick else max(2, count // 10)
    entry, xml, annotations, folder = prepare(count)
    small = eval_process(annotations, folder, small_count)
    large = eval_process(annotations, folder, count)
    engine = engine_only(entry, xml, folder, large["inference_precision"], min(count, 32))
    ratio = large["images_per_second"] / engine
    share = large["coco_eval_seconds"] / large["wall_seconds"]
    memory = large["loop_rss_mb"] / small["loop_rss_mb"]
    return {"machine": machine_description(), "quick": quick, "engine_images_per_second": engine,
            "small": small, "large": large,
            "targets": [
                [f"`ssdtool eval` images/s >= {THROUGHPUT_TARGET}x engine only ({large['inference_precision']})",
                 f"{large['images_per_second']:.3f} vs {engine:.3f} img/s", f"{ratio:.3f}x",
                 ratio >= THROUGHPUT_TARGET],
                [f"COCOeval < {COCO_SHARE_TARGET:.0%} of eval wall time ({count} images)",
                 f"{large['coco_eval_seconds']:.2f} s of {large['wall_seconds']:.1f} s", f"{share:.1%}",
                 share < COCO_SHARE_TARGET],
                [f"eval peak RSS of the image loop flat in images ({count} vs {small_count}) <= {MEMORY_TARGET}x",
                 f"{large['loop_rss_mb']:.0f} MB vs {small['loop_rss_mb']:.0f} MB", f"{memory:.3f}x",
                 memory <= MEMORY_TARGET],
            ]}


def markdown(figures: dict[str, Any]) -> str:
    rows = "\n".join(f"| {t} | {m} | {r} | {'yes' if ok else '**no**'} |" for t, m, r, ok in figures["targets"])
    large, small = figures["large"], figures["small"]
    scoring = (f"\n\nPeak RSS at the end, COCOeval included: {large['rss_mb']:.0f} MB for {large['images']} images, "
               f"{small['rss_mb']:.0f} MB for {small['images']}: pycocotools holds every detection while it scores "
               "(docs/eval.md, *Speed*).\n")
    return ("The full synthetic twin, FP32 IR on OpenVINO at the precision `eval` picks by default, over a "
            "generated COCO-format dataset (`python -m ssdtool.synthetic.dataset`); eval runs in a process of its "
            "own. `python benchmarks/bench_eval.py` (or `benchmarks/run.py --only eval`).\n\n"
            "| target | measured | ratio | met |\n| --- | --- | --- | --- |\n" + rows + scoring)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = run(args.quick, args.images)
    print(json.dumps(figures, indent=2) if args.json else markdown(figures))


if __name__ == "__main__":
    main()
