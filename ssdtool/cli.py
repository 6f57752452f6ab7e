"""The ``ssdtool`` command line: thin commands over the library.

Each command parses options, calls one library function and formats what it returns: tables or ``--json`` on
stdout, logs and progress on stderr. Errors from the library (:mod:`ssdtool.errors`) become exit codes here, in
:meth:`SsdtoolGroup.invoke`, and nowhere else. Heavy libraries (onnx, onnxruntime, openvino) are never imported
at module level, so ``ssdtool --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import sys
import traceback
import warnings
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any, NoReturn

import click

from ssdtool import __version__
from ssdtool.commands.common import AppContext
from ssdtool.constants import REGISTRY_ENV
from ssdtool.errors import EXIT_INTERRUPTED, EXIT_UNEXPECTED, SsdtoolError
from ssdtool.redact import redact_text

log = logging.getLogger("ssdtool")


def _versions_text() -> str:
    """ssdtool's version plus the engines', read from package metadata (no heavy import)."""
    from importlib import metadata

    parts = []
    for dist in ("onnx", "onnxruntime", "openvino"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} missing")
    python = ".".join(map(str, sys.version_info[:3]))
    return f"ssdtool {__version__} (python {python}; {', '.join(parts)})"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(_versions_text())
        ctx.exit(0)


def emit_error(exc: SsdtoolError, app: AppContext | None) -> None:
    """Report a library error to people on stderr, and to scripts on stdout when they asked for JSON.

    Messages are redacted once more here (:func:`ssdtool.redact.redact_text`): a URL with credentials that
    reached an error message by any route is still not printed.
    """
    message, hint = redact_text(exc.message), redact_text(exc.hint) if exc.hint else None
    click.echo(f"error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    if app is not None and app.json_errors:
        _echo_json_error(type(exc).__name__, exc.exit_code, message, hint)


def _echo_json_error(error: str, exit_code: int, message: str, hint: str | None) -> None:
    # One line: after detect's jsonl records the error object must be one more record, not a pretty-printed block.
    click.echo(json.dumps({"error": error, "exit_code": exit_code, "message": message, "hint": hint}))


_JSON_FORMATS = ("json", "jsonl", "coco")


def json_requested(args: Sequence[str]) -> bool:
    """Whether a command line asks for JSON on stdout: ``--json``, or ``detect``'s ``--format json|jsonl|coco``
    without ``--output``. Read from the raw arguments, so errors found while parsing them are JSON too."""
    as_json = to_file = False
    tokens = iter(args)
    for token in tokens:
        short = token.startswith("-") and not token.startswith("--")
        if token == "--":
            break
        if token == "--json":
            as_json = True
        elif token in ("-f", "--format"):
            as_json |= next(tokens, "") in _JSON_FORMATS
        elif token.startswith("--format=") or (short and token.startswith("-f")):
            as_json |= token.removeprefix("--format=").removeprefix("-f") in _JSON_FORMATS
        elif token in ("-o", "--output") or token.startswith("--output=") or (short and token.startswith("-o")):
            to_file = True
    return as_json and not to_file


class SsdtoolGroup(click.Group):
    """Maps exceptions to exit codes in one place; shows tracebacks only with ``--debug``.

    With ``--json`` every failure also leaves one JSON object on stdout: library errors, click's usage errors
    (exit 2), unexpected errors (1) and Ctrl-C (130). The one exception is ``detect``'s exit 30, whose JSON
    records already carry each image's error (another object would break the document).
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["ssdtool.json"] = json_requested(args)
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.ClickException as exc:
            self._json_click_error(ctx, exc)
            raise

    @staticmethod
    def _json_click_error(ctx: click.Context, exc: click.exceptions.ClickException) -> None:
        if ctx.meta.get("ssdtool.json"):
            _echo_json_error("UsageError", exc.exit_code, redact_text(exc.format_message()),
                             "see the command's --help")

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.ClickException as exc:
            self._json_click_error(ctx, exc)
            raise
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except SsdtoolError as exc:
            app = ctx.find_object(AppContext)
            if app is not None and app.debug:
                traceback.print_exc(file=sys.stderr)
            emit_error(exc, app)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            app = ctx.find_object(AppContext)
            if app is not None and app.json_errors:
                _echo_json_error("Interrupted", EXIT_INTERRUPTED, "interrupted (Ctrl-C)",
                                 "run the command again")
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            app = ctx.find_object(AppContext)
            message = redact_text(f"unexpected {type(exc).__name__}: {exc}")
            hint = "rerun with --debug for the traceback, and report it with 'ssdtool --version'"
            if app is not None and app.debug:
                traceback.print_exc(file=sys.stderr)
            else:
                click.echo(f"error: {message}", err=True)
                click.echo(f"hint: {hint}", err=True)
            if app is not None and app.json_errors:
                _echo_json_error("UnexpectedError", EXIT_UNEXPECTED, message, hint)
            ctx.exit(EXIT_UNEXPECTED)


