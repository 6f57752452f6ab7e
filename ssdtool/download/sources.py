"""Where files come from: one small class per transport, picked by the URL's scheme.

A source opens a URL at a byte offset and hands back a :class:`Body`: a ``read`` function and the offset the bytes
really start at (a server may ignore a range request). Everything after that - streaming into the part file,
hashing, verifying, installing - is the same for every source (:mod:`ssdtool.download.transfer`). A failed
attempt raises :class:`AttemptFailed`, which says whether trying again may help.

Schemes: ``http``/``https`` (:class:`HttpSource`: redirects checked hop by hop, ranges, proxies and CA bundles
from the environment), ``file`` (:class:`FileSource`), and ``synthetic`` (the twin builder,
``ssdtool.synthetic.SyntheticSource``, imported only when such a URL is fetched, so downloading imports no onnx).
:func:`register_source` adds a scheme.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import re
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import quote, unquote, urljoin, urlsplit

from ssdtool import __version__, fsutil
from ssdtool.constants import FailureKind
from ssdtool.download.options import FetchOptions, normalize_mirror
from ssdtool.errors import UsageError
from ssdtool.redact import redact_text, redact_url
from ssdtool.registry import FileEntry, ModelEntry

if TYPE_CHECKING:
    import requests

log = logging.getLogger("ssdtool.download")

# 1 MiB reads: few enough Python-level iterations that the loop costs nothing next to the kernel copies, small
# enough that memory stays flat (a handful of chunks in flight whatever the file size).
CHUNK_SIZE = 1 << 20
MAX_REDIRECTS = 10
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
DECODABLE_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class AttemptFailed(Exception):
    """One attempt at one source failed. ``retryable``: the same source may succeed later (after ``retry_after``
    seconds if the server said so); ``fresh_retry``: the bytes were wrong but continued an older part file, whose
    prefix may be the culprit, so the source gets one more chance from byte zero before it is blamed."""

    def __init__(self, reason: str, kind: FailureKind = FailureKind.NETWORK, *, retryable: bool = False,
                 retry_after: float | None = None, fresh_retry: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after
        self.fresh_retry = fresh_retry


@dataclass
class Body:
    """An opened source: ``read(n)`` returns up to ``n`` bytes (``b""`` at the end), starting at byte ``start`` of
    the file; ``read_errors`` are the exceptions a broken transfer raises from ``read``; ``mismatch_note`` is added
    to the reason when the bytes turn out wrong (what this source knows about why); ``made`` says the bytes were
    made here rather than transferred (they do not count in ``bytes_transferred``)."""

    read: Callable[[int], bytes]
    start: int
    read_errors: tuple[type[BaseException], ...] = (OSError,)
    close: Callable[[], None] = field(default=lambda: None)
    mismatch_note: str = ""
    made: bool = False


class Source(Protocol):
    """A transport. ``local`` sources (no network) are the ones offline mode may use."""

    local: ClassVar[bool]

    def open(self, url: str, offset: int, file: FileEntry) -> Body:
        """Open ``url`` to deliver ``file`` from byte ``offset`` (or from 0, saying so in ``Body.start``)."""
        ...

    def close(self) -> None:
        """Release connections; the source is not used afterwards."""
        ...


SourceFactory = Callable[[FetchOptions, threading.Event], Source]
_SOURCES: dict[str, SourceFactory | str] = {}
_LOCAL: set[str] = set()


def register_source(scheme: str, factory: SourceFactory | str, *, local: bool) -> None:
    """Make ``scheme`` URLs fetchable: ``factory(options, cancel)`` returns a :class:`Source`, or is the
    ``"module:Class"`` path of one, imported on first use. ``local``: it needs no network (offline may use it)."""
    _SOURCES[scheme.lower()] = factory
    (_LOCAL.add if local else _LOCAL.discard)(scheme.lower())


def source_for(url: str, options: FetchOptions, cancel: threading.Event) -> Source:
    """A new source for ``url``'s scheme; :class:`AttemptFailed` for a scheme nothing serves."""
    scheme = urlsplit(url).scheme.lower()
    factory = _SOURCES.get(scheme)
    if factory is None:
        raise AttemptFailed(f"unsupported URL scheme {scheme!r}")
    if isinstance(factory, str):
        module, _, name = factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise AttemptFailed(f"the {scheme}: source ({factory}) is not available: {exc}") from None
    return factory(options, cancel)


