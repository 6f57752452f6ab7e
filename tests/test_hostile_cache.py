"""A shared cache that another user has booby-trapped: links to victims, dangling links, files where folders belong
and the reverse, FIFOs. Whatever was planted, ssdtool must not change anything outside the cache (every test takes
a snapshot of a victim folder before and after), must not hang, and must fail with a located message and exit 5 when
it cannot go on.

What stays allowed (docs/download.md, "Security model"): the cache root itself may be a link, and a model file at
its final path may be a link that the user running ssdtool (or root) made; everything ssdtool writes or keeps for
itself (parts, records, owner notes, locks, folders, temporary folders, IR folders) is never followed.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ssdtool.cache import Cache
from ssdtool.cli import cli
from tests.httpserver import FaultyServer
from tests.modelkit import install_model
from tests.test_download import PAYLOAD, file_entry, write_registry

VICTIM_TEXT = b"precious: not ssdtool's to touch\n"


@pytest.fixture
def server() -> Iterator[FaultyServer]:
    with FaultyServer() as running:
        yield running


@pytest.fixture
def victims(tmp_path: Path) -> Path:
    """A folder outside the cache with a file in it: what a planted link points at."""
    folder = tmp_path / "victims"
    folder.mkdir()
    (folder / "victim.txt").write_bytes(VICTIM_TEXT)
    return folder


def snapshot(folder: Path) -> dict[str, tuple[str, int, str]]:
    """Everything below ``folder``: kind, size and content hash of each entry (links not followed)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        info = os.lstat(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode) else ""
        found[str(path.relative_to(folder))] = (stat.filemode(info.st_mode)[0], info.st_size, digest)
    return found


@pytest.fixture
def world(tmp_path: Path, server: FaultyServer) -> tuple[Path, Cache]:
    registry = write_registry(tmp_path / "registry.yml",
                              {"m": [file_entry("f.bin", PAYLOAD, [server.add("/m/f.bin", PAYLOAD)])]})
    cache = Cache.at(tmp_path / "cache")
    (cache.root / "m").mkdir(parents=True)
    return registry, cache


def download(registry: Path, cache: Cache) -> Result:
    return CliRunner().invoke(cli, ["--registry", str(registry), "--cache-dir", str(cache.root), "download",
                                    "--progress", "none", "--retries", "0"])


def plant_link(target: Path, at: Path) -> None:
    at.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, at)


# ------------------------------------------------------------------------------------------------ download
# (what to plant, the message that refuses it); None: the download goes on and ends well
TRAPS: dict[str, tuple[Callable[[Cache, Path], None], str | None]] = {
    "part links to a victim": (
        lambda c, v: plant_link(v / "victim.txt", c.part_path("m", "f.bin")),
        r"refusing to use .*f\.bin\.part: it is a symbolic link \(to .*victim\.txt\)"),
    "part is a dangling link out of the cache": (
        lambda c, v: plant_link(v / "created-by-ssdtool.bin", c.part_path("m", "f.bin")),
        r"refusing to use .*f\.bin\.part: it is a symbolic link"),
    "part is a folder": (
        lambda c, v: c.part_path("m", "f.bin").mkdir(),
        r"refusing to use .*f\.bin\.part: it is a folder"),
    "part is a FIFO": (
        lambda c, v: os.mkfifo(c.part_path("m", "f.bin")),
        r"refusing to use .*f\.bin\.part: it is a FIFO"),
    "lock links to a victim": (
        lambda c, v: plant_link(v / "victim.txt", c.lock_path("m", "f.bin")),
        r"cannot lock .*f\.bin\.lock: refusing to use .*: it is a symbolic link"),
    "metadata folder links to a victim folder": (
        lambda c, v: plant_link(v, c.metadata_dir("m")),
        r"refusing to use .*/m/\.ssdtool: it is a symbolic link .*expected a folder"),
    "metadata folder is a file": (
        lambda c, v: c.metadata_dir("m").write_bytes(b"x"),
        r"refusing to use .*/m/\.ssdtool: it is a regular file, expected a folder"),
    "record links to a victim": (
        lambda c, v: plant_link(v / "victim.txt", c.record_path("m", "f.bin")), None),
    "record is a dangling link out of the cache": (
        lambda c, v: plant_link(v / "created-by-ssdtool.json", c.record_path("m", "f.bin")), None),
    "owner note links to a victim": (
        lambda c, v: plant_link(v / "victim.txt", c.owner_path("m", "f.bin")), None),
    "model file is a folder": (
        lambda c, v: c.file_path("m", "f.bin").mkdir(),
        r"refusing to use .*/m/f\.bin: it is a folder, expected the model file"),
}


@pytest.mark.parametrize("trap", list(TRAPS))
def test_planted_cache_entries_never_reach_outside(world: tuple[Path, Cache], victims: Path,
                                                   server: FaultyServer, trap: str) -> None:
    registry, cache = world
    plant, refusal = TRAPS[trap]
    plant(cache, victims)
    before = snapshot(victims)
    result = download(registry, cache)
    assert snapshot(victims) == before  # nothing outside the cache changed, nothing was created there
    if refusal is None:
        assert result.exit_code == 0, result.output
        assert cache.file_path("m", "f.bin").read_bytes() == PAYLOAD
        for own in (cache.record_path("m", "f.bin"), cache.owner_path("m", "f.bin")):
            assert not own.is_symlink()  # replaced by rename (the record) or removed (the note), never followed
    else:
        assert result.exit_code == 5, result.output
        assert re.search("^error: " + refusal, result.stderr, re.MULTILINE), result.stderr
        assert not cache.file_path("m", "f.bin").is_file() or trap == "model file is a folder"


