"""Verified, resumable, mirror-aware, concurrency-safe downloads of registry files into the cache.

One file is fetched like this (``_FileFetcher.run``):

1. If the verification record still vouches for the file (same size and mtime as when it was hashed, same
   checksums as the registry lists now), it is used as is: no lock, no hashing, no network.
2. Otherwise take the file's inter-process lock (:mod:`filelock`; the OS releases it when a holder dies, so a
   killed process never leaves a lock that blocks forever). Whoever waited re-checks first: the holder usually
   just installed the file.
3. A file at the final path without a usable record is re-hashed; a bad one is removed (the cache never keeps a
   file at its final path that failed verification).
4. Try the sources in order: the mirror (``{mirror}/{model}/{file}``), then the registry's. Each attempt streams
   into ``<file>.part``, counting and hashing in the same pass, resuming an earlier ``.part`` with an HTTP Range
   request. Transient failures are retried with capped exponential backoff and jitter; wrong bytes move on to the
   next source at once.
5. Check size and every checksum, fsync, ``os.replace`` to the final name, write the verification record.

The library never prints: progress goes to a callback as :class:`DownloadEvent` objects (the CLI turns them into a
tqdm bar, JSON lines or log lines), debug details to the ``ssdtool.download`` logger. ``requests`` and
``filelock`` are imported only when needed, so the cached fast path stays cheap.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import queue
import random
import re
import shutil
import stat as _stat
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urljoin, urlsplit

from ssdtool import __version__, fsutil
from ssdtool.cache import Cache, LockOwner, VerificationRecord
from ssdtool.errors import (
    CacheError,
    ChecksumError,
    DownloadError,
    LockTimeoutError,
    NetworkError,
    OfflineError,
    SsdtoolError,
    UsageError,
)
from ssdtool.redact import redact_text, redact_url
from ssdtool.registry import FileEntry, ModelEntry

if TYPE_CHECKING:
    from concurrent.futures import Future

    import requests

log = logging.getLogger("ssdtool.download")

MIRROR_ENV = "SSDTOOL_MIRROR"
OFFLINE_ENV = "SSDTOOL_OFFLINE"

# 1 MiB reads: few enough Python-level iterations that the loop costs nothing next to the kernel copies, small
# enough that memory stays flat (a handful of chunks in flight whatever the file size).
CHUNK_SIZE = 1 << 20
HASH_QUEUE_DEPTH = 4
# Start writeback of the .part every this many bytes, so the fsync before the rename has little left to do.
FLUSH_EVERY = 16 << 20
MAX_REDIRECTS = 10
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 30.0
DEFAULT_BACKOFF = 0.5
BACKOFF_CAP = 30.0
# A waiting process gives up only after this long without any sign of progress from the lock holder.
DEFAULT_LOCK_TIMEOUT = 600.0
DEFAULT_PROGRESS_INTERVAL = 0.25
LOCK_POLL_SECONDS = 0.25
# The stall rule: a transfer must receive at least this many bytes (or the rest of the file) in every window of
# --timeout seconds. --timeout alone bounds each read, so a server trickling a byte a second would never time out.
STALL_MIN_BYTES = 64 << 10
# Content-Encoding values a server may send although ssdtool asked for identity; decoded on the fly.
_DECODABLE_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

EVENT_START = "start"
EVENT_PROGRESS = "progress"
EVENT_SOURCE_FAILED = "source_failed"
EVENT_WAITING = "waiting"
EVENT_VERIFIED = "verified"
EVENT_DONE = "done"

KIND_NETWORK = "network"  # the source did not deliver (HTTP error, connection, timeout, missing file)
KIND_CONTENT = "content"  # the source delivered bytes, and they were wrong (size or checksum)
KIND_SKIPPED = "skipped"  # not tried: offline mode forbids network sources

STATUS_OK = "ok"
STATUS_REPAIRED = "repaired"
STATUS_MISSING = "missing"
STATUS_PARTIAL = "partial"
STATUS_BAD_SIZE = "bad-size"
STATUS_BAD_CHECKSUM = "bad-checksum"

_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_LOCAL_SCHEMES = ("file", "synthetic")


@dataclass(frozen=True)
class DownloadEvent:
    """One progress report. ``to_dict`` leaves out the fields an event kind does not use.

    Kinds: ``start`` (a transfer from ``source`` begins at byte ``offset``), ``progress`` (``downloaded`` of
    ``size`` bytes, at most every ``progress_interval`` seconds and once at the end), ``source_failed`` (with
    ``reason``; ``retry_in`` seconds when the same source is tried again, else the next source follows),
    ``waiting`` (another process holds ``lock``), ``verified`` (the file is in place at ``path``; ``cached``
    when nothing was transferred), ``done`` (once per fetch: ``files``, ``failed``, ``bytes_transferred``,
    ``seconds``).
    """

    event: str
    model: str | None = None
    file: str | None = None
    size: int | None = None
    source: str | None = None
    offset: int | None = None
    downloaded: int | None = None
    reason: str | None = None
    kind: str | None = None
    attempt: int | None = None
    retry_in: float | None = None
    lock: str | None = None
    holder: dict[str, Any] | None = None
    path: str | None = None
    sha256: str | None = None
    cached: bool | None = None
    resumed: bool | None = None
    bytes_transferred: int | None = None
    seconds: float | None = None
    files: int | None = None
    failed: int | None = None
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {name: value for name, value in self.__dict__.items() if value is not None}


ProgressCallback = Callable[[DownloadEvent], None]


@dataclass(frozen=True)
class InstalledFile:
    """A verified file in the cache, and how it got there."""

    model: str
    file: str
    path: Path
    size: int
    sha256: str | None
    sha384: str | None
    source: str  # the URL that delivered it, or "cache" when it was already present and verified
    bytes_transferred: int  # bytes read from sources over all attempts (0 when cached or built synthetically)
    seconds: float
    resumed: bool  # the successful transfer continued an earlier .part
    resumed_from: int
    cached: bool

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["path"] = str(self.path)
        return data


@dataclass(frozen=True)
class SourceFailure:
    """Why one source did not deliver a good file."""

    source: str
    reason: str
    kind: str
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class VerifyResult:
    """The state of one cached file after re-hashing it (and repairing it when asked)."""

    model: str
    file: str
    path: Path
    status: str  # ok, repaired, missing, partial, bad-size, bad-checksum
    expected_size: int
    actual_size: int | None
    expected: dict[str, str]
    actual: dict[str, str]
    detail: str
    repair_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in (STATUS_OK, STATUS_REPAIRED)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["path"] = str(self.path)
        data["ok"] = self.ok
        return data


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter.

    The n-th retry waits between half and all of ``min(cap, base * 2**(n-1))`` ("equal jitter": many CI jobs
    retrying a struggling server spread out, yet every retry still backs off). A server's ``Retry-After`` is
    honoured up to the cap.
    """

    retries: int = DEFAULT_RETRIES
    base: float = DEFAULT_BACKOFF
    cap: float = BACKOFF_CAP

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.base * 2 ** max(0, retry_number - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap))
        return delay


