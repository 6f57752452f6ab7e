"""Contracts between the layers (docs/architecture.md): no module imports a layer above its own and no import
cycle exists (imports inside functions included), commands register whatever the import order, the library prints
nothing (it returns data and logs), and calibration sees exactly the pixels detection sees."""

from __future__ import annotations

import ast
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


# ------------------------------------------------------------------------------------------------- layers
#: Bottom to top; a module may import its own layer and those below. The longest matching prefix places a module.
LAYERS: tuple[tuple[str, ...], ...] = (
    # leaves: the standard library, third-party packages and each other only. ``ssdtool`` itself holds __version__
    # and a table of lazily resolved public names (ssdtool.lazy, on attribute access), so importing it loads nothing
    # else.
    ("ssdtool", "ssdtool.lazy", "ssdtool.constants", "ssdtool.errors", "ssdtool.fsutil", "ssdtool.staging",
     "ssdtool.checked", "ssdtool.safe_yaml", "ssdtool.redact", "ssdtool.ssd", "ssdtool.telemetry", "ssdtool.cpu",
     "ssdtool.matching", "ssdtool.provenance", "ssdtool.inputs", "ssdtool.int8_recipes"),
    # domain: the registry, the cache, images, downloads, detections, engines
    ("ssdtool.registry", "ssdtool.labels", "ssdtool.cache", "ssdtool.imaging", "ssdtool.pipeline",
     "ssdtool.detections", "ssdtool.heads", "ssdtool.coco", "ssdtool.annotate", "ssdtool.download", "ssdtool.synthetic",
     "ssdtool.backends", "ssdtool.precision", "ssdtool.serving.protocol",
     # the scoring core: COCO annotation files, COCOeval (and the plots' data), agreement AP; a build step scores
     # with it too (INT8 within an AP budget). The rest of evaluation/ (the model run, plots, the report) is an app.
     "ssdtool.evaluation.dataset", "ssdtool.evaluation.metrics", "ssdtool.evaluation.curves",
     "ssdtool.evaluation.agreement"),
    # build: IRs from the source model, and the one answer to "which file runs" (it converts on first use)
    ("ssdtool.convert", "ssdtool.quantize", "ssdtool.calibration", "ssdtool.accuracy_budget",
     "ssdtool.accuracy_control", "ssdtool.artifacts"),
    # apps: what a user runs
    ("ssdtool.detect", "ssdtool.outputs", "ssdtool.bench", "ssdtool.evaluation", "ssdtool.loadgen", "ssdtool.export",
     "ssdtool.serving", "ssdtool.catalog"),
    ("ssdtool.commands", "ssdtool.cli", "ssdtool.__main__"),
)
#: Known runtime cycles, as the edges that close them; each must still exist (so a fixed one is struck off here).
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The ssdtool modules ``path`` imports when it runs, functions included, ``if TYPE_CHECKING:`` blocks not.

    ``import a.b`` and ``from a import b`` (b a module) depend on a.b only: Python runs a's __init__ first, but a
    package's __init__ re-exports its own submodules, so counting it would make every package a cycle. ``from a
    import name`` depends on a's __init__, and so on what it re-exports, eagerly or through a table of lazily
    imported names (a module named in a string counts): a submodule importing from its own package is a cycle. The
    root ``ssdtool`` is the one facade whose lazy table is not counted: it runs no import (a test checks)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    pending: list[ast.AST] = [ast.parse(path.read_text())]
    while pending:
        node = pending.pop()
        if path.name == "__init__.py" and name != "ssdtool" and isinstance(node, ast.Constant):
            found.add(str(node.value))
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            source = ".".join(part for part in (base, node.module) if part)
            submodules = {f"{source}.{alias.name}" for alias in node.names} & modules
            found.update(submodules | ({source} if len(submodules) < len(node.names) else set()))
        pending.extend(ast.iter_child_nodes(node))
    return (found & modules) - {name}


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in (ROOT / "ssdtool").rglob("*.py")}
    return {name: _runtime_imports(path, name, set(paths)) for name, path in paths.items()}


def _layer(module: str) -> int:
    matches = [(len(prefix), index) for index, layer in enumerate(LAYERS) for prefix in layer
               if module == prefix or (prefix != "ssdtool" and module.startswith(prefix + "."))]
    assert matches, f"{module} is in no layer: place it in LAYERS (and in docs/architecture.md)"
    return max(matches)[1]


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
              for module, targets in sorted(import_graph().items()) for target in sorted(targets)
              if _layer(target) > _layer(module)]
    assert not upward, upward


