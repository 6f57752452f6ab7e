"""ssdtool convert / check: the IR's interface, BGR semantics, padding, precision, provenance, the gate, errors."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from ssdtool import synthetic
from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.convert import ConvertOptions, check, convert
from ssdtool.errors import DependencyError, ModelFormatError, OfflineError, ParityError
from ssdtool.imaging import generated_images, normalized_input, raw_input, resize_rgb
from ssdtool.matching import RawDetections, match_detections
from ssdtool.provenance import read_provenance
from ssdtool.registry import ModelEntry, load_registry
from ssdtool.ssd import SsdGeometry, default_boxes
from ssdtool.synthetic import PlantedDetection, TwinSpec
from tests.modelkit import install_model, tiny_entry_template

TINY_GEOMETRY = SsdGeometry.for_input(300)
# Level-1 box 676 starts at -0.0036 (the reference clamps default boxes in cx,cy,w,h form, not corners),
# so the IR must clip it; the others are ordinary boxes with distinct labels and scores.
PLANTED = (
    PlantedDetection(box_index=676, label=1, score=0.9),
    PlantedDetection(box_index=100, label=3, score=0.7),
    PlantedDetection(box_index=1097, label=80, score=0.3),
)


@pytest.fixture(scope="module")
def tiny_model() -> onnx.ModelProto:
    return synthetic.build_model(TwinSpec(variant="tiny"))


@pytest.fixture
def env(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "registry.yml", tmp_path / "cache"


def run_ir(xml: Path, tensor: np.ndarray) -> dict[str, np.ndarray]:
    """The IR's outputs at f32 (pinned: these tests compare with onnxruntime, and bf16 CPUs default to bf16)."""
    from ssdtool.backends.openvino import OpenVinoEngine

    return OpenVinoEngine(xml, inference_precision="f32").infer(tensor)


def test_tiny_ir_interface_after_reload(env: tuple[Path, Path], tiny_model: onnx.ModelProto) -> None:
    import openvino as ov

    registry_path, cache_dir = env
    install_model(cache_dir, registry_path, "tiny", tiny_model)
    entry = load_registry(registry_path).model("tiny")
    result = convert(entry, Cache.at(cache_dir))
    assert result.xml == cache_dir / "tiny" / "openvino" / "FP32" / "tiny.xml"
    model = ov.Core().read_model(result.xml)
    (image,) = model.inputs
    assert image.get_names() == {"image"}
    assert list(image.get_shape()) == [1, 3, 300, 300]
    assert image.get_element_type() == ov.Type.f32
    outputs = {next(iter(sorted(o.get_names()))): o for o in model.outputs}
    assert set(outputs) == {"bboxes", "labels", "scores"}
    assert list(outputs["bboxes"].get_shape()) == [1, 200, 4]
    assert list(outputs["labels"].get_shape()) == [1, 200]
    assert list(outputs["scores"].get_shape()) == [1, 200]
    assert outputs["bboxes"].get_element_type() == ov.Type.f32
    assert outputs["labels"].get_element_type() == ov.Type.i64
    assert result.parity is not None and result.parity.passed
    assert result.parity.recall == 1.0
    assert result.parity.reference_detections > 0
    assert result.parity.max_box_diff <= 1e-4 and result.parity.max_score_diff <= 1e-4
    # The installed folder holds exactly the IR: no temporary leftovers next to it.
    assert sorted(p.name for p in result.xml.parent.iterdir()) == ["tiny.bin", "tiny.xml"]
    assert [p.name for p in result.xml.parent.parent.iterdir()] == ["FP32"]


