"""Each closed set is defined once (``ssdtool/constants.py``; exit codes on the error classes; defaults beside the
code that uses them): no member spelled out as a string elsewhere in ssdtool/, and the choices, defaults and exit
codes the command line shows all come from that one source."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import click

from ssdtool.cli import cli
from ssdtool.constants import (
    CPU_DEVICE,
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_DEVICE,
    DEFAULT_MAX_PIXELS,
    DEFAULT_REFERENCE_SCORE,
    CocoScorer,
    InferencePrecision,
    InputLayout,
    InputType,
    IRPrecision,
    OutputFormat,
    PerformanceHint,
    ProgressMode,
    WireProtocol,
)

ROOT = Path(__file__).resolve().parent.parent
#: Members whose spelling would be a second definition of the set they belong to.
WATCHED = {*IRPrecision.values(), CPU_DEVICE, InputType.U8.value, *InputLayout.values(),
           *PerformanceHint.values(), *(hint.upper() for hint in PerformanceHint.values()),
           *(scorer.value for scorer in CocoScorer if scorer != CocoScorer.AUTO)}  # auto: a word many sets share
#: The same spelling in another closed set, defined where it belongs.
OTHER_SETS = {
    # Open Inference Protocol tensor datatypes (KServe v2): what a tensor holds, not an IR's weights.
    "ssdtool/serving/protocol.py": {"FP32", "FP16", "INT8"}, "ssdtool/serving/binary.py": {"FP32", "FP16", "INT8"},
    "ssdtool/serving/model.py": {"FP32"}, "ssdtool/serving/detections.py": {"FP32"},
    "ssdtool/backends/remote_answers.py": {"FP32", "FP16"},
    # Model API's metadata vocabulary (rt_info/model_info input_dtype): what Model API sends, not --input-type.
    "ssdtool/convert/model_info.py": {"u8"},
    # OpenVINO's element type names, mapped to Triton's; its OPTIMIZATION_CAPABILITIES names; the precision option
    # of onnxruntime's OpenVINO execution provider.
    "ssdtool/export/signature.py": {"u8"}, "ssdtool/backends/openvino_rules.py": {"FP16"},
    "ssdtool/backends/onnxruntime.py": {"FP32"},
    # OpenVINO's runtime element types (a compiled layer's precision: which layers run in INT8).
    "ssdtool/accuracy_control.py": {"u8"},
    # A budget record's field (the latency cost of the layers kept in floating point), not a performance hint.
    "ssdtool/accuracy_budget.py": {"latency"},
}
#: Code another branch in flight rewrites; struck off when it merges. Every entry must still hold its literal.
PENDING: dict[str, set[str]] = {}


def _spelled_out(path: Path) -> set[str]:
    """The watched members ``path`` writes as string literals (docstrings aside)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in WATCHED
            and id(node) not in docstrings}


def test_no_closed_set_member_is_spelled_out_outside_constants() -> None:
    found = {str(path.relative_to(ROOT)): _spelled_out(path) for path in sorted((ROOT / "ssdtool").rglob("*.py"))
             if path != ROOT / "ssdtool" / "constants.py"}
    offenders = {path: sorted(values - OTHER_SETS.get(path, set()) - PENDING.get(path, set()))
                 for path, values in found.items()}
    assert not {path: values for path, values in offenders.items() if values}, "use the enum in ssdtool.constants"
    stale = {path: sorted(values - found[path]) for path, values in PENDING.items() if values - found[path]}
    assert not stale, f"strike these off PENDING: {stale}"


def _option(command: click.Command, flag: str) -> click.Option:
    return next(p for p in command.params if isinstance(p, click.Option) and flag in p.opts)


#: An option's name -> the closed set its choices are, or the one default it shows.
CHOICES = {"precision": IRPrecision, "inference_precision": InferencePrecision, "input_type": InputType,
           "input_layout": InputLayout, "progress_mode": ProgressMode, "wire_protocol": WireProtocol,
           "output_format": OutputFormat, "coco_eval": CocoScorer}
