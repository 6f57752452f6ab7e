"""What a download reports: progress events while it runs, and records of what it installed or verified."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssdtool.constants import DownloadEventKind, FailureKind, VerifyStatus


@dataclass(frozen=True)
class DownloadEvent:
    """One progress report. ``to_dict`` leaves out the fields an event kind does not use.

    Kinds: ``start`` (a transfer from ``source`` begins at byte ``offset``), ``progress`` (``downloaded`` of
    ``size`` bytes, at most every ``progress_interval`` seconds and once at the end), ``source_failed`` (with
    ``reason``; ``retry_in`` seconds when the same source is tried again, else the next source follows),
    ``waiting`` (another process holds ``lock``), ``verified`` (the file is in place at ``path``; ``cached``
    when nothing was transferred), ``done`` (once per fetch: ``files``, ``failed``, ``bytes_transferred``,
    ``seconds``). Sources are shown without credentials (:mod:`ssdtool.redact`).
    """

    event: DownloadEventKind
    model: str | None = None
    file: str | None = None
    size: int | None = None
    source: str | None = None
    offset: int | None = None
    downloaded: int | None = None
    reason: str | None = None
    kind: FailureKind | None = None
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
    source: str  # the URL that delivered it (credentials redacted), or "cache" when it was already verified
    bytes_transferred: int  # bytes read from sources over all attempts (0 when cached)
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
    kind: FailureKind
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class VerifyResult:
    """The state of one cached file after re-hashing it (and repairing it when asked)."""

    model: str
    file: str
    path: Path
    status: VerifyStatus
    expected_size: int
    actual_size: int | None
    expected: dict[str, str]
    actual: dict[str, str]
    detail: str
    repair_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in (VerifyStatus.OK, VerifyStatus.REPAIRED)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["path"] = str(self.path)
        data["ok"] = self.ok
        return data
