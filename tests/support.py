"""Helpers shared by the tests: acting as a PostgREST caller, making users and tasks."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator

import psycopg


@contextlib.contextmanager
def acting_as(
    conn: psycopg.Connection, role: str, user_id: uuid.UUID | None = None
) -> Iterator[psycopg.Connection]:
    """Run the block the way PostgREST runs a request: one transaction, the API role
    set locally and the JWT claims in ``request.jwt.claims``. The block's changes
    are committed unless it raises."""
    claims = {"role": role}
    if user_id is not None:
        claims["sub"] = str(user_id)
    with conn.transaction():
        conn.execute(f"set local role {role}")
        conn.execute("select set_config('request.jwt.claims', %s, true)", [json.dumps(claims)])
        yield conn


def make_user(conn: psycopg.Connection, email: str | None = None) -> uuid.UUID:
    user_id = uuid.uuid4()
    conn.execute(
        "insert into auth.users (id, email) values (%s, %s)",
        [user_id, email or f"{user_id.hex[:8]}@example.test"],
    )
    return user_id


def make_agent(conn: psycopg.Connection, user_id: uuid.UUID, name: str = "Agent") -> uuid.UUID:
    return conn.execute(
        "insert into public.agents (user_id, name) values (%s, %s) returning id", [user_id, name]
    ).fetchone()[0]


def make_task(
    conn: psycopg.Connection,
    user_id: uuid.UUID,
    agent_id: uuid.UUID,
    *,
    name: str = "Task",
    instructions: str = "Summarise the inbox",
    status: str = "active",
) -> uuid.UUID:
    return conn.execute(
        "insert into public.agent_tasks (agent_id, user_id, name, instructions, status)"
        " values (%s, %s, %s, %s, %s) returning id",
        [agent_id, user_id, name, instructions, status],
    ).fetchone()[0]


def replace_steps(
    conn: psycopg.Connection, task_id: uuid.UUID, steps: list[dict]
) -> list[uuid.UUID]:
    """Make ``steps`` the task's live steps, in order (as superuser; test set-up only).

    Earlier live steps (a task created through the legacy path may already have step 1)
    are soft-deleted first. Each dict holds task_steps columns; step_order, step_name and
    instructions default from the position. Returns the new step ids in order.
    """
    conn.execute(
        "update public.task_steps set deleted_at = now() where task_id = %s and deleted_at is null",
        [task_id],
    )
    ids = []
    for position, step in enumerate(steps, start=1):
        row = {
            "step_order": position,
            "step_name": f"Step {position}",
            "instructions": f"Do part {position}",
            **step,
            "task_id": task_id,
        }
        columns = ", ".join(row)
        values = ", ".join(f"%({name})s" for name in row)
        ids.append(
            conn.execute(
                f"insert into public.task_steps ({columns}) values ({values}) returning id", row
            ).fetchone()[0]
        )
    return ids
