"""The one place where numbers and JSON from outside are checked: every reader of numbers (annotations, detections
files, MLPerf logs, registry fields, server answers, ssdtool's own records) asks here.

Python's ``json`` module accepts ``NaN``, ``Infinity`` and ``-Infinity`` (none of them JSON), turns ``1e400`` into
``inf`` (and ``1`` followed by 400 zeros into an integer no ``float()`` takes), and raises ``RecursionError`` on a
deeply nested document. :func:`loads` refuses all of them with a :class:`JsonValueError` (a ``ValueError``) that
says where (``annotations[12].bbox[2]: NaN is not a JSON number``), so each reader maps it to its own typed error
once.
Imports nothing heavy (numpy only inside :func:`all_finite`).
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any


class JsonValueError(ValueError):
    """A document that is not strict, finite, bounded JSON. ``line`` and ``column`` are 1-based where known;
    ``path`` is where in the document a refused number sits (``annotations[12].bbox[2]``), where known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None, path: str | None = None
                 ) -> None:
        self.reason = message
        self.line = line
        self.column = column
        self.path = path
        if path is not None:
            where = f"{path}: "
        elif line is not None:
            where = f"line {line}, column {column}: "
        else:
            where = ""
        super().__init__(where + message)


def is_int(value: Any) -> bool:
    """An ``int`` and not a ``bool`` (JSON's ``true`` is an int in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A finite ``int`` or ``float``, not a ``bool``: the one check every reader of numbers applies. An integer too
    large for a 64-bit float is not one (``float()`` and numpy refuse it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def all_finite(array: Any) -> bool:
    """Every element of a numeric numpy array is finite (integer arrays always are)."""
    import numpy as np

    values = np.asarray(array)
    if not np.issubdtype(values.dtype, np.floating):
        return True
    return bool(np.isfinite(values).all())


def _refuse_constant(name: str) -> Any:
    raise JsonValueError(f"{name} is not a JSON number (non-finite values are refused)")


class _Refused:
    """Where a lenient re-parse met a number :func:`loads` refuses (only built on the error path)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _lenient_float(text: str) -> float | _Refused:
    value = float(text)
    return value if math.isfinite(value) else _Refused(text)


def _lenient_int(text: str) -> int | _Refused:
    try:
        return _float_sized_int(text)
    except JsonValueError:
        return _Refused(text)


def _key_path(parent: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{json.dumps(key)}]"


def _refused_paths(text: str, limit: int = 1_000_000) -> tuple[list[str], int]:
    """Where the numbers :func:`loads` refuses sit in ``text`` (parsed again leniently), in document order: the
    first path and how many there are. Nothing when the document cannot be parsed even so."""
    try:
        document = json.loads(text, parse_constant=_Refused, parse_float=_lenient_float, parse_int=_lenient_int)
    except (ValueError, RecursionError):
        return [], 0
    found: list[str] = []
    count = 0
    pending: list[tuple[str, Any]] = [("", document)]
    while pending and count < limit:
        path, value = pending.pop()
        if isinstance(value, _Refused):
            count += 1
            if not found:
                found.append(path or "top level")
        elif isinstance(value, dict):
            pending.extend((_key_path(path, str(k)), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            pending.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return found, count


def _shown(literal: str) -> str:
    return literal if len(literal) <= 40 else literal[:40] + "..."


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonValueError(f"the number {_shown(text)} is too large for a 64-bit float")
    return value


def _float_sized_int(text: str) -> int:
    """An integer literal within a 64-bit float's range (anything larger breaks every ``float()`` and numpy
    conversion downstream; past 4,300 digits Python's ``int()`` refuses it with a bare ``ValueError``)."""
    digits = len(text.lstrip("-"))
    value = int(text) if digits <= _FLOAT_MAX_DIGITS else None
    if value is None or abs(value) > sys.float_info.max:
        raise JsonValueError(f"the number {_shown(text)} is too large for a 64-bit float")
    return value


#: Digits of the largest 64-bit float (1.8e308): an integer literal with more is out of range.
_FLOAT_MAX_DIGITS = 309
#: A number literal that may overflow a 64-bit float: an exponent of three or more digits, or 210 digits in a row (a
#: two-digit exponent then needs 210 integer digits to pass 1e308). Only a document with such a literal pays for the
#: per-number checks of :func:`_finite_float` and :func:`_float_sized_int`.
_MAYBE_HUGE_NUMBER = re.compile(r"[eE]\+?0*[1-9]\d{2,}|\d{210}")


def loads(data: str | bytes) -> Any:
    """Parse strict JSON: UTF-8 (bytes are decoded here), finite numbers only, bounded nesting.

    Raises :class:`JsonValueError` for anything else: a refused number (``NaN``, ``Infinity``, one beyond a 64-bit
    float, integers included) with its ``path`` in the document (found by parsing it again, leniently: only on that
    error), a syntax error with its line and column. Nesting is
    bounded by the C decoder's recursion guard (about 1,000 levels, far beyond any document ssdtool reads), whose
    ``RecursionError`` becomes a :class:`JsonValueError` here, so no reader ever meets one.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonValueError(f"not UTF-8 text (byte {exc.start})") from None
    else:
        text = data
    huge = _MAYBE_HUGE_NUMBER.search(text) is not None
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float if huge else float,
                          parse_int=_float_sized_int if huge else int)
    except JsonValueError as exc:
        # A refused number: say where it is in the document's terms (a 25 MB annotation file is one line).
        paths, count = _refused_paths(text)
        if not paths:
            raise
        more = f"; {count} numbers in the document are refused" if count > 1 else ""
        raise JsonValueError(exc.reason + more, path=paths[0]) from None
    except json.JSONDecodeError as exc:
        raise JsonValueError(f"not JSON: {exc.msg}", exc.lineno, exc.colno) from None
    except RecursionError:
        raise JsonValueError("nested too deeply (more than about 1,000 levels)") from None
    except ValueError as exc:  # what the C scanner lets through from int() or float() (none known today)
        raise JsonValueError(f"not JSON: {exc}") from None
