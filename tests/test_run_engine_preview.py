"""Preview mode: every step's input as a run would send it, before or after a run."""

from __future__ import annotations

import psycopg

from tests.run_engine_support import claim_one, complete, make_workflow, start_run
from tests.support import acting_as

STEPS = [
    {"step_name": "Collect", "context_data": {"source": "inbox", "password": "p"}},
    {"step_name": "Rank", "include_previous_context": True, "context_mode": "previous"},
    {
        "step_name": "Write",
        "include_previous_context": True,
        "context_mode": "custom",
        "context_template": "Use {{steps[0].output}} and {{previous.output.best}}",
        "skip_if": '$.previous.status == "skipped"',
    },
]


def preview(conn: psycopg.Connection, user_id, task_id) -> dict:
    with acting_as(conn, "authenticated", user_id):
        return conn.execute("select public.preview_task_run(%s)", [task_id]).fetchone()[0]


def test_preview_before_any_run_marks_missing_outputs(conn: psycopg.Connection) -> None:
    user_id, task_id, step_ids = make_workflow(conn, STEPS, name="Digest")
    shown = preview(conn, user_id, task_id)
    assert shown["task_id"] == str(task_id)
    assert shown["based_on_run_id"] is None
    assert [(s["step_id"], s["order"], s["name"]) for s in shown["steps"]] == [
        (str(step_ids[0]), 1, "Collect"),
        (str(step_ids[1]), 2, "Rank"),
        (str(step_ids[2]), 3, "Write"),
    ]
    first, second, third = (s["input"] for s in shown["steps"])
    assert first["context_data"] == {"source": "inbox", "password": "[redacted]"}
    assert first["run"] == {"id": None, "trigger_type": "manual", "trigger_data": {}}
    assert second["previous"] == {
        "order": 1,
        "name": "Collect",
        "status": "pending",
        "output": "<output of step 1: not run yet>",
        "error": None,
    }
    assert third["rendered"] == (
        "Use <output of step 1: not run yet> and [missing: previous.output.best]"
    )
    assert [s["would_skip"] for s in shown["steps"]] == [False, False, False]


def test_preview_after_a_run_uses_its_outputs_and_matches_execution(
    conn: psycopg.Connection,
) -> None:
    user_id, task_id, step_ids = make_workflow(conn, STEPS, name="Digest")
    run_id = start_run(conn, task_id)
    assert complete(conn, claim_one(conn), ["mail 1", "mail 2"])
    assert complete(conn, claim_one(conn), {"best": "mail 2"})
    claimed = claim_one(conn)

    shown = preview(conn, user_id, task_id)
    assert shown["based_on_run_id"] == str(run_id)
    previewed = shown["steps"][2]["input"]
    assert previewed["rendered"] == 'Use ["mail 1", "mail 2"] and mail 2'
    # The preview is built by the same function as the claim: only the run differs.
    assert previewed | {"run": None} == claimed["context"] | {"run": None}

    with acting_as(conn, "authenticated", user_id):
        one = conn.execute("select public.preview_step_context(%s)", [step_ids[1]]).fetchone()[0]
    assert one == shown["steps"][1] | {"based_on_run_id": str(run_id)}
    assert one["input"]["previous"]["output"] == ["mail 1", "mail 2"]


def test_preview_of_a_task_without_steps_shows_its_instructions(
    conn: psycopg.Connection,
) -> None:
    user_id, task_id, _ = make_workflow(conn, [], name="Legacy")
    shown = preview(conn, user_id, task_id)
    assert [(s["step_id"], s["order"], s["name"], s["instructions"]) for s in shown["steps"]] == [
        (None, 1, "Legacy", "Summarise the inbox")
    ]
