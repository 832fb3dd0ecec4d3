"""Events: public.emit_task_event through the PostgREST calling convention (owner, other
user, anon, service role), and ``stepsync events emit``."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from sync.cli import app
from tests.schedule_support import runs_of, task_row
from tests.support import acting_as, make_agent, make_user

EMIT = "select * from public.emit_task_event(%s, %s, %s)"


def event_task(
    conn: psycopg.Connection,
    user_id: uuid.UUID,
    event_type: str = "email_received",
    config: dict | None = None,
    **columns: object,
) -> uuid.UUID:
    row = {
        "agent_id": make_agent(conn, user_id),
        "user_id": user_id,
        "name": "On event",
        "instructions": "Triage the email",
        "task_type": "event_based",
        "event_trigger_type": event_type,
        "event_trigger_config": Jsonb(config or {}),
        **columns,
    }
    names = ", ".join(row)
    values = ", ".join(f"%({key})s" for key in row)
    return conn.execute(
        f"insert into public.agent_tasks ({names}) values ({values}) returning id", row
    ).fetchone()[0]


def emit(
    conn: psycopg.Connection,
    role: str,
    user: uuid.UUID | None,
    event_type: str,
    data: object,
    key: str | None = None,
) -> list[dict]:
    with acting_as(conn, role, user), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(EMIT, [event_type, Jsonb(data), key]).fetchall()


@pytest.fixture
def owner(conn: psycopg.Connection) -> uuid.UUID:
    return make_user(conn)


def test_an_event_starts_every_matching_task_of_its_owner_with_the_event_as_trigger_data(
    conn: psycopg.Connection, owner: uuid.UUID
) -> None:
    unfiltered = event_task(conn, owner)
    filtered = event_task(conn, owner, config={"filters": {"from": "boss@example.com"}})
    other_value = event_task(conn, owner, config={"filters": {"from": "spam@example.com"}})
    other_type = event_task(conn, owner, "file_uploaded")
    paused = event_task(conn, owner, status="paused")
    data = {"from": "boss@example.com", "subject": "Q3"}
    rows = emit(conn, "authenticated", owner, "email_received", data)
    assert {(r["task_id"], r["outcome"]) for r in rows} == {
        (unfiltered, "started"),
        (filtered, "started"),
    }
    for task in (unfiltered, filtered):
        [run] = runs_of(conn, task)
        assert (run["trigger_type"], run["trigger_data"], run["status"]) == (
            "event",
            data,
            "running",
        )
        assert run["id"] in {r["run_id"] for r in rows}
    for task in (other_value, other_type, paused):
        assert runs_of(conn, task) == []
    # Every key of the filter must equal the event's value, JSON types included.
    both = event_task(conn, owner, config={"filters": {"from": "a@b.c", "priority": 1}})
    assert emit(conn, "service_role", None, "email_received", {"from": "a@b.c", "priority": "1"})
    assert runs_of(conn, both) == []
    emit(conn, "service_role", None, "email_received", {"from": "a@b.c", "priority": 1})
    assert len(runs_of(conn, both)) == 1


def test_a_user_cannot_emit_events_into_another_users_tasks(
    conn: psycopg.Connection, owner: uuid.UUID
) -> None:
    mine = event_task(conn, owner)
    stranger = make_user(conn)
    theirs = event_task(conn, stranger)
    rows = emit(conn, "authenticated", stranger, "email_received", {})
    assert [(r["task_id"], r["outcome"]) for r in rows] == [(theirs, "started")]
    assert runs_of(conn, mine) == []
    # Nor start one by name, nor read the other's event log.
    with (
        pytest.raises(psycopg.errors.NoDataFound),
        acting_as(conn, "authenticated", stranger),
    ):
        conn.execute("select public.start_task_run(%s, 'event', '{}')", [mine])
    with acting_as(conn, "authenticated", owner):
        assert conn.execute("select count(*) from public.task_events").fetchone()[0] == 0
    with acting_as(conn, "authenticated", stranger):
        assert conn.execute("select count(*) from public.task_events").fetchone()[0] == 1
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        acting_as(conn, "anon"),
    ):
        conn.execute(EMIT, ["email_received", Jsonb({}), None])


def test_the_service_role_emits_for_every_user_and_leaves_users_outside_the_rollout_alone(
    conn: psycopg.Connection, owner: uuid.UUID
) -> None:
    outside = make_user(conn)
    conn.execute("select stepsync.deny_flag_users('multi_step_workflows', %s)", [[outside]])
    ours, theirs = event_task(conn, owner), event_task(conn, outside)
    rows = {r["task_id"]: r for r in emit(conn, "service_role", None, "email_received", {})}
    assert rows[ours]["outcome"] == "started"
    assert rows[theirs]["outcome"] == "legacy"
    assert "legacy task-executor runs this task" in rows[theirs]["detail"]
    assert runs_of(conn, theirs) == []


def test_the_same_idempotency_key_never_starts_a_task_twice(
    conn: psycopg.Connection, owner: uuid.UUID, db_url: str
) -> None:
    task = event_task(conn, owner)
    first = emit(conn, "authenticated", owner, "email_received", {"id": 1}, "msg-1")
    again = emit(conn, "authenticated", owner, "email_received", {"id": 1}, "msg-1")
    assert [r["outcome"] for r in first] == ["started"]
    assert [(r["task_id"], r["run_id"], r["outcome"]) for r in again] == [
        (task, first[0]["run_id"], "duplicate")
    ]
    assert len(runs_of(conn, task)) == 1
    # Another user's key of the same name is theirs alone.
    stranger = make_user(conn)
    theirs = event_task(conn, stranger)
    assert [
        r["outcome"]
        for r in emit(conn, "authenticated", stranger, "email_received", {"id": 1}, "msg-1")
    ] == ["started"]
    assert len(runs_of(conn, theirs)) == 1
    # The same key for another event is a mistake, named as one; nothing is written.
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        emit(conn, "authenticated", owner, "email_received", {"id": 2}, "msg-1")
    assert "idempotency key 'msg-1' was already used for another event" in str(refused.value)
    assert len(runs_of(conn, task)) == 1

    # Concurrent retries of one key: one starts the task, the others wait and find it.
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def retry() -> None:
        with psycopg.connect(db_url, autocommit=True) as retry_conn:
            barrier.wait()
            rows = emit(retry_conn, "service_role", None, "email_received", {"id": 3}, "burst")
            outcomes.extend(r["outcome"] for r in rows if r["task_id"] == task)

    threads = [threading.Thread(target=retry) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["duplicate", "duplicate", "duplicate", "started"]
    assert len(runs_of(conn, task)) == 2


@pytest.mark.parametrize(
    ("event_type", "data", "message"),
    [
        ("email_recieved", {}, "unknown event type 'email_recieved'"),
        (None, {}, "unknown event type null"),
        ("email_received", [1, 2], "event data must be a JSON object, not array"),
        ("email_received", "hello", "event data must be a JSON object, not string"),
        ("email_received", None, "event data must be a JSON object, not null"),
    ],
)
def test_bad_events_are_refused_and_nothing_is_written(
    conn: psycopg.Connection, owner: uuid.UUID, event_type: str, data: object, message: str
) -> None:
    task = event_task(conn, owner)
    with (
        pytest.raises(psycopg.errors.InvalidParameterValue) as refused,
        acting_as(conn, "authenticated", owner),
    ):
        conn.execute(EMIT, [event_type, None if data is None else Jsonb(data), None])
    assert refused.value.diag.message_primary == message
    if event_type != "email_received":
        assert "email_received, integration_webhook" in refused.value.diag.message_hint
    assert runs_of(conn, task) == []
    assert conn.execute("select count(*) from public.task_events").fetchone()[0] == 0


def test_an_event_task_at_its_limit_is_completed_instead_of_run(
    conn: psycopg.Connection, owner: uuid.UUID
) -> None:
    task = event_task(conn, owner, max_executions=1, total_executions=1)
    rows = emit(conn, "authenticated", owner, "email_received", {})
    assert [(r["outcome"], r["detail"]) for r in rows] == [
        ("completed", "max_executions (1) reached")
    ]
    assert task_row(conn, task)["status"] == "completed"
    assert runs_of(conn, task) == []


def test_an_event_task_with_invalid_steps_is_refused_and_the_others_still_run(
    conn: psycopg.Connection, owner: uuid.UUID
) -> None:
    broken, fine = event_task(conn, owner), event_task(conn, owner)
    with conn.transaction():
        conn.execute("set local session_replication_role = replica")
        conn.execute(
            "update public.task_steps set agent_id = %s where task_id = %s",
            [make_agent(conn, make_user(conn)), broken],
        )
    rows = {r["task_id"]: r for r in emit(conn, "authenticated", owner, "email_received", {})}
    assert rows[broken]["outcome"] == "refused"
    assert "does not belong to the task owner" in rows[broken]["detail"]
    assert rows[fine]["outcome"] == "started"


def test_stepsync_events_emit(conn: psycopg.Connection, owner: uuid.UUID, db_url: str) -> None:
    task = event_task(conn, owner, "integration_webhook", {"filters": {"source": "github"}})
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "events",
            "emit",
            "integration_webhook",
            "--data",
            '{"source": "github"}',
            "--idempotency-key",
            "delivery-7",
            "--database-url",
            db_url,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 run(s) started, 1 task(s) matched" in result.output
    assert str(task) in result.output
    again = runner.invoke(
        app,
        [
            "events",
            "emit",
            "integration_webhook",
            "--data",
            '{"source": "github"}',
            "--idempotency-key",
            "delivery-7",
            "--database-url",
            db_url,
        ],
    )
    assert "duplicate" in again.output and "0 run(s) started" in again.output
    bad = runner.invoke(app, ["events", "emit", "webhook", "--database-url", db_url])
    assert bad.exit_code == 1
    assert "unknown event type 'webhook'" in bad.output
    assert "integration_webhook" in bad.output
    assert len(runs_of(conn, task)) == 1
