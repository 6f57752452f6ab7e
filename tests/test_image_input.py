"""The image-input IR (``--image-input``): u8 ``[1, ?, ?, 3]`` NHWC BGR images of any size, resized inside.

Its interface, its folder and provenance beside the standard IR, the two-part parity gate, its resize against
Pillow's bilinear (the host's), and the commands and Python API that choose it (convert, check, detect, bench,
export). Model API driving it is in tests/test_model_api.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ssdtool import Detector, synthetic
from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.convert import ConvertOptions, convert
from ssdtool.detections import postprocess
from ssdtool.imaging import generated_images, preprocess
from ssdtool.provenance import read_provenance
from ssdtool.registry import load_registry
from ssdtool.synthetic import TwinSpec
from tests.modelkit import install_model


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny twin in a registry of its own, its standard and image-input IRs converted through the CLI."""
    root = tmp_path_factory.mktemp("image-input")
    registry_path, cache_dir = root / "registry.yml", root / "cache"
    install_model(cache_dir, registry_path, "tiny", synthetic.build_model(TwinSpec(variant="tiny")))
    base = ["--registry", str(registry_path), "--cache-dir", str(cache_dir)]
    image = CliRunner().invoke(cli, [*base, "convert", "tiny", "--image-input", "--json", "--offline"])
    assert image.exit_code == 0, image.output
    standard = CliRunner().invoke(cli, [*base, "convert", "tiny", "--json", "--offline"])
    assert standard.exit_code == 0, standard.output
    return {"base": base, "root": root, "cache": cache_dir, "entry": load_registry(registry_path).model("tiny"),
            "image": json.loads(image.stdout), "standard": json.loads(standard.stdout)}


def _cli(world: dict[str, Any], *args: str) -> Any:
    return CliRunner().invoke(cli, [*world["base"], *args])


def test_the_image_input_ir_takes_u8_nhwc_images_of_any_size(world: dict[str, Any]) -> None:
    import openvino as ov

    data = world["image"]
    xml = Path(data["xml"])
    assert xml == world["cache"] / "tiny" / "openvino" / "FP32-image" / "tiny.xml"
    assert (data["input_shape"], data["input_type"], data["input_layout"], data["image_input"]) == \
        ([1, -1, -1, 3], "u8", "NHWC", True)
    model = ov.Core().read_model(str(xml))
    (image,) = model.inputs
    assert image.get_names() == {"image"}
    assert str(image.get_partial_shape()) == "[1,?,?,3]"
    assert image.get_element_type() == ov.Type.u8
    assert str(ov.layout_helpers.get_layout(image)) == "[N,H,W,C]"
    outputs = {next(iter(sorted(o.get_names()))): list(o.get_shape()) for o in model.outputs}
    assert outputs == {"bboxes": [1, 200, 4], "labels": [1, 200], "scores": [1, 200]}
    parameters = (read_provenance(xml) or {})["parameters"]
    assert parameters["image_input"] == {"resize": "RESIZE_LINEAR", "to": [300, 300]}
    assert (parameters["input_type"], parameters["input_layout"]) == ("u8", "NHWC")


def test_the_standard_ir_beside_it_keeps_its_interface(world: dict[str, Any]) -> None:
    data = world["standard"]
    assert Path(data["xml"]) == world["cache"] / "tiny" / "openvino" / "FP32" / "tiny.xml"
    assert (data["input_shape"], data["input_type"], data["input_layout"], data["image_input"]) == \
        ([1, 3, 300, 300], "f32", "NCHW", False)
    assert "image_input" not in (read_provenance(Path(data["xml"])) or {})["parameters"]


def test_the_gate_proves_the_graph_on_network_size_images_and_bounds_the_resize(world: dict[str, Any]) -> None:
    parity = world["image"]["parity"]
    # Network-size images: the inner resize is the identity, so the standard IR's strict criteria hold.
    assert parity["passed"] and parity["recall"] == 1.0 and parity["inference_precision"] == "f32"
    assert parity["max_box_diff"] <= 1e-4 and parity["max_score_diff"] <= 1e-4
    # The same 640x480 images whole, resized inside (2.1x down to 300 px), against onnxruntime on Pillow's resize.
    resize = parity["resize"]
    assert resize["passed"] and resize["images"] == 3 and resize["recall"] >= 0.9
    assert resize["reference_detections"] == parity["reference_detections"]
    assert "resized inside the IR" in parity["criteria"]
    recorded = (read_provenance(Path(world["image"]["xml"])) or {})["parity"]["resize"]
    assert recorded["recall"] == resize["recall"] and recorded["passed"] is True
    human = _cli(world, "convert", "tiny", "--image-input", "--force", "--offline")
    assert human.exit_code == 0, human.output
    assert "tiny (FP32, image input): converted in" in human.stdout
    assert "  input:   [1, ?, ?, 3] u8 NHWC, BGR images of any size, raw pixels 0-255 (resize and normalization " \
           "inside)" in human.stdout
    assert "at their own size, resized inside: " in human.stdout


