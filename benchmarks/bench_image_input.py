"""The image-input IR end to end against the standard IR with the host's resize, over JPEGs of mixed sizes.

Both sides run ``Detector.many(paths)`` on the same JPEG files (the path ``ssdtool detect`` takes), the detector
made and its THROUGHPUT engine compiled beforehand, at the same pinned inference precision:

* standard: decode, Pillow's bilinear resize to the network size and the BGR tensor on the host (``workers``
  threads ahead of the engine), then the standard IR;
* image-input: decode and the whole BGR image on the host, then the image-input IR, which resizes inside
  (OpenVINO's linear resize; ``ssdtool convert --image-input``).

Rounds alternate which side goes first, and each round's ratio uses that round's two figures, so slow drifts in
the machine's load hit both sides. CPU seconds per image (this process, every thread) are recorded too: on a
machine the engine saturates, throughput is inversely proportional to them. Target: the image-input IR at least
0.95x the standard IR's images/s (issue 21).

Also measured, since the two sides resize differently: how far the inner resize is from Pillow's bilinear, pixel
by pixel, per source size (the IR's own resize step on its own, ``ssdtool.convert.graph.image_resize_model``), and
how the two sides' detections agree on the JPEGs (standard's detections found in the image-input IR's, same label
and IoU >= 0.5).

    python benchmarks/bench_image_input.py [--model NAME] [--images 12] [--rounds 3]
                                           [--inference-precision P] [--quick] [--json]

The default model is the full twin (1200 px); ``--model ssd-resnet34-300-synthetic-tiny`` is a quick smoke run.
The default precision is the CPU's default (bf16 on CPUs with native bf16), pinned for both sides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUIET_CORES, ROOT, WORK, busy_cores, load_average, machine_description, median

sys.path.insert(0, str(ROOT))

MODEL = "ssd-resnet34-1200-synthetic"
CACHE = WORK / "image-input-cache"
IMAGES = WORK / "image-input-images"
TARGET = 0.95
#: Source sizes of the JPEGs, cycled: phone photos, video frames, COCO-sized images, portrait and landscape.
SIZES = ((640, 480), (1920, 1080), (480, 640), (1024, 768), (4032, 3024), (1280, 720), (800, 800), (3000, 2000),
         (320, 240), (1200, 1200), (2048, 1536), (720, 1280))
#: Source sizes of the pixel comparison with Pillow.
RESIZE_SIZES = ((320, 240), (640, 480), (1000, 750), (1600, 1200), (1920, 1080), (2400, 2400), (4032, 3024))


def prepare(model: str, count: int) -> tuple[Any, list[Path]]:
    """The twin in the benchmark cache, both IRs as ``ssdtool convert`` makes them (gates and runtime checks), and
    ``count`` JPEGs of mixed sizes."""
    from PIL import Image

    from ssdtool.cache import Cache
    from ssdtool.convert import ConvertOptions, convert
    from ssdtool.download import ensure_downloaded
    from ssdtool.imaging import generated_images
    from ssdtool.registry import load_registry

    entry = load_registry(ROOT / "models.yml").model(model)
    cache = Cache.at(CACHE)
    ensure_downloaded(entry, cache)
    convert(entry, cache, ConvertOptions())
    convert(entry, cache, ConvertOptions(image_input=True))
    IMAGES.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        size = SIZES[index % len(SIZES)]
        path = IMAGES / f"{index:04d}-{size[0]}x{size[1]}.jpg"
        if not path.exists():
            Image.fromarray(generated_images(1, seed=100 + index, size=size)[0]).save(path, quality=90)
        paths.append(path)
    for stale in IMAGES.glob("*.jpg"):
        if stale not in paths:
            stale.unlink()
    return entry, paths


def _timed_pass(detector: Any, paths: list[Path]) -> tuple[float, float, list[Any]]:
    """Wall seconds, CPU seconds (this process) and results of one ``many`` pass."""
    wall, cpu = time.perf_counter(), time.process_time()
    results = list(detector.many(paths))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    failed = [r.path for r in results if not r.ok]
    if failed:
        raise SystemExit(f"images failed: {failed}")
    return wall, cpu, results


def agreement(standard: list[Any], inside: list[Any]) -> dict[str, float | int]:
    """Standard's detections found in the image-input IR's (same label, IoU >= 0.5), boxes normalized."""
    import numpy as np

    from ssdtool.matching import RawDetections, match_detections

    def raw(result: Any) -> RawDetections:
        scale = np.array([result.width, result.height] * 2, dtype=np.float64)
        boxes = np.array([d.box for d in result.detections], dtype=np.float64).reshape(-1, 4) / scale
        return RawDetections(boxes, np.array([d.label_id for d in result.detections], dtype=np.int64),
                             np.array([d.score for d in result.detections], dtype=np.float32))

    reports = [match_detections(raw(a), raw(b)) for a, b in zip(standard, inside, strict=True)]
    reference = sum(r.reference_count for r in reports)
    matched = sum(r.matched for r in reports)
    return {"standard_detections": reference, "image_input_detections": sum(r.candidate_count for r in reports),
            "matched": matched, "recall": round(matched / reference, 4) if reference else 1.0,
            "max_box_diff": round(max((r.max_box_diff for r in reports), default=0.0), 4),
            "max_score_diff": round(max((r.max_score_diff for r in reports), default=0.0), 4)}


def resize_differences(width: int, height: int) -> list[dict[str, Any]]:
    """The inner resize against Pillow's bilinear, per source size: levels of difference on 8-bit pixels."""
    import numpy as np
    import openvino as ov
    from PIL import Image

    from ssdtool.convert.graph import image_resize_model
    from ssdtool.imaging import generated_images

    compiled = ov.Core().compile_model(image_resize_model(width, height), "CPU")
    rows = []
    for size in RESIZE_SIZES:
        rgb = generated_images(1, seed=1, size=size)[0]
        inside = np.asarray(compiled(rgb[np.newaxis])[0])[0].astype(np.int16)
        host = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR)).astype(np.int16)
        difference = np.abs(inside - host)
        rows.append({"source": list(size), "factor": round(max(size[0] / width, size[1] / height), 2),
                     "mean": round(float(difference.mean()), 3), "p99": int(np.percentile(difference, 99)),
                     "max": int(difference.max()), "within_1": round(float((difference <= 1).mean()), 4)})
    return rows


