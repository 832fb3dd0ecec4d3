"""One user cannot starve the others: open runs have quotas per user and per task (API
callers), and the claim order takes users in turn, a hand-off included."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.hostile_support import refused, written
from tests.run_engine_support import claim, make_workflow, start_run, step_rows
from tests.support import acting_as, as_service, make_task


def start_as_owner(conn: psycopg.Connection, owner: uuid.UUID, task_id: uuid.UUID) -> uuid.UUID:
    with acting_as(conn, "authenticated", owner):
        return conn.execute("select public.start_task_run(%s)", [task_id]).fetchone()[0]


def test_the_quotas_are_documented_settings(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "select name, value, description from stepsync.settings order by 1"
    ).fetchall()
    assert [(name, value) for name, value, _ in rows] == [
        ("max_active_runs_per_task", 5),
        ("max_active_runs_per_user", 20),
        ("user_step_spacing_ms", 1000),
    ]
    assert all(len(description) > 40 for _, _, description in rows)
    for role in ("anon", "authenticated"):
        with refused(conn, role) as refusal:
            conn.execute("select * from stepsync.settings")
        assert refusal.sqlstate == "42501"


def test_a_task_has_at_most_five_open_runs_and_the_sixth_start_writes_nothing(
    conn: psycopg.Connection,
) -> None:
    owner, task_id, _ = make_workflow(conn, [{}])
    runs = [start_as_owner(conn, owner, task_id) for _ in range(5)]
    before = written(conn)
    with refused(conn, "authenticated", owner) as refusal:
        conn.execute("select public.start_task_run(%s)", [task_id])
    assert refusal.sqlstate == "53400"
    assert refusal.message == f"task {task_id} already has 5 open runs, the most allowed at once"
    assert "max_active_runs_per_task" in refusal.hint
    assert written(conn) == before
    # A finished (here: cancelled) run makes room again.
    with acting_as(conn, "authenticated", owner):
        conn.execute("select public.cancel_task_run(%s)", [runs[0]])
    start_as_owner(conn, owner, task_id)


def test_a_user_has_at_most_twenty_open_runs_but_the_service_is_not_held_to_it(
    conn: psycopg.Connection,
) -> None:
    owner, first_task, _ = make_workflow(conn, [{}])
    agent = conn.execute(
        "select agent_id from public.agent_tasks where id = %s", [first_task]
    ).fetchone()[0]
    tasks = [first_task, *(make_task(conn, owner, agent) for _ in range(4))]
    for task_id in tasks:
        for _ in range(4):
            start_as_owner(conn, owner, task_id)
    spare = make_task(conn, owner, agent)
    before = written(conn)
    with refused(conn, "authenticated", owner) as refusal:
        conn.execute("select public.start_task_run(%s)", [spare])
    assert refusal.sqlstate == "53400"
    assert refusal.message == (
        f"the owner of task {spare} already has 20 open runs, the most allowed at once"
    )
    assert written(conn) == before
    # Schedules and events the service starts follow their own rules.
    start_run(conn, spare)
    # An operator may lift the quota (0: no limit).
    with as_service(conn):
        conn.execute(
            "update stepsync.settings set value = 0 where name = 'max_active_runs_per_user'"
        )
    start_as_owner(conn, owner, spare)


def test_two_starts_at_once_cannot_both_take_the_last_place(
    conn: psycopg.Connection, db_url: str
) -> None:
    owner, task_id, _ = make_workflow(conn, [{}])
    for _ in range(4):
        start_as_owner(conn, owner, task_id)
    outcome: dict[str, object] = {}
    first = psycopg.connect(db_url, autocommit=True)
    second = psycopg.connect(db_url, autocommit=True)
    try:
        with acting_as(first, "authenticated", owner):
            first.execute("select public.start_task_run(%s)", [task_id])

            def start_second() -> None:
                try:
                    start_as_owner(second, owner, task_id)
                    outcome["second"] = "started"
                except psycopg.Error as exc:
                    outcome["second"] = exc.sqlstate

            racer = threading.Thread(target=start_second)
            racer.start()
            racer.join(timeout=1.0)
            assert racer.is_alive(), "the second start must wait for the first"
        racer.join(timeout=10)
    finally:
        first.close()
        second.close()
    assert outcome == {"second": "53400"}


def test_the_claim_order_takes_users_in_turn(conn: psycopg.Connection) -> None:
    _, busy_task, _ = make_workflow(conn, [{}], name="Busy")
    with as_service(conn):
        conn.execute("update stepsync.settings set value = 0 where name like 'max_active%'")
    busy_runs = [start_run(conn, busy_task) for _ in range(30)]
    _, quiet_task, _ = make_workflow(conn, [{}], name="Quiet")
    quiet_run = start_run(conn, quiet_task)

    # Queued 30 first, the busy user's steps still wait for their turn: the quiet
    # user's one step is claimed second, not thirty-first.
    claimed = [step["run_id"] for step in claim(conn, batch=3)]
    assert claimed == [busy_runs[0], quiet_run, busy_runs[1]]
    # In the queue, the busy user's steps are a spacing apart.
    gaps = conn.execute(
        "select extract(epoch from fair_at - lag(fair_at) over (order by fair_at))"
        " from public.task_step_executions where run_id = any(%s) and status = 'queued'"
        " order by fair_at offset 1",
        [busy_runs],
    ).fetchall()
    assert {round(gap) for (gap,) in gaps} == {1}


def test_a_hand_off_does_not_jump_ahead_of_another_users_waiting_step(
    conn: psycopg.Connection,
) -> None:
    _, first_task, _ = make_workflow(conn, [{}, {}], name="First")
    first_run = start_run(conn, first_task)
    (step,) = claim(conn, worker="worker-1")
    _, other_task, _ = make_workflow(conn, [{}], name="Other")
    other_run = start_run(conn, other_task)

    with as_service(conn), conn.cursor(row_factory=dict_row) as cur:
        done = cur.execute(
            "select done.completed, (done.next_step).step_execution_id as handed"
            " from stepsync.complete_steps(%s::uuid[], %s::bigint[], %s::jsonb[], 'worker-1', 60)"
            " as done",
            [[step["step_execution_id"]], [step["lease_token"]], [Jsonb({"ok": True})]],
        ).fetchone()
    # Not handed to the worker: the other user's step waits ahead of it.
    assert done == {"completed": True, "handed": None}
    assert [row["status"] for row in step_rows(conn, first_run)] == ["completed", "queued"]
    assert [s["run_id"] for s in claim(conn, batch=2)] == [other_run, first_run]


def test_a_hand_off_still_happens_when_no_one_else_waits(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(conn, [{}, {}])
    run_id = start_run(conn, task_id)
    (step,) = claim(conn, worker="worker-1")
    with as_service(conn):
        handed = conn.execute(
            "select (done.next_step).step_order"
            " from stepsync.complete_steps(%s::uuid[], %s::bigint[], %s::jsonb[], 'worker-1', 60)"
            " as done",
            [[step["step_execution_id"]], [step["lease_token"]], [Jsonb({"ok": True})]],
        ).fetchone()[0]
    assert handed == 2
    assert [row["status"] for row in step_rows(conn, run_id)] == ["completed", "running"]


@pytest.mark.parametrize("quota", ["max_active_runs_per_task", "max_active_runs_per_user"])
def test_a_quota_never_holds_back_a_run_that_is_already_open(
    conn: psycopg.Connection, quota: str
) -> None:
    owner, task_id, _ = make_workflow(conn, [{}, {}])
    runs = [start_as_owner(conn, owner, task_id) for _ in range(5)]
    with as_service(conn):
        conn.execute("update stepsync.settings set value = 1 where name = %s", [quota])
    # The open runs go on to their next steps as usual.
    steps = claim(conn, batch=10)
    assert sorted(s["run_id"] for s in steps) == sorted(runs)
