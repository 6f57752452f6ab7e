"""How to download: one frozen options record for fetch, verify and everything that downloads on first use."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from ssdtool.constants import (  # the defaults live with the other shared ones: the command line shows them
    BACKOFF_CAP,
    DEFAULT_BACKOFF,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_PROGRESS_INTERVAL,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    MIRROR_ENV,
    OFFLINE_ENV,
    STALL_MIN_BYTES,
)
from ssdtool.errors import UsageError
from ssdtool.redact import redact_url

__all__ = ["BACKOFF_CAP", "DEFAULT_BACKOFF", "DEFAULT_LOCK_TIMEOUT", "DEFAULT_PROGRESS_INTERVAL", "DEFAULT_RETRIES",
           "DEFAULT_TIMEOUT", "MIRROR_ENV", "OFFLINE_ENV", "STALL_MIN_BYTES", "FetchOptions", "RetryPolicy",
           "mirror_from_env", "normalize_mirror", "offline_from_env"]


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
