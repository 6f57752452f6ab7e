"""LoadGen settings LoadGen cannot hold: refused with exit 2 before LoadGen starts, never a crash (issue 20, item 3).

One table of bounds (:mod:`ssdtool.loadgen.limits`) makes the flags' option types, the user.conf reader's checks and
the check of every resolved setting; the memory and schedule checks are pinned to a given machine memory here, so
their messages are exact. The reproductions that used to crash LoadGen (std::bad_alloc, segfault, gigabytes in
seconds) run in a subprocess with a memory cap, so a regression fails a test instead of the test session.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from ssdtool.cli import cli
from ssdtool.constants import LoadGenMode, LoadGenScenario
from ssdtool.errors import UsageError
from ssdtool.loadgen.limits import BOUNDS, FLAGS, INT64_MAX, MAX_DURATION_MS, MAX_QPS, generated_samples, memory_budget
from ssdtool.loadgen.settings import (
    V2_DEFAULTS,
    LibrarySize,
    Setting,
    SettingsOverrides,
    build_settings,
    check_settings,
)
from ssdtool.loadgen.userconf import USER_CONF_BYTES, USER_CONF_LINES, parse_user_conf, read_user_conf

TINY = "ssd-resnet34-300-synthetic-tiny"
GIB = 1 << 30
TINY_LIBRARY = LibrarySize(64, 8, 3 * 300 * 300 * 4)
FULL_TENSOR = 3 * 1200 * 1200 * 4
EARLIER_LOGS = {"mlperf_log_summary.txt": b"an earlier summary\n", "mlperf_log_detail.txt": b"an earlier detail\n",
                "mlperf_log_accuracy.json": b"[]\n"}


def _loadgen() -> Any:
    return pytest.importorskip("mlperf_loadgen")


# ----------------------------------------------------------------------------------------------- the one table
def test_flag_types_are_the_tables_bounds() -> None:
    params = {param.name: param for param in cli.commands["bench"].params}
    names = {"target_qps": "target_qps", "target_latency": "target_latency_ms", "min_duration": "min_duration",
             "min_query_count": "min_queries"}
    for key, (flag, scale, _unit) in FLAGS.items():
        kind = params[names[key]].type
        bound = BOUNDS[key]
        assert isinstance(kind, click.IntRange | click.FloatRange), flag
        expected = (bound.low, bound.high) if isinstance(kind, click.IntRange) else (bound.low * scale,
                                                                                      bound.high * scale)
        assert (kind.min, kind.max) == expected, flag
        assert (kind.min_open, kind.max_open) == (bound.low_open, bound.high_open), flag


@pytest.mark.parametrize(("key", "inside", "outside"), [
    ("target_qps", MAX_QPS, MAX_QPS * 1.01), ("target_qps", 1e-9, 0.0),
    ("target_latency", MAX_DURATION_MS, MAX_DURATION_MS + 1), ("target_latency", 1e-6, 1e-7),
    ("min_duration", MAX_DURATION_MS, MAX_DURATION_MS + 1), ("min_query_count", INT64_MAX, INT64_MAX + 1),
    ("min_query_count", 1, 0), ("target_latency_percentile", 99.999, 100), ("target_latency_percentile", 0.001, 0),
])
def test_user_conf_and_check_share_the_bounds(tmp_path: Path, key: str, inside: float, outside: float) -> None:
    bound = BOUNDS[key]
    scenario = next(iter(bound.attributes))
    assert bound.problem(inside) is None and bound.problem(outside) is not None
    for value, accepted in ((inside, True), (outside, False)):
        text = f"{value:d}" if isinstance(value, int) else repr(value)
        if bound.whole(scenario) and not isinstance(value, int):
            continue
        line = f"ssd-resnet34.{scenario}.{key} = {text}\n"
        if accepted:
            assert parse_user_conf(line, tmp_path / "u.conf").lines[0].value == value
        else:
            with pytest.raises(UsageError, match=rf"u.conf line 1: {key} = {text}: must be "):
                parse_user_conf(line, tmp_path / "u.conf")


# ----------------------------------------------------------------------------------------------- the flags
@pytest.mark.parametrize(("args", "message"), [
    (("--scenario", "Offline", "--target-qps", "1e12", "--min-duration", "1", "--min-queries", "8"),
     "Invalid value for '--target-qps': 1000000000000.0 is not in the range 0.0<x<=1000000000.0."),
    (("--scenario", "Offline", "--min-duration", "inf"),
     "Invalid value for '--min-duration': 'inf' is not a finite number; give one in 0.0<=x<=2305843009.213."),
    (("--scenario", "Offline", "--min-duration", "1e300"),
     "Invalid value for '--min-duration': 1e+300 is not in the range 0.0<=x<=2305843009.213."),
    (("--scenario", "Offline", "--min-duration", "nan"),
     "Invalid value for '--min-duration': 'nan' is not a finite number"),
    (("--scenario", "Offline", "--min-queries", "99999999999999999999"),
     "Invalid value for '--min-queries': 99999999999999999999 is not in the range 1<=x<=9223372036854775807."),
    (("--scenario", "Server", "--target-qps", "inf"),
     "Invalid value for '--target-qps': 'inf' is not a finite number; give one in 0.0<x<=1000000000.0."),
    (("--scenario", "Server", "--target-latency-ms", "inf"),
     "Invalid value for '--target-latency-ms': 'inf' is not a finite number; give one in 1e-06<=x<=2305843009213.0."),
    (("--scenario", "SingleStream", "--target-latency-ms", "0"),
     "Invalid value for '--target-latency-ms': 0.0 is not in the range 1e-06<=x<=2305843009213.0."),
    (("--scenario", "Server", "--target-qps", "-3"),
     "Invalid value for '--target-qps': -3.0 is not in the range 0.0<x<=1000000000.0."),
    (("--scenario", "Offline", "--min-queries", "0"),
     "Invalid value for '--min-queries': 0 is not in the range 1<=x<=9223372036854775807."),
])
def test_flags_out_of_bounds(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["--cache-dir", str(tmp_path / "cache"), "bench", TINY, "--offline",
                                      "--output-dir", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


@pytest.mark.parametrize(("overrides", "message"), [
    (SettingsOverrides(target_qps=float("nan")), "--target-qps nan: the target QPS must be a finite number, got nan"),
    (SettingsOverrides(min_duration=float("inf")), "--min-duration inf: the min duration must be a finite number"),
    (SettingsOverrides(min_duration=1e300),
     "--min-duration 1e+300: the min duration must be at least 0 and at most 2305843009.213 s"),
    (SettingsOverrides(min_queries=10**20),
     "--min-queries 100000000000000000000: the min query count must be at least 1 and at most 9223372036854775807"),
    (SettingsOverrides(min_queries=2.5), "--min-queries 2.5: the min query count must be a whole number, got 2.5"),
    (SettingsOverrides(target_qps=True), "--target-qps True: the target QPS must be a finite number, got True"),
])
def test_python_callers_meet_the_same_bounds(overrides: SettingsOverrides, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        overrides.check(LoadGenScenario.OFFLINE)
    assert caught.value.message.startswith(message), caught.value.message
    assert caught.value.hint and caught.value.hint.startswith("give --")


# ----------------------------------------------------------------------------------------------- in a subprocess
def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (3 * GIB, 3 * GIB))


@pytest.mark.parametrize(("args", "conf", "messages"), [
    (("--scenario", "Offline", "--target-qps", "1e12", "--min-duration", "1", "--min-queries", "8"), None,
     ["Invalid value for '--target-qps': 1000000000000.0 is not in the range 0.0<x<=1000000000.0."]),
    (("--scenario", "Offline", "--target-qps", "1e8", "--min-duration", "1", "--min-queries", "8"), None,
     ["error: Offline would have LoadGen generate 110,000,000 samples before the test (1.1 x min duration 1 s "
      "(--min-duration) x target QPS 1e+08 queries/s (--target-qps)): about 52.5 GiB at 512 bytes each, more than",
      "hint: change --min-duration or --target-qps (at most "]),
    (("--scenario", "Server", "--target-qps", "1e7"), None,
     ["error: Server would have LoadGen generate 6,000,000,000 samples before the test (min duration 600 s (MLPerf "
      "v2.0's value for ssd-resnet34) x target QPS 1e+07 queries/s (--target-qps)): about 2.8 TiB",
      "hint: change --min-duration or --target-qps (at most "]),
    (("--scenario", "SingleStream", "--min-duration", "1"), "*.SingleStream.min_query_count = -5\n",
     ["user.conf line 1: min_query_count takes a whole number in decimal digits, got '-5'; negative, and LoadGen "
      "would read it as 2^64 - 5 = 18446744073709551611", "hint: fix line 1 of user.conf, or leave out --user-conf"]),
    (("--scenario", "Offline", "--min-duration", "inf"), None, ["'inf' is not a finite number"]),
    (("--scenario", "Offline", "--min-duration", "1e300"), None, ["1e+300 is not in the range"]),
    (("--scenario", "Offline", "--min-queries", "99999999999999999999"), None,
     ["99999999999999999999 is not in the range 1<=x<=9223372036854775807."]),
    (("--scenario", "Server", "--target-qps", "inf"), None, ["'inf' is not a finite number"]),
    (("--scenario", "SingleStream", "--target-latency-ms", "inf"), None, ["'inf' is not a finite number"]),
])
def test_issue_reproductions_exit_2_and_leave_earlier_logs(tmp_path: Path, args: tuple[str, ...], conf: str | None,
                                                           messages: list[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name, data in EARLIER_LOGS.items():
        (out / name).write_bytes(data)
    extra: tuple[str, ...] = ()
    if conf is not None:
        (tmp_path / "user.conf").write_text(conf)
        extra = ("--user-conf", "user.conf")
    command = [sys.executable, "-m", "ssdtool", "--cache-dir", str(tmp_path / "cache"), "bench", TINY, "--offline",
               "--progress", "none", "--output-dir", str(out), *args, *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            preexec_fn=_cap_memory, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert result.returncode == 2, result.stderr
    for message in messages:
        assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == EARLIER_LOGS


# ----------------------------------------------------------------------------------------------- the run's check
def _resolved(scenario: LoadGenScenario, **values: float) -> dict[str, Setting]:
    base = {"target_qps": 1.0, "target_latency": 10.0, "target_latency_percentile": 90.0, "samples_per_query": 8,
            "max_duration": 0, "max_query_count": 0, **V2_DEFAULTS[scenario], "performance_sample_count_override": 64}
    sources = {"target_qps": "--target-qps", "min_duration": "--min-duration", "min_query_count": "--min-queries",
               "target_latency": "--target-latency-ms"}
    resolved = {}
    for key, bound in BOUNDS.items():
        if bound.applies_to(scenario):
            if key in values:
                resolved[key] = Setting(key, values[key], sources.get(key, "u.conf line 3"))
            else:
                resolved[key] = Setting(key, base[key], "MLPerf v2.0's value for ssd-resnet34")
    return resolved


def test_offline_memory_message_is_exact() -> None:
    resolved = _resolved(LoadGenScenario.OFFLINE, target_qps=1e6, min_duration=10_000)
    with pytest.raises(UsageError) as caught:
        check_settings(resolved, LoadGenScenario.OFFLINE, TINY_LIBRARY, memory=GIB)
    assert caught.value.message == (
        "Offline would have LoadGen generate 11,000,000 samples before the test (1.1 x min duration 10 s "
        "(--min-duration) x target QPS 1e+06 queries/s (--target-qps)): about 5.2 GiB at 512 bytes each, more than "
        "the 512.0 MiB a run may ask for here (50% of this machine's 1.0 GiB)")
    fit = (memory_budget(GIB) - 8 * TINY_LIBRARY.tensor_bytes) // 512
    assert caught.value.hint == f"change --min-duration or --target-qps (at most {fit:,} generated samples fit)"
    check_settings(resolved, LoadGenScenario.OFFLINE, TINY_LIBRARY, memory=16 * GIB)  # fits a bigger machine


def test_a_large_min_query_count_is_named() -> None:
    resolved = _resolved(LoadGenScenario.SERVER, min_query_count=50_000_000, min_duration=0)
    with pytest.raises(UsageError) as caught:
        check_settings(resolved, LoadGenScenario.SERVER, TINY_LIBRARY, memory=4 * GIB)
    assert caught.value.message.startswith(
        "Server would have LoadGen generate 50,000,000 samples before the test (min query count 50,000,000 "
        "(--min-queries)): about 23.8 GiB")
    assert caught.value.hint is not None and caught.value.hint.startswith("change --min-queries (at most ")


def test_multistream_counts_samples_per_query_from_the_user_conf() -> None:
    resolved = _resolved(LoadGenScenario.MULTI_STREAM, samples_per_query=10_000, min_query_count=100_000,
                         min_duration=0)
    with pytest.raises(UsageError) as caught:
        check_settings(resolved, LoadGenScenario.MULTI_STREAM, TINY_LIBRARY, memory=4 * GIB)
    assert caught.value.message.startswith(
        "MultiStream would have LoadGen generate 1,000,000,000 samples before the test (min query count 100,000 "
        "(--min-queries), x samples per query 10,000 (u.conf line 3))")
    assert caught.value.hint is not None and caught.value.hint.startswith("change --min-queries or u.conf line 3")


def test_schedule_beyond_loadgens_clock() -> None:
    resolved = _resolved(LoadGenScenario.SERVER, target_qps=1e-9, min_query_count=8, min_duration=0)
    with pytest.raises(UsageError) as caught:
        check_settings(resolved, LoadGenScenario.SERVER, TINY_LIBRARY, memory=4 * GIB)
    assert caught.value.message == (
        "Server would schedule 8 queries (min query count 8 (--min-queries)) at target QPS 1e-09 queries/s "
        "(--target-qps): 254 years, more than the 146 years LoadGen's int64 nanosecond clock holds")
    assert caught.value.hint == "change --min-queries or --target-qps"


def test_loaded_samples_count_too() -> None:
    coco = LibrarySize(5000, 5000, FULL_TENSOR)
    resolved = _resolved(LoadGenScenario.OFFLINE, performance_sample_count_override=5000)
    with pytest.raises(UsageError) as caught:
        check_settings(resolved, LoadGenScenario.OFFLINE, coco, memory=32 * GIB)
    assert caught.value.message == (
        "performance sample count 5,000 (u.conf line 3): LoadGen would keep 5,000 samples of 16.5 MiB loaded, "
        "80.5 GiB, more than the 16.0 GiB a run may ask for here (50% of this machine's 32.0 GiB)")
    assert caught.value.hint == "change u.conf line 3"
    check_settings(_resolved(LoadGenScenario.OFFLINE), LoadGenScenario.OFFLINE, coco, memory=32 * GIB)  # 64 loaded


@pytest.mark.parametrize("scenario", list(LoadGenScenario))
def test_mlperf_settings_fit_a_small_machine(scenario: LoadGenScenario) -> None:
    """MLPerf's own settings on the full-size model, with 64 COCO images loaded, pass on a 4 GiB machine."""
    check_settings(_resolved(scenario), scenario, LibrarySize(5000, 5000, FULL_TENSOR), memory=4 * GIB)


