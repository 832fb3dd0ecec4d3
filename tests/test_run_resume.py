"""Resuming an ended run (resume_task_run), called as PostgREST calls it: a new run of the
task, linked to the old one, whose steps before p_from_step carry the old run's recorded
outcomes instead of running again; refused, with nothing written, for a run still going,
a step number out of range or steps that changed shape."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.fixtures.task_world import attempt
from tests.run_engine_support import (
    claim,
    claim_one,
    complete,
    fail,
    make_workflow,
    run_row,
    start_run,
    statuses,
    step_rows,
)
from tests.support import acting_as, make_user

FIVE_STEPS = [
    {"step_name": f"Step {n}", "include_previous_context": True, "context_mode": "full"}
    for n in range(1, 6)
]


def failed_at_four(conn: psycopg.Connection) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A five-step run whose step 4 failed for good: (owner, task, run)."""
    owner, task_id, _ = make_workflow(conn, FIVE_STEPS)
    run_id = start_run(conn, task_id, trigger_data={"ticket": 42})
    for n in range(1, 4):
        assert complete(conn, claim_one(conn), {"value": f"out{n}"})
    assert fail(conn, claim_one(conn), "the agent refused", retryable=False) == "failed"
    assert statuses(conn, run_id) == ["completed"] * 3 + ["failed", "skipped"]
    return owner, task_id, run_id


def resume(conn, user_id, run_id, **arguments) -> uuid.UUID:
    named = "".join(f", {name} => %({name})s" for name in arguments)
    with acting_as(conn, "authenticated", user_id) as c:
        return c.execute(
            f"select public.resume_task_run(%(run)s{named})", {"run": run_id, **arguments}
        ).fetchone()[0]


def everything(conn: psycopg.Connection) -> tuple:
    return conn.execute(
        "select (select count(*) from public.agent_task_executions),"
        " (select md5(string_agg(s::text, ',' order by s.id)) from public.task_step_executions s),"
        " (select count(*) from public.audit_log)"
    ).fetchone()


def test_resume_reuses_the_steps_before_the_failure_and_runs_the_rest(
    conn: psycopg.Connection,
) -> None:
    owner, _, old_run = failed_at_four(conn)
    old_rows = step_rows(conn, old_run)
    new_run = resume(conn, owner, old_run)

    run = run_row(conn, new_run)
    assert run["resumed_from_run_id"] == old_run
    assert run["metadata"]["resumed_from_run_id"] == str(old_run)
    assert (run["status"], run["trigger_type"], run["trigger_data"]) == (
        "running",
        "manual",
        {"ticket": 42},
    )
    assert run["steps_completed"] == 3
    rows = step_rows(conn, new_run)
    assert [r["status"] for r in rows] == ["completed"] * 3 + ["queued", "pending"]
    for old, new in zip(old_rows[:3], rows[:3], strict=True):
        assert new["reused_from"] == old["id"]
        assert (new["output"], new["attempt"], new["completed_at"]) == (
            old["output"],
            old["attempt"],
            old["completed_at"],
        )
    assert [r["reused_from"] for r in rows[3:]] == [None, None]

    # Step 4 gets the context the failed attempt got: only the run's id differs.
    step4 = claim_one(conn)
    assert (step4["run_id"], step4["step_order"]) == (new_run, 4)
    assert step4["context"]["run"] == old_rows[3]["input_context"]["run"] | {"id": str(new_run)}
    assert step4["context"] | {"run": None} == old_rows[3]["input_context"] | {"run": None}
    assert complete(conn, step4, {"value": "out4"})
    assert complete(conn, claim_one(conn), {"value": "out5"})
    done = run_row(conn, new_run)
    assert (done["status"], done["outcome"], done["steps_completed"]) == (
        "completed",
        "succeeded",
        5,
    )
    # The old run is history, untouched.
    assert step_rows(conn, old_run) == old_rows


