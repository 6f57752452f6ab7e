"""Filesystem safety in one place: no planted link is followed, no half file is left, no device or input replaced.

Caches are shared between jobs and users, often with root among them, so anyone who can write the cache folder
could plant a symbolic link where ssdtool expects its own file, hoping that a root job writes through it. The
rules, used by the cache, downloads, conversion and ``detect --output``:

* ssdtool's own files in the cache (partial downloads, verification records, lock owner notes, locks) are opened
  with ``O_NOFOLLOW`` and must be regular files; a link or a device there is refused (:class:`UnsafePathError`).
* Folders below the cache root (model folders, ``.ssdtool``, IR folders, temporary folders) must be real
  folders, checked with ``lstat`` on every component below the root; the root itself may be a link (moving a
  cache to a bigger disk with ``ln -s`` is common and the link is the owner's).
* A finished file appears only through :func:`atomic_write`: a new temporary file in the same folder (created
  with ``O_EXCL``, so never through a link), written, fsynced and renamed over the final name. A rename replaces
  a link at the final name itself, never the link's target.
* :class:`OutputFile` writes a user's ``--output``: a device or FIFO is written to (never replaced), an input is
  never overwritten, anything else is replaced atomically.

What this cannot do: a process that can write the cache and swaps a checked folder for a link in the instant
between the check and the use wins that race. Such a user can also replace every cached file; see the
"Security model" section of docs/download.md for what a shared cache does and does not protect against.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from ssdtool.errors import UsageError

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
O_BINARY = getattr(os, "O_BINARY", 0)


class UnsafePathError(OSError):
    """A path ssdtool refuses to use: a symbolic link, or not the kind of file it expected there.

    An ``OSError`` (errno ``ELOOP``), so code that already treats an unreadable cache file as absent does the same
    for a refused one; callers that must fail wrap it in a :class:`~ssdtool.errors.CacheError`.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(errno.ELOOP, reason, os.fspath(path))
        self.path = os.fspath(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"refusing to use {self.path}: {self.reason}"


def describe(mode: int, path: str | os.PathLike[str] | None = None) -> str:
    """What kind of file ``mode`` (from ``lstat``) is, for messages: "a symbolic link (to /x)", "a FIFO", ..."""
    if stat.S_ISLNK(mode):
        target = ""
        if path is not None:
            with contextlib.suppress(OSError):
                target = f" (to {os.readlink(path)})"
        return f"a symbolic link{target}"
    kinds = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))
    return next((text for test, text in kinds if test(mode)), "a special file")


def _refuse_link(path: Path) -> UnsafePathError:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        mode = stat.S_IFLNK
    return UnsafePathError(path, f"it is {describe(mode, path)}; ssdtool never follows links or opens special "
                                 "files for its own files in the cache")


