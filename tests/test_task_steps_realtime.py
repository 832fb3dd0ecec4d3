"""Joining later tables to the workflow machinery with one line each: the realtime
publication helper and the audit attachment, as the run tables will use them."""

from __future__ import annotations

import psycopg

from tests.fixtures.task_world import build_world
from tests.support import acting_as


def published(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "select tablename from pg_publication_tables where pubname = 'supabase_realtime'"
    ).fetchall()
    return {name for (name,) in rows}


def test_publication_helper_adds_once_and_tolerates_a_missing_publication(
    conn: psycopg.Connection,
) -> None:
    conn.execute("create table public.step_runs_demo (id uuid primary key, run_id uuid)")
    conn.execute("alter table public.step_runs_demo enable row level security")
    add = "select stepsync.add_to_realtime_publication('public.step_runs_demo')"
    assert conn.execute(add).fetchone() == (True,)
    assert conn.execute(add).fetchone() == (True,)  # already there: no error
    assert {"task_steps", "agent_task_executions", "step_runs_demo"} <= published(conn)
    conn.execute("drop publication supabase_realtime")
    assert conn.execute(add).fetchone() == (False,)  # plain PostgreSQL: nothing to join


def test_a_run_table_joins_the_audit_with_one_call(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    conn.execute(
        "create table public.step_runs_demo (id uuid primary key default gen_random_uuid(),"
        " run_id uuid not null, status text)"
    )
    conn.execute("select stepsync.attach_audit('public.step_runs_demo')")
    with acting_as(conn, "service_role") as c:
        c.execute("select set_config('stepsync.audit_tag', 'worker-1', true)")
        step_run = c.execute(
            "insert into public.step_runs_demo (run_id, status) values (%s, 'queued') returning id",
            [w.run],
        ).fetchone()[0]
        c.execute("update public.step_runs_demo set status = 'running'")
        c.execute("delete from public.step_runs_demo")
    rows = conn.execute(
        "select operation, record_id, task_id, owner_id, actor_role, tag,"
        " old_record ->> 'status', new_record ->> 'status'"
        " from public.audit_log where table_name = 'step_runs_demo' order by id"
    ).fetchall()
    common = (step_run, w.task, w.owner, "service_role", "worker-1")
    assert rows == [
        ("INSERT", *common, None, "queued"),
        ("UPDATE", *common, "queued", "running"),
        ("DELETE", *common, "running", None),
    ]
    with acting_as(conn, "authenticated", w.owner) as c:
        visible = c.execute(
            "select count(*) from public.audit_log where table_name = 'step_runs_demo'"
        ).fetchone()
    assert visible == (3,)  # the owner reads the history of runs of their own task
