"""The CLI skeleton: models, info, version, error mapping, stdout/stderr split, lazy imports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import ssdtool
from ssdtool.cli import cli
from ssdtool.errors import ConversionError, SsdtoolError, all_error_classes

ROOT = Path(__file__).resolve().parent.parent
MODEL = "ssd-resnet34-1200-onnx"
HEAVY = ("onnx", "onnxruntime", "openvino", "numpy", "PIL", "requests", "tqdm", "tritonclient", "google.protobuf",
         "kserve", "fastapi", "uvicorn", "mlperf_loadgen",
         "pycocotools")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ssdtool", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_models_table_lists_the_registry_with_state(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--cache-dir", str(tmp_path), "models"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TASK", "SIZE", "STATE"]
    row = next(line for line in lines if line.startswith(MODEL))
    assert row.split() == [MODEL, "*", "detection", "76.6", "MiB", "missing"]
    assert "default model" in result.stderr  # the legend is for people: stderr


def test_models_json_and_states_follow_the_cache(tmp_path: Path) -> None:
    runner = CliRunner()

    def state() -> str:
        result = runner.invoke(cli, ["--cache-dir", str(tmp_path), "models", "--json"])
        assert result.exit_code == 0
        rows = {row["name"]: row for row in json.loads(result.stdout)}
        assert rows[MODEL]["size"] == 80_363_696
        assert rows[MODEL]["default"] is True
        return rows[MODEL]["state"]

    assert state() == "missing"
    model_dir = tmp_path / MODEL
    model_dir.mkdir()
    (model_dir / "resnet34-ssd1200.onnx.part").write_bytes(b"x" * 10)
    assert state() == "partial"
    with open(model_dir / "resnet34-ssd1200.onnx", "wb") as handle:
        handle.truncate(80_363_696)
    assert state() == "downloaded"
    ir_dir = model_dir / "openvino" / "FP32"
    ir_dir.mkdir(parents=True)
    # An IR counts as converted when its weights have the size its provenance records.
    weights = '{&quot;file&quot;: &quot;m.bin&quot;, &quot;size&quot;: 4, &quot;sha256&quot;: &quot;x&quot;}'
    (ir_dir / f"{MODEL}.xml").write_text(
        f'<net><rt_info><ssdtool><weights value="{weights}"/></ssdtool></rt_info></net>')
    (ir_dir / f"{MODEL}.bin").write_bytes(b"1234")
    assert state() == "converted"
    (ir_dir / f"{MODEL}.bin").write_bytes(b"12")  # truncated
    assert state() == "downloaded"


def test_cache_dir_from_environment(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["info", "--json"], env={"SSDTOOL_HOME": str(tmp_path / "home")})
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["cache_dir"] == str(tmp_path / "home" / MODEL)
    assert data["files"][0]["path"] == str(tmp_path / "home" / MODEL / "resnet34-ssd1200.onnx")


def test_default_cache_dir_is_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    result = CliRunner().invoke(cli, ["info", "--json"])
    assert json.loads(result.stdout)["cache_dir"] == str(tmp_path / "xdg" / "ssdtool" / MODEL)


def test_info_shows_everything_the_registry_says(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--cache-dir", str(tmp_path), "info", MODEL])
    assert result.exit_code == 0
    out = result.stdout
    for text in ("(default model)", "Apache-2.0", "80363696 bytes", "[missing]",
                 "b417a8186967f1e78670b0075aa72a10e5c7d1a6d5c08af9d13dc97f3d29ef0d",
                 "source 1: https://zenodo.org/record/3228411/files/resnet34-ssd1200.onnx",
                 "mean [123.675, 116.28, 103.53]", "coco_80cl_bkgr.txt", "BGR input, 200 outputs",
                 str(tmp_path / MODEL / "resnet34-ssd1200.onnx")):
        assert text in out


def test_info_json_is_complete(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--cache-dir", str(tmp_path), "info", "--json"])
    data = json.loads(result.stdout)
    assert data["name"] == MODEL
    assert data["input"]["shape"] == [1, 3, 1200, 1200]
    assert data["outputs"] == {"boxes": "bboxes", "labels": "labels", "scores": "scores", "box_format": "xyxy",
                               "box_units": "normalized", "label_offset": 0, "form": "detections", "heads": None}
    assert data["convert"] == {"color_order": "BGR", "output_count": 200, "precision": "FP32"}
    assert data["files"][0]["sha384"].startswith("754dd59f")
    assert data["converted"] == []


def test_unknown_model_exit_code_and_json_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["info", "ssd-resnet", "--json"])
    assert result.exit_code == 4
    assert "error: unknown model 'ssd-resnet'" in result.stderr
    assert "did you mean ssd-resnet34-1200-onnx" in result.stderr
    assert "hint: run 'ssdtool models'" in result.stderr
    assert json.loads(result.stdout)["exit_code"] == 4


def test_library_errors_show_no_traceback_unless_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*_args: object, **_kwargs: object) -> None:
        raise ConversionError("conversion went wrong", hint="pass --force")

    monkeypatch.setattr("ssdtool.catalog.list_models", failing)
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 20
    assert result.stderr == "error: conversion went wrong\nhint: pass --force\n"
    debug = CliRunner().invoke(cli, ["--debug", "models"])
    assert debug.exit_code == 20
    assert "Traceback" in debug.stderr


def test_unexpected_errors_exit_1_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ssdtool.catalog.list_models", lambda *a, **k: 1 / 0)
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 1
    assert "error: unexpected ZeroDivisionError" in result.stderr
    assert "--debug" in result.stderr
    assert "Traceback" not in result.stderr


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("ssdtool.catalog.list_models", interrupted)
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 130
    assert "interrupted" in result.stderr


def test_usage_errors_exit_2() -> None:
    result = CliRunner().invoke(cli, ["models", "--no-such-flag"])
    assert result.exit_code == 2
    assert "No such option" in result.stderr


def test_version_names_ssdtool_and_engines() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert re.match(rf"ssdtool {re.escape(ssdtool.__version__)} \(python \d+\.\d+\.\d+; onnx ", result.stdout)


def test_python_dash_m_and_help_import_no_heavy_library() -> None:
    code = ("import sys\nfrom ssdtool.cli import cli\n"
            "try:\n    cli(['--help'], prog_name='ssdtool')\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "[]"
    for command in (["models"], ["info"]):
        code = (f"import sys\nfrom ssdtool.cli import cli\ntry:\n    cli({command!r}, prog_name='ssdtool')\n"
                "except SystemExit:\n    pass\n"
                f"print('HEAVY', sorted(m for m in {('onnx', 'onnxruntime', 'openvino')!r} if m in sys.modules))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert result.stdout.strip().splitlines()[-1] == "HEAVY []", result.stdout


def test_python_dash_m_runs_the_cli(tmp_path: Path) -> None:
    result = run("--cache-dir", str(tmp_path), "models", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["name"] == MODEL


MAIN = ("import atexit, sys\n"
        "atexit.register(lambda: print('exit handler ran', file=sys.stderr))\n"
        "sys.argv = ['ssdtool', *sys.argv[1:]]\n"
        "from ssdtool.cli import main\nmain()\nprint('never here')")


@pytest.mark.parametrize(("arguments", "status"), [(["models", "--json"], 0), (["nosuch"], 2),
                                                   (["info", "no-such-model"], 4), (["--registry", "/nonexistent.yml",
                                                                                      "models"], 3)])
def test_main_ends_the_process_with_the_commands_exit_status(tmp_path: Path, arguments: list[str],
                                                              status: int) -> None:
    """main() ends the process without Python's teardown: exit handlers still run, stdout (here a file, block
    buffered) is complete, and the status is the command's."""
    out = tmp_path / "out.txt"
    with open(out, "w") as stdout:
        result = subprocess.run([sys.executable, "-c", MAIN, "--cache-dir", str(tmp_path / "cache"), *arguments],
                                stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60)
    assert result.returncode == status, result.stderr
    assert result.stderr.endswith("exit handler ran\n") and "never here" not in out.read_text()
    if status == 0:
        assert json.loads(out.read_text())[0]["name"] == MODEL


