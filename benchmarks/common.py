"""Shared measuring tools for the scripts under benchmarks/: child-process wall time and peak memory, medians."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "_work"
FULL_TWIN_URL = "synthetic:ssd-resnet34?seed=0"


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str


def measure(command: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """Run ``command``; its wall time and its own peak RSS (``os.wait4`` reports that child only)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(list(command), stdout=out, stderr=err, env={**os.environ, **(env or {})},
                                   cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Run(seconds, int(usage.ru_maxrss) * 1024, process.returncode, out.read(), err.read())


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ssdtool_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ssdtool", *args]


def machine_description() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "platform": platform.platform()}


def ensure_full_twin() -> Path:
    """The full synthetic twin under benchmarks/_work/ (built once; ~3 s)."""
    from ssdtool import synthetic

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "resnet34-ssd1200-synthetic.onnx"
    if not path.exists():
        temporary = path.with_suffix(".tmp")
        synthetic.build_to_path(FULL_TWIN_URL, temporary)
        os.replace(temporary, path)
    return path


def write_section(heading: str, body: str) -> Path:
    """Replace (or append) the ``## heading`` section of docs/performance.md, leaving other sections alone."""
    path = ROOT / "docs" / "performance.md"
    text = path.read_text() if path.exists() else "# Performance\n"
    marker = f"## {heading}\n"
    section = marker + body.rstrip() + "\n"
    if marker in text:
        start = text.index(marker)
        rest = text[start + len(marker):]
        next_heading = rest.find("\n## ")
        end = start + len(marker) + (next_heading + 1 if next_heading >= 0 else len(rest))
        text = text[:start] + section + ("\n" if next_heading >= 0 else "") + text[end:]
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)
    return path