def test_generated_samples_follow_loadgen() -> None:
    """LoadGen's detail log says generated_query_count / generated_samples_per_query; these are its formulas."""
    offline = generated_samples(LoadGenScenario.OFFLINE, min_query_count=8, min_duration_ms=1000, target_qps=100)
    assert (offline.queries, offline.samples_per_query, offline.schedule_seconds) == (1, 110, None)
    server = generated_samples(LoadGenScenario.SERVER, min_query_count=8, min_duration_ms=2000, target_qps=50)
    assert (server.samples, server.schedule_seconds) == (100, 2)
    multi = generated_samples(LoadGenScenario.MULTI_STREAM, min_query_count=2, min_duration_ms=1000,
                              target_latency_ms=100, samples_per_query=8)
    assert (multi.queries, multi.samples) == (20, 160)


def test_two_runs_in_one_process_both_get_mlperf_conf(tmp_path: Path) -> None:
    """LoadGen reads its embedded mlperf.conf (the seeds) with the first user.conf of a process only; ssdtool
    reads it directly for every run."""
    lg = _loadgen()
    seeds = []
    for _ in range(3):
        made = build_settings(lg, LoadGenScenario.SERVER, LoadGenMode.PERFORMANCE, SettingsOverrides(),
                              TINY_LIBRARY, memory=8 * GIB)
        seeds.append((made.qsl_rng_seed, made.sample_index_rng_seed, made.schedule_rng_seed))
    assert seeds[0] == seeds[1] == seeds[2] and 0 not in seeds[0]


