"""Contracts between the layers (docs/architecture.md): commands register whatever the import order, the library
prints nothing (it returns data and logs), and calibration sees exactly the pixels detection sees."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssdtool.cache import Cache
from ssdtool.registry import load_registry

ROOT = Path(__file__).resolve().parent.parent
TINY = "ssd-resnet34-300-synthetic-tiny"
COMMAND_MODULES = ("bench", "catalog", "convert", "detect", "download", "eval", "export", "common", "options",
                   "progress", "detect_output", "serve", "bench_loadgen")


# ------------------------------------------------------------------------------------------------- registration
def _registered_after(first_import: str) -> list[str]:
    code = (f"import {first_import}\n"
            "from ssdtool.cli import cli\n"
            "import json; print(json.dumps(sorted(cli.commands)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_commands_register_whatever_is_imported_first() -> None:
    expected = _registered_after("ssdtool")
    assert expected == ["bench", "check", "convert", "detect", "download", "eval", "export", "info", "models", "run",
                        "serve", "verify"]
    for module in COMMAND_MODULES:
        assert _registered_after(f"ssdtool.commands.{module}") == expected, module


def test_command_modules_import_nothing_from_cli() -> None:
    import ast

    for path in (ROOT / "ssdtool" / "commands").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert "ssdtool.cli" not in names, f"{path.name} line {node.lineno} imports ssdtool.cli"


# ------------------------------------------------------------------------------------------------- silence
def test_library_calls_print_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                     caplog: pytest.LogCaptureFixture) -> None:
    """fetch, convert, Detector and bench return data and log through ``logging``; none writes to the process's
    stdout or stderr (file descriptors 1 and 2, so native libraries' output counts too)."""
    from ssdtool import Detector
    from ssdtool.bench import BenchOptions, benchmark
    from ssdtool.convert import ConvertOptions, convert
    from ssdtool.download import fetch
    from ssdtool.export import ExportOptions, export_model

    caplog.set_level(logging.DEBUG)
    entry = load_registry().model(TINY)
    cache = Cache.at(tmp_path / "cache")
    events: list[object] = []
    capfd.readouterr()

    fetched = fetch(entry, cache, progress=events.append)
    converted = convert(entry, cache, ConvertOptions(), progress=events.append)
    detector = Detector(TINY, "openvino", cache_dir=cache, inference_precision="f32")
    detections = detector(np.full((240, 320, 3), 128, np.uint8))
    report = benchmark(entry, cache, BenchOptions(iterations=2, images=1, inference_precision="f32"))
    exported = export_model(entry, cache, ExportOptions(format="triton", output_dir=tmp_path / "repository"))

    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert [(item.file, item.cached) for item in fetched] == [(entry.primary_file.name, False)]
    assert converted.xml.is_file() and converted.parity is not None and converted.parity.passed
    assert events  # progress went to the callback, not to a stream
    assert isinstance(detections, list)
    assert report.iterations == 2 and report.inference_precision == "f32"
    assert exported.version == 1 and (exported.version_dir / "model.xml").is_file()
    assert any(record.name.startswith("ssdtool") for record in caplog.records)  # it did have things to say


# ------------------------------------------------------------------------------------------------- pixels
def _save_in_mode(mode: str, path: Path, size: tuple[int, int]) -> Path:
    """An image of ``mode`` saved in a format that keeps the mode (CMYK as JPEG, YCbCr as TIFF, the rest PNG)."""
    rng = np.random.default_rng(size[0] + len(mode))
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "P+transparency":
        image = rgb.convert("P")
        image.save(path.with_suffix(".png"), transparency=3)
        return path.with_suffix(".png")
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16)).save(path.with_suffix(".png"))
        return path.with_suffix(".png")
    if mode == "CMYK":
        rgb.convert(mode).save(path.with_suffix(".jpg"), quality=95)
        return path.with_suffix(".jpg")
    if mode == "YCbCr":  # a JPEG decodes its YCbCr to RGB; an uncompressed TIFF keeps the mode
        rgb.convert(mode).save(path.with_suffix(".tif"))
        return path.with_suffix(".tif")
    if mode == "RGB+exif":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to view
        rgb.save(path.with_suffix(".jpg"), exif=exif.tobytes(), quality=95)
        return path.with_suffix(".jpg")
    rgb.convert(mode).save(path.with_suffix(".png"))
    return path.with_suffix(".png")


@pytest.mark.parametrize("mode", ["1", "L", "P", "P+transparency", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "I;16",
                                  "RGB+exif"])
@pytest.mark.parametrize("size", [(640, 480), (31, 517)])
def test_calibration_sees_the_pixels_detection_sees(tmp_path: Path, mode: str, size: tuple[int, int]) -> None:
    from ssdtool.calibration import load_rgb, network_input
    from ssdtool.pipeline import ImagePreparer

    entry = load_registry().model(TINY)
    path = _save_in_mode(mode, tmp_path / "image", size)
    with Image.open(path) as opened:
        saved_mode = opened.mode
    assert saved_mode == {"P+transparency": "P", "RGB+exif": "RGB", "I;16": saved_mode}.get(mode, mode)
    calibration = network_input(load_rgb(path), entry, "f32", "NCHW")
    preparer = ImagePreparer(entry, "ir")
    try:
        detection = preparer(path)
        drawn = preparer(path, keep_image=True)  # the path that keeps full-size pixels for --annotate
    finally:
        preparer.close()
    assert detection.tensor is not None and detection.tensor.dtype == calibration.dtype
    assert np.array_equal(detection.tensor, calibration)
    assert np.array_equal(drawn.tensor, calibration)
    upright = (size[1], size[0]) if mode == "RGB+exif" else size
    assert (detection.width, detection.height) == upright


# ------------------------------------------------------------------------------------------------- docs
DOC_PAGES = {"download": "download.md", "verify": "download.md", "convert": "convert.md", "check": "convert.md",
             "detect": "detect.md", "run": "detect.md", "bench": "bench.md", "models": "registry.md",
             "info": "registry.md", "export": "export.md", "serve": "serve.md",
             "eval": "eval.md"}


def test_every_command_and_option_is_documented() -> None:
    """Each command is in README and on its docs page, and every option it takes is named on that page."""
    import click

    from ssdtool.cli import cli

    readme = (ROOT / "README.md").read_text()
    assert set(cli.commands) == set(DOC_PAGES), "a new command needs a docs page (and a row here)"
    missing: list[str] = []
    for name, command in cli.commands.items():
        page = (ROOT / "docs" / DOC_PAGES[name]).read_text()
        if f"ssdtool {name}" not in readme:
            missing.append(f"README: ssdtool {name}")
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                flags = [flag for flag in param.opts if flag.startswith("--")] or param.opts
                if not any(f"`{flag}" in page for flag in flags) and flags[0] != "--help":
                    missing.append(f"docs/{DOC_PAGES[name]}: {name} {flags[0]}")
    assert not missing, missing
