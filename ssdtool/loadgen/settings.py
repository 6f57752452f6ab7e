"""LoadGen test settings for SSD-ResNet34: where each comes from, and the one check before LoadGen starts.

SSD-ResNet34 ("ssd-large") left ``mlperf.conf`` after MLPerf Inference v2.0, so the LoadGen on PyPI no longer
knows it. ssdtool carries that round's values itself (:data:`V2_DEFAULTS`, in LoadGen's own key names and units:
milliseconds, percent) and resolves every setting in this order, later ones winning:

1. LoadGen's embedded ``mlperf.conf`` (its seeds and its ``*`` wildcard entries) and LoadGen's defaults;
2. :data:`V2_DEFAULTS`;
3. the ``--user-conf`` file (:mod:`ssdtool.loadgen.userconf`: LoadGen's format, read strictly; a key it sets
   replaces ssdtool's default);
4. the flags ``--target-qps``, ``--target-latency-ms``, ``--min-duration``, ``--min-queries``.

:func:`check_settings` then checks every resolved setting, whatever its source, against the bounds of
:mod:`ssdtool.loadgen.limits` (each on its own, then what they ask LoadGen to generate together), and only then
are they written into LoadGen's ``TestSettings``. An error names the setting, where it came from, the bound and
what to change.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssdtool.checked import is_finite_number, is_int
from ssdtool.constants import LoadGenMode, LoadGenScenario
from ssdtool.errors import UsageError
from ssdtool.loadgen.limits import (
    BOUNDS,
    BYTES_PER_GENERATED_SAMPLE,
    FLAGS,
    MAX_SCHEDULE_NS,
    MEMORY_SHARE,
    OFFLINE_SLACK,
    STREAM_DURATION_FACTOR,
    Generation,
    generated_samples,
    human_bytes,
    machine_memory,
    memory_budget,
)
from ssdtool.loadgen.userconf import MLPERF_MODEL, UserConf, read_user_conf

__all__ = ["MLPERF_MODEL", "PERFORMANCE_SAMPLE_COUNT", "V2_DEFAULTS", "LibrarySize", "Setting", "SettingsOverrides",
           "build_settings", "check_settings", "describe_settings", "resolve_settings"]

#: How many samples LoadGen keeps loaded in performance mode: this model's MLPerf value.
PERFORMANCE_SAMPLE_COUNT = 64
_YEAR = 365.25 * 86_400

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
V2_SOURCE = "MLPerf v2.0's value for ssd-resnet34"
LOADGEN_SOURCE = "LoadGen's default"


@dataclass(frozen=True)
class SettingsOverrides:
    """The flags: ``target_qps`` (Server: the arrival rate; Offline: the expected rate, which sizes the one
    query), ``target_latency_ms`` (Server: the latency bound; SingleStream/MultiStream: the expected latency),
    ``min_duration`` in seconds, ``min_queries``, and a ``user_conf`` file."""

    target_qps: float | None = None
    target_latency_ms: float | None = None
    min_duration: float | None = None
    min_queries: int | None = None
    user_conf: str | os.PathLike[str] | None = None

    def _given(self) -> dict[str, Any]:
        given = {"target_qps": self.target_qps, "target_latency": self.target_latency_ms,
                 "min_duration": self.min_duration, "min_query_count": self.min_queries}
        return {key: value for key, value in given.items() if value is not None}

    def values(self) -> dict[str, float | int]:
        """The flags given, by user.conf key, in the user.conf's units (``min_duration`` in whole ms); call
        :meth:`check` first."""
        values = {}
        for key, value in self._given().items():
            number = value / FLAGS[key][1]
            values[key] = round(number) if BOUNDS[key].integer else number
        return values

    def check(self, scenario: LoadGenScenario) -> None:
        """Each flag on its own: within its bounds (the table the user.conf reader uses), and meant for
        ``scenario``."""
        if self.target_qps is not None and scenario not in (LoadGenScenario.SERVER, LoadGenScenario.OFFLINE):
            raise UsageError(f"--target-qps applies to the Server and Offline scenarios, not {scenario}",
                             hint="use --target-latency-ms for SingleStream and MultiStream")
        if self.target_latency_ms is not None and scenario == LoadGenScenario.OFFLINE:
            raise UsageError("--target-latency-ms does not apply to the Offline scenario (it has no latency "
                             "bound)", hint="use --target-qps to size the Offline query")
        for key, value in self._given().items():
            flag, scale, unit = FLAGS[key]
            bound = BOUNDS[key]
            if bound.integer and scale == 1:  # a count: a whole number, as it is
                problem = bound.problem(value)
            elif not (is_int(value) or is_finite_number(value)):
                problem = f"must be a finite number, got {value!r}"
            else:
                number = value / scale
                problem = bound.problem(round(number) if bound.integer else number) and (
                    f"must be {bound.describe(scale, unit)}")
            if problem:
                raise UsageError(f"{flag} {value!r}: the {bound.label} {problem} ({bound.why})",
                                 hint=f"give {flag} a value {bound.describe(scale, unit)}")


@dataclass(frozen=True)
class Setting:
    """A resolved setting: its user.conf key, its value in the user.conf's unit, and where it came from."""

    key: str
    value: int | float
    source: str

    def __str__(self) -> str:
        bound = BOUNDS[self.key]
        if self.key == "min_duration":
            return f"min duration {self.value / 1000:g} s ({self.source})"
        value = f"{self.value:,}" if isinstance(self.value, int) else f"{self.value:g}"
        return f"{bound.label} {value}{bound.unit} ({self.source})"