def test_build_settings_applies_the_user_conf_and_checks_it(tmp_path: Path) -> None:
    lg = _loadgen()
    conf = tmp_path / "user.conf"
    conf.write_text("*.Server.target_qps = 1e6\n*.Server.min_duration = 600000\n")
    with pytest.raises(UsageError, match=r"target QPS 1e\+06 queries/s \(.*user.conf line 1\)"):
        build_settings(lg, LoadGenScenario.SERVER, LoadGenMode.PERFORMANCE, SettingsOverrides(user_conf=conf),
                       TINY_LIBRARY, memory=8 * GIB)
    made = build_settings(lg, LoadGenScenario.SERVER, LoadGenMode.PERFORMANCE,
                          SettingsOverrides(user_conf=conf, min_duration=1), TINY_LIBRARY, memory=8 * GIB)
    assert (made.server_target_qps, made.min_duration_ms) == (1e6, 1000)


# ----------------------------------------------------------------------------------------------- user.conf
@pytest.mark.parametrize(("line", "problem"), [
    ("*.Server.target_qps = nan", "target_qps must be a decimal number, got 'nan' (nan, inf and hexadecimal are "
                                  "refused)"),
    ("*.Server.target_qps = -inf", "target_qps must be a decimal number, got '-inf'"),
    ("*.Server.target_qps = 1e400", "target_qps = '1e400' is beyond the range of a double"),
    ("*.Server.target_qps = 0x10", "target_qps must be a decimal number, got '0x10'"),
    ("*.Server.target_qps = fast", "target_qps must be a decimal number, got 'fast'"),
    ("*.Server.target_qps = 0", "target_qps = 0: must be above 0 and at most 1000000000 queries/s (LoadGen's clock"),
    ("ssd-resnet34.Server.target_qps=5", "'ssd-resnet34.Server.target_qps=5': expected 'model.scenario.key = value' "
                                         "(blanks around '=', nothing after the value); LoadGen ignores or refuses "
                                         "such a line"),
    ("*.Server.target_qps = 5 # note", "expected 'model.scenario.key = value'"),
    ("*.Server.target_qps = 5 6", "expected 'model.scenario.key = value'"),
    ("*.Server.target_qps", "expected 'model.scenario.key = value'"),
    ("Server.target_qps = 5", "the key 'Server.target_qps' is not 'model.scenario.key'"),
    ("*.Server.target_qsp = 5", "unknown key 'target_qsp' (LoadGen would ignore it); ssdtool takes target_qps, "
                                "target_latency, target_latency_percentile, samples_per_query, min_duration, "
                                "max_duration, min_query_count, max_query_count, performance_sample_count_override"),
    ("*.Sever.target_qps = 5", "unknown scenario 'Sever' (LoadGen would ignore the line); expected SingleStream, "
                               "MultiStream, Server, Offline or *"),
    ("*.Server.mode = 1", "ssdtool does not take 'mode' from a user.conf: ssdtool sets LoadGen's mode itself; use "
                          "--mode"),
    ("*.*.schedule_rng_seed = 1", "LoadGen takes it only from its own mlperf.conf and ignores it in a user.conf"),
    ("*.Offline.target_latency = 5", "target_latency does not apply to Offline (LoadGen would ignore it); it applies "
                                     "to Server, SingleStream, MultiStream"),
    ("*.SingleStream.min_query_count = -5", "min_query_count takes a whole number in decimal digits, got '-5'; "
                                            "negative, and LoadGen would read it as 2^64 - 5 = 18446744073709551611"),
    ("*.Offline.min_query_count = 1e3", "got '1e3'; LoadGen would read only its whole part (1)"),
    ("*.Offline.min_query_count = 2.5", "got '2.5'; LoadGen would read only its whole part (2)"),
    ("*.Offline.min_query_count = 010", "got '010'; LoadGen would read a leading 0 as octal (8)"),
    ("*.Offline.min_query_count = 0", "min_query_count = 0: must be at least 1 and at most 9223372036854775807"),
    ("*.Offline.min_query_count = 99999999999999999999", "min_query_count = 99999999999999999999: must be at least 1"),
    ("*.*.target_latency = 0.5", "target_latency (in Server) takes a whole number in decimal digits, got '0.5'; "
                                 "LoadGen would read only its whole part (0)"),
    ("*.Server.target_latency_percentile = 100", "must be above 0 and below 100 % (LoadGen indexes its sorted "
                                                 "latencies with it: at 100 or above it reads past their end)"),
    ("*.Server.min_duration = 99999999999999999999", "must be at least 0 and at most 2305843009213 ms"),
    ("*.Server.target_qps = 5\x00", "a control character ('\\x00')"),
    ("resnet50.Server.target_qps = inf", "the value must be a decimal number, got 'inf'"),
])
def test_hostile_user_conf_lines(tmp_path: Path, line: str, problem: str) -> None:
    text = f"# mine\n\n{line}\n"
    with pytest.raises(UsageError) as caught:
        parse_user_conf(text, tmp_path / "u.conf")
    assert caught.value.message.startswith(f"{tmp_path / 'u.conf'} line 3: "), caught.value.message
    assert problem in caught.value.message
    assert caught.value.hint == "fix line 3 of u.conf, or leave out --user-conf"