def test_on_network_size_images_it_answers_as_the_standard_ir(world: dict[str, Any]) -> None:
    from ssdtool.backends.openvino import OpenVinoEngine

    entry = world["entry"]
    image_engine = OpenVinoEngine(world["image"]["xml"], inference_precision="f32")
    standard_engine = OpenVinoEngine(world["standard"]["xml"], inference_precision="f32")
    for rgb in generated_images(2, seed=3, size=(300, 300)):
        whole = image_engine.infer(preprocess(rgb, entry, form="image"))
        tensor = standard_engine.infer(preprocess(rgb, entry, form="ir"))
        for name in ("bboxes", "labels", "scores"):
            np.testing.assert_allclose(whole[name], tensor[name], atol=1e-5, err_msg=name)


@pytest.mark.parametrize(("target", "size", "mean_bound", "max_bound"), [
    (1200, (640, 480), 0.25, 1),     # scaled up (COCO's photos into the 1200 px model): within one level
    (1200, (1000, 750), 0.25, 1),
    (1200, (1200, 1200), 0.0, 0),    # the network size: untouched
    (1200, (1920, 1080), 1.5, 40),   # scaled down: no low-pass filter before the linear resize (docs/convert.md)
    (1200, (4032, 3024), 3.7, 100),  # a 12 MP photo
    (300, (640, 480), 2.8, 80),      # the tiny twin's gate images
])
def test_the_inner_resize_against_pillows_bilinear(target: int, size: tuple[int, int], mean_bound: float,
                                                   max_bound: int) -> None:
    """The resize the IR runs (built by the same function) against Pillow's, on generated images: the bounds
    docs/convert.md gives (measured with OpenVINO 2026.4)."""
    import openvino as ov

    from ssdtool.convert.graph import image_resize_model

    compiled = ov.Core().compile_model(image_resize_model(target, target), "CPU")
    rgb = generated_images(1, seed=1, size=size)[0]
    inside = np.asarray(compiled(rgb[np.newaxis])[0])[0]
    host = np.asarray(Image.fromarray(rgb).resize((target, target), Image.BILINEAR))
    difference = np.abs(inside.astype(np.int16) - host.astype(np.int16))
    assert inside.shape == host.shape == (target, target, 3) and inside.dtype == np.uint8
    assert difference.mean() <= mean_bound and difference.max() <= max_bound


def test_detect_sends_whole_images_and_scales_boxes_to_them(world: dict[str, Any], tmp_path: Path) -> None:
    from ssdtool.backends.openvino import OpenVinoEngine

    path = tmp_path / "wide.png"  # lossless: the test decodes the same pixels
    rgb = generated_images(1, seed=9, size=(1000, 300))[0]
    Image.fromarray(rgb).save(path)
    result = _cli(world, "detect", str(path), "-m", "tiny", "--image-input", "--inference-precision", "f32",
                  "--format", "json", "--offline")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["run"]["image_input"] is True
    assert document["run"]["model_path"] == world["image"]["xml"]
    outputs = OpenVinoEngine(world["image"]["xml"], inference_precision="f32").infer(
        preprocess(rgb, world["entry"], form="image"))
    expected = [d.to_dict() for d in postprocess(outputs, world["entry"], (1000, 300), form="image")]
    assert len(expected) >= 3
    assert document["images"][0]["detections"] == expected
    assert max(d["box"][2] for d in expected) > 300  # pixels of the 1000 px wide image, not of the network


def test_the_python_api_runs_it_on_arrays_of_any_size(world: dict[str, Any]) -> None:
    with Detector("tiny", "openvino", inference_precision="f32", cache_dir=world["cache"],
                  registry=world["root"] / "registry.yml", image_input=True, offline=True) as whole, \
            Detector("tiny", "openvino", inference_precision="f32", cache_dir=world["cache"],
                     registry=world["root"] / "registry.yml", offline=True) as standard:
        assert whole.form == "image" and whole.model_path == Path(world["image"]["xml"])
        assert whole.run_info().describe() == "openvino CPU FP32 image-input IR, f32"
        square = generated_images(1, seed=5, size=(300, 300))[0]
        ours, theirs = whole(square), standard(square)  # at the network size both see the same pixels
        assert len(ours) == len(theirs) >= 3 and [d.label_id for d in ours] == [d.label_id for d in theirs]
        np.testing.assert_allclose([d.score for d in ours], [d.score for d in theirs], atol=1e-5)
        np.testing.assert_allclose([d.box for d in ours], [d.box for d in theirs], atol=1e-3)  # pixels
        tall = generated_images(1, seed=5, size=(200, 450))[0]
        found = whole(tall)
        assert found and all(0 <= d.box[0] <= d.box[2] <= 200 and 0 <= d.box[1] <= d.box[3] <= 450 for d in found)


