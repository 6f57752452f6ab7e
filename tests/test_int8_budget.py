"""INT8 within an AP budget (``convert --precision INT8 --max-ap-drop X``): NNCF's accuracy control with ssdtool's
COCO AP, on planted models whose outcome is known, and the checks before anything runs."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ssdtool import synthetic
from ssdtool.accuracy_budget import BudgetReport, Latency, describe
from ssdtool.cli import cli
from ssdtool.imaging import generated_images
from ssdtool.labels import COCO_CATEGORY_IDS
from ssdtool.provenance import read_provenance
from ssdtool.ssd import SsdGeometry
from ssdtool.synthetic import PlantedDetection, TwinSpec, planted_expected
from tests.modelkit import TINY_URL, install_model

pytest.importorskip("nncf", reason="INT8 needs the int8 extra (pip install 'ssdtool[int8]'); the test extra has it")
pytest.importorskip("pycocotools", reason="the AP budget is scored with pycocotools (the eval extra)")

PLANTED = (PlantedDetection(box_index=29, label=1, score=0.9), PlantedDetection(box_index=757, label=3, score=0.8))
IMAGE_SIZE = (160, 120)


def _cli(registry: Path, cache: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--registry", str(registry), "--cache-dir", str(cache), *args])


def _events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith('{"event": "progress"')]


def _planted_dataset(folder: Path, count: int) -> Path:
    """``count`` generated images and a COCO file whose boxes are exactly what the planted heads return on any image
    (they ignore it): the FP32 model scores AP 1 on it."""
    folder.mkdir(parents=True)
    boxes, labels, _ = planted_expected(PLANTED, SsdGeometry.for_input(300))
    width, height = IMAGE_SIZE
    images, annotations = [], []
    for index, rgb in enumerate(generated_images(count, seed=3, size=IMAGE_SIZE)):
        Image.fromarray(rgb).save(folder / f"{index:06d}.png")
        images.append({"id": index + 1, "file_name": f"{index:06d}.png", "width": width, "height": height})
        for box, label in zip(np.clip(boxes, 0.0, 1.0), labels, strict=True):
            x0, y0, x1, y1 = (float(box[0]) * width, float(box[1]) * height, float(box[2]) * width,
                              float(box[3]) * height)
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": COCO_CATEGORY_IDS[int(label) - 1], "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    categories = [{"id": cid, "name": str(cid)} for cid in COCO_CATEGORY_IDS]
    path = folder.parent / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A planted tiny twin (its heads ignore the image and return PLANTED) and 12 annotated images of its answers."""
    root = tmp_path_factory.mktemp("planted")
    registry, cache = root / "registry.yml", root / "cache"
    install_model(cache, registry, "planted", synthetic.build_model(TwinSpec(variant="tiny", planted=PLANTED)))
    annotations = _planted_dataset(root / "photos", 12)
    base = ["convert", "planted", "--precision", "INT8", "--offline", "--calibration", str(root / "photos"),
            "--annotations", str(annotations), "--images", str(root / "photos"), "--held-out", "4"]
    return {"root": root, "registry": registry, "cache": cache, "annotations": annotations, "base": base}


