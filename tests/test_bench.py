"""ssdtool bench: report shape, JSON, modes and option errors on the tiny twin (a few iterations; never timed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from ssdtool import synthetic
from ssdtool.bench import BenchOptions, BenchReport, benchmark, check_options, input_tensors, peak_rss_bytes
from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.errors import BackendError, OfflineError, UsageError
from ssdtool.registry import load_registry
from ssdtool.synthetic import TwinSpec
from tests.modelkit import TINY_URL, install_model

REPORT_KEYS = {
    "model", "backend", "precision", "device", "hint", "requests", "model_path", "input_shape", "load_seconds",
    "first_inference_ms", "iterations", "duration_seconds", "latency_median_ms", "latency_p90_ms", "latency_min_ms",
    "latency_max_ms", "latency_mean_ms", "throughput_fps", "peak_rss_mb", "streams", "threads", "versions",
    "inference_precision", "inference_precision_requested", "inference_precision_reason", "image_input",
}


@pytest.fixture(scope="module")
def tiny_model() -> onnx.ModelProto:
    return synthetic.build_model(TwinSpec(variant="tiny"))


@pytest.fixture
def env(tmp_path: Path, tiny_model: onnx.ModelProto) -> tuple[Path, Path]:
    registry_path, cache_dir = tmp_path / "registry.yml", tmp_path / "cache"
    install_model(cache_dir, registry_path, "tiny", tiny_model, sources=[TINY_URL])
    return registry_path, cache_dir


def _bench(env: tuple[Path, Path], *args: str) -> Any:
    registry_path, cache_dir = env
    return CliRunner().invoke(cli, ["--registry", str(registry_path), "--cache-dir", str(cache_dir), "bench", "tiny",
                                    "--offline", *args])


def _check_figures(data: dict[str, Any], iterations: int | None = None) -> None:
    assert set(data) == REPORT_KEYS
    if iterations is not None:
        assert data["iterations"] == iterations
    assert data["iterations"] >= 1
    assert 0 < data["latency_min_ms"] <= data["latency_median_ms"] <= data["latency_p90_ms"] <= data["latency_max_ms"]
    assert data["latency_min_ms"] <= data["latency_mean_ms"] <= data["latency_max_ms"]
    assert data["throughput_fps"] > 0 and data["duration_seconds"] > 0
    assert data["first_inference_ms"] > 0 and data["load_seconds"] > 0
    assert data["peak_rss_mb"] is None or data["peak_rss_mb"] > 10


def test_json_report_converts_on_first_use(env: tuple[Path, Path]) -> None:
    result = _bench(env, "-n", "4", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    _check_figures(data, iterations=4)
    entry = load_registry(env[0]).model("tiny")
    assert Path(data["model_path"]) == Cache.at(env[1]).ir_xml(entry, "FP32")  # converted because it was missing
    assert data["backend"] == "openvino" and data["precision"] == "FP32" and data["hint"] == "latency"
    assert data["requests"] == 1 and data["input_shape"] == [1, 3, 300, 300]
    assert data["versions"]["openvino"] and data["versions"]["ssdtool"]


def test_text_report(env: tuple[Path, Path]) -> None:
    result = _bench(env, "-n", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tiny: openvino FP32 IR on CPU, latency hint (1 request")
    for label in ("model:", "precision:", "load:", "first inference:", "iterations:      2 in",
                  "latency:         median", "throughput:", "peak memory:"):
        assert any(line.strip().startswith(label.strip()) for line in lines), (label, result.stdout)


def test_throughput_mode_with_requests(env: tuple[Path, Path]) -> None:
    result = _bench(env, "--hint", "throughput", "--requests", "3", "-n", "6", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    _check_figures(data, iterations=6)
    assert data["hint"] == "throughput" and data["requests"] == 3


def test_onnxruntime_backend_both_hints(env: tuple[Path, Path]) -> None:
    registry_path, cache_dir = env
    entry = load_registry(registry_path).model("tiny")
    for hint, requests in (("latency", 1), ("throughput", 2)):
        report = benchmark(entry, Cache.at(cache_dir), BenchOptions(backend="onnxruntime", hint=hint, requests=2,
                                                                    iterations=4, offline=True))
        assert isinstance(report, BenchReport)
        _check_figures(report.to_dict(), iterations=4)
        assert report.requests == requests and report.precision == "FP32"
        assert report.model_path.endswith("model.onnx")
    assert not (cache_dir / "tiny" / "openvino").exists()  # onnxruntime needs no IR


def test_time_budget(env: tuple[Path, Path]) -> None:
    result = _bench(env, "--time", "0.3", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    _check_figures(data)
    assert data["duration_seconds"] >= 0.3


@pytest.mark.parametrize("args, message", [
    (("-n", "2", "--time", "1"), "exclusive"),
    (("--backend", "onnxruntime", "--precision", "FP16"), "source ONNX, which is FP32"),
    (("-n", "0"), "0 is not in the range"),
])
def test_option_errors_exit_2(env: tuple[Path, Path], args: tuple[str, ...], message: str) -> None:
    result = _bench(env, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.parametrize(("args", "message"), [
    (("--backend", "onnxruntime", "--device", "CUDA"), "error: onnxruntime has no CUDA execution provider here: it "
                                                       "comes with onnxruntime-gpu"),
    (("--backend", "onnxruntime", "--device", "GPU"), "error: onnxruntime has no execution provider 'GPU'; expected "
                                                      "one of CPU, CUDA[:N], TensorRT[:N], OpenVINO[:DEVICE]"),
    (("--device", "NPU"), "error: OpenVINO device 'NPU' is not available; found: CPU"),
])
def test_devices_that_are_not_here_exit_31(env: tuple[Path, Path], args: tuple[str, ...], message: str) -> None:
    """Issue 22: bench takes any device (it refused every one but the CPU for onnxruntime, exit 2); one that is
    not here is exit 31, naming what is or the package that brings it."""
    result = _bench(env, "-n", "1", *args)
    assert result.exit_code == 31, result.output
    assert result.stderr.startswith(message)


@pytest.mark.parametrize(("options", "error", "message"), [
    (BenchOptions(backend="tensorflow"), BackendError, "unknown backend 'tensorflow'; expected one of openvino, "
                                                       "onnxruntime"),
    (BenchOptions(hint="fast"), UsageError, "unknown hint 'fast'; expected one of latency, throughput"),
    (BenchOptions(precision="INT4"), UsageError, "precision 'INT4' is not supported; expected one of FP32, FP16, "
                                                 "INT8"),
    (BenchOptions(iterations=3, seconds=1.0), UsageError, "give either a number of iterations or a time, not both"),
    (BenchOptions(requests=0), UsageError, "requests must be at least 1, got 0"),
    (BenchOptions(seconds=-1), UsageError, "the time must be positive, got -1 s"),
    (BenchOptions(inference_precision="f8"), UsageError, "unknown inference precision 'f8'"),
    (BenchOptions(backend="onnxruntime", inference_precision="bf16"), UsageError,
     "onnxruntime runs the source ONNX in f32 only"),
    (BenchOptions(images=0), UsageError, "images must be at least 1, got 0"),
])
def test_library_option_checks(options: BenchOptions, error: type[Exception], message: str) -> None:
    """Each invalid option set fails with its own message (not merely the first check that happens to trip)."""
    with pytest.raises(error) as caught:
        check_options(options)
    assert type(caught.value) is error and str(caught.value).startswith(message)


def test_offline_with_missing_model(tmp_path: Path, tiny_model: onnx.ModelProto) -> None:
    registry_path, cache_dir = tmp_path / "registry.yml", tmp_path / "cache"
    # An http source (a synthetic one would simply be rebuilt offline), and the file is not in the cache.
    install_model(cache_dir, registry_path, "tiny", tiny_model, sources=["https://example.invalid/model.onnx"])
    (cache_dir / "tiny" / "model.onnx").unlink()
    entry = load_registry(registry_path).model("tiny")
    with pytest.raises(OfflineError):
        benchmark(entry, Cache.at(cache_dir), BenchOptions(backend="onnxruntime", iterations=1, offline=True))
    result = _bench((registry_path, cache_dir), "-n", "1")
    assert result.exit_code == 12, result.output


def test_inputs_are_preprocessed_images_not_zeros(env: tuple[Path, Path]) -> None:
    entry = load_registry(env[0]).model("tiny")
    raw = input_tensors(entry, "openvino", 2)
    normalized = input_tensors(entry, "onnxruntime", 2)
    assert raw[0].shape == normalized[0].shape == (1, 3, 300, 300)
    assert raw[0].min() >= 0 and raw[0].max() <= 255 and raw[0].std() > 10  # raw BGR pixels with content
    assert abs(float(normalized[0].mean())) < 3  # normalized: mean and scale applied
    assert not np.array_equal(raw[0], raw[1])  # distinct images, cycled during the run
    # BGR for the IR, RGB for the source model: the first IR channel is the last source channel, unnormalized.
    mean, scale = np.array(entry.input.mean), np.array(entry.input.scale)
    np.testing.assert_allclose(normalized[0][0, 2] * scale[2] + mean[2], raw[0][0, 0], atol=1e-3)


def test_peak_rss_is_reported() -> None:
    peak = peak_rss_bytes()
    assert peak is None or peak > 1 << 20
