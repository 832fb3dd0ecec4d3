"""Crashes, races and shutdown with real ``stepsync serve`` processes on real PostgreSQL.

Worker processes run ``tests.workers:scripted_step``, which logs every execution to
``test_step_log``; a trigger logs every committed completion to ``test_completion_log``.
Leases are 2 s so that a dead worker's step is taken over quickly.
"""

from __future__ import annotations

import signal
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.support import acting_as, make_agent, make_user, run_statuses
from tests.workers import (
    HOLD_ENV,
    Worker,
    all_finished,
    completions_per_step,
    dangling_leases,
    setup_task,
    start_runs,
    start_worker,
    wait_until,
    workers,
)


def test_a_killed_worker_s_step_is_finished_by_another_exactly_once(step_log, db_url, tmp_path):
    conn = step_log
    task_id = setup_task(conn, ["noop", "hold", "noop"], max_attempts=3)
    (run_id,) = start_runs(conn, [task_id])

    doomed = start_worker(db_url, tmp_path, "doomed", env={HOLD_ENV: "3600"})
    try:
        wait_until(
            lambda: conn.execute(
                "select 1 from public.test_step_log where worker = 'doomed' and step_order = 2"
            ).fetchone(),
            what="the doomed worker to start step 2",
        )
        doomed.signal(signal.SIGKILL)
        doomed.proc.wait(10)
    finally:
        doomed.proc.kill()

    with workers(db_url, tmp_path, 1):
        wait_until(lambda: all_finished(conn, [run_id]), what="the run to finish")

    assert run_statuses(conn, [run_id]) == {"completed": 1}
    # Every step's result was committed exactly once.
    assert sorted(completions_per_step(conn, [run_id]).values()) == [1, 1, 1]
    executions = conn.execute(
        "select worker, finished_at is not null from public.test_step_log"
        " where step_order = 2 order by id"
    ).fetchall()
    assert executions == [("doomed", False), ("w0", True)]
    output = conn.execute(
        "select output from public.task_step_executions where run_id = %s and step_order = 2",
        [run_id],
    ).fetchone()[0]
    assert output["worker"] == "w0"
    assert dangling_leases(conn) == 0


def test_a_stale_worker_s_late_completion_is_rejected_by_the_fencing_token(
    step_log, db_url, tmp_path
):
    conn = step_log
    # Two attempts: the expired lease of the silent worker uses up the first.
    task_id = setup_task(conn, ["noop", "noop"], max_attempts=2)
    (run_id,) = start_runs(conn, [task_id])

    # A worker claims step 1 with a 1 s lease and then goes silent (no heartbeats).
    with acting_as(conn, "service_role"):
        stale = conn.execute(
            "select step_execution_id, lease_token from stepsync.claim_steps('stale', 1, 1)"
        ).fetchone()
    assert stale is not None

    with workers(db_url, tmp_path, 1):
        wait_until(lambda: all_finished(conn, [run_id]), what="the run to finish")

    with acting_as(conn, "service_role"):
        late = conn.execute(
            'select stepsync.complete_step(%s, %s, \'{"worker": "stale"}\')',
            [stale[0], stale[1]],
        ).fetchone()[0]
        late_failure = conn.execute(
            "select stepsync.fail_step(%s, %s, 'late error')", [stale[0], stale[1]]
        ).fetchone()[0]
    assert late is False
    assert late_failure == "stale"
    row = conn.execute(
        "select status::text, output, lease_token from public.task_step_executions where id = %s",
        [stale[0]],
    ).fetchone()
    assert row[0] == "completed" and row[1]["worker"] == "w0"
    assert row[2] != stale[1]  # the take-over got a new token
    assert completions_per_step(conn, [run_id])[stale[0]] == 1


