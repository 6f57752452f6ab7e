"""Validating ``models.yml``: parsed by the one YAML loader (:mod:`ssdtool.safe_yaml`: safe, duplicate keys reported,
expansion bounded), then a walk that collects every problem with its location (``models.NAME.files[0].sha256``) and
what was expected."""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from ssdtool import safe_yaml
from ssdtool.checked import is_int
from ssdtool.constants import ColorOrder, InputLayout, Interpolation, IRPrecision
from ssdtool.errors import RegistryError
from ssdtool.redact import redact_url
from ssdtool.registry.checker import Checker, describe
from ssdtool.registry.entries import OUTPUT_FORMS, ConvertSpec, FileEntry, InputSpec, ModelEntry, OutputSpec, Registry
from ssdtool.registry.heads_schema import check_heads_against_model, check_heads_outputs

MAX_REGISTRY_BYTES = 1 << 20
#: Most values (scalars, lists, mappings) the parsed document may hold, counting each use of a YAML alias.
MAX_REGISTRY_VALUES = safe_yaml.MAX_VALUES
#: Longest file or model name, in UTF-8 bytes: ssdtool derives longer names from them in the cache
#: (``<file>.verified.json``, temporary files), and most file systems allow 255 bytes per name.
MAX_NAME_BYTES = 200
#: Names of the cache layout's own folders in a model's folder (``ssdtool.cache``); no model file may take them.
CACHE_LAYOUT_NAMES = frozenset({".ssdtool", "openvino"})
REGISTRY_FORMAT_VERSION = 1
#: ``input.mean``: per-channel means of 0-255 pixel values lie in [0, 255].
MEAN_RANGE = (0.0, 255.0)
#: ``input.scale`` divides: at least 0.004, so (pixel - mean) / scale stays within float16 (an FP16 IR computes it;
#: 1/255, a multiplier written where a divisor belongs, is caught here); at most 1000, beyond which every input is
#: flattened to within 0.26 of zero.
SCALE_RANGE = (0.004, 1000.0)
#: Largest input side (``input.shape``, ``input.resize``): 16,384 pixels, 13 times the reference model's 1200.
MAX_INPUT_SIDE = 1 << 14
#: Most detection rows an IR may have (``convert.output_count``; the reference keeps 200).
MAX_OUTPUT_COUNT = 10_000

ALLOWED_SCHEMES = ("http", "https", "file", "synthetic")
TASKS = ("detection",)
BOX_FORMATS = ("xyxy",)
BOX_UNITS = ("normalized", "pixels")
_HASH_LENGTHS = {"sha256": 64, "sha384": 96}
_HEX = re.compile(r"[0-9a-f]*")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")



# The loaders, under the names the tests and fuzzers use (one YAML loader: ssdtool.safe_yaml).
_PurePythonLoader = safe_yaml.PurePythonLoader
_UniqueKeyLoader = safe_yaml.UniqueKeyLoader


def _parse_yaml(text: str, source: str, loader_class: type | None = None) -> tuple[Any, list[str]]:
    """The document and its duplicate-key problems, each prefixed with ``source``; :class:`RegistryError` when
    the text is not valid YAML, is nested too deeply or expands past :data:`MAX_REGISTRY_VALUES` values."""
    try:
        document = safe_yaml.load(text, max_values=MAX_REGISTRY_VALUES, loader_class=loader_class)
    except safe_yaml.YamlValueError as exc:
        raise RegistryError([f"{source}: {exc.reason}"]) from None
    return document.data, [f"{source}: {problem}" for problem in document.duplicate_keys]


def check_file_name(name: str) -> str | None:
    """Why ``name`` is unsafe as a file name inside the cache, or None when it is safe."""
    if "\x00" in name:
        return "must not contain NUL"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return f"must not contain control characters (newlines, tabs, escapes): {name!r}"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return (f"must be at most {MAX_NAME_BYTES} bytes long (UTF-8), got {len(name.encode('utf-8', 'surrogatepass'))}"
                f": {name[:40]!r}...")
    if name.startswith("/") or PurePosixPath(name).is_absolute() or re.match(r"^[A-Za-z]:", name):
        return f"must be a plain file name, not an absolute path: {name!r}"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts or name in (".", ".."):
        return f"must not contain '..': {name!r}"
    if "/" in name or "\\" in name or os.sep in name:
        return f"must not contain path separators: {name!r}"
    if name.endswith(".part"):
        return f"must not end in .part (reserved for partial downloads): {name!r}"
    return None


