"""A model repository on disk: ``ROOT/<model>/<version>/`` folders, written the safe way.

* ``ROOT`` (``--output-dir``) must be a real folder: a symbolic link or a file there is refused, so an export never
  writes through a planted link. Model folders below it are checked the same way (:func:`ssdtool.fsutil.ensure_folder`).
* One writer at a time per repository: an inter-process lock on ``ROOT/.ssdtool-export.lock`` (an OS lock, released
  when its holder dies); a second exporter waits, and gives up after ``timeout`` seconds.
* A version appears whole or not at all: its files are copied into a temporary folder beside it, fsynced, hashed
  again and compared, then the folder is renamed into place. Servers that poll the repository (OVMS, Triton)
  never load half a version. A replaced version (``--force``) is renamed away first and removed afterwards.
* Configuration files (``config.json``, ``config.pbtxt``, the KServe manifest) are written by
  :func:`ssdtool.fsutil.atomic_write`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ssdtool import fsutil
from ssdtool.convert.workspace import install_folder, remove_leftovers, temporary_prefix
from ssdtool.errors import CacheError, LockTimeoutError, UsageError

LOCK_NAME = ".ssdtool-export.lock"
#: The largest configuration file read back (config.json of a big repository is a few KiB).
CONFIG_LIMIT = 16 << 20
_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(fsutil.open_regular(path), "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy(source: Path, destination: Path) -> str:
    """Copy ``source`` to the new file ``destination`` (fsynced); the sha256 of the bytes read."""
    digest = hashlib.sha256()
    descriptor = fsutil.open_regular(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with open(source, "rb") as reader, os.fdopen(descriptor, "wb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return digest.hexdigest()


@dataclass(frozen=True)
class InstalledVersion:
    """A version folder put in place: its path, whether it replaced one, and the sha256 of each file."""

    path: Path
    version: int
    replaced: bool
    sha256: dict[str, str]


class Repository:
    """The folder an export writes into; see the module docstring for the rules."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def prepare(cls, root: str | os.PathLike[str]) -> Repository:
        """The repository at ``root``, created when missing; a link, file or special file there is refused."""
        path = Path(root)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        except OSError as exc:
            raise UsageError(f"cannot use --output-dir {path}: {exc.strerror or exc}",
                             hint="pass a folder you can write (it is created when missing)") from None
        if mode is not None and not stat.S_ISDIR(mode):
            raise UsageError(f"refusing --output-dir {path}: it is {fsutil.describe(mode, path)}, expected a folder "
                             "(an export never writes through a link or over a file)",
                             hint="pass the real folder (or a new name) as --output-dir")
        if mode is None:
            try:
                path.mkdir(parents=True)
            except FileExistsError:  # made meanwhile by another exporter: check it again
                return cls.prepare(path)
            except OSError as exc:
                raise UsageError(f"cannot create --output-dir {path}: {exc.strerror or exc}",
                                 hint="pass a folder you can write") from None
        return cls(path)

    # ------------------------------------------------------------------------------------------------ locking
    @contextlib.contextmanager
    def lock(self, timeout: float) -> Iterator[None]:
        """Hold the repository's writer lock; :class:`LockTimeoutError` after ``timeout`` seconds of waiting."""
        from filelock import FileLock, Timeout

        lock_path = self.root / LOCK_NAME
        try:
            lock = FileLock(str(fsutil.safe_lock_path(lock_path)))
            lock.acquire(timeout=timeout)
        except Timeout:
            raise LockTimeoutError(f"another ssdtool export has been writing into {self.root} for over {timeout:g} s "
                                   f"(lock file {lock_path})",
                                   hint="wait for it to finish, or wait longer with --lock-timeout SECONDS") from None
        except OSError as exc:
            raise UsageError(f"cannot lock {lock_path}: {exc}",
                             hint=f"remove {lock_path} if it is a link or special file, and pass a folder you can "
                                  "write as --output-dir") from None
        try:
            yield
        finally:
            lock.release()

    # ------------------------------------------------------------------------------------------------ folders
    def model_dir(self, name: str) -> Path:
        """``ROOT/<name>``, made a real folder (a link or file there is refused)."""
        path = self.root / name
        try:
            return fsutil.ensure_folder(path, self.root)
        except fsutil.UnsafePathError as exc:
            raise UsageError(f"refusing to export into {path}: {exc.reason}",
                             hint=f"remove {path}, or pass another --output-dir") from None
        except OSError as exc:
            raise UsageError(f"cannot create {path}: {exc.strerror or exc}", hint="pass another --output-dir") from None

    def versions(self, name: str) -> list[int]:
        """The version numbers present in ``ROOT/<name>`` (folder names of digits only), ascending."""
        try:
            names = os.listdir(self.root / name)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit() and n == str(int(n)))

    def choose_version(self, name: str, version: int | None, force: bool) -> tuple[int, bool]:
        """The version to write and whether it replaces one: ``version`` when given (existing: only with
        ``force``), else the latest with ``force``, else the one after the latest."""
        present = self.versions(name)
        if version is not None:
            if version < 1:
                raise UsageError(f"--version must be 1 or more, got {version}", hint="pass --version N with N >= 1")
            if version in present and not force:
                raise UsageError(f"version {version} of {name} already exists in {self.root}; an export never "
                                 "overwrites a version",
                                 hint=f"pass --force to replace it, or drop --version to add version "
                                      f"{max(present) + 1}")
            return version, version in present
        if force and present:
            return present[-1], True
        return (present[-1] + 1 if present else 1), False

    def install_version(self, name: str, version: int, files: Mapping[str, Path],
                        expected: Mapping[str, str] | None = None) -> InstalledVersion:
        """Copy ``files`` (final name -> source) into ``ROOT/<name>/<version>/`` through a temporary folder,
        verified (re-hashed, and equal to ``expected`` digests where given) before it is renamed into place."""
        parent = self.model_dir(name)
        target = str(version)
        remove_leftovers(parent, target)
        destination = parent / target
        replaced = os.path.lexists(destination)
        temporary = fsutil.make_temporary_folder(parent, temporary_prefix(target))
        try:
            digests = {final: _copy(source, temporary / final) for final, source in files.items()}
            for final, digest in digests.items():
                if _sha256(temporary / final) != digest:
                    raise CacheError(f"the copy of {files[final]} in {temporary} does not read back as written; "
                                     "nothing was installed", hint="check the disk, and run the command again")
                wanted = (expected or {}).get(final)
                if wanted is not None and wanted != digest:
                    raise CacheError(f"{files[final]} does not have the sha256 its provenance records (the cached IR "
                                     "changed after conversion); nothing was installed",
                                     hint="rebuild it with 'ssdtool convert --force' and export again")
            fsutil.fsync_folder(temporary)
            install_folder(temporary, destination)
            fsutil.fsync_folder(parent)
        except OSError as exc:
            raise CacheError(f"cannot write version {version} into {parent}: {exc.strerror or exc}; nothing was "
                             "installed", hint="free some space there, or pass another --output-dir") from None
        finally:
            with contextlib.suppress(OSError):
                fsutil.remove_tree(temporary)
        return InstalledVersion(destination, version, replaced, digests)

    # ------------------------------------------------------------------------------------------------ files
    def read_text(self, relative: str) -> str | None:
        """A configuration file of the repository, or None when there is none; a link there is refused."""
        path = self.root / relative
        try:
            return fsutil.read_regular(path, CONFIG_LIMIT).decode("utf-8")
        except FileNotFoundError:
            return None
        except fsutil.UnsafePathError as exc:
            raise UsageError(f"refusing to read {path}: {exc.reason}", hint=f"remove {path}; the export rewrites it"
                             ) from None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {path}: {exc}", hint=f"remove {path}; the export rewrites it") from None

    def write_text(self, relative: str, text: str) -> Path:
        """Write a configuration file atomically (a link at its name is replaced, never followed)."""
        path = self.root / relative
        try:
            fsutil.atomic_write(path, text.encode("utf-8"))
        except OSError as exc:
            raise CacheError(f"cannot write {path}: {exc.strerror or exc}",
                             hint="free some space there, or pass another --output-dir") from None
        return path


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