DEFAULTS = {"device": DEFAULT_DEVICE, "max_pixels": DEFAULT_MAX_PIXELS, "wire_protocol": WireProtocol.BINARY,
            "progress_mode": ProgressMode.AUTO, "coco_eval": CocoScorer.AUTO,
            "reference_score": DEFAULT_REFERENCE_SCORE, "checkpoint_every": DEFAULT_CHECKPOINT_EVERY}


def test_option_choices_and_defaults_come_from_their_source() -> None:
    from ssdtool.download.options import FetchOptions
    from ssdtool.export.options import DEFAULT_LOCK_TIMEOUT
    from ssdtool.int8_recipes import DEFAULT_CALIBRATION_SIZE

    seen: dict[str, set[str]] = {}
    for name, command in cli.commands.items():
        for param in command.params:
            if not isinstance(param, click.Option) or param.name not in {*CHOICES, *DEFAULTS}:
                continue
            seen.setdefault(param.name, set()).add(name)
            if param.name in CHOICES:
                assert tuple(param.type.choices) == CHOICES[param.name].values(), (name, param.name)
            if param.name in DEFAULTS:
                assert param.default == DEFAULTS[param.name], (name, param.name)
    assert seen["precision"] >= {"convert", "check", "bench", "detect", "export"}
    assert seen["input_type"] == seen["input_layout"] == {"convert", "check"}
    assert seen["device"] >= {"check", "bench", "detect", "export", "eval"}
    assert seen["max_pixels"] == {"detect", "run", "eval", "serve"}
    assert seen["wire_protocol"] >= {"detect", "bench"} and seen["output_format"] == {"detect", "run"}
    assert seen["coco_eval"] == seen["reference_score"] == seen["checkpoint_every"] == {"eval"}
    library = FetchOptions()
    for name in ("download", "verify"):
        shown = {p.name: p.default for p in cli.commands[name].params if isinstance(p, click.Option)}
        assert (shown["retries"], shown["backoff"], shown["timeout"], shown["lock_timeout"]) == (
            library.retries, library.backoff, library.timeout, library.lock_timeout), name
    assert _option(cli.commands["export"], "--lock-timeout").default == DEFAULT_LOCK_TIMEOUT
    assert f"[default: {DEFAULT_CALIBRATION_SIZE}]" in (_option(cli.commands["convert"], "--calibration-size").help
                                                         or "")


# With every exit code and the quoted download limits moved, the help shows the moved numbers: none is copied.
MOVED_HELP = """
import json, re, sys
import ssdtool.constants as constants
import ssdtool.errors as errors
for offset, cls in enumerate(errors.all_error_classes()):
    cls.exit_code = 200 + offset
errors.EXIT_INTERRUPTED = 199
constants.STALL_MIN_BYTES, constants.BACKOFF_CAP = 7 << 10, 17.0
import click
from ssdtool.cli import cli
texts = {}
for name, command in [("ssdtool", cli), *sorted(cli.commands.items())]:
    with click.Context(command, info_name=name) as ctx:
        texts[name] = command.get_help(ctx)
print(json.dumps(texts))
"""


def test_exit_codes_and_limits_in_help_come_from_their_source() -> None:
    """Every number in a sentence of the help that speaks of exiting is an error class's exit code (or 0): moved
    codes show up moved, so none is written out in a help text."""
    import re

    result = subprocess.run([sys.executable, "-c", MOVED_HELP], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    texts: dict[str, str] = json.loads(result.stdout)
    quoted: set[int] = set()
    for name, text in texts.items():
        assert "{exit:" not in text, name
        flat = " ".join(text.split())
        for sentence in re.split(r"(?<=[.;)\]])\s", flat):
            if re.search(r"\bexit", sentence, re.IGNORECASE):
                numbers = {int(n) for n in re.findall(r"(?<![\w.-])(\d+)(?![\w.%])", sentence)}
                assert numbers <= {0, *range(199, 260)}, (name, sentence)
                quoted |= numbers
    assert len(quoted - {0}) >= 8  # download, verify, convert, check, detect, eval, export quote theirs
    assert "less than 7 KiB in that many seconds" in " ".join(texts["download"].split())
    assert "capped at 17 s" in " ".join(texts["download"].split())
