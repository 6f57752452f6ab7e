"""ssdtool download / verify against local fault-injecting servers (tests/httpserver.py); nothing leaves 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.download import (
    DownloadEvent,
    FetchOptions,
    RetryPolicy,
    content_range_matches,
    ensure_downloaded,
    fetch,
    normalize_mirror,
    redirect_refusal,
    source_urls,
    verify,
)
from ssdtool.errors import (
    CacheError,
    ChecksumError,
    LockTimeoutError,
    NetworkError,
    OfflineError,
    UsageError,
)
from ssdtool.registry import ModelEntry, load_registry
from tests.httpserver import Fault, FaultyServer, make_self_signed_cert

SIZE = 300_000
PATH = "/files/m/f.bin"
TINY_URL = "synthetic:ssd-resnet34?seed=0&variant=tiny"
REPO = Path(__file__).resolve().parent.parent


def make_payload(seed: int = 1, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


PAYLOAD = make_payload()


def file_entry(name: str, data: bytes, sources: list[str]) -> dict[str, Any]:
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "sha384": hashlib.sha384(data).hexdigest(), "sources": sources}


def model_entry(files: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "description": "test model", "task": "detection", "license": "MIT", "files": files,
        "input": {"name": "image", "shape": [1, 3, 8, 8], "layout": "NCHW", "color_order": "RGB",
                  "mean": [0, 0, 0], "scale": [1, 1, 1], "resize": [8, 8], "interpolation": "bilinear"},
        "outputs": {"boxes": "b", "labels": "l", "scores": "s", "box_format": "xyxy", "box_units": "normalized",
                    "label_offset": 0},
        "labels": "coco_80cl_bkgr.txt",
        "convert": {"color_order": "BGR", "output_count": 200, "precision": "FP32"},
    }


def write_registry(path: Path, models: dict[str, list[dict[str, Any]]]) -> Path:
    data = {"version": 1, "models": {name: model_entry(files) for name, files in models.items()}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def server() -> Iterator[FaultyServer]:
    with FaultyServer() as running:
        yield running


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache.at(tmp_path / "cache")


@pytest.fixture
def registry_path(tmp_path: Path, server: FaultyServer) -> Path:
    """Model ``m`` with one file ``f.bin`` served at PATH."""
    url = server.add(PATH, PAYLOAD)
    return write_registry(tmp_path / "registry.yml", {"m": [file_entry("f.bin", PAYLOAD, [url])]})


@pytest.fixture
def model(registry_path: Path) -> ModelEntry:
    return load_registry(registry_path).model("m")


class Events(list[DownloadEvent]):
    def kinds(self) -> list[str]:
        return [e.event for e in self]


def get(model: ModelEntry, cache: Cache, **options: Any) -> tuple[Any, Events]:
    events = Events()
    options = {"retries": 0, "backoff": 0.01, "mirror": "", "offline": False, **options}
    return fetch(model, cache, FetchOptions(**options), progress=events.append), events


def run_cli(registry: Path, cache: Cache, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["--registry", str(registry), "--cache-dir", str(cache.root), *args], env=env)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSDTOOL_")}
    env["PYTHONPATH"] = str(REPO)
    return {**env, **extra}


# --------------------------------------------------------------------------------------------------------------
# Happy path, cache, JSON output


def test_download_cli_json_summary_and_progress_events(registry_path: Path, cache: Cache,
                                                       server: FaultyServer) -> None:
    result = run_cli(registry_path, cache, "download", "--json", "--progress", "json")
    assert result.exit_code == 0, result.output
    [summary] = json.loads(result.stdout)
    final = cache.root / "m" / "f.bin"
    assert summary == {
        "model": "m", "file": "f.bin", "path": str(final), "size": SIZE,
        "sha256": hashlib.sha256(PAYLOAD).hexdigest(), "sha384": hashlib.sha384(PAYLOAD).hexdigest(),
        "source": server.url(PATH), "bytes_transferred": SIZE, "seconds": summary["seconds"], "resumed": False,
        "resumed_from": 0, "cached": False,
    }
    assert final.read_bytes() == PAYLOAD
    assert not cache.part_path("m", "f.bin").exists()
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-2:] == ["verified", "done"]
    assert events[0] | {"time": 0} == {"event": "start", "model": "m", "file": "f.bin", "size": SIZE,
                                       "source": server.url(PATH), "offset": 0, "time": 0}
    progress = [e["downloaded"] for e in events if e["event"] == "progress"]
    assert progress == sorted(progress) and progress[-1] == SIZE
    assert events[-1]["files"] == 1 and events[-1]["failed"] == 0 and events[-1]["bytes_transferred"] == SIZE
    record = cache.read_record("m", "f.bin")
    assert record is not None and record.checksums["sha256"] == summary["sha256"]


def test_cli_table_output(registry_path: Path, cache: Cache) -> None:
    result = run_cli(registry_path, cache, "download", "--progress", "none")
    assert result.exit_code == 0, result.output
    assert "f.bin" in result.stdout and "downloaded" in result.stdout and str(cache.root) in result.stdout
    again = run_cli(registry_path, cache, "download", "--progress", "none")
    assert "cached" in again.stdout


def test_verified_file_is_not_fetched_or_rehashed_again(model: ModelEntry, cache: Cache, server: FaultyServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    get(model, cache)
    import ssdtool.download.fetcher as download

    def no_hashing(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a recorded, unchanged file must not be re-hashed")

    monkeypatch.setattr(download, "hash_file", no_hashing)
    [installed], events = get(model, cache)
    assert installed.cached and installed.source == "cache" and installed.bytes_transferred == 0
    assert events.kinds() == ["verified", "done"]
    assert server.hits(PATH) == 1


def test_changed_mtime_rehashes_without_network(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    get(model, cache)
    final = cache.file_path("m", "f.bin")
    os.utime(final, ns=(1_000_000_000, 1_000_000_000))
    [installed], _ = get(model, cache)
    assert installed.cached and server.hits(PATH) == 1
    record = cache.read_record("m", "f.bin")
    assert record is not None and record.mtime_ns == 1_000_000_000


def test_corrupted_cached_file_is_replaced(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    get(model, cache)
    final = cache.file_path("m", "f.bin")
    final.write_bytes(b"x" * SIZE)  # same size, new mtime: the record no longer vouches for it
    [installed], _ = get(model, cache)
    assert not installed.cached and final.read_bytes() == PAYLOAD and server.hits(PATH) == 2


def test_hand_placed_correct_file_is_accepted_without_network(model: ModelEntry, cache: Cache,
                                                              server: FaultyServer) -> None:
    final = cache.file_path("m", "f.bin")
    final.parent.mkdir(parents=True)
    final.write_bytes(PAYLOAD)
    [installed], _ = get(model, cache)
    assert installed.cached and server.hits(PATH) == 0
    assert cache.recorded_verified(model, model.primary_file) is not None


def test_force_downloads_again(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    get(model, cache)
    [installed], _ = get(model, cache, force=True)
    assert not installed.cached and server.hits(PATH) == 2


def test_ensure_downloaded_returns_primary_path(model: ModelEntry, cache: Cache) -> None:
    path = ensure_downloaded(model, cache, FetchOptions(offline=False, mirror=""))
    assert path == cache.file_path("m", "f.bin") and path.read_bytes() == PAYLOAD


# --------------------------------------------------------------------------------------------------------------
# Resume


def test_resume_after_dropped_connection(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(drop_after=100_000, times=1))
    with pytest.raises(NetworkError, match="transfer broke off after 100000 of 300000 bytes"):
        get(model, cache)
    part = cache.part_path("m", "f.bin")
    assert part.stat().st_size == 100_000 and not cache.file_path("m", "f.bin").exists()
    [installed], events = get(model, cache)
    assert installed.resumed and installed.resumed_from == 100_000
    assert installed.bytes_transferred == SIZE - 100_000 < SIZE
    assert events[0].event == "start" and events[0].offset == 100_000
    assert server.requests_for(PATH)[-1].range == "bytes=100000-"
    assert cache.file_path("m", "f.bin").read_bytes() == PAYLOAD and not part.exists()


def test_retry_within_one_run_resumes(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(drop_after=50_000, times=1))
    [installed], events = get(model, cache, retries=1)
    assert installed.resumed and installed.bytes_transferred == SIZE
    failed = [e for e in events if e.event == "source_failed"]
    assert len(failed) == 1 and failed[0].retry_in is not None and failed[0].attempt == 1


def test_range_ignored_restarts_from_zero(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(ignore_range=True))
    part = cache.part_path("m", "f.bin")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:100_000])
    [installed], _ = get(model, cache)
    assert not installed.resumed and installed.bytes_transferred == SIZE
    assert cache.file_path("m", "f.bin").read_bytes() == PAYLOAD


def test_mismatched_content_range_discards_part(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(range_shift=10, times=1))
    part = cache.part_path("m", "f.bin")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:100_000])
    [installed], _ = get(model, cache)
    assert not installed.resumed
    assert [r.range for r in server.requests_for(PATH)] == ["bytes=100000-", None]
    assert cache.file_path("m", "f.bin").read_bytes() == PAYLOAD


def test_416_discards_part(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(status=416, times=1))
    part = cache.part_path("m", "f.bin")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:1000])
    [installed], _ = get(model, cache)
    assert not installed.resumed and [r.status for r in server.requests_for(PATH)] == [416, 200]


def test_corrupt_part_prefix_gets_one_fresh_retry(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    part = cache.part_path("m", "f.bin")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 100_000)  # not the file's first bytes
    [installed], events = get(model, cache)  # retries=0: the fresh retry is not a network retry
    assert not installed.resumed and cache.file_path("m", "f.bin").read_bytes() == PAYLOAD
    assert [r.range for r in server.requests_for(PATH)] == ["bytes=100000-", None]
    assert any(e.event == "source_failed" and "checksum mismatch" in (e.reason or "") for e in events)


def test_complete_part_is_installed_without_network(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    part = cache.part_path("m", "f.bin")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD)  # interrupted between the last write and the rename
    [installed], _ = get(model, cache)
    assert installed.source == "partial download" and server.hits(PATH) == 0


def test_keyboard_interrupt_keeps_part_and_rerun_resumes(model: ModelEntry, cache: Cache,
                                                         server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(chunk=16 * 1024, delay=0.01))

    def interrupt(event: DownloadEvent) -> None:
        if event.event == "progress" and (event.downloaded or 0) >= 64 * 1024:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch(model, cache, FetchOptions(retries=0, mirror="", offline=False, progress_interval=0), progress=interrupt)
    part = cache.part_path("m", "f.bin")
    kept = part.stat().st_size
    assert 64 * 1024 <= kept < SIZE and not cache.file_path("m", "f.bin").exists()
    server.set_fault(PATH, None)
    [installed], _ = get(model, cache)
    assert installed.resumed and installed.resumed_from == kept and installed.bytes_transferred == SIZE - kept
    assert cache.file_path("m", "f.bin").read_bytes() == PAYLOAD


def test_sigint_exits_130_and_keeps_part(registry_path: Path, cache: Cache, server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(chunk=8 * 1024, delay=0.05))
    process = subprocess.Popen(
        [sys.executable, "-m", "ssdtool", "--registry", str(registry_path), "--cache-dir", str(cache.root),
         "download", "--progress", "none"], env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    part = cache.part_path("m", "f.bin")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < 16 * 1024):
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert 0 < part.stat().st_size < SIZE and not cache.file_path("m", "f.bin").exists()


# --------------------------------------------------------------------------------------------------------------
# Faults and exit codes


@pytest.mark.parametrize("status", [404, 500, 503])
def test_http_error_status_fails_with_exit_10(registry_path: Path, cache: Cache, server: FaultyServer,
                                              status: int) -> None:
    server.set_fault(PATH, Fault(status=status))
    result = run_cli(registry_path, cache, "download", "--retries", "0", "--progress", "none")
    assert result.exit_code == 10
    assert f"HTTP {status}" in result.stderr and "no source delivered it" in result.stderr
    assert f"place it at {cache.root / 'm' / 'f.bin'}" in result.stderr and "--mirror" in result.stderr
    assert not cache.file_path("m", "f.bin").exists()


def test_transient_errors_are_retried_permanent_are_not(model: ModelEntry, cache: Cache,
                                                        server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(status=503, times=2, retry_after="0"))
    [installed], events = get(model, cache, retries=2)
    assert server.hits(PATH) == 3 and not installed.cached
    assert [e.retry_in is not None for e in events if e.event == "source_failed"] == [True, True]
    other = Cache.at(cache.root.parent / "other")
    server.set_fault(PATH, Fault(status=404))
    with pytest.raises(NetworkError, match="HTTP 404"):
        get(model, other, retries=2)
    assert server.hits(PATH) == 4  # 404 is final: no retry


def test_retries_exhausted_message_counts_attempts(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(status=500))
    with pytest.raises(NetworkError, match=r"HTTP 500 Internal Server Error \(after 3 attempts\)"):
        get(model, cache, retries=2)


def test_wrong_bytes_exit_11_and_no_file_left(registry_path: Path, cache: Cache, server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(corrupt=True))
    result = run_cli(registry_path, cache, "download", "--json", "--progress", "none")
    assert result.exit_code == 11
    error = json.loads(result.stdout)
    assert error["error"] == "ChecksumError" and error["exit_code"] == 11
    assert f"expected sha256 {hashlib.sha256(PAYLOAD).hexdigest()}, got " in error["message"]
    assert "ssdtool verify m" in error["hint"]
    assert not cache.file_path("m", "f.bin").exists() and not cache.part_path("m", "f.bin").exists()


@pytest.mark.parametrize(("fault", "reason"), [
    (Fault(content_length=SIZE - 1), "announces 299999 bytes"),
    (Fault(extra=b"more"), "announces 300004 bytes"),
    (Fault(extra=b"x" * 5000, omit_length=True), "sent more than the registry's 300000 bytes"),
])
def test_wrong_length_and_oversized_bodies(model: ModelEntry, cache: Cache, server: FaultyServer, fault: Fault,
                                           reason: str) -> None:
    server.set_fault(PATH, fault)
    with pytest.raises(ChecksumError, match=reason):
        get(model, cache, retries=2)
    assert server.hits(PATH) == 1  # wrong bytes are not retried from the same source
    assert not cache.file_path("m", "f.bin").exists() and not cache.part_path("m", "f.bin").exists()


def test_body_without_length_that_ends_early_is_retried(model: ModelEntry, cache: Cache,
                                                        server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(omit_length=True, drop_after=1000, times=1))
    [installed], _ = get(model, cache, retries=1)
    assert installed.resumed and cache.file_path("m", "f.bin").read_bytes() == PAYLOAD


def test_slow_server_times_out(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(chunk=1024, delay=1.0))
    started = time.monotonic()
    with pytest.raises(NetworkError, match="timed out"):
        get(model, cache, timeout=0.3)
    assert time.monotonic() - started < 3


def test_redirect_is_followed(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    server.add("/moved/f.bin", PAYLOAD)
    server.set_fault(PATH, Fault(redirect="/moved/f.bin"))
    [installed], _ = get(model, cache)
    assert installed.source == server.url(PATH) and server.hits("/moved/f.bin") == 1


def test_redirect_loop_fails_fast(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    server.add("/loop/b", b"", Fault(redirect=PATH))
    server.set_fault(PATH, Fault(redirect="/loop/b"))
    with pytest.raises(NetworkError, match=r"redirect loop: .*/files/m/f\.bin -> .*/loop/b -> .*/files/m/f\.bin"):
        get(model, cache, retries=3)
    assert server.hits(PATH) == 1


def test_too_many_redirects(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    for hop in range(12):
        server.add(f"/hop/{hop}", b"", Fault(redirect=f"/hop/{hop + 1}"))
    server.set_fault(PATH, Fault(redirect="/hop/0"))
    with pytest.raises(NetworkError, match="too many redirects"):
        get(model, cache)


def test_redirect_policy() -> None:
    assert redirect_refusal("https://a/x", "https://b/y") is None
    assert redirect_refusal("http://a/x", "https://b/y") is None
    assert redirect_refusal("http://a/x", "http://b/y") is None
    assert "plain http" in (redirect_refusal("https://a/x", "http://a/x") or "")
    assert "only http and https" in (redirect_refusal("https://a/x", "file:///etc/passwd") or "")


@pytest.fixture
def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyServer]:
    cert = make_self_signed_cert(tmp_path)
    if cert is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert[0]))
    with FaultyServer(tls=cert) as running:
        yield running


def test_https_download_verifies_tls_and_refuses_downgrade(tmp_path: Path, cache: Cache, server: FaultyServer,
                                                           tls_server: FaultyServer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    url = tls_server.add(PATH, PAYLOAD)
    registry = write_registry(tmp_path / "tls.yml", {"m": [file_entry("f.bin", PAYLOAD, [url])]})
    model = load_registry(registry).model("m")
    [installed], _ = get(model, cache)  # trusted through REQUESTS_CA_BUNDLE
    assert installed.source == url
    server.add("/plain/f.bin", PAYLOAD)
    tls_server.set_fault(PATH, Fault(redirect=server.url("/plain/f.bin")))
    with pytest.raises(NetworkError, match="refused redirect from https to plain http"):
        get(model, Cache.at(tmp_path / "c2"))
    assert server.hits("/plain/f.bin") == 0
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    tls_server.set_fault(PATH, None)
    with pytest.raises(NetworkError, match=r"TLS error.*REQUESTS_CA_BUNDLE"):
        get(model, Cache.at(tmp_path / "c3"))


# --------------------------------------------------------------------------------------------------------------
# Sources: mirror order, file://, synthetic:


def test_mirror_is_tried_first_then_registry_sources(tmp_path: Path, cache: Cache, server: FaultyServer) -> None:
    mirror = FaultyServer().start()
    try:
        second = server.add("/second/f.bin", PAYLOAD)
        registry = write_registry(tmp_path / "r.yml", {"m": [file_entry("f.bin", PAYLOAD, [
            server.url("/first/f.bin"), second])]})
        model = load_registry(registry).model("m")
        assert source_urls(model, model.primary_file, mirror.base_url) == [
            mirror.url("/m/f.bin"), server.url("/first/f.bin"), second]
        [installed], events = get(model, cache, mirror=mirror.base_url + "/")
        assert installed.source == second
        assert [e.source for e in events if e.event == "source_failed"] == [mirror.url("/m/f.bin"),
                                                                             server.url("/first/f.bin")]
        mirror.add("/m/f.bin", PAYLOAD)
        [installed], _ = get(model, Cache.at(tmp_path / "c2"), mirror=mirror.base_url)
        assert installed.source == mirror.url("/m/f.bin") and server.hits("/second/f.bin") == 1
    finally:
        mirror.stop()


def test_mirror_from_environment(registry_path: Path, cache: Cache, tmp_path: Path, server: FaultyServer) -> None:
    mirror_dir = tmp_path / "mirror"
    (mirror_dir / "m").mkdir(parents=True)
    (mirror_dir / "m" / "f.bin").write_bytes(PAYLOAD)
    result = run_cli(registry_path, cache, "download", "--json", "--progress", "none",
                     env={"SSDTOOL_MIRROR": mirror_dir.as_uri()})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["source"] == (mirror_dir / "m" / "f.bin").as_uri()
    assert server.hits(PATH) == 0


def test_file_mirror_as_plain_directory(model: ModelEntry, cache: Cache, tmp_path: Path,
                                        server: FaultyServer) -> None:
    (tmp_path / "usb" / "m").mkdir(parents=True)
    (tmp_path / "usb" / "m" / "f.bin").write_bytes(PAYLOAD)
    [installed], _ = get(model, cache, mirror=str(tmp_path / "usb"))
    assert installed.source == (tmp_path / "usb" / "m" / "f.bin").as_uri() and server.hits(PATH) == 0


def test_file_source_missing_or_wrong(tmp_path: Path, cache: Cache) -> None:
    good = tmp_path / "good.bin"
    good.write_bytes(PAYLOAD)
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(PAYLOAD[:-1] + b"!")
    registry = write_registry(tmp_path / "r.yml", {
        "m": [file_entry("f.bin", PAYLOAD, [(tmp_path / "absent.bin").as_uri(), wrong.as_uri(), good.as_uri()])]})
    model = load_registry(registry).model("m")
    [installed], events = get(model, cache)
    assert installed.source == good.as_uri()
    reasons = [e.reason or "" for e in events if e.event == "source_failed"]
    assert reasons[0].startswith("no such file") and reasons[1].startswith("checksum mismatch")


def test_invalid_mirror_is_a_usage_error(registry_path: Path, cache: Cache) -> None:
    with pytest.raises(UsageError, match="invalid mirror"):
        normalize_mirror("ftp://example/models")
    result = run_cli(registry_path, cache, "download", "--mirror", "ftp://example/models")
    assert result.exit_code == 2 and "invalid mirror" in result.stderr


@pytest.fixture(scope="module")
def tiny_twin(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    synthetic = pytest.importorskip("ssdtool.synthetic")
    path = tmp_path_factory.mktemp("twin") / "tiny.onnx"
    synthetic.build_to_path(TINY_URL, path)
    return path.read_bytes()


def test_synthetic_source_builds_and_verifies_the_tiny_twin(tmp_path: Path, cache: Cache, tiny_twin: bytes) -> None:
    registry = write_registry(tmp_path / "r.yml", {"twin": [file_entry("twin.onnx", tiny_twin, [TINY_URL])]})
    model = load_registry(registry).model("twin")
    [installed], events = get(model, cache, offline=True)  # building is local: allowed offline
    assert installed.source == TINY_URL and installed.bytes_transferred == 0
    assert cache.file_path("twin", "twin.onnx").read_bytes() == tiny_twin
    assert events.kinds() == ["start", "progress", "verified", "done"]


def test_synthetic_source_with_wrong_pin(tmp_path: Path, cache: Cache, tiny_twin: bytes) -> None:
    wrong = tiny_twin[:-1] + bytes([tiny_twin[-1] ^ 1])
    registry = write_registry(tmp_path / "r.yml", {"twin": [file_entry("twin.onnx", wrong, [TINY_URL])]})
    model = load_registry(registry).model("twin")
    with pytest.raises(ChecksumError, match=r"checksum mismatch.*differs from the registry's pin"):
        get(model, cache)
    assert not cache.file_path("twin", "twin.onnx").exists() and not cache.part_path("twin", "twin.onnx").exists()


# --------------------------------------------------------------------------------------------------------------
# Offline


def test_offline_hit_and_miss(registry_path: Path, cache: Cache, server: FaultyServer) -> None:
    miss = run_cli(registry_path, cache, "download", "--offline", "--progress", "none")
    assert miss.exit_code == 12
    assert "not in the cache" in miss.stderr and "offline mode forbids downloading it" in miss.stderr
    assert "not tried: offline mode" in miss.stderr and "copy its cache folder" in miss.stderr
    assert server.hits(PATH) == 0
    assert run_cli(registry_path, cache, "download", "--progress", "none").exit_code == 0
    hit = run_cli(registry_path, cache, "download", "--json", "--progress", "none", env={"SSDTOOL_OFFLINE": "1"})
    assert hit.exit_code == 0 and json.loads(hit.stdout)[0]["cached"] is True
    assert server.hits(PATH) == 1


def test_offline_force_rehashes_and_removes_a_bad_file(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    get(model, cache)
    [installed], _ = get(model, cache, offline=True, force=True)
    assert installed.cached
    final = cache.file_path("m", "f.bin")
    data = bytearray(final.read_bytes())
    data[10] ^= 1
    stat = final.stat()
    final.write_bytes(bytes(data))
    os.utime(final, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # corruption the record cannot see
    with pytest.raises(OfflineError, match="a cached copy was removed: checksum mismatch"):
        get(model, cache, offline=True, force=True)
    assert not final.exists() and server.hits(PATH) == 1


# --------------------------------------------------------------------------------------------------------------
# verify


def test_verify_and_repair(registry_path: Path, cache: Cache, server: FaultyServer) -> None:
    missing = run_cli(registry_path, cache, "verify", "--json")
    assert missing.exit_code == 14
    document = json.loads(missing.stdout)
    assert document["ok"] is False and document["results"][0]["status"] == "missing"
    assert document["error"]["error"] == "VerifyError"
    assert run_cli(registry_path, cache, "download", "--progress", "none").exit_code == 0
    good = run_cli(registry_path, cache, "verify")
    assert good.exit_code == 0 and " ok " in good.stdout + " "
    final = cache.file_path("m", "f.bin")
    final.write_bytes(PAYLOAD[:-1] + b"?")
    bad = run_cli(registry_path, cache, "verify")
    assert bad.exit_code == 14 and "bad-checksum" in bad.stdout and "verify --repair" in bad.stderr
    assert final.exists() and cache.read_record("m", "f.bin") is None  # kept for inspection, no longer trusted
    repaired = run_cli(registry_path, cache, "verify", "--repair", "--json", "--progress", "none")
    assert repaired.exit_code == 0, repaired.output
    [result] = json.loads(repaired.stdout)["results"]
    assert result["status"] == "repaired" and result["ok"] is True
    assert final.read_bytes() == PAYLOAD and server.hits(PATH) == 2


def test_verify_reports_partial_and_failed_repair(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    part = cache.part_path("m", "f.bin")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:10])
    [result] = verify(model, cache)
    assert result.status == "partial" and "10 of 300000 bytes" in result.detail
    server.set_fault(PATH, Fault(status=404))
    [result] = verify(model, cache, FetchOptions(retries=0, mirror="", offline=False), repair=True)
    assert not result.ok and "HTTP 404" in (result.repair_error or "")


# --------------------------------------------------------------------------------------------------------------
# Concurrency and locks


def test_two_processes_download_once(registry_path: Path, cache: Cache, server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(chunk=16 * 1024, delay=0.08))  # ~1.5 s: both processes overlap
    command = [sys.executable, "-m", "ssdtool", "--registry", str(registry_path), "--cache-dir", str(cache.root),
               "download", "--json", "--progress", "json"]
    processes = [subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    summaries = [json.loads(out)[0] for out, _ in outputs]
    assert sorted(s["cached"] for s in summaries) == [False, True]
    assert server.hits(PATH, status=200) == 1 and server.hits(PATH) == 1
    assert any('"event": "waiting"' in err for _, err in outputs)
    assert cache.file_path("m", "f.bin").read_bytes() == PAYLOAD


HOLD_LOCK = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_left_by_killed_process_is_recovered(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    lock_path = cache.lock_path("m", "f.bin")
    lock_path.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockTimeoutError, match=f"timed out waiting for the download lock {lock_path}"):
            get(model, cache, lock_timeout=0.3)
        holder.kill()
        holder.wait(timeout=10)
        lock_path.touch()  # the file itself may remain; only the OS lock matters
        started = time.monotonic()
        [installed], _ = get(model, cache, lock_timeout=5)
        assert not installed.cached and time.monotonic() - started < 3
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_lock_timeout_exit_code(registry_path: Path, cache: Cache) -> None:
    lock_path = cache.lock_path("m", "f.bin")
    lock_path.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = run_cli(registry_path, cache, "download", "--lock-timeout", "0.2", "--progress", "none")
        assert result.exit_code == 13 and str(lock_path) in result.stderr and "--lock-timeout" in result.stderr
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_parallel_jobs_download_different_files(tmp_path: Path, cache: Cache, server: FaultyServer) -> None:
    payloads = {f"f{i}.bin": make_payload(seed=10 + i, size=100_000) for i in range(3)}
    files = []
    for name, data in payloads.items():
        files.append(file_entry(name, data, [server.add(f"/p/{name}", data, Fault(chunk=8192, delay=0.02))]))
    model = load_registry(write_registry(tmp_path / "r.yml", {"multi": files})).model("multi")
    installed, events = get(model, cache, jobs=3)
    assert [i.file for i in installed] == list(payloads)
    assert server.max_active >= 2
    for name, data in payloads.items():
        assert cache.file_path("multi", name).read_bytes() == data
    assert events[-1].event == "done" and events[-1].files == 3


def test_one_failing_file_does_not_stop_the_others(tmp_path: Path, cache: Cache, server: FaultyServer) -> None:
    good = server.add("/g/a.bin", PAYLOAD)
    files = [file_entry("a.bin", PAYLOAD, [good]), file_entry("b.bin", PAYLOAD, [server.url("/g/missing")])]
    model = load_registry(write_registry(tmp_path / "r.yml", {"two": files})).model("two")
    with pytest.raises(NetworkError, match=r"b\.bin"):
        get(model, cache, jobs=2)
    assert cache.file_path("two", "a.bin").read_bytes() == PAYLOAD


def test_download_all_models(tmp_path: Path, cache: Cache, server: FaultyServer) -> None:
    other = make_payload(seed=5, size=1000)
    registry = write_registry(tmp_path / "r.yml", {
        "m": [file_entry("f.bin", PAYLOAD, [server.add(PATH, PAYLOAD)])],
        "n": [file_entry("g.bin", other, [server.add("/n/g.bin", other)])]})
    result = run_cli(registry, cache, "download", "--all", "--json", "--progress", "none")
    assert result.exit_code == 0, result.output
    assert [(s["model"], s["file"]) for s in json.loads(result.stdout)] == [("m", "f.bin"), ("n", "g.bin")]
    assert run_cli(registry, cache, "download", "--all", "m").exit_code == 2


# --------------------------------------------------------------------------------------------------------------
# Units


def test_backoff_is_capped_with_jitter() -> None:
    policy = RetryPolicy(retries=5, base=1.0, cap=4.0)
    for retry, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (8, 4.0)):
        delays = [policy.delay(retry) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays) and len(set(delays)) > 1
    assert policy.delay(1, retry_after=3.0) >= 3.0 and policy.delay(1, retry_after=100.0) <= 4.0


def test_content_range_check() -> None:
    assert content_range_matches("bytes 100-299/300", 100, 300)
    assert content_range_matches("bytes 100-299/*", 100, 300)
    assert not content_range_matches("bytes 110-299/300", 100, 300)
    assert not content_range_matches("bytes 100-298/300", 100, 300)
    assert not content_range_matches("bytes 100-299/400", 100, 300)
    assert not content_range_matches(None, 100, 300)
    assert not content_range_matches("bytes x-y/z", 100, 300)


def test_cache_refuses_paths_outside_the_cache(cache: Cache) -> None:
    for name in ("../escape", "/etc/passwd", "a/b", "x.part"):
        with pytest.raises(CacheError):
            cache.file_path("m", name)


def test_progress_sinks_render(capsys: pytest.CaptureFixture[str]) -> None:
    from ssdtool.commands.progress import download_progress as progress_renderer

    for mode in ("bar", "json", "log"):
        sink = progress_renderer(mode)
        assert sink is not None
        for event in (DownloadEvent("start", model="m", file="f", size=10, source="http://x", offset=0),
                      DownloadEvent("progress", model="m", file="f", size=10, downloaded=5),
                      DownloadEvent("source_failed", model="m", file="f", source="http://x", reason="HTTP 500",
                                    retry_in=0.5),
                      DownloadEvent("verified", model="m", file="f", size=10, path="/c/m/f", cached=False)):
            sink(event)
    assert progress_renderer("auto", quiet=True) is None and progress_renderer("none") is None
    err = capsys.readouterr().err
    assert "HTTP 500; retrying in 0.5 s" in err and '"event": "progress"' in err


def test_cached_path_imports_no_network_libraries(model: ModelEntry, cache: Cache) -> None:
    """The fast path (convert/detect asking for an already verified file) must stay cheap."""
    get(model, cache)
    code = ("import sys; from ssdtool.download import ensure_downloaded; from ssdtool.cache import Cache; "
            "from ssdtool.registry import load_registry; "
            f"ensure_downloaded(load_registry({str(model.registry_dir / 'registry.yml')!r}).model('m'), "
            f"Cache.at({str(cache.root)!r})); "
            "print(sorted(m for m in ('requests', 'urllib3', 'filelock', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                         check=True).stdout
    assert out.strip() == "[]"


def test_help_does_not_import_download_libraries() -> None:
    code = ("import sys; from click.testing import CliRunner; from ssdtool.cli import cli; "
            "r = CliRunner().invoke(cli, ['download', '--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('requests', 'filelock', 'tqdm', 'ssdtool.download') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                         check=True).stdout
    assert out.strip() == "[]"


def test_helper_threads_end_with_the_transfer(model: ModelEntry, cache: Cache, server: FaultyServer,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import ssdtool.download.transfer as transfer

    monkeypatch.setattr(transfer, "FLUSH_EVERY", 32 * 1024)  # exercise the background writeback thread
    server.set_fault(PATH, Fault(drop_after=200_000, times=1))
    with pytest.raises(NetworkError):
        get(model, cache)
    [installed], _ = get(model, cache)
    assert installed.resumed and cache.file_path("m", "f.bin").read_bytes() == PAYLOAD
    assert [t.name for t in threading.enumerate() if t.name.startswith("ssdtool-")] == []


def test_connection_refused_reason_is_short(tmp_path: Path, cache: Cache) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/m/f.bin"
    model = load_registry(write_registry(tmp_path / "r.yml", {"m": [file_entry("f.bin", PAYLOAD, [url])]})).model("m")
    with pytest.raises(NetworkError) as caught:
        get(model, cache)
    assert f"  1. {url}: connection failed: Failed to establish a new connection: " in caught.value.message
    assert "Connection refused" in caught.value.message and "ConnectionPool" not in caught.value.message


def test_no_network_hints_name_the_synthetic_twin(tmp_path: Path, cache: Cache) -> None:
    """On a machine without network (every source refused, or --offline with nothing cached), the hint ends with
    the twin, which the packaged registry builds locally: a smoke check that needs no network."""
    import socket

    from ssdtool.download.messages import OFFLINE_TWIN

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    registry = write_registry(tmp_path / "r.yml", {"m": [file_entry("f.bin", PAYLOAD, [f"http://127.0.0.1:{port}/f"])]})
    twin_hint = ("for a smoke check without network, the synthetic twin is built locally: 'ssdtool detect --model "
                 "ssd-resnet34-1200-synthetic IMAGE' runs the same pipeline (docs/synthetic.md)\n")
    refused = run_cli(registry, cache, "download", "--retries", "0", "--progress", "none")
    assert refused.exit_code == 10 and "Connection refused" in refused.stderr
    assert refused.stderr.endswith(f"hint: check the network or proxy (HTTPS_PROXY, REQUESTS_CA_BUNDLE), try another "
                                   f"server with 'ssdtool download --mirror URL' (or SSDTOOL_MIRROR=URL), or download "
                                   f"it by hand and place it at {cache.root / 'm' / 'f.bin'}, then run 'ssdtool verify "
                                   f"m'; {twin_hint}")
    offline = run_cli(registry, cache, "download", "--offline", "--progress", "none")
    assert offline.exit_code == 12 and offline.stderr.endswith(f"then run 'ssdtool verify m'; {twin_hint}")
    assert not cache.file_path("m", "f.bin").exists()
    twin = load_registry().model(OFFLINE_TWIN)  # the hint names a model that really needs no network
    assert all(source.startswith("synthetic:") for file in twin.files for source in file.sources)


def test_offline_installs_from_a_local_mirror(model: ModelEntry, cache: Cache, tmp_path: Path,
                                              server: FaultyServer) -> None:
    """Air-gapped provisioning: a copied cache used as a mirror, with the network forbidden."""
    source_cache = Cache.at(tmp_path / "connected")
    get(model, source_cache)
    [installed], _ = get(model, cache, offline=True, mirror=str(source_cache.root))
    assert installed.source == source_cache.file_path("m", "f.bin").as_uri() and server.hits(PATH) == 1


def test_packaged_tiny_twin_entry_builds_to_its_pin(tmp_path: Path) -> None:
    """The packaged registry's tiny synthetic entry: built locally (allowed offline), matching its pinned sha256."""
    pytest.importorskip("ssdtool.synthetic")
    name = "ssd-resnet34-300-synthetic-tiny"
    registry = load_registry()
    if name not in registry.models:
        pytest.skip(f"{name} is not in the packaged registry")
    cache = Cache.at(tmp_path / "cache")
    runner = CliRunner()
    result = runner.invoke(cli, ["--cache-dir", str(cache.root), "download", name, "--offline", "--json",
                                 "--progress", "none"])
    assert result.exit_code == 0, result.output
    [summary] = json.loads(result.stdout)
    assert summary["source"].startswith("synthetic:") and summary["sha256"] == registry.model(name).files[0].sha256
    verified = runner.invoke(cli, ["--cache-dir", str(cache.root), "verify", name, "--json"])
    assert verified.exit_code == 0 and json.loads(verified.stdout)["ok"] is True


