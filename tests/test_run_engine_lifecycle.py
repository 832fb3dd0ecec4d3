"""The step state machine: completion, failure, retries, skips, leases, cancellation."""

from __future__ import annotations

import json
from datetime import timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.run_engine_support import (
    claim,
    claim_one,
    complete,
    fail,
    make_due,
    make_workflow,
    run_row,
    start_run,
    statuses,
    step_rows,
)
from tests.support import acting_as, as_service, make_agent, make_task, make_user, replace_steps


def task_counters(conn: psycopg.Connection, task_id) -> tuple:
    return conn.execute(
        "select total_executions, successful_executions, failed_executions,"
        " last_run_at is not null from public.agent_tasks where id = %s",
        [task_id],
    ).fetchone()


def test_a_run_completes_step_by_step_and_updates_the_task(conn: psycopg.Connection) -> None:
    _, task_id, step_ids = make_workflow(conn, [{}, {}, {}])
    run_id = start_run(conn, task_id)
    assert statuses(conn, run_id) == ["queued", "pending", "pending"]
    run = run_row(conn, run_id)
    assert (run["status"], run["step_count"]) == ("running", 3)
    assert run["instructions_used"] == (
        "Step 1: Step 1\nDo part 1\n\nStep 2: Step 2\nDo part 2\n\nStep 3: Step 3\nDo part 3"
    )

    for order in (1, 2, 3):
        step = claim_one(conn)
        assert (step["step_order"], step["attempt"]) == (order, 1)
        assert step["idempotency_key"] == f"{run_id}:{order}"
        assert claim(conn) == [], "the next step waits for this one"
        assert complete(conn, step, {"n": order})

    run = run_row(conn, run_id)
    assert run["status"] == "completed"
    assert run["output"] == '{"n": 3}'
    assert (run["steps_completed"], run["steps_failed"], run["steps_skipped"]) == (3, 0, 0)
    assert run["completed_at"] is not None and run["duration_ms"] >= 0
    assert all(row["duration_ms"] >= 0 for row in step_rows(conn, run_id))
    assert task_counters(conn, task_id) == (1, 1, 0, True)
    # The definition carries the latest run's snapshot.
    snapshots = conn.execute(
        "select status::text, execution_result from public.task_steps"
        " where id = any(%s) order by step_order",
        [step_ids],
    ).fetchall()
    assert [s[0] for s in snapshots] == ["completed"] * 3
    assert [s[1]["output"] for s in snapshots] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert {s[1]["run_id"] for s in snapshots} == {str(run_id)}


