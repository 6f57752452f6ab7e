"""The query sample library: which images are the samples, in which order, and their preprocessed tensors.

* ``--images DIR --annotations FILE``: the annotation file's ``images`` list, in its order, is the sample order
  (as in the MLCommons reference, whose ``tools/accuracy-coco.py`` reads a record's ``qsl_idx`` as an index into
  that list). Every listed image must exist below DIR.
* ``--images DIR`` alone: the image files of DIR, sorted by name (:func:`ssdtool.inputs.walk_images`).
* Neither: :data:`GENERATED_SAMPLES` samples made of :data:`GENERATED_DISTINCT` distinct generated images (the
  same generator as ``bench``), so the full-size model does not hold 64 x 17 MB of identical-purpose pixels.

LoadGen calls :meth:`SampleLibrary.load` before timing starts; the images are decoded and preprocessed there,
so only inference is timed.
"""

from __future__ import annotations

import reprlib
import threading
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ssdtool import checked, fsutil
from ssdtool.errors import ImageError, InputError, UsageError
from ssdtool.imaging import generated_images, load_image, preprocess
from ssdtool.inputs import walk_images
from ssdtool.registry import ModelEntry

GENERATED_SAMPLES = 64
GENERATED_DISTINCT = 8
GENERATED_SEED = 21
_ANNOTATIONS_LIMIT = 1 << 30


def annotation_order(annotations: Path, images: Path) -> list[Path]:
    """The image files of a COCO-format annotation file, in its ``images`` order, below ``images``."""
    try:
        names = _listed_names(checked.loads(fsutil.read_regular(annotations, _ANNOTATIONS_LIMIT, follow_links=True)))
    except (OSError, ValueError) as exc:  # checked.JsonValueError is a ValueError
        raise InputError(f"cannot read the COCO annotations {annotations}: {exc}; expected a JSON object with an "
                         "'images' list of objects with 'file_name'",
                         hint="give --annotations a COCO-format file such as instances_val2017.json") from None
    paths: list[Path] = []
    missing: list[str] = []
    for name in names:
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise InputError(f"{annotations}: the image name {name!r} leaves the images folder",
                             hint="file_name entries must be paths below --images")
        path = images / relative
        (paths if path.is_file() else missing).append(path)
    if missing:
        raise InputError(f"{len(missing)} of the {len(names)} images listed in {annotations} are not in {images} "
                         f"(first: {missing[0]}); the listed order is the sample order, so none may be missing",
                         hint="point --images at the folder that holds the annotation file's images")
    if not paths:
        raise InputError(f"{annotations} lists no images", hint="give an annotation file with an 'images' list")
    return paths


def _listed_names(document: Any) -> list[str]:
    """The ``file_name`` of each entry of the document's ``images`` list; ``ValueError`` naming the first entry
    that has none."""
    listed = document.get("images") if isinstance(document, dict) else None
    if not isinstance(listed, list):
        raise ValueError("no 'images' list")
    names = []
    for index, image in enumerate(listed):
        name = image.get("file_name") if isinstance(image, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"images[{index}].file_name: expected a file name, found {reprlib.repr(name)}")
        names.append(name)
    return names


def image_files(images: Path, annotations: Path | None) -> list[Path]:
    """The sample files, in sample order."""
    if not images.is_dir():
        raise UsageError(f"--images must be a folder of images, got {images}",
                         hint="give --images DIR (and --annotations FILE for the COCO order)")
    if annotations is not None:
        return annotation_order(annotations, images)
    found = list(walk_images(images, recursive=False))
    if not found:
        raise InputError(f"no image files in {images}", hint="give --images a folder with .jpg or .png images")
    return found


class SampleLibrary:
    """The samples and, between LoadGen's load and unload calls, their tensors (thread-safe)."""

    def __init__(self, entry: ModelEntry, form: str, files: Sequence[Path] | None = None) -> None:
        self.entry = entry
        self.form = form
        self.files = list(files) if files is not None else None
        self._generated: list[np.ndarray] | None = None
        self._tensors: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def total_count(self) -> int:
        return len(self.files) if self.files is not None else GENERATED_SAMPLES

    @property
    def names(self) -> list[str]:
        if self.files is not None:
            return [str(path) for path in self.files]
        return [f"generated-{index % GENERATED_DISTINCT}" for index in range(GENERATED_SAMPLES)]

    def _tensor_for(self, index: int) -> np.ndarray:
        if self.files is None:
            distinct = index % GENERATED_DISTINCT
            with self._lock:
                for other, tensor in self._tensors.items():
                    if other % GENERATED_DISTINCT == distinct:
                        return tensor  # the same pixels: share the tensor
                if self._generated is None:
                    self._generated = generated_images(GENERATED_DISTINCT, seed=GENERATED_SEED)
                rgb = self._generated[distinct]
        else:
            try:
                rgb = load_image(self.files[index])
            except ImageError as exc:
                raise InputError(f"sample {index}: {exc}", hint="fix or remove the image, then rerun") from exc
        return preprocess(rgb, self.entry, form=self.form)

    def load(self, indices: Sequence[int]) -> None:
        """LoadGen's ``LoadSamplesToRam``: decode and preprocess, before any timing."""
        for index in indices:
            tensor = self._tensor_for(int(index))
            with self._lock:
                self._tensors[int(index)] = tensor

    def unload(self, indices: Sequence[int]) -> None:
        with self._lock:
            for index in indices:
                self._tensors.pop(int(index), None)

    def tensor(self, index: int) -> np.ndarray:
        with self._lock:
            try:
                return self._tensors[index]
            except KeyError:
                raise UsageError(f"LoadGen asked for sample {index}, which it did not load") from None
