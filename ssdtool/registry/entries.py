"""The registry's entries: frozen dataclasses a validated ``models.yml`` becomes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ssdtool.errors import RegistryError, UnknownModelError


def package_file(*parts: str) -> Path | None:
    """A file shipped inside the ssdtool package, or None. Looked up beside the modules when the package is a folder
    (every pip install, editable or not; importlib.resources' readers cost a warm start several milliseconds),
    through importlib.resources otherwise."""
    folder = Path(__file__).resolve().parent.parent
    if folder.is_dir():
        path = folder.joinpath(*parts)
        return path if path.is_file() else None
    from importlib import resources

    packaged = resources.files("ssdtool").joinpath(*parts)
    return Path(str(packaged)) if packaged.is_file() else None


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


#: The two output forms: three detection tensors, or the twelve head tensors (decoded outside the network).
OUTPUT_FORMS = ("detections", "heads")


@dataclass(frozen=True)
class DefaultBoxSpec:
    """The default boxes of a heads model (MLCommons ``dboxes_R34_coco``). None: the reference's value for the
    input size (feature sizes from the network's shape arithmetic, steps ``int(size / feature size)``, scales
    ``int(s * size / 300)`` for s in 21, 45, 99, 153, 207, 261, 315), resolved by :mod:`ssdtool.heads`."""

    feature_sizes: tuple[int, ...] | None = None
    steps: tuple[int, ...] | None = None
    scales: tuple[float, ...] | None = None
    aspect_ratios: tuple[tuple[float, ...], ...] | None = None
    scale_xy: float = 0.1
    scale_wh: float = 0.2


@dataclass(frozen=True)
class SelectionSpec:
    """The selection tail: per foreground class, scores strictly above ``score_threshold``, greedy NMS dropping
    boxes with IoU strictly above ``iou_threshold``, at most ``per_class`` kept; then the best ``max_detections``
    overall (at most ``convert.output_count``)."""

    score_threshold: float = 0.05
    iou_threshold: float = 0.5
    per_class: int = 200
    max_detections: int = 200


@dataclass(frozen=True)
class HeadsSpec:
    """Which outputs of a heads model are the conf and loc heads, in level order: output names, or positions in
    the model's output list (0-based). Each conf head is NCHW ``[1, A*81, H, W]``, each loc head
    ``[1, A*4, H, W]`` with channel ``coordinate*A + anchor`` (see :mod:`ssdtool.ssd`)."""

    conf: tuple[str | int, ...]
    loc: tuple[str | int, ...]
    default_boxes: DefaultBoxSpec = field(default_factory=DefaultBoxSpec)
    selection: SelectionSpec = field(default_factory=SelectionSpec)


@dataclass(frozen=True)
class OutputSpec:
    """The outputs. ``form`` "detections": ``boxes``/``labels``/``scores`` name the model's three outputs.
    ``form`` "heads": ``heads`` says where the twelve head tensors are, and the three names are those of the
    outputs ssdtool makes from them (host decode, or the converted IR's outputs): normalized, label offset 0."""

    boxes: str
    labels: str
    scores: str
    box_format: str
    box_units: str
    label_offset: int
    form: str = "detections"
    heads: HeadsSpec | None = None


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
        packaged = package_file("data", self.labels)
        if packaged is not None:
            return packaged
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
            import difflib  # for a mistyped model name only

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