@dataclass(frozen=True)
class LibrarySize:
    """The query sample library as the memory check sees it: ``samples``, how many distinct tensors at most
    (generated images share a few), and the bytes of one tensor."""

    samples: int
    distinct: int
    tensor_bytes: int


def loadgen_defaults(lg: Any, scenario: LoadGenScenario) -> Any:
    """A ``TestSettings`` holding LoadGen's defaults and its embedded ``mlperf.conf`` for this model and scenario
    (``conf_type=0`` reads only the embedded file, every time; a user.conf read would load it once per process)."""
    settings = lg.TestSettings()
    status = settings.FromConfig("", MLPERF_MODEL, scenario.value, 0)
    if status != 0:  # LoadGen's own file: only a broken LoadGen build gets here
        raise UsageError(f"LoadGen could not read its embedded mlperf.conf (status {status})",
                         hint="reinstall LoadGen: pip install --force-reinstall 'ssdtool[loadgen]'")
    return settings


def resolve_settings(base: Any, scenario: LoadGenScenario, overrides: SettingsOverrides,
                     user_conf: UserConf | None) -> dict[str, Setting]:
    """Every setting of :data:`~ssdtool.loadgen.limits.BOUNDS` that applies to ``scenario``, and its source:
    ``base`` (a ``TestSettings`` from :func:`loadgen_defaults`), then ssdtool's defaults, the user.conf, the flags."""
    defaults = {**V2_DEFAULTS[scenario], **_COMMON_DEFAULTS}
    flags = overrides.values()
    resolved: dict[str, Setting] = {}
    for key, bound in BOUNDS.items():
        if not bound.applies_to(scenario):
            continue
        attribute, factor = bound.attributes[scenario]
        current = getattr(base, attribute)
        setting = Setting(key, current if factor == 1 else current / factor, LOADGEN_SOURCE)
        if key in defaults:
            setting = Setting(key, defaults[key], V2_SOURCE)
        line = user_conf.lookup(key, scenario) if user_conf is not None else None
        if line is not None and user_conf is not None:
            setting = Setting(key, line.value, line.source(user_conf.path))
        if key in flags:
            setting = Setting(key, flags[key], FLAGS[key][0])
        resolved[key] = setting
    return resolved


def _hint_for(settings: list[Setting]) -> str:
    """"change --target-qps or user.conf line 3": where each named setting can be changed."""
    places = []
    for setting in settings:
        place = setting.source if not setting.source.startswith(("MLPerf", "LoadGen")) else FLAGS.get(
            setting.key, ("a user.conf line",))[0]
        if place not in places:
            places.append(place)
    return " or ".join(places)


def check_settings(resolved: Mapping[str, Setting], scenario: LoadGenScenario, library: LibrarySize,
                   memory: int | None = None) -> None:
    """The one check before LoadGen starts: every setting within its bounds, whatever its source, then the
    schedule and the memory the settings ask of LoadGen together (``memory``: the machine's, by default
    :func:`~ssdtool.loadgen.limits.machine_memory`). Raises :class:`UsageError` naming the setting, its
    source, the bound and what to change."""
    for setting in resolved.values():
        bound = BOUNDS[setting.key]
        if problem := bound.problem(setting.value):
            raise UsageError(f"{setting}: the {bound.label} {problem} ({bound.why})",
                             hint=f"change {_hint_for([setting])}")
    generation, drivers = _generation(resolved, scenario)
    formula = _explain(scenario, drivers)
    if generation.schedule_seconds is not None and generation.schedule_seconds * 1e9 > MAX_SCHEDULE_NS:
        # Only a query count can get here (a duration is bounded on its own): count x interval is too long.
        rate = resolved.get("target_qps") or resolved["target_latency"]
        raise UsageError(f"{scenario} would schedule {generation.queries:,.0f} queries ({formula}) at {rate}: "
                         f"{generation.schedule_seconds / _YEAR:,.3g} years, more than the "
                         f"{MAX_SCHEDULE_NS / 1e9 / _YEAR:,.0f} years LoadGen's int64 nanosecond clock holds",
                         hint=f"change {_hint_for([*drivers, rate])}")
    memory = machine_memory() if memory is None else memory
    budget = memory_budget(memory)
    psc = resolved["performance_sample_count_override"]
    loaded = min(psc.value or library.samples, library.samples, library.distinct)
    loaded_bytes = loaded * library.tensor_bytes
    generated_bytes = generation.samples * BYTES_PER_GENERATED_SAMPLE
    if generated_bytes + loaded_bytes <= budget:
        return
    where = (f"more than the {human_bytes(budget)} a run may ask for here ({MEMORY_SHARE:.0%} of this machine's "
             f"{human_bytes(memory)})")
    if loaded_bytes > budget // 2:
        raise UsageError(f"{psc}: LoadGen would keep {loaded:,} samples of {human_bytes(library.tensor_bytes)} "
                         f"loaded, {human_bytes(loaded_bytes)}, {where}", hint=f"change {_hint_for([psc])}")
    fit = (budget - loaded_bytes) // BYTES_PER_GENERATED_SAMPLE
    raise UsageError(f"{scenario} would have LoadGen generate {generation.samples:,.0f} samples before the test "
                     f"({formula}): about {human_bytes(generated_bytes)} at {BYTES_PER_GENERATED_SAMPLE} bytes each, "
                     f"{where}", hint=f"change {_hint_for(drivers)} (at most {fit:,} generated samples fit)")


