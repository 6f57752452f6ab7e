"""ssdtool.checked: the one strict JSON parser and finite-number check every reader uses."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssdtool import checked


@pytest.mark.parametrize(("document", "reason"), [
    ("[NaN]", "NaN is not a JSON number"),
    ('{"score": Infinity}', "Infinity is not a JSON number"),
    ("[-Infinity]", "-Infinity is not a JSON number"),
    ("[1e400]", "1e400 is too large"),
    ("[1E+0400]", "1E+0400 is too large"),
    ("[-" + "9" * 400 + ".5]", "too large for a 64-bit float"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (b"\xff[]", "not UTF-8 text (byte 0)"),
])
def test_refuses_what_python_json_accepts_or_crashes_on(document: str | bytes, reason: str) -> None:
    with pytest.raises(checked.JsonValueError, match=re.escape(reason)):
        checked.loads(document)


def test_syntax_errors_carry_line_and_column() -> None:
    with pytest.raises(checked.JsonValueError) as caught:
        checked.loads('{\n  "a": ]\n}')
    assert (caught.value.line, caught.value.column) == (2, 8)
    assert str(caught.value).startswith("line 2, column 8: not JSON")


def test_finite_extremes_and_strings_that_look_like_numbers_pass() -> None:
    assert checked.loads('{"a": [1e308, -2.5e-300, 0, "NaN", "1e400"]}') == {"a": [1e308, -2.5e-300, 0, "NaN", "1e400"]}


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(), lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                                            max_size=4),
                    max_leaves=30))
def test_every_strict_document_round_trips(value: object) -> None:
    import json

    assert checked.loads(json.dumps(value)) == value


@pytest.mark.parametrize(("value", "expected"), [
    (1, True), (10**400, False), (0.5, True), (True, False), (math.nan, False), (math.inf, False),
    (-math.inf, False), ("1", False), (None, False),
])
def test_is_finite_number(value: object, expected: bool) -> None:
    assert checked.is_finite_number(value) is expected


def test_all_finite_arrays() -> None:
    import numpy as np

    assert checked.all_finite(np.array([1.0, 2.0], dtype=np.float32))
    assert not checked.all_finite(np.array([1.0, np.nan]))
    assert not checked.all_finite(np.array([[np.inf]], dtype=np.float16))
    assert checked.all_finite(np.array([1, 2], dtype=np.int64))
