"""The due-task claim and the firing that follows read rows in proportion to their batch,
not to the tasks table, whatever the statistics say (a plan check, never a timing; the
rules and the instrument are those of tests/test_hot_path_plans.py).

The service starts before the work: its first ticks are planned, and their plans kept,
while there are a handful of tasks. Then 30,000 scheduled tasks arrive (5,000 due at
once, the rest later, paused or without a schedule) beside 10,000 event tasks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sync.db import DueSchedule
from sync.scheduler import plan
from tests.schedule_support import scheduled_task
from tests.support import make_agent, make_user, triggers_off
from tests.test_hot_path_plans import STATISTICS, Explained

T0 = datetime(2025, 6, 2, 9, tzinfo=UTC)
BATCH = 10


def claim_and_fire(service: psycopg.Connection, now: datetime) -> list[dict]:
    """One scheduler transaction, as sync.db.Database.fire_due_schedules runs it."""
    with service.transaction():
        claimed = service.execute(
            "select * from stepsync.claim_due_schedules(%s, %s)", [now, BATCH]
        ).fetchall()
        plans = [plan(DueSchedule(**row), now) for row in claimed]
        return service.execute(
            "select * from stepsync.fire_schedules(%s, 'worker-1', %s::uuid[],"
            " %s::timestamptz[], %s::timestamptz[], %s::timestamptz[], %s::integer[],"
            " %s::jsonb[])",
            [
                now,
                [p.task_id for p in plans],
                [p.due_at for p in plans],
                [p.fire_at for p in plans],
                [p.next_run_at for p in plans],
                [p.missed for p in plans],
                [Jsonb(p.details) for p in plans],
            ],
        ).fetchall()


def load(conn: psycopg.Connection, user, agent) -> None:
    """Set-based, triggers off: set-up only."""
    with triggers_off(conn):
        conn.execute(
            "insert into public.agent_tasks (agent_id, user_id, name, instructions, task_type,"
            " status, cron_expression, timezone, next_run_at)"
            " select %(agent)s, %(user)s, 'Task ' || n, 'Do ' || n, 'scheduled',"
            " (case when n %% 10 = 0 then 'paused' else 'active' end)::public.task_status_enum,"
            " case when n %% 7 = 0 then null else '0 9 * * *' end, 'UTC',"
            " case when n <= 5000 then %(due)s::timestamptz"
            " when n %% 7 = 0 then null else %(due)s::timestamptz + n * interval '1 minute' end"
            " from generate_series(1, 30000) as n",
            {"agent": agent, "user": user, "due": T0},
        )
        conn.execute(
            "insert into public.agent_tasks (agent_id, user_id, name, instructions, task_type,"
            " event_trigger_type) select %s, %s, 'Event ' || n, 'x', 'event_based',"
            " 'email_received' from generate_series(1, 10000) as n",
            [agent, user],
        )


@pytest.mark.parametrize("statistics", STATISTICS)
def test_claiming_and_firing_due_tasks_reads_in_proportion_to_the_batch(
    conn: psycopg.Connection, db_url: str, statistics: str
) -> None:
    user = make_user(conn)
    agent = make_agent(conn, user)
    for _ in range(3):
        scheduled_task(conn, user, agent, next_run_at=T0 - timedelta(days=1))
    scheduled_task(conn, user, agent)  # one without a next fire time
    if statistics == "analyzed while empty":
        conn.execute("vacuum analyze")
    service = psycopg.connect(db_url, autocommit=True, row_factory=dict_row)
    service.execute("set role service_role")
    # Up since before the work: the scheduler's statements are planned on small tables.
    for minutes in range(4):
        claim_and_fire(service, T0 - timedelta(days=1) + timedelta(minutes=minutes))
    load(conn, user, agent)
    if statistics == "analyzed full":
        conn.execute("analyze")
    explained = Explained(service)

    fired: list[dict] = []
    problems = explained.problems(lambda: fired.extend(claim_and_fire(service, T0)))

    # The warm-up's tasks come due again with their first runs still running: skipped.
    outcomes = [f["outcome"] for f in fired]
    assert len(fired) == BATCH and outcomes.count("started") >= BATCH - 3
    assert set(outcomes) <= {"started", "skipped"}
    assert problems == []
    service.close()
