"""What a user reads when a file could not be fetched: every source with its reason, and what to do next."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ssdtool.constants import FailureKind
from ssdtool.download.events import SourceFailure
from ssdtool.errors import ChecksumError, DownloadError, NetworkError, OfflineError
from ssdtool.registry import FileEntry, ModelEntry

#: The packaged registry's synthetic twin of the real model: built locally, so it needs no network (docs/synthetic.md).
OFFLINE_TWIN = "ssd-resnet34-1200-synthetic"
#: The end of every hint for a machine that cannot reach the model's sources.
TWIN_HINT = (f"for a smoke check without network, the synthetic twin is built locally: 'ssdtool detect --model "
             f"{OFFLINE_TWIN} IMAGE' runs the same pipeline (docs/synthetic.md)")


def sources_text(failures: Sequence[SourceFailure]) -> str:
    lines = []
    for index, failure in enumerate(failures, start=1):
        tries = f" (after {failure.attempts} attempts)" if failure.attempts > 1 else ""
        lines.append(f"  {index}. {failure.source}: {failure.reason}{tries}")
    return "\n".join(lines)


def manual_hint(model: ModelEntry, final: Path) -> str:
    return f"download it by hand and place it at {final}, then run 'ssdtool verify {model.name}'"


def final_error(model: ModelEntry, file: FileEntry, final: Path, failures: Sequence[SourceFailure]) -> DownloadError:
    """ChecksumError when a source delivered wrong bytes, else NetworkError; the message lists every source."""
    wrong_bytes = any(f.kind == FailureKind.CONTENT for f in failures)
    what = "every source that delivered it sent wrong bytes" if wrong_bytes else "no source delivered it"
    message = (f"could not download {file.name} of model {model.name} ({file.size} bytes): {what}; tried "
               f"{len(failures)} source{'s' if len(failures) != 1 else ''}:\n" + sources_text(failures))
    if wrong_bytes:
        return ChecksumError(message, hint=(
            "a server may hold another version of the file, or the registry entry is out of date; try another "
            f"server with 'ssdtool download --mirror URL' (or SSDTOOL_MIRROR=URL), or {manual_hint(model, final)}"))
    return NetworkError(message, hint=(
        "check the network or proxy (HTTPS_PROXY, REQUESTS_CA_BUNDLE), try another server with 'ssdtool download "
        f"--mirror URL' (or SSDTOOL_MIRROR=URL), or {manual_hint(model, final)}; {TWIN_HINT}"))


def offline_error(model: ModelEntry, file: FileEntry, final: Path, model_dir: Path,
                  failures: Sequence[SourceFailure], removed_reason: str | None) -> OfflineError:
    removed = f" (a cached copy was removed: {removed_reason})" if removed_reason else ""
    message = (f"{file.name} of model {model.name} is not in the cache at {final}{removed}, and offline mode "
               "forbids downloading it")
    if failures:
        message += "; sources:\n" + sources_text(failures)
    return OfflineError(message, hint=(
        f"run 'ssdtool download {model.name}' on a connected machine and copy its cache folder {model_dir} here, use "
        "a local mirror ('ssdtool download --offline --mirror /DIR', or SSDTOOL_MIRROR=/DIR), or "
        f"{manual_hint(model, final)}; {TWIN_HINT}"))
