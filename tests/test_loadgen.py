"""ssdtool bench --scenario: MLPerf LoadGen on the tiny twins, in seconds (never timed).

Each scenario runs with --min-duration and --min-queries far below MLPerf's, so most come out INVALID; the tests
check what users rely on: LoadGen's files are in --output-dir and the report is LoadGen's own summary; accuracy
mode on a planted twin logs exactly the planted detections, read the way MLCommons' ``tools/accuracy-coco.py``
reads them; bad settings fail with clear errors; a failure or an interrupt leaves no result files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.constants import LoadGenMode, LoadGenScenario
from ssdtool.errors import BackendError, InputError, UsageError
from ssdtool.imaging import generated_images
from ssdtool.labels import COCO_CATEGORY_IDS, COCO_NAMES
from ssdtool.loadgen import LoadGenOptions, SettingsOverrides, parse_summary, run_loadgen
from ssdtool.loadgen.qsl import image_files
from ssdtool.loadgen.run import loadgen_still_running
from ssdtool.loadgen.settings import V2_DEFAULTS, LibrarySize, build_settings
from ssdtool.registry import load_registry
from ssdtool.ssd import SsdGeometry
from ssdtool.synthetic import PlantedDetection, TwinSpec, build_model, planted_expected
from tests.modelkit import install_model

lg = pytest.importorskip("mlperf_loadgen")

LOG_FILES = {"mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json"}
# The same planted set as test_detect: one box reaching past the image (clipped), a score below detect's default
# threshold (kept here: accuracy logs carry every candidate), two of class 1.
PLANTED = (
    PlantedDetection(box_index=29, label=1, score=0.9),
    PlantedDetection(box_index=757, label=3, score=0.8),
    PlantedDetection(box_index=1008, label=62, score=0.7),
    PlantedDetection(box_index=1066, label=12, score=0.6),
    PlantedDetection(box_index=1095, label=1, score=0.3),
)
# Annotation order differs from name order: the QSL must follow the annotation file.
DATASET = (("c.png", 640, 480), ("a.png", 480, 640), ("b.png", 300, 300))
SHORT = ("--min-duration", "0.3", "--min-queries", "8")


@dataclass(frozen=True)
class World:
    registry: Path
    cache: Path
    images: Path
    annotations: Path

    def args(self, *extra: str) -> list[str]:
        return ["--registry", str(self.registry), "--cache-dir", str(self.cache), *extra]


def _planted_boxes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes, labels, scores = planted_expected(PLANTED, SsdGeometry.for_input(300))
    return np.clip(boxes, 0.0, 1.0), labels, scores


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """``tiny`` (seeded) and ``planted`` converted, and a COCO-format dataset whose ground truth is the planted
    detections in every image."""
    from ssdtool.convert import ConvertOptions, convert

    root = tmp_path_factory.mktemp("loadgen")
    registry, cache = root / "registry.yml", root / "cache"
    install_model(cache, registry, "tiny", build_model(TwinSpec(variant="tiny")))
    install_model(cache, registry, "planted", build_model(TwinSpec(variant="tiny", planted=PLANTED)))
    loaded = load_registry(registry)
    for name in ("tiny", "planted"):
        convert(loaded.model(name), Cache.at(cache), ConvertOptions(verify=False))
    images = root / "images"
    images.mkdir()
    boxes, labels, _scores = _planted_boxes()
    coco_images, annotations = [], []
    for image_id, (name, width, height) in enumerate(DATASET, start=101):
        Image.fromarray(generated_images(1, seed=width, size=(width, height))[0]).save(images / name)
        coco_images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for box, label in zip(boxes, labels, strict=True):
            x0, y0, x1, y1 = (float(v) for v in box * np.array([width, height, width, height]))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                                "category_id": COCO_CATEGORY_IDS[int(label) - 1],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
    categories = [{"id": i, "name": n} for i, n in zip(COCO_CATEGORY_IDS, COCO_NAMES, strict=True)]
    annotation_file = root / "instances.json"
    annotation_file.write_text(json.dumps({"images": coco_images, "annotations": annotations,
                                           "categories": categories}))
    return World(registry, cache, images, annotation_file)


def _bench(world: World, *args: str) -> Any:
    pinned = () if "--inference-precision" in args else ("--inference-precision", "f32")
    return CliRunner().invoke(cli, world.args("bench", "--offline", "--progress", "none", *pinned, *args))


def _check_run(result: Any, output: Path, scenario: str, backend: str) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {p.name for p in output.iterdir()} >= LOG_FILES
    assert not [p for p in output.iterdir() if p.name.startswith(".")]  # the scratch folder is gone
    summary_text = (output / "mlperf_log_summary.txt").read_text()
    summary = data["summary"]
    assert summary == json.loads(json.dumps(parse_summary(summary_text).__dict__))  # the report is the file
    assert summary["scenario"] == scenario
    assert f"Result is : {'VALID' if summary['valid'] else 'INVALID'}" in summary_text
    if not summary["valid"]:
        assert summary["reasons"], summary_text  # INVALID says why
    assert summary["metric_value"] > 0
    assert summary["latency_ms"]["min"] <= summary["latency_ms"]["p50"] <= summary["latency_ms"]["max"]
    config = data["config"]
    assert config["backend"] == backend and config["requests"] >= 1
    assert config["inference_precision"] == "f32"
    assert config["samples"] == 64 and config["settings"]["performance_sample_count"] == 64
    assert config["settings"]["min_duration_s"] == 0.3 and config["settings"]["min_query_count"] == 8
    return data


@pytest.mark.parametrize("scenario", LoadGenScenario.values())
def test_each_scenario_openvino(world: World, tmp_path: Path, scenario: str) -> None:
    qps = ("--target-qps", "40") if scenario in ("Server", "Offline") else ()
    result = _bench(world, "tiny", "--scenario", scenario, "--output-dir", str(tmp_path / "out"), *SHORT, *qps,
                    "--json")
    data = _check_run(result, tmp_path / "out", scenario, "openvino")
    if scenario == "SingleStream":
        assert data["config"]["requests"] == 1
        assert data["summary"]["metric_name"] == "90.0th percentile latency"
    if scenario == "MultiStream":
        assert data["config"]["settings"]["samples_per_query"] == 8
        assert data["summary"]["metric_name"] == "99.0th percentile latency"
    if scenario == "Server":
        assert data["config"]["settings"]["target_latency_ms"] == 100
        assert data["config"]["settings"]["target_qps"] == 40


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_onnxruntime_scenarios(world: World, tmp_path: Path, scenario: str) -> None:
    result = _bench(world, "tiny", "--backend", "onnxruntime", "--scenario", scenario.lower(), "--output-dir",
                    str(tmp_path / "out"), *SHORT, "--target-qps", "40", "--json")
    data = _check_run(result, tmp_path / "out", scenario, "onnxruntime")
    assert data["config"]["precision"] == "FP32" and data["config"]["threads"] is not None


def test_text_report(world: World, tmp_path: Path) -> None:
    result = _bench(world, "tiny", "--scenario", "Offline", "--output-dir", str(tmp_path), *SHORT)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tiny: LoadGen Offline, PerformanceOnly: ")
    for label in ("metric:          Samples per second:", "latency (ms):    p50", "engine:          openvino FP32 IR",
                  "precision:       f32 (inference precision read back; asked: f32",
                  "samples:         64 from generated images", "settings:        min duration 0.3 s, min queries 8",
                  "logs:"):
        assert any(line.strip().startswith(label) for line in lines), (label, result.stdout)
    if "INVALID" in lines[0]:
        assert any("smoke check, not an MLPerf result" in line for line in lines)


def accuracy_coco(accuracy_log: Path, annotations: Path) -> tuple[list[dict[str, Any]], set[int]]:
    """The detections MLCommons' ``tools/accuracy-coco.py --use-inv-map`` builds from a log: its decoding loop,
    step by step (hex strings, float32 groups of 7, the qsl index into the annotation file's ``images``)."""
    ground_truth = json.loads(annotations.read_text())
    inv_map = [0, *sorted(c["id"] for c in ground_truth["categories"])]  # as [0] + COCO.getCatIds()
    image_map = ground_truth["images"]
    detections, image_ids, seen = [], set(), set()
    for j in json.loads(accuracy_log.read_text()):
        idx = j["qsl_idx"]
        if idx in seen:
            continue
        seen.add(idx)
        data = np.frombuffer(bytes.fromhex(j["data"]), np.float32)
        if len(data) < 7:
            image_ids.add(image_map[idx]["id"])
            continue
        for i in range(0, len(data), 7):
            image_idx, ymin, xmin, ymax, xmax, score, label = data[i:i + 7]
            image = image_map[idx]
            assert int(image_idx) == idx, "loadgen and payload disagree on image_idx"
            height, width = image["height"], image["width"]
            ymin, xmin, ymax, xmax = ymin * height, xmin * width, ymax * height, xmax * width
            detections.append({"image_id": image["id"], "category_id": inv_map[int(label)],
                               "bbox": [float(xmin), float(ymin), float(xmax - xmin), float(ymax - ymin)],
                               "score": float(score)})
            image_ids.add(image["id"])
    return detections, image_ids


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_accuracy_log_holds_the_planted_detections(world: World, tmp_path: Path, backend: str) -> None:
    out = tmp_path / "acc"
    result = _bench(world, "planted", "--backend", backend, "--scenario", "Offline", "--mode", "accuracy",
                    "--images", str(world.images), "--annotations", str(world.annotations), "--output-dir", str(out),
                    "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["config"]["samples"] == len(DATASET)
    assert (report["summary"]["scenario"], report["summary"]["mode"]) == ("Offline", "AccuracyOnly")
    entries = json.loads((out / "mlperf_log_accuracy.json").read_text())
    assert sorted(e["qsl_idx"] for e in entries) == list(range(len(DATASET)))  # every sample exactly once
    boxes, labels, scores = _planted_boxes()
    for entry in entries:
        records = np.frombuffer(bytes.fromhex(entry["data"]), np.float32).reshape(-1, 7)
        assert records.shape == (len(PLANTED), 7)
        np.testing.assert_array_equal(records[:, 0], entry["qsl_idx"])
        np.testing.assert_allclose(records[:, 1:5], boxes[:, [1, 0, 3, 2]], atol=1e-5)  # ymin xmin ymax xmax
        np.testing.assert_allclose(records[:, 5], scores, atol=1e-5)
        np.testing.assert_array_equal(records[:, 6], labels)
    # ... and MLCommons' script, reading it unchanged, scores the planted ground truth perfectly.
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    detections, image_ids = accuracy_coco(out / "mlperf_log_accuracy.json", world.annotations)
    assert len(detections) == len(PLANTED) * len(DATASET)
    ground_truth = COCO(str(world.annotations))
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), iouType="bbox")
    evaluation.params.imgIds = sorted(image_ids)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_qsl_order_is_the_annotation_order(world: World) -> None:
    assert [p.name for p in image_files(world.images, world.annotations)] == [name for name, _, _ in DATASET]
    assert [p.name for p in image_files(world.images, None)] == ["a.png", "b.png", "c.png"]


