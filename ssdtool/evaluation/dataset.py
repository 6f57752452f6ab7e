"""A COCO-format annotation file, checked: every problem found with its location, before any model runs.

pycocotools trusts its input (a missing ``bbox`` is a ``KeyError`` deep inside ``evaluate``); ssdtool reads the
file once, checks what evaluation relies on, and reports every problem as ``annotations[12].bbox: ...`` in one
:class:`~ssdtool.errors.AnnotationError` (exit 33). numpy- and pycocotools-free.
"""

from __future__ import annotations

import functools
import hashlib
import os
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ssdtool import checked, fsutil
from ssdtool.errors import AnnotationError, UsageError
from ssdtool.labels import COCO_CATEGORY_IDS

#: Largest annotation file read (instances_train2017.json is 448 MB; val2017's is 25 MB).
MAX_ANNOTATION_BYTES = 2 << 30
#: Largest image side and largest pixel coordinate or box size (absolute) read from an annotation or results file:
#: 2^24, beyond which float32 (which accuracy-coco.py and pycocotools compute in) no longer counts whole pixels.
MAX_PIXELS = 1 << 24

_HINT = "pass a COCO instances file such as annotations/instances_val2017.json (see docs/eval.md)"


@dataclass(frozen=True)
class EvalImage:
    """One entry of the file's ``images`` list: its COCO id, file name (relative to the images folder), size as
    the file states it, and its position in the list (MLPerf's ``qsl_idx``)."""

    id: int
    file_name: str
    width: int | None
    height: int | None
    position: int


@dataclass(frozen=True)
class CocoDataset:
    """A checked COCO annotation file. ``data`` is the document with each annotation's ``area`` and ``iscrowd``
    filled in where the file left them out (what pycocotools expects); ``unknown_categories`` lists category ids
    that are not among COCO's 80 detection categories (a COCO model never predicts them, so their AP is 0)."""

    path: str
    sha256: str
    images: tuple[EvalImage, ...]
    categories: Mapping[int, str]
    annotation_count: int
    unknown_categories: tuple[int, ...]
    data: dict[str, Any] = field(repr=False, compare=False)

    def image(self, image_id: int) -> EvalImage:
        return self._by_id[image_id]

    @functools.cached_property
    def _by_id(self) -> dict[int, EvalImage]:
        return {image.id: image for image in self.images}

    def has_image(self, image_id: int) -> bool:
        return image_id in self._by_id


def bbox_problems(bbox: Any, where: str) -> list[str]:
    """What is wrong with a COCO ``[x, y, width, height]`` box at ``where`` (``annotations[12].bbox``), each
    problem located to its element; nothing when it holds four finite numbers within :data:`MAX_PIXELS` and a size
    that is not negative. Shared by annotation and results files."""
    if not isinstance(bbox, list) or len(bbox) != 4:
        return [f"{where}: expected [x, y, width, height] (four finite numbers), found {reprlib.repr(bbox)}"]
    problems = []
    for index, value in enumerate(bbox):
        if not checked.is_finite_number(value):
            problems.append(f"{where}[{index}]: expected a finite number, found {reprlib.repr(value)}")
        elif abs(value) > MAX_PIXELS:
            problems.append(f"{where}[{index}]: {reprlib.repr(value)} pixels is beyond {MAX_PIXELS:,} (2^24), the "
                            "largest coordinate or size read")
    if not problems and (bbox[2] < 0 or bbox[3] < 0):
        problems.append(f"{where}: width and height must not be negative, found {reprlib.repr(bbox)}")
    return problems


def read_json_file(path: str | os.PathLike[str], max_bytes: int, what: str, flag: str, hint: str
                   ) -> tuple[Any, bytes]:
    """The parsed JSON document at ``path`` (a regular file of at most ``max_bytes``) and its bytes: the one reader
    of eval's inputs (annotations, a results file, an MLPerf log). A missing or unreadable file is a usage error
    naming ``flag``; too large, not UTF-8, not strict JSON (``NaN``, ``Infinity``, a number beyond a 64-bit float,
    nesting past about 1,000 levels: :func:`ssdtool.checked.loads`) is an :class:`AnnotationError` that says where
    (the path in the document, or the line and column)."""
    shown = os.fspath(path)
    try:
        raw = fsutil.read_regular(path, max_bytes, follow_links=True)
    except FileNotFoundError:
        raise UsageError(f"{what} {shown} does not exist", hint=f"check {flag} FILE") from None
    except ValueError:
        raise AnnotationError(shown, [f"larger than {max_bytes >> 20} MiB"], hint=hint) from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {shown}: {exc.strerror or exc}", hint=f"check {flag} FILE") from None
    try:
        return checked.loads(raw), raw
    except checked.JsonValueError as exc:
        raise AnnotationError(shown, [str(exc)], hint=hint) from None


def load_annotations(path: str | os.PathLike[str]) -> CocoDataset:
    """Read and check the COCO annotation file at ``path``; :class:`AnnotationError` lists every problem."""
    document, raw = read_json_file(path, MAX_ANNOTATION_BYTES, "annotation file", "--annotations", _HINT)
    return check_annotations(document, os.fspath(path), hashlib.sha256(raw).hexdigest())


