"""Fetching one file of one model into the cache, in a few named steps.

1. **Cached**: when the verification record still vouches for the file (same size and mtime as when it was hashed,
   same checksums as the registry lists now), it is used as is: no lock, no hashing, no network.
2. **Locked**: otherwise take the file's inter-process lock (:mod:`ssdtool.download.locks`). Whoever waited
   re-checks first: the holder usually just installed the file.
3. **Existing**: a file at the final path without a usable record is re-hashed; a bad one is removed (the cache
   never keeps a file at its final path that failed verification).
4. **Sources**: try the mirror (``{mirror}/{model}/{file}``), then the registry's, each through its transport
   (:mod:`ssdtool.download.sources`), streaming into ``<file>.part`` and resuming an earlier part
   (:mod:`ssdtool.download.transfer`). Transient failures are retried with capped exponential backoff and jitter;
   wrong bytes move on to the next source at once.
5. **Install**: size and every checksum checked, fsync, ``os.replace`` to the final name, verification record.
"""

from __future__ import annotations

import logging
import os
import stat as stat_module
import threading
import time
from typing import Any

from ssdtool import fsutil
from ssdtool.cache import Cache
from ssdtool.constants import DownloadEventKind, FailureKind
from ssdtool.download import messages
from ssdtool.download.events import DownloadEvent, InstalledFile, ProgressCallback, SourceFailure
from ssdtool.download.locks import file_lock
from ssdtool.download.options import FetchOptions
from ssdtool.download.partfile import PartFile
from ssdtool.download.sources import AttemptFailed, Cancelled, is_local, source_for, source_urls
from ssdtool.download.transfer import TransferRules, describe_mismatch, hash_file, stream_to_part
from ssdtool.errors import CacheError
from ssdtool.redact import redact_text, redact_url
from ssdtool.registry import FileEntry, ModelEntry

log = logging.getLogger("ssdtool.download")


