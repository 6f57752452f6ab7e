"""Provenance of converted IRs: stored in the IR's runtime info under ``ssdtool``, read back from the XML.

Reading needs only ElementTree, so ``ssdtool info`` shows provenance without importing OpenVINO. Values are
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
import xml.etree.ElementTree as ElementTree
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
    try:
        root = ElementTree.parse(xml).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    node = root.find(f"rt_info/{RT_INFO_ROOT}")
    if node is None:
        return None
    record: dict[str, Any] = {}
    for child in node:
        value = child.get("value", "")
        try:
            record[child.tag] = loads(value)
        except JsonValueError:
            record[child.tag] = value
    return record


def read_section(xml: Path, name: str) -> dict[str, str] | None:
    """Another runtime-info section of the IR as written (Model API's ``model_info``): ``{key: value}``, or None
    when the file is unreadable or has no such section."""
    try:
        node = ElementTree.parse(xml).getroot().find(f"rt_info/{name}")
    except (OSError, ElementTree.ParseError):
        return None
    return None if node is None else {child.tag: child.get("value", "") for child in node}


def rewrite_provenance(xml: Path, record: dict[str, Any],
                       sections: Mapping[str, Mapping[str, str]] | None = None) -> bool:
    """Update the provenance block (the weights file is untouched); False if the IR has none.

    ``sections``: other runtime-info sections to write whole, replacing any of the same name (Model API's
    ``model_info``), as OpenVINO writes them: ``<rt_info><NAME><KEY value="..."/></NAME></rt_info>``, keys sorted.
    The new XML replaces the old by rename, so a reader (or a crash) never meets half a file.
    """
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
