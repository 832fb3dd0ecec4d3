"""Claims from concurrent connections, and notifications sent with the change."""

from __future__ import annotations

import json
import threading

import psycopg
from psycopg.rows import dict_row

from tests.run_engine_support import claim, claim_one, complete, make_workflow, start_run
from tests.support import as_service


def test_an_open_claim_does_not_block_or_share_its_steps(
    conn: psycopg.Connection, db_url: str
) -> None:
    _, task_id, _ = make_workflow(conn, [{}])
    for _ in range(6):
        start_run(conn, task_id)
    with psycopg.connect(db_url) as first, psycopg.connect(db_url, autocommit=True) as second:
        first.execute("set role service_role")
        held = first.execute("select step_execution_id from stepsync.claim_steps('a', 4, 60)")
        held_ids = {row[0] for row in held.fetchall()}  # transaction still open: rows locked
        second.execute("set lock_timeout = '5s'")  # a blocked claim would fail, not hang
        taken = {row["step_execution_id"] for row in claim(second, worker="b", batch=10)}
        first.commit()
    assert len(held_ids) == 4
    assert len(taken) == 2
    assert held_ids.isdisjoint(taken)


def test_concurrent_claimers_never_get_the_same_step(conn: psycopg.Connection, db_url: str) -> None:
    _, task_id, _ = make_workflow(conn, [{}, {}])
    runs = 60
    for _ in range(runs):
        start_run(conn, task_id)
    claimed: dict[str, list] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def worker(name: str) -> None:
        with psycopg.connect(db_url, autocommit=True) as own:
            start.wait()
            while steps := claim(own, worker=name, batch=3):
                for step in steps:
                    claimed[name].append((step["step_execution_id"], step["step_order"]))
                    assert complete(own, step, {"by": name})

    threads = [threading.Thread(target=worker, args=(name,)) for name in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    everything = claimed["a"] + claimed["b"]
    assert len(everything) == 2 * runs
    assert len({step_id for step_id, _ in everything}) == 2 * runs
    assert (
        conn.execute(
            "select count(*) from public.agent_task_executions where status = 'completed'"
        ).fetchone()[0]
        == runs
    )
    assert conn.execute(
        "select count(*), max(attempt) from public.task_step_executions"
    ).fetchone() == (2 * runs, 1)


def run_changed(run_id: object, status: str, outcome: str | None = None) -> str:
    """The payload of a stepsync_run_changed notification, as the trigger writes it."""
    return (
        f'{{"run_id" : "{run_id}", "status" : "{status}", '
        f'"outcome" : {json.dumps(outcome)}, "cancelling" : false}}'
    )


def test_notifications_announce_ready_steps_and_run_changes(
    conn: psycopg.Connection, db_url: str
) -> None:
    _, task_id, _ = make_workflow(conn, [{}, {"max_attempts": 2, "retry_backoff_seconds": 0}])
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen stepsync_step_ready")
        listener.execute("listen stepsync_run_changed")

        def received(count: int) -> list[tuple[str, str]]:
            """The next ``count`` notifications (they are sent at commit, so already due)."""
            notes = listener.notifies(timeout=10, stop_after=count)
            return [(n.channel, n.payload) for n in notes]

        run_id = start_run(conn, task_id)
        rows = (
            conn.cursor(row_factory=dict_row)
            .execute(
                "select id from public.task_step_executions where run_id = %s order by step_order",
                [run_id],
            )
            .fetchall()
        )
        first, second = (str(row["id"]) for row in rows)
        assert received(2) == [
            ("stepsync_run_changed", run_changed(run_id, "running")),
            ("stepsync_step_ready", first),
        ]
        assert complete(conn, claim_one(conn), {})
        assert received(1) == [("stepsync_step_ready", second)]
        step = claim_one(conn)
        with as_service(conn):
            conn.execute(
                "select stepsync.fail_step(%s, %s, 'flaky')",
                [step["step_execution_id"], step["lease_token"]],
            )
        assert received(1) == [("stepsync_step_ready", second)], "a retry due now is announced"
        assert complete(conn, claim_one(conn), {})
        assert received(1) == [
            ("stepsync_run_changed", run_changed(run_id, "completed", "succeeded"))
        ]

        # A retry after a delay is not announced (pollers find it): the next notification
        # is the cancellation.
        _, slow_task, _ = make_workflow(conn, [{"max_attempts": 2, "retry_backoff_seconds": 60}])
        slow_run = start_run(conn, slow_task)
        assert [channel for channel, _ in received(2)] == [
            "stepsync_run_changed",
            "stepsync_step_ready",
        ]
        step = claim_one(conn)
        with as_service(conn):
            conn.execute(
                "select stepsync.fail_step(%s, %s, 'later')",
                [step["step_execution_id"], step["lease_token"]],
            )
            conn.execute("select public.cancel_task_run(%s)", [slow_run])
        assert received(1) == [
            ("stepsync_run_changed", run_changed(slow_run, "cancelled", "cancelled"))
        ]