def test_missing_annotated_image_is_an_input_error(world: World, tmp_path: Path) -> None:
    data = json.loads(world.annotations.read_text())
    data["images"].append({"id": 9, "file_name": "gone.png", "width": 10, "height": 10})
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    result = _bench(world, "tiny", "--scenario", "Offline", "--images", str(world.images), "--annotations",
                    str(broken), "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == InputError.exit_code
    assert "1 of the 4 images listed" in result.output and "gone.png" in result.output
    assert not (tmp_path / "out").exists()


def test_annotations_are_read_by_evals_loader(world: World, tmp_path: Path) -> None:
    """The sample order comes from the file the accuracy log is scored against, checked by the same loader as
    eval: a NaN id or a name leaving the images folder is exit 33, located, before anything runs."""
    data = json.loads(world.annotations.read_text())
    data["images"][1]["id"] = float("nan")
    data["images"][2]["file_name"] = "../c.png"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))  # Python writes NaN
    result = _bench(world, "tiny", "--scenario", "Offline", "--images", str(world.images), "--annotations",
                    str(broken), "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == 33, result.output
    # The strict JSON reader refuses the NaN first, with its place in the file.
    assert result.stderr.startswith(f"error: invalid {broken}:\n  images[1].id: NaN is not a JSON number")
    data["images"][1]["id"] = 2
    broken.write_text(json.dumps(data))
    result = _bench(world, "tiny", "--scenario", "Offline", "--images", str(world.images), "--annotations",
                    str(broken), "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == 33, result.output
    assert "images[2].file_name: '../c.png' must be a relative path inside the images folder\n" in result.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ settings
def _settings(scenario: LoadGenScenario, tmp_path: Path, overrides: SettingsOverrides | None = None,
              samples: int = 500) -> Any:
    library = LibrarySize(samples, samples, 3 * 300 * 300 * 4)
    return build_settings(lg, scenario, LoadGenMode.PERFORMANCE, overrides or SettingsOverrides(), library,
                          memory=16 << 30)


def test_v2_defaults(tmp_path: Path) -> None:
    single = _settings(LoadGenScenario.SINGLE_STREAM, tmp_path)
    assert single.single_stream_target_latency_percentile == pytest.approx(0.9)
    assert (single.min_query_count, single.min_duration_ms) == (1024, 600_000)
    server = _settings(LoadGenScenario.SERVER, tmp_path)
    assert server.server_target_latency_ns == 100_000_000
    assert server.server_target_latency_percentile == pytest.approx(0.99)
    multi = _settings(LoadGenScenario.MULTI_STREAM, tmp_path)
    assert multi.multi_stream_samples_per_query == 8 and multi.multi_stream_expected_latency_ns == 528_000_000
    offline = _settings(LoadGenScenario.OFFLINE, tmp_path)
    assert offline.min_query_count == 24_576
    assert {s.performance_sample_count_override for s in (single, server, multi, offline)} == {64}
    assert _settings(LoadGenScenario.OFFLINE, tmp_path, samples=3).performance_sample_count_override == 3
    assert V2_DEFAULTS[LoadGenScenario.SERVER]["target_latency"] == 100


def test_user_conf_then_flags(tmp_path: Path) -> None:
    conf = tmp_path / "user.conf"
    conf.write_text("# mine\nssd-resnet34.Server.target_qps = 7.5\n*.Server.target_latency = 250\n"
                    "resnet50.Server.min_query_count = 3\nssd-resnet34.Server.min_query_count = 99\n")
    server = _settings(LoadGenScenario.SERVER, tmp_path, SettingsOverrides(user_conf=conf))
    assert server.server_target_qps == 7.5 and server.server_target_latency_ns == 250_000_000
    assert server.min_query_count == 99  # another model's line does not apply
    assert server.min_duration_ms == 600_000  # a key the file leaves alone keeps ssdtool's default
    flags = SettingsOverrides(user_conf=conf, target_qps=2, min_queries=5, min_duration=1.5, target_latency_ms=80)
    server = _settings(LoadGenScenario.SERVER, tmp_path, flags)
    assert (server.server_target_qps, server.min_query_count, server.min_duration_ms) == (2, 5, 1500)
    assert server.server_target_latency_ns == 80_000_000


# Flags out of their bounds, and user.conf lines: tests/test_loadgen_settings.py.
@pytest.mark.parametrize(("args", "message"), [
    (("--scenario", "SingleStream", "--target-qps", "3"), "--target-qps applies to the Server and Offline"),
    (("--scenario", "Offline", "--target-latency-ms", "3"), "does not apply to the Offline scenario"),
    (("--scenario", "Sever"), "unknown scenario 'Sever'; expected one of SingleStream, MultiStream, Server, Offline"),
    (("--scenario", "Offline", "--mode", "acuracy"), "unknown mode 'acuracy'; expected one of performance, accuracy"),
    (("--mode", "accuracy"), "--mode, --output-dir apply to LoadGen runs only"),
    (("--scenario", "Offline", "--iterations", "3"), "--iterations cannot be used with --scenario"),
    (("--scenario", "Offline", "--annotations", "x.json"), "--annotations needs --images"),
])
def test_bad_settings(world: World, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = _bench(world, "tiny", *args, "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == UsageError.exit_code, result.output
    assert message in result.output
    assert "hint: " in result.output
    assert not (tmp_path / "out").exists()


def test_bad_user_conf(world: World, tmp_path: Path) -> None:
    conf = tmp_path / "user.conf"
    conf.write_text("ssd-resnet34.Server.target_qps = fast\n")
    result = _bench(world, "tiny", "--scenario", "Server", "--user-conf", str(conf), "--output-dir",
                    str(tmp_path / "out"))
    assert result.exit_code == UsageError.exit_code
    assert result.stderr == (f"error: {conf} line 1: target_qps must be a decimal number, got 'fast' (nan, inf and "
                             "hexadecimal are refused)\nhint: fix line 1 of user.conf, or leave out --user-conf\n")
    assert not (tmp_path / "out").exists()
    result = _bench(world, "tiny", "--scenario", "Server", "--user-conf", str(tmp_path / "none.conf"))
    assert result.exit_code == UsageError.exit_code and "cannot read the user.conf" in result.output


def test_unwritable_output_dir(world: World, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = _bench(world, "tiny", "--scenario", "Offline", "--output-dir", str(blocker / "logs"), *SHORT)
    assert result.exit_code == UsageError.exit_code
    assert f"cannot write LoadGen's logs to {blocker / 'logs'}" in result.output
    assert "give --output-dir a folder you can write" in result.output


def test_missing_loadgen_is_a_dependency_error(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    monkeypatch.setitem(sys.modules, "mlperf_loadgen", None)
    result = _bench(world, "tiny", "--scenario", "Offline", "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == 23
    assert "pip install 'ssdtool[loadgen]'" in result.output


# ------------------------------------------------------------------------------------------------ failures
def _options(world: World, output: Path, scenario: str = "SingleStream") -> LoadGenOptions:
    # A 30 s minimum the failure must not wait for; the 1 s expected latency keeps LoadGen's pre-generated
    # SingleStream queries few, so it winds down within the grace period once the failed SUT answers at once.
    latency = 1000 if scenario == "SingleStream" else None
    return LoadGenOptions(scenario=scenario, output_dir=output, offline=True, inference_precision="f32",
                          settings=SettingsOverrides(min_duration=30, min_queries=20, target_latency_ms=latency))


def _earlier_results(output: Path) -> None:
    output.mkdir()
    (output / "mlperf_log_summary.txt").write_text("an earlier run\n")


def _assert_untouched(output: Path) -> None:
    assert sorted(p.name for p in output.iterdir()) == ["mlperf_log_summary.txt"]
    assert (output / "mlperf_log_summary.txt").read_text() == "an earlier run\n"


def test_sut_failure_mid_run_leaves_no_results(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    from ssdtool.loadgen.qsl import SampleLibrary

    real = SampleLibrary.tensor
    calls = [0]

    def failing(self: SampleLibrary, index: int) -> np.ndarray:
        calls[0] += 1
        if calls[0] > 12:
            raise RuntimeError("planted engine failure")
        return real(self, index)

    monkeypatch.setattr(SampleLibrary, "tensor", failing)
    output = tmp_path / "out"
    _earlier_results(output)
    began = time.perf_counter()
    with pytest.raises(BackendError, match="the system under test failed during the LoadGen run: planted"):
        run_loadgen(load_registry(world.registry).model("tiny"), Cache.at(world.cache), _options(world, output))
    assert time.perf_counter() - began < 20  # not the 30 s minimum: a failed SUT answers at once
    assert not loadgen_still_running()
    _assert_untouched(output)


def test_interrupt_mid_run_leaves_no_results(world: World, tmp_path: Path) -> None:
    output = tmp_path / "out"
    _earlier_results(output)
    seen: list[int] = []

    def ctrl_c(event: Any) -> None:  # the progress callback runs on the calling thread, where Ctrl-C lands
        seen.append(event.completed)
        raise KeyboardInterrupt

    # Enough samples that the one Offline query is still running at the first progress tick on any machine
    # (the tiny twin answers 50-100 samples/s on 2 cores): the interrupt lands mid-run, never after the end.
    options = dataclasses.replace(_options(world, output, "Offline"),
                                  settings=SettingsOverrides(min_duration=30, min_queries=20_000))
    began = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_loadgen(load_registry(world.registry).model("tiny"), Cache.at(world.cache), options, progress=ctrl_c)
    assert time.perf_counter() - began < 20 and len(seen) == 1
    assert not loadgen_still_running()
    _assert_untouched(output)


def test_ctrl_c_on_the_command_line(world: World, tmp_path: Path) -> None:
    """A real SIGINT to ``ssdtool bench --scenario Server``: exit 130 within seconds (LoadGen's timed Server
    schedule would run on for a minute), no result files."""
    output = tmp_path / "out"
    command = [sys.executable, "-m", "ssdtool", *world.args("bench", "tiny", "--offline", "--scenario", "Server",
                                                              "--target-qps", "20", "--min-duration", "60",
                                                              "--min-queries", "10", "--output-dir", str(output),
                                                              "--progress", "json")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stderr is not None
    for line in process.stderr:  # wait until queries are being answered
        if line.startswith("{") and json.loads(line).get("completed", 0) >= 3:
            break
    began = time.perf_counter()
    process.send_signal(signal.SIGINT)
    _stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert time.perf_counter() - began < 15
    assert "interrupted" in stderr
    assert not output.exists() or not any(output.iterdir())


# ------------------------------------------------------------------------------------------------ publishing
EARLIER = {"mlperf_log_summary.txt": b"an earlier summary\n", "mlperf_log_detail.txt": b"an earlier detail\n",
           "mlperf_log_accuracy.json": b"[\n{\"seq_id\" : 0, \"qsl_idx\" : 0, \"data\" : \"\"}\n]\n"}


def _snapshot(folder: Path) -> dict[str, object]:
    """Every entry of ``folder``: a regular file's bytes, or what else it is (never following a link)."""
    entries: dict[str, object] = {}
    for path in sorted(folder.iterdir()):
        if path.is_symlink():
            entries[path.name] = f"link to {os.readlink(path)}"
        elif path.is_dir():
            entries[path.name] = "folder"
        elif path.is_fifo():
            entries[path.name] = "fifo"
        else:
            entries[path.name] = path.read_bytes()
    return entries


def _obstacle(kind: str, world: World, tmp_path: Path, output: Path) -> tuple[str, list[str], str]:
    """Plant ``kind`` among an earlier run's logs; returns the log name in the way, extra arguments, and what the
    error says it is."""
    if kind == "folder":
        os.remove(output / "mlperf_log_summary.txt")
        (output / "mlperf_log_summary.txt").mkdir()
        return "mlperf_log_summary.txt", [], "it is a folder"
    if kind == "symlink":
        target = tmp_path / "elsewhere.txt"
        target.write_bytes(b"not LoadGen's\n")
        os.remove(output / "mlperf_log_detail.txt")
        (output / "mlperf_log_detail.txt").symlink_to(target)
        return "mlperf_log_detail.txt", [], f"it is a symbolic link (to {target})"
    if kind == "fifo":
        os.mkfifo(output / "mlperf_log_trace.json")
        return "mlperf_log_trace.json", [], "it is a FIFO (named pipe)"
    if kind == "user-conf":
        conf = output / "mlperf_log_detail.txt"
        conf.write_text("# my settings\n*.Offline.min_query_count = 8\n")
        return "mlperf_log_detail.txt", ["--user-conf", str(conf)], (
            f"it is the --user-conf file ({conf}), an input of this run")
    if kind == "annotations":
        copy = tmp_path / "instances.json"
        copy.write_bytes(world.annotations.read_bytes())
        os.remove(output / "mlperf_log_accuracy.json")
        os.link(copy, output / "mlperf_log_accuracy.json")
        return "mlperf_log_accuracy.json", ["--images", str(world.images), "--annotations", str(copy)], (
            f"it is the --annotations file ({copy}), an input of this run")
    image = world.images / "a.png"
    os.link(image, output / "mlperf_log_trace.json")
    return "mlperf_log_trace.json", ["--images", str(world.images)], (
        f"it is an image of --images ({image}), an input of this run")


@pytest.mark.parametrize("kind", ["folder", "symlink", "fifo", "user-conf", "annotations", "image"])
def test_something_in_the_way_of_a_log_is_refused_before_the_run(world: World, tmp_path: Path, kind: str) -> None:
    """Issue 20, item 10: every log's final name is checked before LoadGen starts, so an earlier run's files
    (and the inputs) stay byte for byte as they were."""
    output = tmp_path / "out"
    output.mkdir()
    for name, data in EARLIER.items():
        (output / name).write_bytes(data)
    name, extra, what = _obstacle(kind, world, tmp_path, output)
    before = _snapshot(output)
    result = _bench(world, "tiny", "--scenario", "Offline", "--output-dir", str(output), *SHORT, *extra)
    assert result.exit_code == UsageError.exit_code, result.output
    assert result.stderr == (f"error: cannot put LoadGen's {name} in {output}: {output / name} is in the way "
                             f"({what}); nothing there was replaced\n"
                             "hint: move it away, or give another --output-dir\n")
    assert result.stdout == ""
    assert _snapshot(output) == before
    if kind == "symlink":
        assert (tmp_path / "elsewhere.txt").read_bytes() == b"not LoadGen's\n"


def test_an_obstacle_planted_during_the_run_is_refused_at_publish(world: World, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The names are checked again, all of them, before the first file is moved: a folder that appears at the
    summary's name while LoadGen runs leaves the earlier detail and accuracy log as they were."""
    from ssdtool.loadgen.qsl import SampleLibrary

    output = tmp_path / "out"
    output.mkdir()
    for name, data in EARLIER.items():
        (output / name).write_bytes(data)
    real = SampleLibrary.load

    def load_and_plant(self: SampleLibrary, indices: list[int]) -> None:  # LoadGen calls it once the test began
        summary = output / "mlperf_log_summary.txt"
        if summary.is_file():
            summary.unlink()
            summary.mkdir()
        real(self, indices)

    monkeypatch.setattr(SampleLibrary, "load", load_and_plant)
    options = LoadGenOptions(scenario="Offline", output_dir=output, offline=True, inference_precision="f32",
                             settings=SettingsOverrides(min_duration=0.3, min_queries=8))
    with pytest.raises(UsageError) as caught:
        run_loadgen(load_registry(world.registry).model("tiny"), Cache.at(world.cache), options)
    assert caught.value.message == (f"cannot put LoadGen's mlperf_log_summary.txt in {output}: "
                                    f"{output / 'mlperf_log_summary.txt'} is in the way (it is a folder); nothing "
                                    "there was replaced")
    assert _snapshot(output) == {**{k: v for k, v in EARLIER.items() if k != "mlperf_log_summary.txt"},
                                 "mlperf_log_summary.txt": "folder"}


def test_a_failed_move_never_leaves_an_earlier_summary_beside_new_logs(world: World, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "out"
    output.mkdir()
    for name, data in EARLIER.items():
        (output / name).write_bytes(data)
    real = os.replace

    def failing(source: Any, target: Any) -> None:
        if Path(target).name == "mlperf_log_detail.txt":
            raise OSError(28, "No space left on device")
        real(source, target)

    monkeypatch.setattr(os, "replace", failing)
    options = LoadGenOptions(scenario="Offline", output_dir=output, offline=True, inference_precision="f32",
                             settings=SettingsOverrides(min_duration=0.3, min_queries=8))
    with pytest.raises(UsageError, match=f"cannot put LoadGen's logs in {output}: No space left on device"):
        run_loadgen(load_registry(world.registry).model("tiny"), Cache.at(world.cache), options)
    left = _snapshot(output)
    assert sorted(left) == ["mlperf_log_accuracy.json", "mlperf_log_detail.txt"]  # no summary claims a result
    assert left["mlperf_log_detail.txt"] == EARLIER["mlperf_log_detail.txt"]


def test_a_rerun_replaces_an_earlier_runs_logs(world: World, tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    for name, data in EARLIER.items():
        (output / name).write_bytes(data)
    result = _bench(world, "tiny", "--scenario", "Offline", "--output-dir", str(output), *SHORT, "--json")
    _check_run(result, output, "Offline", "openvino")
    assert all((output / name).read_bytes() != data for name, data in EARLIER.items())


SERVER_SUMMARY = """================================================
MLPerf Results Summary
================================================
SUT name : PySUT
Scenario : Server
Mode     : PerformanceOnly
Completed samples per second    : 50.63
Result is : INVALID
  Performance constraints satisfied : Yes
  Min duration satisfied : Yes
  Min queries satisfied : Yes
  Early stopping satisfied: NO
Recommendations:
Early Stopping Result:
 * Run unsuccessful.
 * Processed 54 queries.
 * Would need to run at least 405 more queries,
 with the run being successful if every additional
 query were under latency.

================================================
Additional Stats
================================================
Scheduled samples per second : 50.75
Min latency (ns)                : 2215520
Max latency (ns)                : 11216273
Mean latency (ns)               : 2679922
50.00 percentile latency (ns)   : 2319288
99.00 percentile latency (ns)   : 11216273

================================================
Test Parameters Used
================================================
samples_per_query : 1
target_qps : 50

No warnings encountered during test.
"""


def test_parse_summary_server() -> None:
    summary = parse_summary(SERVER_SUMMARY)
    assert (summary.scenario, summary.mode, summary.valid) == ("Server", "PerformanceOnly", False)
    assert summary.reasons == ["Early stopping not satisfied"]
    assert (summary.metric_name, summary.metric_value, summary.metric_unit) == (
        "Scheduled samples per second", 50.75, "samples/s")
    assert summary.early_stopping == ["Run unsuccessful.", "Processed 54 queries.",
                                      "Would need to run at least 405 more queries, with the run being successful "
                                      "if every additional query were under latency."]
    assert summary.recommendations == []
    assert summary.latency_ms == {"p50": 2.319288, "p99": 11.216273, "max": 11.216273, "mean": 2.679922,
                                  "min": 2.21552}
    assert summary.fields["target_qps"] == "50"


def test_parse_summary_refuses_non_finite_numbers() -> None:
    hostile = (SERVER_SUMMARY.replace("Scheduled samples per second : 50.75", "Scheduled samples per second : nan")
               .replace("Max latency (ns)                : 11216273", "Max latency (ns)                : inf")
               .replace("Min latency (ns)                : 2215520", "Min latency (ns)                : 1e400"))
    summary = parse_summary(hostile)
    assert summary.metric_value is None
    assert summary.latency_ms == {"p50": 2.319288, "p99": 11.216273, "mean": 2.679922}


@pytest.mark.parametrize("model", ["planted", "tiny"])
def test_eval_of_the_accuracy_log_equals_plain_eval(world: World, tmp_path: Path, model: str) -> None:
    """``eval --mlperf-log`` on LoadGen's log gives the AP of a plain ``eval`` over the same images: same
    engine, same detections (the log's float32 normalized boxes cost at most rounding)."""
    out = tmp_path / "acc"
    result = _bench(world, model, "--scenario", "Offline", "--mode", "accuracy", "--images", str(world.images),
                    "--annotations", str(world.annotations), "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    common = ("eval", model, "--annotations", str(world.annotations), "--json", "--progress", "none")
    from_log = CliRunner().invoke(cli, world.args(*common, "--mlperf-log", str(out / "mlperf_log_accuracy.json"),
                                                  "--save-detections", str(tmp_path / "log.json")))
    plain = CliRunner().invoke(cli, world.args(*common, "--images", str(world.images), "--inference-precision",
                                               "f32", "--offline", "--save-detections", str(tmp_path / "plain.json")))
    assert from_log.exit_code == 0, from_log.output
    assert plain.exit_code == 0, plain.output
    log_metrics, plain_metrics = json.loads(from_log.stdout)["metrics"], json.loads(plain.stdout)["metrics"]
    assert log_metrics.keys() == plain_metrics.keys() and len(log_metrics) == 12
    for name, value in plain_metrics.items():
        assert log_metrics[name] == pytest.approx(value, abs=1e-6), name
    if model == "planted":
        assert plain_metrics["AP"] == pytest.approx(1.0)

    def ordered(path: Path) -> list[dict[str, Any]]:
        return sorted(json.loads(path.read_text()), key=lambda d: (d["image_id"], -d["score"], d["bbox"]))

    logged, direct = ordered(tmp_path / "log.json"), ordered(tmp_path / "plain.json")
    assert len(direct) >= len(PLANTED) * len(DATASET) and len(logged) == len(direct)
    for a, b in zip(logged, direct, strict=True):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-3)  # pixels; float32 normalized in the log
