"""read_provenance reads an IR's ``<rt_info><ssdtool>`` block with expat, without building the whole graph's tree (every
warm start reads it): it must give what ElementTree's ``find("rt_info/ssdtool")`` gives, for every document."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssdtool.checked import JsonValueError, loads
from ssdtool.provenance import read_provenance, read_section


def element_tree_reading(xml: Path) -> dict[str, Any] | None:
    """The reading read_provenance replaced, kept here as the reference."""
    try:
        root = ElementTree.parse(xml).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    node = root.find("rt_info/ssdtool")
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


BLOCK = '<ssdtool><precision value="&quot;FP32&quot;"/><parameters value="{&quot;recipe&quot;: 1}"/></ssdtool>'
CASES = {
    "plain": f'<net name="m"><layers><layer id="0"/></layers><rt_info>{BLOCK}</rt_info></net>',
    "no rt_info": '<net><layers/></net>',
    "no block": '<net><rt_info><other value="1"/></rt_info></net>',
    "second rt_info has it": f'<net><rt_info><x/></rt_info><rt_info>{BLOCK}</rt_info></net>',
    "two blocks": f'<net><rt_info>{BLOCK}<ssdtool><precision value="2"/></ssdtool></rt_info></net>',
    "nested deeper": f'<net><layers><rt_info>{BLOCK}</rt_info></layers></net>',
    "grandchildren": '<net><rt_info><ssdtool><a value="1"><b value="2"/></a></ssdtool></rt_info></net>',
    "duplicate tags": '<net><rt_info><ssdtool><a value="1"/><a value="[2]"/></ssdtool></rt_info></net>',
    "no value": '<net><rt_info><ssdtool><a/><b value=""/></ssdtool></rt_info></net>',
    "default namespace": f'<net xmlns="urn:x"><rt_info>{BLOCK}</rt_info></net>',
    "prefixed value": '<net xmlns:p="urn:p"><rt_info><ssdtool><a p:value="1" value="2"/></ssdtool></rt_info></net>',
    "only prefixed value": '<net xmlns:p="urn:p"><rt_info><ssdtool><a p:value="1"/></ssdtool></rt_info></net>',
    "dtd default": ('<!DOCTYPE net [<!ATTLIST a value CDATA "7">]><net><rt_info><ssdtool><a/></ssdtool></rt_info>'
                    '</net>'),
    "entities": '<net><rt_info><ssdtool><a value="&#34;x&#10;y&#34;"/><b value="&lt;&amp;"/></ssdtool></rt_info></net>',
    "undefined entity": '<net><rt_info><ssdtool><a value="&nope;"/></ssdtool></rt_info></net>',
    "unbound prefix": '<net><rt_info><ssdtool><q:a value="1"/></ssdtool></rt_info></net>',
    "not well formed": '<net><rt_info><ssdtool><a value="1"></ssdtool></rt_info></net>',
    "truncated": f'<net><rt_info>{BLOCK}',
    "empty": "",
    "latin-1": '<?xml version="1.0" encoding="iso-8859-1"?><net><rt_info><ssdtool><a value="\xe9"/></ssdtool>'
               '</rt_info></net>',
    "nan and deep": '<net><rt_info><ssdtool><a value="NaN"/><b value="' + "[" * 200 + "]" * 200 + '"/></ssdtool>'
                    '</rt_info></net>',
}


def element_tree_section(xml: Path, name: str) -> dict[str, str] | None:
    try:
        node = ElementTree.parse(xml).getroot().find(f"rt_info/{name}")
    except (OSError, ElementTree.ParseError):
        return None
    return None if node is None else {child.tag: child.get("value", "") for child in node}


@pytest.mark.parametrize("case", sorted(CASES))
def test_read_provenance_reads_what_element_tree_finds(tmp_path: Path, case: str) -> None:
    xml = tmp_path / "model.xml"
    xml.write_bytes(CASES[case].encode("latin-1" if case == "latin-1" else "utf-8"))
    assert read_provenance(xml) == element_tree_reading(xml)
    for name in ("ssdtool", "model_info", "other", "x", "{urn:x}ssdtool"):
        assert read_section(xml, name) == element_tree_section(xml, name), name


def test_a_rewritten_file_is_read_again(tmp_path: Path) -> None:
    """Sections are parsed once per document (by a digest of its bytes), so an edit of the same size in the same
    instant is still seen."""
    xml = tmp_path / "model.xml"
    xml.write_text('<net><rt_info><ssdtool><a value="1"/></ssdtool></rt_info></net>')
    assert read_provenance(xml) == {"a": 1}
    with open(xml, "r+") as stream:  # in place: same inode, same size, maybe the same timestamp
        stream.write('<net><rt_info><ssdtool><a value="2"/></ssdtool></rt_info></net>')
    assert read_provenance(xml) == {"a": 2}
    first = read_provenance(xml)
    assert first is not None
    first["a"] = 3  # a caller's copy: changing it changes nothing cached
    assert read_provenance(xml) == {"a": 2}


def test_a_real_block_is_read(tmp_path: Path) -> None:
    xml = tmp_path / "model.xml"
    xml.write_text(CASES["plain"])
    assert read_provenance(xml) == {"precision": "FP32", "parameters": {"recipe": 1}}
    assert read_provenance(tmp_path / "missing.xml") is None
    assert read_provenance(tmp_path) is None  # a folder


NAMES = st.sampled_from(["net", "rt_info", "ssdtool", "a", "layers", "p:rt_info"])


@st.composite
def documents(draw: st.DrawFn, depth: int = 0) -> str:
    name = "net" if depth == 0 else draw(NAMES)
    attributes = draw(st.dictionaries(st.sampled_from(["value", "id", "p:value"]),
                                      st.sampled_from(["1", '"s"', "[1, 2]", "NaN", "", "{"]), max_size=2))
    attribute_text = "".join(f' {k}="{v.replace(chr(34), "&quot;")}"' for k, v in attributes.items())
    namespace = ' xmlns:p="urn:p"' if depth == 0 else ""
    children = draw(st.lists(documents(depth + 1), max_size=3)) if depth < 4 else []
    return f"<{name}{namespace}{attribute_text}>{''.join(children)}</{name}>"


@settings(max_examples=300, deadline=None)
@given(documents())
def test_any_document_reads_the_same(document: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        xml = Path(folder) / "model.xml"
        xml.write_text(document)
        assert read_provenance(xml) == element_tree_reading(xml)
