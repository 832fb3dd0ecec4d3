"""Helpers for the schedule, event and takeover tests: scheduled tasks, the scheduler under
a clock the test sets, and runs taken to their end as a worker would."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from sync.db import Database
from sync.metrics import Metrics
from sync.scheduler import Scheduler, TickResult
from tests.run_engine_support import claim, complete


def scheduled_task(
    conn: psycopg.Connection,
    user_id: uuid.UUID,
    agent_id: uuid.UUID,
    *,
    cron: str | None = "0 9 * * *",
    timezone: str = "UTC",
    next_run_at: datetime | None = None,
    name: str = "Scheduled task",
    **columns: Any,
) -> uuid.UUID:
    """An active scheduled task (its step 1 comes from its instructions)."""
    row = {
        "agent_id": agent_id,
        "user_id": user_id,
        "name": name,
        "instructions": "Summarise the inbox",
        "task_type": "scheduled",
        "cron_expression": cron,
        "timezone": timezone,
        "next_run_at": next_run_at,
        **columns,
    }
    names = ", ".join(row)
    values = ", ".join(f"%({key})s" for key in row)
    return conn.execute(
        f"insert into public.agent_tasks ({names}) values ({values}) returning id", row
    ).fetchone()[0]


def fire(db_url: str, now: datetime, *, worker: str = "scheduler-1", batch: int = 50) -> TickResult:
    """One scheduler tick at ``now``, as ``stepsync serve`` runs it."""

    async def tick() -> TickResult:
        db = Database(db_url, size=2)
        await db.open()
        try:
            scheduler = Scheduler(
                db, 1.0, batch_size=batch, worker=worker, metrics=Metrics(), clock=lambda: now
            )
            return await scheduler.tick()
        finally:
            await db.close()

    return asyncio.run(tick())


def finish_runs(conn: psycopg.Connection) -> int:
    """Complete every queued step (and the steps they lead to) as a worker would; returns
    how many steps were completed."""
    done = 0
    while steps := claim(conn, batch=100):
        for step in steps:
            complete(conn, step, {"text": "done"})
            done += 1
    return done


def task_row(conn: psycopg.Connection, task_id: uuid.UUID) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("select * from public.agent_tasks where id = %s", [task_id]).fetchone()


def runs_of(conn: psycopg.Connection, task_id: uuid.UUID) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select * from public.agent_task_executions where task_id = %s order by created_at",
            [task_id],
        ).fetchall()


def fires_of(conn: psycopg.Connection, task_id: uuid.UUID) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select * from public.task_schedule_fires where task_id = %s order by fire_at",
            [task_id],
        ).fetchall()
