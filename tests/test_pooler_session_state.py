"""Transaction-pooler mode: no command leaves session state on a server connection.

Behind a transaction pooler a server connection passes from client to client, so a
session-level ``set role`` leaks into the next client's transactions (it made ``stepsync
doctor`` fail with ``permission denied for schema supabase_migrations``), and a prepared
statement or a ``LISTEN`` is lost. These tests run every command with
``STEPSYNC_DB_TRANSACTION_POOLER=true`` on a database that logs each statement, and read
what reached the server.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from sync.cli import app
from sync.settings import Settings
from tests.helpers.provision import Server
from tests.support import generate_legacy_tasks, make_agent, make_task, make_user
from tests.workers import wait_until, workers

POOLER = {"STEPSYNC_DB_TRANSACTION_POOLER": "true", "COLUMNS": "200"}
# What the server logged for one statement (log_statement = all): simple or extended query.
LOGGED = re.compile(r"LOG:  (?:statement|execute (?P<name>[^:]+)): (?P<text>.*)")


def stepsync(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture
def statements(pg_server: Server, db_url: str) -> Iterator[Callable[[], list[tuple[str, str]]]]:
    """What the server ran on this test's database from now on: (statement name, text)."""
    if pg_server.kind != "local" or pg_server.data_dir is None:
        pytest.skip("reads the server log of a local cluster")
    name = urlsplit(db_url).path.lstrip("/")
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("alter database {} set log_statement = 'all'").format(sql.Identifier(name))
        )
    log = pg_server.data_dir / "server.log"
    start = log.stat().st_size

    def read() -> list[tuple[str, str]]:
        text = log.read_bytes()[start:].decode(errors="replace")
        return [(m["name"] or "", m["text"].strip()) for m in LOGGED.finditer(text)]

    yield read


def session_state(logged: list[tuple[str, str]]) -> list[str]:
    """Statements that would outlive their transaction on a pooled server connection."""
    found = []
    for name, text in logged:
        lowered = text.lower()
        if re.match(r"(set|reset)\s+(session\s+)?role\b", lowered) or lowered.startswith(
            ("listen", "prepare ", "select pg_advisory_lock")
        ):
            found.append(text)
        elif name.startswith("_pg3_"):  # psycopg's prepared statements
            found.append(f"prepared {name}: {text}")
    return found


def roles_set_locally(logged: list[tuple[str, str]]) -> int:
    return sum(1 for _, text in logged if text.lower().startswith('set local role "service_role"'))


def timeouts_with_local_roles(logged: list[tuple[str, str]]) -> set[str]:
    """The statement timeout each ``set local role`` came with (in the same round trip)."""
    return {
        text.lower().partition(";")[2].strip()
        for _, text in logged
        if text.lower().startswith('set local role "service_role"')
    }


def test_every_command_sets_its_role_per_transaction_behind_a_pooler(
    conn: psycopg.Connection, db_url: str, statements, tmp_path
) -> None:
    user_id = make_user(conn)
    task_id = make_task(conn, user_id, make_agent(conn, user_id))
    generate_legacy_tasks(conn, user_id, make_agent(conn, user_id), 5)

    with workers(db_url, tmp_path, 1, executor="demo", env=POOLER):
        started = stepsync("run", str(task_id), "--wait", "--database-url", db_url, env=POOLER)
        assert started.exit_code == 0, started.output
        run_id = started.output.split()[1]
        for command in (
            ["runs"],
            ["show", run_id],
            ["flags", "list"],
            ["flags", "set-percent", "multi_step_workflows", "40"],
            ["flags", "allow", "multi_step_workflows", str(user_id)],
            ["flags", "show", "multi_step_workflows", "--user", str(user_id)],
            ["db", "status"],
            ["db", "push"],
            ["backfill", "legacy-tasks", "--dry-run"],
            ["backfill", "legacy-tasks", "--verify"],
        ):
            result = stepsync(*command, "--database-url", db_url, env=POOLER)
            assert result.exit_code in (0, 3), (command, result.output)
        doctor = stepsync("doctor", env={**POOLER, "STEPSYNC_DATABASE_URL": db_url})
        assert "✓ ok    migrations" in doctor.output, doctor.output

    logged = statements()
    assert session_state(logged) == []
    assert roles_set_locally(logged) > 20  # the service's queries and every command's
    # Each transaction runs under the statement timeout, set with its role.
    assert timeouts_with_local_roles(logged) == {"set local statement_timeout = '30000ms'"}


