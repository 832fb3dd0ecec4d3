"""Audit: every insert, update and delete of steps and tasks leaves a row saying who,
as which role, when, and what changed; nobody can alter or remove those rows."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.fixtures.task_world import build_world
from tests.support import acting_as, make_agent, make_user


def audit_rows(conn: psycopg.Connection, since_id: int) -> list[tuple]:
    return conn.execute(
        "select table_name, operation, record_id, task_id, owner_id, actor_id, actor_role, tag,"
        " old_record ->> 'step_name', new_record ->> 'step_name'"
        " from public.audit_log where id > %s and table_name = 'task_steps' order by id",
        [since_id],
    ).fetchall()


def last_audit_id(conn: psycopg.Connection) -> int:
    return conn.execute("select coalesce(max(id), 0) from public.audit_log").fetchone()[0]


def test_each_change_by_the_owner_is_recorded(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    s1, s2, s3 = w.steps
    mark = last_audit_id(conn)
    with acting_as(conn, "authenticated", w.owner) as c:
        new_id = c.execute(
            "insert into public.task_steps (task_id, step_order, step_name, instructions)"
            " values (%s, 4, 'Added', 'More') returning id",
            [w.task],
        ).fetchone()[0]
        c.execute("update public.task_steps set step_name = 'Renamed' where id = %s", [s1])
        c.execute("update public.task_steps set step_name = 'Renamed' where id = %s", [s1])  # no-op
        c.execute("delete from public.task_steps where id = %s", [s2])
    me = (w.task, w.owner, w.owner, "authenticated", None)
    assert audit_rows(conn, mark) == [
        ("task_steps", "INSERT", new_id, *me, None, "Added"),
        ("task_steps", "UPDATE", s1, *me, "Step 1", "Renamed"),
        # the soft delete, then the following steps moving up
        ("task_steps", "UPDATE", s2, *me, "Step 2", "Step 2"),
        ("task_steps", "UPDATE", s3, *me, "Step 3", "Step 3"),
        ("task_steps", "UPDATE", new_id, *me, "Added", "Added"),
    ]
    soft = conn.execute(
        "select old_record ->> 'deleted_at', new_record ->> 'deleted_at' is not null"
        " from public.audit_log where id > %s and record_id = %s",
        [mark, s2],
    ).fetchone()
    assert soft == (None, True)


def test_task_changes_service_writes_and_tags_are_recorded(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    mark = last_audit_id(conn)
    with acting_as(conn, "authenticated", w.owner) as c:
        c.execute("update public.agent_tasks set name = 'Renamed task' where id = %s", [w.task])
    with acting_as(conn, "service_role") as c:
        c.execute("select set_config('stepsync.audit_tag', 'backfill-7', true)")
        c.execute("update public.task_steps set status = 'completed' where id = %s", [w.steps[0]])
    rows = conn.execute(
        "select table_name, operation, record_id, owner_id, actor_id, actor_role, tag"
        " from public.audit_log where id > %s order by id",
        [mark],
    ).fetchall()
    assert rows == [
        ("agent_tasks", "UPDATE", w.task, w.owner, w.owner, "authenticated", None),
        ("task_steps", "UPDATE", w.steps[0], w.owner, None, "service_role", "backfill-7"),
    ]


def test_bulk_save_is_recorded_row_by_row(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    s1, s2, s3 = w.steps
    mark = last_audit_id(conn)
    with acting_as(conn, "authenticated", w.owner) as c:
        c.execute(
            "select public.save_task_steps(%s, %s)",
            [w.task, Jsonb([{"id": str(s3)}, {"instructions": "new"}, {"id": str(s1)}])],
        )
    ops = conn.execute(
        "select operation, record_id = any(%s) from public.audit_log"
        " where id > %s and table_name = 'task_steps' order by id",
        [[s1, s2, s3], mark],
    ).fetchall()
    assert sorted(ops) == sorted(
        [("UPDATE", True), ("UPDATE", True), ("INSERT", False), ("UPDATE", True)]
    )


@pytest.mark.parametrize(
    "statement",
    [
        "update public.audit_log set tag = 'x'",
        "delete from public.audit_log",
        "truncate public.audit_log",
        "insert into public.audit_log (table_schema, table_name, operation, actor_role)"
        " values ('public', 'task_steps', 'INSERT', 'x')",
    ],
)
@pytest.mark.parametrize("role", ["authenticated", "service_role"])
def test_api_roles_cannot_write_the_audit_log(
    conn: psycopg.Connection, role: str, statement: str
) -> None:
    w = build_world(conn)
    before = conn.execute("select count(*), max(id) from public.audit_log").fetchone()
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        acting_as(conn, role, w.owner if role == "authenticated" else None) as c,
    ):
        c.execute(statement)
    assert conn.execute("select count(*), max(id) from public.audit_log").fetchone() == before


@pytest.mark.parametrize(
    "statement",
    [
        "update public.audit_log set tag = 'x'",
        "delete from public.audit_log",
        "truncate public.audit_log",
    ],
)
def test_not_even_the_table_owner_can_rewrite_history(
    conn: psycopg.Connection, statement: str
) -> None:
    build_world(conn)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute(statement)


def test_owner_reads_only_the_history_of_own_tasks(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    stranger = make_user(conn)
    make_agent(conn, stranger)
    with acting_as(conn, "authenticated", w.owner) as c:
        mine = c.execute("select distinct owner_id from public.audit_log").fetchall()
    with acting_as(conn, "authenticated", stranger) as c:
        theirs = c.execute("select count(*) from public.audit_log").fetchone()[0]
    assert mine == [(w.owner,)]
    assert theirs == 0
