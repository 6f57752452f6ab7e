"""How to download: one frozen options record for fetch, verify and everything that downloads on first use."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, replace

from ssdtool.errors import UsageError

MIRROR_ENV = "SSDTOOL_MIRROR"
OFFLINE_ENV = "SSDTOOL_OFFLINE"
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 30.0
DEFAULT_BACKOFF = 0.5
BACKOFF_CAP = 30.0
# A waiting process gives up only after this long without any sign of progress from the lock holder.
DEFAULT_LOCK_TIMEOUT = 600.0
DEFAULT_PROGRESS_INTERVAL = 0.25
# The stall rule: in every --timeout window a transfer must receive at least this much (or the rest of the file).
STALL_MIN_BYTES = 64 << 10


def mirror_from_env() -> str | None:
    return os.environ.get(MIRROR_ENV) or None


def offline_from_env() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


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


@dataclass(frozen=True)
class FetchOptions:
    """Everything a download can be told.

    ``mirror``: base URL or folder tried first, as ``{mirror}/{model}/{file}`` (None: ``$SSDTOOL_MIRROR``; "":
    none). ``offline``: never use the network, only cached files and local (file://, synthetic:) sources (None:
    ``$SSDTOOL_OFFLINE``). ``force``: download again even when cached (offline: re-hash, ignoring the
    verification record). ``retries``: further attempts per source after transient failures, ``backoff`` seconds
    apart at first. ``timeout``: connect and read timeout in seconds, and the window of the stall rule: a transfer
    that receives fewer than ``stall_bytes`` bytes (or the rest of the file) in ``timeout`` seconds fails as
    stalled and is retried like a timeout. ``lock_timeout``: how long to wait for another process's download of
    the same file while it shows no progress. ``jobs``: files fetched at once. ``progress_interval``: the
    shortest time between two progress events of one file.
    """

    mirror: str | None = None
    offline: bool | None = None
    force: bool = False
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF
    timeout: float = DEFAULT_TIMEOUT
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    jobs: int = 1
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL
    stall_bytes: int = STALL_MIN_BYTES

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(retries=self.retries, base=self.backoff)

    def resolved(self) -> FetchOptions:
        """These options checked, with the environment's mirror and offline setting filled in and the mirror in its
        URL form. Raises :class:`UsageError` for impossible values."""
        from ssdtool.download.sources import normalize_mirror

        if self.retries < 0:
            raise UsageError(f"retries must be 0 or more, got {self.retries}")
        if self.timeout <= 0:
            raise UsageError(f"timeout must be more than 0 seconds, got {self.timeout}")
        if self.stall_bytes < 0:
            raise UsageError(f"stall_bytes must be 0 or more, got {self.stall_bytes}")
        if self.jobs < 1:
            raise UsageError(f"jobs must be at least 1, got {self.jobs}")
        mirror = mirror_from_env() if self.mirror is None else (self.mirror or None)
        return replace(self, mirror=normalize_mirror(mirror) if mirror else "",
                       offline=offline_from_env() if self.offline is None else self.offline)
