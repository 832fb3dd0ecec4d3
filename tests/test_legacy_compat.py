"""Online compatibility: legacy writes to agent_tasks and writes to task_steps stay in step."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.support import (
    acting_as,
    live_steps,
    make_agent,
    make_task,
    make_user,
    replace_steps,
    task_instructions,
)


@pytest.fixture
def owner(conn: psycopg.Connection) -> tuple[uuid.UUID, uuid.UUID]:
    user_id = make_user(conn)
    return user_id, make_agent(conn, user_id)


def legacy_insert(conn, user_id, agent_id, **values) -> uuid.UUID:
    """Insert a task the way the legacy app does: through PostgREST, as its owner."""
    row = {"name": "Morning digest", "instructions": "Digest it", "status": "active", **values}
    with acting_as(conn, "authenticated", user_id):
        return make_task(conn, user_id, agent_id, **row)


def legacy_update(conn, user_id, task_id, instructions: str) -> None:
    with acting_as(conn, "authenticated", user_id):
        conn.execute(
            "update public.agent_tasks set instructions = %s where id = %s",
            [instructions, task_id],
        )


def test_a_legacy_insert_gets_step_1(conn: psycopg.Connection, owner) -> None:
    task_id = legacy_insert(conn, *owner, name="Morning digest", instructions="Digest it")
    assert live_steps(conn, task_id) == [(1, "Morning digest", "Digest it", "pending")]


@pytest.mark.parametrize(
    ("status", "step_status"),
    [("paused", "pending"), ("completed", "completed"), ("cancelled", "cancelled")],
)
def test_the_step_status_reflects_the_task_status(
    conn: psycopg.Connection, owner, status: str, step_status: str
) -> None:
    task_id = legacy_insert(conn, *owner, status=status)
    assert live_steps(conn, task_id)[0][3] == step_status


@pytest.mark.parametrize("instructions", ["", "  \n ", "Multi-step task with 2 steps"])
def test_no_step_from_text_that_cannot_make_one(
    conn: psycopg.Connection, owner, instructions: str
) -> None:
    task_id = legacy_insert(conn, *owner, instructions=instructions)
    assert live_steps(conn, task_id) == []


def test_editing_a_single_step_tasks_instructions_updates_step_1_and_back(
    conn: psycopg.Connection, owner
) -> None:
    user_id, agent_id = owner
    task_id = legacy_insert(conn, user_id, agent_id)
    legacy_update(conn, user_id, task_id, "Digest it, shorter")
    assert live_steps(conn, task_id)[0][2] == "Digest it, shorter"

    # As the service role (the owner's step policies belong to the schema migrations).
    with acting_as(conn, "service_role"):
        conn.execute(
            "update public.task_steps set instructions = 'From the new editor' where task_id = %s",
            [task_id],
        )
    assert task_instructions(conn, task_id) == "From the new editor"
    assert live_steps(conn, task_id)[0][2] == "From the new editor"


def test_multi_step_tasks_keep_a_readable_summary(conn: psycopg.Connection, owner) -> None:
    user_id, agent_id = owner
    task_id = make_task(conn, user_id, agent_id, instructions="One thing")
    conn.execute(
        "insert into public.task_steps (task_id, step_order, step_name, instructions)"
        " values (%s, 2, 'Summarise', 'Summarise it'), (%s, 3, 'Send', 'Send it')",
        [task_id, task_id],
    )
    assert task_instructions(conn, task_id) == (
        "Multi-step task with 3 steps: 1. Task; 2. Summarise; 3. Send"
    )
    conn.execute(
        "update public.task_steps set step_name = 'Mail' where task_id = %s and step_order = 3",
        [task_id],
    )
    assert task_instructions(conn, task_id).endswith("3. Mail")

    # Back to one live step: the task's text is that step's again.
    conn.execute(
        "update public.task_steps set deleted_at = now() where task_id = %s and step_order > 1",
        [task_id],
    )
    assert task_instructions(conn, task_id) == "One thing"


def test_free_text_on_a_multi_step_task_is_refused(conn: psycopg.Connection, owner) -> None:
    user_id, agent_id = owner
    task_id = make_task(conn, user_id, agent_id)
    replace_steps(conn, task_id, [{}, {}])
    summary = task_instructions(conn, task_id)
    with pytest.raises(psycopg.errors.CheckViolation, match="has 2 steps"):
        legacy_update(conn, user_id, task_id, "Just do it all")
    assert task_instructions(conn, task_id) == summary
    # The earlier variant's marker text is accepted (it says the same thing).
    legacy_update(conn, user_id, task_id, "Multi-step task with 2 steps")
    assert len(live_steps(conn, task_id)) == 2


def test_blanking_a_single_step_tasks_instructions_is_refused(
    conn: psycopg.Connection, owner
) -> None:
    user_id, agent_id = owner
    task_id = legacy_insert(conn, user_id, agent_id)
    with pytest.raises(psycopg.errors.CheckViolation, match="cannot be blank"):
        legacy_update(conn, user_id, task_id, "   ")
    assert task_instructions(conn, task_id) == "Digest it"
    assert live_steps(conn, task_id)[0][2] == "Digest it"


def test_a_task_without_live_steps_gets_step_1_when_its_text_is_edited(
    conn: psycopg.Connection, owner
) -> None:
    user_id, agent_id = owner
    task_id = legacy_insert(conn, user_id, agent_id, instructions="")
    legacy_update(conn, user_id, task_id, "Now there is something to do")
    assert live_steps(conn, task_id) == [
        (1, "Morning digest", "Now there is something to do", "pending")
    ]


def test_bulk_step_changes_sync_once_and_do_not_recurse(conn: psycopg.Connection, owner) -> None:
    """One statement over many steps of many tasks: each task is written once."""
    user_id, agent_id = owner
    tasks = [make_task(conn, user_id, agent_id, instructions=f"Text {n}") for n in range(5)]
    conn.execute("create table public.task_writes (task_id uuid)")
    conn.execute(
        "create function public.count_task_writes() returns trigger language plpgsql as"
        " $$ begin insert into public.task_writes values (new.id); return null; end $$"
    )
    conn.execute(
        "create trigger count_task_writes after update on public.agent_tasks"
        " for each row execute function public.count_task_writes()"
    )
    conn.execute(
        "update public.task_steps set instructions = instructions || ' (v2)'"
        " where task_id = any(%s)",
        [tasks],
    )
    writes = conn.execute(
        "select task_id, count(*) from public.task_writes group by task_id"
    ).fetchall()
    assert sorted(writes) == sorted((t, 1) for t in tasks)
    for n, task_id in enumerate(tasks):
        assert task_instructions(conn, task_id) == f"Text {n} (v2)"


def test_deleting_a_task_still_cascades_to_its_steps(conn: psycopg.Connection, owner) -> None:
    user_id, agent_id = owner
    task_id = legacy_insert(conn, user_id, agent_id)
    replace_steps(conn, task_id, [{}, {}, {}])
    with acting_as(conn, "authenticated", user_id):
        conn.execute("delete from public.agent_tasks where id = %s", [task_id])
    assert conn.execute(
        "select count(*) from public.task_steps where task_id = %s", [task_id]
    ).fetchone() == (0,)


def test_the_compat_flag_switches_it_all_off(conn: psycopg.Connection, owner) -> None:
    user_id, agent_id = owner
    conn.execute(
        "update stepsync.feature_flags set enabled = false where name = 'legacy_task_compat'"
    )
    task_id = legacy_insert(conn, user_id, agent_id)
    assert live_steps(conn, task_id) == []


def test_the_legacy_api_contract_still_holds(conn: psycopg.Connection, owner) -> None:
    """The legacy app reads and writes agent_tasks as before; another user sees nothing."""
    user_id, agent_id = owner
    task_id = legacy_insert(conn, user_id, agent_id, instructions="Digest it")
    with acting_as(conn, "authenticated", user_id):
        row = conn.execute(
            "select name, instructions, status::text from public.agent_tasks where id = %s",
            [task_id],
        ).fetchone()
    assert row == ("Morning digest", "Digest it", "active")
    stranger = make_user(conn)
    with acting_as(conn, "authenticated", stranger):
        assert (
            conn.execute(
                "update public.agent_tasks set instructions = 'hijack' where id = %s returning id",
                [task_id],
            ).fetchall()
            == []
        )
    assert live_steps(conn, task_id)[0][2] == "Digest it"
