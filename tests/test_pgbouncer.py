"""Through a real PgBouncer in transaction mode (what Supabase's port 6543 is): the
service and every command work, and none leaves session state behind on the pooled
server connections that the next client gets.

PgBouncer here hands each transaction whichever server connection is free and resets
nothing between clients (``server_reset_query`` empty, as in transaction mode), so a
session-level ``set role`` or a prepared statement of one command would show up in the
next one's transactions.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from typer.testing import CliRunner

from sync.cli import app
from tests.helpers import pgbouncer
from tests.helpers.provision import Server
from tests.support import generate_legacy_tasks, make_agent, make_task, make_user, run_statuses
from tests.workers import all_finished, setup_task, start_runs, wait_until, workers

pytestmark = pytest.mark.skipif(not pgbouncer.available(), reason="pgbouncer is not installed")

POOLER = {"STEPSYNC_DB_TRANSACTION_POOLER": "true", "COLUMNS": "200"}


@pytest.fixture(scope="module")
def pgbouncer_port(pg_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    # Two server connections for many clients: consecutive transactions of one client
    # land on connections other clients used just before.
    with pgbouncer.pgbouncer(
        pg_server.url, tmp_path_factory.mktemp("pgbouncer"), pool_size=2
    ) as port:
        yield port


@pytest.fixture
def pooled_url(db_url: str, pgbouncer_port: int) -> str:
    return pgbouncer.through(db_url, pgbouncer_port)


def stepsync(*args: str, url: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(
        app, list(args), env={**POOLER, "STEPSYNC_DATABASE_URL": url, **(env or {})}
    )


def session_left_behind(url: str) -> list[tuple]:
    """What a fresh client finds on the pooled server connections: its role, and any
    prepared statement or LISTEN a previous client left there."""
    found = []
    for _ in range(4):  # more than the pool's connections, each in its own transaction
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
            found.append(
                conn.execute(
                    "select current_user::text,"
                    " (select count(*) from pg_prepared_statements),"
                    " (select count(*) from pg_listening_channels())"
                ).fetchone()
            )
    return found


def test_every_command_works_through_pgbouncer_and_leaves_nothing_behind(
    conn: psycopg.Connection, pooled_url: str
) -> None:
    user_id = make_user(conn)
    task_id = make_task(conn, user_id, make_agent(conn, user_id))
    generate_legacy_tasks(conn, user_id, make_agent(conn, user_id), 5)

    outputs = {}
    for command in (
        ["run", str(task_id)],
        ["runs"],
        ["flags", "list"],
        ["flags", "set-percent", "multi_step_workflows", "100"],
        ["flags", "allow", "multi_step_workflows", str(user_id)],
        ["flags", "show", "multi_step_workflows", "--user", str(user_id)],
        ["db", "status"],
        ["db", "push"],
        ["backfill", "legacy-tasks", "--dry-run"],
        ["backfill", "legacy-tasks", "--verify"],
    ):
        result = stepsync(*command, url=pooled_url)
        assert result.exit_code in (0, 3), (command, result.output)
        assert "Traceback" not in result.output
        outputs[command[0] + " " + command[1] if len(command) > 1 else command[0]] = result.output
    run_id = outputs[f"run {task_id}"].split()[1]
    shown = stepsync("show", run_id, url=pooled_url)
    assert shown.exit_code == 0 and run_id in shown.output, shown.output
    cancelled = stepsync("cancel", run_id, url=pooled_url)
    assert cancelled.exit_code == 0, cancelled.output
    status = conn.execute(
        "select status::text from public.agent_task_executions where id = %s", [run_id]
    ).fetchone()[0]
    assert status == "cancelled"
    doctor = stepsync("doctor", url=pooled_url, env={"STEPSYNC_EXECUTOR": "demo"})
    assert "✓ ok    database" in doctor.output, doctor.output
    assert "✓ ok    migrations" in doctor.output, doctor.output
    assert "Traceback" not in doctor.output

    assert session_left_behind(pooled_url) == [("postgres", 0, 0)] * 4


def test_the_backfill_refuses_pgbouncer_with_a_clear_error(
    conn: psycopg.Connection, pooled_url: str
) -> None:
    user_id = make_user(conn)
    generate_legacy_tasks(conn, user_id, make_agent(conn, user_id), 5)

    result = stepsync("backfill", "legacy-tasks", url=pooled_url)

    assert result.exit_code == 1
    assert "the backfill's lock needs a database session of its own" in " ".join(
        result.output.split()
    )
    assert "Traceback" not in result.output
    assert conn.execute("select count(*) from stepsync.backfill_runs").fetchone() == (0,)


def test_two_services_finish_every_run_through_pgbouncer(
    conn: psycopg.Connection, pooled_url: str, tmp_path
) -> None:
    task_ids = [setup_task(conn, ["noop", "noop", "noop"]) for _ in range(20)]
    run_ids = start_runs(conn, task_ids)

    with workers(pooled_url, tmp_path, 2, executor="demo", env=POOLER):
        wait_until(lambda: all_finished(conn, run_ids), timeout=120, what="every run to finish")

    assert run_statuses(conn, run_ids) == {"completed": 20}
    assert session_left_behind(pooled_url) == [("postgres", 0, 0)] * 4


def test_a_run_command_can_wait_through_pgbouncer(
    conn: psycopg.Connection, pooled_url: str, tmp_path
) -> None:
    task_id = setup_task(conn, ["noop", "noop"])
    with workers(pooled_url, tmp_path, 1, executor="demo", env=POOLER):
        result = stepsync("run", str(task_id), "--wait", url=pooled_url)
    assert result.exit_code == 0, result.output
    run_id = uuid.UUID(result.output.split()[1])
    assert run_statuses(conn, [run_id]) == {"completed": 1}
