"""The ``ssdtool`` command line: thin commands over the library.

Each command parses options, calls one library function and formats what it returns: tables or ``--json`` on
stdout, logs and progress on stderr. Errors from the library (:mod:`ssdtool.errors`) become exit codes here, in
:meth:`SsdtoolGroup.invoke`, and nowhere else. Heavy libraries (onnx, onnxruntime, openvino) are never imported
at module level, so ``ssdtool --help`` stays instant.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import click

from ssdtool import __version__
from ssdtool.cache import Cache
from ssdtool.errors import EXIT_INTERRUPTED, EXIT_UNEXPECTED, SsdtoolError
from ssdtool.redact import redact_text
from ssdtool.registry import REGISTRY_ENV, Registry, load_registry

log = logging.getLogger("ssdtool")


@dataclass
class AppContext:
    """Options of the ``ssdtool`` group, handed to every command."""

    registry_path: str | None = None
    cache_dir: str | None = None
    verbosity: int = 0
    debug: bool = False
    json_errors: bool = False
    _registry: Registry | None = field(default=None, repr=False)

    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = load_registry(self.registry_path)
        return self._registry

    def cache(self) -> Cache:
        return Cache.at(self.cache_dir)


def _versions_text() -> str:
    """ssdtool's version plus the engines', read from package metadata (no heavy import)."""
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
    click.echo(json.dumps({"error": error, "exit_code": exit_code, "message": message, "hint": hint}, indent=2))


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
                                 "run the command again: partial downloads resume")
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


def _complete_model_names(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
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


# Characters that would break a line of human output or drive the terminal: C0/C1 controls (newline, escape),
# line and paragraph separators, and bidirectional overrides.
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(value: object) -> str:
    """``value`` as text for people: control characters escaped (a file name with a newline stays on one line
    and cannot fake another row; escape sequences do not reach the terminal). JSON output escapes by itself."""
    text = str(value)
    return _CONTROL_CHARACTERS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table (no colour, so it survives pipes and logs); cells are :func:`printable`."""
    cells = [[printable(h) for h in headers], *[[printable(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def want_json(ctx: click.Context, as_json: bool) -> None:
    """Record that the command speaks JSON, so errors are also reported as JSON on stdout."""
    if as_json:
        ctx.ensure_object(AppContext).json_errors = True


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
    ctx.obj = AppContext(registry_path=registry_path, cache_dir=cache_dir, verbosity=verbosity, debug=debug)


@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout instead of a table.")
@click.pass_context
def models_command(ctx: click.Context, as_json: bool) -> None:
    """List the models in the registry and their state in the cache.

    State is missing, partial (an interrupted download), downloaded, or converted (an OpenVINO IR exists).
    """
    from ssdtool.catalog import list_models

    want_json(ctx, as_json)
    app: AppContext = ctx.obj
    summaries = list_models(app.registry(), app.cache())
    if as_json:
        echo_json([s.to_dict() for s in summaries])
        return
    rows = [(s.name + (" *" if s.default else ""), s.task, human_size(s.size), s.state) for s in summaries]
    click.echo(format_table(("NAME", "TASK", "SIZE", "STATE"), rows))
    click.echo(f"(* default model; cache: {app.cache().root})", err=True)


@cli.command("info")
@click.argument("name", required=False, shell_complete=_complete_model_names)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_context
def info_command(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Show everything the registry says about NAME (default model), where its files are and their state."""
    from ssdtool.catalog import model_info

    want_json(ctx, as_json)
    app: AppContext = ctx.obj
    info = model_info(app.registry(), app.cache(), name)
    data = info.to_dict()
    if as_json:
        echo_json(data)
        return
    click.echo("\n".join(printable(line) for line in _format_info(data).splitlines()))


def _format_info(data: dict[str, Any]) -> str:
    entry_input, outputs, convert = data["input"], data["outputs"], data["convert"]
    lines = [
        f"{data['name']}{'  (default model)' if data['default'] else ''}",
        f"  description:  {data['description']}",
        f"  task:         {data['task']}",
        f"  license:      {data['license']}",
        f"  state:        {data['state']}",
        f"  cache folder: {data['cache_dir']}",
        "  files:",
    ]
    for f in data["files"]:
        lines.append(f"    {f['name']}  {human_size(f['size'])} ({f['size']} bytes)  [{f['state']}]")
        lines.append(f"      path:   {f['path']}")
        for algo in ("sha256", "sha384"):
            if f[algo]:
                lines.append(f"      {algo}: {f[algo]}")
        for index, url in enumerate(f["sources"], start=1):
            lines.append(f"      source {index}: {url}")
    lines += [
        f"  input:   {entry_input['name']} {list(entry_input['shape'])} {entry_input['layout']} "
        f"{entry_input['color_order']}, mean {list(entry_input['mean'])}, scale {list(entry_input['scale'])}, "
        f"resize {entry_input['resize'][0]}x{entry_input['resize'][1]} {entry_input['interpolation']}",
        f"  outputs: boxes={outputs['boxes']} labels={outputs['labels']} scores={outputs['scores']} "
        f"({outputs['box_format']}, {outputs['box_units']}, label offset {outputs['label_offset']})",
        f"  labels:  {data['labels']}",
        f"  convert: {convert['color_order']} input, {convert['output_count']} outputs, "
        f"default precision {convert['precision']}",
    ]
    if data["converted"]:
        lines.append("  converted:")
        for record in data["converted"]:
            lines.append(f"    {record['precision']}: {record['path']}")
            for key, value in (record.get("provenance") or {}).items():
                if key == "runtime_checks" and isinstance(value, list):
                    from ssdtool.precision import recorded_checks

                    checks = recorded_checks({key: value})
                    lines.append(f"      {key}: " + ("none" if not checks else ""))
                    lines.extend(f"        {check.summary()}" for check in checks)
                else:
                    lines.append(f"      {key}: {value}")
    return "\n".join(lines)


def main() -> None:
    cli(prog_name="ssdtool")


def _register_job_commands() -> None:
    """Attach each job's commands (modules under ssdtool/commands/) to the group."""
    import importlib
    import pkgutil

    import ssdtool.commands as commands_package

    for module_info in sorted(pkgutil.iter_modules(commands_package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"ssdtool.commands.{module_info.name}")
        for command in getattr(module, "COMMANDS", ()):
            cli.add_command(command)


_register_job_commands()
