"""Load and validate the model registry (``models.yml``) into frozen dataclasses.

Validation collects every problem with its location (``models.NAME.files[0].sha256``) and what was expected,
so one run shows a registry author everything to fix. Only ``yaml.SafeLoader`` is used (through a subclass
that additionally rejects duplicate keys, which plain ``safe_load`` silently overwrites); libyaml's C parser
(``CSafeLoader``) when PyYAML has it, about six times faster than the pure-Python one.

Load cost is bounded and linear: the file must be a regular file of at most :data:`MAX_REGISTRY_BYTES`, and the
document may expand (through YAML aliases) to at most :data:`MAX_REGISTRY_VALUES` values. A 50 MB registry used
to take minutes and gigabytes, nearly all of it in the pure-Python YAML parser's node objects.
"""


from __future__ import annotations

import os
from pathlib import Path

from ssdtool.constants import REGISTRY_ENV
from ssdtool.errors import RegistryError
from ssdtool.registry.entries import (
    OUTPUT_FORMS,
    ConvertSpec,
    DefaultBoxSpec,
    FileEntry,
    HeadsSpec,
    InputSpec,
    ModelEntry,
    OutputSpec,
    Registry,
    SelectionSpec,
    package_file,
)
from ssdtool.registry.schema import (
    CACHE_LAYOUT_NAMES,
    MAX_NAME_BYTES,
    MAX_REGISTRY_BYTES,
    MAX_REGISTRY_VALUES,
    REGISTRY_FORMAT_VERSION,
    check_file_name,
    check_source_url,
    parse_registry,
)

__all__ = [
    "CACHE_LAYOUT_NAMES",
    "MAX_NAME_BYTES",
    "MAX_REGISTRY_BYTES",
    "MAX_REGISTRY_VALUES",
    "OUTPUT_FORMS",
    "PACKAGED_REGISTRY_NAME",
    "REGISTRY_ENV",
    "REGISTRY_FORMAT_VERSION",
    "ConvertSpec",
    "DefaultBoxSpec",
    "FileEntry",
    "HeadsSpec",
    "InputSpec",
    "ModelEntry",
    "OutputSpec",
    "Registry",
    "SelectionSpec",
    "check_file_name",
    "check_source_url",
    "load_registry",
    "packaged_registry_path",
    "parse_registry",
]

PACKAGED_REGISTRY_NAME = "models.yml"


def packaged_registry_path() -> Path:
    """The registry shipped with ssdtool: inside the wheel, or at the repository root in a source checkout."""
    packaged = package_file(PACKAGED_REGISTRY_NAME)
    if packaged is not None:
        return packaged
    # Editable/source checkouts: the one copy lives at the repository root next to the package.
    checkout = Path(__file__).resolve().parents[2] / PACKAGED_REGISTRY_NAME
    if checkout.is_file():
        return checkout
    raise RegistryError([f"the packaged registry {PACKAGED_REGISTRY_NAME} is missing from this installation"],
                        hint="reinstall ssdtool, or pass --registry FILE")


def load_registry(path: str | os.PathLike[str] | None = None) -> Registry:
    """Load ``path``, else ``$SSDTOOL_REGISTRY``, else the packaged registry."""
    if path is None and os.environ.get(REGISTRY_ENV):
        path = os.environ[REGISTRY_ENV]
    if path is None:
        resolved = packaged_registry_path()
        source = PACKAGED_REGISTRY_NAME
    else:
        resolved = Path(path).expanduser()
        source = str(path)
    from ssdtool.fsutil import UnsafePathError, read_regular

    try:
        text = read_regular(resolved, MAX_REGISTRY_BYTES, follow_links=True).decode("utf-8")
    except FileNotFoundError:
        raise RegistryError([f"{source}: file not found"],
                            hint="check the --registry / SSDTOOL_REGISTRY path") from None
    except UnsafePathError as exc:
        raise RegistryError([f"{source}: {exc.reason}"],
                            hint="pass a registry file with --registry FILE (devices and pipes are not read)") from None
    except ValueError as exc:
        if isinstance(exc, UnicodeDecodeError):
            raise RegistryError([f"{source}: not UTF-8 text: {exc}"]) from None
        raise RegistryError([f"{source}: larger than {MAX_REGISTRY_BYTES:,} bytes, the most a registry may have"],
                            hint="split it, or drop entries you do not use") from None
    except OSError as exc:
        raise RegistryError([f"{source}: cannot read: {exc.strerror or exc}"]) from None
    return parse_registry(text, source=source, registry_dir=resolved.parent)
