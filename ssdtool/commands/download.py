"""``ssdtool download`` and ``ssdtool verify``: thin commands over :mod:`ssdtool.download`.

Only click is imported at module level; the library (and with it requests, filelock, tqdm) is imported inside the
commands so ``ssdtool --help`` stays instant. Progress events become a tqdm bar, JSON lines or log lines on stderr
(:mod:`ssdtool.commands.progress`); results go to stdout as a table or ``--json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ssdtool.commands.common import (
    AppContext,
    app_context,
    complete_model_names,
    echo_json,
    exit_codes,
    format_table,
    human_size,
    want_json,
)
from ssdtool.commands.options import fetch_options, json_option
from ssdtool.commands.progress import download_progress, resolve_mode
from ssdtool.constants import DEFAULT_PROGRESS_INTERVAL, ProgressMode

#: A bar redraws more often than JSON or log lines are worth writing.
BAR_PROGRESS_INTERVAL = 0.1

if TYPE_CHECKING:
    from ssdtool.download import FetchOptions, InstalledFile
    from ssdtool.registry import ModelEntry


def _selection(ctx: click.Context, names: tuple[str, ...], all_models: bool, cache_dir: str | None
               ) -> tuple[AppContext, list[ModelEntry]]:
    from ssdtool.errors import UsageError

    app = app_context(ctx)
    if cache_dir is not None:
        app.cache_dir = cache_dir
    registry = app.registry()
    if all_models and names:
        raise UsageError("pass model names or --all, not both")
    if all_models:
        return app, list(registry)
    return app, [registry.model(name) for name in dict.fromkeys(names)] if names else [registry.model(None)]


def _fetch_options(mirror: str | None, offline: bool, retries: int, backoff: float, timeout: float,
                   lock_timeout: float, **more: Any) -> FetchOptions:
    from ssdtool.download import FetchOptions

    return FetchOptions(mirror=mirror or "", offline=offline, retries=retries, backoff=backoff, timeout=timeout,
                        lock_timeout=lock_timeout, **more)


@exit_codes
@click.command("download")
@click.argument("names", nargs=-1, metavar="[NAME]...", shell_complete=complete_model_names)
@click.option("--all", "all_models", is_flag=True, help="Download every model in the registry.")
@click.option("-j", "--jobs", type=click.IntRange(1, 32), default=2, show_default=True,
              help="Files downloaded at the same time.")
@click.option("--force", is_flag=True,
              help="Download again even when cached and verified (with --offline: re-hash the cached files).")
@fetch_options
@json_option("Print a JSON summary of every file on stdout.")
@click.pass_context
def download_command(ctx: click.Context, names: tuple[str, ...], all_models: bool, jobs: int, force: bool,
                     cache_dir: str | None, mirror: str | None, offline: bool, retries: int, backoff: float,
                     timeout: float, lock_timeout: float, progress_mode: str, as_json: bool) -> None:
    """Download and verify model files into the cache (NAME: default model; --all: every model).

    Files already present and verified are not downloaded again. Interrupted downloads resume. Sources are tried
    in order: --mirror, then the registry's; each file's size and checksums are verified before it is moved
    into place. Exit codes: {exit:NetworkError} network failure on every source, {exit:ChecksumError} wrong bytes
    from every source that delivered, {exit:OfflineError} missing while --offline, {exit:LockTimeoutError} lock
    wait timed out, {exit:KeyboardInterrupt} interrupted (the partial file is kept).
    """
    from ssdtool.download import fetch_models

    want_json(ctx, as_json)
    app, models = _selection(ctx, names, all_models, cache_dir)
    progress = download_progress(progress_mode)
    interval = BAR_PROGRESS_INTERVAL if resolve_mode(progress_mode) == ProgressMode.BAR else DEFAULT_PROGRESS_INTERVAL
    try:
        installed = fetch_models(models, app.cache(), _fetch_options(
            mirror, offline, retries, backoff, timeout, lock_timeout, force=force, jobs=jobs,
            progress_interval=interval), progress=progress)
    finally:
        if progress is not None:
            progress.close()
    if as_json:
        echo_json([item.to_dict() for item in installed])
        return
    click.echo(format_table(("MODEL", "FILE", "SIZE", "STATUS", "PATH"),
                            [(i.model, i.file, human_size(i.size), _status_text(i), i.path) for i in installed]))


def _status_text(item: InstalledFile) -> str:
    if item.cached:
        return "cached"
    how = f"resumed at {human_size(item.resumed_from)}" if item.resumed else "downloaded"
    return f"{how} ({human_size(item.bytes_transferred)} in {item.seconds:.1f} s)"


@exit_codes
@click.command("verify")
@click.argument("names", nargs=-1, metavar="[NAME]...", shell_complete=complete_model_names)
@click.option("--all", "all_models", is_flag=True, help="Verify every model in the registry.")
@click.option("--repair", is_flag=True, help="Download again every file that is missing or fails verification.")
@fetch_options
@json_option("Print the results as JSON on stdout.")
@click.pass_context
def verify_command(ctx: click.Context, names: tuple[str, ...], all_models: bool, repair: bool,
                   cache_dir: str | None, mirror: str | None, offline: bool, retries: int, backoff: float,
                   timeout: float, lock_timeout: float, progress_mode: str, as_json: bool) -> None:
    """Re-hash cached model files against the registry and report each (NAME: default model; --all: every model).

    Exits {exit:VerifyError} when a file is missing or bad and was not repaired. Without --repair the cache is not
    changed, except that the verification record of a bad file is removed so no later run trusts it.
    """
    from ssdtool.download import verify
    from ssdtool.errors import VerifyError

    want_json(ctx, as_json)
    app, models = _selection(ctx, names, all_models, cache_dir)
    progress = download_progress(progress_mode) if repair else None
    options = _fetch_options(mirror, offline, retries, backoff, timeout, lock_timeout)
    try:
        results = [result for model in models
                   for result in verify(model, app.cache(), options, repair=repair, progress=progress)]
    finally:
        if progress is not None:
            progress.close()
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
        app.json_errors = False  # the document above already carries the error
    else:
        click.echo(format_table(("MODEL", "FILE", "STATUS", "DETAIL"),
                                [(r.model, r.file, r.status, r.detail) for r in results]))
    if error is not None:
        raise error


COMMANDS = [download_command, verify_command]
