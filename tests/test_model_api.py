"""OpenVINO Model API (PyPI ``openvino-model-api``) runs every IR form ssdtool writes, with no configuration.

Model API is the wrapper library that replaced Open Model Zoo's demos; its users call
``DetectionModel.create_model("<ir>.xml")`` and expect the IR to say what it is (``rt_info/model_info``). On the
tiny twin, for the FP32, FP16, INT8, heads-form and image-input IRs: the wrapper type and the label names come
from the IR, and with inference pinned to f32 on both sides (Zen 4 defaults to bf16) Model API's detections on
model-size images are ``ssdtool detect``'s: same labels and scores, boxes within Model API's rounding to whole
pixels. The image-input IR also on images of other sizes, where Model API sends the raw image and scales the
normalized boxes by the original size itself.
"""

from __future__ import annotations

import importlib.util
import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from ssdtool import Detector
from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.convert import ConvertOptions, convert
from ssdtool.detections import DEFAULT_THRESHOLD
from ssdtool.imaging import generated_images
from ssdtool.labels import label_names
from ssdtool.provenance import read_provenance
from ssdtool.registry import ModelEntry, load_registry

pytest.importorskip("model_api", reason="Model API is in the test extra (pip install 'ssdtool[test]', Python 3.11+)")

TINY = "ssd-resnet34-300-synthetic-tiny"
HEADS = "ssd-resnet34-300-synthetic-tiny-heads"
#: IR form -> (registry model, conversion options, Detector keyword arguments that pick the same IR)
FORMS: dict[str, tuple[str, ConvertOptions, dict[str, Any]]] = {
    "FP32": (TINY, ConvertOptions(), {}),
    "FP16": (TINY, ConvertOptions(precision="FP16"), {"precision": "FP16"}),
    "INT8": (TINY, ConvertOptions(precision="INT8", calibration_size=10), {"precision": "INT8"}),
    "heads": (HEADS, ConvertOptions(), {}),
    "image-input": (TINY, ConvertOptions(image_input=True), {"image_input": True}),
}
NO_NNCF = importlib.util.find_spec("nncf") is None
#: The forms as test parameters; INT8 needs NNCF (the int8 extra; the test extra has it).
FORM_PARAMS = [pytest.param(form, marks=pytest.mark.skipif(form == "INT8" and NO_NNCF, reason="INT8 needs NNCF"))
               for form in FORMS]
#: Generated 300x300 images on which the tiny twin finds 8 to 10 objects above the default threshold (0.5).
SEEDS = (3, 5, 6)


class World:
    """One cache for every IR form, each converted on first use (the twins' sources are built locally, like
    downloads)."""

    def __init__(self, root: Path) -> None:
        self.cache = Cache.at(root / "cache")
        self.registry = load_registry()
        self._irs: dict[str, Path] = {}

    def ir(self, form: str) -> Path:
        if form not in self._irs:
            model, options, _ = FORMS[form]
            self._irs[form] = convert(self.registry.model(model), self.cache, options).xml
        return self._irs[form]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("model-api"))


def _f32_model(xml: Path) -> Any:
    """Model API's wrapper for ``xml`` through its local OpenVINO adapter, inference pinned to f32, and nothing
    else said: no model type, no configuration."""
    from model_api.adapters import OpenvinoAdapter, create_core
    from model_api.models import DetectionModel

    adapter = OpenvinoAdapter(create_core(), str(xml), device="CPU", plugin_config={"INFERENCE_PRECISION_HINT": "f32"})
    return DetectionModel.create_model(adapter)


def _model_api_names(entry: ModelEntry) -> list[str]:
    return [name.replace(" ", "_") for name in label_names(entry)]


def _assert_same_detections(result: Any, ours: list[Any]) -> None:
    """Model API's result and ssdtool's detections of the same image: same count and order, label ids, names and
    scores; boxes within Model API's rounding to whole pixels."""
    assert len(ours) >= 3  # enough for the comparison to mean something
    assert all(d.score != DEFAULT_THRESHOLD for d in ours)  # Model API keeps scores above, ssdtool from
    assert len(result.bboxes) == len(ours)
    assert [int(label) for label in result.labels] == [d.label_id for d in ours]
    assert list(result.label_names) == [d.label.replace(" ", "_") for d in ours]
    np.testing.assert_allclose(np.asarray(result.scores, dtype=np.float64), [d.score for d in ours], atol=1e-5)
    boxes = np.asarray(result.bboxes, dtype=np.float64)
    assert np.abs(boxes - np.asarray([d.box for d in ours])).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("form", FORM_PARAMS)
