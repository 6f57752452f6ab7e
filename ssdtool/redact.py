"""Text that is safe to show: credentials never printed or stored (URLs and messages with their secrets replaced
by ``***``), and no control character from a file name or a server's answer ever reaches a terminal
(:func:`printable`).

Sources and mirrors may carry credentials (``https://user:token@host/...``, or a signed URL with
``?X-Amz-Signature=...``). ssdtool uses the URL as given to connect, and shows or stores only its redacted form:
in error messages, log lines, progress events, ``--json`` summaries, ``ssdtool info`` and verification records.

The rule (documented in docs/download.md, "Security model"):

* the userinfo part of a URL (everything before ``@`` in the authority), user name included, becomes ``***``:
  some services take a token as the user name (``https://TOKEN@host``);
* the value of a query parameter becomes ``***`` when the parameter's name, lower-cased, contains one of
  :data:`SECRET_WORDS` (``token``, ``access_token``, ``X-Amz-Signature``, ``sig``, ``api_key``, ``password``, ...).

Everything else stays as it is, so a redacted URL still says which server and which file.

:func:`printable` lives here, below the commands, so the library can escape what it got from outside (a server's
strings, say) at the point where it keeps them; commands use it for every name they print.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# Characters that would break a line of human output or drive the terminal: C0/C1 controls (newline, escape),
# line and paragraph separators, and bidirectional overrides.
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
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


def printable(value: object) -> str:
    """``value`` as text for people: control characters escaped (a file name with a newline stays on one line
    and cannot fake another row; escape sequences do not reach the terminal). JSON output escapes by itself."""
    text = str(value)
    return _CONTROL_CHARACTERS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
