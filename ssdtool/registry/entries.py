"""The registry's entries: frozen dataclasses a validated ``models.yml`` becomes."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ssdtool.errors import RegistryError, UnknownModelError


@dataclass(frozen=True)
class FileEntry:
    """One file of a model, with everything needed to fetch and verify it."""

    name: str
    size: int
    sources: tuple[str, ...]
    sha256: str | None = None
    sha384: str | None = None

    @property
    def checksums(self) -> dict[str, str]:
        """Algorithm name -> expected hex digest, for every checksum the registry lists."""
        return {algo: value for algo, value in (("sha256", self.sha256), ("sha384", self.sha384)) if value}


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    layout: str
    color_order: str
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    resize: tuple[int, int]  # (width, height)
    interpolation: str


@dataclass(frozen=True)
class OutputSpec:
    boxes: str
    labels: str
    scores: str
    box_format: str
    box_units: str
    label_offset: int


@dataclass(frozen=True)
class ConvertSpec:
    color_order: str
    output_count: int
    precision: str


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    task: str
    license: str
    files: tuple[FileEntry, ...]
    input: InputSpec
    outputs: OutputSpec
    labels: str
    convert: ConvertSpec
    registry_dir: Path | None = field(default=None, compare=False)

    @property
    def primary_file(self) -> FileEntry:
        """The model file itself (the first listed)."""
        return self.files[0]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def label_path(self) -> Path:
        """The label file: shipped in the package, or else relative to the registry that names it."""
        packaged = resources.files("ssdtool") / "data" / self.labels
        if packaged.is_file():
            return Path(str(packaged))
        if self.registry_dir is not None and (self.registry_dir / self.labels).is_file():
            return self.registry_dir / self.labels
        raise RegistryError(
            [f"models.{self.name}.labels: label file {self.labels!r} not found in the package"
             + (f" or in {self.registry_dir}" if self.registry_dir else "")],
            hint="ship the label file next to your registry file",
        )

    def label_names(self) -> tuple[str, ...]:
        """Label names by index (index 0 is the background); see :func:`ssdtool.labels.label_names`."""
        from ssdtool.labels import label_names

        return label_names(self)


@dataclass(frozen=True)
class Registry:
    version: int
    default_model: str
    models: Mapping[str, ModelEntry]
    source: str  # where it was loaded from, for messages

    def model(self, name: str | None = None) -> ModelEntry:
        """The entry called ``name`` (the default model when None); unknown names suggest close matches."""
        wanted = name or self.default_model
        try:
            return self.models[wanted]
        except KeyError:
            close = difflib.get_close_matches(wanted, list(self.models), n=3, cutoff=0.5)
            if not close:
                close = [known for known in self.models if wanted.lower() in known.lower()][:3]
            suggestion = f"did you mean {', '.join(close)}?" if close else "no similar names"
            raise UnknownModelError(
                f"unknown model {wanted!r} in {self.source}; {suggestion}",
                hint="run 'ssdtool models' to list the registry",
            ) from None

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)
