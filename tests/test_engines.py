"""The engine layer (issue 22): one :class:`EngineSpec`, one factory, backends picked from a table, and devices on
every engine path.

What holds on any machine is tested with the devices and providers present here (OpenVINO: the CPU and the
virtual devices over it; onnxruntime: its CPU provider). What needs a GPU is tested through the rules with the
runtime's answers made up (the device list, a device's facts, onnxruntime's provider list): the decisions, the
provider options and the messages, never a run on hardware this machine lacks.
"""

from __future__ import annotations

import ast
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from ssdtool import artifacts
from ssdtool.backends import BACKENDS, backend_rules, make_engine, open_engine, openvino_rules, plan_engine, prepare
from ssdtool.backends import onnxruntime as ort_backend
from ssdtool.backends import openvino as runtime
from ssdtool.backends.spec import EngineSpec, RunInfo, engine_spec
from ssdtool.bench import BenchOptions
from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.constants import Backend
from ssdtool.convert import ConvertOptions, convert
from ssdtool.errors import BackendError, UsageError
from ssdtool.export import ExportOptions
from ssdtool.imaging import generated_images, preprocess
from ssdtool.loadgen import LoadGenOptions
from ssdtool.precision import DeviceFacts, RuntimeCheck, recorded_checks
from ssdtool.provenance import read_provenance
from ssdtool.registry import load_registry
from ssdtool.serving.protocol import ServerTarget
from ssdtool.serving.server import ServeOptions
from tests.modelkit import hide_openvino

ROOT = Path(__file__).resolve().parent.parent
TINY = "ssd-resnet34-300-synthetic-tiny"
TINY_HEADS = "ssd-resnet34-300-synthetic-tiny-heads"
NATIVE_BF16 = "BF16" in runtime.device_capabilities("CPU")
DEFAULT = runtime.device_facts("CPU").default_precision


class World:
    """The packaged tiny twins in a cache of their own, the tiny twin converted (gate and runtime check)."""

    def __init__(self, root: Path) -> None:
        self.cache = Cache.at(root / "cache")
        self.registry = load_registry()
        self.image = root / "photo.png"
        Image.fromarray(generated_images(1, seed=3, size=(400, 300))[0]).save(self.image)
        self.xml = convert(self.registry.model(TINY), self.cache).xml

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["--cache-dir", str(self.cache.root), *args])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield World(tmp_path_factory.mktemp("engines"))