def test_no_import_cycles() -> None:
    graph = import_graph()
    fixed = KNOWN_CYCLE_EDGES - {(a, b) for a, targets in graph.items() for b in targets}
    assert not fixed, f"strike these off KNOWN_CYCLE_EDGES: {sorted(fixed)}"
    for module, target in KNOWN_CYCLE_EDGES:
        graph[module].discard(target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            assert state.get(target) != 1, "import cycle: " + " -> ".join([*path[path.index(target):], target])
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_lazily_exported_name_is_a_submodule_name() -> None:
    """A package's submodule, once imported, is an attribute of the package: a lazy name of the same spelling
    (resolved by the package's __getattr__) would never be reached. Such a name is imported eagerly instead."""
    import importlib

    for init in sorted((ROOT / "ssdtool").rglob("__init__.py")):
        package = importlib.import_module(_module_name(init))
        submodules = {path.stem for path in init.parent.glob("*.py")} | {
            path.name for path in init.parent.iterdir() if (path / "__init__.py").is_file()}
        assert not set(getattr(package, "_LAZY", {})) & submodules, package.__name__


def test_no_module_over_500_lines_and_no_class_over_250() -> None:
    """The project's size rule (docs/architecture.md, "Sizes"): past it, a module or class is split along a seam."""
    too_long = []
    for path in sorted((ROOT / "ssdtool").rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 500:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        too_long += [f"{path.relative_to(ROOT)}: class {node.name}, {node.end_lineno - node.lineno + 1} lines"
                     for node in ast.walk(ast.parse(text)) if isinstance(node, ast.ClassDef)
                     and (node.end_lineno or node.lineno) - node.lineno + 1 > 250]
    assert not too_long, too_long


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nimport json; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def test_import_ssdtool_loads_nothing_else() -> None:
    """Only the lazy-name helper (standard library only) comes with it."""
    assert {m for m in _loaded_after("import ssdtool") if m.startswith("ssdtool")} == {"ssdtool", "ssdtool.lazy"}


def test_the_export_repository_does_not_load_the_converter() -> None:
    """Export copies an IR into a repository; its folder helpers come from ssdtool.staging, not the converter."""
    loaded = _loaded_after("import ssdtool.export.repository")
    assert not {m for m in loaded if m.startswith(("ssdtool.convert", "ssdtool.quantize", "ssdtool.calibration",
                                                   "nncf", "onnx", "openvino"))}


def test_the_scoring_core_does_not_load_the_model_run() -> None:
    """Agreement AP and COCOeval (what INT8 accuracy control scores with) load neither eval's model run, the
    engines, the converter nor matplotlib: evaluation/__init__ resolves its names lazily."""
    loaded = _loaded_after("import ssdtool.evaluation.agreement")
    assert {m for m in loaded if m.startswith("ssdtool.")} <= {
        "ssdtool.checked", "ssdtool.constants", "ssdtool.errors", "ssdtool.fsutil", "ssdtool.labels", "ssdtool.lazy",
        "ssdtool.evaluation", "ssdtool.evaluation.agreement", "ssdtool.evaluation.dataset",
        "ssdtool.evaluation.metrics"}
    assert not {m for m in loaded if m.startswith(("openvino", "onnxruntime", "matplotlib", "nncf"))}


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


def test_the_command_table_names_every_command_of_every_module() -> None:
    """cli.COMMAND_MODULES (a command module is imported on first use) names each command of each module."""
    import importlib

    from ssdtool.cli import COMMAND_MODULES

    declared = {command.name: path.stem for path in sorted((ROOT / "ssdtool" / "commands").glob("*.py"))
                for command in getattr(importlib.import_module(f"ssdtool.commands.{path.stem}"), "COMMANDS", [])}
    assert declared == COMMAND_MODULES


def test_a_command_loads_only_its_own_module() -> None:
    loaded = _loaded_after("from ssdtool.cli import cli\ncli.commands['detect']")
    assert {m for m in loaded if m.startswith("ssdtool.commands.")} == {
        "ssdtool.commands.common", "ssdtool.commands.options", "ssdtool.commands.progress", "ssdtool.commands.detect"}


def test_command_modules_import_nothing_from_cli() -> None:
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