def test_bench_and_check_choose_it(world: dict[str, Any]) -> None:
    bench = _cli(world, "bench", "tiny", "--image-input", "-n", "2", "--inference-precision", "f32", "--json",
                 "--offline")
    assert bench.exit_code == 0, bench.output
    report = json.loads(bench.stdout)
    assert (report["image_input"], report["input_shape"], report["model_path"]) == \
        (True, [1, 480, 640, 3], world["image"]["xml"])
    human = _cli(world, "bench", "tiny", "--image-input", "-n", "1", "--offline")
    assert human.stdout.startswith("tiny: openvino FP32 image-input IR on CPU, latency hint")
    check = _cli(world, "check", "tiny", "--image-input", "--offline")
    assert check.exit_code == 0, check.output
    assert check.stdout.startswith("tiny (FP32): passed: ")
    assert "at their own size, resized inside: " in check.stdout


def test_export_writes_the_image_input_ir_for_ovms(world: dict[str, Any], tmp_path: Path) -> None:
    import openvino as ov

    out = tmp_path / "repository"
    result = _cli(world, "export", "tiny", "--format", "ovms", "--image-input", "--output-dir", str(out), "--json",
                  "--offline")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["source_xml"] == world["image"]["xml"]
    assert data["signature"]["inputs"] == [{"name": "image", "element_type": "u8", "shape": [1, -1, -1, 3]}]
    exported = out / "tiny" / "1" / "model.xml"
    assert exported.read_bytes() == Path(world["image"]["xml"]).read_bytes()
    port = ov.Core().read_model(str(exported)).inputs[0]
    assert (str(port.get_partial_shape()), str(ov.layout_helpers.get_layout(port))) == ("[1,?,?,3]", "[N,H,W,C]")
    manifest = json.loads((out / "tiny" / "ssdtool-export.json").read_text())
    assert manifest["versions"]["1"]["image_input"] is True


@pytest.mark.parametrize(("args", "message"), [
    (("convert", "tiny", "--image-input", "--input-type", "f32"),
     "--image-input takes u8 NHWC images of any size; --input-type and --input-layout do not apply to it"),
    (("convert", "tiny", "--image-input", "--input-layout", "NHWC"),
     "--image-input takes u8 NHWC images of any size; --input-type and --input-layout do not apply to it"),
    (("detect", "x.jpg", "-m", "tiny", "--image-input", "--backend", "onnxruntime"),
     "the image-input IR is an OpenVINO IR; onnxruntime runs the source ONNX"),
    (("detect", "x.jpg", "-m", "tiny", "--image-input", "--server", "http://127.0.0.1:9"),
     "--precision, --inference-precision, --device and --image-input choose how a local engine runs"),
    (("bench", "tiny", "--image-input", "--backend", "onnxruntime"),
     "--image-input measures the local image-input IR with OpenVINO"),
    (("bench", "tiny", "--image-input", "--scenario", "Offline"),
     "--image-input and --scenario do not go together"),
])
def test_what_the_image_input_ir_cannot_do_is_a_usage_error(world: dict[str, Any], tmp_path: Path,
                                                             args: tuple[str, ...], message: str) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.jpg")
    result = CliRunner().invoke(cli, [*world["base"], *[str(tmp_path / a) if a == "x.jpg" else a for a in args]])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_python_options_refuse_other_input_types(tmp_path: Path) -> None:
    from ssdtool.errors import UsageError

    entry = load_registry().model("ssd-resnet34-300-synthetic-tiny")
    assert ConvertOptions(image_input=True).variant == "image"
    assert (ConvertOptions(image_input=True).input_type, ConvertOptions(image_input=True).input_layout) == \
        ("u8", "NHWC")
    with pytest.raises(UsageError, match="the image-input IR takes u8 NHWC images"):
        convert(entry, Cache.at(tmp_path), ConvertOptions(image_input=True, input_type="f32", input_layout="NHWC"))
    assert not (tmp_path / entry.name).exists()  # refused before anything was downloaded or written


def test_an_image_too_large_is_refused_before_decoding(world: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(path)
    result = _cli(world, "detect", str(path), "-m", "tiny", "--image-input", "--max-pixels", "1000", "--offline")
    assert result.exit_code == 30, result.output
    assert "400x300 = 120,000 pixels is over the limit of 1,000" in result.output

