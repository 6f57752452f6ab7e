"""``ssdtool download`` and ``ssdtool verify``: thin commands over :mod:`ssdtool.download`.

Only click is imported at module level; the library (and with it requests, filelock, tqdm) is imported inside
the commands so ``ssdtool --help`` stays instant. Progress events from the library become a tqdm bar, JSON
lines or log lines on stderr here; results go to stdout as a table or ``--json``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ssdtool.cli import _complete_model_names

if TYPE_CHECKING:
    from ssdtool.cli import AppContext
    from ssdtool.download import DownloadEvent, InstalledFile, VerifyResult
    from ssdtool.registry import ModelEntry

log = logging.getLogger("ssdtool")

PROGRESS_MODES = ("auto", "bar", "json", "none")


# --------------------------------------------------------------------------------------------------------------
# Progress sinks: each is called from download worker threads, so each serialises its output with a lock.


class _JsonLinesSink:
    """One JSON object per event on stderr, for CI logs and wrappers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, event: DownloadEvent) -> None:
        line = json.dumps(event.to_dict(), sort_keys=False, default=str)
        with self._lock:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def close(self) -> None:
        pass


class _LogSink:
    """Plain log lines (start, retries, failures, verified): for stderr that is not a terminal."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, event: DownloadEvent) -> None:
        from ssdtool.cli import human_size

        name = f"{event.model}/{event.file}"
        with self._lock:
            if event.event == "start":
                resume = f" (resuming at {human_size(event.offset or 0)})" if event.offset else ""
                log.info("%s: downloading %s from %s%s", name, human_size(event.size or 0), event.source, resume)
            elif event.event == "source_failed":
                then = f"; retrying in {event.retry_in:.1f} s" if event.retry_in is not None else ""
                log.warning("%s: %s: %s%s", name, event.source, event.reason, then)
            elif event.event == "waiting":
                log.info("%s: waiting for another process (lock %s)", name, event.lock)
            elif event.event == "verified" and not event.cached:
                log.info("%s: verified, %s", name, event.path)

    def close(self) -> None:
        pass


class _BarSink:
    """A tqdm bar per file on stderr; other events are written above the bars."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bars: dict[tuple[str | None, str | None], Any] = {}

    def __call__(self, event: DownloadEvent) -> None:
        from tqdm import tqdm

        key = (event.model, event.file)
        with self._lock:
            bar = self._bars.get(key)
            if event.event == "start":
                if bar is not None:
                    bar.close()
                self._bars[key] = tqdm(total=event.size, initial=event.offset or 0, desc=event.file, unit="B",
                                       unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=True,
                                       dynamic_ncols=True, position=len(self._bars))
            elif event.event == "progress" and bar is not None and event.downloaded is not None:
                bar.update(event.downloaded - bar.n)
            elif event.event == "source_failed":
                then = f"; retrying in {event.retry_in:.1f} s" if event.retry_in is not None else ""
                tqdm.write(f"{event.file}: {event.source}: {event.reason}{then}", file=sys.stderr)
            elif event.event == "waiting":
                tqdm.write(f"{event.file}: waiting for another process (lock {event.lock})", file=sys.stderr)
            elif event.event == "verified" and bar is not None:
                bar.close()
                del self._bars[key]

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()


def _make_sink(mode: str) -> _JsonLinesSink | _LogSink | _BarSink | None:
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "log"
    return {"json": _JsonLinesSink, "log": _LogSink, "bar": _BarSink}.get(mode, lambda: None)()


def progress_renderer(mode: str = "auto", quiet: bool = False) -> Callable[[DownloadEvent], None] | None:
    """A progress callback for :mod:`ssdtool.download` events, as ``download --progress MODE`` renders them.

    For other commands that download on first use (convert, detect). Bars close themselves when their file is
    verified; None for ``none`` or when ``quiet``.
    """
    if quiet or mode == "none":
        return None
    return _make_sink(mode)


