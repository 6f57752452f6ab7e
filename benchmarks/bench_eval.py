"""``ssdtool eval`` against the engine alone, at the default precision and at INT8; COCOeval's share of the wall time
(faster-coco-eval and pycocotools on the same detections); the image loop's peak RSS against the number of images.

Everything is measured in one run, so the ratios compare like with like on a shared machine:

* engine only: the IR eval runs (FP32 at the precision ``auto`` picks; INT8), the same engine eval gets from
  ``Detector``, fed pre-made input tensors through ``infer_stream`` (the optimal requests in flight): the best eval
  could do. Measured before and after each eval run; the median counts. CPU seconds per image as well: unlike
  wall time they do not depend on what else the machine does.
* eval: ``ssdtool.evaluate`` (what ``ssdtool eval`` calls) in a process of its own over ``--images`` images of a
  generated COCO-format dataset (``python -m ssdtool.synthetic.dataset``): the image loop's images/s (its wall
  time from the first image to the last, decoding, inference, detections and the results file included), the
  report's ``images_per_second`` (the same without writing the results file), CPU seconds per image, the scoring
  phase (reading the detections back and COCOeval, ``--coco-eval auto``: faster-coco-eval) against the whole wall
  time, and the process's peak RSS when the image loop ends.
* COCOeval alone: the INT8 run's detections scored again by faster-coco-eval and by pycocotools (median of 3), so
  the share is known for both implementations.
* memory: the INT8 eval again over a tenth of the images: the image loop's peak RSS must not grow with the number
  of images (COCOeval's does, with the detections: both implementations hold them all).

Targets (issues 13 and 23): eval images/s >= 0.95x engine only, at the default precision and at INT8; COCOeval <=
5% of eval wall time on 500 images at INT8 speed; the image loop's peak RSS in the large run <= 1.10x the small
run's.

    python benchmarks/bench_eval.py [--model NAME] [--images 500] [--rounds 1] [--quick] [--json]

``--model ssd-resnet34-300-synthetic-tiny`` smoke-tests the script in minutes; its inference is so short that
decoding dominates, so its ratios say nothing about the full model's.
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
from common import QUIET_CORES, ROOT, WORK, busy_cores, load_average, machine_description, median, wait_for_quiet

sys.path.insert(0, str(ROOT))

FULL = "ssd-resnet34-1200-synthetic"
CACHE = WORK / "eval-cache"
DATASET = WORK / "eval-dataset"
THROUGHPUT_TARGET = 0.95
COCO_SHARE_TARGET = 0.05
MEMORY_TARGET = 1.10
#: INT8 calibration images for the benchmark's INT8 IR: its speed does not depend on how many calibrated it.
CALIBRATION = 32
#: Pre-made tensors the engine-only measurement cycles through (1200 px f32 tensors are 17 MB each).
TENSORS = 16


def prepare(model: str, count: int) -> tuple[Any, Path, Path]:
    """The model, its FP32 and INT8 IRs in the benchmark cache (built once); the dataset of ``count`` images."""
    from ssdtool.cache import Cache
    from ssdtool.convert import ConvertOptions, convert
    from ssdtool.download import ensure_downloaded
    from ssdtool.registry import load_registry
    from ssdtool.synthetic.dataset import write_dataset

    entry = load_registry(ROOT / "models.yml").model(model)
    cache = Cache.at(CACHE)
    ensure_downloaded(entry, cache)
    convert(entry, cache, ConvertOptions())
    if not (CACHE / model / "openvino" / "INT8").is_dir():
        print(f"building the INT8 IR of {model} ({CALIBRATION} generated calibration images) ...", file=sys.stderr)
        convert(entry, cache, ConvertOptions(precision="INT8", calibration="generated", calibration_size=CALIBRATION))
    folder = DATASET / str(count)
    annotations = folder / "annotations.json"
    if not annotations.exists():
        annotations, _ = write_dataset(folder, count)
    return entry, annotations, folder / "images"


class EngineOnly:
    """The engine eval uses for ``precision`` (FP32 or INT8 IR), fed pre-made tensors."""

    def __init__(self, entry: Any, model: str, precision: str, images: Path) -> None:
        from ssdtool.detect import Detector
        from ssdtool.imaging import load_image, preprocess

        self.detector = Detector(model, "openvino", precision=precision, cache_dir=CACHE,
                                 registry=ROOT / "models.yml", offline=True, performance="throughput")
        self.engine = self.detector.engine("throughput")
        self.inference_precision = self.detector.run_info("throughput").inference_precision
        self.tensors = [preprocess(load_image(p), entry, form=self.detector.form)
                        for p in sorted(images.glob("*.jpg"))[:TENSORS]]
        self.engine.infer(self.tensors[0])  # first-inference allocations

    def measure(self, count: int) -> tuple[float, float]:
        """(images/s, CPU seconds per image) over ``count`` images."""
        stream = ((k, self.tensors[k % len(self.tensors)]) for k in range(count))
        cpu, started = time.process_time(), time.perf_counter()
        done = sum(1 for _ in self.engine.infer_stream(stream, self.engine.optimal_requests))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert done == count
        return count / seconds, cpu / count

    def close(self) -> None:
        self.detector.close()


# The eval, in a process of its own through the public API: the image loop's wall and CPU time (first image to
# the first scoring event), its peak RSS then, the scoring phase, and the whole; with --rescore, the detections
# scored again by both COCOeval implementations.
CHILD = """
import json, resource, statistics, sys, time
import ssdtool
from ssdtool.evaluation.dataset import load_annotations
from ssdtool.evaluation.metrics import evaluate_detections, select_scorer

