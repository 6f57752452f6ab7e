"""The results file of an eval run: per-image detections as JSON lines, and its checkpoint.

``<results>`` holds a header line (the run's key: annotation file checksum, images folder, the images selected,
the configurations and model files), then one line per image in evaluation order:
``{"image_id", "width", "height", "error", "detections": [[[category_id, score, x, y, w, h], ...] per
configuration]}``. Floats are written with Python's shortest round-tripping repr, so the records read back are the
very floats the run computed, and metrics from a resumed run are those of an uninterrupted one, bit for bit.

``<results>.checkpoint.json`` (written atomically with :func:`ssdtool.fsutil.atomic_write`) says how many images
and bytes of the results file are complete, and each configuration's engine seconds so far. Bytes past the
checkpoint (a line being written when the process died) are cut off on resume.

Both are read as hostile input: a resume checks the checkpoint's fields, the header and every complete record
(strict JSON, each image in its place) before any image runs, and a state that does not hold up (a results file
deleted, cut short, padded, edited or replaced by a link) is a :class:`~ssdtool.errors.UsageError`, never scored.
An existing file at ``<results>`` that is not a results file is never replaced (:func:`refuse_replacing`).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ssdtool import checked, fsutil
from ssdtool.errors import UsageError

FORMAT = "ssdtool-eval-results"
VERSION = 1
#: Largest header line and checkpoint read (both hold the run's key: a few KB).
_STATE_LIMIT = 1 << 20
_RECORD_FIELDS = frozenset({"image_id", "width", "height", "error", "detections"})


@dataclass(frozen=True)
class ImageRecord:
    """One image's outcome: its size after EXIF rotation (None when it could not be read, then ``error``), and
    per configuration the detections ``[category_id, score, x, y, w, h]`` in pixels."""

    image_id: int
    width: int | None
    height: int | None
    error: str | None
    detections: list[list[list[float]]]

    def to_json(self) -> str:
        return json.dumps({"image_id": self.image_id, "width": self.width, "height": self.height,
                           "error": self.error, "detections": self.detections}, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str | bytes) -> ImageRecord:
        """The record on ``line``, checked field by field; ``ValueError`` saying what is wrong otherwise."""
        data = checked.loads(line)
        if not isinstance(data, dict) or set(data) != _RECORD_FIELDS:
            raise ValueError("expected an object with image_id, width, height, error and detections")
        image_id, width, height, error = data["image_id"], data["width"], data["height"], data["error"]
        if not checked.is_int(image_id):
            raise ValueError(f"image_id {image_id!r} is not an integer")
        if error is None:
            if not all(checked.is_int(v) and v > 0 for v in (width, height)):
                raise ValueError(f"width and height {width!r}, {height!r} are not positive integers")
        elif not isinstance(error, str) or width is not None or height is not None or data["detections"]:
            raise ValueError("a failed image has an error text and no size or detections")
        detections = data["detections"]
        if not isinstance(detections, list) or not all(_are_rows(rows) for rows in detections):
            raise ValueError("detections are not lists of [category_id, score, x, y, w, h] rows")
        return cls(image_id, width, height, error, detections)


#: Larger than any image side ssdtool decodes, any score or any category id.
_MAX_ROW_VALUE = 1e9
_NUMBER_TYPES = frozenset({int, float})


def _are_rows(rows: Any) -> bool:
    """A list of six-number rows, each number of a size a pixel coordinate, score or category id can have.

    The values come from :func:`ssdtool.checked.loads`, which already refused NaN, infinities and numbers beyond a
    float; what is left to check is the types (``bool`` is no number) and the magnitude (a huge int is finite but
    no row). Checked a record at a time with builtins: scoring reads every record back, 100,000 rows for 500
    images, and a call per value cost as much as COCOeval's own matching."""
    if type(rows) is not list:
        return False
    if not rows:
        return True
    if set(map(type, rows)) != {list} or set(map(len, rows)) != {6}:
        return False
    values = [value for row in rows for value in row]
    return set(map(type, values)) <= _NUMBER_TYPES and min(values) >= -_MAX_ROW_VALUE and \
        max(values) <= _MAX_ROW_VALUE


@dataclass(frozen=True)
class Resumed:
    """What an earlier run left: how many images are complete and each configuration's engine seconds."""

    images: int
    seconds: list[float]


def checkpoint_path(path: Path) -> Path:
    return path.with_name(path.name + ".checkpoint.json")


def _first_line(path: Path) -> bytes:
    with os.fdopen(fsutil.open_regular(path), "rb") as stream:
        return stream.readline(_STATE_LIMIT)