def test_resume_runs_the_current_definition_from_the_step_given(conn: psycopg.Connection) -> None:
    owner, task_id, old_run = failed_at_four(conn)
    with acting_as(conn, "authenticated", owner) as c:
        c.execute(
            "update public.task_steps set instructions = 'Edited' where task_id = %s"
            " and step_order in (2, 4)",
            [task_id],
        )
        c.execute(
            "insert into public.task_steps (task_id, step_name, instructions)"
            " values (%s, 'Step 6', 'Appended')",
            [task_id],
        )
    new_run = resume(conn, owner, old_run, p_from_step=2)
    rows = step_rows(conn, new_run)
    assert [r["status"] for r in rows] == ["completed", "queued"] + ["pending"] * 4
    assert [r["instructions"] for r in rows] == [
        "Do part 1",
        "Edited",
        "Do part 3",
        "Edited",
        "Do part 5",
        "Appended",
    ]
    assert run_row(conn, new_run)["step_count"] == 6


def test_a_partial_run_resumes_from_its_failed_step(conn: psycopg.Connection) -> None:
    owner, task_id, _ = make_workflow(conn, [{}, {"on_failure": "continue"}, {}])
    run_id = start_run(conn, task_id)
    assert complete(conn, claim_one(conn), 1)
    assert fail(conn, claim_one(conn), "no data", retryable=False) == "failed"
    assert complete(conn, claim_one(conn), 3)
    assert run_row(conn, run_id)["outcome"] == "partial"
    new_run = resume(conn, owner, run_id)
    assert statuses(conn, new_run) == ["completed", "queued", "pending"]


def test_the_service_resumes_any_run_other_users_none(conn: psycopg.Connection) -> None:
    _, _, old_run = failed_at_four(conn)
    intruder = make_user(conn)
    before = everything(conn)
    call = "select public.resume_task_run(%s)"
    assert attempt(conn, "authenticated", intruder, call, [old_run]) == ("error", "P0002")
    assert attempt(conn, "anon", None, call, [old_run]) == ("error", "42501")
    assert everything(conn) == before
    outcome = attempt(conn, "service_role", None, call, [old_run])
    assert outcome[0] == "ok" and outcome[1][0][0] != old_run
    unknown = attempt(conn, "service_role", None, call, [uuid.uuid4()])
    assert unknown == ("error", "P0002")
    assert everything(conn) == before  # attempt() rolls back


def test_a_running_run_cannot_be_resumed(conn: psycopg.Connection) -> None:
    owner, task_id, _ = make_workflow(conn, [{}, {}])
    run_id = start_run(conn, task_id)
    claim(conn)
    before = everything(conn)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="is still running"):
        resume(conn, owner, run_id)
    assert everything(conn) == before