annotations, images, model, precision, limit, results, cache, rescore = sys.argv[1:9]
marks = {}

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

def progress(event):
    now = time.perf_counter()
    if event.phase == "evaluate" and event.done == 0 and "loop" not in marks:
        marks["loop"], marks["loop_cpu"] = now, cpu()
    if event.phase == "score" and "score" not in marks:
        marks["score"], marks["score_cpu"] = now, cpu()
        marks["loop_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

started = time.perf_counter()
report = ssdtool.evaluate(annotations, images, model, backend="openvino", precision=precision, limit=int(limit),
                          results=results, cache_dir=cache, offline=True, progress=progress)
ended = time.perf_counter()
data = report.to_dict()
out = {"images": data["images_evaluated"], "images_per_second": data["images_per_second"],
       "inference_precision": data["inference_precision"], "coco_eval": data["coco_eval"],
       "coco_eval_seconds": data["coco_eval_seconds"], "AP": data["metrics"]["AP"],
       "wall_seconds": ended - started, "loop_seconds": marks["score"] - marks["loop"],
       "loop_cpu_seconds": marks["score_cpu"] - marks["loop_cpu"], "score_seconds": ended - marks["score"],
       "loop_rss_mb": marks["loop_rss_mb"], "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
if rescore == "1":
    import numpy as np
    from ssdtool.labels import COCO_CATEGORY_IDS

    dataset = load_annotations(annotations)
    records = report.runs[0].detections
    images = dataset.images[:int(limit)]
    ids = sorted({image.id for image in images})
    # The worst case: the model's maximum of 200 detections in every image, spread over 30 categories
    rng = np.random.default_rng(0)
    full = []
    for image in images:
        sizes = rng.uniform(5, 300, (200, 2))
        for (w, h), score, category in zip(sizes, rng.uniform(0.01, 1, 200), rng.integers(0, 30, 200)):
            full.append({"image_id": image.id, "category_id": int(COCO_CATEGORY_IDS[category]),
                         "bbox": [float(rng.uniform(0, max(image.width - w, 1))),
                                  float(rng.uniform(0, max(image.height - h, 1))), float(w), float(h)],
                         "score": float(np.float32(score))})
    out["detections"], out["full_detections"] = len(records), len(full)
    for name in ("faster-coco-eval", "pycocotools"):
        scorer = select_scorer(name)
        times = [evaluate_detections(dataset, records, ids, scorer=scorer).seconds for _ in range(3)]
        out["rescore_" + name] = statistics.median(times)
        times = [evaluate_detections(dataset, full, ids, scorer=scorer).seconds for _ in range(3)]
        out["full_" + name] = statistics.median(times)
print(json.dumps(out))
"""


def eval_process(model: str, annotations: Path, images: Path, precision: str, limit: int, rescore: bool
                 ) -> dict[str, Any]:
    results = WORK / f"eval-results-{precision}-{limit}.jsonl"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("SSDTOOL_REGISTRY", None)
    done = subprocess.run([sys.executable, "-c", CHILD, str(annotations), str(images), model, precision, str(limit),
                           str(results), str(CACHE), "1" if rescore else "0"], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"eval failed ({done.returncode}): {done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool = False, images: int = 500, model: str = FULL, rounds: int = 1,
        max_busy: float = QUIET_CORES, wait: float = 600.0) -> dict[str, Any]:
    count = 10 if quick else images
    small_count = max(2, count // 10)
    entry, annotations, folder = prepare(model, count)
    other_work = wait_for_quiet(max_busy, wait)
    load_before = load_average()
    configurations: dict[str, Any] = {}
    small: dict[str, Any] = {}
    for precision in ("FP32", "INT8"):
        engine = EngineOnly(entry, model, precision, folder)
        engine_runs, evals = [engine.measure(max(count // 4, TENSORS))], []
        for _ in range(rounds):
            evals.append(eval_process(model, annotations, folder, precision, count, rescore=precision == "INT8"))
            engine_runs.append(engine.measure(max(count // 4, TENSORS)))
        configurations[precision] = {"inference_precision": engine.inference_precision,
                                     "engine_ips": median([r[0] for r in engine_runs]),
                                     "engine_cpu_per_image": median([r[1] for r in engine_runs]),
                                     "engine_runs": engine_runs, "eval_runs": evals}
        engine.close()
        if precision == "INT8":
            small = eval_process(model, annotations, folder, precision, small_count, rescore=False)
    return summarise({"machine": machine_description(), "model": model, "quick": quick, "images": count,
                      "small_images": small_count, "rounds": rounds, "other_work_cores_before": other_work,
                      "load_before": load_before, "load_after": load_average(), "busy_cores_after": busy_cores(2.0),
                      "configurations": configurations, "small": small})


def summarise(f: dict[str, Any]) -> dict[str, Any]:
    """Medians per configuration, the ratios and the target rows."""
    rows = []
    for precision, c in f["configurations"].items():
        evals = c["eval_runs"]
        c["loop_ips"] = median([e["images"] / e["loop_seconds"] for e in evals])
        c["report_ips"] = median([e["images_per_second"] for e in evals])
        c["loop_cpu_per_image"] = median([e["loop_cpu_seconds"] / e["images"] for e in evals])
        c["ratio"] = c["loop_ips"] / c["engine_ips"]
        c["cpu_ratio"] = c["engine_cpu_per_image"] / c["loop_cpu_per_image"]
        rows.append([f"`ssdtool eval` images/s >= {THROUGHPUT_TARGET}x engine only ({precision} IR, "
                     f"{c['inference_precision']})", f"{c['loop_ips']:.3f} vs {c['engine_ips']:.3f} img/s",
                     f"{c['ratio']:.3f}x (CPU {c['cpu_ratio']:.3f}x)", c["ratio"] >= THROUGHPUT_TARGET])
    int8 = f["configurations"]["INT8"]
    last = int8["eval_runs"][-1]
    share = median([e["coco_eval_seconds"] / e["wall_seconds"] for e in int8["eval_runs"]])
    scoring = median([e["score_seconds"] / e["wall_seconds"] for e in int8["eval_runs"]])
    pycocotools = last["rescore_pycocotools"] / (last["wall_seconds"] - last["coco_eval_seconds"]
                                                 + last["rescore_pycocotools"])
    f.update(coco_share=share, scoring_share=scoring, pycocotools_share=pycocotools)
    rows.append([f"COCOeval <= {COCO_SHARE_TARGET:.0%} of eval wall time ({f['images']} images, INT8, "
                 f"{last['coco_eval']})", f"{last['coco_eval_seconds']:.2f} s of {last['wall_seconds']:.1f} s "
                 f"({last['detections']} detections; reading them back included: {scoring:.1%})", f"{share:.1%}",
                 share <= COCO_SHARE_TARGET])
    rows.append(["the same with pycocotools (for comparison)", f"{last['rescore_pycocotools']:.2f} s "
                 f"(faster-coco-eval {last['rescore_faster-coco-eval']:.2f} s, median of 3)", f"{pycocotools:.1%}",
                 pycocotools <= COCO_SHARE_TARGET])
    loop = last["wall_seconds"] - last["coco_eval_seconds"]
    for name in ("faster-coco-eval", "pycocotools"):
        seconds = last[f"full_{name}"]
        share_full = seconds / (loop + seconds)
        f[f"full_share_{name}"] = share_full
        rows.append([f"the same at the model's maximum of 200 detections an image, {name}",
                     f"{seconds:.2f} s for {last['full_detections']} detections (median of 3)", f"{share_full:.1%}",
                     share_full <= COCO_SHARE_TARGET])
    memory = last["loop_rss_mb"] / f["small"]["loop_rss_mb"]
    f["memory_ratio"] = memory
    rows.append([f"eval peak RSS of the image loop flat in images ({f['images']} vs {f['small_images']}, INT8) "
                 f"<= {MEMORY_TARGET}x", f"{last['loop_rss_mb']:.0f} MB vs {f['small']['loop_rss_mb']:.0f} MB",
                 f"{memory:.3f}x", memory <= MEMORY_TARGET])
    f["targets"] = rows
    return f


def markdown(f: dict[str, Any]) -> str:
    machine = f["machine"]
    lines = [f"{machine['cpu']} ({machine['cores']} cores; {machine['flags']}); other work before the run "
             f"{f['other_work_cores_before']} cores, load average {f['load_before']} -> {f['load_after']}. "
             f"`{f['model']}`, {f['images']} generated images (`python -m ssdtool.synthetic.dataset`), eval in a "
             f"process of its own, {f['rounds']} round(s); engine-only figures are medians of the measurements "
             "before and after each eval run. `python benchmarks/bench_eval.py` (or `benchmarks/run.py --only "
             "eval`).", "", "| target | measured | ratio | met |", "| --- | --- | --- | --- |"]
    lines += [f"| {t} | {m} | {r} | {'yes' if ok else '**no**'} |" for t, m, r, ok in f["targets"]]
    lines += ["", "| configuration | ran at | engine only (img/s) | eval loop (img/s) | eval report (img/s) | "
              "CPU s/img engine / eval | eval wall (s) | scoring (s) | peak RSS loop / end (MB) | AP |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for precision, c in f["configurations"].items():
        e = c["eval_runs"][-1]
        lines.append(f"| {precision} IR | {c['inference_precision']} | {c['engine_ips']:.3f} | {c['loop_ips']:.3f} | "
                     f"{c['report_ips']:.3f} | {c['engine_cpu_per_image']:.3f} / {c['loop_cpu_per_image']:.3f} | "
                     f"{e['wall_seconds']:.1f} | {e['score_seconds']:.2f} | {e['loop_rss_mb']:.0f} / "
                     f"{e['rss_mb']:.0f} | {e['AP']:.4f} |")
    lines += ["", "The eval loop's images/s is its wall time from the first image to the last (decoding, inference, "
              "detections, the results file); the report's leaves the results file out. Scoring is reading the "
              "detections back from the results file plus COCOeval. The AP is meaningless (random weights against "
              "generated boxes); the speed is real."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=FULL)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--max-busy", type=float, default=QUIET_CORES, help="wait until other work is below this")
    parser.add_argument("--wait", type=float, default=600.0, help="seconds to wait for a quiet machine at most")
    args = parser.parse_args()
    figures = run(args.quick, args.images, args.model, args.rounds, args.max_busy, args.wait)
    print(json.dumps(figures, indent=2) if args.json else markdown(figures))


if __name__ == "__main__":
    main()
