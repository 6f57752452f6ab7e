"""The registry walk's tool: :class:`Checker` collects located problems (``models.NAME.input.mean: expected 3
numbers, got 2``) instead of stopping at the first, and checks scalars, lists and mappings."""

from __future__ import annotations

import math
from typing import Any

from ssdtool.checked import is_finite_number, is_int


class Checker:
    """Walks the parsed YAML, collecting located problems instead of stopping at the first."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{self.source}: {where or 'top level'}: {message}")

    def mapping(self, value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
                ) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.problem(where, f"expected a mapping, got {type_name(value)}")
            return None
        for key in value:
            if key not in required and key not in optional:
                allowed = ", ".join(required + optional)
                self.problem(f"{where}.{key}" if where else str(key), f"unknown key (allowed: {allowed})")
        for key in required:
            if key not in value:
                self.problem(where or "top level", f"missing key {key!r}")
        return value

    def string(self, value: Any, where: str, choices: tuple[str, ...] | None = None) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.problem(where, f"expected a non-empty string, got {describe(value)}")
            return None
        if choices is not None and value not in choices:
            self.problem(where, f"expected one of {', '.join(choices)}, got {value!r}")
            return None
        return value

    def integer(self, value: Any, where: str, minimum: int = 0, maximum: int | None = None) -> int | None:
        if not is_int(value):
            self.problem(where, f"expected an integer, got {describe(value)}")
            return None
        if value < minimum:
            self.problem(where, f"expected an integer >= {minimum}, got {value}")
            return None
        if maximum is not None and value > maximum:
            self.problem(where, f"expected an integer of at most {maximum:,}, got {_shown_int(value)}")
            return None
        return value

    def number_list(self, value: Any, where: str, length: int | None = None, positive: bool = False,
                    low: float | None = None, high: float | None = None) -> tuple[float, ...] | None:
        """Finite numbers (YAML's ``.nan`` and ``.inf`` are refused, located to the element), > 0 with
        ``positive``, within ``[low, high]`` where given."""
        if not isinstance(value, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            self.problem(where, f"expected a list of numbers, got {describe(value)}")
            return None
        if length is not None and len(value) != length:
            self.problem(where, f"expected {length} numbers, got {len(value)}")
            return None
        for index, item in enumerate(value):
            if not is_finite_number(item):
                self.problem(f"{where}[{index}]", f"expected a finite number, got {describe(item)}")
                return None
        if positive and any(v <= 0 for v in value):
            self.problem(where, f"expected numbers > 0, got {value}")
            return None
        for index, item in enumerate(value):
            if (low is not None and item < low) or (high is not None and item > high):
                self.problem(f"{where}[{index}]", f"expected a number in [{low:g}, {high:g}], got {item!r}")
                return None
        return tuple(float(v) for v in value)

    def int_list(self, value: Any, where: str, length: int | None = None, maximum: int | None = None
                 ) -> tuple[int, ...] | None:
        if not isinstance(value, list) or not value or not all(is_int(v) and v > 0 for v in value):
            self.problem(where, f"expected a list of positive integers, got {describe(value)}")
            return None
        if length is not None and len(value) != length:
            self.problem(where, f"expected {length} integers, got {len(value)}")
            return None
        if maximum is not None and any(v > maximum for v in value):
            self.problem(where, f"expected integers of at most {maximum:,}, got "
                                f"[{', '.join(_shown_int(v) for v in value)}]")
            return None
        return tuple(value)

    def number(self, value: Any, where: str, low: float, high: float | None = None, *, low_open: bool = False,
               high_open: bool = False) -> float | None:
        """A finite number in the interval from ``low`` to ``high`` (None: unbounded); ``*_open`` excludes that
        end."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.problem(where, f"expected a number, got {describe(value)}")
            return None
        if not is_finite_number(value):
            self.problem(where, f"expected a finite number, got {describe(value)}")
            return None
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            interval = f"{'(' if low_open else '['}{low:g}, {'inf' if high is None else f'{high:g}'}" \
                       f"{')' if high_open or high is None else ']'}"
            self.problem(where, f"expected a number in {interval}, got {value!r}")
            return None
        return float(value)


def type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing (null)",
            bool: "a boolean", int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def describe(value: Any) -> str:
    if isinstance(value, (dict, list)) or value is None:
        return type_name(value)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{type_name(value)} {_yaml_float(value)}"
    if is_int(value):
        return f"{type_name(value)} {_shown_int(value)}"
    return f"{type_name(value)} {value!r}"


def _yaml_float(value: float) -> str:
    """A non-finite float as YAML spells it (``.nan``, ``.inf``, ``-.inf``), as the user wrote it."""
    if value != value:
        return ".nan"
    return ".inf" if value > 0 else "-.inf"


def _shown_int(value: int) -> str:
    """An integer, as a power of ten when it has more digits than a message should carry (or ``str()`` allows)."""
    if value.bit_length() < 200:
        return str(value)
    return f"~{'-' if value < 0 else ''}10^{int(value.bit_length() * math.log10(2))}"
