"""``--user-conf``: LoadGen's configuration format, read strictly, with the bounds of :mod:`ssdtool.loadgen.limits`.

A line is blank, a comment (``#`` first), or ``model.scenario.key = value``: three tokens separated by blanks, as
LoadGen's own reader splits them. LoadGen's reader is lenient where that hurts: ``key=value`` without blanks or
a misspelt key is ignored without a word, ``-5`` for a count becomes 2^64 - 5, ``1e3`` for a count becomes 1, a
leading ``0`` means octal, and ``nan`` or ``inf`` pass. This reader refuses all of them, naming the line, so a
value reaches LoadGen only as the user meant it (ssdtool sets each one itself; LoadGen never reads the file).

Lines for another model are checked for their form only (a user.conf is often shared between benchmarks). Lines
for ``ssd-resnet34`` or ``*`` must name a scenario LoadGen knows and a key ssdtool takes (:data:`BOUNDS`), with a
value within its bounds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from ssdtool import fsutil
from ssdtool.constants import LoadGenScenario
from ssdtool.errors import UsageError
from ssdtool.loadgen.limits import BOUNDS, UNSUPPORTED_KEYS

#: The model's name in LoadGen configuration files (``ssd-resnet34.Server.target_qps = 10``).
MLPERF_MODEL = "ssd-resnet34"
USER_CONF_BYTES = 1 << 20
USER_CONF_LINES = 10_000
USER_CONF_LINE_LENGTH = 1_000
_BLANKS = re.compile(r"[ \t\r\f\v]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_KEY = re.compile(r"([^.]+)\.([^.]+)\.([^.]+)")
_WHOLE = re.compile(r"0|[1-9][0-9]*")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class ConfLine:
    """One ``model.scenario.key = value`` line: its number (1-based), its parts, the value read."""

    number: int
    model: str
    scenario: str
    key: str
    value: int | float

    def source(self, path: Path) -> str:
        return f"{path} line {self.number}"


@dataclass(frozen=True)
class UserConf:
    """A checked user.conf: every setting line, in file order."""

    path: Path
    lines: tuple[ConfLine, ...]

    def lookup(self, key: str, scenario: LoadGenScenario) -> ConfLine | None:
        """The line LoadGen would take ``key`` from in ``scenario``: ``ssd-resnet34.S``, then ``*.S``, then
        ``ssd-resnet34.*``, then ``*.*``; among lines of the same pattern, the last."""
        for model, scene in ((MLPERF_MODEL, scenario.value), ("*", scenario.value), (MLPERF_MODEL, "*"), ("*", "*")):
            found = [line for line in self.lines if (line.model, line.scenario, line.key) == (model, scene, key)]
            if found:
                return found[-1]
        return None


def read_user_conf(path: Path) -> UserConf:
    """Read and check the user.conf at ``path`` (a link is followed: the user named it)."""
    path = Path(path)
    try:
        data = fsutil.read_regular(path, USER_CONF_BYTES, follow_links=True)
    except ValueError:
        raise UsageError(f"the user.conf {path} is larger than {USER_CONF_BYTES // 1024} KiB; a LoadGen user.conf "
                         "is a few lines of 'model.scenario.key = value'",
                         hint="give --user-conf the right file") from None
    except OSError as exc:
        raise UsageError(f"cannot read the user.conf {path}: {exc.strerror or exc}",
                         hint="give --user-conf a readable LoadGen configuration file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"the user.conf {path} is not UTF-8 text (byte {exc.start})",
                         hint="give --user-conf a text file of 'model.scenario.key = value' lines") from None
    return parse_user_conf(text, path)


def parse_user_conf(text: str, path: Path) -> UserConf:
    """Check every line of a user.conf's ``text``; raises :class:`UsageError` naming ``path`` and the line."""
    rows = text.split("\n")
    if len(rows) > USER_CONF_LINES:
        raise UsageError(f"the user.conf {path} has {len(rows):,} lines, more than {USER_CONF_LINES:,}",
                         hint="give --user-conf the right file")
    lines = []
    for number, row in enumerate(rows, start=1):
        line = _parse_line(row, number, path)
        if line is not None:
            lines.append(line)
    return UserConf(path, tuple(lines))


def _fail(path: Path, number: int, problem: str, hint: str | None = None) -> UsageError:
    return UsageError(f"{path} line {number}: {problem}",
                      hint=hint or f"fix line {number} of {path.name}, or leave out --user-conf")


