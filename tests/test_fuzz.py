"""Fuzz pass over what ssdtool reads from files it does not control: registry documents (valid ones, mutated) and
the cache's verification records and lock owner notes.

The property: any input gives exit 0 or a documented exit code with a message (and a JSON object under --json),
never exit 1 and never a traceback. Example counts stay modest so the suite stays fast; CI can raise them with
``--hypothesis-seed`` or a profile.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssdtool.cache import Cache
from ssdtool.cli import cli
from ssdtool.download import FetchOptions, fetch
from ssdtool.download.locks import describe_holder as _describe_holder
from ssdtool.errors import RegistryError
from ssdtool.registry import load_registry, schema
from tests.httpserver import FaultyServer
from tests.test_download import PAYLOAD, file_entry, write_registry

ROOT = Path(__file__).resolve().parent.parent
PACKAGED = yaml.safe_load((ROOT / "models.yml").read_text())
PACKAGED_TEXT = (ROOT / "models.yml").read_text()
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | text
           | st.sampled_from(["x" * 300, "../escape", "/etc/passwd", "openvino", ".ssdtool", "a\nb", "http://[::1",
                              "https://user:pw@host/f", "synthetic:", "file://", "0" * 64, "FP64"]))
junk = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(text, children, max_size=4), max_leaves=12)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value in a parsed registry document."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


HOSTILE_STRINGS = st.sampled_from(["x" * 300, "é" * 150, "../escape", "/etc/passwd", "openvino", ".ssdtool",
                                   "OPENVINO", "a\nb", "a\x00b", "x.part", "http://[::1", "http://h:99999/f",
                                   "https://user:pw@/f", "synthetic:", "file://", "ftp://h/f", "", " "])


@st.composite
def mutated_registries(draw: st.DrawFn) -> dict[str, Any]:
    """The packaged registry with one to four mutations: a value replaced by junk, a key or item dropped, an
    unknown key added, or a model renamed; and often one hostile string where names and URLs go (where the
    cache and the network use them, a generic mutation rarely lands)."""
    data = copy.deepcopy(PACKAGED)
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(data["models"])))
        entry = data["models"][name]
        where = draw(st.sampled_from(["file name", "source", "labels", "model name", "default"]))
        value = draw(HOSTILE_STRINGS | text)
        if where == "file name":
            entry["files"][0]["name"] = value
        elif where == "source":
            entry["files"][0]["sources"] = [value]
        elif where == "labels":
            entry["labels"] = value
        elif where == "model name":
            data["models"][value] = data["models"].pop(name)
        else:
            data["default_model"] = value
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        path = draw(st.sampled_from(list(_paths(data))))
        if not path:
            continue
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        operation = draw(st.sampled_from(["replace", "drop", "add", "rename"]))
        if operation == "replace":
            parent[last] = draw(junk)
        elif operation == "drop":
            del parent[last]
        elif operation == "add" and isinstance(parent, dict):
            parent[draw(text)] = draw(junk)
        elif operation == "rename" and isinstance(parent, dict):
            parent[draw(text | st.sampled_from(["m" * 300, "bad name", "-x"]))] = parent.pop(last)
    return data


def _documented_exit(args: list[str], allowed: set[int]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in allowed, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    if result.exit_code:
        assert result.stderr.startswith("error: ") or "\nerror: " in result.stderr, result.stderr
    json.loads(result.stdout)  # --json: a document on success, an error object otherwise


@FUZZ
@given(document=mutated_registries())
def test_mutated_registry_documents_never_exit_1(document: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "registry.yml"
        path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False))
        base = ["--registry", str(path), "--cache-dir", str(Path(folder) / "cache")]
        _documented_exit([*base, "models", "--json"], {0, 3})
        _documented_exit([*base, "info", "--json"], {0, 3, 4})
        _documented_exit([*base, "verify", "--all", "--json"], {0, 3, 5, 14})


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(min_value=0, max_value=len(PACKAGED_TEXT)),
                                st.integers(min_value=0, max_value=20), st.binary(max_size=8)),
                      min_size=1, max_size=4))
def test_mutated_registry_text_never_exits_1(edits: list[tuple[int, int, bytes]]) -> None:
    """Bytes inserted, cut or replaced anywhere in the packaged models.yml: broken YAML, bad UTF-8, NULs."""
    data = PACKAGED_TEXT.encode()
    for position, cut, inserted in edits:
        data = data[:position] + inserted + data[position + cut:]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "registry.yml"
        path.write_bytes(data)
        _documented_exit(["--registry", str(path), "--cache-dir", str(Path(folder) / "cache"), "models", "--json"],
                         {0, 3})
    # PyYAML without libyaml falls back to its pure-Python parser, which fails in other places (a NUL, deep nests).
    with contextlib.suppress(RegistryError):
        schema._parse_yaml(data.decode("utf-8", "replace"), "fuzz.yml", schema._PurePythonLoader)


# ------------------------------------------------------------------------------------------------ cache records
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | text,
                           lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children,
                                                                                             max_size=4),
                           max_leaves=10)


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Cache, FaultyServer]]:
    folder = tmp_path_factory.mktemp("fuzz-records")
    with FaultyServer() as server:
        registry_path = write_registry(folder / "registry.yml",
                                  {"m": [file_entry("f.bin", PAYLOAD, [server.add("/m/f.bin", PAYLOAD)])]})
        model = load_registry(registry_path).model("m")
        cache = Cache.at(folder / "cache")
        fetch(model, cache, FetchOptions(mirror="", offline=False, retries=0))
        yield model, cache, server


@st.composite
def records(draw: st.DrawFn) -> bytes:
    """A verification record: a valid one with fields replaced by junk, any JSON value, or arbitrary bytes."""
    valid = {"size": len(PAYLOAD), "mtime_ns": 1, "checksums": {"sha256": hashlib.sha256(PAYLOAD).hexdigest()},
             "source": "http://x/f", "verified_at": 1.5}
    kind = draw(st.sampled_from(["mutated", "json", "bytes", "deep"]))
    if kind == "mutated":
        for key in draw(st.lists(st.sampled_from([*valid, "extra"]), min_size=1, max_size=3)):
            valid[key] = draw(json_values)
        return json.dumps(valid, allow_nan=True).encode()
    if kind == "json":
        return json.dumps(draw(json_values), allow_nan=True).encode()
    if kind == "deep":
        return draw(st.sampled_from([b"[", b"{\"a\":"])) * draw(st.integers(min_value=1000, max_value=200_000))
    return draw(st.binary(max_size=200))


@FUZZ
@given(record=records())
def test_any_verification_record_is_trusted_only_when_right(downloaded: tuple[Any, Cache, FaultyServer],
                                                            record: bytes) -> None:
    model, cache, server = downloaded
    cache.record_path(model, model.primary_file).write_bytes(record)
    [installed] = fetch(model, cache, FetchOptions(mirror="", offline=True))  # never the network: the file is there
    assert installed.cached and cache.file_path(model, model.primary_file).read_bytes() == PAYLOAD
    assert server.hits("/m/f.bin") == 1
    again = cache.read_record(model, model.primary_file)
    assert again is not None and again.checksums["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()


@FUZZ
@given(note=st.one_of(json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()), st.binary(max_size=100),
                      st.fixed_dictionaries({"pid": json_values, "host": json_values, "since": json_values})
                      .map(lambda v: json.dumps(v, allow_nan=True).encode())))
def test_any_lock_owner_note_reads_as_a_holder_or_unknown(downloaded: tuple[Any, Cache, FaultyServer],
                                                          note: bytes) -> None:
    model, cache, _server = downloaded
    cache.owner_path(model, model.primary_file).write_bytes(note)
    holder = cache.read_owner(model, model.primary_file)
    assert holder is None or (isinstance(holder.pid, int) and math.isfinite(holder.since))
    assert _describe_holder(holder)  # the lock-timeout message can always be written