# --------------------------------------------------------------------------------------------------------------
# Sources


def mirror_from_env() -> str | None:
    return os.environ.get(MIRROR_ENV) or None


def offline_from_env() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def normalize_mirror(mirror: str) -> str:
    """A mirror as a base URL: http(s)://host/path or file:///dir; a plain directory path becomes a file URL."""
    mirror = mirror.strip()
    example = "for example --mirror https://mirror.example/models or --mirror /mnt/models"
    try:
        parts = urlsplit(mirror)
        parts.port  # noqa: B018 - parses the port: a bad one raises here, not mid-download
    except ValueError as exc:
        raise UsageError(f"invalid mirror {redact_url(mirror)!r}: {exc}", hint=example) from None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https", "file"):
        if scheme != "file" and not parts.hostname:
            raise UsageError(f"invalid mirror {redact_url(mirror)!r}: expected a host, as in "
                             "https://mirror.example/models", hint=example)
        return mirror.rstrip("/")
    if not scheme or len(scheme) == 1:  # no scheme, or a Windows drive letter: a local directory
        return Path(mirror).expanduser().absolute().as_uri()
    raise UsageError(f"invalid mirror {redact_url(mirror)!r}: expected an http://, https:// or file:// URL or a "
                     "directory", hint=example)


def mirror_url(mirror: str, model: str, file: str) -> str:
    """Where a mirror keeps a file: ``{mirror}/{model}/{file}`` (the cache's own layout, so a copied cache serves)."""
    return f"{normalize_mirror(mirror)}/{quote(model)}/{quote(file)}"


def source_urls(model: ModelEntry, file: FileEntry, mirror: str | None = None) -> list[str]:
    """The sources of a file in the order they are tried: the mirror first, then the registry's."""
    urls = [mirror_url(mirror, model.name, file.name)] if mirror else []
    urls.extend(url for url in file.sources if url not in urls)
    return urls


def redirect_refusal(origin: str, target: str) -> str | None:
    """Why a redirect from ``origin`` to ``target`` must not be followed, or None when it may be."""
    origin_scheme = urlsplit(origin).scheme.lower()
    try:
        target_scheme = urlsplit(target).scheme.lower()
    except ValueError:
        return f"refused redirect to {redact_url(target)}: not a valid URL"
    if target_scheme not in ("http", "https"):
        return f"refused redirect to {redact_url(target)}: only http and https redirects are followed"
    if origin_scheme == "https" and target_scheme == "http":
        return (f"refused redirect from https to plain http ({redact_url(origin)} -> {redact_url(target)}): "
                "it would drop transport security")
    return None


def file_url_path(url: str) -> Path:
    """The local path of a ``file://`` URL (``file:///abs/path`` or ``file://localhost/abs/path``)."""
    from urllib.request import url2pathname  # imports http.client and email: only when a file:// URL is used

    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise UsageError(f"file URL {url!r} names a remote host; only local file:// URLs are supported")
    return Path(url2pathname(unquote(parts.path)))


def _is_local(url: str) -> bool:
    return urlsplit(url).scheme.lower() in _LOCAL_SCHEMES


# --------------------------------------------------------------------------------------------------------------
# Hashing


class _Hasher:
    """Counts bytes and computes the registry's checksums in the same pass as the write.

    With ``threaded`` each algorithm runs in its own thread fed by a small bounded queue: hashlib releases the GIL
    on large buffers, so hashing overlaps the socket reads and file writes, and the queue bound keeps memory flat.
    """

    def __init__(self, algorithms: Iterable[str], threaded: bool = True) -> None:
        self._hashes = {algo: hashlib.new(algo) for algo in algorithms}
        self.count = 0
        self._queues: list[queue.Queue[bytes | None]] = []
        self._threads: list[threading.Thread] = []
        if threaded:
            for algo, hash_object in self._hashes.items():
                feed: queue.Queue[bytes | None] = queue.Queue(maxsize=HASH_QUEUE_DEPTH)
                thread = threading.Thread(target=_drain, args=(feed, hash_object), name=f"ssdtool-{algo}",
                                          daemon=True)
                thread.start()
                self._queues.append(feed)
                self._threads.append(thread)

    def update(self, data: bytes) -> None:
        self.count += len(data)
        if self._queues:
            for feed in self._queues:
                feed.put(data)
        else:
            for hash_object in self._hashes.values():
                hash_object.update(data)

    def close(self) -> None:
        """Stop the worker threads (idempotent; also on errors, so no thread outlives the attempt)."""
        for feed in self._queues:
            feed.put(None)
        for thread in self._threads:
            thread.join()
        self._queues, self._threads = [], []

    def hexdigests(self) -> dict[str, str]:
        self.close()
        return {algo: hash_object.hexdigest() for algo, hash_object in self._hashes.items()}


def _drain(feed: queue.Queue[bytes | None], hash_object: Any) -> None:
    while (data := feed.get()) is not None:
        hash_object.update(data)


class _BackgroundFlush:
    """Calls ``fdatasync`` on a growing file from a helper thread every ``FLUSH_EVERY`` bytes.

    The final fsync then finds few dirty pages, and disk writeback overlaps the transfer instead of following it
    (fdatasync releases the GIL). Errors are ignored here: the final fsync reports them.
    """

    def __init__(self, descriptor: int) -> None:
        self._descriptor = descriptor
        self._wake = threading.Event()
        self._stopped = False
        self._flushed_at = 0
        self._thread: threading.Thread | None = None

    def wrote(self, position: int) -> None:
        if position - self._flushed_at < FLUSH_EVERY:
            return
        self._flushed_at = position
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ssdtool-flush", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        sync = getattr(os, "fdatasync", os.fsync)  # no fdatasync on macOS
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopped:
                return
            with contextlib.suppress(OSError):
                sync(self._descriptor)

    def close(self) -> None:
        """Stop the thread before the descriptor is closed (it must never sync a reused descriptor number)."""
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()


def hash_file(path: Path, algorithms: Iterable[str], *, limit: int | None = None,
              hasher: _Hasher | None = None, follow_links: bool = True) -> tuple[int, dict[str, str]]:
    """Size and hex digests of ``path`` (its first ``limit`` bytes when given), reading 1 MiB at a time.

    Only a regular file is read (a FIFO or device there raises :class:`~ssdtool.fsutil.UnsafePathError` instead
    of blocking or reading forever); ``follow_links=False`` refuses a link at ``path`` too.
    """
    own = hasher is None
    hasher = hasher or _Hasher(algorithms)
    try:
        descriptor = fsutil.open_regular(os.path.realpath(path) if follow_links else path)
        with open(descriptor, "rb", buffering=0) as stream:
            _hash_stream(stream, hasher, limit)
    finally:
        if own:
            hasher.close()
    return hasher.count, (hasher.hexdigests() if own else {})


def _hash_stream(stream: Any, hasher: _Hasher, limit: int | None) -> None:
    remaining = limit
    while remaining is None or remaining > 0:
        data = stream.read(CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining))
        if not data:
            break
        hasher.update(data)
        if remaining is not None:
            remaining -= len(data)


