"""What every command shares: the group's options as an :class:`AppContext`, and formatting for stdout.

Imports nothing from :mod:`ssdtool.cli` (which imports the command modules) and nothing heavy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ssdtool.errors import EXIT_INTERRUPTED, SsdtoolError, all_error_classes
from ssdtool.redact import printable

if TYPE_CHECKING:  # imported on use: `ssdtool --help` needs neither (nor PyYAML)
    from ssdtool.cache import Cache
    from ssdtool.registry import Registry


@dataclass
class AppContext:
    """Options of the ``ssdtool`` group, handed to every command."""

    registry_path: str | None = None
    cache_dir: str | None = None
    verbosity: int = 0
    debug: bool = False
    json_errors: bool = False
    _registry: Registry | None = field(default=None, repr=False)

    @property
    def quiet(self) -> bool:
        return self.verbosity < 0

    def registry(self) -> Registry:
        from ssdtool.registry import load_registry

        if self._registry is None:
            self._registry = load_registry(self.registry_path)
        return self._registry

    def cache(self) -> Cache:
        from ssdtool.cache import Cache

        return Cache.at(self.cache_dir)


def app_context(ctx: click.Context) -> AppContext:
    """The group's options (a bare command invoked on its own gets the defaults)."""
    return ctx.ensure_object(AppContext)


C = TypeVar("C", bound=click.Command)
_EXIT_PLACEHOLDER = re.compile(r"\{exit:(\w+)\}")


def exit_codes(command: C) -> C:
    """Fill ``{exit:ErrorClass}`` in a command's help (its docstring, which cannot be an f-string) with that class's
    exit code, so every exit code a help text quotes comes from :mod:`ssdtool.errors`; ``{exit:KeyboardInterrupt}``
    is Ctrl-C's. Options say theirs with f-strings (``f"(exit {OfflineError.exit_code})"``)."""
    codes = {cls.__name__: cls.exit_code for cls in all_error_classes()} | {"KeyboardInterrupt": EXIT_INTERRUPTED}
    command.help = _EXIT_PLACEHOLDER.sub(lambda match: str(codes[match[1]]), command.help or "")
    return command


def want_json(ctx: click.Context, as_json: bool) -> None:
    """Record that the command speaks JSON, so errors are also reported as JSON on stdout."""
    if as_json:
        app_context(ctx).json_errors = True


def complete_model_names(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of model names, from the registry the command line names."""
    from ssdtool.registry import load_registry

    try:
        registry = load_registry(ctx.find_root().params.get("registry_path"))
    except SsdtoolError:
        return []
    return [name for name in registry.models if name.startswith(incomplete)]


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table (no colour, so it survives pipes and logs); cells are :func:`printable`."""
    cells = [[printable(h) for h in headers], *[[printable(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
