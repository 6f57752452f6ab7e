"""LoadGen test settings for SSD-ResNet34: MLPerf v2.0's values, then ``--user-conf``, then ssdtool's flags.

SSD-ResNet34 ("ssd-large") left ``mlperf.conf`` after MLPerf Inference v2.0, so the LoadGen on PyPI no longer
knows it. ssdtool carries that round's values itself (:data:`V2_DEFAULTS`, in LoadGen's own key names and units:
milliseconds, percent) and applies them in this order, later ones winning:

1. LoadGen's embedded ``mlperf.conf`` (its seeds and its ``*`` wildcard entries), loaded by
   ``TestSettings.FromConfig`` together with
2. the ``--user-conf`` file (LoadGen's format, ``model.scenario.key = value``, model ``ssd-resnet34`` or ``*``);
3. :data:`V2_DEFAULTS` for every key the user.conf does not set (so the file can change any of them);
4. the flags ``--target-qps``, ``--target-latency-ms``, ``--min-duration``, ``--min-queries``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssdtool import fsutil
from ssdtool.constants import LoadGenMode, LoadGenScenario
from ssdtool.errors import UsageError

#: The model's name in LoadGen configuration files (``ssd-resnet34.Server.target_qps = 10``).
MLPERF_MODEL = "ssd-resnet34"
#: How many samples LoadGen keeps loaded in performance mode: this model's MLPerf value.
PERFORMANCE_SAMPLE_COUNT = 64
_USER_CONF_LIMIT = 1 << 20

#: MLPerf Inference v2.0's settings for ssd-resnet34, by scenario, as ``mlperf.conf`` wrote them (ms, percent).
V2_DEFAULTS: dict[LoadGenScenario, dict[str, float]] = {
    LoadGenScenario.SINGLE_STREAM: {"target_latency_percentile": 90, "min_query_count": 1024,
                                    "min_duration": 600_000},
    LoadGenScenario.MULTI_STREAM: {"samples_per_query": 8, "target_latency": 528, "target_latency_percentile": 99,
                                   "min_query_count": 662, "min_duration": 600_000},
    LoadGenScenario.SERVER: {"target_latency": 100, "target_latency_percentile": 99, "min_query_count": 270_336,
                             "min_duration": 600_000},
    LoadGenScenario.OFFLINE: {"min_query_count": 24_576, "min_duration": 600_000},
}
_COMMON_DEFAULTS = {"performance_sample_count_override": PERFORMANCE_SAMPLE_COUNT}


@dataclass(frozen=True)
class SettingsOverrides:
    """The flags: ``target_qps`` (Server: the arrival rate; Offline: the expected rate, which sizes the one
    query), ``target_latency_ms`` (Server: the latency bound; SingleStream/MultiStream: the expected latency),
    ``min_duration`` in seconds, ``min_queries``, and a ``user_conf`` file."""

    target_qps: float | None = None
    target_latency_ms: float | None = None
    min_duration: float | None = None
    min_queries: int | None = None
    user_conf: Path | None = None

    def check(self, scenario: LoadGenScenario) -> None:
        if self.target_qps is not None:
            if not self.target_qps > 0:
                raise UsageError(f"the target QPS must be positive, got {self.target_qps}",
                                 hint="give --target-qps a number of queries per second above 0, e.g. 2.5")
            if scenario not in (LoadGenScenario.SERVER, LoadGenScenario.OFFLINE):
                raise UsageError(f"--target-qps applies to the Server and Offline scenarios, not {scenario}",
                                 hint="use --target-latency-ms for SingleStream and MultiStream")
        if self.target_latency_ms is not None:
            if not self.target_latency_ms > 0:
                raise UsageError(f"the target latency must be positive, got {self.target_latency_ms} ms",
                                 hint="give --target-latency-ms a number of milliseconds above 0")
            if scenario == LoadGenScenario.OFFLINE:
                raise UsageError("--target-latency-ms does not apply to the Offline scenario (it has no latency "
                                 "bound)", hint="use --target-qps to size the Offline query")
        if self.min_duration is not None and not self.min_duration >= 0:
            raise UsageError(f"the minimum duration must be 0 s or more, got {self.min_duration} s",
                             hint="give --min-duration a number of seconds, e.g. 5")
        if self.min_queries is not None and self.min_queries < 1:
            raise UsageError(f"the minimum query count must be at least 1, got {self.min_queries}",
                             hint="give --min-queries a whole number of queries, e.g. 16")


def _attribute(scenario: LoadGenScenario, key: str) -> tuple[str, float] | None:
    """The TestSettings attribute a configuration key sets in ``scenario``, and the factor from the file's unit."""
    ns_per_ms = 1_000_000
    table: dict[str, dict[LoadGenScenario, tuple[str, float]]] = {
        "target_qps": {LoadGenScenario.SERVER: ("server_target_qps", 1),
                       LoadGenScenario.OFFLINE: ("offline_expected_qps", 1)},
        "target_latency": {LoadGenScenario.SERVER: ("server_target_latency_ns", ns_per_ms),
                           LoadGenScenario.SINGLE_STREAM: ("single_stream_expected_latency_ns", ns_per_ms),
                           LoadGenScenario.MULTI_STREAM: ("multi_stream_expected_latency_ns", ns_per_ms)},
        "target_latency_percentile": {
            LoadGenScenario.SERVER: ("server_target_latency_percentile", 0.01),
            LoadGenScenario.SINGLE_STREAM: ("single_stream_target_latency_percentile", 0.01),
            LoadGenScenario.MULTI_STREAM: ("multi_stream_target_latency_percentile", 0.01)},
        "samples_per_query": {LoadGenScenario.MULTI_STREAM: ("multi_stream_samples_per_query", 1)},
    }
    general = {"min_duration": ("min_duration_ms", 1), "min_query_count": ("min_query_count", 1),
               "performance_sample_count_override": ("performance_sample_count_override", 1)}
    if key in general:
        return general[key]
    return table.get(key, {}).get(scenario)


