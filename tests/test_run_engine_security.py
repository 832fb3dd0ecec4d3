"""Who may do what with runs: service-only functions, owners and other users, RLS."""

from __future__ import annotations

import psycopg
import pytest

from tests.run_engine_support import claim_one, complete, make_workflow, start_run
from tests.support import acting_as, make_user

SERVICE_CALLS = [
    "select * from stepsync.claim_steps('w', 1, 30)",
    "select * from stepsync.heartbeat_steps('w', '{}'::uuid[], '{}'::bigint[], 30)",
    "select stepsync.complete_step(gen_random_uuid(), 1, '{}'::jsonb)",
    "select * from stepsync.complete_steps('{}'::uuid[], '{}'::bigint[], '{}'::jsonb[])",
    "select * from stepsync.lease_steps('{}'::uuid[], 'w', 30)",
    "select stepsync.fail_step(gen_random_uuid(), 1, 'e')",
    "select stepsync.release_steps('w', '{}'::uuid[], '{}'::bigint[])",
    "select stepsync.reap_expired_leases(0)",
    "select stepsync.queue_depth()",
    "select stepsync.advance_runs(array[gen_random_uuid()])",
    "select stepsync.finish_runs('{}'::uuid[], 'failed')",
    "select stepsync.run_context(gen_random_uuid())",
    "select * from stepsync.run_context_heads",
    "select * from stepsync.run_context_entries",
]


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize("call", SERVICE_CALLS, ids=lambda c: c.split("(")[0].split(".")[-1])
def test_api_roles_cannot_execute_service_functions(
    conn: psycopg.Connection, role: str, call: str
) -> None:
    user_id = make_user(conn)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, role, user_id):
        conn.execute(call)


def test_service_functions_are_granted_to_service_role_only(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        """
        select p.oid::regprocedure::text, r.rolname,
               has_function_privilege(r.rolname, p.oid, 'execute')
          from pg_proc as p
          cross join (values ('anon'), ('authenticated'), ('service_role')) as r (rolname)
         where p.pronamespace = 'stepsync'::regnamespace
           and p.proname in ('claim_steps', 'heartbeat_steps', 'complete_step', 'complete_steps', 'lease_steps', 'fail_step',
                             'release_steps', 'reap_expired_leases', 'queue_depth')
        """
    ).fetchall()
    assert len(rows) == 27
    for function, role, allowed in rows:
        assert allowed is (role == "service_role"), (function, role)


def test_owner_starts_previews_and_cancels_their_own_runs(conn: psycopg.Connection) -> None:
    owner, task_id, step_ids = make_workflow(conn, [{}, {}])
    with acting_as(conn, "authenticated", owner):
        run_id = conn.execute("select public.start_task_run(%s)", [task_id]).fetchone()[0]
        preview = conn.execute("select public.preview_task_run(%s)", [task_id]).fetchone()[0]
        step_preview = conn.execute(
            "select public.preview_step_context(%s)", [step_ids[1]]
        ).fetchone()[0]
        runs = conn.execute("select id from public.agent_task_executions").fetchall()
        steps = conn.execute("select count(*) from public.task_step_executions").fetchone()[0]
        assert conn.execute("select public.cancel_task_run(%s)", [run_id]).fetchone()[0]
    assert [step["order"] for step in preview["steps"]] == [1, 2]
    assert step_preview["step_id"] == str(step_ids[1])
    assert runs == [(run_id,)]
    assert steps == 2


def test_other_users_cannot_touch_a_run(conn: psycopg.Connection) -> None:
    owner, task_id, step_ids = make_workflow(conn, [{}])
    run_id = start_run(conn, task_id)
    intruder = make_user(conn)
    attempts = [
        ("select public.start_task_run(%s)", task_id),
        ("select public.cancel_task_run(%s)", run_id),
        ("select public.preview_task_run(%s)", task_id),
        ("select public.preview_step_context(%s)", step_ids[0]),
    ]
    for sql, argument in attempts:
        with (
            pytest.raises(psycopg.errors.NoDataFound, match="not found"),
            acting_as(conn, "authenticated", intruder),
        ):
            conn.execute(sql, [argument])
    with acting_as(conn, "authenticated", intruder):
        assert conn.execute("select count(*) from public.agent_task_executions").fetchone()[0] == 0
        assert conn.execute("select count(*) from public.task_step_executions").fetchone()[0] == 0
    assert (
        conn.execute(
            "select status::text from public.agent_task_executions where id = %s", [run_id]
        ).fetchone()[0]
        == "running"
    )
    assert owner != intruder


@pytest.mark.parametrize(
    "call",
    [
        "select public.start_task_run(gen_random_uuid())",
        "select public.cancel_task_run(gen_random_uuid())",
        "select public.preview_task_run(gen_random_uuid())",
        "select public.preview_step_context(gen_random_uuid())",
    ],
)
def test_anon_cannot_call_run_rpcs(conn: psycopg.Connection, call: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, "anon"):
        conn.execute(call)


def test_owners_cannot_write_run_rows_directly(conn: psycopg.Connection) -> None:
    owner, task_id, _ = make_workflow(conn, [{}])
    run_id = start_run(conn, task_id)
    step = claim_one(conn)
    refused = [
        "update public.task_step_executions set status = 'completed'",
        "delete from public.task_step_executions",
        "insert into public.agent_task_executions (task_id, agent_id, instructions_used)"
        " select task_id, agent_id, 'x' from public.agent_task_executions",
    ]
    for sql in refused:
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            acting_as(conn, "authenticated", owner),
        ):
            conn.execute(sql)
    # RLS gives owners no row to change on the runs table.
    for sql in [
        "update public.agent_task_executions set status = 'completed'",
        "delete from public.agent_task_executions",
    ]:
        with acting_as(conn, "authenticated", owner):
            assert conn.execute(sql).rowcount == 0
    assert complete(conn, step, {"ok": True})
    assert (
        conn.execute(
            "select status::text from public.agent_task_executions where id = %s", [run_id]
        ).fetchone()[0]
        == "completed"
    )


def test_authenticated_role_without_claims_is_not_the_service(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(conn, [{}])
    with pytest.raises(psycopg.errors.NoDataFound), conn.transaction():
        conn.execute("set local role authenticated")
        conn.execute("select public.start_task_run(%s)", [task_id])
