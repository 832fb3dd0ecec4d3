"""A step's outcome takes one road to the database: completions and failures alike are
retried across a dropped connection, and a step cancelled on shutdown is handed back."""

from __future__ import annotations

import asyncio

import pytest

from sync.executors.base import PermanentStepError, StepRequest
from tests.run_engine_support import make_workflow, start_run, step_rows
from tests.support import log_records
from tests.workers import serving, wait_for_run, wait_for_step

END_SERVICE_CONNECTIONS = """
select count(*) from pg_stat_activity, pg_terminate_backend(pid)
 where application_name = 'stepsync-service' and datname = current_database()
"""


@pytest.mark.parametrize("outcome", ["completed", "failed"])
def test_an_outcome_whose_first_write_meets_a_dropped_connection_is_retried(conn, db_url, outcome):
    user_id, task_id, _ = make_workflow(conn, [{"max_attempts": 1}])
    run_id = start_run(conn, task_id, as_user=user_id)
    finish = asyncio.Event()

    async def step(request: StepRequest) -> dict:
        await finish.wait()
        if outcome == "failed":
            raise PermanentStepError("fails on purpose")
        return {"ok": True}

    async def scenario() -> tuple[int, dict]:
        # Polling once at start, no LISTEN, no reaping, heartbeats 20 s apart: nothing
        # but the step's result uses (and so repairs) the pool after its connections end.
        async with serving(
            db_url,
            step,
            listen=[],
            poll_interval_seconds=3600,
            reap_interval_seconds=3600,
            lease_seconds=60,
        ):
            await wait_for_step(db_url, run_id, 1, ("running",))
            ended = conn.execute(END_SERVICE_CONNECTIONS).fetchone()[0]
            finish.set()
            return ended, await wait_for_run(db_url, run_id)

    with log_records("sync") as records:
        ended, run = asyncio.run(scenario())
    assert ended >= 1
    assert run["status"] == outcome
    (row,) = step_rows(conn, run_id)
    assert (row["status"], row["attempt"]) == (outcome, 1)
    if outcome == "failed":
        assert row["error_message"] == "fails on purpose"
    else:
        assert row["output"] == {"ok": True}
    retries = [r for r in records if getattr(r, "retrying", None) == "recording a step's outcome"]
    assert [(r.step_execution_id, r.failures) for r in retries] == [(str(row["id"]), 1)]
    assert not [r for r in records if r.getMessage().startswith("could not record")]


def test_a_step_cancelled_on_shutdown_is_handed_back_without_using_an_attempt(conn, db_url):
    user_id, task_id, _ = make_workflow(conn, [{"max_attempts": 1}])
    run_id = start_run(conn, task_id, as_user=user_id)
    cancelled = asyncio.Event()

    async def step(request: StepRequest) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def scenario() -> float | None:
        async with serving(db_url, step, shutdown_grace_seconds=0.2) as service:
            await wait_for_step(db_url, run_id, 1, ("running",))
        assert cancelled.is_set()
        return service.metrics.registry.get_sample_value("stepsync_steps_released_total")

    assert asyncio.run(scenario()) == 1
    (row,) = step_rows(conn, run_id)
    assert (row["status"], row["attempt"], row["lease_owner"]) == ("queued", 0, None)
