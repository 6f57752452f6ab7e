"""Credentials never printed or stored: URLs and messages with their secrets replaced by ``***``.

Sources and mirrors may carry credentials (``https://user:token@host/...``, or a signed URL with
``?X-Amz-Signature=...``). ssdtool uses the URL as given to connect, and shows or stores only its redacted form:
in error messages, log lines, progress events, ``--json`` summaries, ``ssdtool info`` and verification records.

The rule (documented in docs/download.md, "Security model"):

* the userinfo part of a URL (everything before ``@`` in the authority), user name included, becomes ``***``:
  some services take a token as the user name (``https://TOKEN@host``);
* the value of a query parameter becomes ``***`` when the parameter's name, lower-cased, contains one of
  :data:`SECRET_WORDS` (``token``, ``access_token``, ``X-Amz-Signature``, ``sig``, ``api_key``, ``password``, ...).

Everything else stays as it is, so a redacted URL still says which server and which file.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
#: A query parameter whose lower-cased name contains one of these is a secret.
SECRET_WORDS = ("token", "key", "secret", "password", "passwd", "pwd", "auth", "sig", "credential", "session")
_SECRET_PARAMETER = re.compile(
    r"(?P<name>[^&=;?#/\s]*(?:" + "|".join(SECRET_WORDS) + r")[^&=;?#/\s]*)=(?P<value>[^&;#\s'\"<>]*)",
    re.IGNORECASE)
# Greedy up to the last "@" before the path: a password may hold a raw "@".
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s]*)@")


def redact_url(url: str) -> str:
    """``url`` without its credentials (see the module docstring); a URL with none comes back unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not even a URL (an unclosed IPv6 bracket, say): redact it as text
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = _SECRET_PARAMETER.sub(lambda m: f"{m['name']}={MASK}", parts.query) if parts.query else parts.query
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with the credentials of every URL in it redacted, and secret-looking query parameters too
    (messages from HTTP libraries quote a request's path and query without its scheme and host)."""
    if not text or ("@" not in text and "=" not in text):
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _SECRET_PARAMETER.sub(lambda m: f"{m['name']}={MASK}", text)