def test_user_conf_limits(tmp_path: Path) -> None:
    conf = tmp_path / "u.conf"
    conf.write_bytes(b"#" * (USER_CONF_BYTES + 1))
    with pytest.raises(UsageError, match="is larger than 1024 KiB"):
        read_user_conf(conf)
    conf.write_text("\n" * USER_CONF_LINES)
    with pytest.raises(UsageError, match="has 10,001 lines, more than 10,000"):
        read_user_conf(conf)
    conf.write_text("# " + "x" * 2000 + "\n")
    with pytest.raises(UsageError, match="line 1: 2,002 characters, more than 1,000"):
        read_user_conf(conf)
    conf.write_bytes(b"*.Server.target_qps = 5\xff\n")
    with pytest.raises(UsageError, match=r"is not UTF-8 text \(byte 23\)"):
        read_user_conf(conf)
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo)
    for path, problem in ((fifo, "it is a FIFO (named pipe), expected a regular file"),  # never blocks on it
                          (tmp_path, "it is a folder, expected a regular file"),
                          (tmp_path / "none.conf", "No such file or directory")):
        with pytest.raises(UsageError) as caught:
            read_user_conf(path)
        assert caught.value.message == f"cannot read the user.conf {path}: {problem}"


def test_user_conf_precedence_is_loadgens(tmp_path: Path) -> None:
    """ssd-resnet34.S, then *.S, then ssd-resnet34.*, then *.*; the last line of a pattern wins; other models'
    lines never apply."""
    conf = parse_user_conf("\n".join([
        "*.*.min_query_count = 1", "ssd-resnet34.*.min_query_count = 2", "*.Server.min_query_count = 3",
        "resnet50.Server.min_query_count = 4", "ssd-resnet34.Server.min_query_count = 5",
        "ssd-resnet34.Server.min_query_count = 6", "*.*.min_duration = 7", "ssd-resnet34.*.min_duration = 8",
        "*.Offline.target_qps = 9", "*.*.target_qps = 10"]), tmp_path / "u.conf")
    assert conf.lookup("min_query_count", LoadGenScenario.SERVER).number == 6  # type: ignore[union-attr]
    assert conf.lookup("min_query_count", LoadGenScenario.OFFLINE).value == 2  # type: ignore[union-attr]
    assert conf.lookup("min_duration", LoadGenScenario.OFFLINE).value == 8  # type: ignore[union-attr]
    assert conf.lookup("target_qps", LoadGenScenario.OFFLINE).value == 9  # type: ignore[union-attr]
    assert conf.lookup("target_qps", LoadGenScenario.SERVER).value == 10  # type: ignore[union-attr]
    assert conf.lookup("max_duration", LoadGenScenario.SERVER) is None


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=INT64_MAX))
def test_whole_numbers_read_back(count: int) -> None:
    conf = parse_user_conf(f"ssd-resnet34.Offline.min_query_count = {count}\n", Path("u.conf"))
    assert conf.lines[0].value == count


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_read_or_refused_with_a_usage_error(text: str) -> None:
    try:
        conf = parse_user_conf(text, Path("u.conf"))
    except UsageError as exc:
        assert exc.message.startswith("u.conf line ")
        return
    for line in conf.lines:
        if line.model in ("*", "ssd-resnet34"):
            assert BOUNDS[line.key].problem(line.value) is None