# --------------------------------------------------------------------------------------------------------------
# Shared options


def _fetch_options(func: Any) -> Any:
    """Options shared by download and verify --repair."""
    options = [
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Cache directory (same as the group option, which SSDTOOL_HOME also sets)."),
        click.option("--mirror", envvar="SSDTOOL_MIRROR", show_envvar=True, metavar="URL",
                     help="Base URL or directory tried before the registry's sources, as URL/MODEL/FILE "
                          "(http, https or file://)."),
        click.option("--offline", is_flag=True, envvar="SSDTOOL_OFFLINE", show_envvar=True,
                     help="Never use the network: check what is cached and use only file:// or synthetic "
                          "sources; fail on anything missing (exit 12)."),
        click.option("--retries", type=click.IntRange(0, 50), default=3, show_default=True,
                     help="Further attempts per source after a transient failure (exponential backoff)."),
        click.option("--retry-backoff", "backoff", type=click.FloatRange(0, 60), default=0.5, show_default=True,
                     metavar="SECONDS", help="First backoff delay; doubles per retry, with jitter, capped at 30 s."),
        click.option("--timeout", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True,
                     metavar="SECONDS", help="Connect and read timeout; also the stall window: a transfer that "
                     "receives less than 64 KiB in that many seconds fails (and is retried, resuming)."),
        click.option("--lock-timeout", type=click.FloatRange(0), default=600.0, show_default=True,
                     metavar="SECONDS",
                     help="Give up waiting for another process's download of the same file after this long "
                          "without progress (exit 13)."),
        click.option("--progress", "progress_mode", type=click.Choice(PROGRESS_MODES), default="auto",
                     show_default=True,
                     help="Progress on stderr: a bar (auto: when stderr is a terminal, else log lines), JSON lines "
                          "(one event per line), or none."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _app(ctx: click.Context, cache_dir: str | None) -> AppContext:
    app: AppContext = ctx.obj
    if cache_dir is not None:
        app.cache_dir = cache_dir
    return app


def _select_models(app: AppContext, names: tuple[str, ...], all_models: bool) -> list[ModelEntry]:
    from ssdtool.errors import UsageError

    registry = app.registry()
    if all_models and names:
        raise UsageError("pass model names or --all, not both")
    if all_models:
        return list(registry)
    return [registry.model(name) for name in dict.fromkeys(names)] if names else [registry.model(None)]


# --------------------------------------------------------------------------------------------------------------
# download


@click.command("download")
@click.argument("names", nargs=-1, metavar="[NAME]...", shell_complete=_complete_model_names)
@click.option("--all", "all_models", is_flag=True, help="Download every model in the registry.")
@click.option("-j", "--jobs", type=click.IntRange(1, 32), default=2, show_default=True,
              help="Files downloaded at the same time.")
@click.option("--force", is_flag=True,
              help="Download again even when cached and verified (with --offline: re-hash the cached files).")
@_fetch_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary of every file on stdout.")
@click.pass_context
def download_command(ctx: click.Context, names: tuple[str, ...], all_models: bool, jobs: int, force: bool,
                     cache_dir: str | None, mirror: str | None, offline: bool, retries: int, backoff: float,
                     timeout: float, lock_timeout: float, progress_mode: str, as_json: bool) -> None:
    """Download and verify model files into the cache (NAME: default model; --all: every model).

    Files already present and verified are not downloaded again. Interrupted downloads resume. Sources are tried
    in order: --mirror, then the registry's; each file's size and checksums are verified before it is moved
    into place. Exit codes: 10 network failure on every source, 11 wrong bytes from every source that
    delivered, 12 missing while --offline, 13 lock wait timed out, 130 interrupted (the partial file is kept).
    """
    from ssdtool.cli import echo_json, format_table, human_size, want_json
    from ssdtool.download import fetch_models

    want_json(ctx, as_json)
    app = _app(ctx, cache_dir)
    models = _select_models(app, names, all_models)
    sink = None if progress_mode == "none" else _make_sink(progress_mode)
    interval = 0.1 if isinstance(sink, _BarSink) else 0.25
    try:
        installed = fetch_models(models, app.cache(), mirror=mirror or "", offline=offline, force=force,
                                 retries=retries, timeout=timeout, jobs=jobs, progress=sink,
                                 lock_timeout=lock_timeout, backoff=backoff, progress_interval=interval)
    finally:
        if sink is not None:
            sink.close()
    if as_json:
        echo_json([item.to_dict() for item in installed])
        return
    click.echo(format_table(("MODEL", "FILE", "SIZE", "STATUS", "PATH"),
                            [(i.model, i.file, human_size(i.size), _status_text(i), i.path) for i in installed]))


def _status_text(item: InstalledFile) -> str:
    from ssdtool.cli import human_size

    if item.cached:
        return "cached"
    how = f"resumed at {human_size(item.resumed_from)}" if item.resumed else "downloaded"
    return f"{how} ({human_size(item.bytes_transferred)} in {item.seconds:.1f} s)"


# --------------------------------------------------------------------------------------------------------------
# verify


@click.command("verify")
@click.argument("names", nargs=-1, metavar="[NAME]...", shell_complete=_complete_model_names)
@click.option("--all", "all_models", is_flag=True, help="Verify every model in the registry.")
@click.option("--repair", is_flag=True, help="Download again every file that is missing or fails verification.")
@_fetch_options
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.pass_context
def verify_command(ctx: click.Context, names: tuple[str, ...], all_models: bool, repair: bool,
                   cache_dir: str | None, mirror: str | None, offline: bool, retries: int, backoff: float,
                   timeout: float, lock_timeout: float, progress_mode: str, as_json: bool) -> None:
    """Re-hash cached model files against the registry and report each (NAME: default model; --all: every model).

    Exits 14 when a file is missing or bad and was not repaired. Without --repair the cache is not changed,
    except that the verification record of a bad file is removed so no later run trusts it.
    """
    from ssdtool.cli import echo_json, format_table, want_json
    from ssdtool.download import verify
    from ssdtool.errors import VerifyError

    want_json(ctx, as_json)
    app = _app(ctx, cache_dir)
    models = _select_models(app, names, all_models)
    sink = None if progress_mode == "none" or not repair else _make_sink(progress_mode)
    results: list[VerifyResult] = []
    try:
        for model in models:
            results += verify(model, app.cache(), repair=repair, progress=sink, lock_timeout=lock_timeout,
                              mirror=mirror or "", offline=offline, retries=retries, timeout=timeout,
                              backoff=backoff)
    finally:
        if sink is not None:
            sink.close()
    bad = [r for r in results if not r.ok]
    error = None
    if bad:
        lines = [f"  {r.model}/{r.file}: {r.status}: {r.detail}"
                 + (f"; repair failed: {r.repair_error}" if r.repair_error else "") for r in bad]
        error = VerifyError(f"{len(bad)} of {len(results)} cached files are missing or bad:\n" + "\n".join(lines),
                            hint="run 'ssdtool verify --repair' (or 'ssdtool download') to fetch them again"
                            if not repair else "see the reasons above; try --mirror URL or place the files by hand")
    if as_json:
        # One JSON document on stdout even on failure: the results and the error together.
        echo_json({"ok": not bad, "results": [r.to_dict() for r in results],
                   "error": error.to_dict() if error else None})
    else:
        click.echo(format_table(("MODEL", "FILE", "STATUS", "DETAIL"),
                                [(r.model, r.file, r.status, r.detail) for r in results]))
    if error is not None:
        click.echo(f"error: {error.message}", err=True)
        click.echo(f"hint: {error.hint}", err=True)
        ctx.exit(error.exit_code)


COMMANDS = [download_command, verify_command]
