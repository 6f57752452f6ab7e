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


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


#: Other work (in cores) under which the machine counts as quiet: measured between configurations, while the
#: benchmark itself is idle.
QUIET_CORES = 0.3


def busy_cores(seconds: float = 5.0) -> float:
    """CPU time used by every process on the machine over ``seconds``, in cores (/proc/stat; 0 where missing).

    Called while the suite itself is idle, so it measures other work. The load average cannot tell: it still
    counts the suite's own previous section for minutes after it ended.
    """
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    spent = max(total1 - total0, 1)
    return round((1 - (idle1 - idle0) / spent) * (os.cpu_count() or 1), 2)


def wait_for_quiet(max_busy: float, wait: float) -> float:
    """Wait (at most ``wait`` seconds) until other work uses under ``max_busy`` cores; return the last sample."""
    deadline = time.monotonic() + wait
    current = busy_cores()
    while current > max_busy and time.monotonic() < deadline:
        print(f"other work is using {current} cores (> {max_busy}), load average {load_average()}: waiting for a "
              "quiet machine ...", file=sys.stderr)
        time.sleep(min(25.0, max(1.0, deadline - time.monotonic())))
        current = busy_cores()
    if current > max_busy:
        print(f"warning: measuring while other work uses {current} cores (timings will be skewed)", file=sys.stderr)
    return current


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ssdtool_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ssdtool", *args]


CPU_CLASS_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine_description() -> dict[str, str]:
    cpu, flags = "unknown", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    # The flags that decide OpenVINO's default precision and its int8 kernels: a figure is only comparable with
    # one from the same CPU class.
    relevant = [flag for flag in CPU_CLASS_FLAGS if flag in flags]
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "platform": platform.platform(), "flags": " ".join(relevant) or "none of " + " ".join(CPU_CLASS_FLAGS)}


def ensure_full_twin() -> Path:
    """The full synthetic twin under benchmarks/_work/ (built once; ~3 s)."""
    return ensure_twin(FULL_TWIN_URL, "resnet34-ssd1200-synthetic.onnx")


def ensure_twin(url: str, name: str) -> Path:
    """The synthetic twin of ``url`` under benchmarks/_work/``name``, built once (to a temporary name first)."""
    from ssdtool import synthetic

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / name
    if not path.exists():
        temporary = path.with_suffix(".tmp")
        synthetic.build_to_path(url, temporary)
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