def is_local(url: str) -> bool:
    """Whether ``url``'s source needs no network (offline mode may use it)."""
    return urlsplit(url).scheme.lower() in _LOCAL


# ------------------------------------------------------------------------------------------------ URLs
def mirror_url(mirror: str, model: str, file: str) -> str:
    """Where a mirror keeps a file: ``{mirror}/{model}/{file}`` (the cache's own layout, so a copied cache serves)."""
    return f"{normalize_mirror(mirror)}/{quote(model)}/{quote(file)}"


def source_urls(model: ModelEntry, file: FileEntry, mirror: str | None = None) -> list[str]:
    """The sources of a file in the order they are tried: the mirror first, then the registry's."""
    urls = [mirror_url(mirror, model.name, file.name)] if mirror else []
    urls.extend(url for url in file.sources if url not in urls)
    return urls


def redirect_refusal(origin: str, target: str) -> str | None:
    """Why a redirect from ``origin`` to ``target`` must not be followed, or None when it may be."""
    origin_scheme = urlsplit(origin).scheme.lower()
    try:
        target_scheme = urlsplit(target).scheme.lower()
    except ValueError:
        return f"refused redirect to {redact_url(target)}: not a valid URL"
    if target_scheme not in ("http", "https"):
        return f"refused redirect to {redact_url(target)}: only http and https redirects are followed"
    if origin_scheme == "https" and target_scheme == "http":
        return (f"refused redirect from https to plain http ({redact_url(origin)} -> {redact_url(target)}): "
                "it would drop transport security")
    return None


def file_url_path(url: str) -> Path:
    """The local path of a ``file://`` URL (``file:///abs/path`` or ``file://localhost/abs/path``)."""
    from urllib.request import url2pathname  # imports http.client and email: only when a file:// URL is used

    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise UsageError(f"file URL {redact_url(url)!r} names a remote host; only local file:// URLs are supported")
    return Path(url2pathname(unquote(parts.path)))