def test_bgr_input_equals_onnx_on_rgb(env: tuple[Path, Path], tiny_model: onnx.ModelProto) -> None:
    from ssdtool.backends.onnxruntime import OnnxRuntimeEngine

    registry_path, cache_dir = env
    source = install_model(cache_dir, registry_path, "tiny", tiny_model)
    entry = load_registry(registry_path).model("tiny")
    xml = convert(entry, Cache.at(cache_dir), ConvertOptions(verify=False)).xml
    rgb = resize_rgb(generated_images(1, seed=3, size=(300, 300))[0], entry.input)
    reference = OnnxRuntimeEngine(source).infer(normalized_input(rgb, entry.input))
    n = reference["scores"].shape[1]
    assert n > 0
    expected = RawDetections.from_outputs(np.clip(reference["bboxes"], 0, 1), reference["labels"],
                                          reference["scores"])
    ir = run_ir(xml, raw_input(rgb, "BGR"))
    got = RawDetections.from_outputs(ir["bboxes"], ir["labels"], ir["scores"])
    # Order-independent: near-tied scores may swap rows between the engines.
    for forward in (match_detections(expected, got), match_detections(got, expected)):
        assert forward.recall == 1.0
        assert forward.max_box_diff <= 1e-4 and forward.max_score_diff <= 1e-4
    np.testing.assert_allclose(ir["scores"][0, :n], reference["scores"][0], atol=1e-4)
    # Feeding RGB where the IR expects BGR changes the answer: the reversal really is inside.
    swapped = run_ir(xml, raw_input(rgb, "RGB"))
    assert not np.allclose(swapped["scores"][0, :n], reference["scores"][0], atol=1e-4)


@pytest.mark.parametrize("planted", [PLANTED, ()], ids=["three-planted", "none"])
def test_planted_model_proves_box_order_clipping_and_padding(
        env: tuple[Path, Path], planted: tuple[PlantedDetection, ...]) -> None:
    registry_path, cache_dir = env
    model = synthetic.build_model(TwinSpec(variant="tiny", planted=planted))
    install_model(cache_dir, registry_path, "planted", model)
    entry = load_registry(registry_path).model("planted")
    result = convert(entry, Cache.at(cache_dir))
    out = run_ir(result.xml, raw_input(np.zeros((300, 300, 3), np.uint8)))
    n = len(planted)
    order = sorted(planted, key=lambda p: -p.score)
    boxes = default_boxes(TINY_GEOMETRY, "ltrb")
    expected_boxes = np.clip(np.array([boxes[p.box_index] for p in order], np.float32).reshape(-1, 4), 0, 1)
    np.testing.assert_allclose(out["bboxes"][0, :n], expected_boxes, atol=1e-6)
    np.testing.assert_array_equal(out["labels"][0, :n], [p.label for p in order])
    np.testing.assert_allclose(out["scores"][0, :n], [p.score for p in order], atol=1e-6)
    # Padding: score 0, label 0 (background), zero box, up to the static count.
    assert np.all(out["scores"][0, n:] == 0)
    assert np.all(out["labels"][0, n:] == 0)
    assert np.all(out["bboxes"][0, n:] == 0)
    if planted:
        # x_min, y_min, x_max, y_max: the clipped level-1 box starts at 0 and is square.
        assert out["bboxes"][0, 0, 0] == 0.0 and out["bboxes"][0, 0, 1] == 0.0
        assert boxes[676][0] < 0  # the source box really was outside [0, 1]


def _wrap_outputs(model: onnx.ModelProto, box_scale: float, label_shift: int) -> onnx.ModelProto:
    """A source model that emits pixel boxes (x box_scale) and shifted labels, like some exports do."""
    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(model)
    graph = wrapped.graph
    for node in graph.node:
        node.output[:] = [{"bboxes": "bboxes_norm", "labels": "labels_raw"}.get(o, o) for o in node.output]
        node.input[:] = [{"bboxes": "bboxes_norm", "labels": "labels_raw"}.get(i, i) for i in node.input]
    graph.initializer.extend([
        helper.make_tensor("box_scale", TensorProto.FLOAT, [], [box_scale]),
        helper.make_tensor("label_shift", TensorProto.INT64, [], [label_shift]),
    ])
    graph.node.extend([helper.make_node("Mul", ["bboxes_norm", "box_scale"], ["bboxes"]),
                       helper.make_node("Sub", ["labels_raw", "label_shift"], ["labels"])])
    return wrapped


