"""Recovering from a failed run through the real service (in-process, and a real worker
process for the CLI): resuming after the owner fixed the failing step, and compensating
the completed steps of a run that stopped."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from sync.cli import app
from sync.executors.base import PermanentStepError, StepRequest
from tests.run_engine_support import run_row, step_rows
from tests.support import acting_as, make_agent, make_task, make_user, replace_steps
from tests.workers import create_step_log, serving, wait_for_run, workers


class Recorder:
    """The step function: records every request; a step whose instructions say
    ``broken`` fails for good, every other returns ``{"value": "out<order>"}``."""

    def __init__(self) -> None:
        self.requests: list[StepRequest] = []

    async def __call__(self, request: StepRequest) -> Any:
        self.requests.append(request)
        if request.instructions == "broken":
            raise PermanentStepError(f"step {request.step_order} is broken")
        return {"value": f"out{request.step_order}"}

    def of(self, run_id: uuid.UUID) -> dict[int, StepRequest]:
        """The requests of one run, by step order (each step ran once)."""
        seen = [r for r in self.requests if r.run_id == run_id]
        assert len({r.step_order for r in seen}) == len(seen), "a step ran twice"
        return {r.step_order: r for r in seen}


def owner_calls(conn: psycopg.Connection, owner: uuid.UUID, sql: str, params: list) -> Any:
    with acting_as(conn, "authenticated", owner) as c:
        return c.execute(sql, params).fetchone()[0]


def without_run_id(context: dict[str, Any]) -> dict[str, Any]:
    return context | {"run": context["run"] | {"id": None}}


def test_a_run_failed_at_step_4_resumes_after_the_owner_fixes_it(conn, db_url) -> None:
    owner = make_user(conn)
    task_id = make_task(conn, owner, make_agent(conn, owner))
    step_ids = replace_steps(
        conn,
        task_id,
        [
            {
                "instructions": "broken" if n == 4 else f"Do part {n}",
                "include_previous_context": True,
                "context_mode": "full",
            }
            for n in range(1, 6)
        ],
    )
    recorder = Recorder()

    async def scenario() -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
        async with serving(db_url, recorder):
            start = "select public.start_task_run(%s)"
            failed = await asyncio.to_thread(owner_calls, conn, owner, start, [task_id])
            assert (await wait_for_run(db_url, failed))["status"] == "failed"
            # The owner fixes step 4 in the editor and resumes the run.
            fixed = [{"id": str(i)} for i in step_ids]
            fixed[3]["instructions"] = "Do part 4, fixed"
            save = "select count(*) from public.save_task_steps(%s, %s)"
            await asyncio.to_thread(owner_calls, conn, owner, save, [task_id, Jsonb(fixed)])
            resume = "select public.resume_task_run(%s)"
            resumed = await asyncio.to_thread(owner_calls, conn, owner, resume, [failed])
            assert (await wait_for_run(db_url, resumed))["status"] == "completed"
            # What a fresh run of the fixed task gives each step, for comparison.
            fresh = await asyncio.to_thread(owner_calls, conn, owner, start, [task_id])
            assert (await wait_for_run(db_url, fresh))["status"] == "completed"
            return failed, resumed, fresh

    failed, resumed, fresh = asyncio.run(scenario())

    assert sorted(recorder.of(failed)) == [1, 2, 3, 4]
    # Steps 1-3 are not executed again; 4 and 5 run, 4 with its new instructions.
    assert sorted(recorder.of(resumed)) == [4, 5]
    assert recorder.of(resumed)[4].instructions == "Do part 4, fixed"
    # Step 4 (and 5 after it) receive exactly what a fresh run gives them.
    for order in (4, 5):
        resumed_context = recorder.of(resumed)[order].context
        assert [s["output"] for s in resumed_context["steps"]][:3] == [
            {"value": "out1"},
            {"value": "out2"},
            {"value": "out3"},
        ]
        assert without_run_id(resumed_context) == without_run_id(recorder.of(fresh)[order].context)

    run = run_row(conn, resumed)
    assert (run["resumed_from_run_id"], run["outcome"], run["steps_completed"]) == (
        failed,
        "succeeded",
        5,
    )
    old_rows, new_rows = step_rows(conn, failed), step_rows(conn, resumed)
    assert [r["reused_from"] for r in new_rows] == [r["id"] for r in old_rows[:3]] + [None, None]
    assert [r["attempt"] for r in new_rows] == [1] * 5
    assert new_rows[3]["input_context"] == recorder.of(resumed)[4].context


def test_a_failure_at_step_3_of_4_compensates_steps_2_and_1_in_that_order(conn, db_url) -> None:
    owner = make_user(conn)
    task_id = make_task(conn, owner, make_agent(conn, owner))
    replace_steps(
        conn,
        task_id,
        [
            {
                "instructions": "broken" if n == 3 else f"Do part {n}",
                "compensate_instructions": f"Undo part {n}",
            }
            for n in range(1, 5)
        ],
    )
    recorder = Recorder()

    async def scenario() -> dict:
        async with serving(db_url, recorder):
            start = "select public.start_task_run(%s)"
            run_id = await asyncio.to_thread(owner_calls, conn, owner, start, [task_id])
            return await wait_for_run(db_url, run_id)

    run = asyncio.run(scenario())

    assert [r.instructions for r in recorder.requests] == [
        "Do part 1",
        "Do part 2",
        "broken",
        "Undo part 2",
        "Undo part 1",
    ]
    assert (run["status"], run["outcome"], run["compensation"]) == (
        "failed",
        "failed",
        "completed",
    )
    undo_2, undo_1 = recorder.requests[3:]
    for request, undone in ((undo_2, 2), (undo_1, 1)):
        compensation = request.context["context_data"]["compensation"]
        assert compensation["step"]["order"] == undone
        assert compensation["step"]["output"] == {"value": f"out{undone}"}
        assert compensation["reason"] == "step 3 (Step 3) failed: step 3 is broken"
    assert undo_2.idempotency_key != undo_1.idempotency_key
    assert [r["status"] for r in step_rows(conn, run["id"])] == [
        "completed",
        "completed",
        "failed",
        "skipped",
        "completed",
        "completed",
    ]


cli = CliRunner(env={"COLUMNS": "200"})


def test_stepsync_resume_follows_the_new_run(conn, db_url, tmp_path) -> None:
    create_step_log(conn)
    owner = make_user(conn)
    task_id = make_task(conn, owner, make_agent(conn, owner), name="Report")
    step_ids = replace_steps(
        conn,
        task_id,
        [
            {"step_name": "Gather", "instructions": "noop"},
            {"step_name": "Write", "instructions": "fail"},
            {"step_name": "Send", "instructions": "noop"},
        ],
    )
    with workers(db_url, tmp_path, 1):
        started = cli.invoke(app, ["run", str(task_id), "--wait", "--database-url", db_url])
        assert started.exit_code == 1, started.output
        failed = started.output.split()[1]

        running = cli.invoke(app, ["resume", failed, "--from", "3", "--database-url", db_url])
        assert running.exit_code == 1
        assert f"cannot resume run {failed}: p_from_step: step 2 of run" in running.output
        assert "hint: Resume from step 2 or an earlier one." in running.output

        conn.execute(
            "update public.task_steps set instructions = 'noop' where id = %s", [step_ids[1]]
        )
        resumed = cli.invoke(app, ["resume", failed, "--wait", "--database-url", db_url])
    assert resumed.exit_code == 0, resumed.output
    assert f"resumes run {failed}" in resumed.output
    assert "reused from the resumed run" in resumed.output
    assert "succeeded" in resumed.output
    executed = conn.execute(
        "select step_order, count(*) from public.test_step_log group by 1 order by 1"
    ).fetchall()
    assert executed == [(1, 1), (2, 2), (3, 1)]  # Gather once, Write twice, Send once

    unknown = cli.invoke(app, ["resume", str(uuid.uuid4()), "--database-url", db_url])
    assert unknown.exit_code == 1 and "not found" in unknown.output