@pytest.mark.slow
def test_four_workers_on_a_thousand_runs_never_overlap_a_step_and_lose_none(
    step_log, db_url, tmp_path
):
    conn = step_log
    user_id = make_user(conn)
    agent_id = make_agent(conn, user_id)
    task_ids = [
        row[0]
        for row in conn.execute(
            "insert into public.agent_tasks (agent_id, user_id, name, instructions)"
            " select %s, %s, 'Task ' || i, 'noop' from generate_series(1, 1000) as i"
            " returning id",
            [agent_id, user_id],
        ).fetchall()
    ]
    conn.execute(
        "update public.task_steps set deleted_at = now()"
        " where task_id = any(%s) and deleted_at is null",
        [task_ids],
    )
    conn.execute(
        "insert into public.task_steps (task_id, step_order, step_name, instructions,"
        " max_attempts) select t, o, 'Step ' || o, 'noop', 3 from unnest(%s::uuid[]) as t,"
        " generate_series(1, 2) as o",
        [task_ids],
    )
    run_ids = start_runs(conn, task_ids)
    assert len(run_ids) == 1000

    with workers(
        db_url, tmp_path, 4, "--concurrency", "8", "--poll-interval", "1", "--lease-seconds", "5"
    ) as started:
        wait_until(lambda: all_finished(conn, run_ids), timeout=120, what="1,000 runs")
        for worker in started:
            assert worker.stop() == 0

    assert run_statuses(conn, run_ids) == {"completed": 1000}
    completions = completions_per_step(conn, run_ids)
    assert len(completions) == 2000
    assert set(completions.values()) == {1}
    overlapping = conn.execute(
        "select count(*) from public.test_step_log a join public.test_step_log b"
        " on a.step_execution_id = b.step_execution_id and a.id < b.id"
        " and tstzrange(a.started_at, coalesce(a.finished_at, 'infinity'))"
        " && tstzrange(b.started_at, coalesce(b.finished_at, 'infinity'))"
    ).fetchone()[0]
    assert overlapping == 0
    executed = conn.execute(
        "select count(distinct step_execution_id), count(distinct worker) from public.test_step_log"
    ).fetchone()
    assert executed[0] == 2000
    assert executed[1] > 1  # the work really was shared
    assert dangling_leases(conn) == 0


def test_without_any_notification_polling_still_finishes_every_run(step_log, db_url, tmp_path):
    conn = step_log
    task_ids = [setup_task(conn, ["noop", "noop", "noop"]) for _ in range(20)]
    run_ids = start_runs(conn, task_ids)

    with workers(db_url, tmp_path, 2, "--poll-only", "--poll-interval", "0.2") as started:
        wait_until(lambda: all_finished(conn, run_ids), timeout=60, what="polled runs")
        serving_logs = [w.wait_for_log(lambda e: e.get("msg") == "serving") for w in started]

    assert all(entry["wakeups"] == ["poll"] for entry in serving_logs)
    assert run_statuses(conn, run_ids) == {"completed": 20}
    assert set(completions_per_step(conn, run_ids).values()) == {1}


def sigterm_once_the_step_holds(
    conn: psycopg.Connection, db_url: str, tmp_path: Path, name: str, *, grace: str, hold: str
) -> Worker:
    """Start a worker whose ``hold`` step lasts ``hold`` seconds, send it SIGTERM once the
    step has started, and check that it exits cleanly."""
    worker = start_worker(db_url, tmp_path, name, "--shutdown-grace", grace, env={HOLD_ENV: hold})
    try:
        wait_until(
            lambda: conn.execute("select 1 from public.test_step_log").fetchone(),
            what="the step to start",
        )
        worker.signal(signal.SIGTERM)
        assert worker.proc.wait(30) == 0
    finally:
        worker.proc.kill()
    return worker


def test_sigterm_lets_a_running_step_finish_then_exits_cleanly(step_log, db_url, tmp_path):
    conn = step_log
    task_id = setup_task(conn, ["hold"])
    (run_id,) = start_runs(conn, [task_id])
    sigterm_once_the_step_holds(conn, db_url, tmp_path, "graceful", grace="30", hold="1")
    assert run_statuses(conn, [run_id]) == {"completed": 1}
    assert dangling_leases(conn) == 0


