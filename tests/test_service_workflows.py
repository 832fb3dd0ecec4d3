"""Workflows end to end through the real service (in-process), on real PostgreSQL.

Each test defines a task's steps, starts a run the way the app does (as the owner,
through ``start_task_run``), lets a running :class:`StepService` execute it with a
Python step function, and checks what the function received and what was recorded.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from sync.completions import CompletionBatcher
from sync.db import Database, Lease
from sync.executors.base import PermanentStepError, RetryableStepError, StepRequest
from tests.run_engine_support import make_workflow, start_run, step_rows
from tests.support import acting_as
from tests.workers import serving, wait_for_run, wait_for_step


class Recorder:
    """A step function that records every request and answers per step order."""

    def __init__(self, behaviour: dict[int, Any] | None = None) -> None:
        self.behaviour = behaviour or {}
        self.requests: list[StepRequest] = []

    async def __call__(self, request: StepRequest) -> Any:
        self.requests.append(request)
        action = self.behaviour.get(request.step_order)
        if callable(action):
            result = action(request)
            return await result if asyncio.iscoroutine(result) else result
        return {"value": f"out{request.step_order}"}

    def orders(self) -> list[int]:
        return [r.step_order for r in self.requests]


def test_five_steps_with_every_context_mode_complete_with_the_right_inputs(conn, db_url):
    user_id, task_id, _ = make_workflow(
        conn,
        [
            {
                "context_mode": "full",
                "include_previous_context": True,
                "context_data": Jsonb({"a": 1}),
            },
            {"context_mode": "previous", "include_previous_context": True},
            {
                "context_mode": "selective",
                "include_previous_context": True,
                "context_paths": ["$.steps[0].output.value", "$.previous.output.value"],
            },
            {"context_mode": "metadata", "include_previous_context": True},
            {
                "context_mode": "custom",
                "include_previous_context": True,
                "context_template": "first={{steps[0].output.value}} "
                "prev={{previous.output.value}} k={{context_data.k}}",
                "context_data": Jsonb({"k": "v"}),
            },
        ],
    )
    run_id = start_run(conn, task_id, as_user=user_id)
    recorder = Recorder()

    async def scenario() -> dict:
        async with serving(db_url, recorder):
            return await wait_for_run(db_url, run_id)

    run = asyncio.run(scenario())
    assert run["status"] == "completed"
    assert recorder.orders() == [1, 2, 3, 4, 5]
    ctx = {r.step_order: r.context for r in recorder.requests}

    assert ctx[1]["mode"] == "full" and ctx[1]["steps"] == []
    assert ctx[1]["context_data"] == {"a": 1}
    assert ctx[2]["mode"] == "previous"
    assert ctx[2]["previous"]["order"] == 1 and ctx[2]["previous"]["output"] == {"value": "out1"}
    assert "steps" not in ctx[2]
    assert sorted(ctx[3]["selected"].values()) == ["out1", "out2"]
    assert [s["order"] for s in ctx[4]["steps"]] == [1, 2, 3]
    assert all(s["status"] == "completed" and "output" not in s for s in ctx[4]["steps"])
    assert "out1" not in json.dumps(ctx[4])
    assert ctx[5]["rendered"] == "first=out1 prev=out4 k=v"

    rows = step_rows(conn, run_id)
    assert [r["status"] for r in rows] == ["completed"] * 5
    for row in rows:
        # The step received exactly the input the engine recorded, and its output stuck.
        assert ctx[row["step_order"]] == row["input_context"]
        assert row["output"] == {"value": f"out{row['step_order']}"}
        assert row["attempt"] == 1 and row["lease_owner"] is None
    requests = {r.step_order: r for r in recorder.requests}
    assert requests[3].instructions == "Do part 3"
    assert requests[1].run_id == run_id and requests[1].task_id == task_id
    assert len({r.idempotency_key for r in recorder.requests}) == 5


def test_a_failed_step_stops_the_run_and_skips_the_rest(conn, db_url):
    user_id, task_id, _ = make_workflow(conn, [{}, {"on_failure": "stop"}, {}])
    run_id = start_run(conn, task_id, as_user=user_id)

    def broken(request: StepRequest) -> None:
        raise PermanentStepError("the agent refused")

    recorder = Recorder({2: broken})

    async def scenario() -> dict:
        async with serving(db_url, recorder):
            return await wait_for_run(db_url, run_id)

    run = asyncio.run(scenario())
    assert run["status"] == "failed"
    assert recorder.orders() == [1, 2]
    rows = step_rows(conn, run_id)
    assert [r["status"] for r in rows] == ["completed", "failed", "skipped"]
    assert rows[1]["error_message"] == "the agent refused"
    assert rows[1]["attempt"] == 1


def test_a_failed_step_marked_continue_lets_the_run_go_on(conn, db_url):
    user_id, task_id, _ = make_workflow(conn, [{}, {"on_failure": "continue"}, {}])
    run_id = start_run(conn, task_id, as_user=user_id)

    def broken(request: StepRequest) -> None:
        raise PermanentStepError("no data today")

    recorder = Recorder({2: broken})

    async def scenario() -> dict:
        async with serving(db_url, recorder):
            return await wait_for_run(db_url, run_id)

    asyncio.run(scenario())
    assert recorder.orders() == [1, 2, 3]
    assert [r["status"] for r in step_rows(conn, run_id)] == ["completed", "failed", "completed"]


def test_retries_with_backoff_then_success(conn, db_url):
    user_id, task_id, _ = make_workflow(
        conn, [{"max_attempts": 3, "retry_backoff_seconds": 1, "retry_backoff_max_seconds": 2}]
    )
    run_id = start_run(conn, task_id, as_user=user_id)

    def flaky(request: StepRequest) -> dict:
        if request.attempt < 3:
            raise RetryableStepError(f"busy (attempt {request.attempt})")
        return {"value": "finally"}

    recorder = Recorder({1: flaky})
    retry_rows: list[dict] = []

    async def scenario() -> dict:
        async with serving(db_url, recorder):
            # While waiting for attempt 2, the step is queued with its due time pushed out.
            retry_rows.append(
                await wait_for_step(
                    db_url, run_id, 1, ("queued",), where=lambda row: row["attempt"] == 1
                )
            )
            return await wait_for_run(db_url, run_id)

    run = asyncio.run(scenario())
    assert run["status"] == "completed"
    assert [r.attempt for r in recorder.requests] == [1, 2, 3]
    assert len({r.idempotency_key for r in recorder.requests}) == 1
    (row,) = step_rows(conn, run_id)
    assert row["status"] == "completed" and row["attempt"] == 3
    assert row["output"] == {"value": "finally"}
    queued = retry_rows[0]
    assert queued["error_message"] == "busy (attempt 1)"
    assert queued["run_after"] > queued["last_error_at"]  # backed off, not retried at once


def test_retries_exhausted_fail_the_step_and_the_run(conn, db_url):
    user_id, task_id, _ = make_workflow(
        conn, [{"max_attempts": 2, "retry_backoff_seconds": 0, "retry_backoff_max_seconds": 0}, {}]
    )
    run_id = start_run(conn, task_id, as_user=user_id)

    def always_busy(request: StepRequest) -> None:
        raise RetryableStepError(f"busy (attempt {request.attempt})")

    recorder = Recorder({1: always_busy})

    async def scenario() -> dict:
        async with serving(db_url, recorder):
            return await wait_for_run(db_url, run_id)

    run = asyncio.run(scenario())
    assert run["status"] == "failed"
    assert [(r.step_order, r.attempt) for r in recorder.requests] == [(1, 1), (1, 2)]
    rows = step_rows(conn, run_id)
    assert [r["status"] for r in rows] == ["failed", "skipped"]
    assert rows[0]["attempt"] == 2 and rows[0]["error_message"] == "busy (attempt 2)"


def test_skip_if_skips_a_step_without_executing_it(conn, db_url):
    user_id, task_id, _ = make_workflow(
        conn, [{}, {"skip_if": "$.steps[0].output.skip_next == true"}, {}]
    )
    run_id = start_run(conn, task_id, as_user=user_id)
    recorder = Recorder({1: lambda request: {"skip_next": True}})

    async def scenario() -> dict:
        async with serving(db_url, recorder):
            return await wait_for_run(db_url, run_id)

    run = asyncio.run(scenario())
    assert run["status"] == "completed"
    assert recorder.orders() == [1, 3]
    assert [r["status"] for r in step_rows(conn, run_id)] == ["completed", "skipped", "completed"]


def test_a_step_over_its_timeout_is_cancelled_and_counts_as_a_failed_attempt(conn, db_url):
    user_id, task_id, _ = make_workflow(
        conn,
        [
            {
                "timeout_seconds": 1,
                "max_attempts": 2,
                "retry_backoff_seconds": 1,
                "retry_backoff_max_seconds": 1,
            }
        ],
    )
    run_id = start_run(conn, task_id, as_user=user_id)
    cancelled: list[int] = []

    async def slow_first_time(request: StepRequest) -> dict:
        if request.attempt == 1:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(request.attempt)
                raise
        return {"value": "fast enough"}

    recorder = Recorder({1: slow_first_time})

    timed_out: list[dict] = []

    async def scenario() -> dict:
        async with serving(db_url, recorder):
            timed_out.append(
                await wait_for_step(
                    db_url,
                    run_id,
                    1,
                    ("queued", "running"),
                    where=lambda r: r["attempt"] == 1 and r["error_message"] is not None,
                )
            )
            return await wait_for_run(db_url, run_id)

    run = asyncio.run(scenario())
    assert run["status"] == "completed"
    assert cancelled == [1]
    assert timed_out[0]["error_message"] == "timed out after 1s"
    (row,) = step_rows(conn, run_id)
    assert row["attempt"] == 2 and row["output"] == {"value": "fast enough"}


def test_cancelling_a_run_stops_the_running_step_and_rejects_its_result(conn, db_url):
    user_id, task_id, _ = make_workflow(conn, [{}, {}, {}])
    run_id = start_run(conn, task_id, as_user=user_id)
    step_2_cancelled = asyncio.Event()
    claimed: list[dict[str, Any]] = []

    async def wait_forever(request: StepRequest) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            step_2_cancelled.set()
            raise

    recorder = Recorder({2: wait_forever})

    async def scenario() -> dict:
        async with serving(db_url, recorder, heartbeat_interval_seconds=1):
            running = await wait_for_step(db_url, run_id, 2, ("running",))
            claimed.append(running)
            with acting_as(conn, "authenticated", user_id):
                assert conn.execute("select public.cancel_task_run(%s)", [run_id]).fetchone()[0]
            await asyncio.wait_for(step_2_cancelled.wait(), timeout=30)
            run = await wait_for_run(db_url, run_id)
            # The late result of the cancelled attempt is refused by its fencing token.
            db = Database(db_url)
            await db.open()
            try:
                lease = Lease(running["id"], running["lease_token"])
                late = await db.complete_steps([(lease, {"value": "too late"})])
                assert late[lease.step_execution_id].completed is False
            finally:
                await db.close()
            return run

    run = asyncio.run(scenario())
    assert run["status"] == "cancelled"
    assert recorder.orders() == [1, 2]
    rows = step_rows(conn, run_id)
    assert [r["status"] for r in rows] == ["completed", "cancelled", "cancelled"]
    assert rows[1]["output"] is None


def test_editing_steps_during_a_run_does_not_change_the_run(conn, db_url):
    user_id, task_id, _ = make_workflow(
        conn, [{"instructions": "original 1"}, {"instructions": "original 2"}, {}]
    )
    run_id = start_run(conn, task_id, as_user=user_id)
    edited = asyncio.Event()

    async def wait_for_edit(request: StepRequest) -> dict:
        await asyncio.wait_for(edited.wait(), timeout=30)
        return {"value": "out1"}

    recorder = Recorder({1: wait_for_edit})

    async def scenario() -> dict:
        async with serving(db_url, recorder):
            await wait_for_step(db_url, run_id, 1, ("running",))
            edit = conn.execute(
                "update public.task_steps set instructions = 'edited 2', max_attempts = 5"
                " where task_id = %s and step_order = 2 and deleted_at is null",
                [task_id],
            )
            assert edit.rowcount == 1
            removal = conn.execute(
                "update public.task_steps set deleted_at = now()"
                " where task_id = %s and step_order = 3 and deleted_at is null",
                [task_id],
            )
            assert removal.rowcount == 1
            edited.set()
            return await wait_for_run(db_url, run_id)

    run = asyncio.run(scenario())
    assert run["status"] == "completed"
    assert recorder.orders() == [1, 2, 3]
    requests = {r.step_order: r for r in recorder.requests}
    assert requests[2].instructions == "original 2"
    assert requests[3].instructions == "Do part 3"
    assert step_rows(conn, run_id)[1]["max_attempts"] == 1


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ({1, 2}, "not JSON-serialisable"),
        (float("nan"), "not JSON-serialisable"),
        ({"text": "a\u0000b"}, "output refused by the database: unsupported Unicode escape"),
    ],
)
def test_output_that_is_not_json_fails_the_step_permanently(conn, db_url, output, message):
    user_id, task_id, _ = make_workflow(conn, [{"max_attempts": 3}])
    run_id = start_run(conn, task_id, as_user=user_id)
    recorder = Recorder({1: lambda request: output})

    async def scenario() -> dict:
        async with serving(db_url, recorder):
            return await wait_for_run(db_url, run_id)

    assert asyncio.run(scenario())["status"] == "failed"
    (row,) = step_rows(conn, run_id)
    assert row["attempt"] == 1  # permanent: no retry despite max_attempts = 3
    assert message in row["error_message"]


def single_step_runs(conn: psycopg.Connection, count: int) -> list[uuid.UUID]:
    workflows = [make_workflow(conn, [{"max_attempts": 3}]) for _ in range(count)]
    return [start_run(conn, task_id, as_user=user_id) for user_id, task_id, _ in workflows]


def returning_together(count: int, output: Callable[[StepRequest], Any]) -> Callable:
    """A step function whose first ``count`` executions all return at the same moment."""
    entered: list[StepRequest] = []
    everyone_in = asyncio.Event()

    async def step(request: StepRequest) -> Any:
        entered.append(request)
        if len(entered) == count:
            everyone_in.set()
        await everyone_in.wait()
        return output(request)

    return step


def test_results_returned_together_are_written_in_one_transaction(conn, db_url) -> None:
    runs = single_step_runs(conn, 6)
    step = returning_together(6, lambda request: {"run": str(request.run_id)})

    async def scenario() -> None:
        async with serving(db_url, step, concurrency=6, batch_size=6):
            for run_id in runs:
                assert (await wait_for_run(db_url, run_id))["status"] == "completed"

    asyncio.run(scenario())
    # Rows written by one transaction carry its id: one per completion if unbatched.
    writers = conn.execute(
        "select count(distinct xmin::text) from public.task_step_executions where run_id = any(%s)",
        [runs],
    ).fetchone()[0]
    assert writers <= 2
    outputs = [step_rows(conn, run_id)[0]["output"] for run_id in runs]
    assert outputs == [{"run": str(run_id)} for run_id in runs]


def test_a_result_arriving_as_the_last_write_ends_gets_a_write_of_its_own(conn, db_url) -> None:
    # A write's results wake their steps before the writer itself has finished: a step
    # whose result comes back at once (a hand-off, a no-op) must not take that writer
    # for one still coming for it.
    runs = single_step_runs(conn, 2)

    async def scenario() -> list[bool]:
        db = Database(db_url, size=1)
        await db.open()
        try:
            first, second = (step.lease for step in await db.claim_steps("worker-1", 2, 60))
            batcher = CompletionBatcher(
                db, max_batch=10, writers=1, worker="worker-1", lease_seconds=60
            )
            written = [await batcher.complete(first, {"n": 1})]
            async with asyncio.timeout(10):  # in this task: wait_for would start a new one
                written.append(await batcher.complete(second, {"n": 2}))
            return [completion.completed for completion in written]
        finally:
            await db.close()

    assert asyncio.run(scenario()) == [True, True]
    assert [step_rows(conn, run_id)[0]["status"] for run_id in runs] == ["completed"] * 2


def test_an_output_refused_in_a_batch_fails_only_its_own_step(conn, db_url) -> None:
    runs = single_step_runs(conn, 4)
    step = returning_together(
        4,
        lambda request: {"text": "a\u0000b"} if request.run_id == runs[0] else {"ok": True},
    )

    async def scenario() -> list[str]:
        async with serving(db_url, step, concurrency=4, batch_size=4):
            return [(await wait_for_run(db_url, run_id))["status"] for run_id in runs]

    assert asyncio.run(scenario()) == ["failed", "completed", "completed", "completed"]
    (refused,) = step_rows(conn, runs[0])
    assert refused["attempt"] == 1
    assert "output refused by the database" in refused["error_message"]


def test_each_next_step_is_handed_to_the_worker_that_finished_the_one_before(conn, db_url) -> None:
    previous = {"include_previous_context": True, "context_mode": "previous"}
    user_id, task_id, _ = make_workflow(conn, [{}, previous, previous])
    run_id = start_run(conn, task_id, as_user=user_id)
    recorder = Recorder()

    async def scenario() -> tuple[float, float]:
        async with serving(db_url, recorder) as service:
            assert (await wait_for_run(db_url, run_id))["status"] == "completed"
            sample = service.metrics.registry.get_sample_value
            return sample("stepsync_steps_handed_off_total"), sample("stepsync_steps_claimed_total")

    # Step 1 is claimed; steps 2 and 3 come back leased with the result before them.
    assert asyncio.run(scenario()) == (2.0, 3.0)
    assert [request.step_order for request in recorder.requests] == [1, 2, 3]
    assert [request.context["previous"]["output"] for request in recorder.requests[1:]] == [
        {"value": "out1"},
        {"value": "out2"},
    ]
