"""Structured logs: one JSON object (or key=value line) per event, with run/step ids.

Call sites pass their fields through ``extra={"run_id": ..., "step_execution_id": ...}``;
the formatter puts every such field on the line, so logs can be filtered by run.

:func:`configure` sets up the whole process, not only the ``sync`` loggers: one handler
on the root logger formats what every library logs (psycopg and its pool, httpx,
websockets, the Realtime client, asyncio), and ``warnings`` are routed through it too, so
an operator's log pipeline never meets a plain-text line. Libraries log at WARNING and
above unless the level is DEBUG, where their detail is what one is after.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

# Loggers of the libraries the service runs on. Some set their own level when imported
# (psycopg picks WARNING), so each is set explicitly rather than left to the root's.
LIBRARY_LOGGERS = (
    "psycopg",
    "psycopg.pool",
    "httpx",
    "httpcore",
    "websockets",
    "realtime",
    "supabase",
    "asyncio",
    "py.warnings",
)

# Secrets libraries put in what they log at DEBUG: the Realtime apikey in the websocket
# URL, bearer tokens, a password in a connection URL.
_SECRETS = (
    (re.compile(r"(apikey=)[^&\s'\"]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"(access_token[\"']?\s*[:=]\s*[\"']?)[^\s'\",&}]+"), r"\1***"),
    (re.compile(r"(Bearer\s+)[^\s'\",]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"(://[^:/@\s]+:)[^@/\s]+@"), r"\1***@"),
)


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": redact(record.getMessage()),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            fields[key] = value
    if record.exc_info:
        fields["exc"] = redact(logging.Formatter().formatException(record.exc_info))
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in _fields(record).items():
            text = str(value)
            if not text or any(c in text for c in ' ="\n'):
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        return " ".join(parts)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record, not at set-up
    (a command run in-process by a test runner swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(log_format: str = "json", level: str = "INFO") -> None:
    """Send every logger of the process to stderr in the chosen format.

    ``sync`` loggers log at ``level``; library loggers at WARNING (or ``level`` if it is
    stricter), and at DEBUG when ``level`` is DEBUG.
    """
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else KeyValueFormatter())
    handler._stepsync = True  # type: ignore[attr-defined]
    app_level = logging.getLevelName(level)
    library_level = app_level if app_level == logging.DEBUG else max(app_level, logging.WARNING)

    root = logging.getLogger()
    # Replace a handler an earlier call installed; leave others (a test runner's) alone.
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_stepsync", False)]
    root.addHandler(handler)
    root.setLevel(library_level)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)

    app = logging.getLogger("sync")
    app.handlers.clear()
    app.setLevel(app_level)
    app.propagate = True

    logging.captureWarnings(True)
