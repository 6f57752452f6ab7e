"""The ``ssdtool`` command writes nothing outside its cache and the outputs a user names (README, "Where files go"):
the engines' telemetry files (``~/.cache/Microsoft/DeveloperTools/.onnxruntime/``, ``~/intel/``) never appear, because
the command turns the engines' telemetry off before either engine starts (:mod:`ssdtool.telemetry`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ssdtool.telemetry import OPENVINO_TELEMETRY_MODULE, ORT_SWITCH, disable_engine_telemetry

ROOT = Path(__file__).resolve().parent.parent
TINY = "ssd-resnet34-300-synthetic-tiny"


def _clean_env(home: Path) -> dict[str, str]:
    """The environment of a fresh user whose home is ``home``: no ssdtool settings, no XDG folders, no telemetry
    switches or CI markers of the test run's own, and every proxy pointed at a closed local port, so that a
    regression could not reach the network from the child either."""
    dropped = ("SSDTOOL_", "XDG_", ORT_SWITCH, "CI", "TF_BUILD", "JENKINS_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    closed = "http://127.0.0.1:9"
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), HTTP_PROXY=closed, HTTPS_PROXY=closed, http_proxy=closed,
               https_proxy=closed, NO_PROXY="", no_proxy="", OPENVINO_LOG_LEVEL="0")
    return env


def _run(env: dict[str, str], cwd: Path, *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "ssdtool", *args], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (args, result.stderr)


def test_a_command_run_leaves_nothing_outside_the_cache(tmp_path: Path) -> None:
    """Download, convert (OpenVINO conversion and onnxruntime's parity gate), detect on both engines and export,
    each in its own process with HOME in an empty folder: afterwards, the home folder holds the cache only."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(work / "photo.png")
    env = _clean_env(home)
    _run(env, work, "convert", TINY, "--progress", "none")
    for backend in ("onnxruntime", "openvino"):
        _run(env, work, "detect", "--model", TINY, "--backend", backend, "--offline", "--json", "photo.png")
    _run(env, work, "export", TINY, "--format", "ovms", "--output-dir", str(work / "repository"), "--offline")

    cache = home / ".cache" / "ssdtool"
    outside = sorted(str(p.relative_to(home)) for p in home.rglob("*")
                     if p not in (home / ".cache", cache) and cache not in p.parents)
    assert outside == []
    assert (cache / TINY / "openvino" / "FP32").is_dir()  # the run did use the cache there
    assert sorted(p.name for p in work.iterdir()) == ["photo.png", "repository"]


def test_disabling_keeps_what_the_user_or_process_already_decided() -> None:
    environ: dict[str, str] = {}
    modules: dict[str, object] = {}
    disable_engine_telemetry(environ, modules)
    assert environ == {ORT_SWITCH: "1"} and modules == {OPENVINO_TELEMETRY_MODULE: None}

    environ = {ORT_SWITCH: "0"}  # the user allowed onnxruntime's telemetry: their choice stands
    loaded = object()
    modules = {OPENVINO_TELEMETRY_MODULE: loaded}  # already imported: its start-up ran; it is left to its users
    disable_engine_telemetry(environ, modules)
    assert environ == {ORT_SWITCH: "0"} and modules == {OPENVINO_TELEMETRY_MODULE: loaded}
