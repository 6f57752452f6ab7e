"""The bounds of every LoadGen setting ssdtool passes on: one table, used by the flags, the user.conf reader and
the settings check before a test starts (docs/bench.md, "Bounds").

Two kinds of bound:

* **per setting** (:data:`BOUNDS`): what LoadGen's C++ fields and arithmetic hold. Durations and latencies
  become int64 nanoseconds (and LoadGen doubles the duration for its SingleStream/MultiStream schedule), a
  percentile indexes the sorted latencies, a count must be a count.
* **per run** (:func:`generated_samples`, :data:`BYTES_PER_GENERATED_SAMPLE`, :func:`memory_budget`): LoadGen
  generates every query of a test before the first one is issued, so the settings together decide its memory.
  Offline builds one query of ``max(min_query_count, 1.1 x min_duration x target_qps)`` samples; Server
  schedules ``max(min_query_count, min_duration x target_qps)`` queries; SingleStream and MultiStream
  ``max(min_query_count, 2 x min_duration / target_latency)`` queries (MultiStream's of ``samples_per_query``
  samples each). Each sample costs about :data:`BYTES_PER_GENERATED_SAMPLE` (measured, below), and the
  schedule must fit LoadGen's int64 nanosecond clock.

Imports nothing heavy: the command module builds its option types from this table.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ssdtool.checked import is_finite_number, is_int
from ssdtool.constants import LoadGenScenario

INT64_MAX = 2**63 - 1
#: The longest schedule LoadGen is asked for: half of its int64 nanosecond clock (about 146 years), leaving room
#: for the random Poisson arrivals of Server to run past the expected end without overflowing.
MAX_SCHEDULE_NS = 2**62
#: The longest duration or latency: LoadGen doubles min_duration for its SingleStream/MultiStream schedule and
#: compares it in int64 nanoseconds, so a quarter of that clock (2^61 ns, about 73 years) in milliseconds.
MAX_DURATION_MS = 2**61 // 10**6
#: LoadGen's clock counts nanoseconds: above 1e9 queries per second every arrival falls on the same instant.
MAX_QPS = 1e9
#: Memory per sample LoadGen generates before the test, with ssdtool's system under test holding each issued
#: sample: measured 330 bytes (Server, SingleStream: one sample per query) and 470 bytes (Offline, one query)
#: with LoadGen 6.0.17 at 10^6 samples (peak RSS), rounded up.
BYTES_PER_GENERATED_SAMPLE = 512
#: The share of the machine's memory (physical, or a cgroup's limit when lower) a test's settings may ask for.
MEMORY_SHARE = 0.5
_FALLBACK_MEMORY = 8 << 30  # a platform that does not say: assume a small machine
#: Offline's slack and SingleStream/MultiStream's doubling of the duration, as in LoadGen's test_settings_internal.cc
#: and loadgen.cc (GenerateQueries).
OFFLINE_SLACK = 1.1
STREAM_DURATION_FACTOR = 2

ALL_SCENARIOS = tuple(LoadGenScenario)


@dataclass(frozen=True)
class Bound:
    """One setting: its user.conf key (LoadGen's), what it is, its unit in the user.conf, the TestSettings
    attribute it sets in each scenario with the factor from the user.conf's unit, and its bounds there."""

    key: str
    label: str
    unit: str
    attributes: dict[LoadGenScenario, tuple[str, float]]
    low: float
    high: float
    why: str
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    #: Scenarios whose user.conf value LoadGen reads as a whole number (``strtoull``), besides integer settings.
    whole_in: frozenset[LoadGenScenario] = field(default_factory=frozenset)
    #: What 0 means, for settings where it switches something off ("no limit").
    zero_means: str | None = None

    def applies_to(self, scenario: LoadGenScenario) -> bool:
        return scenario in self.attributes

    def whole(self, scenario: LoadGenScenario | None = None) -> bool:
        """Whether LoadGen reads the user.conf value as a whole number (in ``scenario``, or in any)."""
        if self.integer:
            return True
        return bool(self.whole_in) if scenario is None else scenario in self.whole_in

    def describe(self, scale: float = 1.0, unit: str | None = None) -> str:
        """The range in words, e.g. "above 0 and at most 1e+09 queries/s" (``scale``: into another unit)."""
        unit = self.unit if unit is None else unit
        low, high = (_number(self.low), _number(self.high)) if scale == 1 else (
            _number(self.low * scale), _number(self.high * scale))
        text = f"{'above' if self.low_open else 'at least'} {low} and {'below' if self.high_open else 'at most'} {high}"
        return f"{text}{unit}" + (f" (0: {self.zero_means})" if self.zero_means else "")

    def problem(self, value: object) -> str | None:
        """Why ``value`` (in the user.conf's unit) is out of bounds, or None."""
        if self.integer and not is_int(value):
            return f"must be a whole number, got {value!r}"
        if not (is_int(value) or is_finite_number(value)):  # a Python int of any size is finite and compares exactly
            return f"must be a finite number, got {value!r}"
        below = value <= self.low if self.low_open else value < self.low  # type: ignore[operator]
        above = value >= self.high if self.high_open else value > self.high  # type: ignore[operator]
        if below or above:
            return f"must be {self.describe()}"
        return None


def _number(value: float) -> str:
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e16):
        return f"{int(value)}"
    return f"{value:.15g}"


