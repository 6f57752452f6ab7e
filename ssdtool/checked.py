"""The one place where numbers and JSON from outside are checked: every reader of numbers (annotations, detections
files, MLPerf logs, registry fields, server answers, ssdtool's own records) asks here.

Python's ``json`` module accepts ``NaN``, ``Infinity`` and ``-Infinity`` (none of them JSON), turns ``1e400`` into
``inf``, and raises ``RecursionError`` on a deeply nested document. :func:`loads` refuses all three with a
:class:`JsonValueError` (a ``ValueError``) that says where, so each reader maps it to its own typed error once.
Imports nothing heavy (numpy only inside :func:`all_finite`).
"""

from __future__ import annotations

import json
import math
from typing import Any


class JsonValueError(ValueError):
    """A document that is not strict, finite, bounded JSON. ``line`` and ``column`` are 1-based where known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        self.reason = message
        self.line = line
        self.column = column
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(where + message)


def is_int(value: Any) -> bool:
    """An ``int`` and not a ``bool`` (JSON's ``true`` is an int in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A finite ``int`` or ``float``, not a ``bool``: the one check every reader of numbers applies."""
    if isinstance(value, bool):
        return False
    # An int is always finite; math.isfinite(10**400) would raise OverflowError instead of answering.
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def all_finite(array: Any) -> bool:
    """Every element of a numeric numpy array is finite (integer arrays always are)."""
    import numpy as np

    values = np.asarray(array)
    if not np.issubdtype(values.dtype, np.floating):
        return True
    return bool(np.isfinite(values).all())


def _refuse_constant(name: str) -> Any:
    raise JsonValueError(f"{name} is not a JSON number (non-finite values are refused)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonValueError(f"the number {text[:40]} is too large for a 64-bit float")
    return value


def loads(data: str | bytes) -> Any:
    """Parse strict JSON: UTF-8 (bytes are decoded here), finite numbers only, bounded nesting.

    Raises :class:`JsonValueError` (with line and column where the parser knows them) for anything else. Nesting is
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
    try:
        # Every float goes through _finite_float (about 0.15 us each): cheaper than searching the text for literals
        # that might overflow first, which took twice as long as parsing a line of numbers.
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except JsonValueError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonValueError(f"not JSON: {exc.msg}", exc.lineno, exc.colno) from None
    except RecursionError:
        raise JsonValueError("nested too deeply (more than about 1,000 levels)") from None