# ------------------------------------------------------------------------------------------------ known outcomes
def test_planted_model_meets_a_zero_budget_with_every_layer_in_int8(planted: dict[str, Any]) -> None:
    """The planted heads have zero weights and a constant logit: INT8 returns exactly FP32's boxes and scores, so
    true AP is 1.0 for both and a budget of 0 is met without reverting anything (and nothing to time)."""
    result = _cli(planted["registry"], planted["cache"], *planted["base"], "--max-ap-drop", "0", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    budget = data["accuracy_control"]
    assert (budget["fp32"], budget["all_int8"], budget["installed"], budget["drop"]) == (1.0, 1.0, 1.0, 0.0)
    assert budget["met"] is True and budget["max_drop"] == 0.0 and budget["best_drop"] == 0.0
    assert budget["float_layers"] == [] and budget["latency"] is None
    assert budget["int8_layers"] == budget["layers"] == budget["all_int8_layers"] > 40
    assert budget["metric"] == "COCO AP"
    assert budget["validation"]["kind"] == "annotations" and budget["validation"]["images"] == 4
    assert budget["validation"]["description"] == (f"4 annotated images of {planted['root'] / 'photos'} "
                                                   f"({planted['annotations']})")
    assert data["accuracy"] is None  # the budget replaces the guard
    # Calibration and validation share the folder: the 4 validation images never calibrate (12 - 4 = 8 left, of
    # which the guard's usual fifth, 1, is held out).
    assert data["calibration"]["count"] == 7
    record = read_provenance(Path(data["xml"]))
    assert record["accuracy_control"] == budget
    assert record["accuracy_guard"] == "replaced by accuracy_control (--max-ap-drop)"
    assert record["parameters"]["accuracy_control"] == {
        "max_ap_drop": 0.0, "metric": "COCO AP", "images": 4,
        "validation": budget["validation"]["identity"]}
    assert budget["validation"]["identity"].startswith("sha256:")
    phases = {event["phase"] for event in _events(result.stderr)}
    assert {"calibrate", "quantize", "validate"} <= phases and "guard" not in phases
    validations = [e for e in _events(result.stderr) if e["phase"] == "validate" and "value" in e]
    assert validations and all(e["value"] == 1.0 and e["run"] >= 1 for e in validations)
    # The same budget again is up to date; so is any INT8 request that names no budget.
    again = _cli(planted["registry"], planted["cache"], *planted["base"], "--max-ap-drop", "0")
    assert again.exit_code == 0, again.output
    assert "planted (INT8): up to date" in again.stdout
    assert ("  budget:  met: COCO AP 1.0000 vs FP32 1.0000 (drop 0.0000, budget 0; every layer in INT8: 1.0000) on 4 "
            f"annotated images of {planted['root'] / 'photos'} ({planted['annotations']}); all {budget['layers']} "
            "layers in INT8 (at conversion)") in again.stdout
    plain = _cli(planted["registry"], planted["cache"], "convert", "planted", "--precision", "INT8", "--offline")
    assert "planted (INT8): up to date" in plain.stdout
    info = _cli(planted["registry"], planted["cache"], "info", "planted")
    assert "      accuracy_control: met: COCO AP 1.0000 vs FP32 1.0000 (drop 0.0000, budget 0;" in info.stdout


def test_a_budget_below_zero_is_refused_with_the_best_drop(planted: dict[str, Any], tmp_path: Path) -> None:
    """INT8 scores exactly what FP32 scores on the planted model, so no model can beat FP32 by 0.01: exit 24,
    naming the best drop reached (0, with every layer in INT8), and nothing installed."""
    cache = tmp_path / "cache"
    shutil.copytree(planted["cache"] / "planted", cache / "planted", ignore=shutil.ignore_patterns("openvino"))
    result = _cli(planted["registry"], cache, *planted["base"], "--max-ap-drop", "-0.01")
    assert result.exit_code == 24, result.output
    layers = result.stderr.split("keeps ")[1].split(" of ")[0]
    assert (f"the INT8 IR of planted cannot meet --max-ap-drop -0.01: FP32 scores COCO AP 1.0000 on 4 annotated "
            f"images of {planted['root'] / 'photos'} ({planted['annotations']}); every layer in INT8 scores 1.0000 (a "
            f"drop of 0.0000); the IR NNCF returned keeps {layers} of {layers} layers in INT8 at COCO AP 1.0000, a "
            "drop of 0.0000; the best drop reached with layers in INT8 was 0.0000. Nothing was installed."
            ) in result.stderr
    assert "hint: the best model measured had a drop of 0: allow it with '--max-ap-drop 0'" in result.stderr
    assert not (cache / "planted" / "openvino").exists() or not any((cache / "planted" / "openvino").rglob("*.xml"))


def test_seeded_twin_meets_a_generous_agreement_budget(tmp_path: Path) -> None:
    """Without annotations the budget is agreement with FP32 on the guard's held-out images: FP32 scores 1.0 by
    construction, and the seeded twin's INT8 stays well within a drop of 0.5."""
    registry, cache = tmp_path / "registry.yml", tmp_path / "cache"
    install_model(cache, registry, "tiny", synthetic.build_model(TwinSpec(variant="tiny")), sources=[TINY_URL])
    result = _cli(registry, cache, "convert", "tiny", "--precision", "INT8", "--offline", "--calibration-size", "10",
                  "--max-ap-drop", "0.5", "--json")
    assert result.exit_code == 0, result.output
    budget = json.loads(result.stdout)["accuracy_control"]
    assert budget["metric"] == "agreement AP" and budget["fp32"] == 1.0
    assert budget["met"] is True and 0.0 <= budget["drop"] <= 0.5
    assert budget["validation"] == {"kind": "agreement", "metric": "agreement AP", "images": 8,
                                    "identity": "generated:seed=4242:count=8",
                                    "description": "8 generated images (seed 4242)"}
    events = _events(result.stderr)
    reference = [e for e in events if e["phase"] == "reference"]
    assert [e["done"] for e in reference] == list(range(1, 9)) and reference[-1]["total"] == 8
    assert any(e["phase"] == "validate" and "value" in e for e in events)


# ------------------------------------------------------------------------------------------------ checks first
@pytest.mark.parametrize(("value", "message"), [
    ("nan", "--max-ap-drop must be a finite number between -1 and 1"),
    ("inf", "--max-ap-drop must be a finite number between -1 and 1"),
    ("1.5", "--max-ap-drop must be a finite number between -1 and 1"),
    ("-2", "--max-ap-drop must be a finite number between -1 and 1"),
    ("-0.1", "--max-ap-drop -0.1 asks INT8 to agree with FP32 better than FP32 itself"),
])
def test_max_ap_drop_is_checked_before_anything_runs(tmp_path: Path, value: str, message: str) -> None:
    registry, cache = tmp_path / "registry.yml", tmp_path / "cache"
    install_model(cache, registry, "tiny", synthetic.build_model(TwinSpec(variant="tiny")), sources=[TINY_URL])
    result = _cli(registry, cache, "convert", "tiny", "--precision", "INT8", "--offline", "--max-ap-drop", value)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (cache / "tiny" / "openvino").exists()


@pytest.mark.parametrize(("args", "message"), [
    (("--max-ap-drop", "abc"), "'abc' is not a valid float"),
    (("--max-ap-drop", "0.01", "--annotations", "a.json"), "--annotations and --images go together"),
    (("--annotations", "a.json", "--images", "."), "no --max-ap-drop was given"),
    (("--max-ap-drop", "0.01", "--accept-accuracy-drop"), "--max-ap-drop replaces the accuracy guard"),
    (("--max-ap-drop", "0.01", "--no-verify"), "--max-ap-drop replaces the accuracy guard"),
])
def test_budget_options_that_do_not_go_together(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    registry, cache = tmp_path / "registry.yml", tmp_path / "cache"
    install_model(cache, registry, "tiny", synthetic.build_model(TwinSpec(variant="tiny")), sources=[TINY_URL])
    result = _cli(registry, cache, "convert", "tiny", "--precision", "INT8", "--offline", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_budget_and_held_out_are_int8_only(tmp_path: Path) -> None:
    registry, cache = tmp_path / "registry.yml", tmp_path / "cache"
    install_model(cache, registry, "tiny", synthetic.build_model(TwinSpec(variant="tiny")), sources=[TINY_URL])
    budget = _cli(registry, cache, "convert", "tiny", "--offline", "--max-ap-drop", "0.01")
    assert budget.exit_code == 2 and "apply to INT8 only, got precision FP32" in budget.stderr
    held_out = _cli(registry, cache, "convert", "tiny", "--offline", "--held-out", "4")
    assert held_out.exit_code == 2 and "--held-out apply to --precision INT8 only" in held_out.stderr


def test_a_calibration_copy_of_a_validation_image_is_refused(planted: dict[str, Any], tmp_path: Path) -> None:
    """The budget is measured on images that did not calibrate: a copy under another name is found by content."""
    photos = planted["root"] / "photos"
    calibration = tmp_path / "calibration"
    shutil.copytree(photos, calibration)
    result = _cli(planted["registry"], tmp_path / "cache", "convert", "planted", "--precision", "INT8", "--offline",
                  "--calibration", str(calibration), "--annotations", str(planted["annotations"]), "--images",
                  str(photos), "--held-out", "4", "--max-ap-drop", "0.01")
    assert result.exit_code == 2, result.output
    assert "has the same bytes as the validation image" in result.stderr
    assert "the budget must be measured on images that did not calibrate the model" in result.stderr


def test_annotated_images_missing_from_the_folder(planted: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = _cli(planted["registry"], tmp_path / "cache", "convert", "planted", "--precision", "INT8", "--offline",
                  "--annotations", str(planted["annotations"]), "--images", str(tmp_path / "empty"),
                  "--max-ap-drop", "0.01")
    assert result.exit_code == 2, result.output
    assert f"none of the 12 images of {planted['annotations']} is in {tmp_path / 'empty'}" in result.stderr


# ------------------------------------------------------------------------------------------------ the record
def _report(**changes: Any) -> dict[str, Any]:
    report = BudgetReport(max_drop=0.01, metric="COCO AP", validation={"description": "4 images"}, fp32=0.5,
                          all_int8=0.4, installed=0.495, best_drop=0.005, layers=51, all_int8_layers=51,
                          int8_layers=49, float_layers=("a.conv", "b.conv"), validation_runs=70,
                          latency=Latency(all_int8_ms=500.0, installed_ms=550.0, runs=5, inference_precision="bf16"))
    return {**report.to_dict(), **changes}


def test_report_round_trips_and_reads_like_a_sentence() -> None:
    data = _report()
    report = BudgetReport.from_dict(data)
    assert report.to_dict() == data and report.met and math.isclose(report.latency.ratio, 1.1)
    assert describe(data) == [
        "met: COCO AP 0.4950 vs FP32 0.5000 (drop 0.0050, budget 0.01; every layer in INT8: 0.4000) on 4 images; 2 "
        "of 51 layers kept in floating point; latency 550 ms vs 500 ms with every layer in INT8 (1.10x at bf16)",
        "kept in floating point: a.conv, b.conv"]


@pytest.mark.parametrize(("changes", "field"), [
    ({"fp32": float("nan")}, "fp32"), ({"installed": "0.5"}, "installed"), ({"layers": -1}, "layers"),
    ({"float_layers": "a.conv"}, "float_layers"), ({"validation": None}, "validation"),
    ({"latency": {"all_int8_ms": float("inf")}}, "latency"), ({"best_drop": True}, "best_drop"),
])
def test_a_tampered_record_is_not_believed(changes: dict[str, Any], field: str) -> None:
    """Provenance is read from an IR file: a record that is not a report is shown as it is, never formatted."""
    with pytest.raises(ValueError, match=f"^{field}: expected"):
        BudgetReport.from_dict(_report(**changes))
    assert describe(_report(**changes))[0].startswith(f"unreadable record ({field}: expected")


def test_refusal_when_only_floating_point_meets_the_budget() -> None:
    report = BudgetReport.from_dict(_report(installed=0.5, int8_layers=0, best_drop=0.1,
                                            float_layers=[f"conv{i}" for i in range(51)], latency=None))
    error = report.refusal("tiny")
    assert error.exit_code == 24
    assert ("the budget is met only with every one of the 51 layers back in floating point, which is the FP32 model, "
            "not an INT8 one; the best drop reached with layers in INT8 was 0.1000. Nothing was installed."
            ) in error.message
    assert error.hint.startswith("the best model measured had a drop of 0.1: allow it with '--max-ap-drop 0.1'")


# ------------------------------------------------------------------------------------------------ progress
def test_phase_progress_shows_runs_and_their_results(capsys: pytest.CaptureFixture[str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from ssdtool.commands.progress import phase_progress
    from ssdtool.quantize import QuantizeEvent

    render = phase_progress({"validate": "accuracy control"}, mode="json")
    assert render is not None
    render(QuantizeEvent("validate", 4, 4, run=3, value=0.8123))
    render(QuantizeEvent("calibrate", 1, 10))
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines == [{"event": "progress", "phase": "validate", "done": 4, "total": 4, "run": 3, "value": 0.8123},
                     {"event": "progress", "phase": "calibrate", "done": 1, "total": 10}]
    as_log = phase_progress({"validate": "accuracy control"}, mode="log")
    assert as_log is not None
    logger = logging.getLogger("ssdtool")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    try:
        as_log(QuantizeEvent("validate", 2, 4, run=3))
        as_log(QuantizeEvent("validate", 4, 4, run=3, value=0.8123))
    finally:
        logger.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records] == ["accuracy control, run 3: 4 img, result 0.8123"]