# ------------------------------------------------------------------------------------------------ file://
class FileSource:
    """A local file (a mirror folder, a share): links are followed, as the path is the user's; a FIFO or device is
    refused, never read forever."""

    local: ClassVar[bool] = True

    def __init__(self, options: FetchOptions, cancel: threading.Event) -> None:
        del options, cancel  # local reads need neither timeouts nor interruption between hops

    def open(self, url: str, offset: int, file: FileEntry) -> Body:
        path = file_url_path(url)
        try:
            stream = open(fsutil.open_regular(os.path.realpath(path)), "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:
            raise AttemptFailed(f"no such file: {path}") from None
        except OSError as exc:
            raise AttemptFailed(f"cannot open {path}: {exc}") from None
        size = os.fstat(stream.fileno()).st_size
        if size != file.size:
            stream.close()
            raise AttemptFailed(f"size mismatch: expected {file.size} bytes, {path} has {size}",
                                kind=FailureKind.CONTENT)
        stream.seek(offset)
        return Body(stream.read, offset, (OSError,), stream.close)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------ http(s)
class HttpSource:
    """HTTP and HTTPS through one ``requests`` session: redirects followed here so every hop is checked (scheme,
    loops, count), resume by ``Range``, and a body the server compressed unasked decoded (gzip, deflate)."""

    local: ClassVar[bool] = False

    def __init__(self, options: FetchOptions, cancel: threading.Event) -> None:
        self.timeout = options.timeout
        self.cancel = cancel
        self._session: requests.Session | None = None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    def open(self, url: str, offset: int, file: FileEntry) -> Body:
        # At most twice: a server that answers a range request wrongly (416, the wrong range, a compressed range)
        # costs the partial file and one fresh request from byte zero.
        for ask_from in (offset, 0) if offset else (0,):
            response = self._get(url, ask_from)
            try:
                start = self._start(response, ask_from, file)
            except BaseException:
                response.close()
                raise
            if start is None:
                response.close()
                continue
            # read1 returns what has arrived (up to a chunk) instead of waiting for a full chunk: progress and
            # Ctrl-C stay responsive on slow links. urllib3 < 2 has no read1; read works, coarser.
            read = getattr(response.raw, "read1", response.raw.read)
            encoding = _content_encoding(response)
            if encoding != "identity":
                read = _Decoder(read, encoding)
            return Body(read, start, (*_network_errors(), zlib.error), response.close)
        raise AttemptFailed("the server answered range requests inconsistently twice", retryable=True)

    def _session_(self) -> requests.Session:
        if self._session is None:
            import requests

            session = requests.Session()
            # trust_env (the default) keeps HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE working;
            # verify stays on. identity: the registry's size and checksums are those of the bytes as stored.
            session.headers.update({"User-Agent": f"ssdtool/{__version__}", "Accept-Encoding": "identity"})
            self._session = session
        return self._session

    def _get(self, url: str, offset: int) -> requests.Response:
        """GET ``url`` from ``offset``, following redirects hop by hop."""
        import requests

        headers = {"Range": f"bytes={offset}-"} if offset else {}
        chain = [url]
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            if self.cancel.is_set():
                raise Cancelled
            try:
                response = self._session_().get(current, headers=headers, stream=True, allow_redirects=False,
                                                timeout=(self.timeout, self.timeout))
            except requests.exceptions.SSLError as exc:
                raise AttemptFailed(f"TLS error: {exc}; if a proxy or private CA re-signs TLS, point "
                                    "REQUESTS_CA_BUNDLE at its certificate bundle") from None
            except requests.exceptions.ProxyError as exc:
                raise AttemptFailed(f"proxy error: {exc}", retryable=True) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                raise AttemptFailed(f"connection failed: {_connection_reason(exc)}", retryable=True) from None
            except (requests.exceptions.RequestException, ValueError) as exc:  # ValueError: a malformed URL
                raise AttemptFailed(f"request failed: {exc}") from None
            if not response.is_redirect:
                return response
            response.close()
            try:
                target = urljoin(current, response.headers["Location"])
            except ValueError:
                raise AttemptFailed("the server redirected to a malformed URL") from None
            if reason := redirect_refusal(current, target):
                raise AttemptFailed(reason)
            if target in chain:
                raise AttemptFailed("redirect loop: " + " -> ".join(map(redact_url, [*chain, target])))
            log.debug("%s redirects to %s", redact_url(current), redact_url(target))
            chain.append(target)
            current = target
        raise AttemptFailed(f"too many redirects (more than {MAX_REDIRECTS}): " + " -> ".join(map(redact_url, chain)))

    def _start(self, response: requests.Response, offset: int, file: FileEntry) -> int | None:
        """Where the body starts in the file; None to drop it and ask again from zero."""
        status = response.status_code
        encoding = _content_encoding(response) if status in (200, 206) else "identity"
        if encoding not in ("identity", *DECODABLE_ENCODINGS):
            raise AttemptFailed(f"the server sent the file with Content-Encoding {encoding!r} although ssdtool "
                                "asked for identity, and ssdtool decodes only gzip and deflate")
        if status == 206 and encoding != "identity":
            # A range of the compressed stream is no range of the file: start again from byte zero.
            log.debug("%s: the server answered a range request with Content-Encoding %s; restarting from zero",
                      file.name, encoding)
            return None if offset else 0
        if status == 206:
            content_range = response.headers.get("Content-Range")
            if offset and content_range_matches(content_range, offset, file.size):
                log.debug("%s: resuming at byte %d", file.name, offset)
                return offset
            if offset:
                log.debug("%s: the server answered Range bytes=%d- with Content-Range %r; restarting from zero",
                          file.name, offset, content_range)
                return None
            raise AttemptFailed(f"HTTP 206 with Content-Range {content_range!r} to a request for the whole file")
        if status == 416 and offset:
            log.debug("%s: the server refused Range bytes=%d- (HTTP 416); restarting from zero", file.name, offset)
            return None
        if status == 200:
            length = response.headers.get("Content-Length")
            if length is not None and encoding == "identity" and length.isdigit() and int(length) != file.size:
                raise AttemptFailed(f"the server announces {int(length)} bytes (Content-Length), the registry "
                                    f"expects {file.size}", kind=FailureKind.CONTENT)
            if offset:
                log.debug("%s: the server ignored the Range request (HTTP 200); restarting from zero", file.name)
            return 0
        reason = f"HTTP {status} {response.reason or ''}".rstrip()
        retryable = status in RETRYABLE_STATUS or 500 <= status < 600
        raise AttemptFailed(reason, retryable=retryable, retry_after=_retry_after(response.headers.get("Retry-After")))


class Cancelled(BaseException):
    """The main thread was interrupted; raised in worker threads. A BaseException, so no handler eats it."""


class _Decoder:
    """Undoes a Content-Encoding the server applied although ssdtool asked for identity (gzip or deflate).

    The registry's size and checksums are those of the file itself, so the decoded bytes are what is counted,
    hashed and written. Output is bounded per call (``max_length``), so a compression bomb cannot fill memory: it
    is cut off like any body longer than the registry's size.
    """

    def __init__(self, read: Callable[[int], bytes], encoding: str) -> None:
        self._read = read
        self._inflate = zlib.decompressobj(DECODABLE_ENCODINGS[encoding])
        self._ended = False

    def __call__(self, amount: int) -> bytes:
        while not self._ended:
            pending = self._inflate.unconsumed_tail
            if pending:
                data = self._inflate.decompress(pending, amount)
            else:
                raw = self._read(CHUNK_SIZE)
                if not raw:
                    self._ended = True
                    data = self._inflate.flush()
                    if not self._inflate.eof:
                        raise zlib.error("the compressed body ended early")
                    return data
                data = self._inflate.decompress(raw, amount)
            if data:
                return data
        return b""


def _content_encoding(response: requests.Response) -> str:
    """The response's Content-Encoding, lower-cased; "identity" when there is none."""
    value = response.headers.get("Content-Encoding", "").strip().lower()
    return value or "identity"


def _network_errors() -> tuple[type[BaseException], ...]:
    import http.client

    import requests
    import urllib3

    return (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


_CONNECTION_PREFIX = re.compile(r"^(<[^>]*>|\w*Connection(Pool)?\([^)]*\)): ")


def _connection_reason(exc: BaseException) -> str:
    """The root cause of a requests connection error, without urllib3's pool and connection object prefixes."""
    reason: Any = exc.args[0] if exc.args else exc
    reason = getattr(reason, "reason", reason)  # MaxRetryError -> NewConnectionError, NameResolutionError, ...
    text = str(reason)
    while (shorter := _CONNECTION_PREFIX.sub("", text, count=1)) != text:
        text = shorter
    return redact_text(text.strip("()") if text.startswith("(") else text)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare for downloads; our own backoff applies


def content_range_matches(header: str | None, offset: int, size: int) -> bool:
    """Whether ``Content-Range`` says the body is bytes ``offset``..``size-1`` of a ``size``-byte file."""
    if not header or not header.lower().startswith("bytes "):
        return False
    span, _, total = header[6:].strip().partition("/")
    first, _, last = span.partition("-")
    try:
        return int(first) == offset and int(last) == size - 1 and total.strip() in (str(size), "*")
    except ValueError:
        return False



def bytes_body(data: bytes, mismatch_note: str = "") -> Body:
    """A :class:`Body` over bytes already in memory (a source that makes the file rather than fetching it)."""
    stream = io.BytesIO(data)
    return Body(stream.read, 0, (OSError,), stream.close, mismatch_note, made=True)


register_source("http", HttpSource, local=False)
register_source("https", HttpSource, local=False)
register_source("file", FileSource, local=True)
register_source("synthetic", "ssdtool.synthetic:SyntheticSource", local=True)
