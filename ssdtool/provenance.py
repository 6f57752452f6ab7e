"""Provenance of converted IRs: stored in the IR's runtime info under ``ssdtool``, read back from the XML.

Reading needs only expat (the parser under ElementTree), so ``ssdtool info`` shows provenance without importing
OpenVINO; the whole graph is parsed but never built into a tree (every warm start reads it). Values are
JSON-encoded strings (OpenVINO runtime info holds strings), read back as strict JSON (:func:`ssdtool.checked.loads`:
no ``NaN``, no overflow, bounded nesting); a value that is not is kept as the string it is, and whoever reads a
field checks its type and range.

The record includes ``weights``: the ``.bin`` file's name, size and sha256, written once the weights are final.
:func:`ir_problem` compares them with the file on disk, so a truncated or replaced ``.bin`` is never "up to date".
"""

from __future__ import annotations

import hashlib
import json
import os
import xml.parsers.expat as expat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssdtool.checked import JsonValueError, is_int, loads

RT_INFO_ROOT = "ssdtool"
WEIGHTS_KEY = "weights"


def encode(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def read_provenance(xml: Path) -> dict[str, Any] | None:
    """The ssdtool provenance of an IR, or None when the file is unreadable or carries none."""
    values = _section_values(xml)
    if values is None:
        return None
    record: dict[str, Any] = {}
    for tag, value in values:
        try:
            record[tag] = loads(value)
        except JsonValueError:
            record[tag] = value
    return record


def read_section(xml: Path, name: str) -> dict[str, str] | None:
    """Another runtime-info section of the IR as written (Model API's ``model_info``): ``{key: value}``, or None
    when the file is unreadable or has no such section."""
    values = _section_values(xml, name)
    return None if values is None else dict(values)


def _section_values(xml: Path, name: str = RT_INFO_ROOT) -> list[tuple[str, str]] | None:
    """The tag and ``value`` attribute of each child of the IR's ``<rt_info><NAME>`` section, in order: what
    ElementTree's ``parse(xml).getroot().find("rt_info/NAME")`` gives. None when the file cannot be read or parsed,
    or has no such section."""
    sections = _rt_info_sections(xml)
    return None if sections is None else sections.get(name)


#: The runtime-info sections of the IR documents read last, by a digest of their bytes: a warm start reads the
#: provenance, the Model API section and the runtime checks of one IR (reading and hashing its XML again costs a
#: tenth of parsing it).
_SECTIONS: dict[bytes, dict[str, tuple[tuple[str, str], ...]] | None] = {}
_SECTIONS_KEPT = 8


def _rt_info_sections(xml: Path) -> dict[str, list[tuple[str, str]]] | None:
    """Every section of the IR's runtime info: for each NAME, the children of the first ``<rt_info><NAME>`` in
    document order (ElementTree's ``find``), as (tag, ``value``) pairs. Read by expat with ElementTree's own
    settings (namespaces as ``{uri}name``), without building the tree of the whole graph (40 times faster on a
    10 000-element IR; every warm start reads it), and parsed once per document. None when the file cannot be read
    or parsed."""
    try:
        data = Path(xml).read_bytes()
    except OSError:
        return None
    key = hashlib.blake2b(data, digest_size=16).digest()
    if key not in _SECTIONS:
        while len(_SECTIONS) >= _SECTIONS_KEPT:
            _SECTIONS.pop(next(iter(_SECTIONS)))
        _SECTIONS[key] = _parse_rt_info(data)
    found = _SECTIONS[key]
    return None if found is None else {name: list(values) for name, values in found.items()}


def _parse_rt_info(data: bytes) -> dict[str, tuple[tuple[str, str], ...]] | None:
    depth = 0
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None  # the section being read, when it is the first of its name
    in_rt_info = False

    def name_of(tag: str) -> str:
        return "{" + tag if "}" in tag else tag  # expat's "uri}name" is ElementTree's "{uri}name"

    def start(tag: str, attributes: dict[str, str]) -> None:
        nonlocal depth, current, in_rt_info
        depth += 1
        tag = name_of(tag)
        if depth == 2:
            in_rt_info = tag == "rt_info"
        elif depth == 3 and in_rt_info and tag not in sections:
            current = sections[tag] = []
        elif depth == 4 and current is not None:
            current.append((tag, next((v for k, v in attributes.items() if name_of(k) == "value"), "")))

    def end(_tag: str) -> None:
        nonlocal depth, current
        if depth == 3:
            current = None
        depth -= 1

    parser = expat.ParserCreate(namespace_separator="}")
    parser.StartElementHandler, parser.EndElementHandler = start, end
    try:
        parser.Parse(data, True)
    except expat.ExpatError:
        return None
    return {name: tuple(values) for name, values in sections.items()}


def rewrite_provenance(xml: Path, record: dict[str, Any],
                       sections: Mapping[str, Mapping[str, str]] | None = None) -> bool:
    """Update the provenance block (the weights file is untouched); False if the IR has none.

    ``sections``: other runtime-info sections to write whole, replacing any of the same name (Model API's
    ``model_info``), as OpenVINO writes them: ``<rt_info><NAME><KEY value="..."/></NAME></rt_info>``, keys sorted.
    The new XML replaces the old by rename, so a reader (or a crash) never meets half a file.
    """
    import xml.etree.ElementTree as ElementTree  # writing only: reading needs no tree

    tree = ElementTree.parse(xml)
    rt_info = tree.getroot().find("rt_info")
    node = None if rt_info is None else rt_info.find(RT_INFO_ROOT)
    if rt_info is None or node is None:
        return False
    for key, value in record.items():
        child = node.find(key)
        if child is None:
            child = ElementTree.SubElement(node, key)
        child.set("value", encode(value))
    for name, values in (sections or {}).items():
        for old in rt_info.findall(name):
            rt_info.remove(old)
        section = ElementTree.SubElement(rt_info, name)
        for key in sorted(values):
            ElementTree.SubElement(section, key).set("value", values[key])
    from ssdtool.fsutil import atomic_write

    text = ElementTree.tostring(tree.getroot(), encoding="unicode", xml_declaration=False)
    atomic_write(xml, ("<?xml version='1.0' encoding='utf-8'?>\n" + text).encode("utf-8"))
    return True


def weights_record(xml: Path) -> dict[str, Any]:
    """The ``weights`` provenance entry of the IR's ``.bin``: name, size in bytes and sha256."""
    binary = xml.with_suffix(".bin")
    digest = hashlib.sha256()
    size = 0
    with open(binary, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"file": binary.name, "size": size, "sha256": digest.hexdigest()}


def ir_problem(xml: Path, record: dict[str, Any] | None = None, *, hash_weights: bool = False) -> str | None:
    """What is wrong with the installed IR at ``xml``, or None when it is intact.

    Intact: the XML parses and carries ssdtool provenance with a ``weights`` entry, and the ``.bin`` is a regular
    file of the recorded size (and, with ``hash_weights``, the recorded sha256: about 0.1 s per 100 MB). ``record``
    is the provenance when the caller has already read it.
    """
    record = read_provenance(xml) if record is None else record
    if record is None:
        return f"{xml} is unreadable or carries no ssdtool provenance"
    weights = record.get(WEIGHTS_KEY)
    if not isinstance(weights, dict) or not is_int(weights.get("size")) or weights["size"] < 0:
        return f"{xml} records no weights size (made by an older ssdtool)"
    binary = xml.with_suffix(".bin")
    try:
        info = os.stat(binary)
    except OSError as exc:
        return f"{binary}: {exc.strerror or exc}"
    if not os.path.isfile(binary) or info.st_size != weights["size"]:
        return f"{binary} has {info.st_size} bytes, its provenance records {weights['size']}"
    if hash_weights and weights_record(xml)["sha256"] != weights.get("sha256"):
        return f"{binary} does not have the sha256 its provenance records"
    return None
