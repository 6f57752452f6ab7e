"""The one YAML loader: safe tags only, duplicate keys reported, nesting and alias expansion bounded.

Every YAML document ssdtool reads from outside (the registry, a KServe manifest already in an export folder) is
parsed by :func:`load`:

* ``yaml.SafeLoader`` only (no Python objects), through libyaml's C parser (``CSafeLoader``) when PyYAML was built
  with it (the usual wheels; about six times faster), else the pure-Python one;
* duplicate mapping keys are reported (plain ``safe_load`` keeps the last one silently), for the caller to list;
* nesting: libyaml stops at 1,000 levels, and the pure-Python parser's ``RecursionError`` is caught here;
* alias expansion: PyYAML builds each anchored value once and shares it, so parsing an alias bomb ("billion
  laughs") is cheap, but anything that walks the result (a comparison, ``repr``, a JSON dump) walks every use.
  :func:`load` counts the values the document expands to, alias uses included, and refuses past ``max_values``
  without walking further.

Errors are :class:`YamlValueError` (a ``ValueError``), so each reader maps them to its own typed error once, as
with :class:`ssdtool.checked.JsonValueError`. Imports only PyYAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

#: The most values (scalars, lists, mappings) a document may expand to, counting each use of an alias again.
MAX_VALUES = 200_000


class YamlValueError(ValueError):
    """A document that is not valid YAML, is nested too deeply, or expands past the bound."""

    def __init__(self, message: str) -> None:
        self.reason = message
        super().__init__(message)


class _UniqueKeys:
    """SafeLoader mixin that reports duplicate mapping keys (plain safe_load keeps the last one silently), and
    values PyYAML's constructors cannot build (an integer of 5,000 digits, ``2020-99-99``), which they raise as a
    bare ``ValueError``, as located YAML errors."""

    duplicate_keys: list[str]

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)  # type: ignore[misc]
        except (ValueError, OverflowError) as exc:
            shown = f" {node.value[:40]!r}" if isinstance(node, yaml.ScalarNode) else ""
            raise yaml.constructor.ConstructorError(None, None, f"cannot read the value{shown}: {exc}",
                                                    node.start_mark) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                self.duplicate_keys.append(
                    f"line {key_node.start_mark.line + 1}: duplicate key {key!r} "
                    f"(first defined on line {seen[key] + 1})"
                )
            elif isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)  # type: ignore[misc]


class PurePythonLoader(_UniqueKeys, yaml.SafeLoader):
    """The duplicate-key-reporting loader on PyYAML's pure-Python parser."""


#: The loader :func:`load` uses: libyaml's parser when PyYAML was built with it, else :class:`PurePythonLoader`.
UniqueKeyLoader: type = type("UniqueKeyLoader", (_UniqueKeys, yaml.CSafeLoader), {}) \
    if hasattr(yaml, "CSafeLoader") else PurePythonLoader


@dataclass(frozen=True)
class YamlDocument:
    """A parsed document and its duplicate keys (``line 3: duplicate key 'a' (first defined on line 1)``)."""

    data: Any
    duplicate_keys: list[str] = field(default_factory=list)


def load(text: str, *, max_values: int = MAX_VALUES, loader_class: type | None = None) -> YamlDocument:
    """Parse one YAML document from ``text`` (see the module docstring); :class:`YamlValueError` when it is not
    valid YAML, is nested too deeply, or expands to more than ``max_values`` values."""
    try:
        # The pure-Python reader checks the characters (a NUL, say) as soon as it is made: inside the try.
        loader = (loader_class or UniqueKeyLoader)(text)
    except yaml.YAMLError as exc:
        raise YamlValueError(f"not valid YAML: {exc}") from None
    loader.duplicate_keys = []
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise YamlValueError(f"not valid YAML: {exc}") from None
    except RecursionError:  # the pure-Python parser on deeply nested collections (libyaml stops at 1000 levels)
        raise YamlValueError("not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    if count_values(data, max_values) > max_values:
        raise YamlValueError(f"the document expands to more than {max_values:,} values (through YAML aliases, it "
                             f"seems: the file has {len(text):,} characters)")
    return YamlDocument(data, list(loader.duplicate_keys))


def count_values(data: Any, limit: int) -> int:
    """How many values ``data`` holds, each alias use counted again; stops counting past ``limit`` (an alias
    bomb, or a recursive structure, is then not walked to its end)."""
    count = 0
    pending = [data]
    while pending and count <= limit:
        value = pending.pop()
        count += 1
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return count
