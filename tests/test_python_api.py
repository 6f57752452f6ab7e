"""The Python API: ``ssdtool.Detector``, the public pre/post-processing functions, and docs/python-api.md.

Uses the session models of ``tests/test_detect.py`` (planted and seeded tiny twins, already converted).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ssdtool import (
    Detection,
    Detector,
    ImageError,
    ImageResult,
    load_image,
    postprocess,
    postprocess_heads,
    preprocess,
)
from ssdtool.errors import BackendError, UnknownModelError, UsageError
from ssdtool.imaging import generated_images
from ssdtool.registry import load_registry
from ssdtool.synthetic import TwinSpec, build_model, build_to_path
from tests.test_detect import PLANTED, World, _build_world, expected

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The models of tests/test_detect.py, in the same session folder (built once, whichever file asks first)."""
    return _build_world(tmp_path_factory.getbasetemp() / "detect-world")


def _dicts(detections: list[Detection]) -> list[dict[str, Any]]:
    return [d.to_dict() for d in detections]


def test_import_ssdtool_stays_light() -> None:
    code = ("import sys, ssdtool; light = not any(m in sys.modules for m in ('ssdtool.detect', 'numpy', 'PIL')); "
            "from ssdtool import Detector; print(light, Detector.__module__, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "ssdtool.detect", "True"]
    import ssdtool

    assert {"Detector", "Detection", "ImageResult"} <= set(dir(ssdtool))
    with pytest.raises(AttributeError):
        ssdtool.Nothing  # noqa: B018


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_detector_on_planted_model(world: World, backend: str) -> None:
    detector = Detector("planted", backend, registry=world.registry, cache_dir=world.cache, inference_precision="f32")
    detections = detector(np.zeros((480, 640, 3), np.uint8))
    assert _dicts(detections) == expected(640, 480)
    first = detections[0]
    assert (first.label_id, first.label, first.coco_category_id) == (1, "person", 1)
    assert first.coco_bbox == pytest.approx((first.box[0], first.box[1], first.box[2] - first.box[0],
                                             first.box[3] - first.box[1]))
    assert [d.coco_category_id for d in detections] == [1, 3, 70, 13]
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.score = 1.0  # type: ignore[misc]
    assert repr(detector).startswith(f"Detector(model='planted', backend='{backend}'")


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_every_input_kind_gives_the_same_answer(world: World, tmp_path: Path, backend: str) -> None:
    rgb = generated_images(1, seed=21, size=(320, 240))[0]
    path = tmp_path / "image.png"
    Image.fromarray(rgb).save(path)
    detector = Detector("tiny", backend, registry=world.registry, cache_dir=world.cache,
                        threshold=0.1)
    reference = detector(rgb)
    assert len(reference) > 5
    assert detector(path) == reference
    assert detector(str(path)) == reference
    assert detector(Image.open(path)) == reference
    assert detector(np.ascontiguousarray(rgb[..., ::-1]), channel_order="BGR") == reference
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)
    assert detector(rgba) == reference


def test_filters_on_the_detector(world: World) -> None:
    detector = Detector("planted", "onnxruntime", registry=world.registry, cache_dir=world.cache,
                        threshold=0.2, classes=["person", 12], max_detections=2)
    assert [d.label for d in detector(np.zeros((10, 10, 3), np.uint8))] == ["person", "stop sign"]
    with pytest.raises(UsageError, match="unknown class 'martian'"):
        Detector("planted", "onnxruntime", registry=world.registry, cache_dir=world.cache,
                 classes="martian")
    with pytest.raises(UsageError, match="threshold must be between 0 and 1"):
        Detector("planted", "onnxruntime", registry=world.registry, cache_dir=world.cache,
                 threshold=1.5)


