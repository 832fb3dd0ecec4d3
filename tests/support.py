"""Shared by the tests: acting as a PostgREST caller or as the service, making users,
agents, tasks and steps, and legacy data as it exists before the compatibility triggers."""

from __future__ import annotations

import contextlib
import json
import logging
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


@contextlib.contextmanager
def as_service(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """One transaction as the service runs it: ``set role service_role``, no JWT claims."""
    with conn.transaction():
        conn.execute("set local role service_role")
        yield conn


@contextlib.contextmanager
def triggers_off(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """One transaction with ``session_replication_role = replica``: rows written in it
    are in the state a project is in before the backfill migrations (no step made)."""
    with conn.transaction():
        conn.execute("set local session_replication_role = replica")
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


def run_statuses(conn: psycopg.Connection, run_ids: list[uuid.UUID]) -> dict[str, int]:
    """How many of the runs are in each status."""
    rows = conn.execute(
        "select status::text, count(*) from public.agent_task_executions"
        " where id = any(%s) group by 1",
        [run_ids],
    ).fetchall()
    return dict(rows)


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
        return make_task(
            conn, user_id, agent_id, name=name, instructions=instructions, status=status
        )


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


@contextlib.contextmanager
def log_records(logger_name: str) -> Iterator[list[logging.LogRecord]]:
    """The records one logger emits during the block, caught at that logger: the
    service's log setup may keep ``sync`` records from the root logger (pytest's caplog)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
