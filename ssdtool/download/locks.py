"""One process at a time per cached file: the inter-process lock that downloads, repairs and verification share.

:mod:`filelock` takes an OS lock (``flock``), which the OS releases when its holder dies, so a killed process never
leaves a lock that blocks forever. A process that finds the lock taken waits as long as the holder shows signs of
life (its part file grows, or the final file appears) and gives up only after ``timeout`` seconds without any.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from ssdtool import fsutil
from ssdtool.cache import Cache, LockOwner
from ssdtool.constants import DownloadEventKind
from ssdtool.download.options import DEFAULT_LOCK_TIMEOUT
from ssdtool.errors import CacheError, LockTimeoutError
from ssdtool.registry import FileEntry, ModelEntry

log = logging.getLogger("ssdtool.download")

LOCK_POLL_SECONDS = 0.25


def describe_holder(holder: LockOwner | None) -> str:
    if holder is None:
        return "an unknown process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.since))
    return f"pid {holder.pid} on host {holder.host}, since {since}"


@contextlib.contextmanager
def file_lock(cache: Cache, model: ModelEntry, file: FileEntry, *, timeout: float = DEFAULT_LOCK_TIMEOUT,
              emit: Callable[..., None] | None = None, check_cancel: Callable[[], None] | None = None
              ) -> Iterator[bool]:
    """Hold ``model``/``file``'s lock for the ``with`` block; yields whether a lock is held.

    On a cache that cannot be written (a prefetched cache mounted read-only) no lock can be taken and none is
    needed to read the files there: the block runs unlocked (yields False), and anything that must write fails
    later with a :class:`CacheError` naming the file. While waiting, ``emit(DownloadEventKind.WAITING, ...)`` is
    called once and ``check_cancel()`` between polls. Raises :class:`LockTimeoutError` after ``timeout`` seconds
    without progress from the holder, and :class:`CacheError` when the lock file is a planted link.
    """
    from filelock import FileLock, Timeout

    lock_path = cache.lock_path(model, file)
    lock = FileLock(str(lock_path))
    try:
        fsutil.safe_lock_path(lock_path)
        lock.acquire(timeout=0)
    except Timeout:
        _wait(lock, cache, model, file, timeout, emit, check_cancel)
    except OSError as exc:
        if isinstance(exc, fsutil.UnsafePathError) or exc.errno == errno.ELOOP:
            raise CacheError(f"cannot lock {lock_path}: {exc}", hint=f"remove {lock_path}; ssdtool recreates it"
                             ) from exc
        log.debug("no lock for %s (%s); continuing without one", file.name, exc)
        yield False
        return
    try:
        cache.write_owner(model, file)
        yield True
    finally:
        cache.remove_owner(model, file)
        lock.release()


def _progress_signature(cache: Cache, model: ModelEntry, file: FileEntry) -> tuple[int, int, bool]:
    """Changes while the holder makes progress: the part grows, or the final file appears."""
    try:
        stat = os.lstat(cache.part_path(model, file))
        part = (stat.st_size, stat.st_mtime_ns)
    except OSError:
        part = (-1, -1)
    return part[0], part[1], os.path.lexists(cache.file_path(model, file))


def _wait(lock: Any, cache: Cache, model: ModelEntry, file: FileEntry, timeout: float,
          emit: Callable[..., None] | None, check_cancel: Callable[[], None] | None) -> None:
    from filelock import Timeout

    lock_path = cache.lock_path(model, file)
    holder = cache.read_owner(model, file)
    log.debug("waiting for %s: another process is downloading it (lock %s%s)", file.name, lock_path,
              f", pid {holder.pid} on {holder.host}" if holder else "")
    if emit is not None:
        emit(DownloadEventKind.WAITING, lock=str(lock_path), holder=holder.to_dict() if holder else None)
    signature = _progress_signature(cache, model, file)
    deadline = time.monotonic() + timeout
    while True:
        if check_cancel is not None:
            check_cancel()
        try:
            lock.acquire(timeout=max(0.0, min(LOCK_POLL_SECONDS, deadline - time.monotonic())))
            return
        except Timeout:
            pass
        now_signature = _progress_signature(cache, model, file)
        if now_signature != signature:  # the holder is alive and working: keep waiting
            signature = now_signature
            deadline = time.monotonic() + timeout
        elif time.monotonic() >= deadline:
            holder = cache.read_owner(model, file) or holder
            raise LockTimeoutError(
                f"timed out waiting for the download lock {lock_path}: held by {describe_holder(holder)}, and "
                f"{cache.part_path(model, file)} made no progress for {timeout:g} s",
                hint="the OS releases the lock when its holder dies, so a live process holds it (perhaps on "
                     "another machine sharing this cache): let it finish or stop it, or wait longer with "
                     "'ssdtool download --lock-timeout SECONDS'")
