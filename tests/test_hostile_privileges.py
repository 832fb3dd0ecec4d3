"""What API roles hold and what their settings can change: no TRUNCATE, no sequence
rights, no way to attach triggers; the audit tag and the compatibility switch are theirs
to set but not to be believed; and a foreign id answers "not found" at once, never after
waiting on its owner's lock."""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.task_world import build_world
from tests.hostile_support import refused, written
from tests.run_engine_support import make_workflow, start_run
from tests.support import acting_as, live_steps, task_instructions

OUR_SCHEMAS = ["public", "stepsync"]


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_hold_no_truncate_trigger_or_references(
    conn: psycopg.Connection, role: str
) -> None:
    rows = conn.execute(
        "select c.oid::regclass::text, p.privilege from pg_class as c"
        " cross join (values ('TRUNCATE'), ('TRIGGER'), ('REFERENCES')) as p (privilege)"
        " where c.relnamespace::regnamespace::text = any(%s) and c.relkind in ('r', 'p')"
        " and has_table_privilege(%s, c.oid, p.privilege) order by 1, 2",
        [OUR_SCHEMAS, role],
    ).fetchall()
    assert rows == []


def test_an_owner_cannot_truncate_their_steps_behind_rls(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    before = written(conn)
    for table in ("task_steps", "agent_tasks", "agent_task_executions", "task_step_executions"):
        with refused(conn, "authenticated", w.owner) as refusal:
            conn.execute(f"truncate public.{table} cascade")
        assert refusal.sqlstate == "42501", table
    assert written(conn) == before


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_hold_no_sequence_rights(conn: psycopg.Connection, role: str) -> None:
    sequences = conn.execute(
        "select c.oid::regclass::text from pg_class as c"
        " where c.relnamespace::regnamespace::text = any(%s) and c.relkind = 'S'",
        [OUR_SCHEMAS],
    ).fetchall()
    assert ("audit_log_id_seq",) in sequences or ("public.audit_log_id_seq",) in sequences
    held = conn.execute(
        "select c.oid::regclass::text, p.privilege from pg_class as c"
        " cross join (values ('USAGE'), ('SELECT'), ('UPDATE')) as p (privilege)"
        " where c.relnamespace::regnamespace::text = any(%s) and c.relkind = 'S'"
        " and has_sequence_privilege(%s, c.oid, p.privilege)",
        [OUR_SCHEMAS, role],
    ).fetchall()
    assert held == []


def test_setval_on_the_audit_sequence_is_refused(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    before = written(conn)
    # Had it worked, every later audited write would collide with an existing audit id.
    with refused(conn, "authenticated", w.owner) as refusal:
        conn.execute("select setval('public.audit_log_id_seq', 1)")
    assert refusal.sqlstate == "42501"
    assert written(conn) == before


def test_api_roles_have_no_way_to_attach_a_trigger(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    before = written(conn)
    attempts = [
        "create trigger sneaky after insert on public.task_steps for each statement"
        " execute function stepsync.close_gaps_after_delete()",
        "select stepsync.attach_audit('public.task_steps', 'task_id', '{}')",
    ]
    for statement in attempts:
        with refused(conn, "authenticated", w.owner) as refusal:
            conn.execute(statement)
        assert refusal.sqlstate == "42501", statement
    assert written(conn) == before


def test_an_api_callers_audit_tag_is_not_recorded(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    mark = conn.execute("select max(id) from public.audit_log").fetchone()[0]
    with acting_as(conn, "authenticated", w.owner):
        conn.execute("select set_config('stepsync.audit_tag', 'backfill-run-1', true)")
        conn.execute(
            "update public.task_steps set step_name = 'Renamed' where id = %s", [w.steps[0]]
        )
    with acting_as(conn, "service_role"):
        conn.execute("select set_config('stepsync.audit_tag', 'backfill-run-2', true)")
        conn.execute("update public.task_steps set step_name = 'Again' where id = %s", [w.steps[0]])
    rows = conn.execute(
        "select actor_role, tag from public.audit_log"
        " where id > %s and table_name = 'task_steps' order by id",
        [mark],
    ).fetchall()
    assert rows == [("authenticated", None), ("service_role", "backfill-run-2")]


def test_an_api_caller_cannot_switch_the_compatibility_rules_off(conn: psycopg.Connection) -> None:
    owner, task_id, step_ids = make_workflow(conn, [{}])
    with acting_as(conn, "authenticated", owner):
        conn.execute("select set_config('stepsync.compat_sync', 'off', true)")
        conn.execute(
            "update public.task_steps set instructions = 'Edited step' where id = %s",
            [step_ids[0]],
        )
    # The task's legacy text still follows its single step.
    assert task_instructions(conn, task_id) == "Edited step"
    agent = conn.execute(
        "select agent_id from public.agent_tasks where id = %s", [task_id]
    ).fetchone()
    with acting_as(conn, "authenticated", owner):
        conn.execute("select set_config('stepsync.compat_sync', 'off', true)")
        legacy = conn.execute(
            "insert into public.agent_tasks (agent_id, user_id, name, instructions)"
            " values (%s, %s, 'Legacy', 'Written the old way') returning id",
            [agent[0], owner],
        ).fetchone()[0]
    assert [row[2] for row in live_steps(conn, legacy)] == ["Written the old way"]


@pytest.mark.parametrize(
    ("call", "what"),
    [
        ("select public.restore_task_step(%s)", "deleted_step"),
        ("select public.cancel_task_run(%s)", "run"),
        ('select public.save_task_steps(%s, \'[{"instructions": "x"}]\')', "task"),
        ("select public.reorder_task_steps(%s, '{}')", "task"),
        ("select public.start_task_run(%s)", "task"),
        ("select public.preview_task_run(%s)", "task"),
    ],
)
def test_a_foreign_id_is_not_found_at_once_even_while_its_owner_holds_the_lock(
    conn: psycopg.Connection, db_url: str, call: str, what: str
) -> None:
    w = build_world(conn)
    run_id = start_run(conn, w.task)
    target = {"deleted_step": w.deleted_step, "run": run_id, "task": w.task}[what]
    with psycopg.connect(db_url) as holder:
        # The owner is in the middle of an edit: their task and run rows are locked.
        holder.execute("select from public.agent_tasks where id = %s for update", [w.task])
        holder.execute(
            "select from public.agent_task_executions where id = %s for update", [run_id]
        )
        with refused(conn, "authenticated", w.other) as refusal:
            conn.execute("set local lock_timeout = '200ms'")
            conn.execute(call, [target])
        holder.rollback()
    # "not found", never "lock timeout", which would tell that the id exists.
    assert refusal.sqlstate == "P0002", refusal.message
    assert "not found" in refusal.message
