"""Who may do what to steps, the audit log and runs: anon, the task owner, another
signed-in user and the service role, each against every operation and RPC, called the
way PostgREST calls them. Every attempt is rolled back, so each one sees the same data."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.fixtures.task_world import ACTORS, World, attempt, build_world, role_and_user

DENIED = ("error", "42501")
NOT_FOUND = ("error", "P0002")


def step_state(step_id):
    def effect(conn: psycopg.Connection) -> str:
        row = conn.execute(
            "select deleted_at is not null from public.task_steps where id = %s", [step_id]
        ).fetchone()
        return "gone" if row is None else ("soft-deleted" if row[0] else "live")

    return effect


def cases(w: World) -> dict[str, tuple]:
    """name -> (sql, params, effect, {actor: expected outcome})"""
    s1, s2, s3 = w.steps
    one_step = Jsonb([{"instructions": "only this"}])
    return {
        "steps: select the task's steps": (
            "select id from public.task_steps where task_id = %s",
            [w.task],
            None,
            {
                "anon": DENIED,
                "owner": ("ok", [(s1,), (s2,), (s3,)]),
                "other": ("ok", []),
                "service_role": ("ok", 4),
            },
        ),
        "steps: select a soft-deleted step": (
            "select id from public.task_steps where id = %s",
            [w.deleted_step],
            None,
            {
                "anon": DENIED,
                "owner": ("ok", []),
                "other": ("ok", []),
                "service_role": ("ok", [(w.deleted_step,)]),
            },
        ),
        "steps: insert into the task": (
            "insert into public.task_steps (task_id, step_order, step_name, instructions)"
            " values (%s, 4, 'Added', 'More') returning task_id",
            [w.task],
            None,
            {
                "anon": DENIED,
                "owner": ("ok", [(w.task,)]),
                "other": DENIED,
                "service_role": ("ok", [(w.task,)]),
            },
        ),
        "steps: update every step of the task": (
            "update public.task_steps set step_name = 'Renamed' where task_id = %s",
            [w.task],
            None,
            {"anon": DENIED, "owner": ("ok", 3), "other": ("ok", 0), "service_role": ("ok", 4)},
        ),
        "steps: update the soft-deleted step": (
            "update public.task_steps set step_name = 'Renamed' where id = %s",
            [w.deleted_step],
            None,
            {"anon": DENIED, "owner": ("ok", 0), "other": ("ok", 0), "service_role": ("ok", 1)},
        ),
        "steps: soft delete by PATCH (not the way: DELETE is)": (
            "update public.task_steps set deleted_at = now() where id = %s",
            [s3],
            step_state(s3),
            {
                "anon": DENIED,
                "owner": DENIED,
                "other": ("ok", (0, "live")),
                "service_role": ("ok", (1, "soft-deleted")),
            },
        ),
        "steps: delete a step": (
            "delete from public.task_steps where id = %s",
            [s3],
            step_state(s3),
            {
                "anon": DENIED,
                "owner": ("ok", (0, "soft-deleted")),
                "other": ("ok", (0, "live")),
                "service_role": ("ok", (1, "gone")),
            },
        ),
        "rpc: save_task_steps": (
            "select count(*) from public.save_task_steps(%s, %s)",
            [w.task, one_step],
            None,
            {
                "anon": DENIED,
                "owner": ("ok", [(1,)]),
                "other": NOT_FOUND,
                "service_role": ("ok", [(1,)]),
            },
        ),
        "rpc: reorder_task_steps": (
            "select array_agg(id order by step_order) from public.reorder_task_steps(%s, %s)",
            [w.task, [s3, s2, s1]],
            None,
            {
                "anon": DENIED,
                "owner": ("ok", [([s3, s2, s1],)]),
                "other": NOT_FOUND,
                "service_role": ("ok", [([s3, s2, s1],)]),
            },
        ),
        "rpc: validate_task_steps": (
            "select public.validate_task_steps(%s)",
            [w.task],
            None,
            {
                "anon": DENIED,
                "owner": ("ok", [([],)]),
                "other": NOT_FOUND,
                "service_role": ("ok", [([],)]),
            },
        ),
        "rpc: soft_delete_task_step": (
            "select id from public.soft_delete_task_step(%s)",
            [s2],
            step_state(s2),
            {
                "anon": DENIED,
                "owner": ("ok", ([(s2,)], "soft-deleted")),
                "other": NOT_FOUND,
                "service_role": ("ok", ([(s2,)], "soft-deleted")),
            },
        ),
        "rpc: restore_task_step": (
            "select id from public.restore_task_step(%s)",
            [w.deleted_step],
            step_state(w.deleted_step),
            {
                "anon": DENIED,
                "owner": ("ok", ([(w.deleted_step,)], "live")),
                "other": NOT_FOUND,
                "service_role": ("ok", ([(w.deleted_step,)], "live")),
            },
        ),
        "rpc: stepsync.restore_task_step called directly": (
            "select id from stepsync.restore_task_step(%s)",
            [w.deleted_step],
            None,
            {
                "anon": DENIED,
                "owner": ("ok", [(w.deleted_step,)]),
                "other": NOT_FOUND,
                "service_role": ("ok", [(w.deleted_step,)]),
            },
        ),
        "service only: stepsync.purge_deleted_task_steps": (
            "select stepsync.purge_deleted_task_steps(interval '0')",
            [],
            None,
            {"anon": DENIED, "owner": DENIED, "other": DENIED, "service_role": ("ok", [(1,)])},
        ),
        "audit: select the task's history": (
            "select count(*) > 0 from public.audit_log where task_id = %s",
            [w.task],
            None,
            {
                "anon": DENIED,
                "owner": ("ok", [(True,)]),
                "other": ("ok", [(False,)]),
                "service_role": ("ok", [(True,)]),
            },
        ),
        "audit: insert a forged row": (
            "insert into public.audit_log (table_schema, table_name, operation, task_id,"
            " owner_id, actor_role) values ('public', 'task_steps', 'DELETE', %s, %s, 'x')",
            [w.task, w.owner],
            None,
            dict.fromkeys(ACTORS, DENIED),
        ),
        "audit: update history": (
            "update public.audit_log set tag = 'forged' where task_id = %s",
            [w.task],
            None,
            dict.fromkeys(ACTORS, DENIED),
        ),
        "audit: delete history": (
            "delete from public.audit_log where task_id = %s",
            [w.task],
            None,
            dict.fromkeys(ACTORS, DENIED),
        ),
        "runs: select the task's runs": (
            "select id from public.agent_task_executions where task_id = %s",
            [w.task],
            None,
            {
                "anon": DENIED,
                "owner": ("ok", [(w.run,)]),
                "other": ("ok", []),
                "service_role": ("ok", [(w.run,)]),
            },
        ),
        "runs: insert a run": (
            "insert into public.agent_task_executions (task_id, agent_id, instructions_used)"
            " values (%s, %s, 'x')",
            [w.task, w.agent],
            None,
            {"anon": DENIED, "owner": DENIED, "other": DENIED, "service_role": ("ok", 1)},
        ),
        "runs: update runs": (
            "update public.agent_task_executions set output = 'forged' where task_id = %s",
            [w.task],
            None,
            {"anon": DENIED, "owner": ("ok", 0), "other": ("ok", 0), "service_role": ("ok", 1)},
        ),
        "runs: delete runs": (
            "delete from public.agent_task_executions where task_id = %s",
            [w.task],
            None,
            {"anon": DENIED, "owner": ("ok", 0), "other": ("ok", 0), "service_role": ("ok", 1)},
        ),
    }


@pytest.mark.parametrize("actor", ACTORS)
def test_rls_matrix(conn: psycopg.Connection, actor: str) -> None:
    world = build_world(conn)
    role, user_id = role_and_user(world, actor)
    before = conn.execute(
        "select (select count(*) from public.audit_log),"
        " (select md5(string_agg(t::text, ',' order by id)) from public.task_steps as t)"
    ).fetchone()
    mismatches = []
    for name, (sql, params, effect, expected) in cases(world).items():
        outcome = attempt(conn, role, user_id, sql, params, effect)
        if outcome[0] == "ok" and isinstance(expected[actor][1], int):
            outcome = ("ok", len(outcome[1]) if isinstance(outcome[1], list) else outcome[1])
        if outcome != expected[actor]:
            mismatches.append(f"{name}: expected {expected[actor]}, got {outcome}")
    assert mismatches == []
    after = conn.execute(
        "select (select count(*) from public.audit_log),"
        " (select md5(string_agg(t::text, ',' order by id)) from public.task_steps as t)"
    ).fetchone()
    assert after == before  # every attempt was rolled back: nothing leaked into the data