def test_read_only_cache_still_serves_verified_files(model: ModelEntry, cache: Cache, server: FaultyServer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefetched cache mounted read-only (simulated: tests may run as root, who ignores permissions)."""
    import filelock

    final = cache.file_path("m", "f.bin")
    final.parent.mkdir(parents=True)
    final.write_bytes(PAYLOAD)  # copied in without its verification record

    def no_lock(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(30, "Read-only file system")

    def no_record(*_args: Any) -> None:
        raise CacheError("cannot write the verification record: Read-only file system")

    monkeypatch.setattr(filelock.FileLock, "acquire", no_lock)
    monkeypatch.setattr(Cache, "write_record", no_record)
    [installed], _ = get(model, cache, offline=True)
    assert installed.cached and server.hits(PATH) == 0
    [result] = verify(model, cache)
    assert result.ok


def test_proxy_from_environment_is_used(tmp_path: Path, cache: Cache, server: FaultyServer,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY is honoured (requests' trust_env): the test server plays the proxy for a host that does not exist."""
    server.add(PATH, PAYLOAD)
    url = "http://models.example.invalid" + PATH  # never resolved: the proxy gets the absolute URL
    model = load_registry(write_registry(tmp_path / "r.yml", {"m": [file_entry("f.bin", PAYLOAD, [url])]})).model("m")
    monkeypatch.setenv("HTTP_PROXY", server.base_url)
    [installed], _ = get(model, cache)
    assert installed.source == url and server.hits(PATH) == 1


def test_cache_dir_option_on_the_command(registry_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    result = CliRunner().invoke(cli, ["--registry", str(registry_path), "download", "--cache-dir", str(target),
                                      "--json", "--progress", "none"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["path"] == str(target / "m" / "f.bin")


# --------------------------------------------------------------------------------------------------------------
# Hardening (issue 11): credentials, encodings, stalls, malformed notes and records


def test_credentials_are_never_printed_or_stored(tmp_path: Path, cache: Cache, server: FaultyServer) -> None:
    good = server.add("/c/f.bin", PAYLOAD)
    secret = good.replace("http://", "http://alice:s3cret@") + "?token=t0ps3cret&part=1"
    missing = server.url("/c/missing").replace("http://", "http://bob:hunter2@") + "?X-Amz-Signature=s1gn3d"
    registry = write_registry(tmp_path / "r.yml", {"m": [file_entry("f.bin", PAYLOAD, [missing, secret])]})
    secrets = ("s3cret", "hunter2", "t0ps3cret", "s1gn3d", "alice", "bob")
    result = run_cli(registry, cache, "-vv", "download", "--json", "--progress", "json")
    assert result.exit_code == 0, result.output
    shown = good.replace("http://", "http://***@") + "?token=***&part=1"
    assert json.loads(result.stdout)[0]["source"] == shown
    assert f'"source": "{shown}"' in result.stderr  # the progress events name the source, redacted
    logged = run_cli(registry, Cache.at(cache.root.parent / "c2"), "-vv", "download", "--progress", "log")
    assert logged.exit_code == 0 and "downloading" in logged.stderr
    info = run_cli(registry, cache, "info", "m", "--json")
    record = cache.record_path("m", "f.bin").read_text()
    assert json.loads(record)["source"] == shown
    failed = run_cli(write_registry(tmp_path / "bad.yml", {"m": [file_entry("f.bin", PAYLOAD, [missing])]}),
                     Cache.at(tmp_path / "c3"), "download", "--json", "--progress", "json",
                     "--mirror", server.base_url.replace("http://", "http://carol:m1rr0r@"))
    assert failed.exit_code == 10 and "http://***@127.0.0.1" in failed.stderr
    for text in (result.stdout, result.stderr, logged.stderr, info.stdout, record, failed.stdout, failed.stderr):
        assert not any(word in text for word in (*secrets, "m1rr0r", "carol")), text


def test_redaction_rule() -> None:
    from ssdtool.redact import redact_text, redact_url

    assert redact_url("https://TOKEN@github.com/a/b") == "https://***@github.com/a/b"
    assert redact_url("http://u:p@ss@host:8/x?a=1&access_token=z&sig=y") == "http://***@host:8/x?a=1&access_token=***&sig=***"
    assert redact_url("https://host/x.onnx?X-Amz-Credential=k&X-Amz-Date=1") == \
        "https://host/x.onnx?X-Amz-Credential=***&X-Amz-Date=1"
    assert redact_url("https://host/file.onnx") == "https://host/file.onnx"
    assert redact_url("http://[::1") == "http://[::1"
    assert redact_text("Max retries exceeded with url: /f?api_key=abc (Caused by x)") == \
        "Max retries exceeded with url: /f?api_key=*** (Caused by x)"
    assert redact_text("from https://a:b@x/y to http://c@z/w") == "from https://***@x/y to http://***@z/w"


def test_gzip_body_the_server_sends_unasked_is_decoded(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(gzip=True))
    part = cache.part_path("m", "f.bin")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:1000])  # a range of a compressed body is no range of the file: restart from zero
    [installed], _ = get(model, cache)
    assert cache.file_path("m", "f.bin").read_bytes() == PAYLOAD and not installed.resumed
    assert installed.bytes_transferred == SIZE  # decoded bytes, as the registry's size counts them
    assert [r.accept_encoding for r in server.requests_for(PATH)] == ["identity"]


def test_undecodable_content_encoding_is_reported(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(headers={"Content-Encoding": "br"}))
    with pytest.raises(NetworkError, match="Content-Encoding 'br' although ssdtool asked for identity"):
        get(model, cache, retries=2)
    assert server.hits(PATH) == 1


def test_truncated_gzip_body_is_retried_and_resumes_nothing(model: ModelEntry, cache: Cache,
                                                            server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(gzip=True, drop_after=2000, times=1))
    _installed, events = get(model, cache, retries=1)
    assert cache.file_path("m", "f.bin").read_bytes() == PAYLOAD
    assert [e.kind for e in events if e.event == "source_failed"] == ["network"]


def test_trickling_server_fails_the_stall_rule(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    """--timeout bounds each read; the stall rule bounds progress per --timeout window (here 0.3 s, 64 KiB)."""
    server.set_fault(PATH, Fault(chunk=200, delay=0.02))  # every read returns in time, yet 10 KB/s is a stall
    with pytest.raises(NetworkError, match=r"the transfer stalled: \d+ bytes in the last 0\.\d s, at least 65536 "
                                           r"expected in every --timeout \(0\.3 s\) window; \d+ of 300000 bytes kept"):
        get(model, cache, timeout=0.3)
    kept = cache.part_path("m", "f.bin").stat().st_size
    assert 0 < kept < SIZE  # kept for a resume
    server.set_fault(PATH, None)
    [installed], _ = get(model, cache, timeout=0.3)
    assert installed.resumed_from == kept


def test_stall_rule_lets_a_steady_slow_transfer_finish(model: ModelEntry, cache: Cache, server: FaultyServer) -> None:
    server.set_fault(PATH, Fault(chunk=1000, delay=0.005))
    [installed], _ = get(model, cache, timeout=0.2, stall_bytes=1000)
    assert cache.file_path("m", "f.bin").read_bytes() == PAYLOAD and not installed.cached


@pytest.mark.parametrize("since", ['"x"', "null", "1e400", "-5", "true"])
def test_malformed_lock_owner_note_is_an_unknown_holder(model: ModelEntry, cache: Cache, since: str) -> None:
    lock_path = cache.lock_path("m", "f.bin")
    lock_path.parent.mkdir(parents=True)
    cache.owner_path("m", "f.bin").write_text(f'{{"pid": 1, "host": "h", "since": {since}}}\n')
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert cache.read_owner("m", "f.bin") is None
        with pytest.raises(LockTimeoutError, match="held by an unknown process"):
            get(model, cache, lock_timeout=0.2)
    finally:
        holder.kill()
        holder.wait(timeout=10)


@pytest.mark.parametrize("record", ["[" * 100_000, '{"size": "300000", "mtime_ns": 1, "checksums": {}}',
                                    '{"size": 300000, "mtime_ns": 1, "checksums": [], "verified_at": 1e400}',
                                    "\udcff not json", ""])
def test_malformed_verification_record_is_absent_and_the_file_rehashed(model: ModelEntry, cache: Cache,
                                                                       server: FaultyServer, record: str) -> None:
    get(model, cache)
    cache.record_path("m", "f.bin").write_text(record, errors="surrogateescape")
    assert cache.read_record("m", "f.bin") is None
    [installed], _ = get(model, cache)
    assert installed.cached and server.hits(PATH) == 1
    assert cache.read_record("m", "f.bin") is not None  # re-hashed, and a good record written


def test_malformed_mirror_is_a_usage_error(registry_path: Path, cache: Cache) -> None:
    for mirror in ("http://[::1", "http://host:99999/models", "http://"):
        result = run_cli(registry_path, cache, "download", "--mirror", mirror, "--json", "--progress", "none")
        assert result.exit_code == 2, (mirror, result.output)
        assert f"error: invalid mirror '{mirror}'" in result.stderr
        assert json.loads(result.stdout)["exit_code"] == 2


def test_hints_name_commands_where_the_flag_is_not_on_the_printing_one(model: ModelEntry, cache: Cache,
                                                                      server: FaultyServer) -> None:
    """detect and convert download on first use; their download errors name 'ssdtool download --mirror'."""
    server.set_fault(PATH, Fault(status=404))
    with pytest.raises(NetworkError) as caught:
        get(model, cache)
    assert "'ssdtool download --mirror URL' (or SSDTOOL_MIRROR=URL)" in (caught.value.hint or "")
