"""Partial outcomes: a run that finished while steps marked ``continue`` failed is told
apart from a clean success in the run row (outcome, metadata), the notification, the
Realtime record a browser receives and ``stepsync runs``/``show``, while the legacy
status the app's UI reads keeps its five values."""

from __future__ import annotations

import asyncio
import json
import uuid

import psycopg
from typer.testing import CliRunner

from sync.cli import app
from tests.run_engine_support import (
    claim_one,
    complete,
    fail,
    make_workflow,
    run_row,
    start_run,
)
from tests.standins.realtime_server import RealtimeStandIn, make_jwt
from tests.support import acting_as

cli = CliRunner(env={"COLUMNS": "200"})


def partial_run(conn: psycopg.Connection, task_id: uuid.UUID) -> uuid.UUID:
    """A three-step run whose step 2 (on_failure continue) failed."""
    run_id = start_run(conn, task_id)
    assert complete(conn, claim_one(conn), "one")
    assert fail(conn, claim_one(conn), "no data today", retryable=False) == "failed"
    assert complete(conn, claim_one(conn), "three")
    return run_id


def clean_run(conn: psycopg.Connection, task_id: uuid.UUID) -> uuid.UUID:
    run_id = start_run(conn, task_id)
    for answer in ("one", "two", "three"):
        assert complete(conn, claim_one(conn), answer)
    return run_id


CONTINUING = [{}, {"on_failure": "continue"}, {}]


def test_a_partial_run_is_completed_for_legacy_readers_and_partial_for_the_rest(
    conn: psycopg.Connection,
) -> None:
    _, task_id, _ = make_workflow(conn, CONTINUING)
    clean = run_row(conn, clean_run(conn, task_id))
    partial = run_row(conn, partial_run(conn, task_id))

    assert (clean["status"], clean["outcome"], clean["metadata"]["outcome"]) == (
        "completed",
        "succeeded",
        "succeeded",
    )
    assert (partial["status"], partial["outcome"], partial["metadata"]["outcome"]) == (
        "completed",
        "partial",
        "partial",
    )
    assert (partial["steps_completed"], partial["steps_failed"]) == (2, 1)
    assert partial["output"] == "three"
    # The task's counters keep the legacy executor's meaning: a run that completed is a
    # successful execution, partial ones included (their outcome tells them apart).
    counters = conn.execute(
        "select total_executions, successful_executions, failed_executions"
        " from public.agent_tasks where id = %s",
        [task_id],
    ).fetchone()
    assert counters == (2, 2, 0)


def test_failed_and_cancelled_runs_have_those_outcomes(conn: psycopg.Connection) -> None:
    owner, task_id, _ = make_workflow(conn, [{}, {}])
    failed = start_run(conn, task_id)
    assert fail(conn, claim_one(conn), "broken", retryable=False) == "failed"
    cancelled = start_run(conn, task_id)
    with acting_as(conn, "authenticated", owner) as c:
        assert c.execute("select public.cancel_task_run(%s)", [cancelled]).fetchone()[0]
    outcomes = {
        run_id: (row["status"], row["outcome"], row["metadata"]["outcome"])
        for run_id in (failed, cancelled)
        for row in [run_row(conn, run_id)]
    }
    assert outcomes == {
        failed: ("failed", "failed", "failed"),
        cancelled: ("cancelled", "cancelled", "cancelled"),
    }
    running = start_run(conn, task_id)
    assert run_row(conn, running)["outcome"] is None


def test_the_run_changed_notification_carries_the_outcome(
    conn: psycopg.Connection, db_url: str
) -> None:
    _, task_id, _ = make_workflow(conn, CONTINUING)
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen stepsync_run_changed")
        run_id = partial_run(conn, task_id)
        payloads = [json.loads(n.payload) for n in listener.notifies(timeout=5, stop_after=2)]
    assert payloads == [
        {"run_id": str(run_id), "status": "running", "outcome": None, "cancelling": False},
        {"run_id": str(run_id), "status": "completed", "outcome": "partial", "cancelling": False},
    ]


ANON_KEY = "anon-key-for-tests"
SERVICE_KEY = "service-role-key-for-tests"
JWT_SECRET = "jwt-secret-for-tests-only"


def test_a_browser_can_follow_partial_outcomes(conn: psycopg.Connection, db_url: str) -> None:
    """Realtime sends the run row as the browser may read it: with a filter on outcome,
    the owner hears the partial run and not the clean one."""
    from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

    owner, task_id, _ = make_workflow(conn, CONTINUING)

    async def scenario() -> list[dict]:
        async with RealtimeStandIn(
            db_url, SERVICE_KEY, anon_key=ANON_KEY, jwt_secret=JWT_SECRET
        ) as server:
            client = AsyncRealtimeClient(
                f"{server.url}/realtime/v1", token=ANON_KEY, auto_reconnect=False
            )
            await client.set_auth(
                make_jwt(JWT_SECRET, {"sub": str(owner), "role": "authenticated"})
            )
            heard: list[dict] = []
            arrived = asyncio.Event()

            def hear(payload: dict) -> None:
                heard.append(payload["data"]["record"])
                arrived.set()

            subscribed = asyncio.Event()
            channel = client.channel("partial-runs")
            channel.on_postgres_changes(
                "UPDATE", hear, table="agent_task_executions", filter="outcome=eq.partial"
            )
            await channel.subscribe(
                lambda status, _err: (
                    status == RealtimeSubscribeStates.SUBSCRIBED and subscribed.set()
                )
            )
            await asyncio.wait_for(subscribed.wait(), 10)
            await asyncio.to_thread(clean_run, conn, task_id)
            await asyncio.to_thread(partial_run, conn, task_id)
            await asyncio.wait_for(arrived.wait(), 10)
            await client.close()
            return heard

    heard = asyncio.run(scenario())
    assert len(heard) == 1
    (record,) = heard
    assert (record["status"], record["outcome"], record["steps_failed"]) == (
        "completed",
        "partial",
        1,
    )


def test_runs_and_show_tell_partial_and_compensated_runs_apart(
    conn: psycopg.Connection, db_url: str
) -> None:
    _, task_id, _ = make_workflow(conn, CONTINUING, name="Digest")
    clean = clean_run(conn, task_id)
    partial = partial_run(conn, task_id)
    _, undo_task, _ = make_workflow(
        conn, [{"compensate_instructions": "Undo it"}, {}], name="Undoable"
    )
    compensated = start_run(conn, undo_task)
    assert complete(conn, claim_one(conn), "made")
    assert fail(conn, claim_one(conn), "broken", retryable=False) == "failed"
    assert complete(conn, claim_one(conn), "unmade")

    listing = cli.invoke(app, ["runs", "--database-url", db_url])
    assert listing.exit_code == 0, listing.output

    def line_of(run_id: uuid.UUID) -> str:
        (line,) = [line for line in listing.output.splitlines() if str(run_id) in line]
        return line

    assert "partial (1 step failed)" in line_of(partial)
    assert "succeeded" in line_of(clean) and "partial" not in line_of(clean)
    assert "failed, compensation completed" in line_of(compensated)

    shown = cli.invoke(app, ["show", str(partial), "--database-url", db_url])
    assert shown.exit_code == 0, shown.output
    assert "completed  partial (1 step failed)" in shown.output
    assert "no data today" in shown.output

    undone = cli.invoke(app, ["show", str(compensated), "--database-url", db_url])
    assert undone.exit_code == 1
    assert "failed, compensation completed" in undone.output
    assert "3 (undoes 1)" in undone.output and "Compensate: Step 1" in undone.output
