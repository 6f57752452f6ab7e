"""Label helpers: the model's label file, class filters, and the COCO category-id map.

SSD-ResNet34 predicts 80 contiguous class indices (1..80, 0 is the background) that follow the order of the COCO
2017 categories, but COCO's own category ids run 1..90 with ten gaps (ids of categories dropped before release).
COCO-format results need the real ids, so :data:`COCO_CATEGORY_IDS` maps index -> id. numpy-free and cheap.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ssdtool.errors import RegistryError, UsageError

if TYPE_CHECKING:  # the registry's ModelEntry.label_names calls this module: a runtime import would be a cycle
    from ssdtool.registry import ModelEntry

#: Largest label file read (COCO's is 700 bytes).
MAX_LABEL_FILE_BYTES = 1 << 20

#: COCO category id of model label index i+1 (index 0 is background and has none): 1-11, 13-25, 27-28,
#: 31-44, 46-65, 67, 70, 72-82, 84-90.
COCO_CATEGORY_IDS: tuple[int, ...] = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83), *range(84, 91),
)

#: COCO 2017 category names in index order; a label file with exactly these names (after the background line)
#: is a COCO label file and gets COCO category ids.
COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)

assert len(COCO_CATEGORY_IDS) == len(COCO_NAMES) == 80


def coco_categories() -> list[dict[str, object]]:
    """COCO 2017's 80 detection categories, as instances_val2017.json lists them (the ``categories`` of an
    annotation file ssdtool writes: a generated dataset, or the pseudo ground truth of agreement AP)."""
    return [{"id": cid, "name": name, "supercategory": ""} for cid, name in zip(COCO_CATEGORY_IDS, COCO_NAMES,
                                                                              strict=True)]


@functools.lru_cache(maxsize=16)
def _read_label_file(path: str, mtime_ns: int, where: str) -> tuple[str, ...]:
    from ssdtool.fsutil import UnsafePathError, read_regular

    try:
        text = read_regular(Path(path), MAX_LABEL_FILE_BYTES, follow_links=True).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError([f"{where}: label file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})"],
                            hint="save the label file as UTF-8, one class name per line") from None
    except UnsafePathError as exc:
        raise RegistryError([f"{where}: label file {path}: {exc.reason}"]) from None
    except ValueError:
        raise RegistryError([f"{where}: label file {path} is larger than {MAX_LABEL_FILE_BYTES:,} bytes"]) from None
    except OSError as exc:
        raise RegistryError([f"{where}: cannot read the label file {path}: {exc.strerror or exc}"]) from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) < 2:
        raise RegistryError([f"{where}: label file {path} has {len(names)} names; expected the background and "
                             "at least one class, one name per line"])
    return names


def label_names(entry: ModelEntry) -> tuple[str, ...]:
    """The model's label names by index (0 is the background), read once per file version.

    Raises :class:`RegistryError` (exit 3) for a label file that is not UTF-8 text or has fewer than two names.
    """
    path = entry.label_path()
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError as exc:
        raise RegistryError([f"models.{entry.name}.labels: cannot read the label file {path}: "
                             f"{exc.strerror or exc}"]) from None
    return _read_label_file(str(path), mtime_ns, f"models.{entry.name}.labels")


def check_label_ids(entry: ModelEntry, names: tuple[str, ...], label_ids: Iterable[int]) -> None:
    """Raise :class:`RegistryError` when the model predicted a label id its label file has no name for.

    A short label file is a registry mistake (a truncated copy, the wrong file); naming such labels
    ``class_<id>`` would hide it, so detection stops with exit 3 instead.
    """
    beyond = sorted({int(i) for i in label_ids if not 0 <= int(i) < len(names)})
    if beyond:
        raise RegistryError(
            [f"models.{entry.name}.labels: the label file {entry.labels} has {len(names)} "
             f"name{'s' if len(names) != 1 else ''} (label ids 0.."
             f"{len(names) - 1}), but the model predicted label id {', '.join(map(str, beyond[:5]))}; expected "
             "one name per class the model predicts, the background first (81 lines for the COCO models)"],
            hint=f"check that {entry.labels} is complete and belongs to this model")


def is_coco_labels(names: tuple[str, ...]) -> bool:
    """True when the label file is the 80 COCO classes after a background line (COCO ids then apply)."""
    return len(names) == 81 and names[1:] == COCO_NAMES


def coco_category_map(names: tuple[str, ...]) -> dict[int, int]:
    """Model label index -> COCO category id, or an empty map when the labels are not the COCO classes."""
    if not is_coco_labels(names):
        return {}
    return {index: category for index, category in enumerate(COCO_CATEGORY_IDS, start=1)}


def label_name(names: tuple[str, ...], label_id: int) -> str:
    """The name of ``label_id``; ids outside the label file get a stable placeholder instead of an error."""
    return names[label_id] if 0 <= label_id < len(names) else f"class_{label_id}"


def _normalise(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def resolve_classes(entry: ModelEntry, classes: Iterable[str | int] | str | None) -> frozenset[int] | None:
    """Turn a class filter (names or label ids, or a comma-separated string) into label ids; None: no filter.

    Names match case-insensitively with '_' or '-' standing for spaces (``traffic_light``). Unknown names raise
    :class:`UsageError` naming close matches.
    """
    if classes is None:
        return None
    items: list[str | int] = ([part for part in classes.split(",")] if isinstance(classes, str)
                              else list(classes))
    names = label_names(entry)
    by_name = {_normalise(name): index for index, name in enumerate(names) if index > 0}
    wanted: set[int] = set()
    problems: list[str] = []
    for item in items:
        if isinstance(item, bool):
            problems.append(f"{item!r} is not a class name or id")
            continue
        if isinstance(item, int):
            index: int | None = item
        else:
            text = item.strip()
            if not text:
                continue
            index = int(text) if text.isdigit() else by_name.get(_normalise(text))
            if index is None:
                import difflib  # for a mistyped class name only

                close = difflib.get_close_matches(_normalise(text), list(by_name), n=3, cutoff=0.6)
                suggestion = f"; did you mean {', '.join(close)}?" if close else ""
                problems.append(f"unknown class {text!r}{suggestion}")
                continue
        if not 1 <= index < len(names):
            problems.append(f"class id {index} is out of range 1..{len(names) - 1}")
            continue
        wanted.add(index)
    if problems:
        raise UsageError(f"invalid class filter for {entry.name}: {'; '.join(problems)}",
                         hint=f"use names from {entry.labels} (e.g. person,car) or label ids 1..{len(names) - 1}")
    if not wanted:
        raise UsageError("the class filter is empty", hint="pass names or ids, e.g. --classes person,car")
    return frozenset(wanted)
