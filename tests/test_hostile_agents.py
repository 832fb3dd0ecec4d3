"""A run never executes an agent its owner does not own: the task's own agent is checked
like a step's override, on every write and again at start; tasks written before the rule
are reported when the migration runs, and refused, never run."""

from __future__ import annotations

import psycopg
import pytest

from sync import migrations
from tests.hostile_support import refused, written
from tests.run_engine_support import make_workflow
from tests.support import acting_as, make_agent, make_task, make_user, triggers_off


@pytest.fixture
def two_users(conn: psycopg.Connection) -> tuple:
    """(owner, owner's agent, owner's task, stranger's agent)."""
    owner, stranger = make_user(conn), make_user(conn)
    agent = make_agent(conn, owner)
    task_id = make_task(conn, owner, agent)
    return owner, agent, task_id, make_agent(conn, stranger, "Someone else's")


def test_an_owner_cannot_point_a_task_at_another_users_agent(
    conn: psycopg.Connection, two_users: tuple
) -> None:
    owner, agent, task_id, foreign_agent = two_users
    before = written(conn)
    with refused(conn, "authenticated", owner) as insert:
        conn.execute(
            "insert into public.agent_tasks (agent_id, user_id, name, instructions)"
            " values (%s, %s, 'Borrowed', 'Run with their agent')",
            [foreign_agent, owner],
        )
    with refused(conn, "authenticated", owner) as update:
        conn.execute(
            "update public.agent_tasks set agent_id = %s where id = %s", [foreign_agent, task_id]
        )
    # The legacy policy checked only user_id. The row check answers first, and the agent
    # of another user is invisible to the owner: the same error as for a missing one.
    assert (insert.sqlstate, update.sqlstate) == ("23514", "23514")
    assert (
        insert.message
        == update.message
        == (f"agent_id: agent {foreign_agent} does not belong to the task's owner")
    )
    assert written(conn) == before
    # Their own agents are fine.
    with acting_as(conn, "authenticated", owner):
        conn.execute(
            "update public.agent_tasks set agent_id = %s, name = 'Renamed' where id = %s",
            [agent, task_id],
        )


def test_the_owner_policy_refuses_it_on_its_own(conn: psycopg.Connection, two_users: tuple) -> None:
    owner, _, task_id, foreign_agent = two_users
    before = written(conn)
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
        conn.transaction(),
    ):
        conn.execute("alter table public.agent_tasks disable trigger agent_tasks_check_agent")
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)", [f'{{"sub": "{owner}"}}'])
        conn.execute(
            "update public.agent_tasks set agent_id = %s where id = %s", [foreign_agent, task_id]
        )
    assert written(conn) == before


def test_the_service_is_held_to_it_too(conn: psycopg.Connection, two_users: tuple) -> None:
    owner, _, task_id, foreign_agent = two_users
    before = written(conn)
    with refused(conn, "service_role") as refusal:
        conn.execute(
            "update public.agent_tasks set agent_id = %s where id = %s", [foreign_agent, task_id]
        )
    assert refusal.sqlstate == "23514"
    assert refusal.message == (
        f"agent_id: agent {foreign_agent} does not belong to the task's owner"
    )
    assert written(conn) == before
    assert owner


def test_a_task_written_before_the_rule_is_refused_at_start_and_reported(
    conn: psycopg.Connection, two_users: tuple
) -> None:
    owner, _, task_id, foreign_agent = two_users
    with triggers_off(conn):
        conn.execute(
            "update public.agent_tasks set agent_id = %s where id = %s", [foreign_agent, task_id]
        )
    before = written(conn)
    with refused(conn, "authenticated", owner) as refusal:
        conn.execute("select public.start_task_run(%s)", [task_id])
    assert refusal.sqlstate == "22023"
    assert refusal.message == (
        f"task {task_id} runs with agent {foreign_agent}, which does not belong to the task's owner"
    )
    assert written(conn) == before
    with acting_as(conn, "authenticated", owner):
        problems = conn.execute("select public.validate_task_steps(%s)", [task_id]).fetchone()[0]
    assert [(p["code"], p["field"]) for p in problems] == [("foreign_task_agent", "agent_id")]
    listed = conn.execute(
        "select task_id, user_id, agent_id from stepsync.tasks_with_foreign_agents()"
    ).fetchall()
    assert listed == [(task_id, owner, foreign_agent)]


def test_the_migration_reports_tasks_whose_agent_is_not_their_owners(
    blank_db_url: str,
) -> None:
    migrations.push(blank_db_url, up_to="20261126001000")
    with psycopg.connect(blank_db_url, autocommit=True) as conn:
        owner, stranger = make_user(conn), make_user(conn)
        task_id = make_task(conn, owner, make_agent(conn, stranger))
    warnings: list[str] = []
    migrations.push(blank_db_url, on_warning=warnings.append)
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "1 task(s) name an agent their owner does not own: start_task_run refuses them"
    )
    assert f"task {task_id} (owner {owner}) uses agent" in warnings[0]
    assert "stepsync.tasks_with_foreign_agents()" in warnings[0]


def test_a_step_override_and_the_task_agent_are_both_checked(conn: psycopg.Connection) -> None:
    owner, _, step_ids = make_workflow(conn, [{}])
    foreign_agent = make_agent(conn, make_user(conn))
    before = written(conn)
    with refused(conn, "authenticated", owner) as refusal:
        conn.execute(
            "update public.task_steps set agent_id = %s where id = %s", [foreign_agent, step_ids[0]]
        )
    assert refusal.sqlstate == "23514"
    assert written(conn) == before
