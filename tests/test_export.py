"""ssdtool export: the three layouts parse (JSON, Triton's own protobuf message, YAML), the exported IR is the cache's
byte for byte and runs the same, versions are added and replaced as documented, writers take turns, and unsafe
output folders or bad options are refused with their exit codes. All on the tiny twin, converted once."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.registry import load_registry
from tests.modelkit import install_model

MODEL = "tiny"


@dataclass(frozen=True)
class World:
    registry: Path
    cache: Path

    def args(self, *extra: str) -> list[str]:
        return ["--registry", str(self.registry), "--cache-dir", str(self.cache), *extra]

    def ir(self) -> Path:
        return Cache.at(self.cache).ir_xml(MODEL, "FP32")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_twin_path: Path) -> World:
    from ssdtool.convert import ConvertOptions, convert

    root = tmp_path_factory.mktemp("export-world")
    registry, cache = root / "registry.yml", root / "cache"
    install_model(cache, registry, MODEL, tiny_twin_path.read_bytes())
    convert(load_registry(registry).model(MODEL), Cache.at(cache), ConvertOptions(verify=False))
    return World(registry, cache)


def export(world: World, output: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, world.args("export", MODEL, "--output-dir", str(output), "--offline", *args))


def export_json(world: World, output: Path, *args: str) -> dict[str, Any]:
    result = export(world, output, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def model_config_pb2() -> ModuleType:
    """Triton's ModelConfig message from tritonclient (a test dependency). Loaded from its file: importing
    ``tritonclient.grpc`` would need grpcio, and the module itself needs only protobuf."""
    spec = importlib.util.find_spec("tritonclient")
    assert spec is not None and spec.submodule_search_locations, "pip install -e '.[test]' installs tritonclient"
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


PB2 = model_config_pb2()


# ------------------------------------------------------------------------------------------------------- layouts
def test_ovms_repository_config_and_byte_identical_ir(world: World, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    data = export_json(world, out, "--format", "ovms")
    assert set(data) == {"model", "served_name", "format", "output_dir", "version", "replaced", "version_dir",
                         "ir_precision", "device", "hint", "inference_precision", "precision_reason", "storage_uri",
                         "source_xml", "sha256", "signature", "files", "seconds"}  # as docs/export.md lists them
    assert (data["format"], data["version"], data["replaced"], data["served_name"]) == ("ovms", 1, False, MODEL)
    assert data["files"] == [str(out / "config.json"), str(out / MODEL / "ssdtool-export.json")]
    assert (data["inference_precision"], data["device"], data["hint"]) == ("f32", "CPU", "LATENCY")
    config = json.loads((out / "config.json").read_text())
    assert config == {"model_config_list": [{"config": {
        "name": MODEL, "base_path": MODEL, "target_device": "CPU",
        "plugin_config": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}}}]}
    # base_path is relative to config.json's folder, as OVMS resolves it.
    version = out / config["model_config_list"][0]["config"]["base_path"] / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.bin", "model.xml"]
    assert (version / "model.xml").read_bytes() == world.ir().read_bytes()
    assert (version / "model.bin").read_bytes() == world.ir().with_suffix(".bin").read_bytes()
    # Provenance travels in the IR, and the manifest records what the export decided.
    from ssdtool.provenance import read_provenance

    assert read_provenance(version / "model.xml") == read_provenance(world.ir())
    manifest = json.loads((out / MODEL / "ssdtool-export.json").read_text())
    assert manifest["versions"]["1"]["sha256"] == data["sha256"]
    assert manifest["versions"]["1"]["inference_precision"] == "f32"
    assert not [p.name for p in (out / MODEL).iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_human_summary_names_the_version_the_settings_and_the_next_step(world: World, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    first = export(world, out, "--format", "ovms")
    again = export(world, out, "--format", "ovms", "--force")
    assert first.exit_code == again.exit_code == 0
    assert first.stdout.startswith(f"{MODEL}: added version 1 of {MODEL} in {out} (ovms) in ")
    assert again.stdout.startswith(f"{MODEL}: replaced version 1 of {MODEL} in {out} (ovms) in ")
    assert "  server:    CPU, LATENCY hint\n" in first.stdout
    assert "  precision: IR FP32, inference f32 (auto written as f32: the server's device is not known" in first.stdout
    assert f"  wrote:     {out / 'config.json'}\n" in first.stdout
    assert f"-v {out}:/models:ro openvino/model_server:latest --config_path /models/config.json" in first.stdout
    triton = export(world, tmp_path / "triton", "--format", "triton")
    assert "inference not pinned (Triton's OpenVINO backend can pin only bf16" in triton.stdout


def test_exported_ir_runs_like_the_cached_one(world: World, tmp_path: Path) -> None:
    from ssdtool.backends.openvino import OpenVinoEngine

    out = tmp_path / "repo"
    export_json(world, out, "--format", "triton", "--inference-precision", "auto")
    tensor = np.random.default_rng(0).uniform(0, 255, (1, 3, 300, 300)).astype(np.float32)
    exported = OpenVinoEngine(out / MODEL / "1" / "model.xml", inference_precision="f32").infer(tensor)
    cached = OpenVinoEngine(world.ir(), inference_precision="f32").infer(tensor)
    assert set(exported) == set(cached) == {"bboxes", "labels", "scores"}
    for name in cached:
        assert np.array_equal(exported[name], cached[name]), name
    assert float(cached["scores"].max()) > 0  # the twin detects something, so the comparison means something


def test_triton_config_parses_into_tritons_model_config(world: World, tmp_path: Path) -> None:
    from google.protobuf import text_format

    out = tmp_path / "repo"
    data = export_json(world, out, "--format", "triton", "--hint", "throughput", "--inference-precision", "bf16")
    assert not (out / "config.json").exists()
    text = (out / MODEL / "config.pbtxt").read_text()
    pb2 = PB2
    config = text_format.Parse(text, pb2.ModelConfig())
    assert (config.name, config.backend, config.max_batch_size) == (MODEL, "openvino", 0)
    inputs = [(t.name, pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.input]
    outputs = [(t.name, pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.output]
    assert inputs == [("image", "TYPE_FP32", [1, 3, 300, 300])]
    assert outputs == [("bboxes", "TYPE_FP32", [1, 200, 4]), ("labels", "TYPE_INT64", [1, 200]),
                       ("scores", "TYPE_FP32", [1, 200])]
    assert [(g.count, pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [(1, "KIND_CPU")]
    assert {k: v.string_value for k, v in config.parameters.items()} == {
        "TARGET_DEVICE": "CPU", "PERFORMANCE_HINT": "THROUGHPUT", "HINT_BF16": "YES"}
    assert data["signature"]["inputs"] == [{"name": "image", "element_type": "f32", "shape": [1, 3, 300, 300]}]
    assert sorted(p.name for p in (out / MODEL / "1").iterdir()) == ["model.bin", "model.xml"]


def test_triton_types_and_dims_are_the_irs_own(world: World, tmp_path: Path) -> None:
    """What the pbtxt says is read from the IR: checked against OpenVINO's view of the exported file."""
    import openvino as ov
    from google.protobuf import text_format

    out = tmp_path / "repo"
    export_json(world, out, "--format", "triton")
    pb2 = PB2
    config = text_format.Parse((out / MODEL / "config.pbtxt").read_text(), pb2.ModelConfig())
    model = ov.Core().read_model(out / MODEL / "1" / "model.xml")
    triton_of = {"f32": "TYPE_FP32", "i64": "TYPE_INT64", "u8": "TYPE_UINT8"}
    for tensors, ports in ((config.input, model.inputs), (config.output, model.outputs)):
        assert [(t.name, pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors] == [
            (p.get_any_name(), triton_of[p.get_element_type().get_type_name()], list(p.get_shape())) for p in ports]
    assert "HINT_BF16" not in config.parameters  # auto: the server's default, which Triton cannot pin to f32


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_pbtxt_strings_round_trip_through_protobufs_parser(value: str) -> None:
    """Tensor and model names reach config.pbtxt as text-format literals; any text parses back to itself."""
    from google.protobuf import text_format

    from ssdtool.export.layouts import pbtxt_string

    config = text_format.Parse(f"name: {pbtxt_string(value)}", PB2.ModelConfig())
    assert config.name == value


@pytest.mark.parametrize("precision", ["f32", "f16"])
def test_triton_refuses_a_precision_it_cannot_pin(world: World, tmp_path: Path, precision: str) -> None:
    result = export(world, tmp_path / "repo", "--format", "triton", "--inference-precision", precision)
    assert result.exit_code == 2
    assert f"cannot pin inference precision {precision}" in result.output
    assert "--format ovms or kserve" in result.output
    assert not (tmp_path / "repo" / MODEL).exists()  # refused before anything was written


def test_kserve_manifest_and_repository(world: World, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    uri = "s3://models/ssd/tiny"
    data = export_json(world, out, "--format", "kserve", "--storage-uri", uri, "--inference-precision", "bf16",
                       "--device", "GPU")
    assert data["storage_uri"] == uri
    manifest = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"]) == (
        "serving.kserve.io/v1beta1", "InferenceService", MODEL)
    model = manifest["spec"]["predictor"]["model"]
    assert (model["modelFormat"], model["runtime"], model["storageUri"]) == ({"name": "openvino"}, "kserve-openvino",
                                                                            uri)
    device_arg, plugin_arg = model["args"]
    assert device_arg == "--target_device=GPU"
    assert json.loads(plugin_arg.removeprefix("--plugin_config=")) == {"PERFORMANCE_HINT": "LATENCY",
                                                                       "INFERENCE_PRECISION_HINT": "bf16"}
    entry = json.loads((out / "config.json").read_text())["model_config_list"][0]["config"]
    assert (entry["target_device"], entry["plugin_config"]["INFERENCE_PRECISION_HINT"]) == ("GPU", "bf16")
    assert (out / MODEL / "1" / "model.xml").read_bytes() == world.ir().read_bytes()


@pytest.mark.parametrize(("uri", "message"), [
    ("ftp://host/models", "error: --storage-uri 'ftp://host/models' is not a storage URI KServe downloads from "
                          "(scheme 'ftp')"),
    ("/data/models", "is not a storage URI KServe downloads from (no scheme)"),
    ("s3:///no-bucket", "is not a storage URI KServe downloads from (no bucket, claim or host)"),
    ("https://:80/m", "is not a storage URI KServe downloads from (no bucket, claim or host)"),
    ("https://user:hunter2@example.com/m", "error: --storage-uri 'https://***@example.com/m' carries credentials "
                                           "(user info before '@')"),
    ("https://example.com/m?sig=hunter2", "error: --storage-uri 'https://example.com/m?...' carries a query or "
                                          "fragment (not shown)"),
    ("s3://b/m#access_token=hunter2", "error: --storage-uri 's3://b/m#...' carries a query or fragment (not shown)"),
    ("s3://b/m?pass=hunter2", "error: --storage-uri 's3://b/m?...' carries a query or fragment (not shown)"),
    ("https://user:hunter2@h/m?token=hunter2#hunter2", "error: --storage-uri 'https://***@h/m?...' carries "
                                                       "credentials"),
    ("s3://b/m?", "error: --storage-uri 's3://b/m?...' carries a query or fragment"),
    ("S3://bucket/m", "error: --storage-uri 'S3://bucket/m' has the scheme 'S3': KServe's storage initializer "
                      "matches schemes case-sensitively and knows only 's3'\nhint: pass --storage-uri 's3://bucket/m'"),
    ("s3://bucket:99999/m", "error: --storage-uri 's3://bucket:99999/m' has an invalid port; expected a number from "
                            "1 to 65535"),
    ("https://host:0/m", "has an invalid port; expected a number from 1 to 65535"),
    ("https://host:http/m", "has an invalid port; expected a number from 1 to 65535"),
    ("s3://bucket/a b", "spaces, quotes or control characters"),
    ("s3://bucket/a\x1b[2Jb", "error: --storage-uri 's3://bucket/a\\x1b[2Jb' contains spaces, quotes or control"),
])
def test_bad_storage_uri_is_refused(world: World, tmp_path: Path, uri: str, message: str) -> None:
    """Exit 2 before anything is written, the secret never echoed (not in the message, not in --json)."""
    for extra in ((), ("--json",)):
        result = export(world, tmp_path / "repo", "--format", "kserve", "--storage-uri", uri, *extra)
        assert result.exit_code == 2, result.output
        assert (message in result.output) if not extra else json.loads(result.stdout)["exit_code"] == 2
        assert "hunter2" not in result.output and "sig=" not in result.output and "pass=" not in result.output
        assert not (tmp_path / "repo").exists()  # not even the folder: refused before anything was created


def test_storage_uri_with_a_port_is_written_as_given(world: World, tmp_path: Path) -> None:
    uri = "https://models.example.com:8443/ssd/tiny"
    assert export_json(world, tmp_path / "repo", "--format", "kserve", "--storage-uri", uri)["storage_uri"] == uri
    manifest = yaml.safe_load((tmp_path / "repo" / "inferenceservice.yaml").read_text())
    assert manifest["spec"]["predictor"]["model"]["storageUri"] == uri


def test_storage_uri_is_required_for_kserve_and_refused_elsewhere(world: World, tmp_path: Path) -> None:
    missing = export(world, tmp_path / "a", "--format", "kserve")
    assert missing.exit_code == 2 and "--format kserve needs --storage-uri" in missing.output
    extra = export(world, tmp_path / "b", "--format", "ovms", "--storage-uri", "s3://b/m")
    assert extra.exit_code == 2 and "--storage-uri applies to --format kserve only" in extra.output


@pytest.mark.parametrize(("served", "message"), [
    ("Bad_Name", "error: --served-name 'Bad_Name' is not a DNS-1035 label"),
    ("", "error: --served-name is empty; the server needs a name for the model (it also names its folder)\n"
         f"hint: pass --served-name NAME (a DNS-1035 label), or leave it out to use '{MODEL}'"),
    ("a\nb", "error: --served-name 'a\\nb' is not a DNS-1035 label"),
    ("a" * 64, "is not a DNS-1035 label (lower-case letters, digits and '-', starting with a letter, at most 63"),
])
def test_served_name_must_be_a_dns_label(world: World, tmp_path: Path, served: str, message: str) -> None:
    result = export(world, tmp_path / "repo", "--format", "ovms", "--served-name", served)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "repo").exists()


