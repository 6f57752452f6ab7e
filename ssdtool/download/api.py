"""The public calls: fetch models' files (several at a time), make sure one is there, verify and repair the cache."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

from ssdtool import fsutil
from ssdtool.cache import Cache
from ssdtool.constants import DownloadEventKind, VerifyStatus
from ssdtool.download.events import DownloadEvent, InstalledFile, ProgressCallback, VerifyResult
from ssdtool.download.fetcher import FileFetcher
from ssdtool.download.locks import file_lock
from ssdtool.download.options import FetchOptions
from ssdtool.download.sources import Cancelled
from ssdtool.download.transfer import describe_mismatch, hash_file
from ssdtool.errors import DownloadError, OfflineError, SsdtoolError, UsageError
from ssdtool.registry import FileEntry, ModelEntry


def _select_files(model: ModelEntry, files: Sequence[str] | None) -> list[FileEntry]:
    if files is None:
        return list(model.files)
    known = {f.name: f for f in model.files}
    unknown = [name for name in files if name not in known]
    if unknown:
        raise UsageError(f"model {model.name} has no file {', '.join(map(repr, unknown))}; its files: "
                         + ", ".join(known))
    return [known[name] for name in dict.fromkeys(files)]


def fetch_models(models: Sequence[ModelEntry], cache: Cache | None = None, options: FetchOptions | None = None, *,
                 files: Sequence[str] | None = None, progress: ProgressCallback | None = None
                 ) -> list[InstalledFile]:
    """Make every file of ``models`` (or just ``files``) present and verified in ``cache``, ``options.jobs`` files
    at a time (see :class:`FetchOptions`). ``progress`` receives :class:`DownloadEvent` objects, from worker
    threads when ``jobs`` > 1.

    A failing file does not stop the others; after all have run, the first failure is raised (its class gives the
    exit code: NetworkError, ChecksumError, OfflineError, LockTimeoutError, CacheError) with the messages of every
    failed file. KeyboardInterrupt leaves the ``.part`` files for a later resume.
    """
    cache = cache or Cache.at()
    options = (options or FetchOptions()).resolved()
    emit = progress or (lambda _event: None)
    cancel = threading.Event()
    fetchers = [FileFetcher(model, file, cache, options, progress=emit, cancel=cancel)
                for model in models for file in _select_files(model, files)]
    started = time.monotonic()
    results: list[InstalledFile | None] = [None] * len(fetchers)
    errors: list[BaseException | None] = [None] * len(fetchers)

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

    if options.jobs <= 1 or len(fetchers) <= 1:
        for index in range(len(fetchers)):
            one(index)
    else:
        _run_in_parallel(one, len(fetchers), options.jobs, cancel)
    interrupted = [e for e in errors if e is not None and not isinstance(e, Exception)]
    if interrupted:  # from a worker thread: re-raise here, as a KeyboardInterrupt the CLI maps to exit 130
        raise next((e for e in interrupted if not isinstance(e, Cancelled)), None) or KeyboardInterrupt()
    installed = [r for r in results if r is not None]
    failed = [e for e in errors if e is not None]
    emit(DownloadEvent(DownloadEventKind.DONE, files=len(installed), failed=len(failed),
                       bytes_transferred=sum(f.transferred for f in fetchers),
                       seconds=round(time.monotonic() - started, 3)))
    if failed:
        first = failed[0]
        if len(failed) == 1 or not isinstance(first, SsdtoolError):
            raise first
        message = f"{len(failed)} of {len(fetchers)} files failed:\n" + "\n".join(
            str(getattr(e, "message", e)) for e in failed)
        raise type(first)(message, hint=first.hint)
    return installed


def _run_in_parallel(one: Callable[[int], None], count: int, jobs: int, cancel: threading.Event) -> None:
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    executor = ThreadPoolExecutor(max_workers=min(jobs, count), thread_name_prefix="ssdtool-download")
    futures: list[Future[None]] = [executor.submit(one, index) for index in range(count)]
    try:
        pending = set(futures)
        while pending:  # short waits keep the main thread responsive to Ctrl-C
            _done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
    except BaseException:
        cancel.set()  # workers stop at their next chunk and leave their .part files for a resume
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def fetch(model: ModelEntry, cache: Cache | None = None, options: FetchOptions | None = None, *,
          files: Sequence[str] | None = None, progress: ProgressCallback | None = None) -> list[InstalledFile]:
    """Make every file of ``model`` (or just ``files``) present and verified in ``cache``; see :func:`fetch_models`."""
    return fetch_models([model], cache, options, files=files, progress=progress)


def ensure_downloaded(model: ModelEntry, cache: Cache | None = None, options: FetchOptions | None = None, *,
                      progress: ProgressCallback | None = None) -> Path:
    """The verified path of the model's primary file, fetching the model's files first when needed.

    Costs a stat and a small JSON read when the file is already verified (no lock, no network library imported).
    """
    cache = cache or Cache.at()
    fetch(model, cache, options, progress=progress)
    return cache.file_path(model, model.primary_file)


def source_model(entry: ModelEntry, cache: Cache, *, offline: bool | None = None,
                 progress: Callable[[DownloadEvent], None] | None = None) -> Path:
    """The verified source ONNX of ``entry``, downloaded first when needed (``offline``: None reads
    ``$SSDTOOL_OFFLINE``), for the commands that need it on the way (convert, and detect on onnxruntime): an
    offline miss says how to bring the file here."""
    try:
        return ensure_downloaded(entry, cache, FetchOptions(offline=offline), progress=progress)
    except OfflineError as exc:
        raise OfflineError(exc.message, hint=f"run 'ssdtool download {entry.name}' on a machine with network access "
                                             "and copy the cache here, or drop --offline") from exc


def verify(model: ModelEntry, cache: Cache | None = None, options: FetchOptions | None = None, *,
           files: Sequence[str] | None = None, repair: bool = False, progress: ProgressCallback | None = None
           ) -> list[VerifyResult]:
    """Re-hash the cached files of ``model`` against the registry, ignoring verification records.

    Good files get a fresh record. Without ``repair`` nothing else changes (a bad file stays for inspection; only
    its record is removed, so no later run trusts it). With ``repair`` bad and missing files are fetched again
    with ``options``; the result says ``repaired`` or carries ``repair_error``.
    """
    cache = cache or Cache.at()
    options = options or FetchOptions()
    results: list[VerifyResult] = []
    for file in _select_files(model, files):
        result = _verify_one(model, file, cache, options.lock_timeout)
        if not result.ok and repair:
            try:
                fetched = fetch(model, cache, options, files=[file.name], progress=progress)[0]
            except DownloadError as exc:
                result = VerifyResult(**{**result.__dict__, "repair_error": exc.message})
            else:
                actual = {algo: digest for algo, digest in (("sha256", fetched.sha256), ("sha384", fetched.sha384))
                          if digest}
                result = VerifyResult(**{**result.__dict__, "status": VerifyStatus.REPAIRED, "actual": actual,
                                         "actual_size": fetched.size,
                                         "detail": f"re-downloaded from {fetched.source} ({result.detail})"})
        results.append(result)
    return results


def _verify_one(model: ModelEntry, file: FileEntry, cache: Cache, lock_timeout: float) -> VerifyResult:
    path = cache.check_model_file(model, file)
    base = {"model": model.name, "file": file.name, "path": path, "expected_size": file.size,
            "expected": file.checksums}
    missing = VerifyResult(**base, status=VerifyStatus.MISSING, actual_size=None, actual={}, detail="not downloaded")
    if not os.path.exists(path):
        part = cache.part_path(model, file)
        if os.path.lexists(part):
            return VerifyResult(**base, status=VerifyStatus.PARTIAL, actual_size=None, actual={},
                                detail=f"interrupted download: {os.lstat(part).st_size} of {file.size} bytes in "
                                       f"{part}; 'ssdtool download' resumes it")
        return missing
    # Hash under the download lock, so a concurrent download or repair cannot swap the file mid-read.
    cache.ensure_metadata_dir(model)
    with file_lock(cache, model, file, timeout=lock_timeout):
        try:
            mtime_ns = path.stat().st_mtime_ns
        except FileNotFoundError:
            return missing
        try:
            size, digests = hash_file(path, file.checksums)
        except fsutil.UnsafePathError as exc:
            with contextlib.suppress(OSError):
                cache.remove_record(model, file)
            return VerifyResult(**base, status=VerifyStatus.BAD_SIZE, actual_size=None, actual={},
                                detail=f"not a regular file: {exc.reason}")
        problem = describe_mismatch(file, size, digests)
        if problem is None:
            cache.record_verified(model, file, digests, source="verify", mtime_ns=mtime_ns, required=False)
            return VerifyResult(**base, status=VerifyStatus.OK, actual_size=size, actual=digests, detail="verified")
        with contextlib.suppress(OSError):
            cache.remove_record(model, file)
    status = VerifyStatus.BAD_SIZE if size != file.size else VerifyStatus.BAD_CHECKSUM
    return VerifyResult(**base, status=status, actual_size=size, actual=digests, detail=problem)