def test_the_backfill_refuses_the_pooler_naming_what_to_use_instead(
    conn: psycopg.Connection, db_url: str
) -> None:
    user_id = make_user(conn)
    generate_legacy_tasks(conn, user_id, make_agent(conn, user_id), 5)

    result = stepsync("backfill", "legacy-tasks", "--database-url", db_url, env=POOLER)

    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "the backfill's lock needs a database session of its own" in message
    assert "port 5432" in message
    assert "Traceback" not in result.output
    assert conn.execute("select count(*) from stepsync.backfill_runs").fetchone() == (0,)


def test_commands_act_through_set_local_role_on_a_direct_connection_too(
    conn: psycopg.Connection, db_url: str, statements
) -> None:
    user_id = make_user(conn)
    task_id = make_task(conn, user_id, make_agent(conn, user_id))
    for command in (
        ["run", str(task_id)],
        ["runs"],
        ["flags", "disable", "multi_step_workflows"],
        ["flags", "enable", "multi_step_workflows"],
        ["db", "status"],
    ):
        result = stepsync(*command, "--database-url", db_url, env={"COLUMNS": "200"})
        assert result.exit_code == 0, (command, result.output)

    logged = statements()
    assert [text for _, text in logged if re.match(r"set\s+role\b", text.lower())] == []
    assert roles_set_locally(logged) >= 5


def test_the_service_pool_sets_its_role_once_per_connection_when_direct(
    conn: psycopg.Connection, db_url: str, statements, tmp_path
) -> None:
    user_id = make_user(conn)
    task_id = make_task(conn, user_id, make_agent(conn, user_id))
    with workers(db_url, tmp_path, 1, executor="demo"):
        run_id = conn.execute("select public.start_task_run(%s)", [task_id]).fetchone()[0]
        wait_until(
            lambda: conn.execute(
                "select status = 'completed' from public.agent_task_executions where id = %s",
                [run_id],
            ).fetchone()[0],
            what="the run to complete",
        )

    session_roles = [t for _, t in statements() if t.lower().startswith('set role "service_role"')]
    assert 1 <= len(session_roles) <= Settings().pool_size
    # The connection runs under the statement timeout, set with its role.
    assert {t.lower() for t in session_roles} == {
        "set role \"service_role\"; set statement_timeout = '30000ms'"
    }


def test_listen_defaults_to_poll_only_behind_a_transaction_pooler(monkeypatch) -> None:
    monkeypatch.setenv("STEPSYNC_DB_TRANSACTION_POOLER", "true")
    monkeypatch.delenv("STEPSYNC_LISTEN", raising=False)
    assert Settings().listen == []
    assert Settings(listen=["realtime"]).listen == ["realtime"]
    monkeypatch.setenv("STEPSYNC_DB_TRANSACTION_POOLER", "false")
    assert Settings().listen == ["postgres"]


def test_service_settings_stop_only_serve(db_url: str) -> None:
    broken = {
        "STEPSYNC_DB_TRANSACTION_POOLER": "true",
        "STEPSYNC_LISTEN": "postgres",  # refused by serve: LISTEN cannot cross the pooler
        "STEPSYNC_CONCURRENCY": "0",
        "STEPSYNC_LEASE_SECONDS": "soon",
        "STEPSYNC_METRICS_PORT": "0",
    }
    missing = uuid.uuid4()
    for command, shown in (
        (["runs"], "run"),
        (["db", "status"], "0 pending"),
        (["flags", "list"], "multi_step_workflows"),
        (["show", str(missing)], f"no run {missing}"),
    ):
        result = stepsync(*command, "--database-url", db_url, env=broken)
        assert shown in result.output, (command, result.output)
        assert "invalid configuration" not in result.output
    refused = stepsync("serve", "--database-url", db_url, env=broken)
    assert refused.exit_code == 1
    assert "STEPSYNC_CONCURRENCY" in refused.output
    assert "STEPSYNC_LEASE_SECONDS" in refused.output
