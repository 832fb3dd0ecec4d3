"""The one retry helper: which errors it retries, how it waits, what it logs, when it stops.

The errors are real: a port nothing listens on, a pooled connection the server ended,
a statement the database refuses.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator

import psycopg
import pytest

from sync import retrying
from sync.db import Database
from tests.support import log_records

FAST = retrying.Policy(initial_seconds=0.01, max_seconds=0.02, attempts=3)


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/postgres?connect_timeout=2"


@pytest.fixture
def retry_lines() -> Iterator[list[logging.LogRecord]]:
    with log_records("sync.retrying") as records:
        yield records


def test_a_connection_error_is_retried_as_often_as_the_policy_says_then_raised(retry_lines):
    url = closed_port_url()
    calls = 0

    async def connect() -> None:
        nonlocal calls
        calls += 1
        async with await psycopg.AsyncConnection.connect(url):
            pass

    with pytest.raises(psycopg.OperationalError):
        asyncio.run(retrying.call(connect, FAST, "connecting", fields={"run_id": "r1"}))
    assert calls == 3
    # One structured line per retry (two waits between three attempts), none after the last.
    lines = retry_lines
    assert [(r.retrying, r.failures, r.run_id) for r in lines] == [
        ("connecting", 1, "r1"),
        ("connecting", 2, "r1"),
    ]
    assert all(r.getMessage() == "connecting failed; retrying" for r in lines)
    assert all(0 < r.retry_in_seconds <= 0.02 for r in lines)
    assert all("127.0.0.1" in r.error or "connect" in r.error for r in lines)


def test_a_pooled_connection_the_server_ended_is_replaced_and_the_call_retried(db_url, retry_lines):
    async def scenario() -> tuple[int, int]:
        db = Database(db_url, size=1)
        await db.open()
        try:
            await db.queue_depth()  # the pool's one connection, now idle
            with psycopg.connect(db_url, autocommit=True) as admin:
                ended = admin.execute(
                    "select count(*) from pg_stat_activity, pg_terminate_backend(pid)"
                    " where application_name = 'stepsync-service'"
                    " and datname = current_database()"
                ).fetchone()[0]
            depth = await retrying.call(
                db.queue_depth, retrying.REPORT, "queue depth", before_retry=db.recover
            )
            return ended, depth
        finally:
            await db.close()

    ended, depth = asyncio.run(scenario())
    assert ended == 1
    assert depth == 0
    (line,) = retry_lines
    assert (line.retrying, line.failures) == ("queue depth", 1)


def test_an_error_the_database_refuses_is_not_retried(db_url, retry_lines):
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            await conn.execute("select * from no_such_table")

    with pytest.raises(psycopg.errors.UndefinedTable):
        asyncio.run(retrying.call(refused, FAST, "refused"))
    assert calls == 1
    assert retry_lines == []


def test_until_ends_the_retries_during_a_wait():
    url = closed_port_url()
    endless = retrying.Policy(initial_seconds=30, max_seconds=30)
    calls = 0

    async def scenario() -> float:
        nonlocal calls
        stopping = asyncio.Event()

        async def connect() -> None:
            nonlocal calls
            calls += 1
            async with await psycopg.AsyncConnection.connect(url):
                pass

        asyncio.get_running_loop().call_later(0.2, stopping.set)
        started = asyncio.get_running_loop().time()
        with pytest.raises(psycopg.OperationalError):
            await retrying.call(connect, endless, "connecting", until=stopping)
        return asyncio.get_running_loop().time() - started

    elapsed = asyncio.run(scenario())
    assert elapsed < 5, "the 15-30 s wait was cut short"
    assert calls == 1, "no attempt after stopping"


def test_the_backoff_doubles_up_to_its_cap_and_is_jittered_down_by_at_most_half():
    for failures, base in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (12, 5.0)]:
        delays = [retrying.backoff_seconds(failures, 0.5, 5.0) for _ in range(200)]
        assert all(base / 2 <= d <= base for d in delays), (failures, min(delays), max(delays))
        assert len(set(delays)) > 1, "jittered"


def test_restarts_retry_any_error_but_never_a_cancellation():
    assert retrying.RESTART.retry_on(RuntimeError("a bug"))
    assert not retrying.RESTART.retry_on(asyncio.CancelledError())
    assert retrying.REPORT.retry_on(psycopg.OperationalError("gone"))
    assert retrying.REPORT.retry_on(ConnectionResetError())
    assert not retrying.REPORT.retry_on(psycopg.errors.UniqueViolation())
