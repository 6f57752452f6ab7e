"""The bytes themselves: streaming a source into the part file while counting and hashing, and checking digests.

One pass over the data: each chunk is written to ``<file>.part`` and fed to the hashers, which run in their own
threads (hashlib releases the GIL on large buffers) behind small bounded queues, while a helper thread starts disk
writeback as the file grows. Memory stays flat whatever the file size.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssdtool import fsutil
from ssdtool.constants import DownloadEventKind, FailureKind
from ssdtool.download.sources import CHUNK_SIZE, AttemptFailed, Body
from ssdtool.errors import CacheError
from ssdtool.redact import redact_text
from ssdtool.registry import FileEntry

HASH_QUEUE_DEPTH = 4
# Start writeback of the .part every this many bytes, so the fsync before the rename has little left to do.
FLUSH_EVERY = 16 << 20


class Hasher:
    """Counts bytes and computes the registry's checksums in the same pass as the write.

    With ``threaded`` each algorithm runs in its own thread fed by a small bounded queue: hashing overlaps the
    socket reads and file writes, and the queue bound keeps memory flat.
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


class BackgroundFlush:
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
              hasher: Hasher | None = None, follow_links: bool = True) -> tuple[int, dict[str, str]]:
    """Size and hex digests of ``path`` (its first ``limit`` bytes when given), reading 1 MiB at a time.

    Only a regular file is read (a FIFO or device there raises :class:`~ssdtool.fsutil.UnsafePathError` instead
    of blocking or reading forever); ``follow_links=False`` refuses a link at ``path`` too.
    """
    own = hasher is None
    hasher = hasher or Hasher(algorithms)
    try:
        descriptor = fsutil.open_regular(os.path.realpath(path) if follow_links else path)
        with open(descriptor, "rb", buffering=0) as stream:
            _hash_stream(stream, hasher, limit)
    finally:
        if own:
            hasher.close()
    return hasher.count, (hasher.hexdigests() if own else {})


def _hash_stream(stream: Any, hasher: Hasher, limit: int | None) -> None:
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


@dataclass(frozen=True)
class TransferRules:
    """``progress_interval``: seconds between progress events; the stall rule: in every ``timeout`` seconds at least
    ``stall_bytes`` (or the rest of the file) must arrive."""

    progress_interval: float
    timeout: float
    stall_bytes: int


Emit = Callable[..., None]


def stream_to_part(part: Path, body: Body, file: FileEntry, rules: TransferRules, *, emit: Emit,
                   check_cancel: Callable[[], None], on_bytes: Callable[[int], None]) -> dict[str, str]:
    """Write ``body`` into ``part`` from byte ``body.start`` (hashing an existing prefix first), and return the
    digests of the whole file once exactly ``file.size`` bytes are there and synced.

    ``emit(kind, **fields)`` reports start and progress; ``on_bytes(n)`` counts bytes read from the source. A
    broken, short, long or stalled transfer raises :class:`AttemptFailed` (the part is kept for a resume unless
    its bytes are known to be wrong); a local write failure raises :class:`CacheError`.
    """
    size, start = file.size, body.start
    hasher = Hasher(file.checksums)
    try:
        try:
            # Never through a link (O_NOFOLLOW) and only a regular file: a .part planted as a link to a file outside
            # the cache must not receive a byte.
            descriptor = fsutil.open_regular(part, os.O_RDWR | os.O_CREAT | (0 if start else os.O_TRUNC))
        except OSError as exc:
            raise CacheError(f"cannot write {part}: {exc}",
                             hint="check permissions and free space in the cache directory") from exc
        handle = open(descriptor, "r+b", buffering=0)  # noqa: SIM115 - closed below
        flusher = BackgroundFlush(handle.fileno())
        with handle, contextlib.closing(flusher):
            if start:
                # Resume: the prefix already on disk must enter the checksum before the new bytes do.
                _hash_stream(handle, hasher, start)
                if hasher.count != start:
                    raise AttemptFailed(f"{part} shrank while resuming", retryable=True)
                handle.seek(start)
            handle.truncate(start)
            emit(DownloadEventKind.START, size=size, offset=start)
            _copy(handle, body, hasher, flusher, file, rules, emit, check_cancel, on_bytes, part)
            try:
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                raise CacheError(f"cannot write {part}: {exc}") from exc
        digests = hasher.hexdigests()
    finally:
        hasher.close()
    if problem := describe_mismatch(file, size, digests):
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        raise AttemptFailed(problem + body.mismatch_note, kind=FailureKind.CONTENT, fresh_retry=start > 0)
    return digests


def _copy(handle: Any, body: Body, hasher: Hasher, flusher: BackgroundFlush, file: FileEntry, rules: TransferRules,
          emit: Emit, check_cancel: Callable[[], None], on_bytes: Callable[[int], None], part: Path) -> None:
    size = file.size
    position = body.start
    last_report = time.monotonic()
    window_start, window_position = last_report, position
    while True:
        check_cancel()
        # Ask for one byte more than is missing, so a body longer than the registry's size shows.
        try:
            data = body.read(min(CHUNK_SIZE, size - position + 1))
        except body.read_errors as exc:
            raise AttemptFailed(f"transfer broke off after {position} of {size} bytes: {_describe(exc)}",
                                retryable=True) from None
        if not data:
            break
        if len(data) > size - position:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            raise AttemptFailed(f"the source sent more than the registry's {size} bytes; cut off and discarded",
                                kind=FailureKind.CONTENT)
        try:
            handle.write(data)
        except OSError as exc:
            raise CacheError(f"cannot write {part}: {exc}", hint="check free space in the cache directory") from exc
        hasher.update(data)
        position += len(data)
        if not body.made:
            on_bytes(len(data))
        flusher.wrote(position)
        now = time.monotonic()
        if position == size or now - last_report >= rules.progress_interval:
            last_report = now
            emit(DownloadEventKind.PROGRESS, size=size, downloaded=position)
        if now - window_start >= rules.timeout:
            wanted = min(rules.stall_bytes, size - window_position)
            if position - window_position < wanted:
                raise AttemptFailed(
                    f"the transfer stalled: {position - window_position} bytes in the last {now - window_start:.1f} "
                    f"s, at least {wanted} expected in every --timeout ({rules.timeout:g} s) window; {position} of "
                    f"{size} bytes kept for a resume", retryable=True)
            window_start, window_position = now, position
    if position != size:
        raise AttemptFailed(f"the transfer ended after {position} of {size} bytes", retryable=True)


def _describe(exc: BaseException) -> str:
    """A one-line reason; urllib3 wraps the interesting part (e.g. IncompleteRead) in its first argument."""
    text = str(exc.args[0]) if type(exc).__name__ == "ProtocolError" and exc.args else str(exc)
    return redact_text(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
