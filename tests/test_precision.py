"""Inference precision: pinned, read back, reported, checked at conversion, and ``auto``'s rules.

OpenVINO's CPU plugin runs f32 IRs in bf16 on CPUs with native bf16 (and f16 on ARM with fp16), so what these
tests may assert depends on the CPU under them. Tests that hold everywhere come first; the few that need native
bf16, or its absence, skip elsewhere with the reason. ``auto``'s decision rules are tested on any CPU with device
facts made up for the test.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from ssdtool import precision
from ssdtool.backends import openvino, openvino_rules
from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.convert import convert
from ssdtool.errors import BackendError, UsageError
from ssdtool.imaging import generated_images, normalized_input, raw_input, resize_rgb
from ssdtool.matching import RawDetections, match_detections
from ssdtool.precision import DeviceFacts, RuntimeCheck
from ssdtool.provenance import read_provenance, rewrite_provenance
from ssdtool.registry import load_registry
from ssdtool.synthetic import TwinSpec, build_model
from tests.modelkit import install_model


def _capabilities() -> set[str]:
    import openvino as ov

    return set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


CAPABILITIES = _capabilities()
NATIVE_BF16 = "BF16" in CAPABILITIES
NATIVE_F16 = "FP16" in CAPABILITIES


def _default() -> str | None:
    from ssdtool.backends.openvino import device_facts

    return device_facts("CPU").default_precision


DEFAULT = _default()
needs_native_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="the CPU has no native bf16 (no avx512_bf16/AMX)")
needs_lower_default = pytest.mark.skipif(DEFAULT == "f32", reason="this CPU's default inference precision is f32")


class World:
    def __init__(self, root: Path) -> None:
        self.registry, self.cache = root / "registry.yml", root / "cache"
        self.image = root / "photo.png"

    def args(self, *extra: str) -> list[str]:
        return ["--registry", str(self.registry), "--cache-dir", str(self.cache), *extra]

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, self.args(*args))

    @property
    def xml(self) -> Path:
        return self.cache / "tiny" / "openvino" / "FP32" / "tiny.xml"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The tiny twin converted as 'ssdtool convert' does it: parity gate and (where the default is not f32) the
    runtime check, both recorded in provenance."""
    world = World(tmp_path_factory.mktemp("precision"))
    install_model(world.cache, world.registry, "tiny", build_model(TwinSpec(variant="tiny")))
    convert(load_registry(world.registry).model("tiny"), Cache.at(world.cache))
    Image.fromarray(generated_images(1, seed=3, size=(400, 300))[0]).save(world.image)
    yield world


