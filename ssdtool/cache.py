"""Where ssdtool keeps files: the cache layout, shared by download, convert, detect and the status commands.

Layout under the cache root (``--cache-dir``, else ``$SSDTOOL_HOME``, else ``$XDG_CACHE_HOME/ssdtool``, else
``~/.cache/ssdtool``)::

    <root>/<model>/<file>                        verified model file (only ever renamed into place)
    <root>/<model>/<file>.part                   partial download, resumable
    <root>/<model>/.ssdtool/<file>.verified.json size, mtime and checksums recorded after verification
    <root>/<model>/.ssdtool/<file>.lock          inter-process lock for downloading <file>
    <root>/<model>/.ssdtool/<file>.owner.json    who holds that lock (pid, host, start), for waiting processes
    <root>/<model>/openvino/<precision>[-<variant>]/<model>.xml|.bin   converted IR

Every write goes through :mod:`ssdtool.fsutil`: into folders checked to be real folders below the root, never
through a link at ssdtool's own files (parts, records, owner notes, locks), and whole files only by rename. A
model file at its final path may be a link a user placed there on purpose, and is then read through it, but only
when the link belongs to the user running ssdtool or to root (:meth:`Cache.check_model_file`): a link planted by
another user of a shared cache is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ssdtool import fsutil
from ssdtool.checked import is_finite_number, is_int, loads
from ssdtool.constants import ModelState
from ssdtool.errors import CacheError
from ssdtool.redact import redact_url
from ssdtool.registry import CACHE_LAYOUT_NAMES, FileEntry, ModelEntry, check_file_name

log = logging.getLogger("ssdtool.cache")

HOME_ENV = "SSDTOOL_HOME"
METADATA_DIR = ".ssdtool"
IR_DIR = "openvino"
# The registry refuses model files named like the layout's folders (one would take the other's place).
assert frozenset({METADATA_DIR, IR_DIR}) == CACHE_LAYOUT_NAMES
# Records and owner notes are a few hundred bytes; a much larger file there is not one of ours.
MAX_RECORD_BYTES = 64 << 10


@dataclass(frozen=True)
class VerificationRecord:
    """What was verified, so a later run can trust an unchanged file without re-hashing it.

    ``size`` and ``mtime_ns`` identify the file as it was when hashed; ``checksums`` maps algorithm -> hex digest.
    """

    size: int
    mtime_ns: int
    checksums: dict[str, str]
    source: str | None = None
    verified_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> VerificationRecord:
        """The record in ``data``; ``ValueError`` unless every field has its type (the caller then re-hashes)."""
        if not isinstance(data, dict):
            raise ValueError("a verification record is a JSON object")
        size, mtime_ns, checksums = data.get("size"), data.get("mtime_ns"), data.get("checksums")
        source, verified_at = data.get("source"), data.get("verified_at", 0.0)
        if not (is_int(size) and size >= 0 and is_int(mtime_ns) and isinstance(checksums, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in checksums.items())
                and (source is None or isinstance(source, str)) and is_finite_number(verified_at)):
            raise ValueError("a verification record field has the wrong type")
        return cls(size=size, mtime_ns=mtime_ns, checksums=dict(checksums), source=source,
                   verified_at=float(verified_at))


@dataclass(frozen=True)
class LockOwner:
    """Who holds a download lock, from its owner note; only for telling a waiting process whom it waits for."""

    pid: int
    host: str
    since: float  # Unix time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> LockOwner:
        """``ValueError`` unless the note has an integer pid, a host string and a plausible time (then: unknown)."""
        if not isinstance(data, dict):
            raise ValueError("an owner note is a JSON object")
        pid, host, since = data.get("pid"), data.get("host"), data.get("since")
        if not (is_int(pid) and pid > 0 and isinstance(host, str) and is_finite_number(since) and 0 <= since < 1e11):
            raise ValueError("an owner note field has the wrong type")
        return cls(pid=pid, host=host, since=float(since))


def _load_json(path: Path) -> Any:
    """A small JSON file of ssdtool's own, read without following a link at it. Any problem is an ``OSError`` or
    a ``ValueError`` (strict JSON: :func:`ssdtool.checked.loads`)."""
    return loads(fsutil.read_regular(path, MAX_RECORD_BYTES))


def default_cache_dir() -> Path:
    """``$SSDTOOL_HOME``, else the XDG cache directory's ``ssdtool`` folder."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "ssdtool"


