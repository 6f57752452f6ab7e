"""INT8: NNCF quantization of the tiny twin end to end, calibration sets, the accuracy guard, the missing extra."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from ssdtool import synthetic
from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.convert import ConvertOptions, convert
from ssdtool.errors import DependencyError, UsageError
from ssdtool.imaging import generated_images
from ssdtool.provenance import read_provenance
from ssdtool.quantize import GUARD_MIN_RECALL, load_rgb, resolve_calibration
from ssdtool.registry import load_registry
from ssdtool.synthetic import TwinSpec
from tests.modelkit import TINY_URL, install_model

pytest.importorskip("nncf", reason="INT8 needs the int8 extra (pip install 'ssdtool[int8]'); the test extra has it")

CALIBRATION_SIZE = 10


@pytest.fixture(scope="module")
def tiny_model() -> onnx.ModelProto:
    return synthetic.build_model(TwinSpec(variant="tiny"))


@pytest.fixture(scope="module")
def int8_env(tmp_path_factory: pytest.TempPathFactory, tiny_model: onnx.ModelProto) -> Iterator[dict[str, Any]]:
    """The tiny twin (synthetic source URL) quantized once through the CLI, shared by the tests that read it."""
    root = tmp_path_factory.mktemp("int8")
    registry_path, cache_dir = root / "registry.yml", root / "cache"
    install_model(cache_dir, registry_path, "tiny", tiny_model, sources=[TINY_URL])
    base = ["--registry", str(registry_path), "--cache-dir", str(cache_dir)]
    result = CliRunner().invoke(cli, [*base, "convert", "tiny", "--precision", "INT8", "--calibration-size",
                                      str(CALIBRATION_SIZE), "--offline", "--json"])
    yield {"registry": registry_path, "cache": cache_dir, "base": base, "result": result}


def _cli(env: tuple[Path, Path], *args: str) -> Any:
    registry_path, cache_dir = env
    return CliRunner().invoke(cli, ["--registry", str(registry_path), "--cache-dir", str(cache_dir), *args])


@pytest.fixture
def env(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "registry.yml", tmp_path / "cache"


def test_int8_end_to_end_with_generated_calibration(int8_env: dict[str, Any]) -> None:
    result = int8_env["result"]
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # NNCF's bars and logs stay off stdout: it is pure JSON
    assert data["precision"] == "INT8" and data["up_to_date"] is False
    entry = load_registry(int8_env["registry"]).model("tiny")
    cache = Cache.at(int8_env["cache"])
    xml = cache.ir_xml(entry, "INT8")
    assert Path(data["xml"]) == xml and xml.is_file()
    assert data["accuracy"]["passed"] is True
    assert data["accuracy"]["recall"] >= GUARD_MIN_RECALL
    assert data["accuracy"]["reference_detections"] > 0
    assert data["accuracy"]["held_out"] == "generated:seed=4242"
    assert data["calibration"] == {"kind": "generated", "count": CALIBRATION_SIZE, "identity": "generated:seed=0",
                                   "seed": 0}
    # Weights are stored as int8: the IR is far smaller than the float32 source.
    source = cache.file_path(entry, entry.primary_file)
    assert xml.with_suffix(".bin").stat().st_size < 0.4 * source.stat().st_size
    # Only the INT8 IR is installed: no FP32 reference, no temporary folders.
    assert sorted(p.name for p in xml.parent.parent.iterdir()) == ["INT8"]
    assert sorted(p.name for p in xml.parent.iterdir()) == ["tiny.bin", "tiny.xml"]


def test_int8_progress_covers_every_phase(int8_env: dict[str, Any]) -> None:
    """Off a terminal every INT8 phase writes JSON progress events on stderr, in the order they run."""
    events = [json.loads(line) for line in int8_env["result"].stderr.splitlines()
              if line.startswith('{"event": "progress"')]
    phases = list(dict.fromkeys(event["phase"] for event in events))
    assert phases == ["calibrate", "quantize", "guard", "check"]
    steps = {phase: [(e["done"], e["total"]) for e in events if e["phase"] == phase] for phase in phases}
    assert steps["calibrate"] == [(done, CALIBRATION_SIZE) for done in range(CALIBRATION_SIZE + 1)]
    assert steps["quantize"] == steps["check"] == [(0, 1), (1, 1)]
    assert steps["guard"] == [(done, 8) for done in range(9)]


def test_int8_provenance_records_calibration_and_nncf(int8_env: dict[str, Any]) -> None:
    import nncf

    entry = load_registry(int8_env["registry"]).model("tiny")
    record = read_provenance(Cache.at(int8_env["cache"]).ir_xml(entry, "INT8"))
    assert record is not None
    assert record["nncf_version"] == nncf.__version__
    assert record["calibration"]["identity"] == "generated:seed=0"
    assert record["calibration"]["count"] == CALIBRATION_SIZE
    assert record["parameters"]["precision"] == "INT8"
    assert record["parameters"]["calibration"] == "generated:seed=0"
    assert record["parameters"]["calibration_count"] == CALIBRATION_SIZE
    assert record["accuracy_guard"]["passed"] is True
    assert record["accuracy_guard"]["accepted"] is False
    assert record["source_sha256"] == entry.primary_file.sha256


def test_int8_is_quantized_and_detects(int8_env: dict[str, Any]) -> None:
    import openvino as ov

    entry = load_registry(int8_env["registry"]).model("tiny")
    xml = Cache.at(int8_env["cache"]).ir_xml(entry, "INT8")
    model = ov.Core().read_model(xml)
    assert sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops()) > 10
    assert list(model.input(0).get_shape()) == [1, 3, 300, 300]
    image = generated_images(1, seed=5, size=(320, 240))[0]
    from ssdtool.detect import Detector

    detector = Detector("tiny", backend="openvino", precision="INT8", registry=int8_env["registry"],
                        cache_dir=int8_env["cache"], offline=True, threshold=0.3)
    found = detector(image)
    assert found, "the INT8 model found nothing above 0.3 on a generated image"
    assert all(0 <= d.box[0] <= d.box[2] <= 320 and 0 <= d.box[1] <= d.box[3] <= 240 for d in found)
    assert detector.model_path == xml  # it used the IR 'convert --precision INT8' made, no recalibration


def test_detect_command_runs_the_int8_ir(int8_env: dict[str, Any], tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    Image.fromarray(generated_images(1, seed=5, size=(320, 240))[0]).save(image)
    result = CliRunner().invoke(cli, [*int8_env["base"], "detect", str(image), "--model", "tiny", "--precision",
                                      "int8", "--offline", "--threshold", "0.3", "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["run"]["precision"] == "INT8" and document["run"]["backend"] == "openvino"
    assert document["run"]["model_path"].endswith("INT8/tiny.xml")
    assert document["images"][0]["detections"], "the INT8 model found nothing above 0.3"


def test_int8_idempotent_and_calibration_changes_rebuild(int8_env: dict[str, Any], tmp_path: Path) -> None:
    entry = load_registry(int8_env["registry"]).model("tiny")
    cache_dir = tmp_path / "cache"
    shutil.copytree(int8_env["cache"], cache_dir)  # this test rebuilds: work on a copy of the shared cache
    cache = Cache.at(cache_dir)
    xml = cache.ir_xml(entry, "INT8")
    mtime = xml.stat().st_mtime_ns
    # Same calibration: up to date. No calibration choice at all: any installed INT8 IR will do.
    for options in (ConvertOptions(precision="INT8", calibration="generated", calibration_size=CALIBRATION_SIZE),
                    ConvertOptions(precision="INT8")):
        again = convert(entry, cache, options, offline=True)
        assert again.up_to_date and xml.stat().st_mtime_ns == mtime
        assert again.calibration is not None and again.calibration["count"] == CALIBRATION_SIZE
    again = _cli((int8_env["registry"], cache_dir), "convert", "tiny", "--precision", "INT8", "--offline")
    assert again.exit_code == 0, again.output
    assert "tiny (INT8): up to date" in again.stdout
    assert f"calibration: {CALIBRATION_SIZE} generated images (generated:seed=0)" in again.stdout
    # A different calibration set is a different INT8 model: rebuilt without --force (guard skipped for speed).
    rebuilt = convert(entry, cache, ConvertOptions(precision="INT8", calibration_size=CALIBRATION_SIZE - 2,
                                                   verify=False), offline=True)
    assert not rebuilt.up_to_date
    assert read_provenance(xml)["parameters"]["calibration_count"] == CALIBRATION_SIZE - 2
    assert read_provenance(xml)["accuracy_guard"] == "skipped (--no-verify)"


def test_int8_recipes_are_recorded_and_any_installed_one_serves(int8_env: dict[str, Any], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    from ssdtool import cpu
    from ssdtool.int8_recipes import default_recipe, quantization_settings, recipe_of

    entry = load_registry(int8_env["registry"]).model("tiny")
    cache_dir = tmp_path / "cache"
    shutil.copytree(int8_env["cache"], cache_dir)
    cache = Cache.at(cache_dir)
    xml = cache.ir_xml(entry, "INT8")
    # Without --int8-recipe the converting CPU decides: vnni where int8 products cannot saturate, else portable.
    chosen, reason = default_recipe()
    assert chosen.value == ("vnni" if cpu.exact_int8_products() else "portable")
    record = read_provenance(xml)
    assert record["parameters"]["quantization"] == quantization_settings(chosen)
    assert record["int8_recipe"] == {"recipe": chosen.value, "reason": reason}
    assert quantization_settings("portable")["overflow_fix"] == "enable"
    assert quantization_settings("vnni")["overflow_fix"] == "first_layer_only"
    other = "portable" if chosen.value == "vnni" else "vnni"
    base = ("convert", "tiny", "--precision", "INT8", "--offline", "--calibration-size", str(CALIBRATION_SIZE))
    same = _cli((int8_env["registry"], cache_dir), *base, "--int8-recipe", chosen.value)
    assert "tiny (INT8): up to date" in same.stdout and f"  recipe:  {chosen.value} (overflow fix " in same.stdout
    rebuilt = _cli((int8_env["registry"], cache_dir), *base, "--int8-recipe", other, "--no-verify")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "converted in" in rebuilt.stdout and f"  recipe:  {other} (overflow fix " in rebuilt.stdout
    assert "; chosen by --int8-recipe)" in rebuilt.stdout
    assert recipe_of(read_provenance(xml)["parameters"]["quantization"]) == other
    # Without a recipe choice the installed IR serves, whichever recipe made it.
    assert convert(entry, cache, ConvertOptions(precision="INT8"), offline=True).up_to_date
    from ssdtool.detect import Detector

    vnni = _cli((int8_env["registry"], cache_dir), *base, "--int8-recipe", "vnni", "--no-verify")
    assert vnni.exit_code == 0, vnni.output
    monkeypatch.setattr(cpu, "exact_int8_products", lambda: False)  # as on an AVX2-only CPU
    logger = logging.getLogger("ssdtool")  # the CLI's logging set-up stops propagation to caplog's root handler
    logger.addHandler(caplog.handler)
    try:
        detector = Detector("tiny", "openvino", precision="INT8", registry=int8_env["registry"], cache_dir=cache_dir,
                            offline=True)
        detector(generated_images(1, seed=5, size=(64, 48))[0])
    finally:
        logger.removeHandler(caplog.handler)
    assert detector.model_path == xml
    assert ("tiny's INT8 IR was quantized with the vnni recipe (8-bit weights, for CPUs with VNNI or AMX); this CPU "
            "has neither") in caplog.text
    assert "'ssdtool convert tiny --precision INT8 --int8-recipe portable --force'" in caplog.text
    wrong = _cli((int8_env["registry"], cache_dir), "convert", "tiny", "--int8-recipe", "vnni", "--offline")
    assert wrong.exit_code == 2
    assert "calibration, the INT8 recipe and the accuracy guard apply to INT8 only, got precision FP32" in wrong.stderr


def _write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, rgb in enumerate(generated_images(count, seed=3, size=(160, 120))):
        path = folder / ("sub" if index % 2 else ".") / f"img{index:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rgb).save(path)
        paths.append(path)
    (folder / "notes.txt").write_text("not an image")
    return paths


def test_calibration_folder_split_and_identity(tmp_path: Path, tiny_model: onnx.ModelProto) -> None:
    registry_path, cache_dir = tmp_path / "registry.yml", tmp_path / "cache"
    install_model(cache_dir, registry_path, "tiny", tiny_model, sources=[TINY_URL])
    entry = load_registry(registry_path).model("tiny")
    folder = tmp_path / "photos"
    paths = _write_images(folder, 12)
    many = resolve_calibration(entry, folder, size=8, guard_images=3)
    assert many.kind == "files" and many.count == 8 and len(many.held_out) == 3
    assert not set(many.files) & set(many.held_out)  # held-out images are never calibration images
    assert set(many.files) | set(many.held_out) <= set(paths)
    assert many.identity.startswith("sha256:")
    few = resolve_calibration(entry, folder, size=300, guard_images=8)
    assert few.count == 10 and len(few.held_out) == 2  # a fifth held out when the folder is small
    # Moving the folder keeps the identity; changing an image's bytes changes it.
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    assert resolve_calibration(entry, moved, size=8, guard_images=3).identity == many.identity
    Image.fromarray(generated_images(1, seed=9, size=(160, 120))[0]).save(moved / many.files[0].relative_to(folder))
    assert resolve_calibration(entry, moved, size=8, guard_images=3).identity != many.identity


def test_calibration_errors(tmp_path: Path, tiny_model: onnx.ModelProto) -> None:
    registry_path, cache_dir = tmp_path / "registry.yml", tmp_path / "cache"
    install_model(cache_dir, registry_path, "real-like", tiny_model)  # a file:// source: not synthetic
    entry = load_registry(registry_path).model("real-like")
    with pytest.raises(UsageError) as caught:
        resolve_calibration(entry, None)
    assert "needs calibration images" in caught.value.message
    assert "--calibration DIR" in (caught.value.hint or "")
    with pytest.raises(UsageError, match="does not exist"):
        resolve_calibration(entry, tmp_path / "nowhere")
    (tmp_path / "one").mkdir()
    Image.fromarray(generated_images(1)[0]).save(tmp_path / "one" / "a.jpg")
    with pytest.raises(UsageError, match="holds 1 image file"):
        resolve_calibration(entry, tmp_path / "one")
    # Generated images may be asked for explicitly, for any model.
    assert resolve_calibration(entry, "generated", size=5).identity == "generated:seed=0"
    # Through the CLI: exit 2, before anything is downloaded or converted.
    env = (registry_path, cache_dir)
    result = _cli(env, "convert", "real-like", "--precision", "INT8", "--offline")
    assert result.exit_code == 2, result.output
    assert "needs calibration images" in result.stderr
    result = _cli(env, "convert", "real-like", "--calibration", str(tmp_path), "--offline")
    assert result.exit_code == 2 and "INT8 only" in result.stderr
    result = _cli(env, "convert", "real-like", "--calibration-size", "5", "--offline")
    assert result.exit_code == 2 and "INT8 only" in result.stderr
    assert not (cache_dir / "real-like" / "openvino").exists()


def test_load_rgb_applies_exif_orientation(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    upright = load_rgb(path)
    assert upright.shape == (40, 20, 3)
    assert upright[:20].mean() > 200 and upright[20:].mean() < 50  # the white half is now on top
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(gray)
    assert load_rgb(gray).shape == (8, 8, 3)


def _corrupted(model: Any) -> Any:
    """The FP32 model with every convolution weight replaced by noise: detections change completely."""
    import openvino as ov

    rng = np.random.default_rng(0)
    for op in model.get_ops():
        if op.get_type_name() == "Convolution":
            weights = op.input_value(1).get_node()
            if weights.get_type_name() == "Constant":
                shape = list(weights.get_output_shape(0))
                noise = ov.op.Constant(rng.normal(0, 0.2, shape).astype(np.float32))
                op.input(1).replace_source_output(noise.output(0))
    model.validate_nodes_and_infer_types()
    return model


def _broken_quantize_file(reference_xml: Path, int8_xml: Path, *args: Any, provenance: dict[str, Any],
                          **kwargs: Any) -> None:
    """Stands in for the NNCF child process: writes the FP32 reference with noise weights as the "INT8" IR."""
    import openvino as ov

    from ssdtool.convert.graph import save_model
    from ssdtool.provenance import RT_INFO_ROOT, encode

    model = _corrupted(ov.Core().read_model(str(reference_xml)))
    for key, value in provenance.items():
        model.set_rt_info(encode(value), [RT_INFO_ROOT, key])
    save_model(ov, model, int8_xml, compress_to_fp16=False)


def test_guard_refuses_a_broken_int8_model_and_accept_installs_it(
        env: tuple[Path, Path], tiny_model: onnx.ModelProto, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ssdtool.convert import flow

    registry_path, cache_dir = env
    install_model(cache_dir, registry_path, "tiny", tiny_model, sources=[TINY_URL])
    folder = tmp_path / "photos"
    _write_images(folder, 6)
    monkeypatch.setattr(flow, "quantize_file", _broken_quantize_file)
    args = ["convert", "tiny", "--precision", "INT8", "--calibration", str(folder), "--offline"]
    refused = _cli(env, *args)
    assert refused.exit_code == 24, refused.output
    assert "loses too many detections" in refused.stderr and "Nothing was installed" in refused.stderr
    assert "--accept-accuracy-drop" in refused.stderr
    ir_root = cache_dir / "tiny" / "openvino"
    assert not any(ir_root.rglob("*.xml")), list(ir_root.rglob("*"))
    assert not [p for p in ir_root.iterdir() if p.name.startswith(".tmp")]
    accepted = _cli(env, *args, "--accept-accuracy-drop", "--json")
    assert accepted.exit_code == 0, accepted.output
    data = json.loads(accepted.stdout)
    assert data["accuracy"]["passed"] is False and data["accuracy"]["accepted"] is True
    assert data["accuracy"]["recall"] < GUARD_MIN_RECALL
    assert data["accuracy"]["held_out"].startswith("1 files of")  # 6 images: one held out, five calibrate
    assert data["calibration"]["kind"] == "files" and data["calibration"]["count"] == 5
    assert "installing it anyway" in accepted.stderr
    record = read_provenance(Path(data["xml"]))
    assert record["accuracy_guard"]["accepted"] is True
    assert record["calibration"]["sha256"] == data["calibration"]["identity"].removeprefix("sha256:")


def test_guard_library_error_is_accuracy_error(env: tuple[Path, Path], tiny_model: onnx.ModelProto,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from ssdtool.convert import flow
    from ssdtool.errors import AccuracyError

    registry_path, cache_dir = env
    install_model(cache_dir, registry_path, "tiny", tiny_model, sources=[TINY_URL])
    monkeypatch.setattr(flow, "quantize_file", _broken_quantize_file)
    entry = load_registry(registry_path).model("tiny")
    options = ConvertOptions(precision="INT8", calibration_size=2, guard_images=2)
    with pytest.raises(AccuracyError) as caught:
        convert(entry, Cache.at(cache_dir), options, offline=True)
    assert caught.value.exit_code == 24
    result = convert(entry, Cache.at(cache_dir), replace(options, accept_accuracy_drop=True), offline=True)
    assert result.accuracy is not None and result.accuracy.accepted and result.accuracy.images == 2


def test_missing_nncf_names_the_extra(env: tuple[Path, Path], tiny_model: onnx.ModelProto,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    registry_path, cache_dir = env
    install_model(cache_dir, registry_path, "tiny", tiny_model, sources=[TINY_URL])
    monkeypatch.setitem(sys.modules, "nncf", None)  # makes 'import nncf' raise ImportError
    result = _cli(env, "convert", "tiny", "--precision", "INT8", "--offline")
    assert result.exit_code == 23, result.output
    assert "needs NNCF" in result.stderr
    assert "pip install 'ssdtool[int8]'" in result.stderr
    with pytest.raises(DependencyError):
        convert(load_registry(registry_path).model("tiny"), Cache.at(cache_dir), ConvertOptions(precision="INT8"))
    assert not (cache_dir / "tiny" / "openvino" / "INT8").exists()
    # FP32 needs no NNCF.
    assert _cli(env, "convert", "tiny", "--offline", "--no-verify").exit_code == 0


def test_bench_runs_the_int8_ir(int8_env: dict[str, Any]) -> None:
    result = CliRunner().invoke(cli, [*int8_env["base"], "bench", "tiny", "--precision", "INT8", "-n", "3",
                                      "--offline", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    entry = load_registry(int8_env["registry"]).model("tiny")
    assert data["precision"] == "INT8" and data["iterations"] == 3
    assert Path(data["model_path"]) == Cache.at(int8_env["cache"]).ir_xml(entry, "INT8")
    assert data["versions"]["nncf"]


def test_unreadable_calibration_image_names_the_file(env: tuple[Path, Path], tiny_model: onnx.ModelProto,
                                                     tmp_path: Path) -> None:
    registry_path, cache_dir = env
    install_model(cache_dir, registry_path, "tiny", tiny_model, sources=[TINY_URL])
    folder = tmp_path / "photos"
    _write_images(folder, 4)
    (folder / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    result = _cli(env, "convert", "tiny", "--precision", "INT8", "--calibration", str(folder), "--offline")
    assert result.exit_code == 30, result.output
    assert "zz-broken.jpg cannot be read" in result.stderr
    assert not any((cache_dir / "tiny" / "openvino").rglob("*.xml"))