def _run_record(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["run"]


# ------------------------------------------------------------------------------------------------- everywhere
def test_the_f32_pin_takes_effect_and_matches_onnxruntime(world: World) -> None:
    """On a bf16 CPU the unpinned IR runs bf16 and misses 1e-4; pinned, it is f32 and within it, everywhere."""
    from ssdtool.backends.onnxruntime import OnnxRuntimeEngine
    from ssdtool.backends.openvino import OpenVinoEngine

    entry = load_registry(world.registry).model("tiny")
    engine = OpenVinoEngine(world.xml, inference_precision="f32")
    assert engine.inference_precision == "f32"
    assert openvino.type_name(engine.compiled.get_property("INFERENCE_PRECISION_HINT")) == "f32"
    resized = resize_rgb(generated_images(1, seed=9, size=(640, 480))[0], entry.input)
    ir = engine.infer(raw_input(resized, "BGR"))
    source = OnnxRuntimeEngine(Cache.at(world.cache).file_path(entry, entry.primary_file))
    reference = source.infer(normalized_input(resized, entry.input))
    a = RawDetections.from_outputs(np.clip(reference["bboxes"], 0, 1), reference["labels"], reference["scores"])
    b = RawDetections.from_outputs(ir["bboxes"], ir["labels"], ir["scores"])
    for report in (match_detections(a, b), match_detections(b, a)):
        assert report.recall == 1.0 and report.reference_count > 20
        assert report.max_box_diff <= 1e-4 and report.max_score_diff <= 1e-4


def test_an_unpinned_engine_reports_the_device_default(world: World) -> None:
    from ssdtool.backends.openvino import OpenVinoEngine

    engine = OpenVinoEngine(world.xml)
    assert engine.requested_precision is None
    assert engine.inference_precision == DEFAULT
    assert engine.inference_precision == openvino.type_name(engine.compiled.get_property("INFERENCE_PRECISION_HINT"))


def test_detect_reports_what_ran(world: World) -> None:
    run = _run_record(world.run("detect", str(world.image), "--format", "json"))
    assert set(run) == {"model", "backend", "device", "precision", "inference_precision",
                        "inference_precision_requested", "inference_precision_reason", "model_path", "performance",
                        "image_input"}
    assert (run["model"], run["backend"], run["device"], run["precision"]) == ("tiny", "openvino", "CPU", "FP32")
    assert run["inference_precision_requested"] == "auto"
    # The tiny twin passes its runtime check, so auto runs the device's default (f32 on AVX2-only CPUs).
    assert run["inference_precision"] == DEFAULT
    pinned = _run_record(world.run("detect", str(world.image), "--format", "json", "--inference-precision", "F32"))
    assert pinned["inference_precision"] == "f32" and pinned["inference_precision_requested"] == "f32"
    lines = world.run("detect", str(world.image), "--format", "jsonl", "--inference-precision", "f32")
    assert json.loads(lines.stdout.splitlines()[0])["run"]["inference_precision"] == "f32"
    verbose = CliRunner().invoke(cli, ["-v", *world.args("detect", str(world.image))])
    assert f"openvino CPU FP32 IR, {DEFAULT}" in verbose.stderr  # the engine log line and the summary
    assert verbose.stderr.strip().splitlines()[-1].endswith(f"(tiny, openvino CPU FP32 IR, {DEFAULT})")


def test_bench_reports_the_precision_read_back(world: World) -> None:
    data = json.loads(world.run("bench", "tiny", "-n", "2", "--json", "--inference-precision", "f32").stdout)
    assert (data["inference_precision"], data["inference_precision_requested"]) == ("f32", "f32")
    auto = world.run("bench", "tiny", "-n", "2", "--json")
    assert json.loads(auto.stdout)["inference_precision"] == DEFAULT
    text = world.run("bench", "tiny", "-n", "2", "--inference-precision", "f32")
    assert "  precision:       f32 (inference precision read back; asked: f32; f32 as requested)" in text.stdout
    ort = json.loads(world.run("bench", "tiny", "-n", "2", "--json", "--backend", "onnxruntime").stdout)
    assert ort["inference_precision"] == "f32"


def test_convert_records_the_runtime_check_where_the_default_is_not_f32(world: World) -> None:
    record = read_provenance(world.xml)
    assert record is not None and record["parity"]["inference_precision"] == "f32"  # the gate proves the IR
    checks = precision.recorded_checks(record)
    if DEFAULT == "f32":
        assert checks == []  # nothing to check: the default is what the gate ran
        return
    from ssdtool.backends.openvino import device_facts

    (check,) = checks
    assert check.matches(device_facts("CPU")) and check.precision == DEFAULT
    assert check.passed and check.recall >= precision.RUNTIME_MIN_RECALL and check.reference_detections > 0
    info = world.run("info", "tiny")
    assert f"      runtime_checks: \n        {check.summary()}\n" in info.stdout


def test_onnxruntime_accepts_auto_and_f32_only(world: World) -> None:
    from ssdtool.detect import Detector

    result = world.run("detect", str(world.image), "--backend", "onnxruntime", "--inference-precision", "bf16")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == ("error: onnxruntime runs the source ONNX in f32 only; got "
                                             "--inference-precision bf16")
    bench = world.run("bench", "tiny", "--backend", "onnxruntime", "--inference-precision", "f16", "-n", "1")
    assert bench.exit_code == 2 and "onnxruntime runs the source ONNX in f32 only" in bench.stderr
    with pytest.raises(UsageError, match="onnxruntime runs the source ONNX in f32 only"):
        Detector("tiny", "onnxruntime", registry=world.registry, cache_dir=world.cache, inference_precision="f16")
    with pytest.raises(UsageError, match="unknown inference precision 'f8'"):
        Detector("tiny", "openvino", registry=world.registry, cache_dir=world.cache, inference_precision="f8")
    run = _run_record(world.run("detect", str(world.image), "--backend", "onnxruntime", "--format", "json"))
    assert (run["inference_precision"], run["precision"]) == ("f32", None)


def test_a_virtual_device_runs_each_device_at_its_own_auto_and_says_it_cannot_read_it_back(world: World) -> None:
    """Issue 22: under AUTO, ``auto`` means what it means on each device AUTO may pick (here the CPU: its default
    where the IR was checked on it), pinned per device; AUTO reads no precision back, so the report names what the
    device it chose was set to run. (Before, AUTO always pinned f32 and reported nothing.)"""
    from ssdtool.detect import Detector

    with Detector("tiny", "openvino", device="AUTO", registry=world.registry, cache_dir=world.cache) as detector:
        assert detector(generated_images(1, seed=3, size=(64, 48))[0]) is not None
        info = detector.run_info()
    with Detector("tiny", "openvino", registry=world.registry, cache_dir=world.cache) as on_cpu:
        cpu = on_cpu.run_info("latency")
    assert info.device == "AUTO" and info.inference_precision == cpu.inference_precision == DEFAULT
    assert info.inference_precision_reason == (f"AUTO may run on CPU; CPU: {cpu.inference_precision_reason}; AUTO "
                                                f"reads no precision back: {DEFAULT} is what CPU was set to run")
    with Detector("tiny", "openvino", device="AUTO", inference_precision="f32", registry=world.registry,
                  cache_dir=world.cache) as pinned:
        assert pinned.run_info("latency").inference_precision == "f32"


def test_check_pins_f32_by_default(world: World) -> None:
    result = world.run("check", "tiny", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["inference_precision"] == "f32" and report["passed"] is True
    assert report["criteria"].endswith("boxes and scores within 0.0001 at inference precision f32")


# ------------------------------------------------------------------------------------------------- auto's rules
FACTS = DeviceFacts(device="CPU", name="Test CPU 9000", default_precision="bf16")


def _check(passed: bool, name: str = FACTS.name, precision_name: str = "bf16") -> RuntimeCheck:
    return RuntimeCheck(device="CPU", device_name=name, precision=precision_name, passed=passed, images=3,
                        reference_detections=100, matched=98 if passed else 50, recall=0.98 if passed else 0.5,
                        min_recall=0.9, max_box_diff=0.01, max_score_diff=0.001, openvino_version="x",
                        checked="2026-12-02T00:00:00Z")


def test_auto_uses_the_default_only_where_it_passed_its_check() -> None:
    passed = openvino_rules.plan("auto", FACTS, [_check(True)], model="m")
    assert passed.pin is None and passed.level == logging.DEBUG
    assert passed.reason == ("bf16, the default of CPU (Test CPU 9000), checked for this IR at conversion: recall "
                             "0.980 (floor 0.90)")
    failed = openvino_rules.plan("auto", FACTS, [_check(False)], model="m")
    assert failed.pin == "f32" and failed.level == logging.WARNING
    assert failed.reason.startswith("m's IR fails its accuracy check at bf16, the default of CPU (bf16 vs f32 on CPU "
                                    "(Test CPU 9000): FAILED, 50/100 f32 detections found (recall 0.500")
    assert failed.reason.endswith("running f32. Pass --inference-precision bf16 to run it anyway")
    for checks in ([], [_check(True, name="Other CPU")], [_check(True, precision_name="f16")]):
        missing = openvino_rules.plan("auto", FACTS, checks, model="m")
        assert missing.pin == "f32" and missing.level == logging.INFO
        assert missing.reason == (
            "CPU (Test CPU 9000) runs bf16 by default, and m's IR has no record of its accuracy at bf16 on this "
            "device; running f32. Run 'ssdtool convert m' here to check and record it, or pass "
            "--inference-precision bf16 to run it unchecked")
    f32_cpu = DeviceFacts(device="CPU", name="Old CPU", default_precision="f32")
    assert openvino_rules.plan("auto", f32_cpu, [], model="m").pin is None
    assert openvino_rules.plan("auto", DeviceFacts("AUTO", "AUTO", None), []).pin == "f32"
    for explicit in ("f32", "BF16", "f16"):
        assert openvino_rules.plan(explicit, FACTS, [_check(False)]).pin == explicit.lower()


def test_a_pinned_precision_that_did_not_run_is_an_error() -> None:
    openvino.confirm("f32", "f32", "CPU")
    openvino.confirm(None, "bf16", "CPU")  # the default: whatever runs is reported, not refused
    openvino.confirm("f16", None, "AUTO")  # nothing read back: nothing to compare
    with pytest.raises(BackendError) as info:
        openvino.confirm("f16", "bf16", "CPU")
    assert info.value.exit_code == 31
    assert info.value.message == ("OpenVINO cannot run inference precision f16 on CPU: asked for f16, the compiled "
                                  "model runs bf16 (the device has no native f16 arithmetic, and OpenVINO "
                                  "substitutes another precision)")
    assert info.value.hint == "pass --inference-precision auto, f32 or bf16"


def test_provenance_checks_survive_odd_records() -> None:
    good = _check(True).to_dict()
    assert precision.recorded_checks({"runtime_checks": [good, {"device": "CPU"}, "x", None]}) == [_check(True)]
    assert precision.recorded_checks({"runtime_checks": "not a list"}) == []
    assert precision.recorded_checks(None) == []
    replaced = precision.with_check({"runtime_checks": [good, _check(True, name="Other").to_dict()]}, _check(False))
    assert [c["passed"] for c in replaced] == [True, False] and replaced[0]["device_name"] == "Other"


@pytest.fixture
def bf16_claimed(monkeypatch: pytest.MonkeyPatch) -> DeviceFacts:
    """This CPU as a bf16 CPU named 'Test CPU 9000', whatever it is: auto's choices then follow the records."""
    import ssdtool.backends.openvino as openvino_backend

    monkeypatch.setattr(openvino_backend, "device_facts", lambda device="CPU": FACTS)
    return FACTS


def test_auto_falls_back_to_f32_after_a_failed_check(world: World, tmp_path: Path, bf16_claimed: DeviceFacts
                                                     ) -> None:
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(world.cache, cache)
    xml = cache / "tiny" / "openvino" / "FP32" / "tiny.xml"
    assert rewrite_provenance(xml, {"runtime_checks": [_check(False).to_dict()]})
    args = ["--registry", str(world.registry), "--cache-dir", str(cache), "detect", str(world.image), "--json"]
    result = CliRunner().invoke(cli, args)
    run = _run_record(result)
    assert run["inference_precision"] == "f32" and run["inference_precision_requested"] == "auto"
    assert "inference precision: tiny's IR fails its accuracy check at bf16" in result.stderr
    assert rewrite_provenance(xml, {"runtime_checks": []})
    unchecked = CliRunner().invoke(cli, args)
    assert _run_record(unchecked)["inference_precision"] == "f32"
    assert "has no record of its accuracy at bf16 on this device; running f32" in unchecked.stderr


# ------------------------------------------------------------------------------------------------- CPU-specific
@needs_native_bf16
def test_explicit_bf16_runs_bf16(world: World) -> None:
    run = _run_record(world.run("detect", str(world.image), "--format", "json", "--inference-precision", "bf16"))
    assert run["inference_precision"] == "bf16"
    data = json.loads(world.run("bench", "tiny", "-n", "2", "--json", "--inference-precision", "bf16").stdout)
    assert data["inference_precision"] == "bf16"
    check = world.run("check", "tiny", "--inference-precision", "bf16", "--json")
    assert check.exit_code == 0, check.output
    report = json.loads(check.stdout)
    assert report["inference_precision"] == "bf16" and report["recall"] >= 0.9
    assert report["criteria"] == ("at least 90% of onnxruntime detections matched (same label, IoU >= 0.5) at "
                                  "inference precision bf16")


@pytest.mark.skipif(NATIVE_F16, reason="the CPU has native f16 arithmetic")
def test_f16_without_native_f16_is_refused_naming_what_would_run(world: World) -> None:
    result = world.run("detect", str(world.image), "--inference-precision", "f16")
    assert result.exit_code == 31
    ran = "bf16" if NATIVE_BF16 else "f32"
    assert result.stderr.splitlines()[0] == (
        f"error: OpenVINO cannot run inference precision f16 on CPU: asked for f16, the compiled model runs {ran} "
        "(the device has no native f16 arithmetic, and OpenVINO substitutes another precision)")
    assert f"hint: pass --inference-precision auto, f32 or {ran}" in result.stderr
    as_json = world.run("detect", str(world.image), "--inference-precision", "f16", "--format", "json")
    assert as_json.exit_code == 31 and json.loads(as_json.stdout)["error"] == "BackendError"


@needs_lower_default
def test_an_up_to_date_convert_records_a_missing_check(tmp_path: Path) -> None:
    registry, cache = tmp_path / "registry.yml", tmp_path / "cache"
    install_model(cache, registry, "tiny", build_model(TwinSpec(variant="tiny")))
    base = ["--registry", str(registry), "--cache-dir", str(cache), "convert", "tiny"]
    unverified = CliRunner().invoke(cli, [*base, "--no-verify"])
    assert unverified.exit_code == 0, unverified.output
    xml = cache / "tiny" / "openvino" / "FP32" / "tiny.xml"
    assert precision.recorded_checks(read_provenance(xml)) == []
    again = CliRunner().invoke(cli, base)
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith("tiny (FP32): up to date\n")
    assert f"  runtime: {DEFAULT} vs f32 on CPU (" in again.stdout
    (check,) = precision.recorded_checks(read_provenance(xml))
    assert check.precision == DEFAULT and check.passed
    third = CliRunner().invoke(cli, base)  # recorded once: nothing measured again
    assert "runtime check:" not in third.stderr and "(recorded)" in third.stdout
