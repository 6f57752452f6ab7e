"""What the registry holds and what of it is on disk: the data behind ``ssdtool models`` and ``ssdtool info``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ssdtool.cache import Cache
from ssdtool.redact import redact_url
from ssdtool.registry import ModelEntry, Registry


@dataclass(frozen=True)
class ModelSummary:
    name: str
    task: str
    size: int
    state: str
    default: bool
    description: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FileStatus:
    name: str
    path: str
    size: int
    state: str
    sha256: str | None
    sha384: str | None
    sources: tuple[str, ...]


@dataclass(frozen=True)
class ModelInfo:
    """Everything the registry says about a model, plus where its files are and their state."""

    name: str
    default: bool
    state: str
    cache_dir: str
    entry: ModelEntry
    files: tuple[FileStatus, ...]
    converted: tuple[dict[str, Any], ...]  # one record per installed IR (path, precision, provenance)

    def to_dict(self) -> dict[str, Any]:
        entry = dataclasses.asdict(self.entry)
        entry.pop("registry_dir", None)
        entry.pop("files", None)
        return {
            "name": self.name,
            "default": self.default,
            "state": self.state,
            "cache_dir": self.cache_dir,
            **{k: v for k, v in entry.items() if k != "name"},
            "files": [dataclasses.asdict(f) for f in self.files],
            "converted": list(self.converted),
        }


def list_models(registry: Registry, cache: Cache) -> list[ModelSummary]:
    """One summary per registry entry, in registry order."""
    return [
        ModelSummary(name=entry.name, task=entry.task, size=entry.total_size, state=cache.model_state(entry),
                     default=entry.name == registry.default_model, description=entry.description)
        for entry in registry
    ]


def describe_converted(entry: ModelEntry, cache: Cache) -> tuple[dict[str, Any], ...]:
    """A record per installed IR: its path, the folder's precision name and the provenance it carries."""
    from ssdtool.provenance import read_provenance

    return tuple({"path": str(xml), "precision": xml.parent.name, "provenance": read_provenance(xml)}
                 for xml in cache.converted_irs(entry))


def model_info(registry: Registry, cache: Cache, name: str | None) -> ModelInfo:
    entry = registry.model(name)
    files = tuple(
        FileStatus(name=f.name, path=str(cache.file_path(entry, f)), size=f.size,
                   state=cache.file_state(entry, f), sha256=f.sha256, sha384=f.sha384,
                   sources=tuple(redact_url(url) for url in f.sources))
        for f in entry.files
    )
    return ModelInfo(name=entry.name, default=entry.name == registry.default_model,
                     state=cache.model_state(entry), cache_dir=str(cache.model_dir(entry)), entry=entry,
                     files=files, converted=describe_converted(entry, cache))