def test_end_process_reads_exit_codes_as_sys_exit_does() -> None:
    code = "from ssdtool.cli import end_process\nend_process(sys.argv[1] if len(sys.argv) > 1 else None)"
    assert subprocess.run([sys.executable, "-c", "import sys\n" + code], timeout=60).returncode == 0
    message = subprocess.run([sys.executable, "-c", "import sys\n" + code, "gone"], capture_output=True, text=True,
                             timeout=60)
    assert (message.returncode, message.stderr) == (1, "gone\n")


def test_registry_option_selects_a_user_registry(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "models.yml").read_text())
    entry = data["models"][MODEL]
    mine = {"version": 1, "models": {"my-detector": entry}}
    path = tmp_path / "mine.yml"
    path.write_text(yaml.safe_dump(mine))
    result = CliRunner().invoke(cli, ["--registry", str(path), "models", "--json"])
    assert [row["name"] for row in json.loads(result.stdout)] == ["my-detector"]
    # no default_model: the first entry is the default
    assert json.loads(result.stdout)[0]["default"] is True


def test_readme_documents_every_exit_code() -> None:
    readme = (ROOT / "README.md").read_text()
    codes = {cls.exit_code for cls in all_error_classes() if cls is not SsdtoolError}
    for code in sorted(codes | {0, 1, 2, 130}):
        assert re.search(rf"^\|\s*{code}\s*\|", readme, re.MULTILINE), f"exit code {code} missing from README"


