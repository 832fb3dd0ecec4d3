"""Soft delete, restore, purge and the cascade from deleting a task, driven as the UI
drives them: REST DELETE and RPCs as the owner, purge as the service."""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.task_world import build_world
from tests.support import acting_as, make_agent, make_task, make_user, replace_steps


def live_steps(conn: psycopg.Connection, task_id) -> list[tuple]:
    return conn.execute(
        "select id, step_order from public.task_steps"
        " where task_id = %s and deleted_at is null order by step_order",
        [task_id],
    ).fetchall()


def test_rest_delete_by_owner_soft_deletes_and_closes_the_gap(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    s1, s2, s3 = w.steps
    with acting_as(conn, "authenticated", w.owner) as c:
        deleted = c.execute("delete from public.task_steps where id = %s", [s2]).rowcount
        visible = c.execute(
            "select id, step_order from public.task_steps where task_id = %s order by step_order",
            [w.task],
        ).fetchall()
    assert deleted == 0  # PostgREST reports no row removed: the row is kept
    assert visible == [(s1, 1), (s3, 2)]
    row = conn.execute(
        "select step_order, deleted_at is not null, deleted_by from public.task_steps where id = %s",
        [s2],
    ).fetchone()
    assert row == (2, True, w.owner)  # keeps its old position for restore


def test_rest_delete_of_several_steps_in_one_statement(conn: psycopg.Connection) -> None:
    owner = make_user(conn)
    task = make_task(conn, owner, make_agent(conn, owner))
    ids = replace_steps(conn, task, [{}, {}, {}, {}, {}])
    with acting_as(conn, "authenticated", owner) as c:
        c.execute("delete from public.task_steps where id = any(%s)", [[ids[0], ids[2], ids[3]]])
    assert live_steps(conn, task) == [(ids[1], 1), (ids[4], 2)]


def test_owner_cannot_delete_the_last_step(conn: psycopg.Connection) -> None:
    owner = make_user(conn)
    task = make_task(conn, owner, make_agent(conn, owner))
    ids = replace_steps(conn, task, [{}, {}])
    with (
        pytest.raises(psycopg.errors.CheckViolation, match="needs at least one step"),
        acting_as(conn, "authenticated", owner) as c,
    ):
        c.execute("delete from public.task_steps where task_id = %s", [task])
    assert live_steps(conn, task) == [(ids[0], 1), (ids[1], 2)]
    with (
        pytest.raises(psycopg.errors.CheckViolation, match="needs at least one step"),
        acting_as(conn, "authenticated", owner) as c,
    ):
        c.execute("select public.soft_delete_task_step(%s)", [ids[0]])
        c.execute("select public.soft_delete_task_step(%s)", [ids[1]])
    assert live_steps(conn, task) == [(ids[0], 1), (ids[1], 2)]


def test_soft_delete_rpc_then_restore_at_old_position(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    s1, s2, s3 = w.steps
    with acting_as(conn, "authenticated", w.owner) as c:
        gone = c.execute(
            "select id, deleted_at is not null from public.soft_delete_task_step(%s)", [s1]
        ).fetchone()
    assert gone == (s1, True)
    assert live_steps(conn, w.task) == [(s2, 1), (s3, 2)]
    with acting_as(conn, "authenticated", w.owner) as c:
        back = c.execute(
            "select id, step_order, deleted_at from public.restore_task_step(%s)", [s1]
        ).fetchone()
    assert back == (s1, 1, None)
    assert live_steps(conn, w.task) == [(s1, 1), (s2, 2), (s3, 3)]


def test_restore_appends_when_the_old_position_is_past_the_end(conn: psycopg.Connection) -> None:
    w = build_world(conn)  # deleted_step was at position 4 of 4
    s1, s2, s3 = w.steps
    with acting_as(conn, "authenticated", w.owner) as c:
        c.execute("select public.soft_delete_task_step(%s)", [s3])
        c.execute("select public.restore_task_step(%s)", [w.deleted_step])
    assert live_steps(conn, w.task) == [(s1, 1), (s2, 2), (w.deleted_step, 3)]


def test_restore_is_refused_at_fifty_steps(conn: psycopg.Connection) -> None:
    owner = make_user(conn)
    task = make_task(conn, owner, make_agent(conn, owner))
    ids = replace_steps(conn, task, [{}] * 50)
    with acting_as(conn, "authenticated", owner) as c:
        c.execute("select public.soft_delete_task_step(%s)", [ids[10]])
        c.execute(
            "insert into public.task_steps (task_id, step_order, step_name, instructions)"
            " values (%s, 50, 'Fiftieth', 'again')",
            [task],
        )
    with (
        pytest.raises(psycopg.errors.CheckViolation, match="already has 50 steps"),
        acting_as(conn, "authenticated", owner) as c,
    ):
        c.execute("select public.restore_task_step(%s)", [ids[10]])
    assert len(live_steps(conn, task)) == 50


def test_restore_of_a_live_step_is_a_clear_error(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    with (
        pytest.raises(psycopg.errors.InvalidParameterValue, match="is not deleted"),
        acting_as(conn, "authenticated", w.owner) as c,
    ):
        c.execute("select public.restore_task_step(%s)", [w.steps[0]])


def test_purge_is_service_only_and_removes_old_soft_deleted_rows(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    conn.execute(
        "update public.task_steps set deleted_at = now() - interval '40 days' where id = %s",
        [w.deleted_step],
    )
    with acting_as(conn, "authenticated", w.owner) as c:
        c.execute("delete from public.task_steps where id = %s", [w.steps[2]])  # fresh deletion
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        acting_as(conn, "authenticated", w.owner) as c,
    ):
        c.execute("select stepsync.purge_deleted_task_steps(interval '0')")
    with acting_as(conn, "service_role") as c:
        purged = c.execute("select stepsync.purge_deleted_task_steps()").fetchone()[0]
    assert purged == 1
    remaining = conn.execute(
        "select id from public.task_steps where task_id = %s and deleted_at is not null",
        [w.task],
    ).fetchall()
    assert remaining == [(w.steps[2],)]


def test_service_role_delete_really_deletes(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    with acting_as(conn, "service_role") as c:
        assert c.execute("delete from public.task_steps where id = %s", [w.steps[0]]).rowcount == 1
    assert conn.execute(
        "select count(*) from public.task_steps where id = %s", [w.steps[0]]
    ).fetchone() == (0,)


@pytest.mark.parametrize("role", ["authenticated", "service_role"])
def test_deleting_the_task_cascades_to_every_step(conn: psycopg.Connection, role: str) -> None:
    w = build_world(conn)
    mark = conn.execute("select max(id) from public.audit_log").fetchone()[0]
    with acting_as(conn, role, w.owner if role == "authenticated" else None) as c:
        assert c.execute("delete from public.agent_tasks where id = %s", [w.task]).rowcount == 1
    assert conn.execute(
        "select count(*) from public.task_steps where task_id = %s", [w.task]
    ).fetchone() == (0,)
    # The owner can still read what happened to the task, its steps included.
    with acting_as(conn, "authenticated", w.owner) as c:
        deletes = c.execute(
            "select table_name, count(*) from public.audit_log"
            " where task_id = %s and operation = 'DELETE' and id > %s group by 1 order by 1",
            [w.task, mark],
        ).fetchall()
    assert deletes == [("agent_tasks", 1), ("task_steps", 4)]
