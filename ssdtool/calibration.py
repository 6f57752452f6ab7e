"""Which images calibrate an INT8 model and which check it: a folder of photos, or deterministic generated images.

Calibration images go through detection's own loader and preprocessing (:func:`ssdtool.imaging.load_image`,
:func:`ssdtool.imaging.preprocess`), so NNCF sees exactly the pixels detection feeds the IR; the folder is walked
with detection's image suffixes (:mod:`ssdtool.inputs`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from ssdtool.errors import ImageError, UsageError
from ssdtool.imaging import generated_images, load_image, preprocess
from ssdtool.inputs import IMAGE_EXTENSIONS, walk_images
from ssdtool.int8_recipes import DEFAULT_CALIBRATION_SIZE, GUARD_IMAGES
from ssdtool.registry import ModelEntry

log = logging.getLogger("ssdtool.quantize")
T = TypeVar("T")

GENERATED = "generated"
CALIBRATION_SEED = 0
# Held-out generated images come from another seed, so no guard image was seen during calibration.
GUARD_SEED = 4242
GENERATED_SIZE = (640, 480)


@dataclass(frozen=True)
class CalibrationSet:
    """The images NNCF collects statistics on, and the held-out images for the accuracy guard.

    ``identity`` names the calibration images for provenance and the idempotency key: ``generated:seed=N`` or
    ``sha256:HEX`` over the sorted lines ``relative/path<TAB>sha256 of the file``, so renaming or editing an image
    changes it and moving the folder does not.
    """

    kind: str  # "generated" or "files"
    count: int
    identity: str
    folder: Path | None = None
    files: tuple[Path, ...] = field(default=())
    held_out: tuple[Path, ...] = field(default=())
    seed: int | None = None
    guard_images: int = GUARD_IMAGES

    @property
    def held_out_description(self) -> str:
        if self.kind == GENERATED:
            return f"generated:seed={GUARD_SEED}"
        return f"{len(self.held_out)} files of {self.folder} not used for calibration"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "count": self.count, "identity": self.identity}
        if self.kind == GENERATED:
            data["seed"] = self.seed
        else:
            data["sha256"] = self.identity.removeprefix("sha256:")
            data["folder"] = str(self.folder)
            data["held_out_files"] = len(self.held_out)
        return data

# ------------------------------------------------------------------------------------------------ calibration
def is_synthetic(entry: ModelEntry) -> bool:
    """True when the model is built by ssdtool's synthetic twin builder (every source is a ``synthetic:`` URL)."""
    return all(urlsplit(url).scheme.lower() == "synthetic" for url in entry.primary_file.sources)