def describe_mismatch(file: FileEntry, size: int, digests: dict[str, str]) -> str | None:
    """What is wrong with bytes of ``size`` and ``digests`` for ``file``, or None when they are right."""
    if size != file.size:
        return f"size mismatch: expected {file.size} bytes, got {size}"
    for algo, expected in file.checksums.items():
        if digests.get(algo) != expected:
            return f"checksum mismatch: expected {algo} {expected}, got {digests.get(algo)}"
    return None


# --------------------------------------------------------------------------------------------------------------
# One file


class _Cancelled(BaseException):
    """Raised in worker threads when the main thread was interrupted; a BaseException so no handler eats it."""


class _AttemptFailed(Exception):
    def __init__(self, reason: str, kind: str = KIND_NETWORK, *, retryable: bool = False,
                 retry_after: float | None = None, fresh_retry: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after
        # The bytes were wrong but the transfer continued an older .part: the old prefix may be the culprit, so
        # the same source gets one more chance from byte zero before it is blamed.
        self.fresh_retry = fresh_retry


@dataclass(frozen=True)
class _Options:
    mirror: str | None
    offline: bool
    force: bool
    retry: RetryPolicy
    timeout: float
    lock_timeout: float
    progress_interval: float
    emit: ProgressCallback
    cancel: threading.Event
    stall_bytes: int = STALL_MIN_BYTES


class _Decoder:
    """Undoes a Content-Encoding the server applied although ssdtool asked for identity (gzip or deflate).

    The registry's size and checksums are those of the file itself, so the decoded bytes are what is counted,
    hashed and written. Output is bounded per call (``max_length``), so a compression bomb cannot fill memory: it
    is cut off like any body longer than the registry's size.
    """

    def __init__(self, read: Callable[[int], bytes], encoding: str) -> None:
        self._read = read
        self._inflate = zlib.decompressobj(_DECODABLE_ENCODINGS[encoding])
        self._ended = False

    def __call__(self, amount: int) -> bytes:
        while not self._ended:
            pending = self._inflate.unconsumed_tail
            if pending:
                data = self._inflate.decompress(pending, amount)
            else:
                raw = self._read(CHUNK_SIZE)
                if not raw:
                    self._ended = True
                    data = self._inflate.flush()
                    if not self._inflate.eof:
                        raise zlib.error("the compressed body ended early")
                    return data
                data = self._inflate.decompress(raw, amount)
            if data:
                return data
        return b""


def _network_errors() -> tuple[type[BaseException], ...]:
    import http.client

    import requests
    import urllib3

    return (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


def _describe_exception(exc: BaseException) -> str:
    """A one-line reason; urllib3 wraps the interesting part (e.g. IncompleteRead) in its first argument."""
    text = str(exc.args[0]) if type(exc).__name__ == "ProtocolError" and exc.args else str(exc)
    return redact_text(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


_CONNECTION_PREFIX = re.compile(r"^(<[^>]*>|\w*Connection(Pool)?\([^)]*\)): ")


def _connection_reason(exc: BaseException) -> str:
    """The root cause of a requests connection error, without urllib3's pool and connection object prefixes."""
    reason: Any = exc.args[0] if exc.args else exc
    reason = getattr(reason, "reason", reason)  # MaxRetryError -> NewConnectionError, NameResolutionError, ...
    text = str(reason)
    while (shorter := _CONNECTION_PREFIX.sub("", text, count=1)) != text:
        text = shorter
    return redact_text(text.strip("()") if text.startswith("(") else text)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare for downloads; our own backoff applies


def _content_range_matches(header: str | None, offset: int, size: int) -> bool:
    """Whether ``Content-Range`` says the body is bytes ``offset``..``size-1`` of a ``size``-byte file."""
    if not header or not header.lower().startswith("bytes "):
        return False
    span, _, total = header[6:].strip().partition("/")
    first, _, last = span.partition("-")
    try:
        return int(first) == offset and int(last) == size - 1 and total.strip() in (str(size), "*")
    except ValueError:
        return False


def _fsync_directory(path: Path) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem, and then not needed as much.
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


class _FileFetcher:
    """Fetches one file of one model: cached check, lock, sources with retries, verification, install."""

    def __init__(self, model: ModelEntry, file: FileEntry, cache: Cache, options: _Options) -> None:
        self.model = model
        self.file = file
        self.cache = cache
        self.options = options
        self.final = cache.file_path(model, file)
        self.part = cache.part_path(model, file)
        self.shown_final = str(self.final)
        self.transferred = 0
        self.started = time.monotonic()
        self._session: requests.Session | None = None
        self._removed_reason: str | None = None

    # -- events ------------------------------------------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> None:
        self.options.emit(DownloadEvent(event, model=self.model.name, file=self.file.name, **fields))

    def check_cancel(self) -> None:
        if self.options.cancel.is_set():
            raise _Cancelled

    # -- the whole flow ----------------------------------------------------------------------------------------

    def run(self) -> InstalledFile:
        self.started = time.monotonic()
        try:
            return self._run()
        finally:
            if self._session is not None:
                self._session.close()

    def _run(self) -> InstalledFile:
        if not self.options.force and (record := self.cache.recorded_verified(self.model, self.file)):
            log.debug("%s: verification record matches size and mtime; not re-hashing", self.final)
            return self._installed_from_cache(record.checksums)
        self._make_metadata_dir()
        with self._locked():
            if self.options.force and not self.options.offline:
                self._discard_everything()
            elif found := self._check_existing(trust_record=not self.options.force):
                return found
            return self._download()

    def _make_metadata_dir(self) -> None:
        folder = self.cache.metadata_dir(self.model)
        try:
            fsutil.ensure_folder(folder, self.cache.root)
        except fsutil.UnsafePathError as exc:
            raise CacheError(str(exc), hint=f"remove {exc.path}; ssdtool recreates it") from exc
        except OSError as exc:
            # A read-only cache: checking the files that are there needs no folder, lock or record of ours;
            # anything that must be written fails later, naming the file.
            log.debug("cannot create %s (%s); going on without it", folder, exc)

    def _installed_from_cache(self, checksums: dict[str, str]) -> InstalledFile:
        result = InstalledFile(
            model=self.model.name, file=self.file.name, path=self.final, size=self.file.size,
            sha256=checksums.get("sha256"), sha384=checksums.get("sha384"), source="cache", bytes_transferred=0,
            seconds=round(time.monotonic() - self.started, 3), resumed=False, resumed_from=0, cached=True)
        self.emit(EVENT_VERIFIED, size=self.file.size, path=str(self.final), sha256=result.sha256, cached=True,
                  source="cache", bytes_transferred=0)
        return result

    def _check_existing(self, trust_record: bool) -> InstalledFile | None:
        """Use a file already at the final path when it verifies; remove it when it does not."""
        if trust_record and (record := self.cache.recorded_verified(self.model, self.file)):
            return self._installed_from_cache(record.checksums)  # installed by the process we waited for
        self.cache.check_model_file(self.model, self.file)
        try:
            stat = self.final.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheError(f"cannot access {self.final}: {exc.strerror or exc}") from exc
        if not _stat.S_ISREG(stat.st_mode) and not _stat.S_ISLNK(os.lstat(self.final).st_mode):
            raise CacheError(f"refusing to use {self.final}: it is {fsutil.describe(stat.st_mode)}, expected the "
                             "model file", hint=f"remove it (rm -r {self.final}) and run the command again")
        if stat.st_size == self.file.size:
            try:
                size, digests = hash_file(self.final, self.file.checksums)
                problem = describe_mismatch(self.file, size, digests)
            except fsutil.UnsafePathError as exc:
                problem = f"not a regular file ({exc.reason})"
        else:
            problem = f"size mismatch: expected {self.file.size} bytes, got {stat.st_size}"
        if problem is None:
            try:
                self._write_record(digests, source="cache", mtime_ns=stat.st_mtime_ns)
            except CacheError as exc:  # the record only saves re-hashing next time; a read-only cache has none
                log.debug("%s", exc)
            return self._installed_from_cache(digests)
        # The cache's promise is that a file at its final path is verified: a bad one goes, and is re-fetched.
        log.warning("removing %s: it failed verification (%s)", self.final, problem)
        self._removed_reason = problem
        self.cache.remove_record(self.model, self.file)
        self._unlink(self.final)
        return None

    def _discard_everything(self) -> None:
        self.cache.remove_record(self.model, self.file)
        self._unlink(self.final)
        self._unlink(self.part)

    def _unlink(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CacheError(f"cannot remove {path}: {exc}", hint="check the cache directory's permissions") from exc

    # -- locking -----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        from filelock import FileLock, Timeout

        lock_path = self.cache.lock_path(self.model, self.file)
        lock = FileLock(str(lock_path))
        try:
            fsutil.safe_lock_path(lock_path)
            lock.acquire(timeout=0)
        except Timeout:
            self._wait_for_lock(lock, lock_path)
        except OSError as exc:
            if isinstance(exc, fsutil.UnsafePathError) or exc.errno == errno.ELOOP:
                raise CacheError(f"cannot lock {lock_path}: {exc}",
                                 hint=f"remove {lock_path}; ssdtool recreates it") from exc
            # A cache that cannot be written (a prefetched cache mounted read-only): no lock is possible, and none
            # is needed to check files that are there; anything that must write fails later with a CacheError.
            log.debug("no lock for %s (%s); continuing without one", self.file.name, exc)
            yield
            return
        try:
            self.cache.write_owner(self.model, self.file)
            yield
        finally:
            self.cache.remove_owner(self.model, self.file)
            lock.release()

    def _progress_signature(self) -> tuple[int, int, bool]:
        """Changes while the holder makes progress: the part grows, or the final file appears."""
        try:
            stat = os.lstat(self.part)
            part = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            part = (-1, -1)
        return part[0], part[1], os.path.lexists(self.final)

    def _wait_for_lock(self, lock: Any, lock_path: Path) -> None:
        from filelock import Timeout

        holder = self.cache.read_owner(self.model, self.file)
        log.debug("waiting for %s: another process is downloading it (lock %s%s)", self.file.name, lock_path,
                 f", pid {holder.pid} on {holder.host}" if holder else "")
        self.emit(EVENT_WAITING, lock=str(lock_path), holder=holder.to_dict() if holder else None)
        signature = self._progress_signature()
        deadline = time.monotonic() + self.options.lock_timeout
        while True:
            self.check_cancel()
            try:
                lock.acquire(timeout=max(0.0, min(LOCK_POLL_SECONDS, deadline - time.monotonic())))
                return
            except Timeout:
                pass
            now_signature = self._progress_signature()
            if now_signature != signature:  # the holder is alive and working: keep waiting
                signature = now_signature
                deadline = time.monotonic() + self.options.lock_timeout
            elif time.monotonic() >= deadline:
                holder = self.cache.read_owner(self.model, self.file) or holder
                who = _describe_holder(holder)
                raise LockTimeoutError(
                    f"timed out waiting for the download lock {lock_path}: held by {who}, and {self.part} "
                    f"made no progress for {self.options.lock_timeout:g} s",
                    hint="the OS releases the lock when its holder dies, so a live process holds it (perhaps on "
                         "another machine sharing this cache): let it finish or stop it, or wait longer with "
                         "'ssdtool download --lock-timeout SECONDS'")

    # -- downloading -------------------------------------------------------------------------------------------

    def _download(self) -> InstalledFile:
        urls = source_urls(self.model, self.file, self.options.mirror)
        failures: list[SourceFailure] = []
        if self.options.offline:
            failures = [SourceFailure(url, "not tried: offline mode", KIND_SKIPPED, 0)
                        for url in urls if not _is_local(url)]
            urls = [url for url in urls if _is_local(url)]
            if not urls:
                raise self._offline_error(failures)
        self._check_part()
        if (found := self._complete_part()) is not None:
            return found
        self._check_free_space()
        for url in urls:
            try:
                return self._from_source(url)
            except _SourceGaveUp as gave_up:
                failures.append(gave_up.failure)
        if self.options.offline:
            raise self._offline_error(failures)
        raise self._final_error(failures)

    def _check_part(self) -> None:
        """Refuse a link, folder or special file where the .part belongs: it is never followed or written through."""
        try:
            mode = os.lstat(self.part).st_mode
        except FileNotFoundError:
            return
        if not _stat.S_ISREG(mode):
            raise CacheError(f"refusing to use {self.part}: it is {fsutil.describe(mode, self.part)}; ssdtool never "
                             "follows links or writes into special files in the cache",
                             hint=f"remove it (rm {self.part}) and run the command again")

    def _part_size(self) -> int | None:
        try:
            return os.lstat(self.part).st_size
        except FileNotFoundError:
            return None

    def _complete_part(self) -> InstalledFile | None:
        """A .part of full size is a download interrupted between its last write and the rename: check it."""
        part_size = self._part_size()
        if part_size is None:
            return None
        if part_size > self.file.size:
            log.debug("discarding %s: %d bytes, more than the expected %d", self.part, part_size, self.file.size)
            self._unlink(self.part)
            return None
        if part_size < self.file.size:
            return None
        size, digests = hash_file(self.part, self.file.checksums, follow_links=False)
        if describe_mismatch(self.file, size, digests) is not None:
            log.debug("discarding %s: complete in size but its checksum is wrong", self.part)
            self._unlink(self.part)
            return None
        return self._install("partial download", digests, resumed_from=self.file.size)

    def _check_free_space(self) -> None:
        needed = self.file.size - (self._part_size() or 0)
        try:
            free = shutil.disk_usage(self.part.parent).free
        except OSError:
            return
        if free < needed:
            raise CacheError(
                f"not enough free space for {self.file.name} in {self.part.parent}: need {needed} bytes, "
                f"{free} free", hint="free some space or pass another --cache-dir")

    def _from_source(self, url: str) -> InstalledFile:
        scheme = urlsplit(url).scheme.lower()
        shown = redact_url(url)  # what events, messages and records say: never the credentials
        attempt = 0
        fresh_retry_used = False
        while True:
            attempt += 1
            self.check_cancel()
            try:
                if scheme in ("http", "https"):
                    return self._http_attempt(url)
                if scheme == "file":
                    return self._file_attempt(url)
                if scheme == "synthetic":
                    return self._synthetic_attempt(url)
                raise _AttemptFailed(f"unsupported URL scheme {scheme!r}")
            except _AttemptFailed as failed:
                reason = redact_text(failed.reason)
                if failed.fresh_retry and not fresh_retry_used:
                    fresh_retry_used = True
                    attempt -= 1
                    self.emit(EVENT_SOURCE_FAILED, source=shown, reason=reason, kind=failed.kind,
                              attempt=attempt + 1, retry_in=0.0)
                    continue
                if failed.retryable and attempt <= self.options.retry.retries:
                    delay = self.options.retry.delay(attempt, failed.retry_after)
                    log.debug("%s: %s; retry %d in %.2f s", shown, reason, attempt, delay)
                    self.emit(EVENT_SOURCE_FAILED, source=shown, reason=reason, kind=failed.kind,
                              attempt=attempt, retry_in=round(delay, 3))
                    self._sleep(delay)
                    continue
                self.emit(EVENT_SOURCE_FAILED, source=shown, reason=reason, kind=failed.kind, attempt=attempt)
                raise _SourceGaveUp(SourceFailure(shown, reason, failed.kind, attempt)) from None

    def _sleep(self, seconds: float) -> None:
        if self.options.cancel.wait(seconds):
            raise _Cancelled

    # -- http(s) -----------------------------------------------------------------------------------------------

    def _http_session(self) -> requests.Session:
        if self._session is None:
            import requests

            session = requests.Session()
            # trust_env (the default) keeps HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE working;
            # verify stays on. identity: the registry's size and checksums are those of the bytes as stored.
            session.headers.update({"User-Agent": f"ssdtool/{__version__}", "Accept-Encoding": "identity"})
            self._session = session
        return self._session

    def _request(self, url: str, offset: int) -> tuple[requests.Response, str]:
        """GET ``url`` from ``offset``, following redirects here so each hop is checked (scheme, loops, count)."""
        import requests

        headers = {"Range": f"bytes={offset}-"} if offset else {}
        chain = [url]
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            self.check_cancel()
            try:
                response = self._http_session().get(current, headers=headers, stream=True, allow_redirects=False,
                                                    timeout=(self.options.timeout, self.options.timeout))
            except requests.exceptions.SSLError as exc:
                raise _AttemptFailed(f"TLS error: {exc}; if a proxy or private CA re-signs TLS, point "
                                     "REQUESTS_CA_BUNDLE at its certificate bundle") from None
            except requests.exceptions.ProxyError as exc:
                raise _AttemptFailed(f"proxy error: {exc}", retryable=True) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                raise _AttemptFailed(f"connection failed: {_connection_reason(exc)}", retryable=True) from None
            except (requests.exceptions.RequestException, ValueError) as exc:  # ValueError: a malformed URL
                raise _AttemptFailed(f"request failed: {exc}") from None
            if not response.is_redirect:
                return response, current
            try:
                target = urljoin(current, response.headers["Location"])
            except ValueError:
                response.close()
                raise _AttemptFailed("the server redirected to a malformed URL") from None
            response.close()
            if reason := redirect_refusal(current, target):
                raise _AttemptFailed(reason)
            if target in chain:
                raise _AttemptFailed("redirect loop: " + " -> ".join(map(redact_url, [*chain, target])))
            log.debug("%s redirects to %s", redact_url(current), redact_url(target))
            chain.append(target)
            current = target
        raise _AttemptFailed(f"too many redirects (more than {MAX_REDIRECTS}): "
                             + " -> ".join(map(redact_url, chain)))

    def _http_attempt(self, url: str) -> InstalledFile:
        # At most twice: a server that answers a Range request wrongly (416, or the wrong range) costs the .part
        # and one fresh request from byte zero.
        for _round in range(2):
            offset = self._part_offset()
            response, _final_url = self._request(url, offset)
            with contextlib.closing(response):
                start = self._response_start(response, offset)
                if start is None:
                    self._unlink(self.part)
                    continue
                # read1 returns what has arrived (up to a chunk) instead of waiting for a full chunk: progress
                # and Ctrl-C stay responsive on slow links. urllib3 < 2 has no read1; read works, coarser.
                read = getattr(response.raw, "read1", response.raw.read)
                encoding = _content_encoding(response)
                if encoding != "identity":
                    read = _Decoder(read, encoding)
                return self._transfer(url, read, start, read_errors=(*_network_errors(), zlib.error))
        raise _AttemptFailed("the server answered range requests inconsistently twice", retryable=True)

    def _response_start(self, response: requests.Response, offset: int) -> int | None:
        """Where the body starts in the file; None to discard the .part and ask again from zero."""
        status = response.status_code
        encoding = _content_encoding(response) if status in (200, 206) else "identity"
        if encoding not in ("identity", *_DECODABLE_ENCODINGS):
            raise _AttemptFailed(f"the server sent the file with Content-Encoding {encoding!r} although ssdtool "
                                 "asked for identity, and ssdtool decodes only gzip and deflate")
        if status == 206 and encoding != "identity":
            # A range of the compressed stream is no range of the file: start again from byte zero.
            log.debug("%s: the server answered a range request with Content-Encoding %s; restarting from zero",
                      self.file.name, encoding)
            return None if offset else 0
        if status == 206:
            content_range = response.headers.get("Content-Range")
            if offset and _content_range_matches(content_range, offset, self.file.size):
                log.debug("%s: resuming at byte %d", self.file.name, offset)
                return offset
            if offset:
                log.debug("%s: the server answered Range bytes=%d- with Content-Range %r; restarting from zero",
                         self.file.name, offset, content_range)
                return None
            raise _AttemptFailed(f"HTTP 206 with Content-Range {content_range!r} to a request for the whole file")
        if status == 416 and offset:
            log.debug("%s: the server refused Range bytes=%d- (HTTP 416); restarting from zero",
                     self.file.name, offset)
            return None
        if status == 200:
            encoded = encoding != "identity"
            length = response.headers.get("Content-Length")
            if length is not None and not encoded and length.isdigit() and int(length) != self.file.size:
                raise _AttemptFailed(f"the server announces {int(length)} bytes (Content-Length), the registry "
                                     f"expects {self.file.size}", kind=KIND_CONTENT)
            if offset:
                log.debug("%s: the server ignored the Range request (HTTP 200); restarting from zero",
                         self.file.name)
            return 0
        reason = f"HTTP {status} {response.reason or ''}".rstrip()
        retryable = status in _RETRYABLE_STATUS or 500 <= status < 600
        raise _AttemptFailed(reason, retryable=retryable, retry_after=_retry_after(response.headers.get("Retry-After")))

    def _part_offset(self) -> int:
        self._check_part()
        size = self._part_size()
        if size is None:
            return 0
        if size >= self.file.size:  # cannot be continued; _complete_part already dealt with a full one
            self._unlink(self.part)
            return 0
        return size

    # -- file:// and synthetic: ------------------------------------------------------------------------------

    def _file_attempt(self, url: str) -> InstalledFile:
        path = file_url_path(url)
        try:
            # A mirror is the user's: links are followed, but a FIFO or device is refused, never read forever.
            stream = open(fsutil.open_regular(os.path.realpath(path)), "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:
            raise _AttemptFailed(f"no such file: {path}") from None
        except OSError as exc:
            raise _AttemptFailed(f"cannot open {path}: {exc}") from None
        with stream:
            size = os.fstat(stream.fileno()).st_size
            if size != self.file.size:
                raise _AttemptFailed(f"size mismatch: expected {self.file.size} bytes, {path} has {size}",
                                     kind=KIND_CONTENT)
            offset = self._part_offset()
            stream.seek(offset)
            return self._transfer(url, stream.read, offset, read_errors=(OSError,))

    def _synthetic_attempt(self, url: str) -> InstalledFile:
        try:
            from ssdtool.synthetic import build_model
        except ImportError as exc:
            raise _AttemptFailed(f"the synthetic twin builder is not available: {exc}") from None
        self._unlink(self.part)
        self.emit(EVENT_START, size=self.file.size, source=url, offset=0)
        try:
            data = build_model(url).SerializeToString()
        except SsdtoolError:
            raise
        except Exception as exc:
            raise _AttemptFailed(f"building the synthetic model failed: {type(exc).__name__}: {exc}") from None
        try:
            # O_EXCL: a new file, never one planted at the name since the unlink above.
            with open(fsutil.open_regular(self.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as stream:
                stream.write(data)
        except OSError as exc:
            self._unlink(self.part)
            raise CacheError(f"cannot write {self.part}: {exc}",
                             hint="check permissions and free space in the cache directory") from exc
        del data
        size, digests = hash_file(self.part, self.file.checksums, follow_links=False)
        self.emit(EVENT_PROGRESS, size=self.file.size, downloaded=size)
        if problem := describe_mismatch(self.file, size, digests):
            self._unlink(self.part)
            raise _AttemptFailed(f"{problem} (the twin differs from the registry's pin; are numpy and onnx the "
                                 "versions the pin was made with?)", kind=KIND_CONTENT)
        return self._install(url, digests, resumed_from=0)

    # -- the shared streaming core -----------------------------------------------------------------------------

    def _transfer(self, url: str, read: Callable[[int], bytes], start: int, *,
                  read_errors: tuple[type[BaseException], ...]) -> InstalledFile:
        """Stream ``read`` into the .part from byte ``start``, hashing as it goes; then verify and install."""
        size = self.file.size
        hasher = _Hasher(self.file.checksums)
        try:
            try:
                # Never through a link (O_NOFOLLOW) and only a regular file: a .part planted as a link to a file
                # outside the cache must not receive a byte.
                descriptor = fsutil.open_regular(self.part, os.O_RDWR | os.O_CREAT | (0 if start else os.O_TRUNC))
            except OSError as exc:
                raise CacheError(f"cannot write {self.part}: {exc}",
                                 hint="check permissions and free space in the cache directory") from exc
            handle = open(descriptor, "r+b", buffering=0)  # noqa: SIM115 - closed below
            flusher = _BackgroundFlush(handle.fileno())
            with handle, contextlib.closing(flusher):
                if start:
                    # Resume: the prefix already on disk must enter the checksum before the new bytes do.
                    _hash_stream(handle, hasher, start)
                    if hasher.count != start:
                        raise _AttemptFailed(f"{self.part} shrank while resuming", retryable=True)
                    handle.seek(start)
                handle.truncate(start)
                self.emit(EVENT_START, size=size, source=redact_url(url), offset=start)
                position = start
                last_report = time.monotonic()
                window_start, window_position = last_report, position
                while True:
                    self.check_cancel()
                    # Ask for one byte more than is missing, so a body longer than the registry's size shows.
                    try:
                        data = read(min(CHUNK_SIZE, size - position + 1))
                    except read_errors as exc:
                        raise _AttemptFailed(f"transfer broke off after {position} of {size} bytes: "
                                             f"{_describe_exception(exc)}", retryable=True) from None
                    if not data:
                        break
                    if len(data) > size - position:
                        self._unlink(self.part)
                        raise _AttemptFailed(f"the source sent more than the registry's {size} bytes; cut off "
                                             "and discarded", kind=KIND_CONTENT)
                    try:
                        handle.write(data)
                    except OSError as exc:
                        raise CacheError(f"cannot write {self.part}: {exc}",
                                         hint="check free space in the cache directory") from exc
                    hasher.update(data)
                    position += len(data)
                    self.transferred += len(data)
                    flusher.wrote(position)
                    now = time.monotonic()
                    if position == size or now - last_report >= self.options.progress_interval:
                        last_report = now
                        self.emit(EVENT_PROGRESS, size=size, downloaded=position)
                    if now - window_start >= self.options.timeout:
                        wanted = min(self.options.stall_bytes, size - window_position)
                        if position - window_position < wanted:
                            raise _AttemptFailed(
                                f"the transfer stalled: {position - window_position} bytes in the last "
                                f"{now - window_start:.1f} s, at least {wanted} expected in every --timeout "
                                f"({self.options.timeout:g} s) window; {position} of {size} bytes kept for a resume",
                                retryable=True)
                        window_start, window_position = now, position
                if position != size:
                    raise _AttemptFailed(f"the transfer ended after {position} of {size} bytes", retryable=True)
                try:
                    handle.flush()
                    os.fsync(handle.fileno())
                except OSError as exc:
                    raise CacheError(f"cannot write {self.part}: {exc}") from exc
            digests = hasher.hexdigests()
        finally:
            hasher.close()
        if problem := describe_mismatch(self.file, size, digests):
            self._unlink(self.part)
            raise _AttemptFailed(problem, kind=KIND_CONTENT, fresh_retry=start > 0)
        return self._install(url, digests, resumed_from=start)

    def _install(self, source: str, digests: dict[str, str], resumed_from: int) -> InstalledFile:
        """Atomically move the verified .part into place, then record the verification."""
        source = redact_url(source)
        self.cache.remove_record(self.model, self.file)
        try:
            os.replace(self.part, self.final)
        except OSError as exc:
            raise CacheError(f"cannot move {self.part} to {self.final}: {exc}") from exc
        _fsync_directory(self.final.parent)
        self._write_record(digests, source=source, mtime_ns=self.final.stat().st_mtime_ns)
        result = InstalledFile(
            model=self.model.name, file=self.file.name, path=self.final, size=self.file.size,
            sha256=digests.get("sha256"), sha384=digests.get("sha384"), source=source,
            bytes_transferred=self.transferred, seconds=round(time.monotonic() - self.started, 3),
            resumed=resumed_from > 0, resumed_from=resumed_from, cached=False)
        self.emit(EVENT_VERIFIED, size=self.file.size, path=str(self.final), sha256=result.sha256, cached=False,
                  source=source, resumed=result.resumed, bytes_transferred=self.transferred, seconds=result.seconds)
        return result

    def _write_record(self, digests: dict[str, str], source: str, mtime_ns: int) -> None:
        record = VerificationRecord(size=self.file.size, mtime_ns=mtime_ns, checksums=dict(digests), source=source,
                                    verified_at=time.time())
        self.cache.write_record(self.model, self.file, record)

    # -- errors ------------------------------------------------------------------------------------------------

    def _sources_text(self, failures: Sequence[SourceFailure]) -> str:
        lines = []
        for index, failure in enumerate(failures, start=1):
            tries = f" (after {failure.attempts} attempts)" if failure.attempts > 1 else ""
            lines.append(f"  {index}. {failure.source}: {failure.reason}{tries}")
        return "\n".join(lines)

    def _manual_hint(self) -> str:
        return (f"download it by hand and place it at {self.final}, then run "
                f"'ssdtool verify {self.model.name}'")

    def _final_error(self, failures: Sequence[SourceFailure]) -> DownloadError:
        wrong_bytes = any(f.kind == KIND_CONTENT for f in failures)
        what = "every source that delivered it sent wrong bytes" if wrong_bytes else "no source delivered it"
        message = (f"could not download {self.file.name} of model {self.model.name} ({self.file.size} bytes): "
                   f"{what}; tried {len(failures)} source{'s' if len(failures) != 1 else ''}:\n"
                   + self._sources_text(failures))
        if wrong_bytes:
            hint = ("a server may hold another version of the file, or the registry entry is out of date; try "
                    f"another server with 'ssdtool download --mirror URL' (or SSDTOOL_MIRROR=URL), or "
                    f"{self._manual_hint()}")
            return ChecksumError(message, hint=hint)
        hint = (f"check the network or proxy (HTTPS_PROXY, REQUESTS_CA_BUNDLE), try another server with 'ssdtool "
                f"download --mirror URL' (or SSDTOOL_MIRROR=URL), or {self._manual_hint()}")
        return NetworkError(message, hint=hint)

    def _offline_error(self, failures: Sequence[SourceFailure]) -> OfflineError:
        removed = f" (a cached copy was removed: {self._removed_reason})" if self._removed_reason else ""
        message = (f"{self.file.name} of model {self.model.name} is not in the cache at {self.final}{removed}, "
                   "and offline mode forbids downloading it")
        if failures:
            message += "; sources:\n" + self._sources_text(failures)
        return OfflineError(message, hint=(
            f"run 'ssdtool download {self.model.name}' on a connected machine and copy its cache folder "
            f"{self.cache.model_dir(self.model)} here, use a local mirror ('ssdtool download --offline --mirror "
            f"/DIR', or SSDTOOL_MIRROR=/DIR), or {self._manual_hint()}"))


class _SourceGaveUp(Exception):
    def __init__(self, failure: SourceFailure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


# --------------------------------------------------------------------------------------------------------------
# Public API


def _describe_holder(holder: LockOwner | None) -> str:
    if holder is None:
        return "an unknown process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.since))
    return f"pid {holder.pid} on host {holder.host}, since {since}"


def _content_encoding(response: requests.Response) -> str:
    """The response's Content-Encoding, lower-cased; "identity" when there is none."""
    value = response.headers.get("Content-Encoding", "").strip().lower()
    return value or "identity"


def _select_files(model: ModelEntry, files: Sequence[str] | None) -> list[FileEntry]:
    if files is None:
        return list(model.files)
    known = {f.name: f for f in model.files}
    unknown = [name for name in files if name not in known]
    if unknown:
        raise UsageError(f"model {model.name} has no file {', '.join(map(repr, unknown))}; its files: "
                         + ", ".join(known))
    return [known[name] for name in dict.fromkeys(files)]


def _make_options(mirror: str | None, offline: bool | None, force: bool, retries: int, timeout: float,
                  lock_timeout: float, backoff: float, progress: ProgressCallback | None,
                  progress_interval: float, cancel: threading.Event,
                  stall_bytes: int = STALL_MIN_BYTES) -> _Options:
    if retries < 0:
        raise UsageError(f"retries must be 0 or more, got {retries}")
    if timeout <= 0:
        raise UsageError(f"timeout must be more than 0 seconds, got {timeout}")
    if stall_bytes < 0:
        raise UsageError(f"stall_bytes must be 0 or more, got {stall_bytes}")
    mirror = mirror_from_env() if mirror is None else (mirror or None)
    return _Options(
        mirror=normalize_mirror(mirror) if mirror else None,
        offline=offline_from_env() if offline is None else offline,
        force=force,
        retry=RetryPolicy(retries=retries, base=backoff),
        timeout=timeout,
        lock_timeout=lock_timeout,
        progress_interval=progress_interval,
        emit=progress or (lambda _event: None),
        cancel=cancel,
        stall_bytes=stall_bytes,
    )


def fetch_models(
    models: Sequence[ModelEntry],
    cache: Cache | None = None,
    *,
    files: Sequence[str] | None = None,
    mirror: str | None = None,
    offline: bool | None = None,
    force: bool = False,
    retries: int = DEFAULT_RETRIES,
    timeout: float = DEFAULT_TIMEOUT,
    jobs: int = 1,
    progress: ProgressCallback | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    backoff: float = DEFAULT_BACKOFF,
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
    stall_bytes: int = STALL_MIN_BYTES,
) -> list[InstalledFile]:
    """Fetch every file of ``models`` (see :func:`fetch`), up to ``jobs`` files at a time.

    A failing file does not stop the others; after all have run, the first failure is raised (its class gives
    the exit code) with the messages of every failed file.
    """
    cache = cache or Cache.at()
    cancel = threading.Event()
    options = _make_options(mirror, offline, force, retries, timeout, lock_timeout, backoff, progress,
                            progress_interval, cancel, stall_bytes)
    work = [(model, file) for model in models for file in _select_files(model, files)]
    started = time.monotonic()
    results: list[InstalledFile | None] = [None] * len(work)
    errors: list[BaseException | None] = [None] * len(work)

    fetchers = [_FileFetcher(model, file, cache, options) for model, file in work]

    def one(index: int) -> None:
        try:
            results[index] = fetchers[index].run()
        except Exception as exc:  # collected: the other files still get their chance
            errors[index] = exc
        except BaseException as exc:  # Ctrl-C (raised in a progress callback, say): stop the other files too
            errors[index] = exc
            cancel.set()
            if threading.current_thread() is threading.main_thread():
                raise

    if jobs <= 1 or len(work) <= 1:
        for index in range(len(work)):
            one(index)
    else:
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        executor = ThreadPoolExecutor(max_workers=min(jobs, len(work)), thread_name_prefix="ssdtool-download")
        futures: list[Future[None]] = [executor.submit(one, index) for index in range(len(work))]
        try:
            pending = set(futures)
            while pending:  # short waits keep the main thread responsive to Ctrl-C
                _done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
        except BaseException:
            cancel.set()  # workers stop at their next chunk and leave their .part files for a resume
            raise
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
    interrupted = [e for e in errors if e is not None and not isinstance(e, Exception)]
    if interrupted:  # from a worker thread: re-raise here, as a KeyboardInterrupt the CLI maps to exit 130
        first_interrupt = next((e for e in interrupted if not isinstance(e, _Cancelled)), None)
        raise first_interrupt or KeyboardInterrupt()
    installed = [r for r in results if r is not None]
    failed = [e for e in errors if e is not None]
    options.emit(DownloadEvent(EVENT_DONE, files=len(installed), failed=len(failed),
                               bytes_transferred=sum(f.transferred for f in fetchers),
                               seconds=round(time.monotonic() - started, 3)))
    if failed:
        first = failed[0]
        if len(failed) == 1 or not isinstance(first, SsdtoolError):
            raise first
        message = f"{len(failed)} of {len(work)} files failed:\n" + "\n".join(str(getattr(e, "message", e))
                                                                          for e in failed)
        raise type(first)(message, hint=first.hint)
    return installed


def fetch(
    model: ModelEntry,
    cache: Cache | None = None,
    *,
    files: Sequence[str] | None = None,
    mirror: str | None = None,
    offline: bool | None = None,
    force: bool = False,
    retries: int = DEFAULT_RETRIES,
    timeout: float = DEFAULT_TIMEOUT,
    jobs: int = 1,
    progress: ProgressCallback | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    backoff: float = DEFAULT_BACKOFF,
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
    stall_bytes: int = STALL_MIN_BYTES,
) -> list[InstalledFile]:
    """Make every file of ``model`` (or just ``files``) present and verified in ``cache``.

    ``mirror``: base URL tried first (None: ``$SSDTOOL_MIRROR``; "": no mirror). ``offline``: never use the
    network, only cached files and local (file://, synthetic:) sources (None: ``$SSDTOOL_OFFLINE``). ``force``:
    download again even when cached (offline: re-hash, ignoring the verification record). ``retries``: further
    attempts per source after transient failures, ``backoff`` seconds apart at first. ``timeout``: connect and
    read timeout in seconds, and the window of the stall rule: a transfer that receives fewer than ``stall_bytes``
    bytes (or the rest of the file) in ``timeout`` seconds fails as stalled, and is retried like a timeout.
    ``lock_timeout``: how long to wait for another process's download of the same file
    while it shows no progress. ``progress`` receives :class:`DownloadEvent` objects, from worker threads when
    ``jobs`` > 1.

    Raises NetworkError, ChecksumError, OfflineError, LockTimeoutError or CacheError; KeyboardInterrupt leaves
    the ``.part`` file for a later resume.
    """
    return fetch_models([model], cache, files=files, mirror=mirror, offline=offline, force=force, retries=retries,
                        timeout=timeout, jobs=jobs, progress=progress, lock_timeout=lock_timeout, backoff=backoff,
                        progress_interval=progress_interval, stall_bytes=stall_bytes)


def ensure_downloaded(model: ModelEntry, cache: Cache | None = None, *, offline: bool | None = None,
                      progress: ProgressCallback | None = None, mirror: str | None = None) -> Path:
    """The verified path of the model's primary file, downloading the model's files first when needed.

    For ``convert`` and ``detect``: costs a stat and a small JSON read when the file is already verified.
    """
    cache = cache or Cache.at()
    fetch(model, cache, offline=offline, progress=progress, mirror=mirror)
    return cache.file_path(model, model.primary_file)


def verify(
    model: ModelEntry,
    cache: Cache | None = None,
    *,
    files: Sequence[str] | None = None,
    repair: bool = False,
    progress: ProgressCallback | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    **fetch_options: Any,
) -> list[VerifyResult]:
    """Re-hash the cached files of ``model`` against the registry, ignoring verification records.

    Good files get a fresh record. Without ``repair`` nothing else changes (a bad file stays for inspection; only
    its record is removed, so no later run trusts it). With ``repair`` bad and missing files are fetched again
    (``fetch_options`` as for :func:`fetch`); the result says ``repaired`` or carries ``repair_error``.
    """
    cache = cache or Cache.at()
    results: list[VerifyResult] = []
    for file in _select_files(model, files):
        result = _verify_one(model, file, cache, lock_timeout)
        if not result.ok and repair:
            try:
                fetched = fetch(model, cache, files=[file.name], progress=progress, lock_timeout=lock_timeout,
                                **fetch_options)[0]
            except DownloadError as exc:
                result = VerifyResult(**{**result.__dict__, "repair_error": exc.message})
            else:
                actual = {algo: digest for algo, digest in (("sha256", fetched.sha256), ("sha384", fetched.sha384))
                          if digest}
                result = VerifyResult(**{**result.__dict__, "status": STATUS_REPAIRED, "actual": actual,
                                         "actual_size": fetched.size,
                                         "detail": f"re-downloaded from {fetched.source} ({result.detail})"})
        results.append(result)
    return results


def _verify_one(model: ModelEntry, file: FileEntry, cache: Cache, lock_timeout: float) -> VerifyResult:
    path = cache.check_model_file(model, file)
    base = {"model": model.name, "file": file.name, "path": path, "expected_size": file.size,
            "expected": file.checksums}
    try:
        stat = path.stat()
    except FileNotFoundError:
        part = cache.part_path(model, file)
        if os.path.lexists(part):
            done = os.lstat(part).st_size
            return VerifyResult(**base, status=STATUS_PARTIAL, actual_size=None, actual={},
                                detail=f"interrupted download: {done} of {file.size} bytes in {part}; "
                                       "'ssdtool download' resumes it")
        return VerifyResult(**base, status=STATUS_MISSING, actual_size=None, actual={}, detail="not downloaded")
    # Hash under the download lock, so a concurrent download or repair cannot swap the file mid-read.
    options = _make_options("", False, False, 0, DEFAULT_TIMEOUT, lock_timeout, DEFAULT_BACKOFF, None,
                            DEFAULT_PROGRESS_INTERVAL, threading.Event())
    fetcher = _FileFetcher(model, file, cache, options)
    fetcher._make_metadata_dir()
    with fetcher._locked():
        try:
            stat = path.stat()
        except FileNotFoundError:
            return VerifyResult(**base, status=STATUS_MISSING, actual_size=None, actual={}, detail="not downloaded")
        try:
            size, digests = hash_file(path, file.checksums)
        except fsutil.UnsafePathError as exc:
            with contextlib.suppress(OSError):
                cache.remove_record(model, file)
            return VerifyResult(**base, status=STATUS_BAD_SIZE, actual_size=None, actual={},
                                detail=f"not a regular file: {exc.reason}")
        problem = describe_mismatch(file, size, digests)
        if problem is None:
            try:
                fetcher._write_record(digests, source="verify", mtime_ns=stat.st_mtime_ns)
            except CacheError as exc:
                log.debug("%s", exc)
            return VerifyResult(**base, status=STATUS_OK, actual_size=size, actual=digests, detail="verified")
        with contextlib.suppress(OSError):
            cache.remove_record(model, file)
    status = STATUS_BAD_SIZE if size != file.size else STATUS_BAD_CHECKSUM
    return VerifyResult(**base, status=status, actual_size=size, actual=digests, detail=problem)