_CONF_LINE = re.compile(r"^\s*([^.#\s]+)\.([^.\s]+)\.(\w+)\s*=")


def user_conf_keys(text: str, scenario: LoadGenScenario) -> set[str]:
    """The keys a user.conf sets for this model and scenario (LoadGen parses the values; this only tells which
    of ssdtool's defaults to leave alone)."""
    keys = set()
    for line in text.splitlines():
        match = _CONF_LINE.match(line)
        if match and match.group(1) in ("*", MLPERF_MODEL) and match.group(2) in ("*", scenario.value):
            keys.add(match.group(3))
    return keys


def _set(settings: Any, scenario: LoadGenScenario, key: str, value: float) -> None:
    found = _attribute(scenario, key)
    if found is None:
        return
    name, factor = found
    current = getattr(settings, name)
    setattr(settings, name, type(current)(value * factor) if isinstance(current, int) else float(value * factor))


def build_settings(lg: Any, scenario: LoadGenScenario, mode: LoadGenMode, overrides: SettingsOverrides,
                   scratch: Path, sample_count: int) -> Any:
    """A ``TestSettings`` for this run. ``scratch`` is a private folder (an empty user.conf is written there when
    none is given, so LoadGen's embedded ``mlperf.conf`` always applies); ``sample_count`` caps the performance
    sample count at the samples the library holds."""
    overrides.check(scenario)
    settings = lg.TestSettings()
    settings.scenario = getattr(lg.TestScenario, scenario.value)
    settings.mode = lg.TestMode.AccuracyOnly if mode == LoadGenMode.ACCURACY else lg.TestMode.PerformanceOnly
    if overrides.user_conf is not None:
        conf = Path(overrides.user_conf)
        try:
            text = fsutil.read_regular(conf, _USER_CONF_LIMIT, follow_links=True).decode("utf-8")
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the user.conf {conf}: {exc}",
                             hint="give --user-conf a readable LoadGen configuration file (text, under 1 MiB)"
                             ) from exc
    else:
        conf, text = scratch / "user.conf", ""
        fsutil.atomic_write(conf, b"")
    status = settings.FromConfig(str(conf), MLPERF_MODEL, scenario.value)
    if status != 0:
        raise UsageError(f"LoadGen rejected the user.conf {conf} (status {status}); expected lines "
                         f"'{MLPERF_MODEL}.{scenario}.key = value' or '*.{scenario}.key = value' with LoadGen's keys",
                         hint="fix the file (LoadGen logs the line it refused on stderr) or leave out --user-conf")
    mentioned = user_conf_keys(text, scenario)
    for key, value in {**V2_DEFAULTS[scenario], **_COMMON_DEFAULTS}.items():
        if key not in mentioned:
            _set(settings, scenario, key, value)
    # A library smaller than 64 images: LoadGen cannot keep more samples loaded than there are.
    settings.performance_sample_count_override = min(settings.performance_sample_count_override or sample_count,
                                                     sample_count)
    if overrides.target_qps is not None:
        _set(settings, scenario, "target_qps", overrides.target_qps)
    if overrides.target_latency_ms is not None:
        _set(settings, scenario, "target_latency", overrides.target_latency_ms)
    if overrides.min_duration is not None:
        settings.min_duration_ms = round(overrides.min_duration * 1000)
    if overrides.min_queries is not None:
        settings.min_query_count = overrides.min_queries
    return settings


def describe_settings(settings: Any, scenario: LoadGenScenario) -> dict[str, Any]:
    """The settings that shape this scenario's run, for the report (LoadGen's units converted to ms and s)."""
    data: dict[str, Any] = {"min_duration_s": settings.min_duration_ms / 1000,
                            "min_query_count": settings.min_query_count,
                            "performance_sample_count": settings.performance_sample_count_override}
    if scenario == LoadGenScenario.SERVER:
        data.update(target_qps=settings.server_target_qps,
                    target_latency_ms=settings.server_target_latency_ns / 1e6,
                    target_latency_percentile=settings.server_target_latency_percentile * 100)
    elif scenario == LoadGenScenario.OFFLINE:
        data.update(expected_qps=settings.offline_expected_qps)
    elif scenario == LoadGenScenario.SINGLE_STREAM:
        data.update(expected_latency_ms=settings.single_stream_expected_latency_ns / 1e6,
                    target_latency_percentile=settings.single_stream_target_latency_percentile * 100)
    else:
        data.update(samples_per_query=settings.multi_stream_samples_per_query,
                    target_latency_ms=settings.multi_stream_expected_latency_ns / 1e6,
                    target_latency_percentile=settings.multi_stream_target_latency_percentile * 100)
    return data
