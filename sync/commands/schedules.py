"""``stepsync schedules``: the upcoming fire times of scheduled tasks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import typer
from psycopg.rows import dict_row

from sync import cron
from sync.commands.common import (
    DatabaseUrlOption,
    connector,
    console,
    database_error,
    fail,
    user_errors,
)

# The tasks with a next fire time, soonest first; who runs each (stepsync for owners in
# the rollout, else the legacy task-executor).
UPCOMING = """
select t.id, t.name, t.user_id, t.cron_expression, t.timezone, t.next_run_at,
       stepsync.flag_enabled_for('multi_step_workflows', t.user_id) as by_stepsync
  from public.agent_tasks as t
 where t.task_type = 'scheduled' and t.status = 'active' and t.next_run_at is not null
   and (%(user_id)s::uuid is null or t.user_id = %(user_id)s::uuid)
 order by t.next_run_at
 limit %(limit)s
"""


def schedules(
    limit: int = typer.Option(20, min=1, max=10000, help="How many tasks, soonest first."),
    count: int = typer.Option(
        1, min=1, max=100, help="Fire times per task: the next one and those after it."
    ),
    user: str | None = typer.Option(None, "--user", help="Only this owner's tasks."),
    database_url_option: str | None = DatabaseUrlOption,
) -> None:
    """Upcoming fire times of scheduled tasks: owner, runner, local and UTC time."""
    try:
        user_id = uuid.UUID(user) if user else None
    except ValueError:
        raise fail(f"--user {user!r} is not a uuid") from None
    with user_errors():
        database = connector(
            database_url_option, application_name="stepsync schedules", migrate=True
        )
    try:
        with database.connect(row_factory=dict_row) as conn, conn.acting(read_only=True):
            rows = conn.execute(UPCOMING, {"user_id": user_id, "limit": limit}).fetchall()
    except psycopg.Error as exc:
        raise database_error(exc) from None
    fire_times = []
    for row in rows:
        for moment, local in _fire_times(row, count):
            fire_times.append((moment, row, local))
    if not fire_times:
        console.print("no scheduled task has a next fire time")
        return
    fire_times.sort(key=lambda item: item[0])
    # One line per fire time, soonest first (ids do not fit a table in 80 columns).
    for moment, row, local in fire_times:
        console.print(
            f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC  {local}  "
            f"{'stepsync' if row['by_stepsync'] else 'legacy  '}  {row['name']} ({row['id']})"
            f"  owner {row['user_id']}",
            highlight=False,
            soft_wrap=True,
        )


def _fire_times(row: dict, count: int) -> list[tuple[datetime, str]]:
    """The recorded next fire time and the ``count - 1`` cron fire times after it."""
    first: datetime = row["next_run_at"]
    try:
        schedule = cron.parse(row["cron_expression"], row["timezone"])
    except (cron.CronError, TypeError):
        return [(first, f"(schedule unreadable) {row['timezone']}")]
    moments = [first, *cron.upcoming(schedule, first, count - 1)]
    return [(m, _local(schedule, m, row["timezone"])) for m in moments]


def _local(schedule: cron.Schedule, moment: datetime, zone: str) -> str:
    return f"{schedule.local(moment):%Y-%m-%d %H:%M:%S %Z} {zone}"