def test_pixel_boxes_and_label_offset_from_the_registry(env: tuple[Path, Path]) -> None:
    registry_path, cache_dir = env
    planted = synthetic.build_model(TwinSpec(variant="tiny", planted=PLANTED[1:]))
    entry_data = tiny_entry_template()
    entry_data["outputs"]["box_units"] = "pixels"
    entry_data["outputs"]["label_offset"] = 1
    install_model(cache_dir, registry_path, "pixels", _wrap_outputs(planted, 300.0, 1), entry=entry_data)
    entry = load_registry(registry_path).model("pixels")
    result = convert(entry, Cache.at(cache_dir))
    assert result.parity is not None and result.parity.passed
    out = run_ir(result.xml, raw_input(np.zeros((300, 300, 3), np.uint8)))
    boxes = default_boxes(TINY_GEOMETRY, "ltrb")
    np.testing.assert_allclose(out["bboxes"][0, :2], np.clip(boxes[[100, 1097]], 0, 1), atol=1e-6)
    np.testing.assert_array_equal(out["labels"][0, :3], [3, 80, 0])


def test_u8_nhwc_input(env: tuple[Path, Path], tiny_model: onnx.ModelProto) -> None:
    import openvino as ov

    registry_path, cache_dir = env
    install_model(cache_dir, registry_path, "tiny", tiny_model)
    entry = load_registry(registry_path).model("tiny")
    result = convert(entry, Cache.at(cache_dir), ConvertOptions(input_type="u8", input_layout="NHWC"))
    assert result.xml == cache_dir / "tiny" / "openvino" / "FP32-u8-nhwc" / "tiny.xml"
    port = ov.Core().read_model(result.xml).input(0)
    assert list(port.get_shape()) == [1, 300, 300, 3]
    assert port.get_element_type() == ov.Type.u8
    assert result.parity is not None and result.parity.passed


def test_fp16_is_smaller_and_passes_its_floor(env: tuple[Path, Path], tiny_model: onnx.ModelProto) -> None:
    registry_path, cache_dir = env
    install_model(cache_dir, registry_path, "tiny", tiny_model)
    entry = load_registry(registry_path).model("tiny")
    fp32 = convert(entry, Cache.at(cache_dir), ConvertOptions(precision="FP32", verify=False))
    fp16 = convert(entry, Cache.at(cache_dir), ConvertOptions(precision="FP16"))
    assert fp16.bin.stat().st_size < 0.6 * fp32.bin.stat().st_size
    assert fp16.parity is not None and fp16.parity.passed and fp16.parity.recall >= 0.9
    assert fp16.xml.parent.name == "FP16"


def test_provenance_round_trip_and_info(env: tuple[Path, Path], tiny_model: onnx.ModelProto) -> None:
    registry_path, cache_dir = env
    source = install_model(cache_dir, registry_path, "tiny", tiny_model)
    entry = load_registry(registry_path).model("tiny")
    result = convert(entry, Cache.at(cache_dir))
    record = read_provenance(result.xml)
    assert record is not None
    assert record["source_file"] == "model.onnx"
    assert record["source_sha256"] == entry.primary_file.sha256
    assert record["ssdtool_version"]
    assert record["labels"] == "coco_80cl_bkgr.txt"
    assert record["parameters"]["color_order"] == "BGR"
    assert record["parameters"]["mean"] == [123.675, 116.28, 103.53]
    assert record["parameters"]["precision"] == "FP32"
    assert record["parity"]["passed"] is True
    info = CliRunner().invoke(cli, ["--registry", str(registry_path), "--cache-dir", str(cache_dir), "info",
                                    "tiny", "--json"])
    assert info.exit_code == 0, info.output
    data = json.loads(info.stdout)
    assert data["state"] == "converted"
    assert data["converted"][0]["provenance"]["source_sha256"] == entry.primary_file.sha256
    text = CliRunner().invoke(cli, ["--registry", str(registry_path), "--cache-dir", str(cache_dir), "info", "tiny"])
    assert f"source_sha256: {entry.primary_file.sha256}" in text.stdout
    assert source.exists()