def _generation(resolved: Mapping[str, Setting], scenario: LoadGenScenario) -> tuple[Generation, list[Setting]]:
    """What LoadGen generates for these settings, and the settings that decide it."""
    count, duration = resolved["min_query_count"], resolved["min_duration"]
    qps = resolved.get("target_qps")
    latency = resolved.get("target_latency")
    per_query = resolved.get("samples_per_query")
    generation = generated_samples(
        scenario, min_query_count=count.value, min_duration_ms=duration.value,
        target_qps=qps.value if qps else None, target_latency_ms=latency.value if latency else None,
        samples_per_query=per_query.value if per_query else 1)
    rate = [qps] if qps is not None else [latency] if latency is not None else []
    generated = generation.samples_per_query if scenario == LoadGenScenario.OFFLINE else generation.queries
    drivers = [count] if generated <= count.value else [duration, *rate]
    if scenario == LoadGenScenario.MULTI_STREAM and per_query is not None:
        drivers.append(per_query)
    return generation, drivers


def _explain(scenario: LoadGenScenario, drivers: list[Setting]) -> str:
    """The settings behind a generated count, as LoadGen's formula (GenerateQueries) with their values."""
    by_key = {setting.key: str(setting) for setting in drivers}
    if "min_query_count" in by_key:
        formula = by_key["min_query_count"]
    elif scenario == LoadGenScenario.OFFLINE:
        formula = f"{OFFLINE_SLACK} x {by_key['min_duration']} x {by_key['target_qps']}"
    elif scenario == LoadGenScenario.SERVER:
        formula = f"{by_key['min_duration']} x {by_key['target_qps']}"
    else:
        formula = f"{STREAM_DURATION_FACTOR} x {by_key['min_duration']} / {by_key['target_latency']}"
    if "samples_per_query" in by_key:
        formula += f", x {by_key['samples_per_query']}"
    return formula


def build_settings(lg: Any, scenario: LoadGenScenario, mode: LoadGenMode, overrides: SettingsOverrides,
                   library: LibrarySize, memory: int | None = None) -> Any:
    """A checked ``TestSettings`` for this run: the flags checked, the user.conf read
    (:func:`~ssdtool.loadgen.userconf.read_user_conf`), every setting resolved and checked
    (:func:`check_settings`, with ``memory`` as the machine's); nothing reaches LoadGen before."""
    overrides.check(scenario)
    user_conf = read_user_conf(Path(overrides.user_conf)) if overrides.user_conf is not None else None
    base = loadgen_defaults(lg, scenario)
    resolved = resolve_settings(base, scenario, overrides, user_conf)
    check_settings(resolved, scenario, library, memory)
    settings = base
    settings.scenario = getattr(lg.TestScenario, scenario.value)
    settings.mode = lg.TestMode.AccuracyOnly if mode == LoadGenMode.ACCURACY else lg.TestMode.PerformanceOnly
    for key, setting in resolved.items():
        if setting.source == LOADGEN_SOURCE:
            continue  # already there, exactly (no round trip through the user.conf's unit)
        attribute, factor = BOUNDS[key].attributes[scenario]
        value = setting.value * factor
        setattr(settings, attribute, round(value) if isinstance(getattr(settings, attribute), int) else float(value))
    # A library smaller than 64 images: LoadGen cannot keep more samples loaded than there are.
    settings.performance_sample_count_override = min(settings.performance_sample_count_override or library.samples,
                                                     library.samples)
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