def refuse_replacing(path: Path) -> str | None:
    """Why the existing ``path`` must not be replaced by a new results file; None when it may be: nothing, a
    link (replaced, never followed), an empty file, or an ssdtool results file (of any run)."""
    with contextlib.suppress(OSError, ValueError):
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode) or (stat.S_ISREG(info.st_mode) and info.st_size == 0):
            return None
        header = checked.loads(_first_line(path))
        if isinstance(header, dict) and header.get("format") == FORMAT:
            return None
    return "it is not an ssdtool eval results file (its first line is not a results header), and --results " \
           "never replaces another file"


def refuse_replacing_checkpoint(path: Path) -> str | None:
    """Why the existing ``path`` must not be replaced by a results file's checkpoint (None: it may be)."""
    with contextlib.suppress(OSError, ValueError):
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode) or (stat.S_ISREG(info.st_mode) and info.st_size == 0):
            return None
        state = checked.loads(fsutil.read_regular(path, _STATE_LIMIT))
        if isinstance(state, dict) and "key" in state and "images" in state:
            return None
    return "it is not the checkpoint of an ssdtool eval results file, and --results never replaces another file"


def _kind(path: Path, refused: fsutil.UnsafePathError) -> str:
    try:
        return fsutil.describe(os.lstat(path).st_mode, path)
    except OSError:
        return refused.reason


def _shown(state: Mapping[str, Any], name: str) -> str:
    if name not in state:
        return "missing"
    text = json.dumps(state[name])
    return text if len(text) <= 60 else text[:57] + "..."