def run(model: str = MODEL, count: int = 12, rounds: int = 3, inference_precision: str | None = None,
        quick: bool = False) -> dict[str, Any]:
    from ssdtool import Detector
    from ssdtool.backends.openvino import device_facts

    if quick:
        count, rounds = min(count, 6), 2
    entry, paths = prepare(model, count)
    precision = inference_precision or device_facts("CPU").default_precision or "f32"
    common = {"inference_precision": precision, "cache_dir": CACHE, "registry": ROOT / "models.yml",
              "offline": True, "performance": "throughput"}
    detectors = {"standard": Detector(model, "openvino", **common),
                 "image_input": Detector(model, "openvino", image_input=True, **common)}
    try:
        for detector in detectors.values():
            _timed_pass(detector, paths[:2])  # compile and warm up, excluded
        ran = {name: d.run_info("throughput").inference_precision for name, d in detectors.items()}
        if len(set(ran.values())) != 1:
            raise SystemExit(f"the two sides ran different precisions: {ran}")
        busy_before = busy_cores(2.0)
        load_before = load_average()
        figures: dict[str, list[float]] = {f"{name}_{kind}": [] for name in detectors for kind in ("fps", "cpu")}
        ratios: list[float] = []
        last: dict[str, list[Any]] = {}
        for round_index in range(rounds):
            order = list(detectors) if round_index % 2 == 0 else list(reversed(list(detectors)))
            fps = {}
            for name in order:
                wall, cpu, results = _timed_pass(detectors[name], paths)
                fps[name] = len(paths) / wall
                figures[f"{name}_fps"].append(fps[name])
                figures[f"{name}_cpu"].append(cpu / len(paths))
                last[name] = results
            ratios.append(fps["image_input"] / fps["standard"])
    finally:
        for detector in detectors.values():
            detector.close()
    width, height = entry.input.resize
    ratio = median(ratios)
    return {
        "model": model, "images": len(paths), "sizes": sorted({p.stem.split("-", 1)[1] for p in paths}),
        "rounds": rounds, "quick": quick, "inference_precision": ran["standard"],
        "standard_images_per_second": round(median(figures["standard_fps"]), 3),
        "image_input_images_per_second": round(median(figures["image_input_fps"]), 3),
        "standard_cpu_seconds_per_image": round(median(figures["standard_cpu"]), 4),
        "image_input_cpu_seconds_per_image": round(median(figures["image_input_cpu"]), 4),
        "ratios": [round(r, 3) for r in ratios], "ratio": round(ratio, 3), "target": TARGET,
        "passed": ratio >= TARGET,
        "agreement": agreement(last["standard"], last["image_input"]),
        "resize_vs_pillow": {"to": [width, height], "rows": resize_differences(width, height)},
        "busy_cores_before": busy_before, "quiet": busy_before <= QUIET_CORES, "load_average_before": load_before,
        "load_average_after": load_average(), "machine": machine_description(),
    }