def test_many_streams_results_in_order_with_errors(world: World, tmp_path: Path) -> None:
    good = world.images[(640, 480)]
    text = tmp_path / "notes.txt"
    text.write_text("hello")

    def inputs() -> Any:  # a generator: many() must not need a list
        yield good
        yield text
        yield Image.open(world.images[(33, 1000)])
        yield np.zeros((48, 64), np.uint8)

    detector = Detector("planted", "openvino", registry=world.registry, cache_dir=world.cache,
                        inference_precision="f32")
    results = list(detector.many(inputs(), keep_images=True))
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.path for r in results] == [str(good), str(text), None, None]
    assert [(r.width, r.height) for r in results] == [(640, 480), (None, None), (33, 1000), (64, 48)]
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[1].error is not None and results[1].error.startswith(f"{text}: not an image Pillow can read")
    assert results[1].detections == () and results[1].image is None
    assert results[0].image is not None and results[0].image.shape == (480, 640, 3)
    assert results[3].to_dict() == {"path": None, "width": 64, "height": 48, "detections": expected(64, 48),
                                    "error": None}
    assert isinstance(results[0], ImageResult)
    assert list(detector.many([])) == []


def test_single_image_errors_raise(world: World, tmp_path: Path) -> None:
    detector = Detector("planted", "onnxruntime", registry=world.registry, cache_dir=world.cache)
    with pytest.raises(ImageError) as info:
        detector(tmp_path / "missing.jpg")
    assert info.value.exit_code == 30 and info.value.message.endswith("missing.jpg: no such file")
    with pytest.raises(UnknownModelError):
        Detector("plantd", registry=world.registry, cache_dir=world.cache)
    with pytest.raises(BackendError, match="unknown backend 'tf'"):
        Detector("planted", "tf", registry=world.registry, cache_dir=world.cache)


