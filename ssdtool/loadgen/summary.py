"""LoadGen's ``mlperf_log_summary.txt`` (and the errors and warnings of ``mlperf_log_detail.txt``) as data.

The summary is LoadGen's own verdict; ssdtool reads it, never recomputes it: the scenario's metric, VALID or
INVALID, the checks behind that verdict (each ``... satisfied : NO`` is a reason), LoadGen's recommendations and
its early-stopping notes, and the latency statistics.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ssdtool import fsutil
from ssdtool.checked import is_finite_number
from ssdtool.constants import LoadGenScenario
from ssdtool.errors import InputError

SUMMARY_FILE = "mlperf_log_summary.txt"
DETAIL_FILE = "mlperf_log_detail.txt"
_LOG_LIMIT = 1 << 30
_PERCENTILE = re.compile(r"^(\d+(?:\.\d+)?)(?:th)? percentile latency \(ns\)$")
#: The summary line that holds each scenario's metric, and its unit as ssdtool reports it.
METRICS: dict[LoadGenScenario, tuple[str, str]] = {
    LoadGenScenario.SINGLE_STREAM: ("90.0th percentile latency (ns)", "ms"),
    LoadGenScenario.MULTI_STREAM: ("99.0th percentile latency (ns)", "ms"),
    LoadGenScenario.SERVER: ("Scheduled samples per second", "samples/s"),
    LoadGenScenario.OFFLINE: ("Samples per second", "samples/s"),
}


@dataclass(frozen=True)
class RunConfig:
    """What ran: the engine as bench reports it, the samples, and the LoadGen settings that shape the scenario."""

    model: str
    backend: str
    precision: str
    device: str
    model_path: str
    requests: int
    streams: int | None
    threads: int | None
    inference_precision: str | None
    inference_precision_requested: str
    inference_precision_reason: str
    samples: int
    sample_source: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadGenSummary:
    """The parsed summary. ``fields``: every ``key : value`` line as LoadGen wrote it; latencies in ms."""

    scenario: str
    mode: str
    valid: bool | None
    metric_name: str | None
    metric_value: float | None
    metric_unit: str | None
    reasons: list[str]
    recommendations: list[str]
    early_stopping: list[str]
    latency_ms: dict[str, float]
    fields: dict[str, str]


@dataclass(frozen=True)
class LoadGenReport:
    """What :func:`ssdtool.loadgen.run_loadgen` returns: the summary, the configuration, the files written."""

    summary: LoadGenSummary
    config: RunConfig
    duration_seconds: float
    output_dir: str
    files: list[str]
    errors: list[str]
    warnings: list[str]

    @property
    def valid(self) -> bool | None:
        return self.summary.valid

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(text: str) -> float | None:
    """A finite number, or None (``nan``, ``inf`` and ``1e400`` included: a summary is read, never trusted)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if is_finite_number(value) else None


def parse_summary(text: str) -> LoadGenSummary:
    """``mlperf_log_summary.txt`` -> :class:`LoadGenSummary` (LoadGen 4 to 6 layouts)."""
    fields: dict[str, str] = {}
    reasons: list[str] = []
    lists: dict[str, list[str]] = {"Recommendations:": [], "Early Stopping Result:": []}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("="):
            current = None
            continue
        if line in lists:
            current = lists[line]
            continue
        if current is not None and line.startswith("*"):
            current.append(line.lstrip("* ").strip())
            continue
        if current is not None and not re.search(r"\s:\s|:\s*$", line):
            if current:
                current[-1] += " " + line  # a bullet wrapped onto the next line
            continue
        current = None
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        fields.setdefault(key, value)
        if key.endswith("satisfied") and value.upper() == "NO":
            reasons.append(f"{key[:-len(' satisfied')]} not satisfied")
    scenario = fields.get("Scenario", "")
    try:
        parsed_scenario: LoadGenScenario | None = LoadGenScenario.parse(scenario, "scenario")  # type: ignore[assignment]
    except ValueError:
        parsed_scenario = None
    metric_name = metric_unit = None
    metric_value = None
    if parsed_scenario is not None:
        metric_name, metric_unit = METRICS[parsed_scenario]
        raw_value = _number(fields.get(metric_name, ""))
        if raw_value is not None:
            metric_value = raw_value / 1e6 if metric_unit == "ms" else raw_value
        metric_name = metric_name.replace(" (ns)", "")
    latency = {}
    for key, value in fields.items():
        number = _number(value)
        if number is None:
            continue
        if match := _PERCENTILE.match(key):
            latency[f"p{float(match.group(1)):g}"] = number / 1e6
        elif key in ("Min latency (ns)", "Max latency (ns)", "Mean latency (ns)"):
            latency[key.split()[0].lower()] = number / 1e6
    result = fields.get("Result is", "").upper()
    return LoadGenSummary(
        scenario=scenario, mode=fields.get("Mode", ""), valid={"VALID": True, "INVALID": False}.get(result),
        metric_name=metric_name, metric_value=metric_value, metric_unit=metric_unit, reasons=reasons,
        recommendations=lists["Recommendations:"], early_stopping=lists["Early Stopping Result:"],
        latency_ms=dict(sorted(latency.items(), key=lambda item: (item[0][0] != "p", item[0]))), fields=fields)


def detail_messages(text: str) -> tuple[list[str], list[str]]:
    """The errors and warnings LoadGen logged in ``mlperf_log_detail.txt``."""
    errors: list[str] = []
    warnings: list[str] = []
    for line in text.splitlines():
        if not line.startswith(":::MLLOG "):
            continue
        try:
            record = json.loads(line[len(":::MLLOG "):])
        except ValueError:
            continue
        metadata = record.get("metadata") or {}
        message = f"{record.get('key')}: {record.get('value')}"
        if metadata.get("is_error"):
            errors.append(message)
        elif metadata.get("is_warning"):
            warnings.append(message)
    return errors, warnings


def _read(path: Path) -> str:
    try:
        return fsutil.read_regular(path, _LOG_LIMIT).decode("utf-8", errors="replace")
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read LoadGen's {path.name} in {path.parent}: {exc}",
                         hint="rerun the test; the file is LoadGen's own output") from exc


def read_summary(output_dir: Path) -> LoadGenSummary:
    """The summary in ``output_dir`` (for reading an earlier run)."""
    return parse_summary(_read(Path(output_dir) / SUMMARY_FILE))


def read_results(output_dir: Path, config: RunConfig, duration: float, files: list[str], scenario: str, mode: str
                 ) -> LoadGenReport:
    """The report of a finished run whose logs are in ``output_dir``. An accuracy run's summary holds no result
    (LoadGen judges accuracy runs by the accuracy script), so its scenario and mode are filled in from the run."""
    summary = read_summary(output_dir)
    if not summary.scenario or not summary.mode:
        summary = replace(summary, scenario=summary.scenario or scenario,
                          mode=summary.mode or ("AccuracyOnly" if mode == "accuracy" else "PerformanceOnly"))
    errors: list[str] = []
    warnings: list[str] = []
    if (output_dir / DETAIL_FILE).is_file():
        errors, warnings = detail_messages(_read(output_dir / DETAIL_FILE))
    return LoadGenReport(summary=summary, config=config, duration_seconds=duration, output_dir=str(output_dir),
                         files=files, errors=errors, warnings=warnings)
