"""The reaper runs on its own timer, apart from the poll timer, and wakes the claim loop."""

from __future__ import annotations

import asyncio

from sync.executors.base import StepRequest
from tests.run_engine_support import make_workflow, start_run, step_rows
from tests.support import as_service
from tests.workers import serving, wait_for_run


def test_the_reaper_brings_back_a_dead_worker_s_step_with_polling_and_listen_off(conn, db_url):
    user_id, task_id, _ = make_workflow(conn, [{"max_attempts": 2}])
    run_id = start_run(conn, task_id, as_user=user_id)
    # A worker claims the step with a 1 s lease and dies (no heartbeat, no result).
    with as_service(conn):
        (crashed,) = conn.execute(
            "select step_execution_id from stepsync.claim_steps('crashed', 1, 1)"
        ).fetchall()
    attempts: list[int] = []

    async def step(request: StepRequest) -> dict:
        attempts.append(request.attempt)
        return {"ok": True}

    async def scenario() -> tuple[dict, float | None, float | None]:
        # No LISTEN and an hour between polls: only the reaper hands the step back, and
        # only its wake-up gets it claimed.
        # A short lease: the reaper's grace after the database starts is one lease.
        async with serving(
            db_url,
            step,
            listen=[],
            poll_interval_seconds=3600,
            reap_interval_seconds=0.2,
            lease_seconds=2,
        ) as service:
            run = await wait_for_run(db_url, run_id, timeout=20)
            sample = service.metrics.registry.get_sample_value
            return (
                run,
                sample("stepsync_leases_reaped_total"),
                sample("stepsync_wakeup_latency_seconds_count", {"reason": "reaped"}),
            )

    run, reaped, woken_by_reaper = asyncio.run(scenario())
    assert run["status"] == "completed"
    assert reaped == 1
    assert woken_by_reaper == 1
    assert attempts == [1]  # the dead worker's lost lease gave its attempt back
    (row,) = step_rows(conn, run_id)
    assert (row["id"], row["status"], row["output"]) == (crashed[0], "completed", {"ok": True})


def test_the_reap_interval_defaults_to_the_poll_interval():
    from sync.settings import Settings

    assert Settings(poll_interval_seconds=7).reap_every_seconds == 7
    assert Settings(poll_interval_seconds=7, reap_interval_seconds=2).reap_every_seconds == 2
