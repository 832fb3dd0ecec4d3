"""What the multi_step_workflows rollout flag gates, as the UI and the service meet it:
the UI can ask whether it is on, a user outside the rollout cannot build a multi-step
task or start a run, and runs already started when a user leaves the rollout finish."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from tests.run_engine_support import claim_one, complete, make_workflow, run_row, start_run
from tests.support import acting_as, as_service, live_steps, make_agent, make_task, make_user

TWO_STEPS = [
    {"step_name": "Fetch", "instructions": "Fetch the report"},
    {"step_name": "Send", "instructions": "Send it"},
]


def leave_rollout(conn: psycopg.Connection, user_id: uuid.UUID) -> None:
    with as_service(conn):
        conn.execute("select stepsync.deny_flag_users('multi_step_workflows', %s)", [[user_id]])


def enabled_for_caller(conn: psycopg.Connection, user_id: uuid.UUID) -> bool:
    with acting_as(conn, "authenticated", user_id):
        return conn.execute("select public.multi_step_workflows_enabled()").fetchone()[0]


def save(conn: psycopg.Connection, user_id: uuid.UUID, task_id: uuid.UUID, steps: list) -> list:
    with acting_as(conn, "authenticated", user_id):
        return conn.execute(
            "select id from public.save_task_steps(%s, %s)", [task_id, json.dumps(steps)]
        ).fetchall()


def test_the_ui_can_ask_whether_multi_step_is_on_for_the_signed_in_user(
    conn: psycopg.Connection,
) -> None:
    inside, outside = make_user(conn), make_user(conn)
    leave_rollout(conn, outside)
    assert enabled_for_caller(conn, inside) is True
    assert enabled_for_caller(conn, outside) is False
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        acting_as(conn, "anon"),
    ):
        conn.execute("select public.multi_step_workflows_enabled()")


def test_outside_the_rollout_a_second_step_is_refused_and_nothing_written(
    conn: psycopg.Connection,
) -> None:
    user_id = make_user(conn)
    task_id = make_task(conn, user_id, make_agent(conn, user_id))
    leave_rollout(conn, user_id)
    before = live_steps(conn, task_id)

    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as refused:
        save(conn, user_id, task_id, TWO_STEPS)
    assert "can have only one step: multi-step workflows are not enabled" in str(refused.value)
    assert live_steps(conn, task_id) == before

    # Through the table, as a plain REST insert would do it.
    with (
        pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState),
        acting_as(conn, "authenticated", user_id),
    ):
        conn.execute(
            "insert into public.task_steps (task_id, step_name, instructions)"
            " values (%s, 'Extra', 'More work')",
            [task_id],
        )
    assert live_steps(conn, task_id) == before

    # One step is still a single-instruction task, which the user may edit.
    assert len(save(conn, user_id, task_id, TWO_STEPS[:1])) == 1


def test_inside_the_rollout_and_for_the_service_multi_step_tasks_are_saved(
    conn: psycopg.Connection,
) -> None:
    user_id = make_user(conn)
    task_id = make_task(conn, user_id, make_agent(conn, user_id))
    assert len(save(conn, user_id, task_id, TWO_STEPS)) == 2

    outside = make_user(conn)
    other_task = make_task(conn, outside, make_agent(conn, outside))
    leave_rollout(conn, outside)
    with as_service(conn):
        saved = conn.execute(
            "select id from public.save_task_steps(%s, %s)", [other_task, json.dumps(TWO_STEPS)]
        ).fetchall()
    assert len(saved) == 2


def test_a_run_in_flight_finishes_when_its_user_leaves_the_rollout(
    conn: psycopg.Connection,
) -> None:
    user_id, task_id, _ = make_workflow(conn, [{}, {}])
    run_id = start_run(conn, task_id)
    first = claim_one(conn)

    leave_rollout(conn, user_id)

    assert complete(conn, first, {"part": 1})
    assert complete(conn, claim_one(conn), {"part": 2})
    assert run_row(conn, run_id)["status"] == "completed"
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="not enabled"):
        start_run(conn, task_id)