def markdown(figures: dict[str, Any]) -> str:
    agree = figures["agreement"]
    rows = "\n".join(f"| {r['source'][0]}x{r['source'][1]} | {r['factor']} | {r['mean']} | {r['p99']} | {r['max']} | "
                     f"{r['within_1']:.1%} |" for r in figures["resize_vs_pillow"]["rows"])
    width, height = figures["resize_vs_pillow"]["to"]
    return (
        f"`{figures['model']}`, {figures['images']} JPEGs of mixed sizes ({', '.join(figures['sizes'])}), "
        f"`Detector.many` (THROUGHPUT hint), both sides at {figures['inference_precision']}, medians of "
        f"{figures['rounds']} alternating rounds; `python benchmarks/bench_image_input.py`. Other work before the "
        f"run: {figures['busy_cores_before']} cores, load average {figures['load_average_before']}"
        f"{'' if figures['quiet'] else ' (not quiet: the figures are skewed)'}.\n\n"
        "| side | images/s | CPU s per image |\n| --- | ---: | ---: |\n"
        f"| standard IR, resize on the host (Pillow bilinear) | {figures['standard_images_per_second']} | "
        f"{figures['standard_cpu_seconds_per_image']} |\n"
        f"| image-input IR, resize inside (OpenVINO linear) | {figures['image_input_images_per_second']} | "
        f"{figures['image_input_cpu_seconds_per_image']} |\n\n"
        f"Image-input / standard: **{figures['ratio']}x** (rounds: {figures['ratios']}; target >= "
        f"{figures['target']}x: {'met' if figures['passed'] else 'NOT met'}).\n\n"
        f"Detections: {agree['matched']} of the standard IR's {agree['standard_detections']} found by the image-input "
        f"IR (recall {agree['recall']}; it gave {agree['image_input_detections']}), max box difference "
        f"{agree['max_box_diff']} (normalized), max score difference {agree['max_score_diff']}.\n\n"
        f"The inner resize against Pillow's bilinear, to {width}x{height}, 8-bit levels (generated images):\n\n"
        "| source | factor | mean | p99 | max | within 1 level |\n| --- | ---: | ---: | ---: | ---: | ---: |\n"
        f"{rows}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL, help=f"registry model [default: {MODEL}]")
    parser.add_argument("--images", type=int, default=12, help="JPEGs of mixed sizes [default: 12]")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds [default: 3]")
    parser.add_argument("--inference-precision", help="pinned for both sides [default: the CPU's default]")
    parser.add_argument("--quick", action="store_true", help="6 images, 2 rounds (not for the record)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = run(args.model, args.images, args.rounds, args.inference_precision, args.quick)
    print(json.dumps(figures, indent=2) if args.json else markdown(figures))


if __name__ == "__main__":
    main()