class _RedactingFormatter(logging.Formatter):
    """Log lines without credentials, whatever a library put into them (see :mod:`ssdtool.redact`)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logger = logging.getLogger("ssdtool")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(message)s" if verbosity <= 0 else "%(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


@click.group(cls=SsdtoolGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version of ssdtool and of its engines, then exit.")
@click.option("-v", "--verbose", "verbose", count=True, help="More log output on stderr (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--cache-dir", type=click.Path(file_okay=False), envvar="SSDTOOL_HOME", show_envvar=True,
              help="Cache directory for models [default: $XDG_CACHE_HOME/ssdtool or ~/.cache/ssdtool].")
@click.option("--registry", "registry_path", type=click.Path(dir_okay=False), envvar=REGISTRY_ENV,
              show_envvar=True, help="Model registry YAML file [default: the packaged models.yml].")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, debug: bool, cache_dir: str | None,
        registry_path: str | None) -> None:
    """Download, convert and run the MLCommons SSD-ResNet34 1200x1200 object detector.

    ssdtool replaces Open Model Zoo's omz_downloader and omz_converter for this model: verified downloads,
    OpenVINO IR conversion with parity checks, and detection through onnxruntime or OpenVINO.
    """
    verbosity = -1 if quiet else verbose
    _configure_logging(verbosity)
    # detect checks every image's size from its header against its own --max-pixels before decoding, so Pillow's
    # warning for sizes over its default limit would only repeat that check, louder.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    ctx.obj = AppContext(registry_path=registry_path, cache_dir=cache_dir, verbosity=verbosity, debug=debug)


def main() -> None:
    """The ``ssdtool`` command. This process is ssdtool's (the library itself never changes process-wide state):

    * the engines' telemetry is turned off before either engine is imported (:mod:`ssdtool.telemetry`);
    * once the command has finished, the exit handlers have run and stdout and stderr are flushed, the process ends
      without Python's teardown (:func:`end_process`).
    """
    from ssdtool.telemetry import disable_engine_telemetry

    disable_engine_telemetry()
    try:
        cli(prog_name="ssdtool")  # standalone mode: it always ends in SystemExit
    except SystemExit as exc:
        end_process(exc.code)
    end_process(0)


def end_process(code: object) -> NoReturn:
    """End the process with ``code`` (``sys.exit``'s meaning: None is 0, a message is printed and is 1) after the
    ``atexit`` handlers and a flush of stdout and stderr, skipping the interpreter's teardown: freeing every module,
    object and engine a command used took longer than starting some commands (about 0.1 s after a cold
    ``detect``), and the operating system reclaims all of it anyway. A flush that fails (a closed pipe) exits 120,
    as Python does."""
    import atexit
    import os

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        with contextlib.suppress(Exception):
            print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            status = status or 120
    os._exit(status)


# The commands: each name and the module under ssdtool.commands that defines it (its ``COMMANDS``). An explicit
# table: a command module never imports this one, so importing any of them first cannot leave the group without its
# commands. A module is imported when one of its commands is used, so ``ssdtool detect`` starts without bench's,
# eval's or serve's options being built; ``ssdtool --help`` lists them all.
COMMAND_MODULES = {
    "models": "catalog", "info": "catalog", "download": "download", "verify": "download", "convert": "convert",
    "check": "convert", "detect": "detect", "run": "detect", "eval": "eval", "bench": "bench", "export": "export",
    "serve": "serve",
}


class LazyCommands(MutableMapping[str, click.Command]):
    """The group's commands by name, each command module imported on first use (click reads ``Group.commands``
    as a mapping: ``get`` for one command, iteration to list them)."""

    def __init__(self, modules: Mapping[str, str]) -> None:
        self._modules = dict(modules)
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded and name in self._modules:
            for command in importlib.import_module(f"ssdtool.commands.{self._modules[name]}").COMMANDS:
                self._loaded.setdefault(command.name or "", command)
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self._loaded and name not in self._modules:
            raise KeyError(name)
        self._loaded.pop(name, None)
        self._modules.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(self._modules), **dict.fromkeys(self._loaded)})

    def __len__(self) -> int:
        return len(self._modules.keys() | self._loaded.keys())


cli.commands = LazyCommands(COMMAND_MODULES)
