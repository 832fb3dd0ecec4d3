"""Checks behind ``stepsync doctor``: is this configuration able to run the service?

Each check returns a :class:`Check` with a verdict (``ok``, ``warn``, ``fail`` or
``skip``), what it found, and, when something is wrong, how to fix it. Checks never
raise and never print secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode, urlsplit

import httpx
import psycopg
import websockets

from sync import migrations
from sync.connections import Connector
from sync.executors.edge_function import functions_url
from sync.messages import first_line, redact_url
from sync.settings import Settings
from sync.wakeups.realtime import BINDINGS, CHANNEL_NAME, realtime_url

Verdict = Literal["ok", "warn", "fail", "skip"]

# Supabase's transaction-mode pooler (Supavisor/PgBouncer) listens here; session mode is 5432.
TRANSACTION_POOLER_PORT = 6543
TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str
    fix: str | None = None


def run_checks(settings: Settings) -> list[Check]:
    url = settings.database_url
    database = (
        Connector.from_settings(settings, url, application_name="stepsync doctor").as_login_role()
        if url
        else None
    )
    checks = [check_database(database)]
    if database is not None and checks[0].verdict == "ok":
        checks.append(check_migrations(database))
    else:
        checks.append(Check("migrations", "skip", "database not reachable"))
    checks.append(check_pooler(url, settings.listen))
    realtime = asyncio.run(check_realtime(settings))
    if realtime.verdict == "fail" and "realtime" not in settings.listen:
        # Configured but not used by `serve`: worth knowing, not a reason to fail.
        realtime = Check(realtime.name, "warn", realtime.detail, realtime.fix)
    checks.append(realtime)
    checks.append(check_executor(settings))
    return checks


def check_database(database: Connector | None) -> Check:
    if database is None:
        return Check(
            "database",
            "fail",
            "STEPSYNC_DATABASE_URL (--database-url) is not set",
            "set it to the project's connection string (Supabase dashboard → Connect); "
            "the direct or session-pooler URL (port 5432) keeps LISTEN working",
        )
    url = database.url
    try:
        with database.connect(connect_timeout=int(TIMEOUT_SECONDS)) as conn:
            version = conn.execute("show server_version").fetchone()[0]
    except psycopg.Error as exc:
        return Check(
            "database",
            "fail",
            f"cannot connect to {redact_url(url)}: {first_line(exc)}",
            "check host, port, password and that this machine may connect "
            "(Supabase: Database → Network restrictions)",
        )
    return Check("database", "ok", f"connected to {redact_url(url)} (PostgreSQL {version})")


def check_migrations(database: Connector) -> Check:
    try:
        status = migrations.status(database)
    except migrations.MigrationError as exc:
        return Check("migrations", "fail", str(exc), "run `stepsync db status` for details")
    if status.pending:
        names = ", ".join(m.file_name for m in status.pending[:5])
        more = f" and {len(status.pending) - 5} more" if len(status.pending) > 5 else ""
        return Check(
            "migrations",
            "fail",
            f"{len(status.pending)} pending: {names}{more}",
            "run `stepsync db push` (or `supabase db push`)",
        )
    detail = f"{len(status.applied)} applied, none pending"
    if status.unknown:
        return Check(
            "migrations",
            "warn",
            f"{detail}; applied without a local file: {', '.join(status.unknown)}",
            "this checkout is older than the database; update it before deploying",
        )
    return Check("migrations", "ok", detail)


def check_pooler(url: str | None, listen: list[str]) -> Check:
    if not url:
        return Check("pooler", "skip", "no database URL")
    parts = urlsplit(url)
    transaction_mode = parts.port == TRANSACTION_POOLER_PORT
    if not transaction_mode:
        return Check("pooler", "ok", f"port {parts.port or 5432}: a session keeps its LISTEN")
    if "postgres" in listen:
        return Check(
            "pooler",
            "warn",
            f"port {TRANSACTION_POOLER_PORT} is Supabase's transaction pooler "
            "(PgBouncer/Supavisor transaction mode): LISTEN cannot work through it, "
            "notifications would never arrive",
            "use the direct or session-pooler URL (port 5432), or run "
            "`stepsync serve --listen realtime` or `--poll-only`",
        )
    return Check(
        "pooler",
        "ok",
        f"port {TRANSACTION_POOLER_PORT} (transaction pooler); LISTEN is not used",
    )


async def check_realtime(settings: Settings) -> Check:
    wanted = "realtime" in settings.listen
    missing = [
        name
        for name, value in (
            ("STEPSYNC_SUPABASE_URL", settings.supabase_url),
            ("STEPSYNC_SUPABASE_SERVICE_ROLE_KEY", settings.supabase_service_role_key),
        )
        if not value
    ]
    if missing:
        verdict: Verdict = "fail" if wanted else "skip"
        return Check(
            "realtime",
            verdict,
            f"{' and '.join(missing)} not set",
            "set both (Supabase dashboard → Project Settings → API)" if wanted else None,
        )
    key = settings.supabase_service_role_key.get_secret_value()
    base = realtime_url(settings.supabase_url)
    socket_url = (
        base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        + "/websocket?"
        + urlencode({"apikey": key, "vsn": "1.0.0"})
    )
    shown = f"{base}/websocket"
    try:
        return await asyncio.wait_for(_join(socket_url, key, shown), TIMEOUT_SECONDS)
    except TimeoutError:
        return Check(
            "realtime",
            "fail",
            f"{shown}: no answer to phx_join within {TIMEOUT_SECONDS:g}s",
            "check that Realtime is enabled for the project",
        )
    except websockets.InvalidStatus as exc:
        status = exc.response.status_code
        fix = (
            "STEPSYNC_SUPABASE_SERVICE_ROLE_KEY is not this project's service-role key"
            if status in (401, 403)
            else "check STEPSYNC_SUPABASE_URL"
        )
        return Check("realtime", "fail", f"{shown}: handshake refused with HTTP {status}", fix)
    except (OSError, websockets.WebSocketException) as exc:
        return Check(
            "realtime",
            "fail",
            f"{shown}: {type(exc).__name__}: {first_line(exc)}",
            "check STEPSYNC_SUPABASE_URL (https://<ref>.supabase.co) and the network",
        )


async def _join(socket_url: str, key: str, shown: str) -> Check:
    """Handshake, join with the service's own bindings, wait for the server's verdict."""
    config = {
        "broadcast": {"ack": False, "self": False},
        "presence": {"key": "", "enabled": False},
        "private": False,
        "postgres_changes": [
            {"event": b.event, "schema": "public", "table": b.table}
            | ({"filter": b.filter} if b.filter else {})
            for b in BINDINGS
        ],
    }
    topic = f"realtime:{CHANNEL_NAME}-doctor"
    async with websockets.connect(socket_url, open_timeout=TIMEOUT_SECONDS) as socket:
        await socket.send(
            json.dumps(
                {
                    "topic": topic,
                    "event": "phx_join",
                    "payload": {"config": config, "access_token": key},
                    "ref": "1",
                    "join_ref": "1",
                }
            )
        )
        bindings = None
        async for raw in socket:
            with contextlib.suppress(ValueError):
                frame = json.loads(raw)
                if not isinstance(frame, dict) or frame.get("topic") != topic:
                    continue
                payload = frame.get("payload") or {}
                if frame.get("event") == "phx_reply" and frame.get("ref") == "1":
                    if payload.get("status") != "ok":
                        reason = (payload.get("response") or {}).get("reason", payload)
                        return Check(
                            "realtime",
                            "fail",
                            f"{shown}: join refused: {reason}",
                            "check that Realtime is enabled and the key is the service-role key",
                        )
                    bindings = (payload.get("response") or {}).get("postgres_changes") or []
                elif frame.get("event") == "system" and bindings is not None:
                    if payload.get("status") != "ok":
                        return Check(
                            "realtime",
                            "fail",
                            f"{shown}: {payload.get('message')}",
                            "check that the workflow tables exist and are in the "
                            "supabase_realtime publication (`stepsync db push`)",
                        )
                    break
        await socket.send(
            json.dumps({"topic": topic, "event": "phx_leave", "payload": {}, "ref": "2"})
        )
    if bindings is None:
        return Check("realtime", "fail", f"{shown}: closed before answering phx_join")
    return Check(
        "realtime",
        "ok",
        f"{shown}: joined, {len(bindings)} postgres_changes bindings, subscribed to PostgreSQL",
    )


def executor_endpoint(settings: Settings) -> tuple[str, str] | None:
    """(what, url) of the endpoint the configured executor calls, or None if in-process."""
    executor = settings.executor
    if executor and executor.startswith(("http://", "https://")):
        return "HTTP executor", executor
    if executor and executor.startswith("edge:"):
        name = executor.removeprefix("edge:")
    elif executor and executor.startswith("agentopia_chat"):
        name = settings.edge_function_name
    else:
        return None
    if not settings.supabase_url:
        return "Edge Function", ""
    return f"Edge Function {name}", functions_url(settings.supabase_url, name)


def check_executor(settings: Settings) -> Check:
    if settings.executor is None and settings.database_url:
        return Check(
            "executor",
            "fail",
            "STEPSYNC_EXECUTOR is not set: `serve` refuses to start on a database URL "
            "without one (the demo executor makes its outputs up)",
            "set STEPSYNC_EXECUTOR (or --executor) to python:package.module:function, "
            "an http(s):// URL, edge:<function> or agentopia_chat",
        )
    try:
        target = executor_endpoint(settings)
    except ValueError as exc:
        return Check("executor", "fail", str(exc), "fix STEPSYNC_EDGE_FUNCTION_NAME")
    if target is None:
        executor = settings.executor or "demo (the embedded database's default)"
        return Check("executor", "skip", f"{executor} runs in-process")
    what, url = target
    if not url:
        return Check("executor", "fail", f"{what}: STEPSYNC_SUPABASE_URL not set", "set it")
    headers = {}
    if settings.supabase_service_role_key:
        key = settings.supabase_service_role_key.get_secret_value()
        headers = {"Authorization": f"Bearer {key}", "apikey": key}
    try:
        # OPTIONS (the CORS preflight every Edge Function answers) runs no work.
        response = httpx.options(url, headers=headers, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        return Check(
            "executor",
            "fail",
            f"{what} at {url}: {type(exc).__name__}: {first_line(exc)}",
            "check the URL and the network",
        )
    status = response.status_code
    if status == 404:
        return Check(
            "executor",
            "fail",
            f"{what} at {url}: 404, not deployed",
            f"deploy it (`supabase functions deploy {url.rsplit('/', 1)[-1]}`) "
            "or set STEPSYNC_EDGE_FUNCTION_NAME",
        )
    if status in (401, 403):
        return Check(
            "executor",
            "fail",
            f"{what} at {url}: {status}, the key was refused",
            "set STEPSYNC_SUPABASE_SERVICE_ROLE_KEY to the project's service-role key",
        )
    if status >= 500:
        return Check(
            "executor", "warn", f"{what} at {url}: answered {status}", "check the function's logs"
        )
    return Check("executor", "ok", f"{what} at {url}: reachable (HTTP {status})")
