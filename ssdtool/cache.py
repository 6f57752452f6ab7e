"""Where ssdtool keeps files: the cache layout, shared by download, convert, detect and the status commands.

Layout under the cache root (``--cache-dir``, else ``$SSDTOOL_HOME``, else ``$XDG_CACHE_HOME/ssdtool``, else
``~/.cache/ssdtool``)::

    <root>/<model>/<file>                        verified model file (only ever renamed into place)
    <root>/<model>/<file>.part                   partial download, resumable
    <root>/<model>/.ssdtool/<file>.verified.json size, mtime and checksums recorded after verification
    <root>/<model>/.ssdtool/<file>.lock          inter-process lock for downloading <file>
    <root>/<model>/openvino/<precision>[-<variant>]/<model>.xml|.bin   converted IR
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ssdtool.errors import CacheError
from ssdtool.registry import FileEntry, ModelEntry, check_file_name

HOME_ENV = "SSDTOOL_HOME"
STATE_MISSING = "missing"
STATE_PARTIAL = "partial"
STATE_DOWNLOADED = "downloaded"
STATE_CONVERTED = "converted"
METADATA_DIR = ".ssdtool"


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
        if path.resolve().parent != folder.resolve():
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