def _shown(token: str) -> str:
    return repr(token if len(token) <= 60 else token[:60] + "...")


def _parse_line(row: str, number: int, path: Path) -> ConfLine | None:
    if len(row) > USER_CONF_LINE_LENGTH:
        raise _fail(path, number, f"{len(row):,} characters, more than {USER_CONF_LINE_LENGTH:,}")
    if control := _CONTROL.search(row):
        raise _fail(path, number, f"a control character ({control.group()!r}) in {_shown(row)}")
    tokens = [token for token in _BLANKS.split(row) if token]
    if not tokens or tokens[0].startswith("#"):
        return None
    expected = "expected 'model.scenario.key = value' (blanks around '=', nothing after the value)"
    if len(tokens) != 3 or tokens[1] != "=":
        raise _fail(path, number, f"{_shown(row.strip())}: {expected}; LoadGen ignores or refuses such a line")
    match = _KEY.fullmatch(tokens[0])
    if match is None:
        raise _fail(path, number, f"the key {_shown(tokens[0])} is not 'model.scenario.key'")
    model, scenario, key = match.groups()
    text = tokens[2]
    if model not in (MLPERF_MODEL, "*"):
        _number(text, number, path, whole=False)  # another benchmark's line: its form only
        return ConfLine(number, model, scenario, key, 0)
    if scenario != "*" and scenario not in LoadGenScenario.values():
        raise _fail(path, number, f"unknown scenario {_shown(scenario)} (LoadGen would ignore the line); "
                                  f"expected {', '.join(LoadGenScenario.values())} or *")
    bound = BOUNDS.get(key)
    if bound is None:
        if key in UNSUPPORTED_KEYS:
            raise _fail(path, number, f"ssdtool does not take {key!r} from a user.conf: {UNSUPPORTED_KEYS[key]}")
        raise _fail(path, number, f"unknown key {_shown(key)} (LoadGen would ignore it); ssdtool takes "
                                  f"{', '.join(BOUNDS)}")
    scenarios = list(LoadGenScenario) if scenario == "*" else [LoadGenScenario(scenario)]
    if not any(bound.applies_to(s) for s in scenarios):
        raise _fail(path, number, f"{key} does not apply to {scenario} (LoadGen would ignore it); it applies to "
                                  f"{', '.join(s.value for s in bound.attributes)}")
    whole = [s for s in scenarios if bound.applies_to(s) and bound.whole(s)]
    what = key if bound.integer or not whole else f"{key} (in {', '.join(s.value for s in whole)})"
    value = _number(text, number, path, whole=bool(whole), key=what)
    if problem := bound.problem(value):
        raise _fail(path, number, f"{key} = {text}: {problem} ({bound.why})")
    return ConfLine(number, model, scenario, key, value)


def _number(text: str, number: int, path: Path, *, whole: bool, key: str = "the value") -> int | float:
    """The value of ``text``: a decimal number, finite, and a whole number where LoadGen reads one."""
    if whole:
        if _WHOLE.fullmatch(text):
            return int(text)
        raise _fail(path, number, f"{key} takes a whole number in decimal digits, got {_shown(text)}"
                                  f"{_loadgen_misreading(text)}")
    if not _DECIMAL.fullmatch(text):
        raise _fail(path, number, f"{key} must be a decimal number, got {_shown(text)} (nan, inf and hexadecimal "
                                  "are refused)")
    value = float(text)
    if not math.isfinite(value):
        raise _fail(path, number, f"{key} = {_shown(text)} is beyond the range of a double")
    return value


def _loadgen_misreading(text: str) -> str:
    """What LoadGen's ``strtoull`` would make of a value that is not a plain whole number, said in words."""
    if re.fullmatch(r"-[0-9]+", text):
        return f"; negative, and LoadGen would read it as 2^64 - {text[1:]} = {2**64 - int(text[1:]) % 2**64}"
    if re.fullmatch(r"0[0-7]+", text):
        return f"; LoadGen would read a leading 0 as octal ({int(text, 8)})"
    if _DECIMAL.fullmatch(text):
        prefix = re.match(r"\+?([0-9]*)", text)
        digits = prefix.group(1) if prefix else ""
        return f"; LoadGen would read only its whole part ({int(digits) if digits else 0})"
    return ""