@pytest.mark.parametrize(("backend", "form"), [("onnxruntime", "onnx"), ("openvino", "ir")])
def test_public_steps_reproduce_the_detector(world: World, backend: str, form: str) -> None:
    """load_image + preprocess + (any engine) + postprocess == Detector, for the source model and for the IR."""
    rgb = generated_images(1, seed=4, size=(500, 375))[0]
    detector = Detector("tiny", backend, registry=world.registry, cache_dir=world.cache,
                        threshold=0.25, inference_precision="f32")
    entry = detector.entry
    tensor = preprocess(load_image(rgb), entry, form=form)
    if form == "onnx":
        assert tensor.shape == (1, 3, 300, 300) and tensor.dtype == np.float32 and tensor.min() < 0
        import onnxruntime as ort

        session = ort.InferenceSession(str(detector.model_path), providers=["CPUExecutionProvider"])
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": tensor}),
                           strict=True))
    else:
        assert tensor.min() >= 0 and tensor.max() > 1  # raw pixels
        assert np.array_equal(tensor[0, 0], preprocess(rgb, entry, form="ir")[0, 0])
        import openvino as ov

        # f32 pinned on both sides: the comparison is exact, and a CPU with native bf16 defaults to bf16.
        compiled = ov.Core().compile_model(str(detector.model_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled.create_infer_request().infer({0: tensor})
        outputs = {port.get_any_name(): np.array(value) for port, value in result.items()}
        assert outputs["scores"].shape == (1, 200)  # the IR's padded form
    mine = postprocess(outputs, entry, (500, 375), form=form, threshold=0.25)
    assert mine and mine == detector(rgb)


def _reference_tensor(resized: np.ndarray, color_order: str, layout: str, mean: tuple[float, ...] | None = None,
                      scale: tuple[float, ...] | None = None, dtype: type = np.float32) -> np.ndarray:
    """The input tensors written out from their definition (docs/python-api.md, docs/convert.md), in float64."""
    pixels = resized[..., ::-1] if color_order == "BGR" else resized
    values = pixels.astype(np.float64)
    if mean is not None and scale is not None:
        values = (values - np.asarray(mean)) / np.asarray(scale)
    tensor = values[None] if layout == "NHWC" else values.transpose(2, 0, 1)[None]
    return tensor.astype(dtype)


@pytest.mark.parametrize("size", [(640, 480), (300, 300), (31, 517)])
def test_preprocess_matches_the_definition_of_each_input(world: World, size: tuple[int, int]) -> None:
    """The source model's input: registry channel order, (pixel - mean) / scale, layout. The IR's input: raw BGR
    pixels, as float32 or uint8, NCHW or NHWC. Each computed here from its definition, not from ssdtool's code."""
    from ssdtool.imaging import resize_rgb

    entry = load_registry(world.registry).model("tiny")
    rgb = generated_images(1, seed=size[0], size=size)[0]
    resized = resize_rgb(rgb, entry.input)
    assert resized.shape == (300, 300, 3) and resized.dtype == np.uint8
    spec = entry.input
    expected = _reference_tensor(resized, spec.color_order, spec.layout, spec.mean, spec.scale)
    np.testing.assert_allclose(preprocess(rgb, entry), expected, rtol=0, atol=1e-5)
    nhwc = dataclasses.replace(entry, input=dataclasses.replace(spec, layout="NHWC", shape=(1, 300, 300, 3),
                                                                 color_order="BGR"))
    np.testing.assert_allclose(preprocess(rgb, nhwc), _reference_tensor(resized, "BGR", "NHWC", spec.mean, spec.scale),
                               rtol=0, atol=1e-5)
    for input_type, dtype in (("f32", np.float32), ("u8", np.uint8)):
        for layout in ("NCHW", "NHWC"):
            mine = preprocess(rgb, entry, form="ir", input_type=input_type, input_layout=layout)
            theirs = _reference_tensor(resized, "BGR", layout, dtype=dtype)
            assert mine.dtype == theirs.dtype and mine.flags.c_contiguous and np.array_equal(mine, theirs)


def test_postprocess_honours_the_registry_output_spec(world: World) -> None:
    entry = load_registry(world.registry).model("planted")
    outputs = {"bboxes": np.array([[[30.0, 15.0, 150.0, 300.0], [0.0, 0.0, 0.0, 0.0]]], np.float32),
               "labels": np.array([[0, 0]], np.int64), "scores": np.array([[0.75, 0.0]], np.float32)}
    pixels = dataclasses.replace(entry, outputs=dataclasses.replace(entry.outputs, box_units="pixels",
                                                                    label_offset=1))
    (only,) = postprocess(outputs, pixels, (600, 200), threshold=0.0)
    assert (only.label_id, only.label, only.score) == (1, "person", 0.75)
    assert only.box == pytest.approx((60.0, 10.0, 300.0, 200.0))  # 30/300*600, 15/300*200, ..., clipped at 200
    with pytest.raises(BackendError, match="the model gave no output bboxes"):
        postprocess({"scores": outputs["scores"]}, entry, (10, 10))
    with pytest.raises(UsageError, match="form must be one of onnx, ir"):
        postprocess(outputs, entry, (10, 10), form="tf")
    with pytest.raises(UsageError, match="max_detections"):
        postprocess(outputs, entry, (10, 10), max_detections=0)


def test_heads_postprocessor_matches_the_full_model(world: World, tmp_path: Path) -> None:
    import onnxruntime as ort

    entry = load_registry(world.registry).model("tiny")
    heads_path = tmp_path / "heads.onnx"
    build_to_path("synthetic:ssd-resnet34?seed=0&variant=tiny&outputs=heads", heads_path)
    session = ort.InferenceSession(str(heads_path), providers=["CPUExecutionProvider"])
    detector = Detector("tiny", "onnxruntime", registry=world.registry, cache_dir=world.cache,
                        threshold=0.2)
    for rgb in generated_images(2, seed=8, size=(400, 300)):
        heads = session.run(None, {"image": preprocess(rgb, entry)})
        full = detector(rgb)
        host = postprocess_heads(heads, entry, (400, 300), threshold=0.2)
        assert [d.label_id for d in host] == [d.label_id for d in full] and len(full) > 5
        assert np.allclose([d.box for d in host], [d.box for d in full], atol=1e-3)  # pixels
        assert np.allclose([d.score for d in host], [d.score for d in full], atol=1e-5)
        # Any order of the two groups works; a mapping works too.
        swapped = postprocess_heads(heads[6:] + heads[:6], entry, (400, 300), threshold=0.2)
        assert swapped == host
        named = dict(zip([o.name for o in session.get_outputs()], heads, strict=True))
        assert postprocess_heads(named, entry, (400, 300), threshold=0.2) == host
    with pytest.raises(UsageError, match="six conf and six loc"):
        postprocess_heads(heads[:11], entry, (400, 300))


def test_planted_heads_give_the_planted_detections(world: World) -> None:
    import onnxruntime as ort

    entry = load_registry(world.registry).model("planted")
    model = build_model(TwinSpec(variant="tiny", heads_only=True, planted=PLANTED))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    heads = session.run(None, {"image": np.zeros((1, 3, 300, 300), np.float32)})
    assert _dicts(postprocess_heads(heads, entry, (480, 640))) == expected(480, 640)


# ------------------------------------------------------------------------------------------------- the docs
def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_docs_examples_run(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """Every code block of docs/python-api.md runs as written, with the registry's real model name standing for
    the planted twin (through SSDTOOL_REGISTRY / SSDTOOL_HOME, as a user would point ssdtool elsewhere)."""
    blocks = _python_blocks((ROOT / "docs" / "python-api.md").read_text())
    assert len(blocks) >= 8
    Image.open(world.images[(640, 480)]).convert("RGB").save(tmp_path / "photo.jpg")
    (tmp_path / "photos").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "photos" / name).write_bytes((tmp_path / "photo.jpg").read_bytes())
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (tmp_path / "notes.txt").write_text("not an image")
    build_to_path_planted_heads(tmp_path / "ssd-resnet34-heads.onnx")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSDTOOL_REGISTRY", str(world.registry))
    monkeypatch.setenv("SSDTOOL_HOME", str(world.cache))
    for number, block in enumerate(blocks, start=1):
        code = block.replace('"ssd-resnet34-1200-onnx"', '"planted"')
        exec(compile(code, f"docs/python-api.md block {number}", "exec"), {"__name__": f"docs_block_{number}"})
    out = capsys.readouterr().out
    assert "person       0.90  (150, 76) - (195, 109)" in out
    assert "skipped photos/broken.jpg: photos/broken.jpg: truncated or corrupt image data" in out
    assert "photos/a.jpg (640x480): 4 objects" in out
    assert "notes.txt: not an image Pillow can read" in out
    assert '"image_id": 0, "category_id": 1, "bbox": [149.91, 75.51, 44.8, 33.6], "score": 0.9' in out
    assert "image 3 of 3" in out and "\nopenvino:FP32:f32 f32 " in out and "\nonnxruntime f32 " in out  # evaluate
    with Image.open(tmp_path / "photo-annotated.jpg") as drawn:
        assert drawn.size == (640, 480)
    # ssdtool.outputs: what `ssdtool detect photos --format coco --save-dir annotated` writes, from Python
    assert "3 images, 10 detections, 1 failed in " in out and "; results in detections.json\n" in out
    assert "table, json, jsonl, coco\n" in out
    assert len(json.loads((tmp_path / "detections.json").read_text())) == 10
    assert sorted(p.name for p in (tmp_path / "annotated").iterdir()) == ["a.jpg", "b.jpg"]


def build_to_path_planted_heads(path: Path) -> None:
    path.write_bytes(build_model(TwinSpec(variant="tiny", heads_only=True, planted=PLANTED)).SerializeToString())