def test_idempotent_unless_forced_or_changed(env: tuple[Path, Path], tiny_model: onnx.ModelProto) -> None:
    registry_path, cache_dir = env
    install_model(cache_dir, registry_path, "tiny", tiny_model)
    entry = load_registry(registry_path).model("tiny")
    cache = Cache.at(cache_dir)
    first = convert(entry, cache, ConvertOptions(verify=False))
    mtime = first.xml.stat().st_mtime_ns
    again = convert(entry, cache, ConvertOptions(verify=False))
    assert again.up_to_date and again.xml.stat().st_mtime_ns == mtime
    forced = convert(entry, cache, ConvertOptions(verify=False, force=True))
    assert not forced.up_to_date and forced.xml.stat().st_mtime_ns != mtime
    # A changed parameter (mean) is a different conversion: rebuilt without --force.
    changed = replace(entry, input=replace(entry.input, mean=(120.0, 116.28, 103.53)))
    rebuilt = convert(changed, cache, ConvertOptions(verify=False))
    assert not rebuilt.up_to_date
    assert read_provenance(rebuilt.xml)["parameters"]["mean"] == [120.0, 116.28, 103.53]


def test_gate_fails_on_an_ir_without_channel_reversal(env: tuple[Path, Path], tiny_model: onnx.ModelProto) -> None:
    registry_path, cache_dir = env
    install_model(cache_dir, registry_path, "tiny", tiny_model)
    entry = load_registry(registry_path).model("tiny")
    cache = Cache.at(cache_dir)
    # Build a wrong IR: the registry claims RGB in, so no reversal is folded in; check it as if it were BGR.
    wrong_entry = replace(entry, convert=replace(entry.convert, color_order="RGB"))
    wrong = convert(wrong_entry, cache, ConvertOptions(verify=False, output_dir=cache_dir / "wrong"))
    with pytest.raises(ParityError) as caught:
        check(entry, cache, xml=wrong.xml)
    assert "disagrees with onnxruntime" in str(caught.value)
    assert caught.value.exit_code == 21


