"""Model API's metadata (``rt_info/model_info``) in every IR ssdtool writes, and what ``convert`` does with an IR
that lacks it (made by an older ssdtool) or has it out of date (another label file): amended, not rebuilt.

Model API itself reading these IRs is tests/test_model_api.py."""

from __future__ import annotations

import hashlib
import json
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import onnx
import pytest
from click.testing import CliRunner

from ssdtool import synthetic
from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.convert import ConvertOptions, conversion_parameters, convert, model_info
from ssdtool.fsutil import atomic_write
from ssdtool.labels import COCO_NAMES
from ssdtool.provenance import read_provenance
from ssdtool.registry import load_registry
from ssdtool.synthetic import TwinSpec
from tests.modelkit import ROOT, install_model, tiny_entry_template

#: What Model API reads from the standard IR of a COCO model: every value as it is written (a list is one
#: space-separated string, so names with spaces are joined with "_", as Model API's own converter writes COCO).
COCO_LABELS = " ".join(["__background__", *(name.replace(" ", "_") for name in COCO_NAMES)])
STANDARD_INFO = {
    "model_type": "SSD", "labels": COCO_LABELS, "confidence_threshold": "0.5", "resize_type": "standard",
    "reverse_input_channels": "False", "mean_values": "", "scale_values": "", "input_dtype": "u8",
}


@pytest.fixture(scope="module")
def tiny_model() -> onnx.ModelProto:
    return synthetic.build_model(TwinSpec(variant="tiny"))


@pytest.fixture
def env(tmp_path: Path, tiny_model: onnx.ModelProto) -> tuple[Path, Path]:
    registry_path, cache_dir = tmp_path / "registry.yml", tmp_path / "cache"
    install_model(cache_dir, registry_path, "tiny", tiny_model)
    return registry_path, cache_dir


def _cli(env: tuple[Path, Path], *args: str) -> Any:
    registry_path, cache_dir = env
    return CliRunner().invoke(cli, ["--registry", str(registry_path), "--cache-dir", str(cache_dir), *args])


def _section(xml: Path) -> dict[str, str] | None:
    """``<rt_info><model_info>`` of the IR as written, or None."""
    node = ElementTree.parse(xml).getroot().find("rt_info/model_info")
    return None if node is None else {child.tag: child.get("value", "") for child in node}


def _as_older_ssdtool_wrote_it(xml: Path) -> None:
    """Remove what this version adds: the model_info section and the parameter that records it."""
    tree = ElementTree.parse(xml)
    rt_info = tree.getroot().find("rt_info")
    assert rt_info is not None
    rt_info.remove(rt_info.find("model_info"))
    parameters = rt_info.find("ssdtool/parameters")
    assert parameters is not None
    values = json.loads(parameters.get("value", ""))
    del values["model_info"]
    parameters.set("value", json.dumps(values, sort_keys=True))
    atomic_write(xml, ElementTree.tostring(tree.getroot(), encoding="utf-8", xml_declaration=True))


