"""Drafts of a task's steps, called as PostgREST calls them: save_task_steps_draft,
publish_task_steps_draft, discard_task_steps_draft and the table behind them. A draft
leaves the live steps alone, publishing goes through save_task_steps (all or nothing,
audited), an out-of-date draft is refused unless forced, runs read the live steps only."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.fixtures.task_world import ACTORS, attempt, build_world, role_and_user
from tests.run_engine_support import step_rows
from tests.support import acting_as, live_steps


def written(conn: psycopg.Connection, task_id) -> tuple:
    """Everything a draft RPC could write: the task's steps, its draft, the audit log."""
    return conn.execute(
        "select (select md5(string_agg(s::text, ',' order by s.id)) from public.task_steps as s"
        "  where s.task_id = %(task)s),"
        " (select md5(d::text) from public.task_step_drafts as d where d.task_id = %(task)s),"
        " (select count(*) from public.audit_log)",
        {"task": task_id},
    ).fetchone()


def save_draft(conn, user_id, task_id, steps) -> dict:
    with acting_as(conn, "authenticated", user_id) as c, c.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select * from public.save_task_steps_draft(%s, %s)", [task_id, Jsonb(steps)]
        ).fetchone()


def publish(conn, user_id, task_id, force: bool | None = None) -> list[tuple]:
    """The live steps publishing returns: (step_order, step_name, instructions)."""
    columns = "step_order, step_name, instructions"
    with acting_as(conn, "authenticated", user_id) as c:
        if force is None:
            sql, params = f"select {columns} from public.publish_task_steps_draft(%s)", [task_id]
        else:
            sql = f"select {columns} from public.publish_task_steps_draft(%s, p_force => %s)"
            params = [task_id, force]
        return c.execute(sql, params).fetchall()


def draft_of(conn, task_id) -> dict | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select d.*, public.is_stale(d) as stale from public.task_step_drafts as d"
            " where d.task_id = %s",
            [task_id],
        ).fetchone()