def test_create_model_from_the_path_alone_knows_the_wrapper_and_the_labels(world: World, form: str) -> None:
    from model_api.models import SSD, DetectionModel

    model_name, _, _ = FORMS[form]
    entry = world.registry.model(model_name)
    model = DetectionModel.create_model(str(world.ir(form)))  # no model_type, no configuration
    assert isinstance(model, SSD)
    assert model.params.labels == _model_api_names(entry)
    assert model.params.confidence_threshold == DEFAULT_THRESHOLD
    assert model.params.resize_type == "standard"
    assert model.params.reverse_input_channels is False
    if form == "image-input":
        assert (model.params.orig_width, model.params.orig_height) == (300, 300)
        assert model.inputs["image"].shape == [1, -1, -1, 3] and model.inputs["image"].layout == "NHWC"
    rgb = generated_images(1, seed=5, size=(300, 300))[0]
    names = model(np.ascontiguousarray(rgb[..., ::-1])).label_names  # at the device's default precision
    assert names and all(name in _model_api_names(entry)[1:] for name in names)  # names, not '#17' placeholders


@pytest.mark.parametrize("form", FORM_PARAMS)
def test_detections_equal_ssdtools_at_f32_on_model_size_images(world: World, form: str) -> None:
    model_name, _, detector_options = FORMS[form]
    model = _f32_model(world.ir(form))
    with Detector(model_name, "openvino", inference_precision="f32", cache_dir=world.cache,
                  registry=world.registry, **detector_options) as detector:
        assert detector.model_path == world.ir(form)
        for seed in SEEDS:
            rgb = generated_images(1, seed=seed, size=(300, 300))[0]
            # Model API takes images as OpenCV reads them: BGR.
            _assert_same_detections(model(np.ascontiguousarray(rgb[..., ::-1])), detector(rgb))


@pytest.mark.parametrize("size", [(640, 480), (200, 450), (1000, 300)])
def test_image_input_boxes_come_back_in_the_original_images_pixels(world: World,
                                                                   size: tuple[int, int]) -> None:
    """Model API sends the raw image to the image-input IR and scales its normalized boxes by the image's own
    width and height: the same pixels ``ssdtool detect --image-input`` reports."""
    model = _f32_model(world.ir("image-input"))
    rgb = generated_images(1, seed=9, size=size)[0]  # 7 to 14 detections above 0.5 at these sizes
    with Detector(TINY, "openvino", inference_precision="f32", cache_dir=world.cache, registry=world.registry,
                  image_input=True) as detector:
        ours = detector(rgb)
    result = model(np.ascontiguousarray(rgb[..., ::-1]))
    _assert_same_detections(result, ours)
    width, height = size
    assert np.asarray(result.bboxes)[:, 0::2].max() <= width and np.asarray(result.bboxes)[:, 1::2].max() <= height


@pytest.mark.skipif(NO_NNCF, reason="INT8 needs NNCF")
def test_exports_carry_the_metadata_and_an_older_int8_ir_is_amended(world: World, tmp_path: Path) -> None:
    """The export is the cached IR byte for byte, so Model API runs it as it is; an INT8 IR of an older ssdtool
    (no model_info) gets the metadata from the next ``convert`` and keeps its calibration."""
    cache_dir = tmp_path / "cache"
    world.ir("INT8")
    shutil.copytree(world.cache.root, cache_dir)
    int8 = Cache.at(cache_dir).ir_xml(TINY, "INT8")
    before = read_provenance(int8) or {}
    tree = ElementTree.parse(int8)
    rt_info = tree.getroot().find("rt_info")
    assert rt_info is not None
    rt_info.remove(rt_info.find("model_info"))
    tree.write(int8, encoding="utf-8", xml_declaration=True)

    entry = load_registry().model(TINY)
    result = convert(entry, Cache.at(cache_dir), ConvertOptions(precision="INT8"))  # no calibration chosen
    assert result.amended
    assert (read_provenance(int8) or {})["parameters"] == before["parameters"]  # calibration identity kept

    out = tmp_path / "repository"
    exported = CliRunner().invoke(cli, ["--cache-dir", str(cache_dir), "export", TINY, "--precision", "INT8",
                                        "--format", "ovms", "--output-dir", str(out), "--offline"])
    assert exported.exit_code == 0, exported.output
    assert (out / TINY / "1" / "model.xml").read_bytes() == int8.read_bytes()
    model = _f32_model(out / TINY / "1" / "model.xml")
    with Detector(TINY, "openvino", precision="INT8", inference_precision="f32", cache_dir=cache_dir) as detector:
        rgb = generated_images(1, seed=SEEDS[0], size=(300, 300))[0]
        _assert_same_detections(model(np.ascontiguousarray(rgb[..., ::-1])), detector(rgb))
