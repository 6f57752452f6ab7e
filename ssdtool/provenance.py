"""Provenance of converted IRs: stored in the IR's runtime info under ``ssdtool``, read back from the XML.

Reading needs only ElementTree, so ``ssdtool info`` shows provenance without importing OpenVINO. Values are
JSON-encoded strings (OpenVINO runtime info holds strings).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

RT_INFO_ROOT = "ssdtool"


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
            record[child.tag] = json.loads(value)
        except json.JSONDecodeError:
            record[child.tag] = value
    return record


def rewrite_provenance(xml: Path, record: dict[str, Any]) -> bool:
    """Update the provenance block (the weights file is untouched); False if the IR has none.

    The new XML replaces the old by rename, so a reader (or a crash) never meets half a file.
    """
    tree = ElementTree.parse(xml)
    node = tree.getroot().find(f"rt_info/{RT_INFO_ROOT}")
    if node is None:
        return False
    for key, value in record.items():
        child = node.find(key)
        if child is None:
            child = ElementTree.SubElement(node, key)
        child.set("value", encode(value))
    from ssdtool.cache import atomic_write_text

    text = ElementTree.tostring(tree.getroot(), encoding="unicode", xml_declaration=False)
    atomic_write_text(xml, "<?xml version='1.0' encoding='utf-8'?>\n" + text)
    return True
