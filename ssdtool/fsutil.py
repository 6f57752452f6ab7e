"""Filesystem safety in one place: no planted link is followed, no half file is left, no device or input replaced.

Caches are shared between jobs and users, often with root among them, so anyone who can write the cache folder
could plant a symbolic link where ssdtool expects its own file, hoping that a root job writes through it. The
rules, used by the cache, downloads, conversion and every output a user names:

* ssdtool's own files in the cache (partial downloads, verification records, lock owner notes, locks) are opened
  with ``O_NOFOLLOW`` and must be regular files; a link or a device there is refused (:class:`UnsafePathError`).
* Folders below the cache root (model folders, ``.ssdtool``, IR folders, temporary folders) must be real
  folders, checked with ``lstat`` on every component below the root; the root itself may be a link (moving a
  cache to a bigger disk with ``ln -s`` is common and the link is the owner's).
* A finished file appears only through :func:`atomic_write`: a new temporary file in the same folder (created
  with ``O_EXCL``, so never through a link), written, fsynced and renamed over the final name. A rename replaces
  a link at the final name itself, never the link's target.
* Every output a user names (``--results``, ``--save-detections``, ``detect --output`` and ``--save-dir``'s
  copies, ...) passes one guard, :func:`check_outputs`, before the first image runs: it is never an input,
  never another output (however spelled or linked), never a folder, and never a file it must not replace.
  :class:`OutputFile` writes such a file: a device or FIFO is written to (never replaced), anything else is
  replaced atomically.

What this cannot do: a process that can write the cache and swaps a checked folder for a link in the instant
between the check and the use wins that race. Such a user can also replace every cached file; see the
"Security model" section of docs/download.md for what a shared cache does and does not protect against.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from ssdtool.errors import UsageError

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
O_BINARY = getattr(os, "O_BINARY", 0)


def _token() -> str:
    """Eight random hex digits for a temporary name (secrets, and hmac with it, imported when one is made)."""
    import secrets

    return secrets.token_hex(4)


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
                                 "files where it reads or writes its own files (cache, results, logs, repositories)")


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
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{_token()}.tmp")
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
        candidate = parent / f"{prefix}{_token()}"
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
# The output-path guard, and output files named by users


@dataclass(frozen=True)
class InputPath:
    """A file (or folder) a command reads, for :func:`check_outputs`; ``what`` names it in messages ("the
    annotation file (--annotations)", "an input image", "a model file")."""

    path: Path
    what: str


@dataclass(frozen=True)
class OutputPath:
    """A file a command is going to write, for :func:`check_outputs`.

    ``option``: what the user gave it with ("--results"), for messages and hints (with ``metavar``: "choose
    another --output-dir DIR"). ``what``: the name in messages when it is not the option's own value (the
    checkpoint next to a results file, a file inside an output folder). ``stream``: whether a
    character device or FIFO there is fine (written to as a stream, never replaced); a file that is appended to
    and resumed needs a regular file. ``refuse_existing``: for an existing file (or link) at ``path``, says why it
    must not be replaced (None: it may be), e.g. because it is not a file of the kind this output writes.
    """

    path: Path
    option: str
    what: str | None = None
    stream: bool = True
    refuse_existing: Callable[[Path], str | None] | None = field(default=None, compare=False)
    metavar: str = "FILE"

    @property
    def label(self) -> str:
        return self.what or f"{self.option} {os.fspath(self.path)}"

    @property
    def another(self) -> str:
        """The hint's usual start: "choose another --results FILE"."""
        return f"choose another {self.option} {self.metavar}"


def file_identity(path: str | os.PathLike[str]) -> tuple[object, ...]:
    """What ``path`` names, such that two spellings of one file, a link to it and a hard link compare equal: the
    device and inode it leads to (links followed) when it exists, else its absolute path with links resolved."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        try:
            return ("path", os.path.realpath(path))
        except (OSError, ValueError):
            return ("path", os.path.abspath(path))
    return ("file", info.st_dev, info.st_ino)


def check_outputs(outputs: Sequence[OutputPath], inputs: Iterable[InputPath] = ()) -> None:
    """The one output-path guard: every output of every command passes here before anything is written.

    Raises :class:`~ssdtool.errors.UsageError`, naming the option the user gave, when an output's folder is
    missing; when it is a folder, block device or socket (or a device or FIFO where a regular file is needed);
    when two outputs are one file (spelled differently, or through a link or a hard link); when an output is one
    of ``inputs``; or when ``refuse_existing`` objects to the file already there. Character devices
    (``/dev/null``, ``/dev/stdout`` on a terminal) are written to, never replaced, so they collide with nothing.
    """
    planned: dict[tuple[object, ...], OutputPath] = {}
    for output in outputs:
        if _check_output(output):
            continue
        identity = file_identity(output.path)
        other = planned.get(identity)
        if other is not None:
            hint = (output.another if other.option == output.option
                    else f"give {other.option} and {output.option} different files")
            raise UsageError(f"refusing {output.label}: {other.label} writes to the same file, and one output "
                             "never replaces another", hint=hint)
        planned[identity] = output
    for source in inputs if planned else ():
        output = planned.get(file_identity(source.path))
        if output is None:
            continue
        where = "" if os.fspath(source.path) == os.fspath(output.path) else \
            f" ({os.fspath(source.path)}, under another name)"
        raise UsageError(f"refusing {output.label}: it is {source.what}{where}, and an output never replaces an "
                         "input", hint=output.another)
    for output in planned.values():
        reason = output.refuse_existing(output.path) if output.refuse_existing is not None and \
            os.path.lexists(output.path) else None
        if reason is not None:
            raise UsageError(f"refusing {output.label}: {reason}",
                             hint=f"{output.another}, or remove {os.fspath(output.path)} yourself if it may go")


def _check_output(output: OutputPath) -> bool:
    """Raise for an output that cannot be written where it is; True for a character device (a stream to write
    to, which replaces nothing)."""
    try:
        info: os.stat_result | None = os.stat(output.path)  # follows links: what a write would reach
    except FileNotFoundError:
        info = None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot write {output.label}: {getattr(exc, 'strerror', None) or exc}",
                         hint=output.another) from None
    if info is not None and (stat.S_ISCHR(info.st_mode) or stat.S_ISFIFO(info.st_mode)):
        if not output.stream:
            raise UsageError(f"refusing {output.label}: it is {describe(info.st_mode)}, and {output.option} "
                             "needs a regular file there", hint=output.another)
        return stat.S_ISCHR(info.st_mode)
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise UsageError(f"cannot write {output.label}: it is {describe(info.st_mode)}",
                         hint=f"{output.option} takes a file name" if output.metavar == "FILE" else output.another)
    folder = output.path.parent
    if not folder.is_dir():
        raise UsageError(f"cannot write {output.label}: folder {os.fspath(folder)} does not exist",
                         hint=f"create the folder first, or {output.another}")
    return False


class OutputFile:
    """A file named by a user (``detect --output``, ``eval --save-detections``): written whole or not at all.

    The path passes :func:`check_outputs` (with ``inputs``; a caller writing several outputs checks them all
    together first), so it is never an input. Then:

    * a regular file (or nothing) at ``path``: written to a temporary file in the same folder and renamed into
      place by :meth:`commit`; :meth:`abort` leaves an earlier file as it was. A link at ``path`` is replaced by
      the new file; its target is left alone.
    * a character device or a FIFO at ``path`` (directly or through a link, e.g. ``/dev/stdout``): written to as
      a stream, never replaced.

    Everything else, and a failed write, is a :class:`~ssdtool.errors.UsageError` naming ``option``.
    """

    def __init__(self, path: str | os.PathLike[str], inputs: Iterable[InputPath] = (), *,
                 option: str = "--output") -> None:
        self.path = Path(path)
        self.option = option
        self._temporary: Path | None = None
        self.streaming = False
        check_outputs([OutputPath(self.path, option)], inputs)
        try:
            target = os.stat(self.path)
        except FileNotFoundError:
            target = None
        except OSError as exc:
            raise self._cannot(exc, "") from None
        if target is not None and (stat.S_ISCHR(target.st_mode) or stat.S_ISFIFO(target.st_mode)):
            self.streaming = True
            self.handle = self._open_stream()
            return
        folder = self.path.parent
        name = f".{self.path.name}.{os.getpid()}.{_token()}.tmp"
        try:
            descriptor = open_regular(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except OSError as exc:
            raise self._cannot(exc, " in a folder you can write") from None
        self._temporary = folder / name
        self.handle = os.fdopen(descriptor, "w", encoding="utf-8")

    def _cannot(self, exc: OSError, where: str, hint: str | None = None) -> UsageError:
        return UsageError(f"cannot write {self.option} {os.fspath(self.path)}: {exc.strerror or exc}",
                          hint=hint or f"choose another {self.option} FILE{where}")

    def _open_stream(self) -> IO[str]:
        try:
            # No O_CREAT or O_TRUNC: the device or FIFO is there, and it is written to as it is.
            descriptor = os.open(self.path, os.O_WRONLY | O_CLOEXEC)
        except OSError as exc:
            raise self._cannot(exc, "") from None
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
        return self._cannot(exc, "", hint=f"free some space or choose another {self.option} FILE")


def replace_refusal(path: str | os.PathLike[str], inputs: Iterable[InputPath] = ()) -> str | None:
    """Why a finished file must not be renamed onto ``path``, or None when it may be: the guard's check for a
    destination that is replaced by a rename (LoadGen's logs), where :func:`check_outputs` checks files that are
    written.

    It may when nothing is there, or a regular file that is none of ``inputs`` (compared with
    :func:`file_identity`, so a hard link or another spelling of an input counts). A symbolic link, folder, device,
    FIFO or socket is refused: a rename would replace the link itself or fail on a folder, and a device or FIFO is
    never replaced. Checks only; writes nothing.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"it cannot be checked ({exc.strerror or exc})"
    if not stat.S_ISREG(info.st_mode):
        return f"it is {describe(info.st_mode, path)}"
    identity = file_identity(path)
    for source in inputs:
        if file_identity(source.path) == identity:
            return f"it is {source.what} ({os.fspath(source.path)}), an input of this run"
    return None