def _file_identity(path: Path) -> tuple[int, int, str]:
    info = os.stat(path)
    return info.st_ino, info.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_standard_and_image_input_irs_carry_model_apis_metadata(env: tuple[Path, Path]) -> None:
    import openvino as ov

    registry_path, cache_dir = env
    entry = load_registry(registry_path).model("tiny")
    standard = convert(entry, Cache.at(cache_dir), ConvertOptions(verify=False)).xml
    image = convert(entry, Cache.at(cache_dir), ConvertOptions(verify=False, image_input=True)).xml
    assert _section(standard) == STANDARD_INFO
    assert _section(image) == {**STANDARD_INFO, "embedded_processing": "True", "orig_width": "300",
                               "orig_height": "300"}
    # OpenVINO reads it back (Model API asks OpenVINO, not the XML), and the key records it.
    model = ov.Core().read_model(str(standard))
    assert model.get_rt_info(["model_info", "model_type"]).astype(str) == "SSD"
    assert model.get_rt_info(["model_info", "mean_values"]).astype(str) == ""
    parameters = (read_provenance(standard) or {})["parameters"]
    assert parameters == conversion_parameters(entry, ConvertOptions())
    assert parameters["model_info"] == "sha256:" + hashlib.sha256(
        json.dumps(STANDARD_INFO, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_an_ir_of_an_older_ssdtool_is_amended_in_place_not_rebuilt(env: tuple[Path, Path]) -> None:
    first = _cli(env, "convert", "tiny", "--no-verify", "--json")
    assert first.exit_code == 0, first.output
    xml = Path(json.loads(first.stdout)["xml"])
    _as_older_ssdtool_wrote_it(xml)
    assert _section(xml) is None
    weights = _file_identity(xml.with_suffix(".bin"))

    result = _cli(env, "convert", "tiny")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == ("tiny (FP32): amended: Model API metadata (rt_info/model_info) written "
                                             "into the IR; graph and weights unchanged")
    assert "parity:" not in result.stdout  # nothing was built, so nothing was proven again
    assert _file_identity(xml.with_suffix(".bin")) == weights  # the same file, untouched
    assert _section(xml) == STANDARD_INFO
    entry = load_registry(env[0]).model("tiny")
    assert (read_provenance(xml) or {})["parameters"] == conversion_parameters(entry, ConvertOptions())

    again = _cli(env, "convert", "tiny", "--json")
    assert again.exit_code == 0, again.output
    data = json.loads(again.stdout)
    assert (data["up_to_date"], data["amended"]) == (True, False)


def test_amending_reports_in_json_and_keeps_the_rest_of_the_provenance(env: tuple[Path, Path]) -> None:
    xml = Path(json.loads(_cli(env, "convert", "tiny", "--no-verify", "--json").stdout)["xml"])
    before = read_provenance(xml) or {}
    _as_older_ssdtool_wrote_it(xml)
    result = _cli(env, "convert", "tiny", "--no-verify", "--json")  # no runtime check recorded meanwhile
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["up_to_date"], data["amended"], data["parity"]) == (False, True, None)
    after = read_provenance(xml) or {}
    assert after == before  # created, weights, parity record: all as they were, the parameters restored


def test_a_changed_label_file_amends_the_labels(env: tuple[Path, Path]) -> None:
    import yaml

    registry_path, _ = env
    xml = Path(json.loads(_cli(env, "convert", "tiny", "--no-verify", "--json").stdout)["xml"])
    weights = _file_identity(xml.with_suffix(".bin"))
    names = (ROOT / "ssdtool" / "data" / "coco_80cl_bkgr.txt").read_text().splitlines()
    names[1] = "pedestrian  walker"
    names[2] = "bi\x01cycle"  # not printable: neither Model API's list nor XML can carry it as it is
    (registry_path.parent / "custom.txt").write_text("\n".join(names) + "\n")
    data = yaml.safe_load(registry_path.read_text())
    data["models"]["tiny"]["labels"] = "custom.txt"
    registry_path.write_text(yaml.safe_dump(data, sort_keys=False))

    result = _cli(env, "convert", "tiny", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["amended"] is True
    labels = (_section(xml) or {})["labels"].split(" ")
    assert labels[:4] == ["__background__", "pedestrian_walker", "bi_cycle", "car"] and len(labels) == 81
    assert _file_identity(xml.with_suffix(".bin")) == weights


def test_an_ir_that_differs_in_more_than_the_metadata_is_rebuilt(env: tuple[Path, Path]) -> None:
    xml = Path(json.loads(_cli(env, "convert", "tiny", "--no-verify", "--json").stdout)["xml"])
    _as_older_ssdtool_wrote_it(xml)
    tree = ElementTree.parse(xml)
    parameters = tree.getroot().find("rt_info/ssdtool/parameters")
    assert parameters is not None
    values = json.loads(parameters.get("value", ""))
    values["recipe"] = 0  # an older graph rewrite
    parameters.set("value", json.dumps(values, sort_keys=True))
    atomic_write(xml, ElementTree.tostring(tree.getroot(), encoding="utf-8", xml_declaration=True))
    inode = os.stat(xml.with_suffix(".bin")).st_ino

    result = _cli(env, "convert", "tiny", "--no-verify", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["up_to_date"], data["amended"]) == (False, False)
    assert os.stat(xml.with_suffix(".bin")).st_ino != inode  # a new folder was installed
    assert _section(xml) == STANDARD_INFO


def test_an_rgb_ir_asks_model_api_to_reverse_its_bgr_images(tmp_path: Path) -> None:
    entry_data = tiny_entry_template()
    entry_data["convert"]["color_order"] = "RGB"
    registry_path = tmp_path / "registry.yml"
    install_model(tmp_path / "cache", registry_path, "rgb", b"not used", entry=entry_data)
    entry = load_registry(registry_path).model("rgb")
    assert model_info(entry, ConvertOptions())["reverse_input_channels"] == "True"


def test_a_section_removed_by_hand_is_found_and_written_again(env: tuple[Path, Path]) -> None:
    """The up-to-date check reads the section itself, not only the parameter that records it: ``detect`` and
    ``export`` never pass on an IR without it."""
    xml = Path(json.loads(_cli(env, "convert", "tiny", "--no-verify", "--json").stdout)["xml"])
    tree = ElementTree.parse(xml)
    rt_info = tree.getroot().find("rt_info")
    assert rt_info is not None
    rt_info.remove(rt_info.find("model_info"))
    atomic_write(xml, ElementTree.tostring(tree.getroot(), encoding="utf-8", xml_declaration=True))
    registry_path, cache_dir = env
    entry = load_registry(registry_path).model("tiny")
    from ssdtool.artifacts import installed_ir

    assert installed_ir(entry, Cache.at(cache_dir), ConvertOptions()) is None
    result = convert(entry, Cache.at(cache_dir), ConvertOptions(verify=False))
    assert result.amended and _section(xml) == STANDARD_INFO
    assert installed_ir(entry, Cache.at(cache_dir), ConvertOptions()) == xml


def test_amending_needs_no_source_model(env: tuple[Path, Path]) -> None:
    """An IR whose source ONNX was removed from the cache (or never copied to an air-gapped one) is amended
    offline: only the graph needs the source, and the graph is kept."""
    xml = Path(json.loads(_cli(env, "convert", "tiny", "--no-verify", "--json").stdout)["xml"])
    _as_older_ssdtool_wrote_it(xml)
    (env[1] / "tiny" / "model.onnx").unlink()
    result = _cli(env, "convert", "tiny", "--no-verify", "--offline", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["amended"] is True
    assert _section(xml) == STANDARD_INFO
    assert not (env[1] / "tiny" / "model.onnx").exists()


def test_a_read_only_cache_runs_an_older_ir_as_it_is(env: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefetched cache mounted read-only, made by an older ssdtool: detect and convert use the IR there (with a
    warning naming the fix), since the metadata only matters to Model API."""
    import filelock

    from ssdtool import fsutil

    xml = Path(json.loads(_cli(env, "convert", "tiny", "--no-verify", "--json").stdout)["xml"])
    _as_older_ssdtool_wrote_it(xml)
    before = xml.read_bytes()

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(filelock.FileLock, "acquire", refuse)
    monkeypatch.setattr(fsutil, "ensure_folder", refuse)
    monkeypatch.setattr(fsutil, "atomic_write", refuse)
    result = _cli(env, "convert", "tiny", "--no-verify", "--offline")
    assert result.exit_code == 0, result.output
    assert "tiny (FP32): up to date" in result.stdout
    warning = " ".join(result.stderr.split())
    assert "lacks the current Model API metadata (rt_info/model_info) and cannot be amended here" in warning
    assert "run 'ssdtool convert tiny' where the cache is writable" in warning
    detect_image = env[1].parent / "x.png"
    from PIL import Image

    Image.new("RGB", (64, 48)).save(detect_image)
    detected = _cli(env, "detect", str(detect_image), "-m", "tiny", "--offline", "--format", "json")
    assert detected.exit_code == 0, detected.output
    assert xml.read_bytes() == before