def check_source_url(url: str) -> str | None:
    """Why ``url`` is not an acceptable source, or None when it is. Messages quote it without credentials."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parses the port, which raises for a bad one
    except ValueError as exc:
        return f"expected a valid URL, got {shown!r}: {exc}"
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        return f"expected a URL with scheme {', '.join(ALLOWED_SCHEMES)}, got {shown!r}"
    if scheme in ("http", "https") and not parts.hostname:
        return f"expected a host in the URL, got {shown!r}"
    if scheme == "file" and not parts.path:
        return f"expected a path in the file URL, got {shown!r}"
    if scheme == "synthetic" and not parts.path:
        return f"expected synthetic:NAME?params, got {shown!r}"
    if any(unicodedata.category(c) == "Cc" for c in url):
        return f"expected a URL without control characters or spaces, got {shown!r}"
    return None


def _check_file(check: Checker, raw: Any, where: str) -> FileEntry | None:
    data = check.mapping(raw, where, ("name", "size", "sources"), ("sha256", "sha384"))
    if data is None:
        return None
    name = check.string(data.get("name"), f"{where}.name") if "name" in data else None
    if name is not None and (reason := check_file_name(name)):
        check.problem(f"{where}.name", reason)
        name = None
    if name is not None and name.casefold() in CACHE_LAYOUT_NAMES:
        check.problem(f"{where}.name", f"{name!r} is reserved: the cache keeps its own {name} folder next to the "
                                       "model's files; rename the file")
        name = None
    size = check.integer(data.get("size"), f"{where}.size", minimum=0) if "size" in data else None
    digests: dict[str, str | None] = {}
    for algo, length in _HASH_LENGTHS.items():
        if algo not in data:
            digests[algo] = None
            continue
        value = data[algo]
        if not isinstance(value, str):
            check.problem(f"{where}.{algo}", f"expected {length} hex characters, got {describe(value)}")
            digests[algo] = None
        elif len(value) != length:
            check.problem(f"{where}.{algo}", f"expected {length} hex characters, got {len(value)}")
            digests[algo] = None
        elif not _HEX.fullmatch(value.lower()):
            check.problem(f"{where}.{algo}", f"expected {length} hex characters (0-9, a-f), got {value!r}")
            digests[algo] = None
        else:
            digests[algo] = value.lower()
    if "sha256" not in data and "sha384" not in data:
        check.problem(where, "missing checksum: expected 'sha256' and/or 'sha384'")
    sources: list[str] = []
    raw_sources = data.get("sources")
    if "sources" in data:
        if not isinstance(raw_sources, list) or not raw_sources:
            check.problem(f"{where}.sources", f"expected a non-empty list of URLs, got {describe(raw_sources)}")
        else:
            for index, url in enumerate(raw_sources):
                spot = f"{where}.sources[{index}]"
                if not isinstance(url, str):
                    check.problem(spot, f"expected a URL string, got {describe(url)}")
                elif reason := check_source_url(url):
                    check.problem(spot, reason)
                else:
                    sources.append(url)
    if name is None or size is None or not sources or not (digests["sha256"] or digests["sha384"]):
        return None
    return FileEntry(name=name, size=size, sources=tuple(sources),
                     sha256=digests["sha256"], sha384=digests["sha384"])


def _check_input(check: Checker, raw: Any, where: str) -> InputSpec | None:
    keys = ("name", "shape", "layout", "color_order", "mean", "scale", "resize", "interpolation")
    data = check.mapping(raw, where, keys)
    if data is None:
        return None
    name = check.string(data.get("name"), f"{where}.name") if "name" in data else None
    shape = (check.int_list(data.get("shape"), f"{where}.shape", length=4, maximum=MAX_INPUT_SIDE)
             if "shape" in data else None)
    layout = check.string(data.get("layout"), f"{where}.layout", InputLayout.values()) if "layout" in data else None
    color = (check.string(data.get("color_order"), f"{where}.color_order", ColorOrder.values())
             if "color_order" in data else None)
    mean = (check.number_list(data.get("mean"), f"{where}.mean", length=3, low=MEAN_RANGE[0], high=MEAN_RANGE[1])
            if "mean" in data else None)
    scale = (check.number_list(data.get("scale"), f"{where}.scale", length=3, positive=True, low=SCALE_RANGE[0],
                               high=SCALE_RANGE[1]) if "scale" in data else None)
    resize = (check.int_list(data.get("resize"), f"{where}.resize", length=2, maximum=MAX_INPUT_SIDE)
              if "resize" in data else None)
    interpolation = (check.string(data.get("interpolation"), f"{where}.interpolation", Interpolation.values())
                     if "interpolation" in data else None)
    if shape is not None and layout is not None and resize is not None:
        height, width = (shape[2], shape[3]) if layout == InputLayout.NCHW else (shape[1], shape[2])
        channels = shape[1] if layout == InputLayout.NCHW else shape[3]
        if channels != 3:
            check.problem(f"{where}.shape", f"expected 3 colour channels for layout {layout}, got {channels}")
        if (width, height) != tuple(resize):
            check.problem(f"{where}.resize",
                          f"expected [width, height] = [{width}, {height}] to match shape {list(shape)}, "
                          f"got {list(resize)}")
    values = (name, shape, layout, color, mean, scale, resize, interpolation)
    if any(v is None for v in values):
        return None
    return InputSpec(name=name, shape=shape, layout=layout, color_order=color,  # type: ignore[arg-type]
                     mean=mean, scale=scale, resize=(resize[0], resize[1]),  # type: ignore[index]
                     interpolation=interpolation)  # type: ignore[arg-type]


def _check_outputs(check: Checker, raw: Any, where: str) -> OutputSpec | None:
    if isinstance(raw, dict) and "form" in raw:
        form = check.string(raw["form"], f"{where}.form", OUTPUT_FORMS)
        if form is None:
            return None
        if form == "heads":
            return check_heads_outputs(check, raw, where)
    data = check.mapping(raw, where, ("boxes", "labels", "scores", "box_format", "box_units", "label_offset"),
                         ("form",))
    if data is None:
        return None
    fields: dict[str, Any] = {}
    for key in ("boxes", "labels", "scores"):
        fields[key] = check.string(data.get(key), f"{where}.{key}") if key in data else None
    fields["box_format"] = (check.string(data.get("box_format"), f"{where}.box_format", BOX_FORMATS)
                            if "box_format" in data else None)
    fields["box_units"] = (check.string(data.get("box_units"), f"{where}.box_units", BOX_UNITS)
                           if "box_units" in data else None)
    if "label_offset" in data:
        offset = data["label_offset"]
        if not is_int(offset):
            check.problem(f"{where}.label_offset", f"expected an integer, got {describe(offset)}")
        else:
            fields["label_offset"] = offset
    if any(fields.get(k) is None for k in ("boxes", "labels", "scores", "box_format", "box_units",
                                            "label_offset")):
        return None
    return OutputSpec(**fields)


def _check_convert(check: Checker, raw: Any, where: str) -> ConvertSpec | None:
    data = check.mapping(raw, where, ("color_order", "output_count", "precision"))
    if data is None:
        return None
    color = (check.string(data.get("color_order"), f"{where}.color_order", ColorOrder.values())
             if "color_order" in data else None)
    count = check.integer(data.get("output_count"), f"{where}.output_count", minimum=1, maximum=MAX_OUTPUT_COUNT) \
        if "output_count" in data else None
    precision = (check.string(data.get("precision"), f"{where}.precision", IRPrecision.values())
                 if "precision" in data else None)
    if color is None or count is None or precision is None:
        return None
    return ConvertSpec(color_order=color, output_count=count, precision=precision)


def _check_model(check: Checker, name: str, raw: Any, registry_dir: Path | None) -> ModelEntry | None:
    where = f"models.{name if len(name) <= 60 else name[:60] + '...'}"
    if not _MODEL_NAME.fullmatch(name):
        check.problem(where, "model names use letters, digits, '.', '_' and '-', starting with a letter or digit")
    elif len(name) > MAX_NAME_BYTES:
        check.problem(where, f"model names are at most {MAX_NAME_BYTES} characters (the cache folder is named after "
                             f"the model), got {len(name)}")
    keys = ("description", "task", "license", "files", "input", "outputs", "labels", "convert")
    data = check.mapping(raw, where, keys)
    if data is None:
        return None
    description = check.string(data.get("description"), f"{where}.description") if "description" in data else None
    task = check.string(data.get("task"), f"{where}.task", TASKS) if "task" in data else None
    license_name = check.string(data.get("license"), f"{where}.license") if "license" in data else None
    files: list[FileEntry] = []
    files_ok = False
    if "files" in data:
        raw_files = data["files"]
        if not isinstance(raw_files, list) or not raw_files:
            check.problem(f"{where}.files", f"expected a non-empty list of files, got {describe(raw_files)}")
        else:
            parsed = [_check_file(check, item, f"{where}.files[{i}]") for i, item in enumerate(raw_files)]
            names = [f.name for f in parsed if f is not None]
            for dup in sorted({n for n in names if names.count(n) > 1}):
                check.problem(f"{where}.files", f"duplicate file name {dup!r}")
            files = [f for f in parsed if f is not None]
            files_ok = len(files) == len(parsed) and len(set(names)) == len(names)
    sections: dict[str, Callable[[Checker, Any, str], Any]] = {
        "input": _check_input, "outputs": _check_outputs, "convert": _check_convert}
    parsed_sections = {key: fn(check, data[key], f"{where}.{key}") if key in data else None
                       for key, fn in sections.items()}
    labels = check.string(data.get("labels"), f"{where}.labels") if "labels" in data else None
    if labels is not None and (reason := check_file_name(labels)):
        check.problem(f"{where}.labels", reason)
        labels = None
    outputs, entry_input, convert = (parsed_sections[key] for key in ("outputs", "input", "convert"))
    if outputs is not None and entry_input is not None and convert is not None:
        check_heads_against_model(check, outputs, where, entry_input.resize, convert.output_count)
    required = (description, task, license_name, labels, *parsed_sections.values())
    if not files_ok or any(v is None for v in required):
        return None
    return ModelEntry(name=name, description=description.strip(), task=task,  # type: ignore[union-attr]
                      license=license_name, files=tuple(files),  # type: ignore[arg-type]
                      input=parsed_sections["input"], outputs=parsed_sections["outputs"],
                      labels=labels, convert=parsed_sections["convert"],  # type: ignore[arg-type]
                      registry_dir=registry_dir)


def parse_registry(text: str, source: str = "models.yml", registry_dir: Path | None = None) -> Registry:
    """Validate registry YAML text; raise :class:`RegistryError` listing every located problem."""
    data, duplicate_problems = _parse_yaml(text, source)
    check = Checker(source)
    check.problems.extend(duplicate_problems)
    top = check.mapping(data, "", ("version", "models"), ("default_model",))
    if top is None:
        raise RegistryError(check.problems)
    version = check.integer(top.get("version"), "version", minimum=1) if "version" in top else None
    if version is not None and version != REGISTRY_FORMAT_VERSION:
        check.problem("version", f"expected format version {REGISTRY_FORMAT_VERSION}, got {version}; "
                                 "this ssdtool is too old or the file too new")
    models: dict[str, ModelEntry] = {}
    raw_models = top.get("models")
    if "models" in top:
        if not isinstance(raw_models, dict) or not raw_models:
            check.problem("models", f"expected a non-empty mapping of model names, got {describe(raw_models)}")
        else:
            for name, raw in raw_models.items():
                if not isinstance(name, str):
                    check.problem(f"models.{name}", f"expected a model name string, got {describe(name)}")
                    continue
                entry = _check_model(check, name, raw, registry_dir)
                if entry is not None:
                    models[name] = entry
    default = top.get("default_model")
    if default is None and isinstance(raw_models, dict) and raw_models:
        default = next(iter(raw_models))
    elif default is not None and (not isinstance(default, str)
                                  or (isinstance(raw_models, dict) and default not in raw_models)):
        check.problem("default_model", f"expected the name of a model in 'models', got {describe(default)}")
    if check.problems:
        raise RegistryError(check.problems, hint=f"fix {source}; the format is described in docs/registry.md")
    return Registry(version=version, default_model=default, models=models, source=source)  # type: ignore[arg-type]