class ResultsFile:
    """Appends records to ``path`` (never a link or a special file) and checkpoints them."""

    def __init__(self, path: Path, key: Mapping[str, Any]) -> None:
        self.path, self.key = path, dict(key)
        self.configurations = len(self.key.get("configurations", ())) or 1
        self._stream: IO[bytes] | None = None
        self._complete = 0  # bytes of complete records (with the header), as last checkpointed

    def _broken(self, reason: str) -> UsageError:
        return UsageError(f"cannot resume from {self.path}: {reason}; the state it was left in is not scored",
                          hint="drop --resume to start over (or restore both files from a backup)")

    def _header(self) -> bytes:
        return json.dumps({"format": FORMAT, "version": VERSION, "key": self.key}, separators=(",", ":")).encode()

    def resume(self, image_ids: Sequence[int]) -> Resumed | None:
        """Where an earlier run of the same key over ``image_ids`` stopped, with the file cut back to its complete
        records; None when there is nothing to resume (no checkpoint, and no results file or an empty one).

        Every field of the checkpoint, the header and every complete record (each image in its place) are checked
        first; a file written for another run or a broken state is a :class:`UsageError`."""
        state_path = checkpoint_path(self.path)
        if not os.path.lexists(state_path):
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(self.path).st_size > 0:
                    raise self._broken(f"its checkpoint {state_path.name} is missing, so how much of it is "
                                       "complete is unknown")
            return None
        images, size, seconds = self._read_checkpoint(state_path, len(image_ids))
        try:
            mode = os.lstat(self.path).st_mode
            if not stat.S_ISREG(mode):
                raise self._broken(f"it is {fsutil.describe(mode, self.path)}, not the regular file ssdtool wrote")
            descriptor = fsutil.open_regular(self.path, os.O_RDWR)
        except FileNotFoundError:
            raise self._broken(f"the results file is gone, its checkpoint {state_path.name} is still there") from None
        except fsutil.UnsafePathError as exc:
            raise self._broken(exc.reason) from None
        except OSError as exc:
            raise self._broken(f"cannot open it: {exc.strerror or exc}") from None
        with os.fdopen(descriptor, "r+b") as stream:
            self._check_records(stream, images, size, image_ids)
            stream.truncate(size)  # only ever shortens: the records were just read up to ``size``
        self._stream = os.fdopen(fsutil.open_regular(self.path, os.O_WRONLY | os.O_APPEND), "ab")
        self._complete = size
        return Resumed(images, seconds)

    def _read_checkpoint(self, state_path: Path, count: int) -> tuple[int, int, list[float]]:
        try:
            state = checked.loads(fsutil.read_regular(state_path, _STATE_LIMIT))
        except fsutil.UnsafePathError as exc:
            raise self._broken(f"its checkpoint {state_path.name} is {_kind(state_path, exc)}, not the regular "
                               "file ssdtool wrote") from None
        except (OSError, ValueError) as exc:
            raise self._broken(f"cannot read its checkpoint {state_path.name}: {exc}") from None
        if not isinstance(state, dict):
            raise self._broken(f"its checkpoint {state_path.name} is not a JSON object")
        if state.get("key") != self.key:
            raise UsageError(f"cannot resume from {self.path}: it holds the results of a different run (other "
                             "annotations, images, selection, configurations or model files)",
                             hint="drop --resume to start over, or pass the --results FILE of that run")
        images, size, seconds = state.get("images"), state.get("bytes"), state.get("seconds")
        problems = []
        if not (checked.is_int(images) and 0 <= images <= count):
            problems.append(f"'images' is {_shown(state, 'images')}, expected a whole number from 0 to {count}")
        if not (checked.is_int(size) and size > 0):
            problems.append(f"'bytes' is {_shown(state, 'bytes')}, expected a positive whole number")
        if not (isinstance(seconds, list) and len(seconds) == self.configurations
                and all(checked.is_finite_number(s) and s >= 0 for s in seconds)):
            problems.append(f"'seconds' is {_shown(state, 'seconds')}, expected a list of {self.configurations} "
                            "engine times in seconds")
        if problems:
            raise self._broken(f"its checkpoint {state_path.name} does not hold up: {'; '.join(problems)}")
        return images, size, [float(s) for s in seconds]

    def _check_records(self, stream: IO[bytes], images: int, size: int, image_ids: Sequence[int]) -> None:
        """Raise unless the first ``size`` bytes are this run's header and ``images`` complete records of the
        first ``image_ids``, in order."""
        found = os.fstat(stream.fileno()).st_size
        if found < size:
            raise self._broken(f"it holds {found} bytes, its checkpoint counts {size}: it was cut short or "
                               "replaced after the checkpoint")
        if stream.readline(min(size, _STATE_LIMIT)) != self._header() + b"\n":
            raise self._broken("its first line is not the header of this run")
        for index in range(images):
            position = stream.tell()
            line = stream.readline(size - position)
            number = index + 2
            if not line.endswith(b"\n"):
                raise self._broken(f"line {number} is not a complete line within the {size} bytes the checkpoint "
                                   "counts")
            try:
                record = ImageRecord.from_json(line)
            except ValueError as exc:
                raise self._broken(f"line {number} is not an image record: {exc}") from None
            if record.image_id != image_ids[index]:
                raise self._broken(f"line {number} is image {record.image_id}, expected image {image_ids[index]}")
            if record.error is None and len(record.detections) != self.configurations:
                raise self._broken(f"line {number} has detections of {len(record.detections)} configurations, "
                                   f"expected {self.configurations}")
        if stream.tell() != size:
            raise self._broken(f"its checkpoint counts {images} images in {size} bytes, but they take "
                               f"{stream.tell()} bytes")

    def records(self) -> Iterator[ImageRecord]:
        """The complete records (as last checkpointed), read back from the file in order (the run keeps none in
        memory)."""
        remaining = self._complete
        with os.fdopen(fsutil.open_regular(self.path), "rb") as stream:
            header = stream.readline()
            remaining -= len(header)
            for line in stream:
                remaining -= len(line)
                if remaining < 0:
                    return
                yield ImageRecord.from_json(line)

    def start(self) -> None:
        """A new results file with the header line (an earlier file at ``path`` is replaced: the caller checked
        with :func:`refuse_replacing` that it may be)."""
        try:
            if self.path.is_dir() and not self.path.is_symlink():
                raise IsADirectoryError(21, "it is a folder")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(checkpoint_path(self.path))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            descriptor = fsutil.open_regular(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        except OSError as exc:
            raise UsageError(f"cannot write the results file {self.path}: {exc.strerror or exc}",
                             hint="choose another --results FILE, in a folder that exists and you can write") from None
        self._stream = os.fdopen(descriptor, "ab")
        self._stream.write(self._header() + b"\n")
        self.checkpoint(0, [0.0] * self.configurations)

    def append(self, record: ImageRecord) -> None:
        assert self._stream is not None
        self._stream.write(record.to_json().encode() + b"\n")

    def checkpoint(self, images: int, seconds: Sequence[float]) -> None:
        """Make everything appended so far durable, then record it atomically."""
        assert self._stream is not None
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._complete = self._stream.tell()
        state = {"key": self.key, "images": images, "bytes": self._complete, "seconds": list(seconds)}
        fsutil.atomic_write(checkpoint_path(self.path), json.dumps(state).encode())

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
