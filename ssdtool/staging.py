"""Staged folders: temporary (and replaced) folders beside a target, named after their writer, so what a writer
that died left behind is recognised and removed, and a finished folder installed by rename.

Shared by conversion (:mod:`ssdtool.convert.workspace`) and export (:mod:`ssdtool.export.repository`); it needs only
:mod:`ssdtool.fsutil`, so exporting a repository does not load the converter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from pathlib import Path

from ssdtool import fsutil

log = logging.getLogger("ssdtool.staging")

# Temporary and replaced IR folders beside the target: ``.tmp-<target>@<host>.<pid>.<random>`` (and ``.old-``).
# Every converter into a target holds its lock while such a folder exists, so under the lock they are all left by
# a process that died (a SIGKILL, a power cut), except one of a live process on this host (kept, to be safe).
_LEFTOVER = re.compile(r"\.(tmp|old)-(?P<target>.+)@(?P<host>[^@/]*)\.(?P<pid>\d+)\.[0-9a-f]+")
# What ssdtool 0.x left: ``.tmp-<target>-<mkdtemp suffix>``, ``.tmp-<target>-fp32-<suffix>``, ``.old-<target>-<pid>``.
_OLD_LEFTOVER = r"\.tmp-{target}-(fp32-)?[a-z0-9_]{{8}}|\.old-{target}-\d+"


def temporary_prefix(target: str, kind: str = "tmp") -> str:
    """The name prefix of a temporary (or replaced, ``kind="old"``) folder of ``target`` made by this process."""
    return f".{kind}-{target}@{socket.gethostname()}.{os.getpid()}."


def remove_leftovers(parent: Path, target: str) -> None:
    """Remove the temporary and replaced folders of ``target`` that a dead conversion (or export) left in
    ``parent``; the caller holds the lock of ``parent``'s writers."""
    old_format = re.compile(_OLD_LEFTOVER.format(target=re.escape(target)))
    host = socket.gethostname()
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        match = _LEFTOVER.fullmatch(name)
        if match is not None:
            if match["target"] != target or (match["host"] == host and _process_alive(int(match["pid"]))):
                continue
        elif not old_format.fullmatch(name):
            continue
        log.info("removing %s, left by a conversion that did not finish", parent / name)
        with contextlib.suppress(OSError):
            fsutil.remove_tree(parent / name)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, under another user
    return True


def install_folder(temporary: Path, destination: Path) -> None:
    """Swap the verified temporary folder into place; the old IR (if any) is removed only afterwards.

    Whatever is at ``destination`` (an IR folder, or a link or file planted there) is renamed away, never
    written through.
    """
    old = None
    if os.path.lexists(destination):
        old = destination.with_name(temporary_prefix(destination.name, "old") + "0")
        os.replace(destination, old)
    os.replace(temporary, destination)
    if old is not None:
        with contextlib.suppress(OSError):
            fsutil.remove_tree(old)