def test_failed_gate_installs_nothing(env: tuple[Path, Path], tiny_model: onnx.ModelProto,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import ssdtool.convert.flow as convert_module  # where convert looks the gate up

    registry_path, cache_dir = env
    install_model(cache_dir, registry_path, "tiny", tiny_model)
    real = convert_module.parity_check

    def sabotaged(source: Path, xml: Path, entry_: object, options: ConvertOptions, device: str = "CPU") -> object:
        report = real(source, xml, entry_, options, device)
        return replace(report, passed=False)

    monkeypatch.setattr(convert_module, "parity_check", sabotaged)
    result = CliRunner().invoke(cli, ["--registry", str(registry_path), "--cache-dir", str(cache_dir), "convert",
                                      "tiny", "--offline"])
    assert result.exit_code == 21, result.output
    assert "Nothing was installed" in result.stderr
    ir_root = cache_dir / "tiny" / "openvino"
    assert not any(ir_root.rglob("*.xml")), list(ir_root.rglob("*"))
    assert not [p for p in ir_root.iterdir() if p.name.startswith(".tmp")]


def test_not_onnx_and_truncated_files(env: tuple[Path, Path], tiny_model: onnx.ModelProto) -> None:
    registry_path, cache_dir = env
    install_model(cache_dir, registry_path, "junk", b"this is not an onnx model\n" * 10)
    install_model(cache_dir, registry_path, "cut", tiny_model.SerializeToString()[:200_000])
    registry = load_registry(registry_path)
    for name in ("junk", "cut"):
        with pytest.raises(ModelFormatError) as caught:
            convert(registry.model(name), Cache.at(cache_dir))
        assert "cannot read" in caught.value.message and "as ONNX" in caught.value.message
        assert caught.value.exit_code == 22
        assert f"ssdtool verify {name} --repair" in (caught.value.hint or "")


def test_missing_input_or_output_names_what_is_there(env: tuple[Path, Path], tiny_model: onnx.ModelProto) -> None:
    registry_path, cache_dir = env
    bad_input = tiny_entry_template()
    bad_input["input"]["name"] = "images"
    bad_output = tiny_entry_template()
    bad_output["outputs"]["scores"] = "confidences"
    install_model(cache_dir, registry_path, "bad-input", tiny_model, entry=bad_input)
    install_model(cache_dir, registry_path, "bad-output", tiny_model, entry=bad_output)
    registry = load_registry(registry_path)
    with pytest.raises(ModelFormatError, match=r"the model has no input 'images'; it has image"):
        convert(registry.model("bad-input"), Cache.at(cache_dir))
    with pytest.raises(ModelFormatError, match=r"the model has no output confidences; it has bboxes, labels, scores"):
        convert(registry.model("bad-output"), Cache.at(cache_dir))


def test_openvino_import_failure_hints_install(env: tuple[Path, Path], tiny_model: onnx.ModelProto,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    registry_path, cache_dir = env
    install_model(cache_dir, registry_path, "tiny", tiny_model)
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes 'import openvino' raise ImportError
    result = CliRunner().invoke(cli, ["--registry", str(registry_path), "--cache-dir", str(cache_dir), "convert",
                                      "tiny", "--offline"])
    assert result.exit_code == 23, result.output
    assert "error: cannot import openvino" in result.stderr
    assert "pip install openvino" in result.stderr
    with pytest.raises(DependencyError):
        convert(load_registry(registry_path).model("tiny"), Cache.at(cache_dir))


def test_offline_with_missing_source(env: tuple[Path, Path], tiny_model: onnx.ModelProto) -> None:
    registry_path, cache_dir = env
    source = install_model(cache_dir, registry_path, "tiny", tiny_model)
    source.unlink()
    with pytest.raises(OfflineError) as caught:
        convert(load_registry(registry_path).model("tiny"), Cache.at(cache_dir), offline=True)
    assert "ssdtool download tiny" in (caught.value.hint or "")
    result = CliRunner().invoke(cli, ["--registry", str(registry_path), "--cache-dir", str(cache_dir), "convert",
                                      "--offline"])
    assert result.exit_code == 12
    assert "ssdtool download tiny" in result.stderr


def test_cli_convert_json_and_check(env: tuple[Path, Path], tiny_model: onnx.ModelProto) -> None:
    registry_path, cache_dir = env
    install_model(cache_dir, registry_path, "tiny", tiny_model)
    base = ["--registry", str(registry_path), "--cache-dir", str(cache_dir)]
    result = CliRunner().invoke(cli, [*base, "convert", "tiny", "--json", "--offline"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["up_to_date"] is False
    assert data["input_shape"] == [1, 3, 300, 300]
    assert data["outputs"] == {"bboxes": [1, 200, 4], "labels": [1, 200], "scores": [1, 200]}
    assert data["parity"]["passed"] is True
    assert Path(data["xml"]).is_file() and Path(data["bin"]).is_file()
    again = CliRunner().invoke(cli, [*base, "convert", "tiny", "--offline"])
    assert again.exit_code == 0
    assert "tiny (FP32): up to date" in again.stdout
    checked = CliRunner().invoke(cli, [*base, "check", "tiny", "--offline", "--json"])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)["passed"] is True
    missing = CliRunner().invoke(cli, [*base, "check", "tiny", "--precision", "FP16", "--offline"])
    assert missing.exit_code == 22
    assert "ssdtool convert tiny --precision FP16" in missing.stderr


def test_output_dir_writes_only_the_ir(env: tuple[Path, Path], tiny_model: onnx.ModelProto, tmp_path: Path) -> None:
    registry_path, cache_dir = env
    install_model(cache_dir, registry_path, "tiny", tiny_model)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["--registry", str(registry_path), "--cache-dir", str(cache_dir), "convert",
                                      "--output-dir", str(out), "--no-verify", "--offline"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "tiny.bin", "tiny.xml"]
    assert "parity:  skipped (--no-verify)" in result.stdout



def test_output_dir_files_pass_the_output_guard_before_any_conversion(env: tuple[Path, Path],
                                                                     tiny_model: onnx.ModelProto,
                                                                     tmp_path: Path) -> None:
    import os

    from ssdtool.convert import ConvertOptions, convert
    from ssdtool.errors import UsageError

    registry_path, cache_dir = env
    install_model(cache_dir, registry_path, "tiny", tiny_model)
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "tiny.xml")  # never replaced by a file
    result = CliRunner().invoke(cli, ["--registry", str(registry_path), "--cache-dir", str(cache_dir), "convert",
                                      "tiny", "--output-dir", str(out), "--no-verify", "--offline"])
    assert result.exit_code == 2, result.output
    assert result.stderr.endswith(f"error: refusing {out / 'tiny.xml'} (an IR file --output-dir writes): it is a "
                                  "FIFO (named pipe), and --output-dir needs a regular file there\n"
                                  "hint: choose another --output-dir DIR\n")
    assert sorted(p.name for p in out.iterdir()) == ["tiny.xml"]
    (out / "tiny.xml").unlink()
    source = out / "tiny.bin"  # a source model whose name is the IR's weights file
    source.write_bytes((cache_dir / "tiny").joinpath(next(p.name for p in (cache_dir / "tiny").glob("*.onnx")))
                       .read_bytes())
    before = source.read_bytes()
    entry = load_registry(registry_path).model("tiny")
    with pytest.raises(UsageError) as caught:
        convert(entry, Cache.at(cache_dir), ConvertOptions(verify=False, output_dir=out), source=source)
    assert caught.value.message == (f"refusing {source} (an IR file --output-dir writes): it is the source ONNX "
                                    "model, and an output never replaces an input")
    assert source.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["tiny.bin"]

@pytest.mark.slow
def test_full_twin_converts_with_parity(tmp_path: Path, full_twin_path: Path) -> None:
    registry = load_registry()
    entry = registry.model("ssd-resnet34-1200-synthetic")
    cache_dir = tmp_path / "cache"
    target = cache_dir / entry.name / entry.primary_file.name
    target.parent.mkdir(parents=True)
    target.symlink_to(full_twin_path)
    result = convert(entry, Cache.at(cache_dir), ConvertOptions(parity_images=1), source=full_twin_path)
    assert result.parity is not None and result.parity.passed
    assert result.parity.reference_detections > 0
    assert result.input_shape == (1, 3, 1200, 1200)
    # FP32 saved uncompressed: the weights file holds the twin's 20 M float32 parameters.
    assert result.bin.stat().st_size > 79_000_000


# ------------------------------------------------------------------------------------------------------------------
# Hardening (issue 11): intact IRs, read-only caches, leftovers of killed conversions, full disks


def _converted(env: tuple[Path, Path], tiny_model: onnx.ModelProto) -> tuple[Path, Path, Cache, ModelEntry]:
    registry_path, cache_dir = env
    install_model(cache_dir, registry_path, "tiny", tiny_model)
    entry = load_registry(registry_path).model("tiny")
    return registry_path, cache_dir, Cache.at(cache_dir), entry


def test_weights_size_and_sha256_are_recorded_and_checked(env: tuple[Path, Path], tiny_model: onnx.ModelProto) -> None:
    import hashlib

    from ssdtool.artifacts import installed_ir as _installed_ir

    _registry_path, _cache_dir, cache, entry = _converted(env, tiny_model)
    first = convert(entry, cache, ConvertOptions(verify=False))
    binary = first.bin
    weights = read_provenance(first.xml)["weights"]
    assert weights == {"file": binary.name, "size": binary.stat().st_size,
                       "sha256": hashlib.sha256(binary.read_bytes()).hexdigest()}
    assert first.provenance["weights"] == weights
    data = binary.read_bytes()
    binary.write_bytes(data[: len(data) // 2])  # truncated: a full disk, a killed copy
    assert cache.model_state(entry) == "downloaded"  # no longer 'converted'
    assert _installed_ir(entry, cache, ConvertOptions()) is None  # detect converts again instead of failing (22)
    rebuilt = convert(entry, cache, ConvertOptions(verify=False))
    assert not rebuilt.up_to_date and rebuilt.bin.read_bytes() == data
    binary.write_bytes(bytes(b ^ 1 for b in data[:16]) + data[16:])  # same size, other bytes
    assert not convert(entry, cache, ConvertOptions(verify=False)).up_to_date


def test_up_to_date_ir_needs_no_lock_and_no_write(env: tuple[Path, Path], tiny_model: onnx.ModelProto,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefetched cache mounted read-only: convert and bench read the IR that is there."""
    import filelock

    from ssdtool import fsutil

    registry_path, cache_dir, cache, entry = _converted(env, tiny_model)
    convert(entry, cache, ConvertOptions(verify=False))

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(filelock.FileLock, "acquire", refuse)
    monkeypatch.setattr(fsutil, "ensure_folder", refuse)
    monkeypatch.setattr(fsutil, "atomic_write", refuse)
    result = CliRunner().invoke(cli, ["--registry", str(registry_path), "--cache-dir", str(cache_dir), "convert",
                                      "tiny", "--no-verify", "--offline"])
    assert result.exit_code == 0, result.output
    assert "tiny (FP32): up to date" in result.stdout


def test_leftovers_of_a_killed_conversion_are_removed_under_the_lock(env: tuple[Path, Path],
                                                                     tiny_model: onnx.ModelProto) -> None:
    import socket
    import subprocess

    _registry_path, _cache_dir, cache, entry = _converted(env, tiny_model)
    ir_root = cache.ir_root("tiny")
    ir_root.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a pid that has just exited
    host = socket.gethostname()
    stale = [f".tmp-FP32@{host}.{dead_pid}.0a1b2c3d", f".old-FP32@{host}.{dead_pid}.0",
             ".tmp-FP32-k2j4h5g6", ".tmp-FP32-fp32-abcd_123", ".old-FP32-12345"]  # names ssdtool made before
    kept = [f".tmp-FP32@{host}.{os.getpid()}.deadbeef",  # a live process: left alone
            f".tmp-FP32-u8-nhwc@{host}.{dead_pid}.0a1b2c3d",  # another target, under another lock
            ".tmp-FP32-notours-at-all"]
    for name in stale + kept:
        (ir_root / name).mkdir()
        (ir_root / name / "tiny.bin").write_bytes(b"half an IR")
    convert(entry, cache, ConvertOptions(verify=False))
    assert sorted(p.name for p in ir_root.iterdir()) == sorted(["FP32", *kept])


def test_sigkilled_conversion_leaves_nothing_behind_after_the_next_one(env: tuple[Path, Path],
                                                                       tiny_model: onnx.ModelProto) -> None:
    import subprocess
    import time

    registry_path, cache_dir, cache, entry = _converted(env, tiny_model)
    command = [sys.executable, "-m", "ssdtool", "--registry", str(registry_path), "--cache-dir", str(cache_dir),
               "convert", "tiny", "--no-verify", "--offline"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    ir_root = cache.ir_root("tiny")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(ir_root.glob(".tmp-*/*.bin")):
        time.sleep(0.005)
    process.kill()
    process.wait(timeout=30)
    if not list(ir_root.glob(".tmp-*")):
        pytest.skip("the conversion finished before it could be killed")
    convert(entry, cache, ConvertOptions(verify=False))
    assert [p.name for p in ir_root.iterdir()] == ["FP32"]


def test_up_to_date_convert_sweeps_what_a_killed_rebuild_left(env: tuple[Path, Path],
                                                              tiny_model: onnx.ModelProto) -> None:
    """A --force rebuild killed while a good IR exists leaves a temporary IR; the next convert finds the IR up to
    date and still removes it (the lock is free), keeping a live process's folder."""
    import socket
    import subprocess

    _registry_path, _cache_dir, cache, entry = _converted(env, tiny_model)
    convert(entry, cache, ConvertOptions(verify=False))
    ir_root = cache.ir_root("tiny")
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout)
    host = socket.gethostname()
    stale, live = f".tmp-FP32@{host}.{dead_pid}.0a1b2c3d", f".tmp-FP32@{host}.{os.getpid()}.deadbeef"
    for name in (stale, live):
        (ir_root / name).mkdir()
        (ir_root / name / "tiny.bin").write_bytes(b"half an IR")
    result = convert(entry, cache, ConvertOptions(verify=False))
    assert result.up_to_date
    assert sorted(p.name for p in ir_root.iterdir()) == sorted(["FP32", live])


def test_output_dir_on_its_own_file_system_is_installed_by_renames_inside_it(
        env: tuple[Path, Path], tiny_model: onnx.ModelProto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--output-dir may be a mount point (a container volume): a rename into it from anywhere outside fails with
    EXDEV, so the IR is staged inside it."""
    import errno

    registry_path, cache_dir, _cache, _entry = _converted(env, tiny_model)
    out = tmp_path / "volume"
    out.mkdir()
    real_replace = os.replace

    def replace_on_one_file_system(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        inside = out.resolve()
        if Path(dst).resolve().is_relative_to(inside) and not Path(src).resolve().is_relative_to(inside):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_on_one_file_system)
    result = CliRunner().invoke(cli, ["--registry", str(registry_path), "--cache-dir", str(cache_dir), "convert",
                                      "tiny", "--no-verify", "--offline", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["tiny.bin", "tiny.xml"]  # no temporary folder left inside


def test_write_failure_while_saving_is_a_cache_error_and_installs_nothing(
        env: tuple[Path, Path], tiny_model: onnx.ModelProto, monkeypatch: pytest.MonkeyPatch) -> None:
    import openvino

    registry_path, cache_dir, cache, _entry = _converted(env, tiny_model)

    def full_disk(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("Exception from src/core/src/pass/serialize.cpp:1: basic_ios::clear: iostream error")

    monkeypatch.setattr(openvino, "save_model", full_disk)
    result = CliRunner().invoke(cli, ["--registry", str(registry_path), "--cache-dir", str(cache_dir), "convert",
                                      "tiny", "--no-verify", "--offline", "--json"])
    assert result.exit_code == 5, result.output
    assert "error: cannot write the IR into " in result.stderr and "basic_ios::clear" in result.stderr
    assert "bytes free there; nothing was installed" in result.stderr
    assert json.loads(result.stdout)["error"] == "CacheError"
    assert [p.name for p in cache.ir_root("tiny").iterdir()] == []  # no IR, no temporary folder


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_dir_that_cannot_be_made_is_a_usage_error(env: tuple[Path, Path], tiny_model: onnx.ModelProto) -> None:
    registry_path, cache_dir, _cache, _entry = _converted(env, tiny_model)
    result = CliRunner().invoke(cli, ["--registry", str(registry_path), "--cache-dir", str(cache_dir), "convert",
                                      "tiny", "--no-verify", "--offline", "--output-dir", "/proc/xx"])
    assert result.exit_code == 2, result.output
    assert "error: cannot use --output-dir /proc/xx: No such file or directory" in result.stderr


def test_parity_hint_names_the_convert_command_when_detect_converts(
        env: tuple[Path, Path], tiny_model: onnx.ModelProto, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """detect has no --no-verify: a hint printed by detect names the command that has it."""
    from PIL import Image

    import ssdtool.convert.flow as convert_module  # where convert looks the gate up

    registry_path, cache_dir, _cache, _entry = _converted(env, tiny_model)
    real = convert_module.parity_check

    def failing(*args: object, **kwargs: object) -> convert_module.ParityReport:
        return replace(real(*args, **kwargs), passed=False)

    monkeypatch.setattr(convert_module, "parity_check", failing)
    Image.new("RGB", (20, 20)).save(tmp_path / "in.png")
    result = CliRunner().invoke(cli, ["--registry", str(registry_path), "--cache-dir", str(cache_dir), "detect",
                                      "--backend", "openvino", str(tmp_path / "in.png")])
    assert result.exit_code == 21, result.output
    assert "hint: report this with 'ssdtool --version'; 'ssdtool convert tiny --precision FP32 --no-verify' " \
           "installs it anyway (not advised)" in result.stderr