class SourceGaveUp(Exception):
    def __init__(self, failure: SourceFailure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


class FileFetcher:
    """Fetches one file: cached check, lock, existing file, sources with retries, install. ``options`` must be
    resolved (:meth:`FetchOptions.resolved`); ``progress`` receives events, ``cancel`` stops it between chunks."""

    def __init__(self, model: ModelEntry, file: FileEntry, cache: Cache, options: FetchOptions, *,
                 progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> None:
        self.model, self.file, self.cache, self.options = model, file, cache, options
        self.progress = progress or (lambda _event: None)
        self.cancel = cancel or threading.Event()
        self.final = cache.file_path(model, file)
        self.part = PartFile(cache.part_path(model, file), file, cache)
        self.transferred = 0
        self.started = time.monotonic()
        self._removed_reason: str | None = None

    def emit(self, event: DownloadEventKind, **fields: Any) -> None:
        self.progress(DownloadEvent(event, model=self.model.name, file=self.file.name, **fields))

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled

    # -- the flow ------------------------------------------------------------------------------------------------
    def run(self) -> InstalledFile:
        self.started = time.monotonic()
        if not self.options.force and (record := self.cache.recorded_verified(self.model, self.file)):
            log.debug("%s: verification record matches size and mtime; not re-hashing", self.final)
            return self._cached(record.checksums)
        self.cache.ensure_metadata_dir(self.model)
        with file_lock(self.cache, self.model, self.file, timeout=self.options.lock_timeout, emit=self.emit,
                       check_cancel=self.check_cancel):
            if self.options.force and not self.options.offline:
                self._discard_everything()
            elif found := self._existing(trust_record=not self.options.force):
                return found
            return self._download()

    def _download(self) -> InstalledFile:
        urls = source_urls(self.model, self.file, self.options.mirror)
        failures: list[SourceFailure] = []
        if self.options.offline:
            failures = [SourceFailure(redact_url(url), "not tried: offline mode", FailureKind.SKIPPED, 0)
                        for url in urls if not is_local(url)]
            urls = [url for url in urls if is_local(url)]
            if not urls:
                raise self._offline_error(failures)
        self.part.check()
        if (digests := self.part.complete_digests()) is not None:
            return self._install("partial download", digests, resumed_from=self.file.size)
        self.part.check_free_space()
        for url in urls:
            try:
                return self._from_source(url)
            except SourceGaveUp as gave_up:
                failures.append(gave_up.failure)
        if self.options.offline:
            raise self._offline_error(failures)
        raise messages.final_error(self.model, self.file, self.final, failures)

    def _from_source(self, url: str) -> InstalledFile:
        shown = redact_url(url)  # what events, messages and records say: never the credentials
        attempt, fresh_retry_used = 0, False
        rules = TransferRules(self.options.progress_interval, self.options.timeout, self.options.stall_bytes)
        source = None
        try:
            while True:
                attempt += 1
                self.check_cancel()
                try:
                    source = source or source_for(url, self.options, self.cancel)
                    body = source.open(url, self.part.resume_offset(), self.file)
                    try:
                        digests = stream_to_part(
                            self.part.path, body, self.file, rules, check_cancel=self.check_cancel,
                            emit=lambda kind, **fields: self.emit(kind, source=shown, **fields),
                            on_bytes=self._count)
                    finally:
                        body.close()
                    return self._install(shown, digests, resumed_from=body.start)
                except AttemptFailed as failed:
                    reason = redact_text(failed.reason)
                    if failed.fresh_retry and not fresh_retry_used:
                        fresh_retry_used, attempt = True, attempt - 1
                        self.emit(DownloadEventKind.SOURCE_FAILED, source=shown, reason=reason, kind=failed.kind,
                                  attempt=attempt + 1, retry_in=0.0)
                        continue
                    if failed.retryable and attempt <= self.options.retries:
                        delay = self.options.retry.delay(attempt, failed.retry_after)
                        log.debug("%s: %s; retry %d in %.2f s", shown, reason, attempt, delay)
                        self.emit(DownloadEventKind.SOURCE_FAILED, source=shown, reason=reason, kind=failed.kind,
                                  attempt=attempt, retry_in=round(delay, 3))
                        if self.cancel.wait(delay):
                            raise Cancelled from None
                        continue
                    self.emit(DownloadEventKind.SOURCE_FAILED, source=shown, reason=reason, kind=failed.kind,
                              attempt=attempt)
                    raise SourceGaveUp(SourceFailure(shown, reason, failed.kind, attempt)) from None
        finally:
            if source is not None:
                source.close()

    def _count(self, amount: int) -> None:
        self.transferred += amount

    # -- the file at its final path --------------------------------------------------------------------------
    def _cached(self, checksums: dict[str, str]) -> InstalledFile:
        result = InstalledFile(
            model=self.model.name, file=self.file.name, path=self.final, size=self.file.size,
            sha256=checksums.get("sha256"), sha384=checksums.get("sha384"), source="cache", bytes_transferred=0,
            seconds=round(time.monotonic() - self.started, 3), resumed=False, resumed_from=0, cached=True)
        self.emit(DownloadEventKind.VERIFIED, size=self.file.size, path=str(self.final), sha256=result.sha256,
                  cached=True, source="cache", bytes_transferred=0)
        return result

    def _existing(self, trust_record: bool) -> InstalledFile | None:
        """Use a file already at the final path when it verifies; remove it when it does not."""
        if trust_record and (record := self.cache.recorded_verified(self.model, self.file)):
            return self._cached(record.checksums)  # installed by the process we waited for
        self.cache.check_model_file(self.model, self.file)
        try:
            found = self.final.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheError(f"cannot access {self.final}: {exc.strerror or exc}") from exc
        if not stat_module.S_ISREG(found.st_mode) and not stat_module.S_ISLNK(os.lstat(self.final).st_mode):
            raise CacheError(f"refusing to use {self.final}: it is {fsutil.describe(found.st_mode)}, expected the "
                             "model file", hint=f"remove it (rm -r {self.final}) and run the command again")
        problem, digests = f"size mismatch: expected {self.file.size} bytes, got {found.st_size}", {}
        if found.st_size == self.file.size:
            try:
                size, digests = hash_file(self.final, self.file.checksums)
                problem = describe_mismatch(self.file, size, digests)
            except fsutil.UnsafePathError as exc:
                problem = f"not a regular file ({exc.reason})"
        if problem is None:
            self.cache.record_verified(self.model, self.file, digests, source="cache", mtime_ns=found.st_mtime_ns,
                                       required=False)
            return self._cached(digests)
        # The cache's promise is that a file at its final path is verified: a bad one goes, and is re-fetched.
        log.warning("removing %s: it failed verification (%s)", self.final, problem)
        self._removed_reason = problem
        self.cache.remove_record(self.model, self.file)
        self.cache.remove_file(self.final)
        return None

    def _discard_everything(self) -> None:
        self.cache.remove_record(self.model, self.file)
        self.cache.remove_file(self.final)
        self.part.remove()

    def _install(self, source: str, digests: dict[str, str], resumed_from: int) -> InstalledFile:
        """Atomically move the verified .part into place, then record the verification."""
        self.cache.remove_record(self.model, self.file)
        try:
            os.replace(self.part.path, self.final)
        except OSError as exc:
            raise CacheError(f"cannot move {self.part.path} to {self.final}: {exc}") from exc
        fsutil.fsync_folder(self.final.parent)
        self.cache.record_verified(self.model, self.file, digests, source=source,
                                   mtime_ns=self.final.stat().st_mtime_ns)
        result = InstalledFile(
            model=self.model.name, file=self.file.name, path=self.final, size=self.file.size,
            sha256=digests.get("sha256"), sha384=digests.get("sha384"), source=source,
            bytes_transferred=self.transferred, seconds=round(time.monotonic() - self.started, 3),
            resumed=resumed_from > 0, resumed_from=resumed_from, cached=False)
        self.emit(DownloadEventKind.VERIFIED, size=self.file.size, path=str(self.final), sha256=result.sha256,
                  cached=False, source=source, resumed=result.resumed, bytes_transferred=self.transferred,
                  seconds=result.seconds)
        return result

    def _offline_error(self, failures: list[SourceFailure]) -> Exception:
        return messages.offline_error(self.model, self.file, self.final, self.cache.model_dir(self.model), failures,
                                      self._removed_reason)

