"""`stepsync demo` end to end in a subprocess, judged from the database it wrote."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

from sync import demo_data


@pytest.mark.slow
def test_demo_upgrades_backfills_and_runs_everything(blank_db_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sync", "demo"],
        env={**os.environ, "STEPSYNC_DATABASE_URL": blank_db_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    with psycopg.connect(blank_db_url) as conn:
        runs = conn.execute(
            "select task_id, status::text from public.agent_task_executions order by created_at"
        ).fetchall()
        assert runs == [
            (demo_data.WORKFLOW_TASK[0], "completed"),
            (demo_data.LEGACY_TASKS[0][0], "completed"),
        ]
        steps = conn.execute(
            "select e.step_order, e.status::text, e.input_context, e.output"
            " from public.task_step_executions as e"
            " join public.agent_task_executions as r on r.id = e.run_id"
            " where r.task_id = %s order by e.step_order",
            [demo_data.WORKFLOW_TASK[0]],
        ).fetchall()
        assert [(order, status) for order, status, _, _ in steps] == [
            (1, "completed"),
            (2, "completed"),
            (3, "completed"),
            (4, "completed"),
        ]
        # Context passed: step 2 (mode previous) received step 1's output, step 4 its
        # custom template rendered over step 3's output, and its own context_data.
        assert steps[1][2]["previous"]["output"] == steps[0][3]
        assert steps[3][2]["rendered"].startswith("Draft to review (Draft release notes):")
        assert (
            steps[3][3]["text"] in steps[3][2]["rendered"]
            or steps[2][3]["text"] in steps[3][2]["rendered"]
        )
        assert steps[3][2]["context_data"] == {"audience": "customers"}

        # Backfill: every legacy task with usable instructions has exactly one live step 1
        # carrying its instructions; the blank one has none.
        for task_id, *_rest, instructions in demo_data.LEGACY_TASKS:
            live = conn.execute(
                "select step_order, instructions from public.task_steps"
                " where task_id = %s and deleted_at is null",
                [task_id],
            ).fetchall()
            assert live == ([(1, instructions)] if instructions.strip() else [])
        (backfill_status,) = conn.execute(
            "select status from stepsync.backfill_runs order by started_at desc limit 1"
        ).fetchone()
        assert backfill_status == "completed"
