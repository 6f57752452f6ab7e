"""Where a conversion writes: its lock, temporary folders beside the destination, cleaning what a killed
conversion left, and installing by rename (a whole folder, or just the two IR files in a user's --output-dir)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ssdtool import fsutil
from ssdtool.cache import Cache
from ssdtool.convert.graph import write_failure
from ssdtool.convert.options import ConvertOptions
from ssdtool.errors import CacheError, LockTimeoutError, UsageError
from ssdtool.registry import ModelEntry
from ssdtool.staging import install_folder, remove_leftovers, temporary_prefix

log = logging.getLogger("ssdtool.convert")

LOCK_TIMEOUT_SECONDS = 600.0

def staging_folder(xml: Path, options: ConvertOptions) -> tuple[Path, str]:
    """Where a conversion's temporary folders go, and the target name in their names.

    In the cache: beside the IR's folder, which is then swapped whole. In a user's --output-dir: inside that
    folder, because only its two IR files are replaced, and it may be a mount point (a container volume), where a
    rename from its parent would cross file systems.
    """
    if options.output_dir is None:
        return xml.parent.parent, xml.parent.name
    return xml.parent, xml.stem


def _prepare_target(cache: Cache, options: ConvertOptions, xml: Path) -> None:
    """Make the folders a conversion writes into: real folders in the cache, or the user's --output-dir."""
    if options.output_dir is None:
        cache.make_folder(xml.parent.parent)
        return
    try:
        xml.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot use --output-dir {xml.parent}: {exc.strerror or exc}",
                         hint="pass a folder you can write (it is created when missing)") from None


def _install_files(temporary: Path, xml: Path) -> None:
    """For --output-dir: a user's folder may hold other files, so only the IR's two files are replaced."""
    xml.parent.mkdir(parents=True, exist_ok=True)
    # .bin first: an .xml never points at a missing or older .bin for longer than one rename.
    os.replace(temporary / xml.with_suffix(".bin").name, xml.with_suffix(".bin"))
    os.replace(temporary / xml.name, xml)


def _lock(cache: Cache, entry: ModelEntry, xml: Path) -> tuple[Any, Path]:
    """The inter-process lock of the conversion target of ``xml`` (one converter per destination folder)."""
    from filelock import FileLock

    target_key = hashlib.sha256(str(xml.parent.resolve()).encode()).hexdigest()[:16]
    lock_path = cache.metadata_dir(entry) / f"convert-{target_key}.lock"
    cache.make_folder(lock_path.parent)
    return FileLock(str(fsutil.safe_lock_path(lock_path))), lock_path


@contextlib.contextmanager
def conversion_lock(cache: Cache, entry: ModelEntry, options: ConvertOptions, xml: Path) -> Iterator[None]:
    """Hold the lock of the conversion target of ``xml`` (one converter per destination folder, across processes),
    after making its folders; leftovers of conversions that died are removed under it."""
    from filelock import Timeout

    _prepare_target(cache, options, xml)
    lock_path = cache.metadata_dir(entry)
    try:
        lock, lock_path = _lock(cache, entry, xml)
        lock.acquire(timeout=LOCK_TIMEOUT_SECONDS)
    except Timeout:
        raise LockTimeoutError(f"another ssdtool process has been converting into {xml.parent} for over "
                               f"{LOCK_TIMEOUT_SECONDS:.0f} s (lock file {lock_path})",
                               hint="wait for it to finish, or stop it and run the command again") from None
    except OSError as exc:
        raise CacheError(f"cannot take the conversion lock {lock_path}: {exc}",
                         hint="pass a writable --cache-dir or set SSDTOOL_HOME") from exc
    try:
        remove_leftovers(*staging_folder(xml, options))
        yield
    finally:
        lock.release()


def sweep_leftovers(cache: Cache, entry: ModelEntry, options: ConvertOptions, xml: Path) -> None:
    """On the up-to-date path: remove what a killed conversion into ``xml``'s folder left, if the lock is free
    right now. Never waits (a live converter holds it and cleans up itself) and never fails: a read-only cache
    has nothing to sweep that this process could remove."""
    from filelock import Timeout

    parent, target = staging_folder(xml, options)
    if not any(name.startswith((".tmp-", ".old-")) for name in _names(parent)):
        return
    try:
        lock, _ = _lock(cache, entry, xml)
        lock.acquire(timeout=0)
    except (Timeout, OSError, CacheError):
        return
    try:
        remove_leftovers(parent, target)
    finally:
        lock.release()


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


@contextlib.contextmanager
def temporary_folders(xml: Path, options: ConvertOptions) -> Iterator[Callable[[], Path]]:
    """``new()`` makes a fresh temporary folder in :func:`staging_folder`; all of them are removed at the end
    (whatever was installed from one has been renamed away by then)."""
    made: list[Path] = []
    parent, target = staging_folder(xml, options)

    def new() -> Path:
        try:
            folder = fsutil.make_temporary_folder(parent, temporary_prefix(target))
        except OSError as exc:
            raise write_failure(parent, exc) from exc
        made.append(folder)
        return folder

    try:
        yield new
    finally:
        for folder in made:
            with contextlib.suppress(OSError):
                fsutil.remove_tree(folder)


def install(temporary: Path, xml: Path, options: ConvertOptions) -> None:
    """Put the verified IR in ``temporary`` in place at ``xml``: the whole folder in the cache, or only the two IR
    files in a user's --output-dir (which may hold other files)."""
    try:
        if options.output_dir is None:
            install_folder(temporary, xml.parent)
        else:
            _install_files(temporary, xml)
    except OSError as exc:
        raise write_failure(xml.parent, exc) from exc