def spread(items: Sequence[T], count: int) -> list[T]:
    """``count`` items spread evenly over ``items`` (in order), so a sorted folder is sampled end to end."""
    if count >= len(items):
        return list(items)
    return [items[(index * len(items)) // count] for index in range(count)]

def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden entries skipped, detection's suffixes), sorted by relative
    path."""
    return sorted(walk_images(folder, recursive=True), key=lambda path: path.relative_to(folder).as_posix())

def _files_identity(folder: Path, files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(folder).as_posix()):
        content = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                content.update(chunk)
        digest.update(f"{path.relative_to(folder).as_posix()}\t{content.hexdigest()}\n".encode())
    return f"sha256:{digest.hexdigest()}"

def resolve_calibration(entry: ModelEntry, calibration: Path | str | None, size: int = DEFAULT_CALIBRATION_SIZE,
                        guard_images: int = GUARD_IMAGES, exclude: Collection[Path] = ()) -> CalibrationSet:
    """Decide which images calibrate the model and which check it.

    ``calibration``: a folder of images, ``"generated"`` (deterministic generated images), or None - generated
    images for a synthetic model, an error otherwise (a real model needs representative photos). From a folder,
    the held-out images are files left over beyond ``size``; when the folder has ``size`` images or fewer, a fifth
    of them (at most ``guard_images``) is held out and the rest calibrates. Files in ``exclude`` (the annotated
    images an accuracy budget is measured on, which may live in the same folder) are never used.
    """
    if size < 1:
        raise UsageError(f"the calibration size must be at least 1, got {size}")
    if guard_images < 1:
        raise UsageError(f"the accuracy guard needs at least 1 held-out image, got {guard_images}")
    if calibration is None:
        if not is_synthetic(entry):
            raise UsageError(
                f"INT8 quantization of {entry.name} needs calibration images, and none were given",
                hint=f"pass --calibration DIR with {DEFAULT_CALIBRATION_SIZE} or more representative photos "
                     f"(e.g. COCO val2017 images): 'ssdtool convert {entry.name} --precision INT8 --calibration DIR'")
        calibration = GENERATED
    if isinstance(calibration, str) and calibration == GENERATED:
        if not is_synthetic(entry):
            log.warning("calibrating %s on generated images: they do not look like photos, so the INT8 ranges may "
                        "not suit real images (the accuracy guard still compares INT8 with FP32)", entry.name)
        return CalibrationSet(kind=GENERATED, count=size, identity=f"generated:seed={CALIBRATION_SEED}",
                              seed=CALIBRATION_SEED, guard_images=guard_images)
    folder = Path(calibration)
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise UsageError(f"calibration folder {folder} {what}; expected a folder of images or 'generated'",
                         hint="pass --calibration DIR (a folder of .jpg/.png images, searched recursively)")
    images = find_images(folder)
    if exclude:
        left_out = {os.path.realpath(path) for path in exclude}
        kept = [path for path in images if os.path.realpath(path) not in left_out]
        if len(kept) < len(images):
            log.info("calibration leaves out %d image(s) of %s that the accuracy budget is measured on",
                     len(images) - len(kept), folder)
        images = kept
    if len(images) < 2:
        raise UsageError(
            f"calibration folder {folder} holds {len(images)} image file(s); at least 2 are needed (one to "
            f"calibrate, one to check), {DEFAULT_CALIBRATION_SIZE} or more is usual",
            hint=f"add images with suffixes {', '.join(sorted(IMAGE_EXTENSIONS))}")
    if len(images) > size:
        held_count = min(guard_images, len(images) - size)
    else:
        held_count = min(guard_images, max(1, len(images) // 5))
    held_out = spread(images, held_count)
    held = set(held_out)
    remaining = [path for path in images if path not in held]
    files = spread(remaining, min(size, len(remaining)))
    if len(files) < size:
        log.info("calibrating on %d images of %s (%d requested; %d held out for the accuracy guard)", len(files),
                 folder, size, len(held_out))
    return CalibrationSet(kind="files", count=len(files), identity=_files_identity(folder, files), folder=folder,
                          files=tuple(files), held_out=tuple(held_out), guard_images=guard_images)

def load_rgb(path: Path) -> np.ndarray:
    """A calibration image file as upright 8-bit RGB, decoded by detection's loader (the same pixels); an image
    that cannot be read stops the conversion, naming the file."""
    try:
        return load_image(path, max_pixels=None)
    except ImageError as exc:
        raise ImageError(f"calibration image {path} cannot be read: {exc.message}",
                         hint="remove or re-export the file, or pass another --calibration folder") from None

def network_input(rgb: np.ndarray, entry: ModelEntry, input_type: str, input_layout: str) -> np.ndarray:
    """The IR's input for ``rgb``, exactly as detection makes it."""
    return preprocess(rgb, entry, form="ir", input_type=input_type, input_layout=input_layout)

def calibration_items(calibration: CalibrationSet) -> list[Any]:
    if calibration.kind == GENERATED:
        # Generated eagerly (0.9 MB each at 640x480): imaging.generated_images has no per-index form. Files are
        # read lazily, one at a time, in the dataset's transform.
        return list(generated_images(calibration.count, seed=CALIBRATION_SEED, size=GENERATED_SIZE))
    return list(calibration.files)

def held_out_images(calibration: CalibrationSet) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, rgb)`` of every held-out image, loaded lazily."""
    if calibration.kind == GENERATED:
        for index, rgb in enumerate(generated_images(calibration.guard_images, seed=GUARD_SEED,
                                                     size=GENERATED_SIZE)):
            yield f"generated:seed={GUARD_SEED}#{index}", rgb
        return
    for path in calibration.held_out:
        yield str(path), load_rgb(path)