def test_sigterm_hands_back_a_step_that_outlives_the_grace_period(step_log, db_url, tmp_path):
    conn = step_log
    task_id = setup_task(conn, ["hold"], max_attempts=1)
    (run_id,) = start_runs(conn, [task_id])
    worker = sigterm_once_the_step_holds(
        conn, db_url, tmp_path, "impatient", grace="0.5", hold="3600"
    )
    with conn.cursor(row_factory=dict_row) as cur:
        step = cur.execute(
            "select status::text as status, attempt, lease_owner from public.task_step_executions"
            " where run_id = %s",
            [run_id],
        ).fetchone()
    # Handed back: queued again, no lease, and the interrupted attempt was not used up
    # (max_attempts = 1, yet another worker can still run it).
    assert step == {"status": "queued", "attempt": 0, "lease_owner": None}
    assert worker.wait_for_log(lambda e: e.get("msg") == "step handed back")

    with workers(db_url, tmp_path, 1):
        wait_until(lambda: all_finished(conn, [run_id]), what="the handed-back step")
    assert run_statuses(conn, [run_id]) == {"completed": 1}


def test_sigterm_does_not_wait_for_a_blocked_thread_of_a_plain_function(step_log, db_url, tmp_path):
    # A plain function runs in a thread that cannot be interrupted; shutdown still ends
    # within the grace period and hands the step back.
    conn = step_log
    task_id = setup_task(conn, ["hold"])
    (run_id,) = start_runs(conn, [task_id])
    worker = start_worker(
        db_url,
        tmp_path,
        "blocked",
        "--shutdown-grace",
        "0.5",
        env={HOLD_ENV: "3600"},
        executor="python:tests.workers:blocking_step",
    )
    try:
        worker.wait_for_log(lambda e: e.get("msg") == "step started")
        worker.signal(signal.SIGTERM)
        assert worker.proc.wait(30) == 0
    finally:
        worker.proc.kill()
    assert worker.wait_for_log(lambda e: e.get("msg") == "step handed back")
    status = conn.execute(
        "select status::text, lease_owner from public.task_step_executions where run_id = %s",
        [run_id],
    ).fetchone()
    assert status == ("queued", None)


def test_a_paused_worker_s_completion_after_take_over_is_refused(step_log, db_url, tmp_path):
    # The stale worker is a real `stepsync serve` frozen with SIGSTOP mid-step; its lease
    # then runs out and another worker takes the step over and completes it. Thawed, the
    # first worker finishes its attempt and its completion is refused. Its lease is long
    # and expired by hand, so no heartbeat of its own falls due after the thaw: otherwise
    # the heartbeat could notice the lost lease first and cancel the attempt before it
    # reports, and the refusal this test is about would never be sent.
    conn = step_log
    task_id = setup_task(conn, ["hold", "noop"], max_attempts=2)
    (run_id,) = start_runs(conn, [task_id])
    paused = start_worker(
        db_url,
        tmp_path,
        "paused",
        "--lease-seconds",
        "600",
        env={HOLD_ENV: "1", "STEPSYNC_HEARTBEAT_INTERVAL_SECONDS": "300"},
    )
    try:
        wait_until(
            lambda: conn.execute(
                "select 1 from public.test_step_log where worker = 'paused'"
            ).fetchone(),
            what="the paused worker to start step 1",
        )
        paused.signal(signal.SIGSTOP)
        conn.execute(
            "update public.task_step_executions set lease_expires_at = now() - interval '1 second'"
            " where run_id = %s and step_order = 1 and status = 'running'",
            [run_id],
        )
        with workers(db_url, tmp_path, 1):
            wait_until(lambda: all_finished(conn, [run_id]), what="the take-over")
            paused.signal(signal.SIGCONT)
            refused = paused.wait_for_log(
                lambda e: e.get("msg") == "completion refused: lease lost (stale token)"
            )
        assert paused.stop() == 0
    finally:
        paused.proc.kill()
    assert refused["step_order"] == 1 and refused["attempt"] == 1
    output = conn.execute(
        "select output from public.task_step_executions where run_id = %s and step_order = 1",
        [run_id],
    ).fetchone()[0]
    assert output["worker"] == "w0"
    assert sorted(completions_per_step(conn, [run_id]).values()) == [1, 1]
    assert run_statuses(conn, [run_id]) == {"completed": 1}
