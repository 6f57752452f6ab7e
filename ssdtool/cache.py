"""Where ssdtool keeps files: the cache layout, shared by download, convert, detect and the status commands.

Layout under the cache root (``--cache-dir``, else ``$SSDTOOL_HOME``, else ``$XDG_CACHE_HOME/ssdtool``, else
``~/.cache/ssdtool``)::

    <root>/<model>/<file>                        verified model file (only ever renamed into place)
    <root>/<model>/<file>.part                   partial download, resumable
    <root>/<model>/.ssdtool/<file>.verified.json size, mtime and checksums recorded after verification
    <root>/<model>/.ssdtool/<file>.lock          inter-process lock for downloading <file>
    <root>/<model>/.ssdtool/<file>.owner.json    who holds that lock (pid, host, start), for waiting processes
    <root>/<model>/openvino/<precision>[-<variant>]/<model>.xml|.bin   converted IR
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ssdtool.errors import CacheError
from ssdtool.registry import FileEntry, ModelEntry, check_file_name

HOME_ENV = "SSDTOOL_HOME"
STATE_MISSING = "missing"
STATE_PARTIAL = "partial"
STATE_DOWNLOADED = "downloaded"
STATE_CONVERTED = "converted"
METADATA_DIR = ".ssdtool"


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
    def from_dict(cls, data: dict[str, Any]) -> VerificationRecord:
        checksums = data["checksums"]
        if not isinstance(checksums, dict):
            raise TypeError("checksums must be a mapping")
        return cls(size=int(data["size"]), mtime_ns=int(data["mtime_ns"]),
                   checksums={str(k): str(v) for k, v in checksums.items()},
                   source=data.get("source"), verified_at=float(data.get("verified_at", 0.0)))


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a unique temporary name and ``os.replace`` (safe with concurrent writers of the same path)."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


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
        # Lexical check (symlinks are not followed: a user may link a model file into the cache on purpose).
        if Path(os.path.abspath(path)).parent != Path(os.path.abspath(folder)):
            raise CacheError(f"file name {name!r} would resolve outside {folder}")
        return path

    def part_path(self, model: ModelEntry | str, file: FileEntry | str) -> Path:
        final = self.file_path(model, file)
        return final.with_name(final.name + ".part")

    def metadata_dir(self, model: ModelEntry | str) -> Path:
        return self.model_dir(model) / METADATA_DIR

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
        """The verification record of a file, or None when absent or unreadable (then the file is re-hashed)."""
        try:
            data = json.loads(self.record_path(model, file).read_text(encoding="utf-8"))
            return VerificationRecord.from_dict(data)
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def write_record(self, model: ModelEntry | str, file: FileEntry | str, record: VerificationRecord) -> None:
        """Write the record atomically, so a reader never sees half a record (it would re-hash, not misjudge)."""
        path = self.record_path(model, file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(record.to_dict(), indent=2) + "\n")
        except OSError as exc:
            raise CacheError(f"cannot write the verification record {path}: {exc}",
                             hint="check permissions and free space in the cache directory") from exc

    def remove_record(self, model: ModelEntry | str, file: FileEntry | str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.record_path(model, file).unlink()

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
            stat = self.file_path(model, file).stat()
        except FileNotFoundError:
            return None
        if (record.size, record.mtime_ns) != (file.size, stat.st_mtime_ns) or stat.st_size != file.size:
            return None
        if any(record.checksums.get(algo) != digest for algo, digest in file.checksums.items()):
            return None
        return record

    def write_owner(self, model: ModelEntry | str, file: FileEntry | str) -> None:
        """Note who holds a download lock; only used to tell a waiting process whom it waits for."""
        import socket  # only when downloading: keeps the cached fast path's imports small

        path = self.owner_path(model, file)
        data = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        with contextlib.suppress(OSError):  # informational only: never fail a download over it
            atomic_write_text(path, json.dumps(data) + "\n")

    def read_owner(self, model: ModelEntry | str, file: FileEntry | str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.owner_path(model, file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def remove_owner(self, model: ModelEntry | str, file: FileEntry | str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.owner_path(model, file).unlink()

    def ir_root(self, model: ModelEntry | str) -> Path:
        return self.model_dir(model) / "openvino"

    def ir_dir(self, model: ModelEntry | str, precision: str, variant: str = "") -> Path:
        """Folder of a converted IR; ``variant`` distinguishes non-default input types or layouts."""
        return self.ir_root(model) / (f"{precision}-{variant}" if variant else precision)

    def ir_xml(self, model: ModelEntry | str, precision: str, variant: str = "") -> Path:
        name = model if isinstance(model, str) else model.name
        return self.ir_dir(model, precision, variant) / f"{name}.xml"

    def converted_irs(self, model: ModelEntry | str) -> list[Path]:
        """Every IR ``.xml`` installed for the model, sorted."""
        root = self.ir_root(model)
        if not root.is_dir():
            return []
        name = model if isinstance(model, str) else model.name
        return sorted(p for p in root.glob(f"*/{name}.xml") if p.with_suffix(".bin").is_file())

    def file_state(self, model: ModelEntry, file: FileEntry) -> str:
        """missing / partial / downloaded, judged by presence and size (``ssdtool verify`` re-hashes)."""
        path = self.file_path(model, file)
        try:
            if path.stat().st_size == file.size:
                return STATE_DOWNLOADED
        except FileNotFoundError:
            pass
        return STATE_PARTIAL if path.exists() or self.part_path(model, file).exists() else STATE_MISSING

    def model_state(self, model: ModelEntry) -> str:
        states = [self.file_state(model, f) for f in model.files]
        if all(s == STATE_DOWNLOADED for s in states):
            return STATE_CONVERTED if self.converted_irs(model) else STATE_DOWNLOADED
        if any(s != STATE_MISSING for s in states):
            return STATE_PARTIAL
        return STATE_MISSING
