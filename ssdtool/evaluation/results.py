"""The results file of an eval run: per-image detections as JSON lines, and its checkpoint.

``<results>`` holds a header line (the run's key: annotation file checksum, images folder, the images selected,
the configurations and model files), then one line per image in evaluation order:
``{"image_id", "width", "height", "error", "detections": [[[category_id, score, x, y, w, h], ...] per
configuration]}``. Floats are written with Python's shortest round-tripping repr, so the records read back are the
very floats the run computed, and metrics from a resumed run are those of an uninterrupted one, bit for bit.

``<results>.checkpoint.json`` (written atomically with :func:`ssdtool.fsutil.atomic_write`) says how many images
and bytes of the results file are complete, and each configuration's engine seconds so far. Bytes past the
checkpoint (a line being written when the process died) are cut off on resume.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ssdtool import fsutil
from ssdtool.errors import UsageError

FORMAT = "ssdtool-eval-results"
VERSION = 1


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
    def from_json(cls, line: str) -> ImageRecord:
        data = json.loads(line)
        return cls(data["image_id"], data["width"], data["height"], data["error"], data["detections"])


@dataclass(frozen=True)
class Resumed:
    """What an earlier run left: how many images are complete and each configuration's engine seconds."""

    images: int
    seconds: list[float]


def checkpoint_path(path: Path) -> Path:
    return path.with_name(path.name + ".checkpoint.json")


class ResultsFile:
    """Appends records to ``path`` (never a link or a special file) and checkpoints them."""

    def __init__(self, path: Path, key: Mapping[str, Any]) -> None:
        self.path, self.key = path, dict(key)
        self._stream: IO[bytes] | None = None

    def resume(self) -> Resumed | None:
        """Where an earlier run with the same key stopped, with the file cut back to its complete records; None
        when there is nothing to resume. A file written for another run is a :class:`UsageError`."""
        state_path = checkpoint_path(self.path)
        try:
            state = json.loads(fsutil.read_regular(state_path, 1 << 20))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot resume from {state_path}: {exc}",
                             hint="drop --resume to start over") from None
        if not isinstance(state, dict) or state.get("key") != self.key:
            raise UsageError(f"cannot resume from {self.path}: it holds the results of a different run (other "
                             "annotations, images, selection, configurations or model files)",
                             hint="drop --resume to start over, or pass the --results FILE of that run")
        size, images = int(state["bytes"]), int(state["images"])
        descriptor = fsutil.open_regular(self.path, os.O_RDWR)
        with os.fdopen(descriptor, "r+b") as stream:
            stream.truncate(size)
            stream.seek(0)
            found = sum(1 for _ in stream) - 1  # after the header
        if found != images:
            raise UsageError(f"cannot resume from {self.path}: the checkpoint counts {images} images, the file "
                             f"holds {found}", hint="drop --resume to start over")
        self._stream = os.fdopen(fsutil.open_regular(self.path, os.O_WRONLY | os.O_APPEND), "ab")
        return Resumed(images, [float(s) for s in state["seconds"]])

    def records(self) -> Iterator[ImageRecord]:
        """The complete records, read back from the file in order (the run keeps none in memory)."""
        state = json.loads(fsutil.read_regular(checkpoint_path(self.path), 1 << 20))
        remaining = int(state["bytes"])
        with os.fdopen(fsutil.open_regular(self.path), "rb") as stream:
            header = stream.readline()
            remaining -= len(header)
            for line in stream:
                remaining -= len(line)
                if remaining < 0:
                    return
                yield ImageRecord.from_json(line.decode("utf-8"))

    def start(self) -> None:
        """A new results file with the header line (an earlier file at ``path`` is replaced)."""
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
        header = {"format": FORMAT, "version": VERSION, "key": self.key}
        self._stream.write(json.dumps(header, separators=(",", ":")).encode() + b"\n")
        self.checkpoint(0, [])

    def append(self, record: ImageRecord) -> None:
        assert self._stream is not None
        self._stream.write(record.to_json().encode() + b"\n")

    def checkpoint(self, images: int, seconds: Sequence[float]) -> None:
        """Make everything appended so far durable, then record it atomically."""
        assert self._stream is not None
        self._stream.flush()
        os.fsync(self._stream.fileno())
        state = {"key": self.key, "images": images, "bytes": self._stream.tell(), "seconds": list(seconds)}
        fsutil.atomic_write(checkpoint_path(self.path), json.dumps(state).encode())

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