def test_a_string_output_becomes_the_run_output_verbatim(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(conn, [{}])
    run_id = start_run(conn, task_id)
    assert complete(conn, claim_one(conn), "All done.")
    assert run_row(conn, run_id)["output"] == "All done."


def test_a_failure_stops_the_run_and_skips_the_rest(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(conn, [{}, {"step_name": "Fetch"}, {}, {}])
    run_id = start_run(conn, task_id)
    assert complete(conn, claim_one(conn), {"ok": True})
    assert fail(conn, claim_one(conn), "HTTP 500 from upstream") == "failed"

    assert statuses(conn, run_id) == ["completed", "failed", "skipped", "skipped"]
    rows = step_rows(conn, run_id)
    assert rows[1]["error_message"] == "HTTP 500 from upstream"
    assert rows[2]["skip_reason"] == "run stopped: step 2 failed"
    run = run_row(conn, run_id)
    assert run["status"] == "failed"
    assert run["error_message"] == "step 2 (Fetch) failed: HTTP 500 from upstream"
    assert (run["steps_completed"], run["steps_failed"], run["steps_skipped"]) == (1, 1, 2)
    assert task_counters(conn, task_id) == (1, 0, 1, True)
    assert claim(conn) == []


def test_a_continue_step_lets_the_run_go_on(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(
        conn,
        [{}, {"on_failure": "continue"}, {"include_previous_context": True}],
    )
    run_id = start_run(conn, task_id)
    assert complete(conn, claim_one(conn), 1)
    assert fail(conn, claim_one(conn), "not found") == "failed"
    step = claim_one(conn)
    assert step["step_order"] == 3
    assert step["context"]["previous"] == {
        "order": 2,
        "name": "Step 2",
        "status": "failed",
        "output": None,
        "error": "not found",
    }
    assert complete(conn, step, 3)
    assert statuses(conn, run_id) == ["completed", "failed", "completed"]
    assert run_row(conn, run_id)["status"] == "completed"
    assert task_counters(conn, task_id) == (1, 1, 0, True)


def retry_delay(conn: psycopg.Connection, run_id) -> timedelta:
    row = step_rows(conn, run_id)[0]
    assert row["status"] == "queued"
    return row["run_after"] - row["last_error_at"]


def test_retries_back_off_exponentially_with_jitter_then_succeed(
    conn: psycopg.Connection,
) -> None:
    _, task_id, _ = make_workflow(
        conn, [{"max_attempts": 4, "retry_backoff_seconds": 10, "retry_backoff_max_seconds": 30}]
    )
    run_id = start_run(conn, task_id)
    delays = []
    for attempt, base in ((1, 10), (2, 20), (3, 30)):  # 10·2^(n-1), capped at 30
        step = claim_one(conn)
        assert step["attempt"] == attempt
        assert fail(conn, step, f"timeout {attempt}") == "retrying"
        delay = retry_delay(conn, run_id)
        assert timedelta(seconds=base) <= delay <= timedelta(seconds=base * 1.2)
        delays.append(delay)
        assert claim(conn) == [], "not due before its backoff"
        make_due(conn, run_id)
    assert delays[0] < delays[1] < delays[2]

    step = claim_one(conn)
    assert step["attempt"] == 4
    assert complete(conn, step, {"finally": True})
    row = step_rows(conn, run_id)[0]
    assert (row["status"], row["attempt"], row["error_message"]) == ("completed", 4, None)
    assert run_row(conn, run_id)["status"] == "completed"


def test_jitter_varies_between_retries(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(conn, [{"max_attempts": 2, "retry_backoff_seconds": 100}] * 1)
    delays = set()
    for _ in range(8):
        run_id = start_run(conn, task_id)
        assert fail(conn, claim_one(conn), "boom") == "retrying"
        delays.add(retry_delay(conn, run_id))
        with as_service(conn):
            conn.execute("select public.cancel_task_run(%s)", [run_id])
    assert len(delays) > 1
    assert all(timedelta(seconds=100) <= d <= timedelta(seconds=120) for d in delays)


def test_retries_exhausted_fail_the_step(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(conn, [{"max_attempts": 2, "retry_backoff_seconds": 0}, {}])
    run_id = start_run(conn, task_id)
    assert fail(conn, claim_one(conn), "first") == "retrying"
    step = claim_one(conn)  # a zero backoff is due at once
    assert step["attempt"] == 2
    assert fail(conn, step, "second") == "failed"
    assert statuses(conn, run_id) == ["failed", "skipped"]
    assert step_rows(conn, run_id)[0]["error_message"] == "second"
    assert run_row(conn, run_id)["status"] == "failed"


def test_a_non_retryable_error_fails_at_once(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(conn, [{"max_attempts": 5}])
    run_id = start_run(conn, task_id)
    assert fail(conn, claim_one(conn), "HTTP 400", retryable=False) == "failed"
    assert step_rows(conn, run_id)[0]["attempt"] == 1
    assert run_row(conn, run_id)["status"] == "failed"


def test_skip_if_skips_a_step_and_queues_the_next(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(
        conn,
        [
            {},
            {"skip_if": "$.steps[0].output.spam == true"},
            {"skip_if": '$.previous ? (@.status == "skipped")'},
            {"skip_if": "$.steps[0].output.missing"},
            {"skip_if": '$.run.trigger_data.mode == "dry"'},
        ],
    )
    run_id = start_run(conn, task_id, trigger_data={"mode": "dry"})
    assert complete(conn, claim_one(conn), {"spam": True})
    step = claim_one(conn)
    assert step["step_order"] == 4, "steps 2 and 3 are skipped, step 4's path selects nothing"
    assert statuses(conn, run_id) == ["completed", "skipped", "skipped", "running", "pending"]
    assert step_rows(conn, run_id)[1]["skip_reason"].startswith("skip_if matched: ")
    assert complete(conn, step, {})
    # The last step is skipped too, which completes the run.
    assert statuses(conn, run_id)[-1] == "skipped"
    run = run_row(conn, run_id)
    assert (run["status"], run["steps_completed"], run["steps_skipped"]) == ("completed", 2, 3)


def test_skip_if_on_the_first_step(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(conn, [{"skip_if": '$.run.trigger_type == "scheduled"'}, {}])
    run_id = start_run(conn, task_id, trigger_type="scheduled")
    assert statuses(conn, run_id) == ["skipped", "queued"]


def expire_leases(conn: psycopg.Connection, run_id) -> None:
    """Stand in for the passing of time: the run's leases lapse."""
    conn.execute(
        "update public.task_step_executions set lease_expires_at = now() - interval '1 second'"
        " where run_id = %s and status = 'running'",
        [run_id],
    )


def reap(conn: psycopg.Connection) -> int:
    with as_service(conn):
        return conn.execute("select stepsync.reap_expired_leases()").fetchone()[0]


def test_an_expired_lease_is_reaped_and_the_stale_token_rejected(
    conn: psycopg.Connection,
) -> None:
    _, task_id, _ = make_workflow(conn, [{"max_attempts": 3}, {}])
    run_id = start_run(conn, task_id)
    stale = claim_one(conn, worker="crashed")
    assert reap(conn) == 0, "a live lease is left alone"
    expire_leases(conn, run_id)
    assert reap(conn) == 1
    row = step_rows(conn, run_id)[0]
    # A lost lease is not the step's failure: its attempt is given back.
    assert (row["status"], row["attempt"], row["lost_leases"], row["lease_owner"]) == (
        "queued",
        0,
        1,
        None,
    )
    assert row["error_message"] == "lease of worker crashed expired"
    assert row["run_after"] <= conn.execute("select now()").fetchone()[0]

    fresh = claim_one(conn, worker="healthy")
    assert fresh["lease_token"] > stale["lease_token"]
    assert fresh["attempt"] == 1
    assert complete(conn, stale, {"late": True}) is False
    assert fail(conn, stale, "late failure") == "stale"
    with as_service(conn):
        held = conn.execute(
            "select * from stepsync.heartbeat_steps('crashed', %s, %s, 60)",
            [[stale["step_execution_id"]], [stale["lease_token"]]],
        ).fetchall()
    assert held == []
    assert complete(conn, fresh, {"on time": True})
    rows = step_rows(conn, run_id)
    assert rows[0]["output"] == {"on time": True}
    assert [r["status"] for r in rows] == ["completed", "queued"]


def test_lost_leases_use_no_attempt_up_to_max_lost_leases(conn: psycopg.Connection) -> None:
    # One attempt only, and three lost leases allowed (the default): three workers die
    # mid-step and the fourth completes it.
    _, task_id, _ = make_workflow(conn, [{}])
    run_id = start_run(conn, task_id)
    for _ in range(3):
        claim_one(conn, worker="doomed")
        expire_leases(conn, run_id)
        assert reap(conn) == 1
    row = step_rows(conn, run_id)[0]
    assert (row["status"], row["attempt"], row["lost_leases"]) == ("queued", 0, 3)
    survivor = claim_one(conn, worker="survivor")
    assert survivor["attempt"] == 1
    assert complete(conn, survivor, {"done": True})
    assert run_row(conn, run_id)["status"] == "completed"


def test_a_step_that_loses_its_lease_too_often_fails_per_on_failure(
    conn: psycopg.Connection,
) -> None:
    _, task_id, _ = make_workflow(
        conn, [{"on_failure": "continue", "max_lost_leases": 1, "max_attempts": 5}, {}]
    )
    run_id = start_run(conn, task_id)
    for expected in ("queued", "failed"):
        claim_one(conn, worker="doomed")
        expire_leases(conn, run_id)
        assert reap(conn) == 1
        assert step_rows(conn, run_id)[0]["status"] == expected
    failed = step_rows(conn, run_id)[0]
    assert failed["lost_leases"] == 2
    assert failed["error_message"] == (
        "lease lost 2 times, more than max_lost_leases (1) allows: the worker running the"
        " step stopped or lost the database each time (last: lease of worker doomed expired)"
    )
    assert statuses(conn, run_id) == ["failed", "queued"]


def test_nothing_is_reaped_within_the_grace_after_the_database_started(
    conn: psycopg.Connection,
) -> None:
    _, task_id, _ = make_workflow(conn, [{}])
    run_id = start_run(conn, task_id)
    claim_one(conn, worker="cut-off")
    expire_leases(conn, run_id)
    with as_service(conn):
        # A grace longer than the server has been up: its owner may still report.
        assert conn.execute("select stepsync.reap_expired_leases(86400 * 365)").fetchone()[0] == 0
    assert statuses(conn, run_id) == ["running"]
    assert reap(conn) == 1


def test_heartbeat_extends_only_held_leases(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(conn, [{}])
    run_id = start_run(conn, task_id)
    step = claim_one(conn, lease=5)
    before = step_rows(conn, run_id)[0]["lease_expires_at"]
    with as_service(conn):
        held = conn.execute(
            "select * from stepsync.heartbeat_steps(%s, %s, %s, 600)",
            ["worker-1", [step["step_execution_id"]] * 2, [step["lease_token"], 0]],
        ).fetchall()
    assert held == [(step["step_execution_id"],)]
    assert step_rows(conn, run_id)[0]["lease_expires_at"] - before > timedelta(seconds=500)
    with as_service(conn), pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute(
            "select * from stepsync.heartbeat_steps('w', %s, %s, 60)",
            [[step["step_execution_id"]], []],
        )


def test_release_hands_steps_back_without_using_an_attempt(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(conn, [{"max_attempts": 1}])
    run_id = start_run(conn, task_id)
    step = claim_one(conn)
    with as_service(conn):
        released = conn.execute(
            "select stepsync.release_steps('other-worker', %s, %s)",
            [[step["step_execution_id"]], [step["lease_token"]]],
        ).fetchone()[0]
        assert released == 0, "only the lease holder can release"
        released = conn.execute(
            "select stepsync.release_steps('worker-1', %s, %s)",
            [[step["step_execution_id"]], [step["lease_token"]]],
        ).fetchone()[0]
    assert released == 1
    row = step_rows(conn, run_id)[0]
    assert (row["status"], row["attempt"]) == ("queued", 0)
    again = claim_one(conn)
    assert again["attempt"] == 1
    assert complete(conn, step, {}) is False
    assert complete(conn, again, {})


def test_cancel_while_running_rejects_the_workers_late_result(
    conn: psycopg.Connection,
) -> None:
    user_id, task_id, _ = make_workflow(conn, [{}, {}])
    run_id = start_run(conn, task_id)
    step = claim_one(conn)
    with acting_as(conn, "authenticated", user_id):
        assert conn.execute("select public.cancel_task_run(%s)", [run_id]).fetchone()[0]
    assert statuses(conn, run_id) == ["cancelled", "cancelled"]
    run = run_row(conn, run_id)
    assert (run["status"], run["cancelled_by"]) == ("cancelled", user_id)
    assert run["cancelled_at"] is not None
    assert complete(conn, step, {"late": True}) is False
    assert fail(conn, step, "late") == "stale"
    assert step_rows(conn, run_id)[0]["output"] is None
    assert claim(conn) == []
    assert task_counters(conn, task_id) == (0, 0, 0, False), "a cancelled run is not counted"
    with as_service(conn):
        assert conn.execute("select public.cancel_task_run(%s)", [run_id]).fetchone()[0] is False


def test_edits_during_a_run_do_not_affect_it(conn: psycopg.Connection) -> None:
    _, task_id, step_ids = make_workflow(
        conn, [{"instructions": "original 1"}, {"instructions": "original 2", "max_attempts": 1}]
    )
    run_id = start_run(conn, task_id)
    conn.execute(
        "update public.task_steps set instructions = 'edited', max_attempts = 5,"
        " step_name = 'Renamed' where id = any(%s)",
        [step_ids],
    )
    conn.execute(
        "insert into public.task_steps (task_id, step_order, step_name, instructions)"
        " values (%s, 3, 'Added', 'new step')",
        [task_id],
    )
    conn.execute("update public.agent_tasks set name = 'Renamed task' where id = %s", [task_id])
    step = claim_one(conn)
    assert (step["instructions"], step["step_name"]) == ("original 1", "Step 1")
    assert complete(conn, step, {})
    step = claim_one(conn)
    assert step["instructions"] == "original 2"
    assert step["context"]["task"]["name"] != "Renamed task"
    assert fail(conn, step, "boom") == "failed", "the snapshot's max_attempts (1) applies"
    assert len(step_rows(conn, run_id)) == 2


def test_a_task_without_steps_runs_its_instructions_as_one_step(
    conn: psycopg.Connection,
) -> None:
    user_id = make_user(conn)
    task_id = make_task(
        conn, user_id, make_agent(conn, user_id), name="Legacy", instructions="Summarise mail"
    )
    replace_steps(conn, task_id, [])
    run_id = start_run(conn, task_id)
    rows = step_rows(conn, run_id)
    assert [(r["step_order"], r["step_name"], r["instructions"], r["step_id"]) for r in rows] == [
        (1, "Legacy", "Summarise mail", None)
    ]
    assert run_row(conn, run_id)["instructions_used"] == "Summarise mail"
    assert complete(conn, claim_one(conn), "Summary")
    assert run_row(conn, run_id)["status"] == "completed"


def test_start_refuses_when_the_flag_is_off_for_the_owner(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(conn, [{}])
    conn.execute(
        "update stepsync.feature_flags set rollout_percent = 0 where name = 'multi_step_workflows'"
    )
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="not enabled"):
        start_run(conn, task_id)
    assert conn.execute("select count(*) from public.agent_task_executions").fetchone()[0] == 0


def test_start_refuses_bad_arguments(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(conn, [{}])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="trigger type"):
        start_run(conn, task_id, trigger_type="cron")
    with as_service(conn), pytest.raises(psycopg.errors.InvalidParameterValue, match="object"):
        conn.execute("select public.start_task_run(%s, 'manual', %s)", [task_id, Jsonb([1])])
    with pytest.raises(psycopg.errors.NoDataFound, match="not found"):
        start_run(conn, "00000000-0000-0000-0000-000000000000")


def test_queue_depth_counts_due_steps(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(conn, [{"max_attempts": 2, "retry_backoff_seconds": 60}])
    run_ids = [start_run(conn, task_id) for _ in range(3)]

    def depth() -> int:
        with as_service(conn):
            return conn.execute("select stepsync.queue_depth()").fetchone()[0]

    assert depth() == 3
    step = claim_one(conn, batch=1)
    assert depth() == 2
    assert fail(conn, step, "later") == "retrying"
    assert depth() == 2, "a delayed retry is not due yet"
    make_due(conn, step["run_id"])
    assert depth() == 3
    assert len(run_ids) == 3


def test_start_refuses_invalid_steps_and_names_the_problems(conn: psycopg.Connection) -> None:
    user_id = make_user(conn)
    agent_id = make_agent(conn, user_id)
    idle_agent = make_agent(conn, user_id, name="Idle")
    conn.execute("update public.agents set active = false where id = %s", [idle_agent])
    task_id = make_task(conn, user_id, agent_id)
    replace_steps(conn, task_id, [{"agent_id": idle_agent}, {"step_order": 3}])

    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        start_run(conn, task_id)
    diagnostic = refused.value.diag
    assert diagnostic.message_primary == (
        f"task {task_id} has invalid steps: step 1: agent {idle_agent} is not active;"
        " step 3: step at position 3 should be at 2: positions run 1..2 without gaps"
    )
    problems = json.loads(diagnostic.message_detail)
    assert [(p["code"], p["step_order"]) for p in problems] == [
        ("inactive_agent", 1),
        ("step_order_gap", 3),
    ]
    assert conn.execute("select count(*) from public.agent_task_executions").fetchone()[0] == 0
    assert conn.execute("select count(*) from public.task_step_executions").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("", 1, 30), "worker name"),
        (("w", 0, 30), "batch size"),
        (("w", 1001, 30), "batch size"),
        (("w", 1, 0), "lease"),
    ],
)
def test_claim_refuses_bad_arguments(conn: psycopg.Connection, arguments, message) -> None:
    with as_service(conn), pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        conn.execute("select * from stepsync.claim_steps(%s, %s, %s)", list(arguments))


def test_an_older_run_does_not_overwrite_the_newer_runs_snapshot(
    conn: psycopg.Connection,
) -> None:
    _, task_id, step_ids = make_workflow(conn, [{}])
    older = start_run(conn, task_id)
    older_step = claim_one(conn)
    conn.execute(
        "update public.agent_task_executions set created_at = created_at - interval '1 minute'"
        " where id = %s",
        [older],
    )
    newer = start_run(conn, task_id)
    newer_step = claim_one(conn)
    assert complete(conn, newer_step, "new")
    assert complete(conn, older_step, "old")
    assert {older_step["run_id"], newer_step["run_id"]} == {older, newer}
    assert conn.execute(
        "select status::text, execution_result ->> 'output', execution_result ->> 'run_id'"
        " from public.task_steps where id = %s",
        [step_ids[0]],
    ).fetchone() == ("completed", "new", str(newer))


def test_a_lapsed_lease_renewed_before_the_reaper_runs_is_kept(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(conn, [{"max_attempts": 3}])
    run_id = start_run(conn, task_id)
    step = claim_one(conn)
    expire_leases(conn, run_id)
    with as_service(conn):
        held = conn.execute(
            "select * from stepsync.heartbeat_steps('worker-1', %s, %s, 60)",
            [[step["step_execution_id"]], [step["lease_token"]]],
        ).fetchall()
    assert held == [(step["step_execution_id"],)]
    assert reap(conn) == 0
    assert complete(conn, step, {"kept": True})
    assert step_rows(conn, run_id)[0]["attempt"] == 1


def complete_many(
    conn: psycopg.Connection, results: list[tuple[dict, object]], worker: str | None = None
) -> list[tuple]:
    """complete_steps; with ``worker``, next steps are handed to it (third column)."""
    with as_service(conn):
        return conn.execute(
            "select step_execution_id, completed, to_jsonb(next_step)"
            " from stepsync.complete_steps(%s::uuid[], %s::bigint[], %s::jsonb[], %s, 60)",
            [
                [step["step_execution_id"] for step, _ in results],
                [step["lease_token"] for step, _ in results],
                [Jsonb(output) for _, output in results],
                worker,
            ],
        ).fetchall()


def test_complete_steps_records_a_batch_and_moves_each_run_on(conn: psycopg.Connection) -> None:
    _, two_steps, _ = make_workflow(conn, [{}, {}])
    _, one_step, _ = make_workflow(conn, [{}])
    _, skipping, _ = make_workflow(conn, [{}, {"skip_if": "$.previous.output.skip"}, {}])
    runs = [start_run(conn, task_id) for task_id in (two_steps, one_step, skipping)]
    claimed = {row["run_id"]: row for row in claim(conn)}
    stale = {**claimed[runs[0]], "lease_token": claimed[runs[0]]["lease_token"] + 1000}

    answer = complete_many(
        conn,
        [
            (claimed[runs[0]], {"n": 1}),
            (stale, {"n": "stale"}),
            (claimed[runs[1]], "done"),
            (claimed[runs[2]], {"skip": True}),
        ],
    )

    ids = [claimed[runs[0]]["step_execution_id"]] * 2 + [
        claimed[runs[1]]["step_execution_id"],
        claimed[runs[2]]["step_execution_id"],
    ]
    # One answer per given step and token, in the given order.
    assert [row[0] for row in answer] == ids
    assert [row[1] for row in answer] == [True, False, True, True]
    assert statuses(conn, runs[0]) == ["completed", "queued"]
    assert step_rows(conn, runs[0])[0]["output"] == {"n": 1}, "the stale twin changed nothing"
    assert (run_row(conn, runs[1])["status"], run_row(conn, runs[1])["output"]) == (
        "completed",
        "done",
    )
    assert statuses(conn, runs[2]) == ["completed", "skipped", "queued"]


def test_complete_steps_finishes_the_runs_it_ends_together(conn: psycopg.Connection) -> None:
    _, twice, (twice_step,) = make_workflow(conn, [{}])
    _, once, (once_step,) = make_workflow(conn, [{}])
    older = start_run(conn, twice)
    conn.execute(
        "update public.agent_task_executions set created_at = created_at - interval '1 minute'"
        " where id = %s",
        [older],
    )
    newer, other = start_run(conn, twice), start_run(conn, once)
    claimed = {row["run_id"]: row for row in claim(conn)}
    audited_before = conn.execute("select max(id) from public.audit_log").fetchone()[0]

    answer = complete_many(
        conn, [(claimed[older], "old"), (claimed[newer], {"n": 2}), (claimed[other], "x")]
    )

    assert [row[1] for row in answer] == [True, True, True]
    assert [run_row(conn, run)["output"] for run in (older, newer, other)] == [
        "old",
        '{"n": 2}',
        "x",
    ]
    assert {run_row(conn, run)["status"] for run in (older, newer, other)} == {"completed"}
    # Two runs of one task in one batch count twice.
    assert task_counters(conn, twice) == (2, 2, 0, True)
    assert task_counters(conn, once) == (1, 1, 0, True)
    # The definition takes the newer run's result, however the batch was ordered.
    assert conn.execute(
        "select execution_result ->> 'run_id' from public.task_steps where id = %s",
        [twice_step],
    ).fetchone() == (str(newer),)
    # Finished together, audited row by row: each task's counters, each definition's
    # snapshot.
    audited = conn.execute(
        "select table_name, record_id from public.audit_log"
        " where id > %s and operation = 'UPDATE' order by table_name, record_id",
        [audited_before],
    ).fetchall()
    assert sorted(audited) == sorted(
        [("agent_tasks", twice), ("agent_tasks", once)]
        + [("task_steps", twice_step), ("task_steps", once_step)]
    )
    # Finishing them again changes nothing.
    with as_service(conn):
        conn.execute("select stepsync.finish_runs(%s, 'failed', 'late')", [[older, newer, other]])
    assert task_counters(conn, twice) == (2, 2, 0, True)
    assert run_row(conn, newer)["status"] == "completed"


def test_complete_steps_answers_false_for_stale_tokens_only(conn: psycopg.Connection) -> None:
    _, first_task, _ = make_workflow(conn, [{}])
    _, second_task, _ = make_workflow(conn, [{}])
    runs = [start_run(conn, task_id) for task_id in (first_task, second_task)]
    claimed = {row["run_id"]: row for row in claim(conn)}
    stale = {**claimed[runs[1]], "lease_token": claimed[runs[1]]["lease_token"] + 1000}

    answer = complete_many(conn, [(claimed[runs[0]], {"ok": 1}), (stale, {"ok": 2})])

    assert [row[1] for row in answer] == [True, False]
    assert run_row(conn, runs[0])["status"] == "completed"
    assert statuses(conn, runs[1]) == ["running"]


def test_complete_steps_refuses_arrays_of_different_lengths(conn: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="same length"), as_service(conn):
        conn.execute("select * from stepsync.complete_steps(array[gen_random_uuid()], '{}', '{}')")


def test_complete_steps_hands_each_runs_next_step_to_the_worker(conn: psycopg.Connection) -> None:
    previous = {"include_previous_context": True, "context_mode": "previous"}
    _, three_steps, _ = make_workflow(conn, [{}, previous, {}])
    _, skipping, _ = make_workflow(conn, [{}, {"skip_if": "$.previous.output.skip"}, {}])
    _, one_step, _ = make_workflow(conn, [{}])
    runs = [start_run(conn, task_id) for task_id in (three_steps, skipping, one_step)]
    claimed = {row["run_id"]: row for row in claim(conn)}

    answer = complete_many(
        conn,
        [(claimed[runs[0]], {"n": 1}), (claimed[runs[1]], {"skip": True}), (claimed[runs[2]], 1)],
        worker="worker-1",
    )

    assert [row[1] for row in answer] == [True, True, True]
    handed = answer[0][2]
    second = step_rows(conn, runs[0])[1]
    assert (handed["step_execution_id"], handed["step_order"]) == (str(second["id"]), 2)
    assert handed["lease_token"] == second["lease_token"]
    assert handed["context"]["previous"]["output"] == {"n": 1}
    assert (second["status"], second["lease_owner"], second["attempt"]) == (
        "running",
        "worker-1",
        1,
    )
    assert second["queued_at"] is not None and second["started_at"] is not None
    assert statuses(conn, runs[0]) == ["completed", "running", "pending"]
    # A next step with a skip_if goes the usual way (here: skipped, and the one after
    # queued for any worker); a finished run has nothing to hand off.
    assert answer[1][2] is None and statuses(conn, runs[1]) == ["completed", "skipped", "queued"]
    assert answer[2][2] is None and run_row(conn, runs[2])["status"] == "completed"
    # The handed-off lease is an ordinary one: its token completes the step.
    assert complete(
        conn, {"step_execution_id": second["id"], "lease_token": second["lease_token"]}, 2
    )
    assert statuses(conn, runs[0]) == ["completed", "completed", "queued"]


def test_complete_steps_refuses_a_blank_worker_to_hand_off_to(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(conn, [{}, {}])
    start_run(conn, task_id)
    step = claim_one(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="worker name"):
        complete_many(conn, [(step, {})], worker=" ")
    assert statuses(conn, step["run_id"]) == ["running", "pending"], "nothing was written"
