"""Registry validation: every rejection is located, says what was expected, and exits with code 3."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from ssdtool.cli import cli
from ssdtool.errors import RegistryError, UnknownModelError
from ssdtool.registry import FileEntry, load_registry, packaged_registry_path, parse_registry

ROOT = Path(__file__).resolve().parent.parent
MODEL = "ssd-resnet34-1200-onnx"
REAL_SHA256 = "b417a8186967f1e78670b0075aa72a10e5c7d1a6d5c08af9d13dc97f3d29ef0d"
REAL_SHA384 = ("754dd59fdb244e6a93f6173efe26c45bce804305f71b1d0a8a3eb555b3a120894658a0b97475840b93f3c2a30c5efd99")


def packaged_data() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "models.yml").read_text())


def one_model(data: dict[str, Any]) -> dict[str, Any]:
    """The registry reduced to the real model, so each test mutates one known entry."""
    return {"version": 1, "default_model": MODEL, "models": {MODEL: copy.deepcopy(data["models"][MODEL])}}


def problems_of(data: Any) -> list[str]:
    with pytest.raises(RegistryError) as caught:
        parse_registry(yaml.safe_dump(data, sort_keys=False))
    return caught.value.problems


def test_packaged_registry_holds_the_real_file_facts() -> None:
    registry = load_registry()
    entry = registry.model()
    assert registry.default_model == MODEL
    assert entry.name == MODEL
    model_file = entry.primary_file
    assert model_file == FileEntry(
        name="resnet34-ssd1200.onnx",
        size=80_363_696,
        sha256=REAL_SHA256,
        sha384=REAL_SHA384,
        sources=(
            "https://zenodo.org/record/3228411/files/resnet34-ssd1200.onnx",
            "https://storage.openvinotoolkit.org/repositories/open_model_zoo/public/2022.1/"
            "ssd-resnet34-1200-onnx/resnet34-ssd1200.onnx",
        ),
    )
    assert entry.input.color_order == "RGB"
    assert entry.input.mean == (123.675, 116.28, 103.53)
    assert entry.input.scale == (58.395, 57.12, 57.375)
    assert entry.input.resize == (1200, 1200)
    assert entry.outputs.box_units == "normalized"
    assert entry.convert.color_order == "BGR"
    assert entry.convert.output_count == 200


def test_every_packaged_entry_is_valid_and_its_label_file_has_81_lines() -> None:
    registry = load_registry()
    for entry in registry:
        names = entry.label_names()
        assert len(names) == 81
        assert names[0] == "__background__"
        assert names[1] == "person"


def test_registry_is_one_file_shared_with_the_package() -> None:
    # In a source checkout the packaged registry *is* the root models.yml (no second copy in ssdtool/).
    assert not (ROOT / "ssdtool" / "models.yml").exists()
    assert packaged_registry_path().resolve() == (ROOT / "models.yml").resolve()


def test_sha256_of_wrong_length_is_located() -> None:
    data = one_model(packaged_data())
    data["models"][MODEL]["files"][0]["sha256"] = REAL_SHA256[:63]
    assert problems_of(data) == [
        f"models.yml: models.{MODEL}.files[0].sha256: expected 64 hex characters, got 63"
    ]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda m: m["files"][0].update(sha384="z" * 96),
         "files[0].sha384: expected 96 hex characters (0-9, a-f), got 'zzz"),
        (lambda m: m["files"][0].update(size=-1), "files[0].size: expected an integer >= 0, got -1"),
        (lambda m: m["files"][0].update(size="80MB"), "files[0].size: expected an integer, got a string '80MB'"),
        (lambda m: m["files"][0].update(size=True), "files[0].size: expected an integer, got a boolean True"),
        (lambda m: m["files"][0].update(name="/etc/passwd"), "files[0].name: must be a plain file name"),
        (lambda m: m["files"][0].update(name=".."), "files[0].name: must not contain '..'"),
        (lambda m: m["files"][0].update(name="../escape.onnx"), "files[0].name: must not contain '..'"),
        (lambda m: m["files"][0].update(name="sub/model.onnx"), "files[0].name: must not contain path separators"),
        (lambda m: m["files"][0].update(name="sub\\model.onnx"), "files[0].name: must not contain path separators"),
        (lambda m: m["files"][0].update(name="model\x00.onnx"), "files[0].name: must not contain NUL"),
        (lambda m: m["files"][0].update(sources=["ftp://example.org/model.onnx"]),
         "files[0].sources[0]: expected a URL with scheme http, https, file, synthetic, got 'ftp://"),
        (lambda m: m["files"][0].update(sources=["https:///no-host"]), "files[0].sources[0]: expected a host"),
        (lambda m: m["files"][0].update(sources=[]), "files[0].sources: expected a non-empty list of URLs"),
        (lambda m: m["files"][0].update(sources="https://example.org/x.onnx"),
         "files[0].sources: expected a non-empty list of URLs, got a string"),
        (lambda m: m["files"][0].pop("sha256") and m["files"][0].pop("sha384"),
         "files[0]: missing checksum: expected 'sha256' and/or 'sha384'"),
        (lambda m: m["files"][0].update(md5="abc"), "files[0].md5: unknown key (allowed: name, size, sources"),
        (lambda m: m.update(colour="red"), "colour: unknown key (allowed: description, task"),
        (lambda m: m.pop("license"), f"models.{MODEL}: missing key 'license'"),
        (lambda m: m.update(task="segmentation"), "task: expected one of detection, got 'segmentation'"),
        (lambda m: m.update(description=42), "description: expected a non-empty string, got an integer 42"),
        (lambda m: m.update(files=[]), "files: expected a non-empty list of files"),
        (lambda m: m["input"].update(mean=[1, 2]), "input.mean: expected 3 numbers, got 2"),
        (lambda m: m["input"].update(scale=[1, 0, 1]), "input.scale: expected numbers > 0"),
        (lambda m: m["input"].update(layout="CHW"), "input.layout: expected one of NCHW, NHWC, got 'CHW'"),
        (lambda m: m["input"].update(color_order="RGBA"), "input.color_order: expected one of RGB, BGR"),
        (lambda m: m["input"].update(resize=[300, 300]),
         "input.resize: expected [width, height] = [1200, 1200] to match shape [1, 3, 1200, 1200], got [300, 300]"),
        (lambda m: m["input"].update(interpolation="lanczos"), "input.interpolation: expected one of bilinear"),
        (lambda m: m["outputs"].update(box_format="yxyx"), "outputs.box_format: expected one of xyxy, got 'yxyx'"),
        (lambda m: m["outputs"].update(box_units="percent"), "outputs.box_units: expected one of normalized, pixels"),
        (lambda m: m["outputs"].update(label_offset="1"), "outputs.label_offset: expected an integer, got a string"),
        (lambda m: m["convert"].update(output_count=0), "convert.output_count: expected an integer >= 1, got 0"),
        (lambda m: m["convert"].update(precision="FP64"), "convert.precision: expected one of FP32, FP16, INT8"),
        (lambda m: m.update(labels="../labels.txt"), "labels: must not contain '..'"),
    ],
)
def test_each_rejection_names_its_location_and_expectation(mutate: Any, expected: str) -> None:
    data = one_model(packaged_data())
    mutate(data["models"][MODEL])
    problems = problems_of(data)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith("models.yml: ") for p in problems)


def test_yaml_that_is_not_a_mapping() -> None:
    assert problems_of(["just", "a", "list"]) == ["models.yml: top level: expected a mapping, got a list"]
    with pytest.raises(RegistryError, match="expected a mapping, got nothing"):
        parse_registry("")


def test_invalid_yaml_syntax() -> None:
    with pytest.raises(RegistryError, match=r"models.yml: not valid YAML"):
        parse_registry("models: [unclosed")


def test_missing_top_level_keys_and_wrong_version() -> None:
    assert problems_of({"version": 1}) == ["models.yml: top level: missing key 'models'"]
    problems = problems_of({"version": 2, "models": one_model(packaged_data())["models"]})
    assert problems == ["models.yml: version: expected format version 1, got 2; this ssdtool is too old or the "
                        "file too new"]


def test_duplicate_model_names_are_rejected_with_lines() -> None:
    text = (ROOT / "models.yml").read_text()
    body = text.split("models:\n", 1)[1]
    duplicated = text + body
    with pytest.raises(RegistryError) as caught:
        parse_registry(duplicated)
    assert any(f"duplicate key '{MODEL}'" in p and "first defined on line" in p for p in caught.value.problems)


def test_default_model_must_exist() -> None:
    data = one_model(packaged_data())
    data["default_model"] = "nope"
    assert problems_of(data) == ["models.yml: default_model: expected the name of a model in 'models', "
                                 "got a string 'nope'"]


def test_all_problems_are_reported_at_once() -> None:
    data = one_model(packaged_data())
    data["models"][MODEL]["files"][0]["size"] = -5
    data["models"][MODEL]["input"]["mean"] = "zero"
    assert len(problems_of(data)) == 2


def test_unsafe_yaml_tags_are_refused() -> None:
    with pytest.raises(RegistryError, match="not valid YAML"):
        parse_registry("!!python/object/apply:os.system ['echo pwned']")


def test_unknown_model_suggests_close_names() -> None:
    registry = load_registry()
    with pytest.raises(UnknownModelError) as caught:
        registry.model("ssd-resnet34-1200")
    assert "did you mean ssd-resnet34-1200-onnx" in str(caught.value)
    assert caught.value.exit_code == 4


def test_registry_from_a_file_and_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = one_model(packaged_data())
    data["models"]["my-model"] = data["models"].pop(MODEL)
    data["default_model"] = "my-model"
    path = tmp_path / "mine.yml"
    path.write_text(yaml.safe_dump(data))
    assert list(load_registry(path).models) == ["my-model"]
    monkeypatch.setenv("SSDTOOL_REGISTRY", str(path))
    assert list(load_registry().models) == ["my-model"]


def test_missing_registry_file(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="file not found"):
        load_registry(tmp_path / "absent.yml")


def test_cli_reports_registry_problems_with_exit_code_3(tmp_path: Path) -> None:
    data = one_model(packaged_data())
    data["models"][MODEL]["files"][0]["sha256"] = REAL_SHA256[:63]
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = CliRunner().invoke(cli, ["--registry", str(path), "models"])
    assert result.exit_code == 3
    assert f"{path}: models.{MODEL}.files[0].sha256: expected 64 hex characters, got 63" in result.stderr
    assert "hint: fix" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_user_registry_label_file_next_to_it(tmp_path: Path) -> None:
    data = one_model(packaged_data())
    data["models"][MODEL]["labels"] = "my-labels.txt"
    (tmp_path / "my-labels.txt").write_text("bg\ncat\n")
    path = tmp_path / "reg.yml"
    path.write_text(yaml.safe_dump(data))
    assert load_registry(path).model().label_names() == ("bg", "cat")


# ------------------------------------------------------------------------------------------------------------------
# Hardening (issue 11): what used to escape as exit 1, and load cost


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda m: m["files"][0].update(sources=["http://[::1/f.onnx"]),
     "files[0].sources[0]: expected a valid URL, got 'http://[::1/f.onnx': Invalid IPv6 URL"),
    (lambda m: m["files"][0].update(sources=["http://host:99999/f.onnx"]),
     "files[0].sources[0]: expected a valid URL, got 'http://host:99999/f.onnx': Port out of range"),
    (lambda m: m["files"][0].update(sources=["https://user:pw@/f.onnx"]),
     "files[0].sources[0]: expected a host in the URL, got 'https://***@/f.onnx'"),
    (lambda m: m["files"][0].update(name="x" * 300 + ".onnx"),
     "files[0].name: must be at most 200 bytes long (UTF-8), got 305"),
    (lambda m: m["files"][0].update(name="é" * 101), "files[0].name: must be at most 200 bytes long (UTF-8), got 202"),
    (lambda m: m["files"][0].update(name="openvino"), "files[0].name: 'openvino' is reserved"),
    (lambda m: m["files"][0].update(name=".ssdtool"), "files[0].name: '.ssdtool' is reserved"),
    (lambda m: m["files"][0].update(name="OpenVINO"), "files[0].name: 'OpenVINO' is reserved"),
    (lambda m: m["files"][0].update(name="a\nb.onnx"), "files[0].name: must not contain control characters"),
])
def test_hostile_values_are_located_problems(mutate: Any, expected: str) -> None:
    data = one_model(packaged_data())
    mutate(data["models"][MODEL])
    problems = problems_of(data)
    assert any(expected in p for p in problems), problems


def test_long_model_name_is_located() -> None:
    data = one_model(packaged_data())
    data["models"]["m" * 300] = data["models"].pop(MODEL)
    data["default_model"] = "m" * 300
    assert any(f"models.{'m' * 60}...: model names are at most 200 characters" in p for p in problems_of(data))


def test_credentials_in_a_rejected_source_are_not_quoted() -> None:
    data = one_model(packaged_data())
    data["models"][MODEL]["files"][0]["sources"] = ["ftp://user:hunter2@host/f.onnx?token=abc"]
    [problem] = problems_of(data)
    assert "hunter2" not in problem and "abc" not in problem and "ftp://***@host/f.onnx?token=***" in problem


@pytest.mark.parametrize("loader", ["libyaml", "pure-python"])
def test_deeply_nested_yaml_is_a_registry_error(loader: str) -> None:
    from ssdtool.registry import schema

    text = "[" * 100_000 + "]" * 100_000
    with pytest.raises(RegistryError, match="not valid YAML"):
        schema._parse_yaml(text, "deep.yml", None if loader == "libyaml" else schema._PurePythonLoader)


def test_yaml_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    with pytest.raises(RegistryError, match=r"expands to more than 200,000 values \(through YAML aliases"):
        parse_registry("\n".join(lines) + "\nversion: 1\nmodels: *a7\n")


def test_registry_uses_the_c_parser_when_pyyaml_has_it() -> None:
    from ssdtool.registry import schema

    assert issubclass(schema._UniqueKeyLoader, getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def test_many_problems_are_counted_and_the_first_listed() -> None:
    data = one_model(packaged_data())
    data["models"] = {f"m{i}": {"colour": "red"} for i in range(100)}
    with pytest.raises(RegistryError) as caught:
        parse_registry(yaml.safe_dump(data))
    assert len(caught.value.problems) > 100
    assert caught.value.message.count("\n") == 51 and caught.value.message.endswith(
        f"... and {len(caught.value.problems) - 50} more")


@pytest.mark.parametrize("kind", ["device", "fifo", "folder", "too large", "not utf-8"])
def test_registry_file_must_be_a_small_regular_text_file(kind: str, tmp_path: Path) -> None:
    from ssdtool.registry import MAX_REGISTRY_BYTES

    path = tmp_path / "registry.yml"
    if kind == "device":
        path = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)  # opening it for reading would block until a writer came
    elif kind == "folder":
        path.mkdir()
    elif kind == "too large":
        path.write_bytes(b"#" * (MAX_REGISTRY_BYTES + 1))
    else:
        path.write_bytes(b"version: 1\nmodels: {\xff: 1}\n")
    expected = {"device": "it is a character device, expected a regular file",
                "fifo": "it is a FIFO (named pipe), expected a regular file",
                "folder": "it is a folder, expected a regular file",
                "too large": "larger than 1,048,576 bytes, the most a registry may have",
                "not utf-8": "not UTF-8 text"}[kind]
    if kind == "folder":  # the CLI's own option check refuses a folder first (exit 2); the library says why too
        with pytest.raises(RegistryError, match=expected):
            load_registry(path)
        return
    result = CliRunner().invoke(cli, ["--registry", str(path), "models", "--json"])
    assert result.exit_code == 3, result.output
    assert f"{path}: {expected}" in result.stderr
    assert json.loads(result.stdout)["exit_code"] == 3


@pytest.mark.parametrize(("content", "expected"), [
    (b"bg\n\xff\xfe cat\n", "label file .* is not UTF-8 text \\(invalid start byte at byte 3\\)"),
    (b"only-one\n", "label file .* has 1 names; expected the background and at least one class"),
])
def test_bad_label_files_are_registry_errors(tmp_path: Path, content: bytes, expected: str) -> None:
    data = one_model(packaged_data())
    data["models"][MODEL]["labels"] = "my-labels.txt"
    (tmp_path / "my-labels.txt").write_bytes(content)
    path = tmp_path / "reg.yml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RegistryError, match=f"models.{MODEL}.labels: {expected}") as caught:
        load_registry(path).model().label_names()
    assert caught.value.exit_code == 3


def test_a_label_id_past_the_label_file_is_a_registry_error(tmp_path: Path) -> None:
    """A short label file used to turn label 24 into 'class_24' silently."""
    import numpy as np

    from ssdtool.detections import detections_from_arrays

    data = one_model(packaged_data())
    data["models"][MODEL]["labels"] = "short.txt"
    (tmp_path / "short.txt").write_text("__background__\nperson\ncar\n")
    path = tmp_path / "reg.yml"
    path.write_text(yaml.safe_dump(data))
    entry = load_registry(path).model()
    boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6]], np.float32)
    kept = detections_from_arrays(boxes, np.array([1, 2]), np.array([0.9, 0.8], np.float32), entry, (100, 100))
    assert [d.label for d in kept] == ["person", "car"]
    with pytest.raises(RegistryError, match=rf"models.{MODEL}.labels: the label file short.txt has 3 names \(label "
                                            r"ids 0..2\), but the model predicted label id 24"):
        detections_from_arrays(boxes, np.array([1, 24]), np.array([0.9, 0.8], np.float32), entry, (100, 100))