@pytest.mark.parametrize(
    ("from_step", "message"),
    [
        (0, "p_from_step: 0 is not a step number"),
        (-3, "p_from_step: -3 is not a step number"),
        (5, r"p_from_step: step 4 of run \S+ failed, so there is no outcome of it to reuse"),
        (50, r"p_from_step: step 4 of run \S+ failed"),
    ],
)
def test_a_step_number_out_of_range_is_refused(
    conn: psycopg.Connection, from_step: int, message: str
) -> None:
    owner, _, old_run = failed_at_four(conn)
    before = everything(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        resume(conn, owner, old_run, p_from_step=from_step)
    assert everything(conn) == before


def test_a_run_with_every_step_done_needs_a_step_to_resume_from(conn: psycopg.Connection) -> None:
    owner, task_id, _ = make_workflow(conn, [{}, {}])
    run_id = start_run(conn, task_id)
    assert complete(conn, claim_one(conn), 1)
    assert complete(conn, claim_one(conn), 2)
    before = everything(conn)
    for arguments, message in (
        ({}, r"p_from_step: 3 is outside 1\.\.2"),
        ({"p_from_step": 4}, r"p_from_step: run \S+ had 2 steps; 4 is outside 1\.\.3"),
    ):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
            resume(conn, owner, run_id, **arguments)
    assert everything(conn) == before
    # Running the last step again is a resume from it.
    assert statuses(conn, resume(conn, owner, run_id, p_from_step=2)) == ["completed", "queued"]


def test_steps_that_changed_shape_refuse_the_resume_unless_starting_over(
    conn: psycopg.Connection,
) -> None:
    owner, task_id, old_run = failed_at_four(conn)
    step_ids = [r["step_id"] for r in step_rows(conn, old_run)]
    with acting_as(conn, "authenticated", owner) as c:
        c.execute(
            "select public.reorder_task_steps(%s, %s)",
            [task_id, [step_ids[1], step_ids[0], *step_ids[2:]]],
        )
    before = everything(conn)
    with pytest.raises(
        psycopg.errors.ObjectNotInPrerequisiteState, match=r"\(step 1, step 2: removed"
    ) as refused:
        resume(conn, owner, old_run)
    assert "p_start_over" in refused.value.diag.message_hint
    assert everything(conn) == before
    # Steps after the resume point may change freely.
    assert statuses(conn, resume(conn, owner, old_run, p_from_step=1))[0] == "queued"

    with pytest.raises(psycopg.errors.InvalidParameterValue, match="starting over runs every"):
        resume(conn, owner, old_run, p_from_step=3, p_start_over=True)
    fresh = resume(conn, owner, old_run, p_start_over=True)
    rows = step_rows(conn, fresh)
    assert [r["status"] for r in rows] == ["queued"] + ["pending"] * 4
    assert [r["step_id"] for r in rows[:2]] == [step_ids[1], step_ids[0]]
    assert all(r["reused_from"] is None for r in rows)
    assert run_row(conn, fresh)["resumed_from_run_id"] == old_run


def test_a_deleted_step_before_the_resume_point_is_a_change_of_shape(
    conn: psycopg.Connection,
) -> None:
    owner, _, old_run = failed_at_four(conn)
    with acting_as(conn, "authenticated", owner) as c:
        c.execute(
            "select public.soft_delete_task_step(%s)", [step_rows(conn, old_run)[2]["step_id"]]
        )
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match=r"\(step 3: removed"):
        resume(conn, owner, old_run)


def test_a_task_that_no_longer_validates_is_not_resumed(conn: psycopg.Connection) -> None:
    owner, task_id, old_run = failed_at_four(conn)
    conn.execute("alter table public.task_steps drop constraint task_steps_instructions_not_blank")
    conn.execute(
        "update public.task_steps set instructions = ' ' where task_id = %s and step_order = 5",
        [task_id],
    )
    before = everything(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="has invalid steps"):
        resume(conn, owner, old_run)
    assert everything(conn) == before


def test_resume_by_named_arguments_as_postgrest_sends_them(conn: psycopg.Connection) -> None:
    owner, _, old_run = failed_at_four(conn)
    with acting_as(conn, "authenticated", owner) as c:
        new_run = c.execute(
            "select public.resume_task_run(p_run_id => %s, p_from_step => %s)",
            [old_run, 3],
        ).fetchone()[0]
    assert statuses(conn, new_run)[:3] == ["completed", "completed", "queued"]


def test_a_step_past_the_tasks_current_steps_is_refused(conn: psycopg.Connection) -> None:
    owner, task_id, _ = make_workflow(conn, [{}, {}, {}])
    run_id = start_run(conn, task_id)
    assert complete(conn, claim_one(conn), 1)
    assert complete(conn, claim_one(conn), 2)
    assert fail(conn, claim_one(conn), "broken", retryable=False) == "failed"
    with acting_as(conn, "authenticated", owner) as c:
        c.execute(
            "select public.soft_delete_task_step(%s)", [step_rows(conn, run_id)[2]["step_id"]]
        )
    before = everything(conn)
    with pytest.raises(
        psycopg.errors.InvalidParameterValue, match=r"3 is outside 1\.\.2: task \S+ has 2 steps"
    ) as refused:
        resume(conn, owner, run_id, p_from_step=3)
    assert "fewer steps" in refused.value.diag.message_hint
    assert everything(conn) == before
