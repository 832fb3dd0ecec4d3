"""One log format for the whole process: the service's lines and every library's.

The last test runs a real ``stepsync serve`` through a database outage and a Realtime
outage, the moments libraries log on their own, and reads every line it wrote.
"""

from __future__ import annotations

import json
import logging
import warnings

import psycopg
import pytest

from sync import logging as structured_logging
from tests.realtime_support import SupabaseStandIns
from tests.run_engine_support import make_workflow, start_run
from tests.workers import start_worker, wait_until

KEY = "service-role-key-for-tests"


@pytest.fixture
def configure(capsys):
    """``structured_logging.configure``, undone afterwards; returns the stderr reader."""
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    loggers = ["sync", *structured_logging.LIBRARY_LOGGERS]
    saved_levels = {name: logging.getLogger(name).level for name in loggers}
    saved_root_level = root.level

    def apply(log_format: str = "json", level: str = "INFO"):
        # captureWarnings(True) does nothing if an earlier call in this process (a
        # command run in-process by another test) already did it; start afresh.
        logging.captureWarnings(False)
        structured_logging.configure(log_format, level)

        def lines() -> list[str]:
            return [line for line in capsys.readouterr().err.splitlines() if line]

        return lines

    yield apply
    logging.captureWarnings(False)
    root.handlers[:] = saved_handlers
    root.setLevel(saved_root_level)
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


def emit_from_everywhere() -> None:
    logging.getLogger("sync.service").info("serving")
    logging.getLogger("psycopg.pool").warning("error connecting in 'pool-1': refused")
    logging.getLogger("psycopg.pool").info("connection given by 'pool-1'")
    logging.getLogger("httpx").info("HTTP Request: POST https://x.test/functions/v1/chat")
    logging.getLogger("realtime._async.client").error("Unrecognized message format 'x'\nline 2")
    logging.getLogger("websockets.client").debug("< TEXT '{}' [2 bytes]")
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library's deprecation", UserWarning, stacklevel=1)


def test_every_logger_writes_json_and_libraries_only_from_warning_up(configure):
    lines = configure("json", "INFO")

    emit_from_everywhere()

    entries = [json.loads(line) for line in lines()]  # fails on any line that is not JSON
    assert [(e["logger"], e["level"]) for e in entries] == [
        ("sync.service", "info"),
        ("psycopg.pool", "warning"),
        ("realtime._async.client", "error"),
        ("asyncio", "error"),
        ("py.warnings", "warning"),
    ]
    assert entries[2]["msg"] == "Unrecognized message format 'x'\nline 2"
    assert "a library's deprecation" in entries[4]["msg"]


def test_text_format_covers_the_libraries_too(configure):
    lines = configure("text", "INFO")

    emit_from_everywhere()

    written = lines()
    assert len(written) == 5
    assert all(line.startswith("ts=") and " logger=" in line for line in written)
    assert "logger=psycopg.pool msg=\"error connecting in 'pool-1': refused\"" in written[1]


def test_debug_opens_the_libraries_and_keeps_secrets_out(configure):
    lines = configure("json", "DEBUG")

    emit_from_everywhere()
    logging.getLogger("websockets.client").debug(
        "> GET /realtime/v1/websocket?apikey=%s&vsn=1.0.0 HTTP/1.1", KEY
    )
    logging.getLogger("httpx").debug("headers: Authorization: Bearer %s", KEY)
    logging.getLogger("realtime._async.client").debug('send: {"access_token": "%s"}', KEY)
    logging.getLogger("psycopg").debug("connecting to postgresql://postgres:%s@db:5432/x", KEY)

    written = lines()
    entries = [json.loads(line) for line in written]
    assert {"httpx", "websockets.client", "psycopg"} <= {e["logger"] for e in entries}
    assert sum(e["level"] == "debug" for e in entries) >= 5
    assert KEY not in "\n".join(written)
    assert "apikey=***&vsn=1.0.0" in entries[-4]["msg"]


# --- a real process ---------------------------------------------------------------------


def start_one_step_run(conn: psycopg.Connection):
    user_id, task_id, _ = make_workflow(conn, [{}])
    return start_run(conn, task_id, as_user=user_id)


def run_status(conn: psycopg.Connection, run_id) -> str:
    return conn.execute(
        "select status from public.agent_task_executions where id = %s", [run_id]
    ).fetchone()[0]


def test_a_served_process_writes_only_json_through_database_and_realtime_outages(
    db_url, conn, pg_server, tmp_path
):
    database = conn.info.dbname
    with (
        SupabaseStandIns(db_url, KEY) as supabase,
        psycopg.connect(pg_server.url, autocommit=True) as admin,
    ):
        worker = start_worker(
            db_url,
            tmp_path,
            "w",
            "--listen",
            "postgres,realtime",
            "--poll-interval",
            "0.3",
            executor="demo",
            env={"STEPSYNC_SUPABASE_URL": supabase.url, "STEPSYNC_SUPABASE_SERVICE_ROLE_KEY": KEY},
        )
        try:
            worker.wait_for_log(lambda e: e.get("msg", "").startswith("realtime changes flowing"))

            # Realtime: a frame the client cannot parse, then the server down for a while.
            supabase.call(supabase.realtime.inject("this is not json"))
            supabase.realtime.refusing = True
            supabase.call(_drop(supabase))
            worker.wait_for_log(lambda e: "Connection attempt failed" in e.get("msg", ""))
            supabase.realtime.refusing = False

            # The database: every service connection cut (what a restart does to them),
            # new ones refused, then accepted again.
            admin.execute(f'alter database "{database}" with allow_connections false')
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity"
                " where datname = %s and application_name like 'stepsync%%'",
                [database],
            )
            worker.wait_for_log(lambda e: e.get("logger") == "psycopg.pool")
            admin.execute(f'alter database "{database}" with allow_connections true')

            # Back to work: a run started now completes.
            run_id = start_one_step_run(conn)
            wait_until(lambda: run_status(conn, run_id) == "completed", what="the run")
        finally:
            admin.execute(f'alter database "{database}" with allow_connections true')
            code = worker.stop()

    written = [line for line in worker.log_path.read_text().splitlines() if line.strip()]
    plain = []
    entries = []
    for line in written:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            plain.append(line)
    assert plain == [], "lines that are not JSON:\n" + "\n".join(plain)
    loggers = {entry["logger"] for entry in entries}
    assert "psycopg.pool" in loggers
    realtime = [e for e in entries if e["logger"].startswith("realtime.")]
    assert any("Unrecognized message format" in e["msg"] for e in realtime)
    assert any("Connection attempt failed" in e["msg"] for e in realtime)
    assert KEY not in worker.log_path.read_text()
    assert code == 0


async def _drop(supabase: SupabaseStandIns) -> None:
    supabase.realtime.drop_connections()