def test_every_error_class_has_a_distinct_exit_code_per_family() -> None:
    classes = [cls for cls in all_error_classes() if cls is not SsdtoolError]
    by_code: dict[int, list[type[SsdtoolError]]] = {}
    for cls in classes:
        by_code.setdefault(cls.exit_code, []).append(cls)
    # A code is shared only within one family: every class with it derives from the first (the family base),
    # e.g. DownloadError/NetworkError (10) and InputError/ImageError (30).
    for code, members in by_code.items():
        base = members[0]
        assert all(issubclass(cls, base) for cls in members), (code, [cls.__name__ for cls in members])


# ------------------------------------------------------------------------------------------------------------------
# Hardening (issue 11): a JSON object for every failure under --json; control characters in human output


@pytest.mark.parametrize("args", [["models", "--json", "--no-such-flag"], ["--no-such", "models", "--json"],
                                  ["download", "--json", "--jobs", "0"], ["detect", "--format", "jsonl"],
                                  ["detect", "-fjson", "--threshold", "2", "x.jpg"]])
def test_usage_errors_under_json_print_a_json_object(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    error = json.loads(result.stdout)
    assert error["error"] == "UsageError" and error["exit_code"] == 2 and error["message"]
    assert "Usage:" in result.stderr  # people still get click's usage text


def test_usage_errors_without_json_leave_stdout_empty() -> None:
    for args in (["models", "--no-such-flag"], ["detect", "--format", "json", "-o", "x.json"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and result.stdout == ""


def test_json_requested_reads_the_raw_command_line() -> None:
    from ssdtool.cli import json_requested

    assert json_requested(["models", "--json"])
    assert json_requested(["detect", "a.jpg", "--format=coco"]) and json_requested(["detect", "-f", "jsonl", "a"])
    assert not json_requested(["detect", "a.jpg", "--format", "json", "--output", "r.json"])
    assert not json_requested(["detect", "--", "--json"])  # an image called --json
    assert not json_requested(["detect", "-f", "table", "a.jpg"])


def test_ctrl_c_and_unexpected_errors_under_json(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("ssdtool.catalog.list_models", interrupted)
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 130 and json.loads(result.stdout) == {
        "error": "Interrupted", "exit_code": 130, "message": "interrupted (Ctrl-C)",
        "hint": "run the command again"}
    assert result.stdout.count("\n") == 1  # one line: after jsonl records it is one more record
    monkeypatch.setattr("ssdtool.catalog.list_models", lambda *a, **k: 1 / 0)
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)
    assert error["error"] == "UnexpectedError" and error["exit_code"] == 1
    assert error["message"] == "unexpected ZeroDivisionError: division by zero"


def test_error_messages_are_redacted_on_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*_args: object, **_kwargs: object) -> None:
        raise ConversionError("cannot fetch https://alice:s3cret@host/m.onnx?token=abc",
                              hint="see http://bob:pw@proxy/")

    monkeypatch.setattr("ssdtool.catalog.list_models", failing)
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert "s3cret" not in result.output and "abc" not in result.output and "pw@" not in result.output
    assert "https://***@host/m.onnx?token=***" in result.stderr
    assert json.loads(result.stdout)["hint"] == "see http://***@proxy/"


def test_control_characters_are_escaped_in_tables() -> None:
    from ssdtool.commands.common import format_table, printable

    assert printable("evil\nname\x1b[31m\u202e.jpg") == "evil\\nname\\x1b[31m\\u202e.jpg"
    table = format_table(("A", "B"), [("x\ny", "z")])
    assert table.splitlines() == ["A     B", "x\\ny  z"]


@pytest.mark.parametrize("arguments", [
    ["detect", "--threshold", "nan", "x.jpg"],
    ["detect", "--server", "http://127.0.0.1:1", "--server-timeout", "nan", "x.jpg"],
    ["download", "--lock-timeout", "nan"],
    ["download", "--retry-backoff", "inf"],
    ["export", "--format", "ovms", "--output-dir", "out", "--lock-timeout", "nan"],
    ["serve", "--grace", "nan"],
    ["bench", "--time", "1e999"],
])
def test_float_options_refuse_non_finite_values(arguments: list[str], tmp_path: Path) -> None:
    """click's FloatRange lets nan through (every comparison with it is false); every float option refuses it."""
    result = CliRunner().invoke(cli, ["--cache-dir", str(tmp_path), *arguments])
    assert result.exit_code == 2, result.output
    assert "is not a finite number; give one in" in result.output
    assert not (tmp_path / "out").exists()