def test_model_folder_linked_elsewhere_is_refused(world: tuple[Path, Cache], victims: Path) -> None:
    registry, cache = world
    (cache.root / "m").rmdir()
    plant_link(victims, cache.root / "m")
    before = snapshot(victims)
    result = download(registry, cache)
    assert result.exit_code == 5 and "refusing to use" in result.stderr and "/cache/m: it is a symbolic link" in \
        result.stderr, result.output
    assert snapshot(victims) == before


def test_cache_root_may_be_a_link(tmp_path: Path, server: FaultyServer) -> None:
    """Moving a cache to a bigger disk with ln -s is the owner's choice, and keeps working."""
    registry = write_registry(tmp_path / "registry.yml",
                              {"m": [file_entry("f.bin", PAYLOAD, [server.add("/m/f.bin", PAYLOAD)])]})
    (tmp_path / "big-disk").mkdir()
    os.symlink(tmp_path / "big-disk", tmp_path / "cache")
    result = download(registry, Cache.at(tmp_path / "cache"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "big-disk" / "m" / "f.bin").read_bytes() == PAYLOAD


def test_own_link_at_the_final_path_is_used(world: tuple[Path, Cache], tmp_path: Path, server: FaultyServer) -> None:
    """A user may keep a model file elsewhere and link it into the cache: it is verified through the link."""
    registry, cache = world
    kept = tmp_path / "elsewhere.bin"
    kept.write_bytes(PAYLOAD)
    os.symlink(kept, cache.file_path("m", "f.bin"))
    result = download(registry, cache)
    assert result.exit_code == 0 and "cached" in result.stdout, result.output
    assert server.hits("/m/f.bin") == 0 and cache.file_path("m", "f.bin").is_symlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a link owned by another user")
def test_someone_elses_link_at_the_final_path_is_refused(world: tuple[Path, Cache], victims: Path) -> None:
    """A link planted by another user would make a root job read (and report the checksum of) any file."""
    registry, cache = world
    final = cache.file_path("m", "f.bin")
    os.symlink(victims / "victim.txt", final)
    os.lchown(final, 4242, 4242)
    before = snapshot(victims)
    result = download(registry, cache)
    assert result.exit_code == 5, result.output
    assert f"refusing to use {final}: it is a symbolic link (to {victims / 'victim.txt'}) owned by uid 4242" in \
        result.stderr
    assert snapshot(victims) == before and final.is_symlink()


# ------------------------------------------------------------------------------------------------ convert / detect
@pytest.fixture
def ir_world(tmp_path: Path, tiny_twin_path: Path) -> tuple[Path, Cache]:
    registry, cache = tmp_path / "registry.yml", Cache.at(tmp_path / "cache")
    install_model(cache.root, registry, "tiny", tiny_twin_path.read_bytes())
    return registry, cache


def convert_cli(registry: Path, cache: Cache, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--registry", str(registry), "--cache-dir", str(cache.root), "convert", "tiny",
                                    "--no-verify", *args])


def test_ir_root_linked_to_a_victim_folder(ir_world: tuple[Path, Cache], victims: Path) -> None:
    registry, cache = ir_world
    plant_link(victims, cache.ir_root("tiny"))
    before = snapshot(victims)
    result = convert_cli(registry, cache)
    assert result.exit_code == 5, result.output
    assert f"refusing to use {cache.ir_root('tiny')}: it is a symbolic link" in result.stderr
    assert snapshot(victims) == before


def test_ir_folder_linked_to_a_victim_folder_is_replaced_not_followed(ir_world: tuple[Path, Cache],
                                                                      victims: Path) -> None:
    registry, cache = ir_world
    ir_dir = cache.ir_dir("tiny", "FP32")
    plant_link(victims, ir_dir)
    before = snapshot(victims)
    assert Cache.converted_irs(cache, "tiny") == []  # a linked IR folder is nothing ssdtool installed
    result = convert_cli(registry, cache)
    assert result.exit_code == 0, result.output
    assert snapshot(victims) == before
    assert not ir_dir.is_symlink() and (ir_dir / "tiny.xml").is_file()
    assert [p.name for p in cache.ir_root("tiny").iterdir()] == ["FP32"]  # the link was renamed away, then removed


def test_compiled_model_cache_linked_elsewhere_is_not_used(ir_world: tuple[Path, Cache], victims: Path,
                                                           tmp_path: Path) -> None:
    """OpenVINO writes its blobs itself, following links: detect compiles without the cache rather than write there."""
    from PIL import Image

    registry, cache = ir_world
    assert convert_cli(registry, cache).exit_code == 0
    plant_link(victims, cache.metadata_dir("tiny") / "ov-cache")
    image = tmp_path / "in.png"
    Image.new("RGB", (40, 30), (90, 120, 30)).save(image)
    before = snapshot(victims)
    result = CliRunner().invoke(cli, ["-v", "--registry", str(registry), "--cache-dir", str(cache.root), "detect",
                                      "--backend", "openvino", str(image)])
    assert result.exit_code == 0, result.output
    assert "compiling without the compiled-model cache" in result.stderr
    assert snapshot(victims) == before
