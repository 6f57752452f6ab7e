"""Verified, resumable, mirror-aware, concurrency-safe downloads of registry files into the cache.

The flow of one file is in :mod:`ssdtool.download.fetcher`; transports in :mod:`~ssdtool.download.sources`;
streaming and hashing in :mod:`~ssdtool.download.transfer`; the inter-process lock in
:mod:`~ssdtool.download.locks`; what a failure says in :mod:`~ssdtool.download.messages`; options in
:mod:`~ssdtool.download.options`; the public calls in :mod:`~ssdtool.download.api`.

The library never prints: progress goes to a callback as :class:`DownloadEvent` objects (the CLI turns them into
a tqdm bar, JSON lines or log lines), debug details to the ``ssdtool.download`` logger. ``requests`` and
``filelock`` are imported only when needed, so the cached fast path stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssdtool.lazy import lazy_attributes

if TYPE_CHECKING:
    from ssdtool.download.api import (
        ensure_downloaded,
        fetch,
        fetch_models,
        source_model,
        verify,
    )
    from ssdtool.download.events import (
        DownloadEvent,
        InstalledFile,
        ProgressCallback,
        SourceFailure,
        VerifyResult,
    )
    from ssdtool.download.locks import file_lock
    from ssdtool.download.options import (
        MIRROR_ENV,
        OFFLINE_ENV,
        FetchOptions,
        RetryPolicy,
        mirror_from_env,
        normalize_mirror,
        offline_from_env,
    )
    from ssdtool.download.sources import (
        AttemptFailed,
        Body,
        Source,
        content_range_matches,
        file_url_path,
        mirror_url,
        redirect_refusal,
        register_source,
        source_urls,
    )
    from ssdtool.download.transfer import describe_mismatch, hash_file

# Names resolve on first use: the command line reads the defaults in download.options for its help without loading
# the fetcher, the registry and the cache.
_LAZY = {
    **dict.fromkeys(("ensure_downloaded", "fetch", "fetch_models", "source_model", "verify"), "ssdtool.download.api"),
    **dict.fromkeys(("DownloadEvent", "InstalledFile", "ProgressCallback", "SourceFailure", "VerifyResult"),
                    "ssdtool.download.events"),
    "file_lock": "ssdtool.download.locks",
    **dict.fromkeys(("MIRROR_ENV", "OFFLINE_ENV", "FetchOptions", "RetryPolicy", "mirror_from_env", "normalize_mirror",
                     "offline_from_env"), "ssdtool.download.options"),
    **dict.fromkeys(("AttemptFailed", "Body", "Source", "content_range_matches", "file_url_path", "mirror_url",
                     "redirect_refusal", "register_source", "source_urls"), "ssdtool.download.sources"),
    **dict.fromkeys(("describe_mismatch", "hash_file"), "ssdtool.download.transfer"),
}

__all__ = [
    "MIRROR_ENV", "OFFLINE_ENV", "AttemptFailed", "Body", "DownloadEvent", "FetchOptions", "InstalledFile",
    "ProgressCallback", "RetryPolicy", "Source", "SourceFailure", "VerifyResult", "content_range_matches",
    "describe_mismatch", "ensure_downloaded", "fetch", "fetch_models", "file_lock", "file_url_path", "hash_file",
    "mirror_from_env", "mirror_url", "normalize_mirror", "offline_from_env", "redirect_refusal", "register_source",
    "source_model", "source_urls", "verify",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
