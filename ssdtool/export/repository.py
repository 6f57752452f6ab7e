"""A model repository on disk: ``ROOT/<model>/<version>/`` folders, written the safe way.

* ``ROOT`` (``--output-dir``) must be a real folder: a symbolic link or a file there is refused, so an export never
  writes through a planted link. Model folders below it are checked the same way (:func:`ssdtool.fsutil.ensure_folder`).
* One writer at a time per repository: an inter-process lock on ``ROOT/.ssdtool-export.lock`` (an OS lock, released
  when its holder dies); a second exporter waits, and gives up after ``timeout`` seconds.
* A version appears whole or not at all: its files are copied into a temporary folder beside it, fsynced, hashed
  again and compared, then the folder is renamed into place. Servers that poll the repository (OVMS, Triton)
  never load half a version. A replaced version (``--force``) is renamed away first and removed afterwards.
* Configuration files (``config.json``, ``config.pbtxt``, the KServe manifest) are written by
  :func:`ssdtool.fsutil.atomic_write`. Those read back are read only as regular files (a link there is refused,
  never followed); a folder or special file where one is to be written is refused before anything is written
  (:meth:`Repository.check_replaceable`).
* Nothing is created by :meth:`Repository.open`: the folder and the lock file appear only once every check has
  passed (:meth:`Repository.create`), so a refused export leaves the file system as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ssdtool import fsutil
from ssdtool.errors import CacheError, LockTimeoutError, UsageError
from ssdtool.export.options import FIRST_VERSION, MAX_VERSION
from ssdtool.staging import install_folder, remove_leftovers, temporary_prefix

LOCK_NAME = ".ssdtool-export.lock"
#: A version folder's name: ASCII digits, no leading zero (str.isdigit would take "²" and "٣" too).
VERSION_NAME = re.compile(r"0|[1-9][0-9]*", re.ASCII)
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
    def open(cls, root: str | os.PathLike[str]) -> Repository:
        """The repository at ``root``: a folder, or nothing yet (:meth:`create` makes it); a link, file or special
        file there is refused. Creates nothing, so a refused export leaves no trace."""
        path = Path(root)
        mode = cls._mode(path)
        if mode is not None and not stat.S_ISDIR(mode):
            raise UsageError(f"refusing --output-dir {path}: it is {fsutil.describe(mode, path)}, expected a folder "
                             "(an export never writes through a link or over a file)",
                             hint="pass the real folder (or a new name) as --output-dir")
        return cls(path)

    @staticmethod
    def _mode(path: Path) -> int | None:
        try:
            return os.lstat(path).st_mode
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UsageError(f"cannot use --output-dir {path}: {exc.strerror or exc}",
                             hint="pass a folder you can write (it is created when missing)") from None

    def create(self) -> None:
        """Make the repository's folder when it is missing (checked again: another exporter may have made it)."""
        try:
            self.root.mkdir(parents=True)
        except FileExistsError:
            self.open(self.root)
        except OSError as exc:
            raise UsageError(f"cannot create --output-dir {self.root}: {exc.strerror or exc}",
                             hint="pass a folder you can write") from None

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

    def check_model_dir(self, name: str) -> None:
        """Refuse a link, file or special file at ``ROOT/<name>`` (nothing there is fine)."""
        path = self.root / name
        try:
            fsutil.check_folder(path, self.root)
        except fsutil.UnsafePathError as exc:
            raise UsageError(f"refusing to export into {path}: {exc.reason}",
                             hint=f"remove {path}, or pass another --output-dir") from None

    def versions(self, name: str) -> list[int]:
        """The version numbers present in ``ROOT/<name>``, ascending: names of ASCII digits without a leading zero
        (``²`` is a digit to Python, not to a server) and at most :data:`MAX_VERSION`; anything else is not a
        version to a server either, and is left alone."""
        try:
            names = os.listdir(self.root / name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise UsageError(f"cannot list {self.root / name}: {exc.strerror or exc}",
                             hint="pass a folder you can read as --output-dir") from None
        numbers = (int(n) for n in names if VERSION_NAME.fullmatch(n) and len(n) <= len(str(MAX_VERSION)))
        return sorted(n for n in numbers if n <= MAX_VERSION)

    def choose_version(self, name: str, version: int | None, force: bool) -> tuple[int, bool]:
        """The version to write and whether it replaces one: ``version`` when given (existing: only with
        ``force``), else the latest with ``force``, else the one after the latest. ``version`` was checked
        (:func:`ssdtool.export.options.check_version`)."""
        present = self.versions(name)
        if version is not None:
            if version in present and not force:
                raise UsageError(f"version {version} of {name} already exists in {self.root}; an export never "
                                 "overwrites a version",
                                 hint=f"pass --force to replace it, or drop --version to add version "
                                      f"{min(max(present) + 1, MAX_VERSION)}")
            return version, version in present
        if force and present:
            return present[-1], True
        if present and present[-1] >= MAX_VERSION:
            raise UsageError(f"version {present[-1]} of {name} in {self.root} is the largest a server reads; there is "
                             "no next version", hint="pass --version N (with --force to replace one)")
        return (present[-1] + 1 if present else FIRST_VERSION), False

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
        """A configuration file of the repository, or None when there is none; a link, folder or special file
        there is refused (a link is never followed)."""
        path = self.root / relative
        try:
            return fsutil.read_regular(path, CONFIG_LIMIT).decode("utf-8")
        except FileNotFoundError:
            return None
        except fsutil.UnsafePathError:
            raise self._refusal("read", path) from None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {path}: {exc}",
                             hint=f"fix or remove {path}, or pass another --output-dir") from None

    def check_replaceable(self, relative: str) -> None:
        """Refuse, before anything is written, a folder or special file where a configuration file is to be
        written (a regular file is replaced; so is a link, never followed)."""
        path = self.root / relative
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise UsageError(f"cannot use {path}: {exc.strerror or exc}", hint="pass another --output-dir") from None
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise self._refusal("replace", path, mode)

    @staticmethod
    def _refusal(action: str, path: Path, mode: int | None = None) -> UsageError:
        if mode is None:
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                mode = stat.S_IFLNK
        if stat.S_ISLNK(mode):
            return UsageError(f"refusing to {action} {path}: it is {fsutil.describe(mode, path)}; an export reads "
                              "and writes only real files in its repository, never through a link",
                              hint=f"put the file itself at {path} (or remove the link), or pass another --output-dir")
        return UsageError(f"refusing to {action} {path}: it is {fsutil.describe(mode, path)}, expected a regular file",
                          hint=f"remove {path}, or pass another --output-dir")

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