def check_annotations(document: Any, path: str = "<annotations>", sha256: str = "") -> CocoDataset:
    """Check an already parsed COCO annotation document (what :func:`load_annotations` does after reading)."""
    problems: list[str] = []
    if not isinstance(document, dict):
        raise AnnotationError(path, [f"top level: expected a JSON object with images, annotations and categories, "
                                     f"found {type(document).__name__}"], hint=_HINT)
    sections = {}
    for key in ("images", "annotations", "categories"):
        value = document.get(key)
        if not isinstance(value, list):
            found = "nothing" if value is None else type(value).__name__
            problems.append(f"{key}: expected a list, found {found}")
            value = []
        sections[key] = value
    categories = _check_categories(sections["categories"], problems)
    images = _check_images(sections["images"], problems)
    # Annotations may name any listed id: an image with another problem is reported once, not once per annotation.
    listed = {item["id"] for item in sections["images"] if isinstance(item, dict) and checked.is_int(item.get("id"))}
    annotations = _check_annotations(sections["annotations"], listed, categories, problems)
    if problems:
        raise AnnotationError(path, problems, hint=_HINT)
    data = {**document, "annotations": annotations}
    known = set(COCO_CATEGORY_IDS)
    return CocoDataset(path=path, sha256=sha256, images=tuple(images), categories=categories,
                       annotation_count=len(annotations),
                       unknown_categories=tuple(sorted(c for c in categories if c not in known)), data=data)


def _check_categories(items: Sequence[Any], problems: list[str]) -> dict[int, str]:
    categories: dict[int, str] = {}
    for index, item in enumerate(items):
        where = f"categories[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object, found {type(item).__name__}")
            continue
        category_id, name = item.get("id"), item.get("name", "")
        if not checked.is_int(category_id):
            problems.append(f"{where}.id: expected an integer, found {reprlib.repr(category_id)}")
        elif category_id in categories:
            problems.append(f"{where}.id: {category_id} is listed twice")
        else:
            categories[category_id] = str(name)
    return categories


def _check_images(items: Sequence[Any], problems: list[str]) -> list[EvalImage]:
    images: list[EvalImage] = []
    seen: set[int] = set()
    for index, item in enumerate(items):
        where = f"images[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object, found {type(item).__name__}")
            continue
        image_id, name = item.get("id"), item.get("file_name")
        ok = True
        if not checked.is_int(image_id):
            problems.append(f"{where}.id: expected an integer, found {reprlib.repr(image_id)}")
            ok = False
        elif image_id in seen:
            problems.append(f"{where}.id: {image_id} is listed twice")
            ok = False
        if not isinstance(name, str) or not name:
            problems.append(f"{where}.file_name: expected a file name, found {reprlib.repr(name)}")
            ok = False
        elif PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts or "\\" in name:
            problems.append(f"{where}.file_name: {reprlib.repr(name)} must be a relative path inside the images "
                            "folder")
            ok = False
        sizes = []
        for key in ("width", "height"):
            value = item.get(key)
            if value is not None and not (checked.is_int(value) and 0 < value <= MAX_PIXELS):
                problems.append(f"{where}.{key}: expected a positive integer of at most {MAX_PIXELS:,} (2^24), "
                                f"found {reprlib.repr(value)}")
                ok = False
            sizes.append(value)
        if ok:
            seen.add(image_id)
            images.append(EvalImage(image_id, name, sizes[0], sizes[1], index))
    return images


def _check_annotations(items: Sequence[Any], image_ids: set[int], categories: Mapping[int, str],
                       problems: list[str]) -> list[dict[str, Any]]:
    annotations: list[dict[str, Any]] = []
    seen: set[int] = set()
    for index, item in enumerate(items):
        where = f"annotations[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object, found {type(item).__name__}")
            continue
        before = len(problems)
        annotation_id = item.get("id")
        if not checked.is_int(annotation_id):
            problems.append(f"{where}.id: expected an integer, found {reprlib.repr(annotation_id)}")
        elif annotation_id in seen:
            problems.append(f"{where}.id: {annotation_id} is listed twice")
        else:
            seen.add(annotation_id)
        image_id, category_id = item.get("image_id"), item.get("category_id")
        if not checked.is_int(image_id) or image_id not in image_ids:
            problems.append(f"{where}.image_id: {reprlib.repr(image_id)} is not the id of an entry in images")
        if not checked.is_int(category_id) or category_id not in categories:
            problems.append(f"{where}.category_id: {reprlib.repr(category_id)} is not the id of an entry in "
                            "categories")
        bbox = item.get("bbox")
        problems.extend(bbox_problems(bbox, f"{where}.bbox"))
        crowd = item.get("iscrowd", 0)
        if not (checked.is_int(crowd) and crowd in (0, 1)):
            problems.append(f"{where}.iscrowd: expected 0 or 1, found {reprlib.repr(crowd)}")
        area = item.get("area")
        if area is not None and not (checked.is_finite_number(area) and area >= 0):
            problems.append(f"{where}.area: expected a finite number of at least 0, found {reprlib.repr(area)}")
        if len(problems) == before:
            filled = dict(item)
            filled.setdefault("iscrowd", 0)
            filled.setdefault("area", float(bbox[2]) * float(bbox[3]))
            annotations.append(filled)
    return annotations


def image_path(images_dir: Path, image: EvalImage) -> Path:
    """Where ``image`` is expected: its ``file_name`` below the images folder."""
    return images_dir / Path(*PurePosixPath(image.file_name).parts)