def _run_record(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["run"]


def _first_error(result: Result) -> str:
    return next(line for line in result.stderr.splitlines() if line.startswith("error: "))


# ------------------------------------------------------------------------------------------------- the spec
def test_the_spec_is_one_frozen_record_and_unknown_settings_are_refused() -> None:
    spec = EngineSpec()
    with pytest.raises(AttributeError):
        spec.device = "GPU"  # type: ignore[misc]
    assert engine_spec("onnxruntime", device="CUDA") == EngineSpec(backend="onnxruntime", device="CUDA")
    assert engine_spec(spec, hint="throughput").replace(hint=None) == spec
    with pytest.raises(TypeError, match="unexpected keyword argument 'devcie'"):
        engine_spec(spec, devcie="GPU")


def test_options_records_take_the_spec_or_its_fields_as_keywords() -> None:
    """Bench, LoadGen, serve and export declare no engine settings of their own: the spec's fields, given as
    keywords, are folded into each record's own default spec."""
    bench = BenchOptions(backend="onnxruntime", requests=3, iterations=2)
    assert bench.engine == EngineSpec(backend="onnxruntime", requests=3, compiled_cache=False)  # bench's default
    assert bench.iterations == 2
    given = BenchOptions(EngineSpec(backend="onnxruntime"), device="CPU")
    assert given.engine == EngineSpec(backend="onnxruntime", device="CPU")
    assert LoadGenOptions(scenario="Offline", output_dir=Path("x"), device="AUTO").engine.device == "AUTO"
    serve = ServeOptions(inference_precision="f32", port=0)
    assert (serve.engine.backend, serve.engine.hint, serve.engine.inference_precision) == ("openvino", "throughput",
                                                                                           "f32")
    export = ExportOptions(format="ovms", output_dir=Path("x"), device="GPU.1", hint="throughput")
    assert (export.engine.device, export.engine.hint) == ("GPU.1", "throughput")
    assert not hasattr(bench, "backend")  # read through the spec: one source


def test_prepare_resolves_auto_and_checks_before_anything_is_fetched(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:

    assert prepare(EngineSpec()).backend == "openvino"
    assert prepare(EngineSpec(precision="fp16", inference_precision="F32")) == EngineSpec(
        backend="openvino", precision="FP16", inference_precision="f32")
    with pytest.raises(BackendError, match=r"^unknown backend 'tvm'; expected one of auto, openvino, onnxruntime"):
        prepare(EngineSpec(backend="tvm"))
    with pytest.raises(BackendError, match=r"^unknown backend 'auto'; expected one of openvino, onnxruntime"):
        prepare(EngineSpec(), backends=Backend.values())
    with pytest.raises(UsageError, match="requests must be at least 1, got 0"):
        prepare(EngineSpec(requests=0))

    hide_openvino(monkeypatch)
    caplog.set_level(logging.WARNING, logger="ssdtool")
    fallen = prepare(EngineSpec(precision="INT8"))
    assert (fallen.backend, fallen.precision) == ("onnxruntime", None)
    assert "using onnxruntime (precision INT8 applies to OpenVINO only)" in caplog.text


def test_the_table_names_every_backend_and_each_owns_its_form() -> None:
    assert sorted(BACKENDS) == sorted([*Backend.values(), "remote"])
    forms = {name: backend_rules(name).model_form for name in BACKENDS}
    assert forms == {"openvino": "ir", "onnxruntime": "onnx", "remote": "served"}
    assert backend_rules(EngineSpec(server=ServerTarget("http://127.0.0.1:9"))).name == "remote"
    with pytest.raises(ValueError, match="resolve 'auto' with prepare"):
        backend_rules(EngineSpec())


# ------------------------------------------------------------------------------------------------- the factory
def test_the_factory_opens_openvino_with_its_plan_and_says_what_runs(world: World) -> None:
    spec = prepare(EngineSpec(backend="openvino", inference_precision="f32", hint="throughput"))
    model = artifacts.model_file(world.registry.model(TINY), world.cache, spec)
    engine, info = open_engine(model, spec, world.cache)
    assert isinstance(engine, runtime.OpenVinoEngine) and engine.hint == "THROUGHPUT"
    assert info == RunInfo(model=TINY, backend="openvino", device="CPU", precision="FP32", inference_precision="f32",
                           inference_precision_requested="f32", inference_precision_reason="f32 as requested",
                           model_path=str(world.xml), performance="throughput")
    assert engine.cache_dir == world.cache.compiled_model_dir(TINY)  # the cache is used: decided once, in the spec
    assert any(engine.cache_dir.iterdir())
    without = open_engine(model, spec.replace(compiled_cache=False, hint="latency"), world.cache).engine
    assert without.cache_dir is None  # bench's choice: its load figure is the compile


def test_the_factory_opens_onnxruntime_and_a_heads_model_decodes_on_the_host(world: World) -> None:
    spec = prepare(EngineSpec(backend="onnxruntime", hint="throughput", requests=2))
    entry = world.registry.model(TINY_HEADS)
    model = artifacts.model_file(entry, world.cache, spec)
    engine, info = open_engine(model, spec, world.cache)
    assert (engine.requests, engine.device, engine.inference_precision) == (2, "CPU", "f32")
    assert (info.backend, info.device, info.precision, info.weights) == ("onnxruntime", "CPU", None, "FP32")
    assert info.inference_precision_reason == "onnxruntime computes in f32 on the CPU"
    assert not world.cache.compiled_model_dir(TINY_HEADS).exists()  # onnxruntime keeps no compiled models
    outputs = engine.infer(preprocess(generated_images(1, seed=2, size=(300, 300))[0], entry))
    assert sorted(outputs) == ["bboxes", "labels", "scores"]  # the heads, decoded inside the engine
    assert make_engine(model).infer(preprocess(generated_images(1, seed=2, size=(300, 300))[0], entry)).keys() \
        == outputs.keys()


def test_the_factory_opens_a_server_model_as_the_remote_backend(world: World) -> None:
    from tests.hostile_server import HostileServer

    entry = world.registry.model(TINY)
    with HostileServer("ok") as server:
        spec = prepare(EngineSpec(server=ServerTarget(server.url, concurrency=3)))
        assert (spec.hint, spec.requests) == ("throughput", 3)  # a server's concurrency is its requests
        model = artifacts.model_file(entry, world.cache, spec)
        decided = plan_engine(model, spec)
        engine, info = open_engine(model, spec, world.cache, plan=decided)
        assert (info.backend, info.device, info.precision, info.weights) == ("remote", server.url, None, "served")
        assert (info.inference_precision_reason, info.model_path) == ("chosen by the server",
                                                                      f"{server.url}/v2/models/{TINY}")
        assert engine.infer(np.zeros((1, 3, 300, 300), np.float32))["scores"].shape == (1, 200)
    with pytest.raises(UsageError, match="with --server the server has chosen them"):
        prepare(EngineSpec(server=ServerTarget("http://127.0.0.1:9"), device="GPU"))


# ------------------------------------------------------------------------------------------------- OpenVINO devices
def test_detect_runs_on_auto_and_other_virtual_devices_over_the_cpu(world: World) -> None:
    for device in ("AUTO", "AUTO:CPU", "HETERO:CPU"):
        run = _run_record(world.run("detect", str(world.image), "-m", TINY, "--device", device, "--format", "json"))
        assert (run["device"], run["backend"], run["inference_precision"]) == (device, "openvino", DEFAULT)
        assert run["inference_precision_reason"].startswith(f"{device} may run on CPU; CPU: ")
    bench = world.run("bench", TINY, "-n", "2", "--device", "AUTO", "--inference-precision", "f32", "--json")
    assert bench.exit_code == 0, bench.output
    assert json.loads(bench.stdout)["device"] == "AUTO" and json.loads(bench.stdout)["inference_precision"] == "f32"


@pytest.mark.parametrize(("device", "message"), [
    ("NPU", "error: OpenVINO device 'NPU' is not available; found: CPU"),
    ("GPU.1", "error: OpenVINO device 'GPU.1' is not available; found: CPU"),
    ("AUTO:GPU,CPU", "error: OpenVINO device 'GPU' (in 'AUTO:GPU,CPU') is not available; found: CPU"),
    ("AUTO:-CPU", "error: OpenVINO device 'AUTO:-CPU' leaves no device to run on; found: CPU"),
    ("cpu x", "error: --device 'cpu x' is not an OpenVINO device name"),
])
def test_an_absent_openvino_device_is_exit_31_naming_what_is_present(world: World, device: str, message: str) -> None:
    for command in (["detect", str(world.image), "-m", TINY], ["bench", TINY, "-n", "1"],
                    ["convert", TINY]):
        result = world.run(*command, "--device", device)
        assert result.exit_code == (2 if " " in device else 31), result.output
        assert _first_error(result) == message


def test_every_engine_path_takes_the_device(world: World) -> None:
    """LoadGen runs, serve and check read --device as detect does: an absent device is 31 before anything loads;
    check on AUTO compares the IR at what AUTO's device runs."""
    for command in (["bench", TINY, "--scenario", "Offline", "--output-dir", str(world.cache.root / "lg")],
                    ["serve", TINY, "--port", "0"], ["check", TINY]):
        result = world.run(*command, "--device", "NPU")
        assert result.exit_code == 31, result.output
        assert _first_error(result) == "error: OpenVINO device 'NPU' is not available; found: CPU"
    checked = world.run("check", TINY, "--device", "AUTO", "--json")
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.stdout)
    assert report["inference_precision"] == "f32" and report["criteria"].endswith("at inference precision f32")


def test_device_strings_are_read_against_the_devices_present() -> None:
    present = ["CPU", "GPU.0", "GPU.1", "NPU"]
    read = openvino_rules.parse_device
    assert read("GPU", present).parts == ("GPU",) and read("GPU.1", present).parts == ("GPU.1",)
    assert read("AUTO", present).parts == tuple(present)
    assert read("AUTO:-CPU", present).parts == ("GPU.0", "GPU.1", "NPU")
    assert read("AUTO:GPU.1,CPU", present) == openvino_rules.DeviceChoice("AUTO:GPU.1,CPU", "AUTO", ("GPU.1", "CPU"))
    assert read("BATCH:GPU(4)", present).parts == ("GPU",)
    assert read("GPU.0", ["CPU", "GPU"]).parts == ("GPU.0",)  # one GPU is listed as GPU
    with pytest.raises(BackendError, match=r"OpenVINO device 'GPU.2' is not available; found: CPU, GPU.0, GPU.1, NPU"):
        read("GPU.2", present)
    with pytest.raises(BackendError, match="nests 'HETERO'"):
        read("AUTO:HETERO,CPU", present)


@pytest.fixture
def a_gpu(monkeypatch: pytest.MonkeyPatch) -> dict[str, DeviceFacts]:
    """A machine with a GPU whose default is f16, as far as the rules can tell (nothing runs on it)."""
    facts = {"CPU": DeviceFacts("CPU", "Test CPU 9000", "bf16"), "GPU": DeviceFacts("GPU", "Test GPU A1", "f16")}
    monkeypatch.setattr(runtime, "available_devices", lambda: ["CPU", "GPU"])
    monkeypatch.setattr(runtime, "device_facts", lambda device="CPU": facts[runtime.device_type(device)])
    return facts


def _check(facts: DeviceFacts, passed: bool = True) -> dict[str, Any]:
    return RuntimeCheck(device=facts.device, device_name=facts.name, precision=str(facts.default_precision),
                        passed=passed, images=3, reference_detections=100, matched=98 if passed else 50,
                        recall=0.98 if passed else 0.5, min_recall=0.9, max_box_diff=0.01, max_score_diff=0.001,
                        openvino_version="x", checked="2026-12-06T00:00:00Z").to_dict()


def test_auto_means_each_devices_own_record_and_the_hint_names_the_command_for_that_device(
        world: World, a_gpu: dict[str, DeviceFacts], tmp_path: Path) -> None:
    from ssdtool.provenance import rewrite_provenance

    xml = tmp_path / "tiny.xml"
    shutil.copyfile(world.xml, xml)
    shutil.copyfile(world.xml.with_suffix(".bin"), xml.with_suffix(".bin"))
    assert rewrite_provenance(xml, {"runtime_checks": [_check(a_gpu["CPU"])]})
    model = artifacts.ModelFile("tiny", Backend.OPENVINO, xml, "ir", "FP16")
    on_gpu = openvino_rules.plan_devices(model, "auto", "GPU")
    assert on_gpu.pin == "f32" and on_gpu.reason == (
        "GPU (Test GPU A1) runs f16 by default, and tiny's IR has no record of its accuracy at f16 on this device; "
        "running f32. Run 'ssdtool convert tiny --precision FP16 --device GPU' here to check and record it, or pass "
        "--inference-precision f16 to run it unchecked")
    assert openvino_rules.plan_devices(model, "auto", "CPU").pin is None  # the CPU's record speaks for it
    auto = openvino_rules.plan_devices(model, "auto", "AUTO")
    assert auto.pin is None and auto.device_pins == {"GPU": "f32"}  # each device at its own auto
    assert auto.expected == {"CPU": "bf16", "GPU": "f32"}
    assert auto.reason.startswith("AUTO may run on CPU, GPU; CPU: bf16, the default of CPU (Test CPU 9000), checked")
    assert rewrite_provenance(xml, {"runtime_checks": [_check(a_gpu["CPU"]), _check(a_gpu["GPU"])]})
    assert openvino_rules.plan_devices(model, "auto", "GPU.0").pin is None  # GPU.0's kind and model were checked
    assert openvino_rules.plan_devices(model, "auto", "AUTO:GPU,CPU").device_pins == {}


@pytest.mark.skipif(not NATIVE_BF16, reason="the runtime check is measured at the CPU's own bf16 default")
def test_convert_records_a_runtime_check_per_device_model(world: World, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU of another model (made up: this CPU under another name) gets its own record on the next convert,
    beside the first; ``auto`` on it then runs its default, checked."""
    shutil.copytree(world.cache.root, tmp_path / "cache")
    cache = Cache.at(tmp_path / "cache")
    xml = cache.ir_xml(world.registry.model(TINY), "FP32")
    real = runtime.device_facts("CPU")
    other = DeviceFacts("CPU", "Test CPU 9000", real.default_precision)
    monkeypatch.setattr(runtime, "device_facts", lambda device="CPU": other)
    result = convert(world.registry.model(TINY), cache, ConvertOptions(check_devices=("AUTO",)))
    assert result.up_to_date and [c.device_name for c in result.runtime_checks] == ["Test CPU 9000"]
    assert sorted(c.device_name for c in recorded_checks(read_provenance(xml))) == sorted([real.name, other.name])
    run = _run_record(CliRunner().invoke(cli, ["--cache-dir", str(cache.root), "detect", str(world.image), "-m",
                                                TINY, "--format", "json"]))
    assert run["inference_precision"] == real.default_precision
    assert "the default of CPU (Test CPU 9000), checked for this IR at conversion" in run["inference_precision_reason"]


def test_explicit_precisions_a_virtual_devices_part_lacks_are_refused_up_front(world: World) -> None:
    if "FP16" in runtime.device_capabilities("CPU"):
        pytest.skip("this CPU has native f16")
    result = world.run("detect", str(world.image), "-m", TINY, "--device", "AUTO", "--inference-precision", "f16")
    assert result.exit_code == 31
    assert _first_error(result).startswith("error: OpenVINO cannot run inference precision f16 on CPU (in AUTO): the "
                                           "device has no native f16 arithmetic")


# ------------------------------------------------------------------------------------------------- onnxruntime
def test_onnxruntime_cuda_here_is_exit_31_naming_the_package(world: World) -> None:
    result = world.run("detect", str(world.image), "-m", TINY, "--backend", "onnxruntime", "--device", "CUDA")
    assert result.exit_code == 31, result.output
    assert _first_error(result).startswith("error: onnxruntime has no CUDA execution provider here: it comes with "
                                           "onnxruntime-gpu, and this onnxruntime has ")
    assert "hint: pip uninstall onnxruntime && pip install onnxruntime-gpu (it replaces onnxruntime), or pass " \
           "--device CPU" in result.stderr
    for command in (["eval", TINY, "--annotations", "x.json", "--images", "."], ["bench", TINY, "-n", "1"]):
        other = world.run(*command, "--backend", "onnxruntime", "--device", "TensorRT:1")
        assert other.exit_code == 31 and "it comes with onnxruntime-gpu" in other.stderr, other.output


LISTED = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider",
          "CoreMLExecutionProvider", "XnnpackExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize(("device", "providers", "computes"), [
    ("CPU", ["CPUExecutionProvider"], "f32"),
    ("cuda", [("CUDAExecutionProvider", {"use_tf32": 0, "device_id": 0})], "f32"),
    ("CUDA:1", [("CUDAExecutionProvider", {"use_tf32": 0, "device_id": 1})], "f32"),
    ("TensorRT:1", [("TensorrtExecutionProvider", {"trt_fp16_enable": False, "trt_int8_enable": False, "device_id": 1}),
                    ("CUDAExecutionProvider", {"use_tf32": 0, "device_id": 1})], "f32"),
    ("trt", [("TensorrtExecutionProvider", {"trt_fp16_enable": False, "trt_int8_enable": False, "device_id": 0}),
             ("CUDAExecutionProvider", {"use_tf32": 0, "device_id": 0})], "f32"),
    ("OpenVINO:GPU", [("OpenVINOExecutionProvider", {"precision": "FP32", "device_type": "GPU"})], "f32"),
    ("CoreML", ["CoreMLExecutionProvider"], None),
    ("Xnnpack", ["XnnpackExecutionProvider"], None),
    ("XnnpackExecutionProvider", ["XnnpackExecutionProvider"], None),
])
def test_provider_options_are_set_explicitly(device: str, providers: list[Any], computes: str | None) -> None:
    """The CUDA and TensorRT paths, with the provider list an onnxruntime-gpu would give (not run here)."""
    choice = ort_backend.choose_provider(device, LISTED)
    assert choice.providers(LISTED) == providers and choice.provider.computes == computes


def test_what_each_provider_computes_is_in_the_reason() -> None:
    reason = {device: ort_backend.choose_provider(device, LISTED).reason for device in ("CPU", "CUDA:1", "TensorRT",
                                                                                      "CoreML")}
    assert reason == {
        "CPU": "onnxruntime computes in f32 on the CPU",
        "CUDA:1": "onnxruntime's CUDA:1 provider computes in f32 (TF32 off (use_tf32=0))",
        "TensorRT": "onnxruntime's TensorRT provider computes in f32 (FP16 and INT8 off; what TensorRT cannot run goes "
                    "to CUDA with TF32 off)",
        "CoreML": "onnxruntime's CoreML provider (CoreMLExecutionProvider) does not say what it computes in: CoreML "
                  "chooses its arithmetic: f16 on the GPU and the Neural Engine"}
    with pytest.raises(BackendError, match="the CUDA provider takes a device number"):
        ort_backend.choose_provider("CUDA:first", LISTED)
    with pytest.raises(BackendError, match=r"has no execution provider 'GPU'; expected one of CPU, CUDA\[:N\]"):
        ort_backend.choose_provider("GPU", LISTED)


def test_a_listed_provider_that_cannot_start_is_exit_31_not_a_silent_cpu_run(world: World,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime falls back to its CPU provider when one cannot start: the engine refuses that."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    spec = prepare(EngineSpec(backend="onnxruntime", device="CUDA:1"))
    assert spec.device == "CUDA:1"
    model = artifacts.model_file(world.registry.model(TINY), world.cache, spec)
    with pytest.warns(UserWarning), pytest.raises(BackendError) as caught:
        open_engine(model, spec)
    assert caught.value.message == ("onnxruntime could not start its CUDA:1 provider (CUDAExecutionProvider); the "
                                    "session would run on CPU instead")
    with pytest.raises(BackendError, match="chooses its own arithmetic; f32 cannot be pinned"):
        monkeypatch.setattr(ort, "get_available_providers", lambda: ["CoreMLExecutionProvider", "CPUExecutionProvider"])
        prepare(EngineSpec(backend="onnxruntime", device="CoreML", inference_precision="f32"))


# ------------------------------------------------------------------------------------------------- the contract
BACKEND_NAMES = {*Backend.values(), "remote"}


def _branches_on_backend(tree: ast.AST) -> list[int]:
    """Lines that compare with a backend (``Backend.X``, its name, ``REMOTE``) or test a spec or model for a
    server (``.server is None``), or key a table by backend name."""
    def backend(node: ast.AST) -> bool:
        return (isinstance(node, ast.Constant) and node.value in BACKEND_NAMES) or (
            isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Backend") or (
            isinstance(node, ast.Name) and node.id == "REMOTE")

    def server(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "server") or (
            isinstance(node, ast.Name) and node.id == "server")

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            if any(backend(p) for p in parts) or (any(server(p) for p in parts) and any(
                    isinstance(p, ast.Constant) and p.value is None for p in parts)):
                lines.append(node.lineno)
        elif isinstance(node, ast.Dict) and any(key is not None and backend(key) for key in node.keys):
            lines.append(node.lineno)
    return lines


def test_at_most_three_modules_outside_the_engine_layer_branch_on_the_backend() -> None:
    """A new backend or device touches the engine layer, not every app (docs/architecture.md)."""
    branching = {}
    for path in sorted((ROOT / "ssdtool").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("ssdtool/backends/"):
            continue
        if lines := _branches_on_backend(ast.parse(path.read_text())):
            branching[relative] = lines
    assert len(branching) <= 3, branching
    assert _branches_on_backend(ast.parse("if spec.server is None:\n    x = {'remote': 1}")) == [1, 2]