def test_a_draft_leaves_the_live_steps_alone_until_published(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    s1, s2, s3 = w.steps
    live_before = live_steps(conn, w.task)
    steps = [
        {"id": str(s3), "step_name": "Send first"},
        {"instructions": "A new step"},
        {"id": str(s1)},
    ]
    draft = save_draft(conn, w.owner, w.task, steps)
    assert draft["steps"] == steps and draft["updated_by"] == w.owner
    assert live_steps(conn, w.task) == live_before

    assert publish(conn, w.owner, w.task) == [
        (1, "Send first", "Do part 3"),
        (2, "Step 2", "A new step"),
        (3, "Step 1", "Do part 1"),
    ]
    assert draft_of(conn, w.task) is None
    assert conn.execute(
        "select deleted_at is not null from public.task_steps where id = %s", [s2]
    ).fetchone() == (True,)
    # Audited like any change: the draft's life, and the steps it changed, by the owner.
    audited = conn.execute(
        "select table_name, operation, actor_id from public.audit_log"
        " where task_id = %s and table_name in ('task_step_drafts', 'task_steps')"
        " and actor_id is not null order by id",
        [w.task],
    ).fetchall()
    assert [(table, op) for table, op, _ in audited] == [
        ("task_step_drafts", "INSERT"),
        ("task_steps", "UPDATE"),  # s3 and s1 move, in one statement
        ("task_steps", "UPDATE"),
        ("task_steps", "INSERT"),
        ("task_steps", "UPDATE"),  # s2 soft-deleted
        ("task_step_drafts", "DELETE"),
    ]
    assert {actor for _, _, actor in audited} == {w.owner}


def test_publishing_follows_the_rules_of_a_save_all_or_nothing(conn: psycopg.Connection) -> None:
    """A draft may hold an unfinished step; publishing it fails exactly as saving it would,
    and writes nothing: the live steps and the draft stay as they were."""
    w = build_world(conn)
    unfinished = [{"id": str(w.steps[0])}, {"step_name": "Later", "instructions": "  "}]
    save_draft(conn, w.owner, w.task, unfinished)
    before = written(conn, w.task)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as publishing:
        publish(conn, w.owner, w.task)
    with (
        pytest.raises(psycopg.errors.InvalidParameterValue) as saving,
        acting_as(conn, "authenticated", w.owner) as c,
    ):
        c.execute("select public.save_task_steps(%s, %s)", [w.task, Jsonb(unfinished)])
    assert publishing.value.diag.message_primary == saving.value.diag.message_primary
    assert publishing.value.diag.message_primary == "steps[1].instructions: must not be blank"
    assert written(conn, w.task) == before


def test_an_out_of_date_draft_is_refused_unless_forced(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    save_draft(conn, w.owner, w.task, [{"id": str(s)} for s in w.steps[::-1]])
    assert draft_of(conn, w.task)["stale"] is False
    version = draft_of(conn, w.task)["based_on_version"]
    # Someone edits the live steps directly.
    with acting_as(conn, "authenticated", w.owner) as c:
        c.execute(
            "update public.task_steps set instructions = 'Edited live' where id = %s", [w.steps[1]]
        )
    # Saving the draft again does not make it current: it still derives from what it was.
    save_draft(conn, w.owner, w.task, [{"id": str(s)} for s in w.steps])
    assert draft_of(conn, w.task)["based_on_version"] == version
    assert draft_of(conn, w.task)["stale"] is True

    before = written(conn, w.task)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="out of date") as err:
        publish(conn, w.owner, w.task)
    assert "p_force" in err.value.diag.message_hint
    assert written(conn, w.task) == before

    assert publish(conn, w.owner, w.task, force=True) == [
        (1, "Step 1", "Do part 1"),
        (2, "Step 2", "Edited live"),
        (3, "Step 3", "Do part 3"),
    ]


def test_discarding_a_draft(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    live_before = live_steps(conn, w.task)
    save_draft(conn, w.owner, w.task, [{"instructions": "Only this"}])
    with acting_as(conn, "authenticated", w.owner) as c:
        assert c.execute("select public.discard_task_steps_draft(%s)", [w.task]).fetchone()[0]
        assert not c.execute("select public.discard_task_steps_draft(%s)", [w.task]).fetchone()[0]
    assert draft_of(conn, w.task) is None
    assert live_steps(conn, w.task) == live_before
    with pytest.raises(psycopg.errors.NoDataFound, match="has no draft"):
        publish(conn, w.owner, w.task)


def test_runs_use_the_live_steps_while_a_draft_exists(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    save_draft(conn, w.owner, w.task, [{"instructions": "Drafted only"}])
    with acting_as(conn, "authenticated", w.owner) as c:
        run_id = c.execute("select public.start_task_run(%s)", [w.task]).fetchone()[0]
    assert [row["instructions"] for row in step_rows(conn, run_id)] == [
        "Do part 1",
        "Do part 2",
        "Do part 3",
    ]


# --- who may call what, and bad input -------------------------------------------------------

EXPECTED = {"anon": "42501", "other": "P0002", "owner": "ok", "service_role": "ok"}

CALLS = {
    "save": "select id from public.save_task_steps_draft(%(task)s, %(steps)s)",
    "publish": "select id from public.publish_task_steps_draft(%(task)s)",
    "discard": "select public.discard_task_steps_draft(%(task)s)",
}


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("call", CALLS)
def test_only_the_owner_and_the_service_use_a_tasks_draft(
    conn: psycopg.Connection, call: str, actor: str
) -> None:
    w = build_world(conn)
    save_draft(conn, w.owner, w.task, [{"id": str(w.steps[1])}, {"instructions": "New"}])
    before = written(conn, w.task)
    role, user_id = role_and_user(w, actor)
    outcome = attempt(
        conn,
        role,
        user_id,
        CALLS[call],
        {"task": w.task, "steps": Jsonb([{"instructions": "Mine now"}])},
    )
    if EXPECTED[actor] == "ok":
        assert outcome[0] == "ok" and outcome[1], outcome
    else:
        assert outcome == ("error", EXPECTED[actor])
    assert written(conn, w.task) == before  # attempt() rolls back; failures write nothing


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ({"instructions": "x"}, "steps: must be a JSON array of step objects"),
        (["x"], r"steps\[0\]: must be a JSON object"),
        ([{"instructions": 5}], r"steps\[0\].instructions: must be a string"),
        ([{"instructions": "x", "colour": "red"}], r"steps\[0\].colour: unknown field"),
        ([{"id": "not-a-uuid"}], r"steps\[0\].id: not a step id"),
        ([{"instructions": "x", "skip_if": "$.a ==="}], r"steps\[0\].skip_if: not a valid"),
        ([{"instructions": "x", "max_attempts": 0}], r"steps\[0\].max_attempts: must be"),
        ([{"instructions": "x"}] * 51, r"at most 50 steps \(got 51\)"),
    ],
)
def test_a_malformed_draft_is_refused_and_nothing_written(
    conn: psycopg.Connection, steps, message: str
) -> None:
    w = build_world(conn)
    before = written(conn, w.task)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        save_draft(conn, w.owner, w.task, steps)
    assert written(conn, w.task) == before


def test_drafts_of_unknown_or_foreign_tasks_are_not_found(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    unknown = conn.execute("select gen_random_uuid()").fetchone()[0]
    before = conn.execute("select count(*) from public.audit_log").fetchone()
    for task, user in ((unknown, w.owner), (w.task, w.other)):
        for sql in CALLS.values():
            with (
                pytest.raises(psycopg.errors.NoDataFound, match=f"task {task} not found"),
                acting_as(conn, "authenticated", user) as c,
            ):
                c.execute(sql, {"task": task, "steps": Jsonb([{"instructions": "x"}])})
    assert conn.execute("select count(*) from public.audit_log").fetchone() == before


def test_the_drafts_table_is_for_owners_only(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    save_draft(conn, w.owner, w.task, [{"instructions": "Mine"}])
    with acting_as(conn, "authenticated", w.other) as c:
        assert c.execute("select count(*) from public.task_step_drafts").fetchone() == (0,)
        assert c.execute("delete from public.task_step_drafts").rowcount == 0
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        acting_as(conn, "anon") as c,
    ):
        c.execute("select * from public.task_step_drafts")
    # Another user cannot plant a draft on the owner's task through the table either.
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
        acting_as(conn, "authenticated", w.other) as c,
    ):
        c.execute(
            "insert into public.task_step_drafts (task_id, steps, based_on_version)"
            " values (%s, '[]', 'x')",
            [w.task],
        )
    with acting_as(conn, "authenticated", w.owner) as c:
        assert c.execute("select count(*) from public.task_step_drafts").fetchone() == (1,)


def test_one_draft_per_task(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    first = save_draft(conn, w.owner, w.task, [{"instructions": "One"}])
    second = save_draft(conn, w.owner, w.task, [{"instructions": "Two"}])
    assert second["id"] == first["id"] and second["steps"] == [{"instructions": "Two"}]
    assert second["updated_at"] >= first["updated_at"]
    assert conn.execute(
        "select count(*) from public.task_step_drafts where task_id = %s", [w.task]
    ).fetchone() == (1,)