@dataclass(frozen=True)
class Cache:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str] | None = None) -> Cache:
        return cls(Path(root).expanduser().absolute() if root is not None else default_cache_dir().absolute())

    def model_dir(self, model: ModelEntry | str) -> Path:
        name = model if isinstance(model, str) else model.name
        if reason := check_file_name(name):
            raise CacheError(f"model name cannot be used as a cache folder: {reason}")
        return self.root / name

    def file_path(self, model: ModelEntry | str, file: FileEntry | str) -> Path:
        """Final path of a model file; refuses names that could leave the model's folder."""
        name = file if isinstance(file, str) else file.name
        if reason := check_file_name(name):
            raise CacheError(f"file name cannot be used in the cache: {reason}")
        folder = self.model_dir(model)
        path = folder / name
        # Lexical check: the name itself cannot leave the folder (a link at the path: see check_model_file).
        if Path(os.path.abspath(path)).parent != Path(os.path.abspath(folder)):
            raise CacheError(f"file name {name!r} would resolve outside {folder}")
        return path

    def check_model_file(self, model: ModelEntry | str, file: FileEntry | str) -> Path:
        """The final path of a model file, after refusing a link there that another user planted.

        A link owned by the user running ssdtool (or by root) was placed on purpose and is followed; one owned by
        anyone else could make a root job read any file (and report its checksum), so it is refused.
        """
        path = self.file_path(model, file)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return path
        except OSError as exc:
            raise CacheError(f"cannot access {path}: {exc.strerror or exc}") from exc
        if stat.S_ISLNK(info.st_mode) and info.st_uid not in (0, os.geteuid()):
            raise CacheError(
                f"refusing to use {path}: it is {fsutil.describe(info.st_mode, path)} owned by uid {info.st_uid}, "
                f"not by the user running ssdtool (uid {os.geteuid()}) or root",
                hint=f"remove the link (rm {path}) and run the command again; to use a file kept elsewhere, link "
                     "it as the user who runs ssdtool")
        return path

    def part_path(self, model: ModelEntry | str, file: FileEntry | str) -> Path:
        final = self.file_path(model, file)
        return final.with_name(final.name + ".part")

    def metadata_dir(self, model: ModelEntry | str) -> Path:
        return self.model_dir(model) / METADATA_DIR

    def make_folder(self, path: Path) -> Path:
        """Create ``path`` (below the root) as a real folder, refusing a link or a file on the way."""
        try:
            return fsutil.ensure_folder(path, self.root)
        except OSError as exc:
            raise CacheError(f"cannot create the cache folder {path}: {exc}",
                             hint="pass a writable --cache-dir or set SSDTOOL_HOME") from exc

    def record_path(self, model: ModelEntry | str, file: FileEntry | str) -> Path:
        name = file if isinstance(file, str) else file.name
        return self.metadata_dir(model) / f"{name}.verified.json"

    def lock_path(self, model: ModelEntry | str, file: FileEntry | str) -> Path:
        name = file if isinstance(file, str) else file.name
        return self.metadata_dir(model) / f"{name}.lock"

    def owner_path(self, model: ModelEntry | str, file: FileEntry | str) -> Path:
        name = file if isinstance(file, str) else file.name
        return self.metadata_dir(model) / f"{name}.owner.json"

    def read_record(self, model: ModelEntry | str, file: FileEntry | str) -> VerificationRecord | None:
        """The verification record of a file, or None when absent, unreadable, malformed or a link (then the file
        is re-hashed)."""
        try:
            return VerificationRecord.from_dict(_load_json(self.record_path(model, file)))
        except (OSError, ValueError):
            return None

    def write_record(self, model: ModelEntry | str, file: FileEntry | str, record: VerificationRecord) -> None:
        """Write the record atomically, so a reader never sees half a record (it would re-hash, not misjudge).

        Everyone sharing the cache may read records, so the source URL is stored without credentials.
        """
        path = self.record_path(model, file)
        clean = VerificationRecord(size=record.size, mtime_ns=record.mtime_ns, checksums=dict(record.checksums),
                                   source=redact_url(record.source) if record.source else record.source,
                                   verified_at=record.verified_at)
        try:
            fsutil.ensure_folder(path.parent, self.root)
            fsutil.atomic_write(path, (json.dumps(clean.to_dict(), indent=2) + "\n").encode("utf-8"))
        except OSError as exc:
            raise CacheError(f"cannot write the verification record {path}: {exc}",
                             hint="check permissions and free space in the cache directory") from exc

    def record_verified(self, model: ModelEntry, file: FileEntry, digests: dict[str, str], *, source: str,
                        mtime_ns: int, required: bool = True) -> None:
        """Record that ``file`` (as it is now: ``mtime_ns``) hashed to ``digests``, so later runs trust it unread.

        ``required=False``: the record only saves re-hashing next time, so a cache that cannot be written (a
        read-only one) gets none, quietly.
        """
        record = VerificationRecord(size=file.size, mtime_ns=mtime_ns, checksums=dict(digests), source=source,
                                    verified_at=time.time())
        try:
            self.write_record(model, file, record)
        except CacheError:
            if required:
                raise
            log.debug("no verification record for %s: the cache cannot be written", file.name)

    def ensure_metadata_dir(self, model: ModelEntry | str) -> None:
        """Create ``<model>/.ssdtool`` when possible; on a read-only cache go on without it (checking the files that
        are there needs no folder, lock or record; anything that must be written fails later, naming the file)."""
        folder = self.metadata_dir(model)
        try:
            fsutil.ensure_folder(folder, self.root)
        except fsutil.UnsafePathError as exc:
            raise CacheError(str(exc), hint=f"remove {exc.path}; ssdtool recreates it") from exc
        except OSError as exc:
            log.debug("cannot create %s (%s); going on without it", folder, exc)

    def remove_file(self, path: Path) -> None:
        """Remove a file (or a link itself, never its target) from the cache; absent is fine."""
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CacheError(f"cannot remove {path}: {exc}", hint="check the cache directory's permissions") from exc

    def remove_record(self, model: ModelEntry | str, file: FileEntry | str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.record_path(model, file).unlink()  # a link is removed itself, never its target

    def recorded_verified(self, model: ModelEntry, file: FileEntry) -> VerificationRecord | None:
        """The record when it still vouches for the file on disk, without reading the file.

        It vouches when the file's size and mtime are the ones recorded at verification and the recorded checksums
        are the ones the registry expects now (a registry update invalidates old records). Anything else: None,
        and the caller re-hashes.
        """
        record = self.read_record(model, file)
        if record is None:
            return None
        try:
            info = self.check_model_file(model, file).stat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode) or info.st_size != file.size:
            return None
        if (record.size, record.mtime_ns) != (file.size, info.st_mtime_ns):
            return None
        if any(record.checksums.get(algo) != digest for algo, digest in file.checksums.items()):
            return None
        return record

    def write_owner(self, model: ModelEntry | str, file: FileEntry | str) -> None:
        """Note who holds a download lock; only used to tell a waiting process whom it waits for."""
        import socket  # only when downloading: keeps the cached fast path's imports small

        note = LockOwner(pid=os.getpid(), host=socket.gethostname(), since=time.time())
        with contextlib.suppress(OSError):  # informational only: never fail a download over it
            fsutil.atomic_write(self.owner_path(model, file), (json.dumps(note.to_dict()) + "\n").encode("utf-8"))

    def read_owner(self, model: ModelEntry | str, file: FileEntry | str) -> LockOwner | None:
        """The lock holder's note, or None when there is none or it is malformed (the holder is then unknown)."""
        try:
            return LockOwner.from_dict(_load_json(self.owner_path(model, file)))
        except (OSError, ValueError):
            return None

    def remove_owner(self, model: ModelEntry | str, file: FileEntry | str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.owner_path(model, file).unlink()

    def compiled_model_dir(self, model: ModelEntry | str) -> Path:
        """OpenVINO's compiled-model cache for a model (blobs per device, hint and precision; safe to delete)."""
        return self.metadata_dir(model) / "ov-cache"

    def usable_compiled_model_dir(self, model: ModelEntry | str) -> Path | None:
        """The compiled-model cache folder, created if needed, or None to compile without one this run.

        OpenVINO writes blobs there itself (following links), so it is used only when it is a real folder that
        belongs to the user running ssdtool and that nobody else can write; a read-only cache has none. Any other
        case costs a compile, never the run.
        """
        folder = self.compiled_model_dir(model)
        try:
            self.make_folder(folder)
            info = os.lstat(folder)
        except (CacheError, OSError) as exc:
            log.info("compiling without the compiled-model cache: %s", exc)
            return None
        if info.st_uid != os.geteuid() or info.st_mode & 0o022 or not os.access(folder, os.W_OK):
            log.info("compiling without the compiled-model cache: %s is not a folder only this user (uid %d) can "
                     "write", folder, os.geteuid())
            return None
        return folder

    def ir_root(self, model: ModelEntry | str) -> Path:
        return self.model_dir(model) / IR_DIR

    def ir_dir(self, model: ModelEntry | str, precision: str, variant: str = "") -> Path:
        """Folder of a converted IR; ``variant`` distinguishes non-default input types or layouts."""
        return self.ir_root(model) / (f"{precision}-{variant}" if variant else precision)

    def ir_xml(self, model: ModelEntry | str, precision: str, variant: str = "") -> Path:
        name = model if isinstance(model, str) else model.name
        return self.ir_dir(model, precision, variant) / f"{name}.xml"

    def converted_irs(self, model: ModelEntry | str) -> list[Path]:
        """Every intact IR ``.xml`` installed for the model (weights of the recorded size, real folders), sorted."""
        from ssdtool.provenance import ir_problem

        root = self.ir_root(model)
        try:
            if not fsutil.check_folder(root, self.root):
                return []
        except OSError:
            return []  # a link or a file where the IR folder belongs: nothing ssdtool installed
        name = model if isinstance(model, str) else model.name
        return sorted(xml for xml in root.glob(f"*/{name}.xml")
                      if not xml.parent.is_symlink() and ir_problem(xml) is None)

    def file_state(self, model: ModelEntry, file: FileEntry) -> ModelState:
        """missing / partial / downloaded, judged by presence and size (``ssdtool verify`` re-hashes)."""
        path = self.file_path(model, file)
        try:
            if path.stat().st_size == file.size:
                return ModelState.DOWNLOADED
        except OSError:
            pass
        return ModelState.PARTIAL if os.path.lexists(path) or os.path.lexists(self.part_path(model, file)) \
            else ModelState.MISSING

    def model_state(self, model: ModelEntry) -> ModelState:
        states = [self.file_state(model, f) for f in model.files]
        if all(s == ModelState.DOWNLOADED for s in states):
            return ModelState.CONVERTED if self.converted_irs(model) else ModelState.DOWNLOADED
        if any(s != ModelState.MISSING for s in states):
            return ModelState.PARTIAL
        return ModelState.MISSING