def open_regular(path: str | os.PathLike[str], flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
    """``os.open`` that never follows a link at ``path`` and only ever returns a regular file.

    ``O_NONBLOCK`` during the open keeps a FIFO planted at ``path`` from blocking; it is cleared again for the
    regular file. New files get ``mode`` minus the umask, as with any ``open``.
    """
    path = Path(path)
    try:
        descriptor = os.open(path, flags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_BINARY, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO) or (
                exc.errno == errno.EEXIST and os.path.islink(path)):
            raise _refuse_link(path) from None
        raise
    return _regular_only(descriptor, path)


def _regular_only(descriptor: int, path: str | os.PathLike[str]) -> int:
    """``descriptor`` when it is a regular file (made blocking again: it was opened non-blocking so that a FIFO
    could not hang the open); closed, with :class:`UnsafePathError`, otherwise."""
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePathError(path, f"it is {describe(info.st_mode)}, expected a regular file")
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def read_regular(path: str | os.PathLike[str], limit: int, *, follow_links: bool = False) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    Raises :class:`UnsafePathError` for a link (unless ``follow_links``, for files a user named) or a device, FIFO
    or folder, and ``ValueError`` when the file is larger than ``limit``: a size cap, so ``/dev/zero`` or a huge
    file never fills memory.
    """
    path = Path(path)
    if follow_links:
        descriptor = _regular_only(os.open(path, os.O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_BINARY), path)
    else:
        descriptor = open_regular(path)
    with os.fdopen(descriptor, "rb") as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data


def check_folder(path: Path, root: Path) -> bool:
    """Whether ``path`` (``root`` or below it) exists as a real folder; raises for a link or a file on the way.

    Every component between ``root`` (exclusive) and ``path`` (inclusive) is checked with ``lstat``.
    """
    if not os.path.isdir(root):
        return False
    for component in _components(path, root):
        try:
            mode = os.lstat(component).st_mode
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(mode):
            raise UnsafePathError(component, f"it is {describe(mode, component)}, expected a folder")
    return True


def ensure_folder(path: Path, root: Path) -> Path:
    """Make ``path`` (below ``root``) a real folder, creating what is missing; raises for a link or a file there.

    ``root`` is created when missing (with its parents: it is the user's choice of cache). New folders get the
    umask's permissions.
    """
    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True)
    for component in _components(path, root):
        try:
            os.mkdir(component, 0o777)
            continue
        except FileExistsError:
            pass
        mode = os.lstat(component).st_mode
        if not stat.S_ISDIR(mode):
            raise UnsafePathError(component, f"it is {describe(mode, component)}, expected a folder")
    return path


def _components(path: Path, root: Path) -> Iterator[Path]:
    relative = path.relative_to(root)  # ValueError for a path outside root: a programming error
    current = root
    for part in relative.parts:
        current = current / part
        yield current


def atomic_write(path: Path, data: bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``data`` (bytes, or a function that writes to the stream it is given) to ``path`` through a new
    temporary file in the same folder, fsynced, then renamed.

    A reader sees the old content or the new, never half of it; a link at ``path`` is replaced, not followed.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    descriptor = open_regular(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            if isinstance(data, bytes):
                stream.write(data)
            else:
                data(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def fsync_folder(path: Path) -> None:
    """Make a rename inside ``path`` durable; not possible on every platform or filesystem, and then skipped."""
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def make_temporary_folder(parent: Path, prefix: str) -> Path:
    """A new, empty folder ``parent/<prefix><random>`` with the umask's permissions (``mkdtemp`` makes 0700).

    ``mkdir`` fails on any existing name, a planted link included, so the folder is always a new one.
    """
    for _attempt in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(candidate, 0o777)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(errno.EEXIST, "no free temporary folder name", str(parent / prefix))


def remove_tree(path: Path) -> None:
    """Remove a folder and its contents, or just the link or file when ``path`` is one (never a link's target)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)  # fd-based on Linux: links inside are removed, not followed (avoids_symlink_attacks)
    else:
        os.unlink(path)


def safe_lock_path(path: Path) -> Path:
    """Create the lock file ``path`` if needed, refusing a link or special file there; returns ``path``.

    filelock (>= 3.20.1) opens lock files with ``O_NOFOLLOW`` too; checking here keeps older versions from
    truncating a link's target, and gives a clear error instead of a failed lock.
    """
    os.close(open_regular(path, os.O_RDONLY | os.O_CREAT))
    return path


# --------------------------------------------------------------------------------------------------------------
# Output files named by users


class OutputFile:
    """A results file named by a user (``detect --output``): written whole or not at all, never over an input.

    * A regular file (or nothing) at ``path``: written to a temporary file in the same folder and renamed into
      place by :meth:`commit`; :meth:`abort` leaves an earlier file as it was. A link at ``path`` is replaced by
      the new file; its target is left alone.
    * A character device or a FIFO at ``path`` (directly or through a link, e.g. ``/dev/stdout``): written to as
      a stream, never replaced.
    * A folder, block device or socket, a missing folder, or ``path`` naming one of ``inputs``: refused with a
      :class:`~ssdtool.errors.UsageError` before anything is written. So is a failed write.
    """

    def __init__(self, path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = ()) -> None:
        self.path = Path(path)
        self._temporary: Path | None = None
        self.streaming = False
        try:
            target = os.stat(self.path)  # follows links: what a write would reach
        except FileNotFoundError:
            target = None
        except OSError as exc:
            raise UsageError(f"cannot write the results to {self.path}: {exc.strerror or exc}",
                             hint="choose another --output FILE") from None
        if target is not None and (stat.S_ISCHR(target.st_mode) or stat.S_ISFIFO(target.st_mode)):
            self.streaming = True
            self.handle = self._open_stream()
            return
        if target is not None and not stat.S_ISREG(target.st_mode):
            raise UsageError(f"cannot write the results to {self.path}: it is {describe(target.st_mode)}",
                             hint="--output takes a file name (or a device or pipe to stream to)")
        if target is not None:
            for source in inputs:
                with contextlib.suppress(OSError):
                    if os.path.samefile(source, self.path):
                        raise UsageError(f"refusing to write the results to {self.path}: it is one of the input "
                                         "images, and --output never overwrites an input",
                                         hint="choose another --output FILE")
        folder = self.path.parent
        if not folder.is_dir():
            raise UsageError(f"cannot write {self.path}: folder {folder} does not exist",
                             hint="create the folder first")
        name = f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            descriptor = open_regular(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except OSError as exc:
            raise UsageError(f"cannot write the results to {self.path}: {exc.strerror or exc}",
                             hint="choose another --output FILE in a folder you can write") from None
        self._temporary = folder / name
        self.handle = os.fdopen(descriptor, "w", encoding="utf-8")

    def _open_stream(self) -> IO[str]:
        try:
            # No O_CREAT or O_TRUNC: the device or FIFO is there, and it is written to as it is.
            descriptor = os.open(self.path, os.O_WRONLY | O_CLOEXEC)
        except OSError as exc:
            raise UsageError(f"cannot write the results to {self.path}: {exc.strerror or exc}",
                             hint="choose another --output FILE") from None
        return os.fdopen(descriptor, "w", encoding="utf-8")

    def write(self, text: str) -> None:
        try:
            self.handle.write(text)
        except OSError as exc:
            raise self._write_failed(exc) from None

    def commit(self) -> None:
        """Finish: flush a stream, or fsync and rename the temporary file into place."""
        try:
            self.handle.flush()
            if self._temporary is not None:
                os.fsync(self.handle.fileno())
            self.handle.close()
            if self._temporary is not None:
                os.replace(self._temporary, self.path)
                self._temporary = None
        except OSError as exc:
            raise self._write_failed(exc) from None
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop what was written (a stream keeps what it already sent); idempotent."""
        with contextlib.suppress(OSError):
            self.handle.close()
        if self._temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._temporary)
            self._temporary = None

    def _write_failed(self, exc: OSError) -> UsageError:
        self.abort()
        return UsageError(f"cannot write the results to {self.path}: {exc.strerror or exc}",
                          hint="free some space or choose another --output FILE")


def replace_refusal(path: str | os.PathLike[str],
                    inputs: Iterable[tuple[str | os.PathLike[str], str]] = ()) -> str | None:
    """Why a finished file must not be renamed onto ``path``, or None when it may be.

    It may when nothing is there, or a regular file that is none of ``inputs`` (pairs of a path and what it is,
    e.g. ``(conf, "the --user-conf file")``; compared by device and inode, so a hard link or another spelling of
    an input counts). A symbolic link, folder, device, FIFO or socket is refused: a rename would replace the link
    itself or fail on a folder, and a device or FIFO is never replaced. Checks only; writes nothing.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"it cannot be checked ({exc.strerror or exc})"
    if not stat.S_ISREG(info.st_mode):
        return f"it is {describe(info.st_mode, path)}"
    for source, what in inputs:
        with contextlib.suppress(OSError):
            other = os.stat(source)
            if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
                return f"it is {what} ({os.fspath(source)}), an input of this run"
    return None
