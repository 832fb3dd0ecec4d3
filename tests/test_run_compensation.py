"""Compensation: when a run stops, its completed steps that carry compensate_instructions
are undone, newest first, as step executions of their own (claimed, retried and timed out
like any step); the run then ends failed (or cancelled) with its compensation outcome."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.fixtures.task_world import attempt
from tests.run_engine_support import (
    claim,
    claim_one,
    complete,
    fail,
    make_due,
    make_workflow,
    run_row,
    start_run,
    step_rows,
)
from tests.support import acting_as

UNDOABLE = [
    {"step_name": f"Step {n}", "compensate_instructions": f"Undo part {n}"} for n in range(1, 5)
]


def failed_at_three(conn: psycopg.Connection, steps: list[dict] = UNDOABLE) -> tuple:
    """Steps 1 and 2 completed, step 3 failed for good: (owner, task, run)."""
    owner, task_id, _ = make_workflow(conn, steps)
    run_id = start_run(conn, task_id)
    assert complete(conn, claim_one(conn), {"made": "thing 1"})
    assert complete(conn, claim_one(conn), {"made": "thing 2"})
    assert fail(conn, claim_one(conn), "the agent refused", retryable=False) == "failed"
    return owner, task_id, run_id


def test_a_failure_at_step_3_of_4_undoes_steps_2_and_1_in_that_order(
    conn: psycopg.Connection,
) -> None:
    _, task_id, run_id = failed_at_three(conn)
    run = run_row(conn, run_id)
    # Still running: the compensations are to come. Why it stopped is already there.
    assert (run["status"], run["compensation"], run["outcome"]) == ("running", "running", None)
    assert run["error_message"] == "step 3 (Step 3) failed: the agent refused"
    rows = step_rows(conn, run_id)
    assert [(r["kind"], r["status"]) for r in rows] == [
        ("step", "completed"),
        ("step", "completed"),
        ("step", "failed"),
        ("step", "skipped"),
        ("compensation", "queued"),
        ("compensation", "pending"),
    ]
    assert [
        (r["step_order"], r["compensates_step_order"], r["instructions"]) for r in rows[4:]
    ] == [
        (5, 2, "Undo part 2"),
        (6, 1, "Undo part 1"),
    ]

    undo_2 = claim_one(conn)
    assert claim(conn) == []  # one at a time, like the steps
    assert (undo_2["step_order"], undo_2["instructions"]) == (5, "Undo part 2")
    assert undo_2["step_name"] == "Compensate: Step 2"
    context = undo_2["context"]
    assert context["context_data"]["compensation"] == {
        "step": {"order": 2, "name": "Step 2", "output": {"made": "thing 2"}},
        "reason": "step 3 (Step 3) failed: the agent refused",
    }
    assert context["mode"] == "full"
    assert [(s["order"], s["status"]) for s in context["steps"]] == [
        (1, "completed"),
        (2, "completed"),
        (3, "failed"),
        (4, "skipped"),
    ]
    assert context["steps"][2]["error"] == "the agent refused"
    assert undo_2["idempotency_key"] == f"{run_id}:5"

    assert complete(conn, undo_2, "removed thing 2")
    undo_1 = claim_one(conn)
    assert (undo_1["step_order"], undo_1["instructions"]) == (6, "Undo part 1")
    assert [s["order"] for s in undo_1["context"]["steps"]] == [1, 2, 3, 4, 5]
    assert complete(conn, undo_1, "removed thing 1")
    assert claim(conn) == []

    run = run_row(conn, run_id)
    assert (run["status"], run["outcome"], run["compensation"]) == (
        "failed",
        "failed",
        "completed",
    )
    assert run["metadata"]["outcome"] == "failed"
    assert run["metadata"]["compensation"] == "completed"
    assert run["error_message"] == "step 3 (Step 3) failed: the agent refused"
    # Compensations are not steps of the workflow: the counters and the output say so.
    assert (run["steps_completed"], run["steps_failed"], run["steps_skipped"]) == (2, 1, 1)
    assert run["output"] == '{"made": "thing 2"}'
    counters = conn.execute(
        "select total_executions, successful_executions, failed_executions"
        " from public.agent_tasks where id = %s",
        [task_id],
    ).fetchone()
    assert counters == (1, 0, 1)
    snapshot = conn.execute(
        "select step_order, status::text from public.task_steps"
        " where task_id = %s and deleted_at is null order by step_order",
        [task_id],
    ).fetchall()
    assert snapshot == [(1, "completed"), (2, "completed"), (3, "failed"), (4, "skipped")]


def test_only_completed_steps_with_compensate_instructions_are_undone(
    conn: psycopg.Connection,
) -> None:
    steps = [
        {"compensate_instructions": "Undo 1"},
        {},  # nothing to undo
        {"compensate_instructions": "Undo 3", "skip_if": "$.task"},  # skipped: never ran
        {"compensate_instructions": "Undo 4"},
        {"compensate_instructions": "Undo 5"},  # fails
    ]
    _, task_id, _ = make_workflow(conn, steps)
    run_id = start_run(conn, task_id)
    assert complete(conn, claim_one(conn), 1)
    assert complete(conn, claim_one(conn), 2)
    assert complete(conn, claim_one(conn), 4)  # step 3 was skipped on the way
    assert fail(conn, claim_one(conn), "broken", retryable=False) == "failed"
    rows = step_rows(conn, run_id)
    assert [r["status"] for r in rows[:5]] == [
        "completed",
        "completed",
        "skipped",
        "completed",
        "failed",
    ]
    assert [(r["step_order"], r["compensates_step_order"]) for r in rows[5:]] == [(6, 4), (7, 1)]


def test_a_run_with_nothing_to_undo_fails_at_once(conn: psycopg.Connection) -> None:
    _, _, run_id = failed_at_three(conn, [{}, {}, {}, {}])
    run = run_row(conn, run_id)
    assert (run["status"], run["outcome"], run["compensation"]) == ("failed", "failed", None)
    assert "compensation" not in run["metadata"]
    assert len(step_rows(conn, run_id)) == 4


def test_compensations_retry_and_one_failing_does_not_stop_the_others(
    conn: psycopg.Connection,
) -> None:
    steps = [dict(step) for step in UNDOABLE]
    steps[1] |= {"max_attempts": 2, "retry_backoff_seconds": 0, "timeout_seconds": 7}
    _, _, run_id = failed_at_three(conn, steps)
    undo_2 = claim_one(conn)
    assert undo_2["timeout_seconds"] == 7 and undo_2["attempt"] == 1
    assert fail(conn, undo_2, "busy") == "retrying"
    make_due(conn, run_id)
    again = claim_one(conn)
    assert (again["step_order"], again["attempt"]) == (5, 2)
    assert fail(conn, again, "still busy") == "failed"
    undo_1 = claim_one(conn)
    assert undo_1["step_order"] == 6
    assert complete(conn, undo_1, "undone")
    run = run_row(conn, run_id)
    assert (run["status"], run["compensation"]) == ("failed", "failed")
    assert [r["status"] for r in step_rows(conn, run_id)[4:]] == ["failed", "completed"]


def test_a_lost_lease_on_a_compensation_is_retried_like_any_step(
    conn: psycopg.Connection,
) -> None:
    failed_at_three(conn)
    undo_2 = claim_one(conn)
    conn.execute(
        "update public.task_step_executions set lease_expires_at = now() - interval '1 s'"
        " where id = %s",
        [undo_2["step_execution_id"]],
    )
    with acting_as(conn, "service_role") as c:
        assert c.execute("select stepsync.reap_expired_leases(0)").fetchone() == (1,)
    again = claim_one(conn)
    assert (again["step_execution_id"], again["attempt"]) == (undo_2["step_execution_id"], 1)


# --- cancelling ---------------------------------------------------------------------------


def cancel(conn, user_id, run_id, compensate: bool | None = None) -> bool:
    with acting_as(conn, "authenticated", user_id) as c:
        if compensate is None:
            return c.execute("select public.cancel_task_run(%s)", [run_id]).fetchone()[0]
        return c.execute(
            "select public.cancel_task_run(p_run_id => %s, p_compensate => %s)",
            [run_id, compensate],
        ).fetchone()[0]


def test_a_cancel_can_ask_for_compensation(conn: psycopg.Connection, db_url: str) -> None:
    owner, task_id, _ = make_workflow(conn, UNDOABLE)
    run_id = start_run(conn, task_id)
    assert complete(conn, claim_one(conn), 1)
    assert complete(conn, claim_one(conn), 2)
    running = claim_one(conn)
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen stepsync_run_changed")
        assert cancel(conn, owner, run_id, compensate=True) is True
        notes = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    # The step that was running is cancelled (its worker's result will be refused) and
    # its worker is told at once, though the run goes on compensating.
    assert '"cancelling" : true' in notes[0] and '"status" : "running"' in notes[0]
    assert not complete(conn, running, 3)
    rows = step_rows(conn, run_id)
    assert [r["status"] for r in rows] == [
        "completed",
        "completed",
        "cancelled",
        "cancelled",
        "queued",
        "pending",
    ]
    assert cancel(conn, owner, run_id, compensate=True) is False  # already under way
    undo_2 = claim_one(conn)
    assert undo_2["context"]["context_data"]["compensation"]["reason"] == "run cancelled"
    assert complete(conn, undo_2, "undone")
    assert complete(conn, claim_one(conn), "undone")
    run = run_row(conn, run_id)
    assert (run["status"], run["outcome"], run["compensation"]) == (
        "cancelled",
        "cancelled",
        "completed",
    )
    assert run["cancelled_by"] == owner


def test_a_plain_cancel_stops_a_compensation(conn: psycopg.Connection) -> None:
    owner, _, run_id = failed_at_three(conn)
    claim_one(conn)  # undo of step 2, running
    assert cancel(conn, owner, run_id) is True
    run = run_row(conn, run_id)
    assert (run["status"], run["outcome"], run["compensation"]) == (
        "cancelled",
        "cancelled",
        "cancelled",
    )
    assert [r["status"] for r in step_rows(conn, run_id)[4:]] == ["cancelled", "cancelled"]


def test_cancel_keeps_its_one_argument_call_and_refuses_strangers(
    conn: psycopg.Connection,
) -> None:
    """PostgREST calls by name: p_run_id alone must resolve to one function, without
    compensation, as before."""
    owner, task_id, _ = make_workflow(conn, UNDOABLE)
    run_id = start_run(conn, task_id)
    assert complete(conn, claim_one(conn), 1)
    overloads = conn.execute(
        "select count(*) from pg_proc where proname = 'cancel_task_run'"
        " and pronamespace = 'public'::regnamespace"
    ).fetchone()
    assert overloads == (1,)
    with (
        pytest.raises(psycopg.errors.NoDataFound, match="not found"),
        acting_as(conn, "authenticated", uuid.uuid4()) as c,
    ):
        c.execute("select public.cancel_task_run(p_run_id => %s)", [run_id])
    with acting_as(conn, "authenticated", owner) as c:
        assert c.execute("select public.cancel_task_run(p_run_id => %s)", [run_id]).fetchone()[0]
    run = run_row(conn, run_id)
    assert (run["status"], run["compensation"]) == ("cancelled", None)
    assert len(step_rows(conn, run_id)) == 4


def test_compensated_steps_are_not_reused_by_a_resume(conn: psycopg.Connection) -> None:
    steps = [{}, {"compensate_instructions": "Undo 2"}, {}, {}]
    owner, _, run_id = failed_at_three(conn, steps)
    assert complete(conn, claim_one(conn), "undone")
    with (
        pytest.raises(psycopg.errors.InvalidParameterValue, match=r"step 2 .* was compensated"),
        acting_as(conn, "authenticated", owner) as c,
    ):
        c.execute("select public.resume_task_run(%s, 3)", [run_id])
    with acting_as(conn, "authenticated", owner) as c:
        new_run = c.execute("select public.resume_task_run(%s)", [run_id]).fetchone()[0]
    assert [r["status"] for r in step_rows(conn, new_run)] == [
        "completed",
        "queued",
        "pending",
        "pending",
    ]


def test_compensate_instructions_are_saved_and_snapshotted(conn: psycopg.Connection) -> None:
    owner, task_id, (first, _) = make_workflow(conn, [{}, {}])
    with acting_as(conn, "authenticated", owner) as c:
        saved = c.execute(
            "select compensate_instructions from public.save_task_steps(%s, %s::jsonb)",
            [
                task_id,
                f'[{{"id": "{first}", "compensate_instructions": "Delete the draft"}},'
                ' {"instructions": "Send", "compensate_instructions": "  "}]',
            ],
        ).fetchall()
    with (
        pytest.raises(psycopg.errors.InvalidParameterValue, match="must be a string"),
        acting_as(conn, "authenticated", owner) as c,
    ):
        c.execute(
            "select public.save_task_steps(%s, %s::jsonb)",
            [task_id, '[{"instructions": "x", "compensate_instructions": 1}]'],
        )
    assert saved == [("Delete the draft",), (None,)]  # blank means none
    run_id = start_run(conn, task_id)
    assert [r["compensate_instructions"] for r in step_rows(conn, run_id)] == [
        "Delete the draft",
        None,
    ]


@pytest.mark.parametrize(
    ("role", "expected"),
    [("anon", "42501"), ("other", "P0002"), ("owner", "ok"), ("service_role", "ok")],
)
def test_who_may_cancel_with_compensation(conn: psycopg.Connection, role: str, expected: str):
    owner, task_id, _ = make_workflow(conn, UNDOABLE)
    run_id = start_run(conn, task_id)
    assert complete(conn, claim_one(conn), 1)
    before = step_rows(conn, run_id)
    api_role, user_id = {
        "anon": ("anon", None),
        "other": ("authenticated", uuid.uuid4()),
        "owner": ("authenticated", owner),
        "service_role": ("service_role", None),
    }[role]
    outcome = attempt(
        conn,
        api_role,
        user_id,
        "select public.cancel_task_run(%s, p_compensate => true)",
        [run_id],
        effect=lambda c: [
            r[0]
            for r in c.execute(
                "select kind::text from public.task_step_executions"
                " where run_id = %s order by step_order",
                [run_id],
            ).fetchall()
        ],
    )
    if expected == "ok":
        assert outcome == ("ok", ([(True,)], ["step"] * 4 + ["compensation"]))
    else:
        assert outcome == ("error", expected)
    assert step_rows(conn, run_id) == before  # attempt() rolls back