def test_served_name_names_the_model_on_the_server(world: World, tmp_path: Path) -> None:
    data = export_json(world, tmp_path / "repo", "--format", "ovms", "--served-name", "ssd-prod")
    assert data["served_name"] == "ssd-prod" and (tmp_path / "repo" / "ssd-prod" / "1" / "model.xml").is_file()


# ------------------------------------------------------------------------------------------------------- versions
def test_second_export_adds_version_2_and_force_replaces(world: World, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    assert export_json(world, out, "--format", "ovms")["version"] == 1
    second = export_json(world, out, "--format", "ovms", "--hint", "throughput")
    assert (second["version"], second["replaced"]) == (2, False)
    config = json.loads((out / "config.json").read_text())
    assert len(config["model_config_list"]) == 1  # one entry per model, now with the latest settings
    assert config["model_config_list"][0]["config"]["plugin_config"]["PERFORMANCE_HINT"] == "THROUGHPUT"

    (out / MODEL / "2" / "model.xml").write_text("damaged")
    (out / MODEL / "2" / "stray.txt").write_text("left by hand")
    refused = export(world, out, "--format", "ovms", "--version", "2")
    assert refused.exit_code == 2 and "version 2 of tiny already exists" in refused.output
    assert "--force" in refused.output and (out / MODEL / "2" / "model.xml").read_text() == "damaged"

    forced = export_json(world, out, "--format", "ovms", "--force")
    assert (forced["version"], forced["replaced"]) == (2, True)  # --force alone replaces the latest
    assert (out / MODEL / "2" / "model.xml").read_bytes() == world.ir().read_bytes()
    assert not (out / MODEL / "2" / "stray.txt").exists()  # the whole version was replaced
    assert export_json(world, out, "--format", "ovms", "--version", "1", "--force")["replaced"] is True
    assert export_json(world, out, "--format", "ovms", "--version", "7")["version"] == 7
    assert sorted(p.name for p in (out / MODEL).iterdir() if p.is_dir()) == ["1", "2", "7"]
    manifest = json.loads((out / MODEL / "ssdtool-export.json").read_text())
    assert list(manifest["versions"]) == ["1", "2", "7"]


def test_other_models_in_config_json_are_kept(world: World, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    out.mkdir()
    other = {"config": {"name": "resnet", "base_path": "/models/resnet"}}
    (out / "config.json").write_text(json.dumps({"model_config_list": [other], "mediapipe_config_list": []}))
    export_json(world, out, "--format", "ovms")
    config = json.loads((out / "config.json").read_text())
    assert config["mediapipe_config_list"] == []
    assert [e["config"]["name"] for e in config["model_config_list"]] == ["resnet", MODEL]
    assert config["model_config_list"][0] == other


def test_corrupt_config_json_is_refused_before_anything_is_written(world: World, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    out.mkdir()
    (out / "config.json").write_text("{not json")
    result = export(world, out, "--format", "ovms")
    assert result.exit_code == 2 and "is not valid JSON" in result.output
    assert (out / "config.json").read_text() == "{not json" and not (out / MODEL / "1").exists()


# ------------------------------------------------------------------------------------------------------- locking
def test_an_exporter_waits_for_the_lock_and_times_out(world: World, tmp_path: Path) -> None:
    from filelock import FileLock

    out = tmp_path / "repo"
    out.mkdir()
    with FileLock(str(out / ".ssdtool-export.lock")):
        result = export(world, out, "--format", "ovms", "--lock-timeout", "0.3")
    assert result.exit_code == 13, result.output
    assert "another ssdtool export has been writing into" in result.output and "--lock-timeout" in result.output
    assert not (out / MODEL / "1").exists()
    assert export_json(world, out, "--format", "ovms")["version"] == 1  # the lock is free again


def test_a_waiting_exporter_goes_on_when_the_lock_is_released(world: World, tmp_path: Path) -> None:
    import threading
    import time

    from filelock import FileLock

    out = tmp_path / "repo"
    out.mkdir()
    results: list[Result] = []
    lock = FileLock(str(out / ".ssdtool-export.lock"))
    lock.acquire()
    waiter = threading.Thread(target=lambda: results.append(export(world, out, "--format", "ovms", "--json")))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not (out / MODEL / "1").exists()  # waiting, and nothing written meanwhile
    lock.release()
    waiter.join(timeout=60)
    assert results[0].exit_code == 0, results[0].output
    assert json.loads(results[0].stdout)["version"] == 1


def test_two_exporting_processes_get_distinct_versions(world: World, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    command = [sys.executable, "-m", "ssdtool", *world.args("export", MODEL, "--format", "ovms", "--output-dir",
                                                           str(out), "--offline", "--json", "--progress", "none")]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OPENVINO_LOG_LEVEL": "0"}) for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    versions = sorted(json.loads(stdout)["version"] for stdout, _err in outputs)
    assert versions == [1, 2]
    for version in versions:
        assert (out / MODEL / str(version) / "model.bin").read_bytes() == world.ir().with_suffix(".bin").read_bytes()
    assert list(json.loads((out / MODEL / "ssdtool-export.json").read_text())["versions"]) == ["1", "2"]


# ------------------------------------------------------------------------------------------------------- safety
def test_output_dir_that_is_a_link_or_a_file_is_refused(world: World, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    result = export(world, link, "--format", "ovms")
    assert result.exit_code == 2 and "it is a symbolic link" in result.output and "--output-dir" in result.output
    assert list(target.iterdir()) == []

    plain = tmp_path / "file"
    plain.write_text("keep me")
    result = export(world, plain, "--format", "triton")
    assert result.exit_code == 2 and "it is a regular file, expected a folder" in result.output
    assert plain.read_text() == "keep me"


def test_a_planted_model_folder_link_is_refused(world: World, tmp_path: Path) -> None:
    out, target = tmp_path / "repo", tmp_path / "victim"
    out.mkdir()
    target.mkdir()
    (out / MODEL).symlink_to(target)
    result = export(world, out, "--format", "ovms")
    assert result.exit_code == 2 and f"refusing to export into {out / MODEL}" in result.output
    assert list(target.iterdir()) == []


def test_a_link_at_config_json_is_refused_not_followed(world: World, tmp_path: Path) -> None:
    out, secret = tmp_path / "repo", tmp_path / "secret.json"
    out.mkdir()
    secret.write_text('{"model_config_list": []}')
    (out / "config.json").symlink_to(secret)
    result = export(world, out, "--format", "ovms")
    assert result.exit_code == 2 and "refusing to read" in result.output
    assert secret.read_text() == '{"model_config_list": []}'


def tree(root: Path) -> dict[str, bytes | str]:
    """Everything under ``root``: file bytes, link targets and folders, to compare byte for byte."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        found[key] = (f"link to {os.readlink(path)}" if path.is_symlink() else "folder" if path.is_dir()
                      else path.read_bytes())
    return found


@pytest.fixture(scope="module")
def exported(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with version 1 of the model (ovms), copied by the tests that plant something in it."""
    out = tmp_path_factory.mktemp("exported") / "repo"
    assert export_json(world, out, "--format", "ovms")["version"] == 1
    return out


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


BOMB = "\n".join(["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]",
                  *[f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 12)],
                  "metadata: {name: *a11}"]) + "\n"
RECORD = f"{MODEL}/ssdtool-export.json"


@pytest.mark.parametrize(("case", "export_format", "message"), [
    ("link at the record", "ovms", f"error: refusing to read {{out}}/{RECORD}: it is a symbolic link (to "
                                   "{victim}); an export reads and writes only real files in its repository, never "
                                   "through a link\nhint: put the file itself at"),
    ("folder at the record", "ovms", f"refusing to replace {{out}}/{RECORD}: it is a folder, expected a regular file"),
    ("deep record", "ovms", f"error: {{out}}/{RECORD} is not valid JSON (nested too deeply (more than about 1,000 "
                            "levels)); it cannot be updated"),
    ("record not a record", "ovms", f"error: {{out}}/{RECORD} is not an ssdtool export record (expected an object "
                                    "with a versions object)"),
    ("record with NaN", "ovms", f"error: {{out}}/{RECORD} is not valid JSON (versions[\"1\"].x: NaN is not a "
                                "JSON number (non-finite values are refused))"),
    ("deep config.json", "ovms", "error: {out}/config.json is not valid JSON (nested too deeply"),
    ("config.json with 1e400", "ovms", "error: {out}/config.json is not valid JSON (timeout: the number 1e400 is too "
                                       "large for a 64-bit float)"),
    ("manifest alias bomb", "kserve", "error: {out}/inferenceservice.yaml cannot be read (the document expands to "
                                      "more than 200,000 values (through YAML aliases, it seems"),
    ("manifest not yaml", "kserve", "error: {out}/inferenceservice.yaml cannot be read (not valid YAML:"),
    ("manifest of a list", "kserve", "error: {out}/inferenceservice.yaml is not an InferenceService manifest "
                                     "(expected a mapping with metadata.name)"),
    ("manifest of another model", "kserve", "error: {out}/inferenceservice.yaml describes another model ('resnet')"),
    ("folder at config.pbtxt", "triton", f"error: refusing to replace {{out}}/{MODEL}/config.pbtxt: it is a folder, "
                                         "expected a regular file"),
    ("FIFO at config.json", "ovms", "error: refusing to read {out}/config.json: it is a FIFO (named pipe), expected a "
                                    "regular file"),
    ("file at the model folder", "ovms", f"error: refusing to export into {{out}}/{MODEL}: it is a regular file, "
                                         "expected a folder"),
])
def test_the_repository_is_checked_before_anything_is_written(world: World, exported: Path, tmp_path: Path,
                                                              case: str, export_format: str, message: str) -> None:
    """A refused export leaves the repository byte-identical: no version 2, config.json, record, manifest and
    lock file as they were."""
    import shutil

    out, victim = tmp_path / "repo", tmp_path / "victim.json"
    shutil.copytree(exported, out, symlinks=True)
    victim.write_text('{"versions": {}}')
    record, config = out / RECORD, out / "config.json"
    if case == "link at the record":
        record.unlink()
        record.symlink_to(victim)
    elif case == "folder at the record":
        record.unlink()
        record.mkdir()
    elif case in ("deep record", "deep config.json"):
        (record if case == "deep record" else config).write_text(_deep(100_000))
    elif case == "record not a record":
        record.write_text('{"versions": [1, 2]}')
    elif case == "record with NaN":
        record.write_text('{"versions": {"1": {"x": NaN}}}')
    elif case == "config.json with 1e400":
        config.write_text('{"model_config_list": [], "timeout": 1e400}')
    elif case.startswith("manifest"):
        (out / "inferenceservice.yaml").write_text({
            "manifest alias bomb": BOMB, "manifest not yaml": "metadata: {name: [\n",
            "manifest of a list": "- metadata: {name: tiny}\n",
            "manifest of another model": "metadata: {name: resnet}\n"}[case])
    elif case == "folder at config.pbtxt":
        (out / MODEL / "config.pbtxt").mkdir()
    elif case == "FIFO at config.json":
        config.unlink()
        os.mkfifo(config)
    else:
        shutil.rmtree(out / MODEL)
        (out / MODEL).write_text("not a folder")
    before = tree(out) if case != "FIFO at config.json" else None
    extra = ("--storage-uri", "s3://b/m") if export_format == "kserve" else ()
    result = export(world, out, "--format", export_format, *extra)
    assert result.exit_code == 2, result.output
    assert message.format(out=out, victim=victim) in result.output
    assert "in the cache" not in result.output
    if before is not None:
        assert tree(out) == before
    assert not (out / MODEL / "2").exists() and victim.read_text() == '{"versions": {}}'


def test_a_refused_export_into_a_new_folder_creates_nothing(world: World, tmp_path: Path) -> None:
    """The repository's own folder and lock file appear only once every check has passed."""
    out = tmp_path / "new" / "repo"
    result = export(world, out, "--format", "triton", "--inference-precision", "f32")
    assert result.exit_code == 2 and "cannot pin inference precision f32" in result.output
    assert not (tmp_path / "new").exists()


def test_configuration_that_cannot_be_made_fails_before_the_version_is_installed(
        world: World, exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The configuration files are made before the version is installed: an IR tensor Triton has no type for
    (exit 22) leaves the repository as it was."""
    import shutil

    from ssdtool.export import api
    from ssdtool.export.signature import Signature, TensorSpec

    out = tmp_path / "repo"
    shutil.copytree(exported, out, symlinks=True)
    before = tree(out)
    odd = Signature(inputs=(TensorSpec("image", "f32", (1, 3, 300, 300)),), outputs=(TensorSpec("x", "u4", (1,)),))
    monkeypatch.setattr(api, "read_signature", lambda _xml: odd)
    result = export(world, out, "--format", "triton")
    assert result.exit_code == 22, result.output
    assert "tensor 'x' has element type u4, which Triton has no data type for" in result.output
    assert tree(out) == before


@pytest.mark.parametrize("name", ["²", "٣", "１", "01", "3a", "-1", "99999999999999999999"])
def test_only_ascii_version_numbers_are_versions(world: World, exported: Path, tmp_path: Path, name: str) -> None:
    """A folder a server would not take as a version (Python's isdigit takes superscripts and other scripts' digits;
    servers keep versions as signed 64-bit integers) is neither a version nor a crash, and is left alone."""
    import shutil

    out = tmp_path / "repo"
    shutil.copytree(exported, out, symlinks=True)
    (out / MODEL / name).mkdir()
    (out / MODEL / name / "keep.txt").write_text("mine")
    data = export_json(world, out, "--format", "ovms")
    assert (data["version"], data["replaced"]) == (2, False)
    assert (out / MODEL / name / "keep.txt").read_text() == "mine"
    assert list(json.loads((out / RECORD).read_text())["versions"]) == ["1", "2"]


def test_versions_are_bounded_by_what_servers_read(world: World, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    for version in ("9223372036854775808", "99999999999999999999999"):
        result = export(world, out, "--format", "ovms", "--version", version)
        assert result.exit_code == 2, result.output
        assert (f"error: --version must be from 1 to 9223372036854775807 (OVMS and Triton read versions as signed "
                f"64-bit integers), got {version}\n") in result.output
        assert not out.exists()
    largest = export_json(world, out, "--format", "ovms", "--version", "9223372036854775807")
    assert largest["version"] == 9223372036854775807
    before = tree(out)
    result = export(world, out, "--format", "ovms")
    assert result.exit_code == 2, result.output
    assert (f"error: version 9223372036854775807 of {MODEL} in {out} is the largest a server reads; there is no next "
            "version") in result.output
    assert tree(out) == before


def test_weights_that_differ_from_their_provenance_are_not_installed(world: World, tmp_path: Path) -> None:
    """The copy is compared with the weights digest in the IR's provenance before it is renamed into place."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(world.cache, cache)
    binary = Cache.at(cache).ir_xml(MODEL, "FP32").with_suffix(".bin")
    data = bytearray(binary.read_bytes())
    data[len(data) // 2] ^= 0x01  # a weight, not a shape constant; same size, so the cached IR still looks current
    binary.write_bytes(bytes(data))
    out = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["--registry", str(world.registry), "--cache-dir", str(cache), "export", MODEL,
                                      "--format", "ovms", "--output-dir", str(out), "--offline"])
    assert result.exit_code == 5, result.output
    assert "does not have the sha256 its provenance records" in result.output and "convert --force" in result.output
    assert not (out / MODEL / "1").exists() and not (out / "config.json").exists()
    assert not [p for p in (out / MODEL).iterdir() if p.name.startswith(".tmp-")]


def test_leftovers_of_a_killed_export_are_removed(world: World, tmp_path: Path) -> None:
    import socket

    out = tmp_path / "repo"
    leftover = out / MODEL / f".tmp-1@{socket.gethostname()}.999999999.0badf00d"
    leftover.mkdir(parents=True)
    (leftover / "model.bin").write_bytes(b"half")
    assert export_json(world, out, "--format", "ovms")["version"] == 1
    assert not leftover.exists()


def test_errors_are_json_on_stdout_with_json(world: World, tmp_path: Path) -> None:
    result = export(world, tmp_path / "repo", "--format", "kserve", "--storage-uri", "ftp://h/m", "--json")
    assert result.exit_code == 2
    error = json.loads(result.stdout)
    assert (error["error"], error["exit_code"]) == ("UsageError", 2) and "not a storage URI" in error["message"]


# ------------------------------------------------------------------------------------------------------- Python API
def test_python_api_returns_the_result(world: World, tmp_path: Path) -> None:
    import ssdtool

    entry = load_registry(world.registry).model(MODEL)
    options = ssdtool.ExportOptions(format="ovms", output_dir=tmp_path / "repo", inference_precision="bf16",
                                    hint="throughput")
    result = ssdtool.export_model(entry, Cache.at(world.cache), options, offline=True)
    assert isinstance(result, ssdtool.ExportResult)
    assert (result.version, result.inference_precision, result.hint, result.ir_precision) == (1, "bf16",
                                                                                              "THROUGHPUT", "FP32")
    assert result.version_dir == tmp_path / "repo" / MODEL / "1"
    assert result.files[0] == tmp_path / "repo" / "config.json"


def test_exporting_loads_neither_the_converter_nor_nncf(world: World, tmp_path: Path) -> None:
    """An export copies the installed IR: the converter (the flow, the graph rewrite, the parity gate, quantize) and
    NNCF stay unloaded, in a fresh interpreter (docs/architecture.md, "Layers"). What identifies an installed IR
    (convert.options) is read."""
    code = ("import json, sys\n"
            "from ssdtool.cache import Cache\nfrom ssdtool.export import ExportOptions, export_model\n"
            "from ssdtool.registry import load_registry\n"
            f"entry = load_registry({str(world.registry)!r}).model({MODEL!r})\n"
            f"options = ExportOptions(format='triton', output_dir={str(tmp_path / 'repo')!r})\n"
            f"result = export_model(entry, Cache.at({str(world.cache)!r}), options, offline=True)\n"
            "print(json.dumps([result.version, sorted(sys.modules)]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    version, modules = json.loads(run.stdout)
    assert version == 1 and "ssdtool.export.repository" in modules and "openvino" in modules  # it did export
    converter = ("ssdtool.convert.flow", "ssdtool.convert.graph", "ssdtool.convert.gate", "ssdtool.convert.workspace",
                 "ssdtool.quantize", "nncf", "onnx", "onnxruntime")
    assert not [m for m in modules if m.startswith(converter)]