_STREAMS = (LoadGenScenario.SINGLE_STREAM, LoadGenScenario.MULTI_STREAM)
_LATENCY_SCENARIOS = (LoadGenScenario.SERVER, *_STREAMS)

#: Every setting ssdtool takes, by user.conf key. The flags are the same settings in the flags' units.
BOUNDS: dict[str, Bound] = {bound.key: bound for bound in (
    Bound("target_qps", "target QPS", " queries/s",
          {LoadGenScenario.SERVER: ("server_target_qps", 1), LoadGenScenario.OFFLINE: ("offline_expected_qps", 1)},
          0, MAX_QPS, low_open=True,
          why="LoadGen's clock counts nanoseconds, so above 1e9 queries/s every arrival falls on the same instant"),
    Bound("target_latency", "target latency", " ms",
          {LoadGenScenario.SERVER: ("server_target_latency_ns", 1e6),
           LoadGenScenario.SINGLE_STREAM: ("single_stream_expected_latency_ns", 1e6),
           LoadGenScenario.MULTI_STREAM: ("multi_stream_expected_latency_ns", 1e6)},
          1e-6, MAX_DURATION_MS, whole_in=frozenset({LoadGenScenario.SERVER}),
          why="LoadGen counts it in int64 nanoseconds, 1 ns at least, and its SingleStream/MultiStream "
              "schedule adds it up query after query"),
    Bound("target_latency_percentile", "target latency percentile", " %",
          {scenario: (f"{_prefix}_target_latency_percentile", 0.01) for scenario, _prefix in
           zip(_LATENCY_SCENARIOS, ("server", "single_stream", "multi_stream"), strict=True)},
          0, 100, low_open=True, high_open=True,
          why="LoadGen indexes its sorted latencies with it: at 100 or above it reads past their end"),
    Bound("samples_per_query", "samples per query", "",
          {LoadGenScenario.MULTI_STREAM: ("multi_stream_samples_per_query", 1)}, 1, INT64_MAX, integer=True,
          why="a count of samples"),
    Bound("min_duration", "min duration", " ms", {s: ("min_duration_ms", 1) for s in ALL_SCENARIOS},
          0, MAX_DURATION_MS, integer=True,
          why="LoadGen doubles it for its SingleStream/MultiStream schedule and counts in int64 nanoseconds"),
    Bound("max_duration", "max duration", " ms", {s: ("max_duration_ms", 1) for s in ALL_SCENARIOS},
          0, MAX_DURATION_MS, integer=True, zero_means="no limit",
          why="LoadGen counts it in int64 nanoseconds"),
    Bound("min_query_count", "min query count", "", {s: ("min_query_count", 1) for s in ALL_SCENARIOS},
          1, INT64_MAX, integer=True,
          why="a count of queries; LoadGen generates at least this many before the test starts"),
    Bound("max_query_count", "max query count", "", {s: ("max_query_count", 1) for s in ALL_SCENARIOS},
          0, INT64_MAX, integer=True, zero_means="no limit", why="a count of queries"),
    Bound("performance_sample_count_override", "performance sample count", "",
          {s: ("performance_sample_count_override", 1) for s in ALL_SCENARIOS}, 0, INT64_MAX, integer=True,
          zero_means="every sample of the library", why="a count of samples, capped at the samples there are"),
)}

