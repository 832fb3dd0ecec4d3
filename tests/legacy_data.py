"""Legacy data as it exists before the compatibility triggers: tasks without steps.

Rows are written with ``session_replication_role = replica`` (triggers off), exactly the
state a project is in when the backfill migrations are first applied.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg


@contextmanager
def triggers_off(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    with conn.transaction():
        conn.execute("set local session_replication_role = replica")
        yield conn


def legacy_task(
    conn: psycopg.Connection,
    user_id: uuid.UUID,
    agent_id: uuid.UUID,
    *,
    name: str = "Legacy task",
    instructions: str = "Summarise the inbox",
    status: str = "active",
) -> uuid.UUID:
    """One pre-existing legacy task (no step, no trigger fired)."""
    with triggers_off(conn):
        return conn.execute(
            "insert into public.agent_tasks (agent_id, user_id, name, instructions, status)"
            " values (%s, %s, %s, %s, %s) returning id",
            [agent_id, user_id, name, instructions, status],
        ).fetchone()[0]


def generate_legacy_tasks(
    conn: psycopg.Connection, user_id: uuid.UUID, agent_id: uuid.UUID, count: int
) -> None:
    """``count`` plain legacy tasks in one statement (names and texts numbered)."""
    with triggers_off(conn):
        conn.execute(
            "insert into public.agent_tasks (agent_id, user_id, name, instructions, status)"
            " select %s, %s, 'Task ' || n, 'Do thing number ' || n,"
            " (array['active','paused','completed','failed','cancelled'])[1 + n %% 5]"
            "::public.task_status_enum"
            " from generate_series(1, %s) as n",
            [agent_id, user_id, count],
        )


def live_steps(conn: psycopg.Connection, task_id: uuid.UUID) -> list[tuple]:
    """(step_order, step_name, instructions, status) of the task's live steps, in order."""
    return conn.execute(
        "select step_order, step_name, instructions, status::text from public.task_steps"
        " where task_id = %s and deleted_at is null order by step_order",
        [task_id],
    ).fetchall()


def task_instructions(conn: psycopg.Connection, task_id: uuid.UUID) -> str:
    return conn.execute(
        "select instructions from public.agent_tasks where id = %s", [task_id]
    ).fetchone()[0]
