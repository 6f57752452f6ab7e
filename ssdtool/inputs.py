"""Which files are the images: expanding the files, folders and glob patterns a user names into input files.

One list of image suffixes and one folder walk, shared by detection (sources on the command line) and INT8
calibration (a folder of representative images), so both find the same files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

#: What a folder walk picks up (explicitly named files are tried whatever their extension).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff",
                              ".webp", ".ppm", ".pgm", ".pbm", ".pnm"})
_GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class InputFile:
    """An image file found by :func:`find_images`: ``path`` as the user would write it, and ``relative``, its path
    below the directory argument it was found in (or its file name), for naming outputs."""

    path: str
    relative: str


def _has_glob(text: str) -> bool:
    return any(c in _GLOB_CHARACTERS for c in text)


def walk_images(root: Path, recursive: bool) -> Iterator[Path]:
    """Image files in ``root`` (sorted, hidden entries skipped), descending into subfolders when ``recursive``."""
    if not recursive:
        with os.scandir(root) as entries:
            names = sorted(e.name for e in entries if e.is_file() and not e.name.startswith("."))
        yield from (root / n for n in names if Path(n).suffix.lower() in IMAGE_EXTENSIONS)
        return
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield Path(folder) / name


def find_images(sources: Sequence[str | os.PathLike[str]], recursive: bool = False,
                exclude: Sequence[str | os.PathLike[str]] = ()) -> tuple[list[InputFile], list[str]]:
    """Expand image files, directories and glob patterns into input files, in argument order.

    Named files are kept even when missing or not images (they become per-image errors, so the user hears about
    them); directories contribute their image files (by extension, sorted; subfolders with ``recursive``); glob
    patterns (``*``, ``?``, ``[``) are expanded (``**`` spans folders with ``recursive``), their image files and
    folders sorted. A file reached twice is processed once. Files found below an ``exclude`` folder are skipped (so
    an output folder inside an input folder is not read back); files named explicitly are always kept.

    Returns the files and notes for people (patterns or folders that gave nothing).
    """
    found: list[InputFile] = []
    notes: list[str] = []
    seen: set[str] = set()
    excluded = [Path(e).resolve() for e in exclude]

    def add(path: Path, relative: str, named: bool = False) -> None:
        try:
            resolved = path.resolve() if _exists(path) else path.absolute()
        except (OSError, RuntimeError):  # a link loop
            resolved = path.absolute()
        key = str(resolved)
        if key in seen or (not named and any(_is_below(resolved, folder) for folder in excluded)):
            return
        seen.add(key)
        found.append(InputFile(str(path), relative))

    for source in sources:
        text = os.fspath(source)
        path = Path(text)
        if _is_dir(path):
            before = len(found)
            for image in walk_images(path, recursive):
                add(image, image.relative_to(path).as_posix())
            if len(found) == before:
                notes.append(f"no image files in folder {text}"
                             + ("" if recursive else " (use --recursive to search its subfolders)"))
        elif _has_glob(text) and not _exists(path):
            before = len(found)
            import glob  # patterns only: most runs name files and folders

            for match in sorted(glob.glob(os.path.expanduser(text), recursive=recursive)):
                candidate = Path(match)
                if candidate.is_dir():
                    for image in walk_images(candidate, recursive):
                        add(image, image.relative_to(candidate.parent).as_posix())
                elif candidate.suffix.lower() in IMAGE_EXTENSIONS:
                    add(candidate, candidate.name)
            if len(found) == before:
                notes.append(f"no image files match {text}")
        else:
            add(path, path.name, named=True)
    return found, notes


def _exists(path: Path) -> bool:
    """``path.exists()`` that is False instead of raising (a name over the file system's limit, say): such a path
    becomes a per-image error, and the other inputs still run."""
    try:
        return path.exists()
    except OSError:
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _is_below(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True
