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
from collections.abc import Iterator
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


def _path_text(keys: list[str | int]) -> str:
    """``annotations[12].bbox[2]``: ``.key`` for identifier keys, ``["key"]`` for others, ``[i]`` for items."""
    text = ""
    for key in keys:
        if isinstance(key, int):
            text += f"[{key}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            text += f".{key}" if text else key
        else:
            text += f"[{json.dumps(key)}]"
    return text or "top level"


def _first_refused_path(text: str, huge: bool) -> str | None:
    """Where the first number :func:`loads` refuses sits in ``text``, parsed again leniently (only on that error
    path), in document order; None when the document cannot be parsed even so. The walk builds no path until it
    finds the number."""
    try:
        document = json.loads(text, parse_constant=_Refused, parse_float=_lenient_float if huge else float,
                              parse_int=_lenient_int if huge else int)
    except (ValueError, RecursionError):
        return None
    keys: list[str | int] = []
    stack: list[Iterator[tuple[str | int, Any]]] = [iter([("", document)])]
    while stack:
        step = next(stack[-1], None)
        if step is None:
            stack.pop()
            if keys:
                keys.pop()
            continue
        key, value = step
        if isinstance(value, _Refused):
            return _path_text([*keys, key][1:])
        if isinstance(value, dict):
            keys.append(key)
            stack.append(iter(value.items()))
        elif isinstance(value, list):
            keys.append(key)
            stack.append(enumerate(value))
    return None


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
#: An exponent of three or more digits. Two patterns, so each starts with a literal the regex engine jumps to (with
#: a character class it steps through every byte: 30 times slower on a 35 MB annotation file).
_LONG_EXPONENTS = (re.compile(rb"e\+?0*[1-9][0-9]{2}"), re.compile(rb"E\+?0*[1-9][0-9]{2}"))
#: 210 digits in a row, once every digit reads 0: with a two-digit exponent, a literal needs 210 integer digits to
#: pass 1e308 (and an integer 309 to pass a float's range).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGIT_RUN = b"0" * 210


def _may_hold_huge_number(raw: bytes) -> bool:
    """Whether a number literal in ``raw`` may pass a 64-bit float's range. Only a document where one may pays for
    the per-number checks of :func:`_finite_float` and :func:`_float_sized_int` (the scan costs about a tenth of the
    parse; Python callbacks on every float would cost more than half)."""
    return any(pattern.search(raw) for pattern in _LONG_EXPONENTS) or \
        _LONG_DIGIT_RUN in raw.translate(_DIGITS_AS_ZERO)


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
        raw = data
    else:
        text, raw = data, data.encode("utf-8", "surrogatepass")
    huge = _may_hold_huge_number(raw)
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float if huge else float,
                          parse_int=_float_sized_int if huge else int)
    except JsonValueError as exc:
        # A refused number: say where it is in the document's terms (a 25 MB annotation file is one line).
        path = _first_refused_path(text, huge)
        if path is None:
            raise
        raise JsonValueError(exc.reason, path=path) from None
    except json.JSONDecodeError as exc:
        raise JsonValueError(f"not JSON: {exc.msg}", exc.lineno, exc.colno) from None
    except RecursionError:
        raise JsonValueError("nested too deeply (more than about 1,000 levels)") from None
    except ValueError as exc:  # what the C scanner lets through from int() or float() (none known today)
        raise JsonValueError(f"not JSON: {exc}") from None
