"""The legacy ``task-executor`` Edge Function's scheduled pass, statement for statement, as
its supabase-js calls reach the database through PostgREST (each call one transaction as
``service_role``). It stays deployed and unchanged while stepsync takes over, so tests
run exactly this beside the service. (What it sends to ``chat`` does not matter here; the
call is a short sleep.)

Per pass (``executeScheduledTasks``):

1. the due tasks: ``task_type = 'scheduled' and status = 'active' and next_run_at <= now
   and next_run_at is not null``, ``now`` being the function's own clock;
2. for each task read: ``max_executions`` reached → ``status = 'completed'``; ``start_date``
   ahead → skip; ``end_date`` passed → ``status = 'completed'``; else insert a run
   (``status running``), call chat, mark the run completed, then write the task's counters
   from the row read in step 1 (``total_executions + 1`` ...), ``last_run_at = now`` and
   ``next_run_at`` = the next cron time after now. An error (its insert refused) skips the
   rest for that task, as the function's try/catch does.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sync import cron
from tests.support import acting_as

DUE_TASKS = (
    "select t.*, (select a.name from public.agents as a where a.id = t.agent_id) as agent_name"
    " from public.agent_tasks as t"
    " where t.task_type = 'scheduled' and t.status = 'active'"
    " and t.next_run_at <= %(now)s and t.next_run_at is not null"
)
COMPLETE_TASK = "update public.agent_tasks set status = 'completed' where id = %(id)s"
INSERT_RUN = (
    "insert into public.agent_task_executions (task_id, agent_id, status, trigger_type,"
    " trigger_data, instructions_used, tools_used, started_at, metadata)"
    " values (%(task_id)s, %(agent_id)s, 'running', 'scheduled', '{}', %(instructions)s,"
    " %(tools)s, %(now)s, %(metadata)s) returning id"
)
FINISH_RUN = (
    "update public.agent_task_executions set status = 'completed', completed_at = %(now)s,"
    " duration_ms = 5, output = 'done', tool_outputs = '[]' where id = %(id)s"
)
UPDATE_COUNTERS = (
    "update public.agent_tasks set total_executions = %(total)s,"
    " successful_executions = %(successful)s, failed_executions = %(failed)s,"
    " last_run_at = %(now)s, next_run_at = %(next_run_at)s where id = %(id)s"
)


@dataclass
class Pass:
    """What one pass did: per run it started the fire time it ran (the next_run_at it
    read), and per task the error its try/catch swallowed."""

    ran: dict[uuid.UUID, datetime] = field(default_factory=dict)
    errors: dict[uuid.UUID, str] = field(default_factory=dict)


def scheduled_pass(conn: psycopg.Connection, now: datetime, *, chat_seconds: float = 0.005) -> Pass:
    done = Pass()
    with acting_as(conn, "service_role"), conn.cursor(row_factory=dict_row) as cur:
        due = cur.execute(DUE_TASKS, {"now": now}).fetchall()
    for task in due:
        try:
            if task["max_executions"] and task["total_executions"] >= task["max_executions"]:
                with acting_as(conn, "service_role"):
                    conn.execute(COMPLETE_TASK, {"id": task["id"]})
                continue
            if task["start_date"] and task["start_date"] > now:
                continue
            if task["end_date"] and task["end_date"] < now:
                with acting_as(conn, "service_role"):
                    conn.execute(COMPLETE_TASK, {"id": task["id"]})
                continue
            with acting_as(conn, "service_role"):
                run_id = conn.execute(
                    INSERT_RUN,
                    {
                        "task_id": task["id"],
                        "agent_id": task["agent_id"],
                        "instructions": task["instructions"],
                        "tools": Jsonb(task["selected_tools"]),
                        "now": now,
                        "metadata": Jsonb(
                            {"agent_name": task["agent_name"], "trigger_type": "scheduled"}
                        ),
                    },
                ).fetchone()[0]
            time.sleep(chat_seconds)  # POST /functions/v1/chat
            with acting_as(conn, "service_role"):
                conn.execute(FINISH_RUN, {"id": run_id, "now": now})
            done.ran[run_id] = task["next_run_at"]
            with acting_as(conn, "service_role"):
                conn.execute(
                    UPDATE_COUNTERS,
                    {
                        "id": task["id"],
                        "total": task["total_executions"] + 1,
                        "successful": task["successful_executions"] + 1,
                        "failed": task["failed_executions"],
                        "now": now,
                        "next_run_at": _next_run(task, now),
                    },
                )
        except psycopg.Error as exc:
            done.errors[task["id"]] = exc.diag.message_primary or str(exc)
    return done


def _next_run(task: dict, now: datetime) -> datetime | None:
    """croner's nextRun() in the task's time zone (null when the expression fails)."""
    try:
        return cron.parse(task["cron_expression"], task["timezone"]).next_after(now)
    except (cron.CronError, TypeError):
        return None