#: The settings that have a flag: user.conf key -> the flag, and the factor from the user.conf's unit to the flag's
#: (``--min-duration`` is in seconds, the user.conf's ``min_duration`` in milliseconds).
FLAGS: dict[str, tuple[str, float, str]] = {
    "target_qps": ("--target-qps", 1.0, " queries/s"),
    "target_latency": ("--target-latency-ms", 1.0, " ms"),
    "min_duration": ("--min-duration", 0.001, " s"),
    "min_query_count": ("--min-queries", 1.0, ""),
}

#: LoadGen keys a user.conf may hold for other benchmarks that ssdtool does not take, and why.
UNSUPPORTED_KEYS: dict[str, str] = {
    **dict.fromkeys(("mode",), "ssdtool sets LoadGen's mode itself; use --mode"),
    **dict.fromkeys(("use_token_latencies", "ttft_latency", "tpot_latency", "infer_token_latencies",
                     "token_latency_scaling_factor"), "token latencies are for language models, not a detector"),
    **dict.fromkeys(("performance_issue_unique", "performance_issue_same", "performance_issue_same_index",
                     "sample_concatenate_permutation", "coalesce_queries", "max_async_queries",
                     "accuracy_sample_count_override"),
                    "it changes which queries LoadGen issues in ways ssdtool's system under test is not tested for"),
    **dict.fromkeys(("print_timestamps", "accuracy_log_rng_seed", "accuracy_log_sampling_target"),
                    "ssdtool does not take LoadGen's logging options from a user.conf"),
    **dict.fromkeys(("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed", "accuracy_log_probability",
                     "test05", "test05_qsl_rng_seed", "test05_sample_index_rng_seed", "test05_schedule_rng_seed",
                     "target_duration"),
                    "LoadGen takes it only from its own mlperf.conf and ignores it in a user.conf"),
}


# ---------------------------------------------------------------------------------------------- the run's memory
@dataclass(frozen=True)
class Generation:
    """What LoadGen generates before a test: ``queries`` of ``samples_per_query`` samples, over
    ``schedule_seconds`` of planned arrivals (None for Offline's single query)."""

    queries: float
    samples_per_query: float
    schedule_seconds: float | None

    @property
    def samples(self) -> float:
        return self.queries * self.samples_per_query


def generated_samples(scenario: LoadGenScenario, *, min_query_count: float, min_duration_ms: float,
                      target_qps: float | None = None, target_latency_ms: float | None = None,
                      samples_per_query: float = 1) -> Generation:
    """What LoadGen 6 generates for these settings (as floats, so absurd settings do not overflow here).

    Offline: one query of ``max(min_query_count, 1.1 x duration x qps)`` samples. Server:
    ``max(min_query_count, duration x qps)`` single-sample queries at ``qps``. SingleStream, MultiStream:
    ``max(min_query_count, 2 x duration / latency)`` queries, one every ``latency``.
    """
    seconds = min_duration_ms / 1000
    if scenario == LoadGenScenario.OFFLINE:
        assert target_qps is not None
        return Generation(1, max(min_query_count, math.floor(OFFLINE_SLACK * seconds * target_qps)), None)
    if scenario == LoadGenScenario.SERVER:
        assert target_qps is not None
        queries = max(min_query_count, seconds * target_qps)
        return Generation(queries, 1, queries / target_qps)
    assert target_latency_ms is not None
    interval = target_latency_ms / 1000
    queries = max(min_query_count, STREAM_DURATION_FACTOR * seconds / interval)
    return Generation(queries, samples_per_query if scenario == LoadGenScenario.MULTI_STREAM else 1,
                      queries * interval)


def machine_memory() -> int:
    """This machine's memory in bytes: physical memory, or the process's cgroup limit when that is lower."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        physical = _FALLBACK_MEMORY
    limits = [physical] if physical > 0 else [_FALLBACK_MEMORY]
    for candidate in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        with contextlib.suppress(OSError, ValueError):
            text = candidate.read_bytes()[:64].decode("ascii").strip()
            if re.fullmatch(r"[0-9]{1,20}", text) and int(text) > 0:
                limits.append(int(text))
    return min(limits)


def memory_budget(memory: int | None = None) -> int:
    """The bytes a test's settings may ask LoadGen and the loaded samples to hold: :data:`MEMORY_SHARE` of
    ``memory`` (default: :func:`machine_memory`)."""
    return int((machine_memory() if memory is None else memory) * MEMORY_SHARE)


def human_bytes(count: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:,.1f} {unit}"
    return f"{count:,.0f} bytes"
