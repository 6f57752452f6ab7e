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
from pathlib import Path
from typing import Any

from ssdtool.checked import JsonValueError, is_int, loads

RT_INFO_ROOT = "ssdtool"
WEIGHTS_KEY = "weights"


def encode(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def read_provenance(xml: Path) -> dict[str, Any] | None:
    """The ssdtool provenance of an IR, or None when the file is unreadable or carries none."""
    values = _provenance_values(xml)
    if values is None:
        return None
    record: dict[str, Any] = {}
    for tag, value in values:
        try:
            record[tag] = loads(value)
        except JsonValueError:
            record[tag] = value
    return record


def _provenance_values(xml: Path) -> list[tuple[str, str]] | None:
    """The tag and ``value`` attribute of each child of the IR's ``<rt_info><ssdtool>`` block, in order: what
    ElementTree's ``parse(xml).getroot().find("rt_info/ssdtool")`` gives, read by expat with ElementTree's own
    settings (namespaces as ``{uri}name``), without building the tree of the whole graph (which took 40 times
    longer on a 10 000-element IR). None when the file cannot be read or parsed, or has no such block."""
    depth = 0
    state = {"rt_info": False, "block": False, "seen_block": False}
    values: list[tuple[str, str]] = []

    def name_of(tag: str) -> str:
        return "{" + tag if "}" in tag else tag  # expat's "uri}name" is ElementTree's "{uri}name"

    def start(tag: str, attributes: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        tag = name_of(tag)
        if depth == 2 and tag == "rt_info":  # any of them: find() takes the first that has the block
            state["rt_info"] = True
        elif depth == 3 and state["rt_info"] and tag == RT_INFO_ROOT and not state["seen_block"]:
            state["block"] = state["seen_block"] = True
        elif depth == 4 and state["block"]:
            values.append((tag, next((v for k, v in attributes.items() if name_of(k) == "value"), "")))

    def end(_tag: str) -> None:
        nonlocal depth
        if depth == 2:
            state["rt_info"] = False
        elif depth == 3:
            state["block"] = False
        depth -= 1

    parser = expat.ParserCreate(namespace_separator="}")
    parser.StartElementHandler, parser.EndElementHandler = start, end
    try:
        with open(xml, "rb") as stream:
            parser.ParseFile(stream)
    except (OSError, expat.ExpatError):
        return None
    return values if state["seen_block"] else None


def rewrite_provenance(xml: Path, record: dict[str, Any]) -> bool:
    """Update the provenance block (the weights file is untouched); False if the IR has none.

    The new XML replaces the old by rename, so a reader (or a crash) never meets half a file.
    """
    import xml.etree.ElementTree as ElementTree  # writing only: reading needs no tree

    tree = ElementTree.parse(xml)
    node = tree.getroot().find(f"rt_info/{RT_INFO_ROOT}")
    if node is None:
        return False
    for key, value in record.items():
        child = node.find(key)
        if child is None:
            child = ElementTree.SubElement(node, key)
        child.set("value", encode(value))
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
