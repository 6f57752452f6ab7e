"""The ``<file>.part`` a download streams into: refused when it is anything but a regular file, resumed from its
size, checked when it is already complete, and never larger than the space left for it."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat as stat_module
from pathlib import Path

from ssdtool import fsutil
from ssdtool.cache import Cache
from ssdtool.download.transfer import describe_mismatch, hash_file
from ssdtool.errors import CacheError
from ssdtool.registry import FileEntry

log = logging.getLogger("ssdtool.download")


class PartFile:
    """The part file of ``file`` at ``path``; removals go through ``cache`` (which never follows a link)."""

    def __init__(self, path: Path, file: FileEntry, cache: Cache) -> None:
        self.path, self.file, self.cache = path, file, cache

    def check(self) -> None:
        """Refuse a link, folder or special file where the .part belongs: it is never followed or written through."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat_module.S_ISREG(mode):
            raise CacheError(f"refusing to use {self.path}: it is {fsutil.describe(mode, self.path)}; ssdtool never "
                             "follows links or writes into special files in the cache",
                             hint=f"remove it (rm {self.path}) and run the command again")

    def size(self) -> int | None:
        with contextlib.suppress(FileNotFoundError):
            return os.lstat(self.path).st_size
        return None

    def resume_offset(self) -> int:
        """Where a resume starts: the part's size, or 0 (dropping a part that cannot be continued)."""
        self.check()
        size = self.size()
        if size is not None and size >= self.file.size:  # complete_digests() already dealt with a full one
            self.remove()
            return 0
        return size or 0

    def complete_digests(self) -> dict[str, str] | None:
        """The digests of a .part of full size that verifies (a download interrupted between its last write and
        the rename); a full-size part that does not verify, or a longer one, is removed."""
        part_size = self.size()
        if part_size is None or part_size < self.file.size:
            return None
        if part_size == self.file.size:
            size, digests = hash_file(self.path, self.file.checksums, follow_links=False)
            if describe_mismatch(self.file, size, digests) is None:
                return digests
        log.debug("discarding %s: %d bytes, or its checksum is wrong", self.path, part_size)
        self.remove()
        return None

    def check_free_space(self) -> None:
        needed = self.file.size - (self.size() or 0)
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return
        if free < needed:
            raise CacheError(f"not enough free space for {self.file.name} in {self.path.parent}: need {needed} "
                             f"bytes, {free} free", hint="free some space or pass another --cache-dir")

    def remove(self) -> None:
        self.cache.remove_file(self.path)
