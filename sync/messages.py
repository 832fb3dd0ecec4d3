"""How database URLs and errors appear in messages and logs: passwords hidden, one line."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def first_line(exc: BaseException) -> str:
    """An exception's message on one line (libpq spreads one error over several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
