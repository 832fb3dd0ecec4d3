"""Helpers for the run engine tests: set up workflows and call the engine as the service does."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.support import acting_as, as_service, make_agent, make_task, make_user, replace_steps


def make_workflow(
    conn: psycopg.Connection, steps: list[dict], *, name: str = "Workflow"
) -> tuple[uuid.UUID, uuid.UUID, list[uuid.UUID]]:
    """A user, an agent and a task whose live steps are ``steps``: (user, task, step ids)."""
    user_id = make_user(conn)
    agent_id = make_agent(conn, user_id)
    task_id = make_task(conn, user_id, agent_id, name=name)
    return user_id, task_id, replace_steps(conn, task_id, [jsonb_values(s) for s in steps])


def jsonb_values(step: dict) -> dict:
    """Column values ready for psycopg: JSON as jsonb, context_paths as an array literal
    (text[] has no implicit cast to jsonpath[], an untyped literal does)."""
    values = {}
    for key, value in step.items():
        if key == "context_paths":
            quoted = ('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in value)
            values[key] = "{" + ",".join(quoted) + "}"
        elif isinstance(value, dict | list):
            values[key] = Jsonb(value)
        else:
            values[key] = value
    return values


def start_run(
    conn: psycopg.Connection,
    task_id: uuid.UUID,
    *,
    as_user: uuid.UUID | None = None,
    trigger_type: str = "manual",
    trigger_data: dict | None = None,
) -> uuid.UUID:
    """Start a run as the service does, or with ``as_user`` as that signed-in user does
    through PostgREST."""
    caller = acting_as(conn, "authenticated", as_user) if as_user else as_service(conn)
    with caller:
        return conn.execute(
            "select public.start_task_run(%s, %s, %s)",
            [task_id, trigger_type, Jsonb(trigger_data or {})],
        ).fetchone()[0]


def claim(
    conn: psycopg.Connection, worker: str = "worker-1", batch: int = 10, lease: int = 60
) -> list[dict]:
    with as_service(conn), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select * from stepsync.claim_steps(%s, %s, %s)", [worker, batch, lease]
        ).fetchall()


def claim_one(conn: psycopg.Connection, **kwargs: Any) -> dict:
    claimed = claim(conn, **kwargs)
    assert len(claimed) == 1, claimed
    return claimed[0]


def complete(conn: psycopg.Connection, step: dict, output: Any) -> bool:
    with as_service(conn):
        return conn.execute(
            "select stepsync.complete_step(%s, %s, %s)",
            [step["step_execution_id"], step["lease_token"], Jsonb(output)],
        ).fetchone()[0]


def fail(conn: psycopg.Connection, step: dict, error: str, retryable: bool = True) -> str:
    with as_service(conn):
        return conn.execute(
            "select stepsync.fail_step(%s, %s, %s, %s)",
            [step["step_execution_id"], step["lease_token"], error, retryable],
        ).fetchone()[0]


def run_row(conn: psycopg.Connection, run_id: uuid.UUID) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select * from public.agent_task_executions where id = %s", [run_id]
        ).fetchone()


def step_rows(conn: psycopg.Connection, run_id: uuid.UUID) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select * from public.task_step_executions where run_id = %s order by step_order",
            [run_id],
        ).fetchall()


def statuses(conn: psycopg.Connection, run_id: uuid.UUID) -> list[str]:
    return [row["status"] for row in step_rows(conn, run_id)]


def make_due(conn: psycopg.Connection, run_id: uuid.UUID) -> None:
    """Stand in for the passing of time: queued steps of the run become due now."""
    conn.execute(
        "update public.task_step_executions set run_after = now()"
        " where run_id = %s and status = 'queued'",
        [run_id],
    )
